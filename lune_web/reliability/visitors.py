"""Several visitors, a stopped run and a closed page, against the launched app (gradio_client):
each scenario returns what it measured, so the tests assert on it and bench/run_reliability.py
writes it into docs/reliability.md."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..views import comparison_prompts
from . import corpus

LONG_RUN = 5000  # steps: minutes even on a tiny model, unless something stops it (LUNE_MAX_STEPS must allow it)
WORDS = ["apple", "river", "violet", "hammer"]
QUESTIONS = [f"What is {name}'s secret word?" for name in ("Alice", "Bob", "Carol", "Dave")]


def visitor(url: str, model: str):
    """A new page with `model` loaded in 4-bit. Loading waits in the model queue behind any run:
    bounded, so a run that never ends fails the caller."""
    import gradio_client

    client = gradio_client.Client(url, verbose=False)
    info = client.submit(model, True, api_name="/load_model").result(timeout=120)
    if Path(model).name not in corpus.plain(info) or "4-bit NF4" not in info:
        raise RuntimeError(f"the model did not load: {corpus.plain(info)}")
    return client


def wait_for_step(job, step: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not any(f"step {step} / " in str(o[1]).replace("*", "") for o in job.outputs()):
        if time.time() > deadline or job.done():
            raise RuntimeError(f"the run never reached step {step}: {job.outputs()[-1:]}")
        time.sleep(0.2)


def four_visitors(url: str, model: str, train: dict) -> dict:
    """Four pages at once, each replacing a different secret word. Per visitor: the comparison holds
    its own fact only, its replacement is said, no other visitor's word appears in its answers, and
    its "before" answers are the base's; then a fresh page sees the base alone."""
    base = visitor(url, model)
    asked = {q: base.predict(q, 8, api_name="/ask") for q in QUESTIONS}
    base_answers = {q: before for q, (before, _, _) in asked.items()}

    def forget(i: int):
        client = visitor(url, model)
        outputs = corpus.unlearn(client, [[QUESTIONS[i], "Paris", WORDS[i], ""]], **train).result(timeout=600)
        return outputs, {q: client.predict(q, 8, api_name="/ask") for q in QUESTIONS}

    started = time.time()
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        results = list(pool.map(forget, range(len(QUESTIONS))))
    seconds = time.time() - started
    pages = []
    for i, (outputs, answers) in enumerate(results):
        forget_rows = comparison_prompts(outputs[2], "forget")
        pages.append({
            "done": "Done" in outputs[1], "status": outputs[1],
            "own_fact_only": forget_rows == [QUESTIONS[i]],
            "own_word_said": WORDS[i] in answers[QUESTIONS[i]][1],
            "base_before": all(before == base_answers[q] for q, (before, _, _) in answers.items()),
            "foreign_words": sum(w in after for j, w in enumerate(WORDS) if j != i for _, after, _ in answers.values()),
        })
    fresh = visitor(url, model)
    fresh_answers = [fresh.predict(q, 8, api_name="/ask") for q in QUESTIONS]
    return {"pages": pages, "seconds": round(seconds, 1),
            "base_page_unchanged": all(before == after for before, after, _ in asked.values()),
            "base_words": sum(
                w in a for w in WORDS for a in base_answers.values()),
            "fresh_sees_base": all(before == after == base_answers[q] and "No adapter" in note
                                   for q, (before, after, note) in zip(QUESTIONS, fresh_answers))}


def stop_mid_run(url: str, model: str) -> dict:
    """Stop a long run at step 2: how long until it ended, what it said, and whether the next run
    on the same page starts and finishes cleanly with both runs in the history."""
    client = visitor(url, model)
    rows = [[QUESTIONS[0], "Paris", "apple", ""]]
    job = corpus.unlearn(client, rows, steps=LONG_RUN)
    wait_for_step(job, 2)
    asked = time.time()
    reply = client.predict(api_name="/stop")
    first = job.result(timeout=120)
    seconds = time.time() - asked
    idle = client.predict(api_name="/stop")
    second = corpus.unlearn(client, rows, steps=3).result(timeout=120)
    before, after, _ = client.predict(QUESTIONS[0], 8, api_name="/ask")
    return {"reply": reply, "seconds_to_stop": round(seconds, 1), "first_status": first[1],
            "idle_reply": idle, "second_status": second[1], "history_runs": second[4]["data"][-1][0],
            "asks_after": isinstance(before, str) and isinstance(after, str)}


def closed_page(url: str, model: str) -> dict:
    """Close a page mid-run (its heartbeat ends): a second visitor's 3-step run, queued behind the
    orphan, finishes only if the orphan was stopped; how long it waited."""
    leaving = visitor(url, model)
    job = corpus.unlearn(leaving, [[QUESTIONS[1], "Paris", "river", ""]], steps=LONG_RUN)
    wait_for_step(job, 2)
    leaving.close()
    started = time.time()
    outputs = corpus.unlearn(visitor(url, model), [[QUESTIONS[2], "Paris", "violet", ""]], steps=3).result(
        timeout=120)
    return {"status": outputs[1], "seconds": round(time.time() - started, 1)}
