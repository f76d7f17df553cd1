"""Reliability figures: the bad-input corpus through every channel, and repeated runs' memory.

1. Every case of lune_web/reliability/bad_inputs.jsonl through the session API (in this process, the embedded
   model loaded and one run finished first), the command line (`lune_core.cli.main`, in this process,
   with --check) and the launched app (`python app.py`, through gradio_client); counts the cases
   handled: a clear one-line message and nothing lost for a rejected case, the text as typed for an
   accepted one. HF_TOKEN is set to a marker that must appear in no message and no log.
2. Ten unlearn/reset cycles of short runs on the embedded model in one process: resident memory,
   live tensors, optimizers and LoRA layers after each reset.
3. Several visitors, a stopped run and a closed page (lune_web/reliability/visitors.py) against a
   launched app serving a tiny random Llama, so each run takes seconds: what each visitor saw, how
   long Stop took, and how long a visitor queued behind a closed page's run waited.

Writes docs/reliability.md.

    python bench/run_reliability.py                   # about 10 minutes on a 2-core CPU
    python bench/run_reliability.py --skip-app --cycles 3
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TOKEN = "hf_MARKERtokenNEVERshown0123456789"
os.environ.update(HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", HF_TOKEN=TOKEN)
os.chdir(ROOT)  # a corpus case names one of the repository's folders as a model

import torch  # noqa: E402

from lune_core.embedded import embedded_model_dir  # noqa: E402
from lune_deploy.config import load_deploy_config  # noqa: E402
from lune_web.context import WebContext  # noqa: E402
from lune_web.reliability import corpus, visitors  # noqa: E402
from lune_web.reliability.app_server import serve_app  # noqa: E402
from lune_web.reliability.cycles import rss_growth, unlearn_reset_cycles  # noqa: E402
from lune_web.reliability.tiny import save_tiny_model  # noqa: E402
from lune_web.service import Service  # noqa: E402
from lune_web.session import Session  # noqa: E402

S = Service(WebContext(limits=load_deploy_config().limits.with_env()))  # the laptop's deployment

PACKAGES = ["torch", "transformers", "peft", "bitsandbytes", "gradio", "gradio_client"]


def session_channel(cases: list[corpus.Case]) -> list[corpus.Outcome]:
    visitor = Session()
    S.load(visitor, "embedded", True)
    list(S.run(visitor, [corpus.GOOD_ROW], dict(corpus.FAST, steps=3), 0))
    return [corpus.run_session_case(S, visitor, case) for case in cases]


def cli_channel(cases: list[corpus.Case], workdir: Path) -> list[corpus.Outcome]:
    return [corpus.run_cli_case(case, workdir / case.id) for case in cases if case.where != "ask"]


def app_channel(cases: list[corpus.Case], root: Path, log: Path) -> list[corpus.Outcome]:
    import gradio_client

    with serve_app(log, {"LUNE_MODEL_ROOTS": str(root)}) as url:
        client = gradio_client.Client(url, verbose=False)
        client.predict("embedded", True, api_name="/load_model")
        outputs = corpus.unlearn(client, [corpus.GOOD_ROW], steps=3).result(timeout=900)
        if "Done" not in outputs[1]:
            raise RuntimeError(f"the first run failed: {outputs[1]}")
        return [corpus.run_app_case(case, client, [corpus.GOOD_ROW]) for case in cases]


def visitor_channel(work: Path) -> dict:
    """The visitors' scenarios on a tiny model (the embedded model's tokenizer) under an allowed root."""
    root = work / "tiny-root"
    tiny = save_tiny_model(root / "tiny-llama", embedded_model_dir())
    env = {"LUNE_MODEL_ROOTS": str(root), "LUNE_MAX_STEPS": str(visitors.LONG_RUN), "GRADIO_HEARTBEAT_INTERVAL": "1"}
    with serve_app(work / "visitors.log", env) as url:
        return {"four": visitors.four_visitors(url, str(tiny), corpus.TRAIN),
                "stop": visitors.stop_mid_run(url, str(tiny)), "closed": visitors.closed_page(url, str(tiny))}


def visitor_lines(seen: dict) -> list[str]:
    four, stop, closed = seen["four"], seen["stop"], seen["closed"]
    yes = {True: "yes", False: "**no**"}
    lines = ["## Several visitors, Stop, a closed page", "",
             "Against a launched app serving a tiny random Llama (4-bit NF4, loaded as any visitor's model), so "
             "that each run takes seconds (`lune_web/reliability/visitors.py`; tests/test_app_reliability.py "
             "asserts the same on every CI run).", "",
             f"**Four visitors at once** ({four['seconds']} s for the four runs, queued one at a time on the "
             "shared model), each replacing a different secret word:", "",
             "| visitor | run done | comparison holds only its fact | its replacement said | its 'before' is the "
             "base's | other visitors' words in its answers |", "|---|---|---|---|---|---|"]
    lines += [f"| {i + 1} | {yes[p['done']]} | {yes[p['own_fact_only']]} | {yes[p['own_word_said']]} | "
              f"{yes[p['base_before']]} | {p['foreign_words']} |" for i, p in enumerate(four["pages"])]
    lines += ["", f"A fresh page afterwards sees the base model's answers only: {yes[four['fresh_sees_base']]}.", "",
              f"**Stop at step 2** of a {visitors.LONG_RUN}-step run: the run ended {stop['seconds_to_stop']} s "
              f"after the click, saying \"{corpus.plain(stop['first_status']).splitlines()[0][:120]}\"; Stop with "
              f"nothing running says \"{corpus.plain(stop['idle_reply'])}\"; the next run on the same page: "
              f"\"{corpus.plain(stop['second_status']).splitlines()[0][:120]}\", and the history holds "
              f"{stop['history_runs']} runs.", "",
              f"**A page closed at step 2** of a {visitors.LONG_RUN}-step run: the next visitor's 3-step run, "
              f"queued behind it, finished {closed['seconds']} s later (the orphan was stopped; had it not been, "
              "the wait would be minutes), saying "
              f"\"{corpus.plain(closed['status']).splitlines()[0][:120]}\".", ""]
    return lines


def corpus_table(results: dict[str, list[corpus.Outcome]]) -> list[str]:
    lines = ["| channel | cases | handled | rejected as expected | accepted as expected | token in a message |",
             "|---|---|---|---|---|---|"]
    for channel, outcomes in results.items():
        handled = [o for o in outcomes if o.handled]
        lines.append(f"| {channel} | {len(outcomes)} | **{len(handled)}** | "
                     f"{sum(o.case.rejected for o in handled)} | {sum(not o.case.rejected for o in handled)} | "
                     f"{sum(TOKEN in o.message for o in outcomes)} |")
    return lines


def by_place(outcomes: list[corpus.Outcome]) -> str:
    total = Counter(o.case.where for o in outcomes)
    handled = Counter(o.case.where for o in outcomes if o.handled)
    return ", ".join(f"{where} {handled[where]}/{n}" for where, n in total.items())


def write_report(path: Path, results, cycles, settings, seconds, app_log_has_token, seen) -> None:
    machine = (f"{platform.platform()}, {os.cpu_count()} CPU cores ({torch.get_num_threads()} torch threads), "
               f"{round(__import__('psutil').virtual_memory().total / 2**30)} GiB memory")
    versions = ", ".join(f"{p} {version(p)}" for p in PACKAGES)
    per_step = statistics.median(c["seconds_per_step"] for c in cycles)
    lines = [
        "# Reliability", "",
        f"Written by `python bench/run_reliability.py` on {time.strftime('%Y-%m-%d %H:%M %Z')} in "
        f"{seconds / 60:.1f} minutes.  ",
        f"Machine: {machine}.  ",
        f"Python {platform.python_version()}; {versions}.  ",
        f"Limits in force (cpu-basic defaults; `LUNE_MAX_*` overrides each): {S.limits}.", "",
        "## Bad input", "",
        "Each case of `lune_web/reliability/bad_inputs.jsonl` (where the bad value goes, the input, rejected or "
        "accepted, a fragment of the message) through each channel. *Handled*: a rejected case got a "
        "clear one-line message (no traceback, not the generic error) and the session kept its model, "
        "facts and results; an accepted case (unicode, HTML, an answer the model does not say) came "
        "back as typed. HF_TOKEN was set to a marker throughout.", "",
        *corpus_table(results), "",
    ]
    for channel, outcomes in results.items():
        lines.append(f"- {channel}: {by_place(outcomes)}")
        lines += [f"  - not handled: `{o.case.id}`: {'; '.join(o.problems)}" for o in outcomes if not o.handled]
    lines += [
        "", "Channels: *session API* is `lune_web.service`, which the app calls (this process, the "
        "embedded model loaded and one run finished before the first case); *command line* is "
        "`lune_core.cli.main` with `--check` (stops before loading weights), run in this process, without "
        "the ask box's cases, which have no command-line counterpart; *app API* is `python app.py` "
        "driven by gradio_client, where out-of-range slider values are refused by the slider itself "
        "(\"Value 0 is less than minimum value 1.\"), which the corpus records as `widget_message`.",
        "", f"The app's log contains the token marker: **{'yes' if app_log_has_token else 'no'}**.",
        "", "## Repeated runs", "",
        f"{len(cycles)} unlearn/reset cycles in one process on the embedded model (SmolLM2-135M-Instruct, "
        f"4-bit NF4), each a {settings['steps']}-step run on one fact followed by Reset. Figures after "
        "each reset (which collects garbage and hands freed heap memory back to the system).", "",
        "| cycle | seconds | resident memory (MB) | live tensors | optimizers | LoRA layers | adapter freed |",
        "|---|---|---|---|---|---|---|",
        *[f"| {c['cycle']} | {c['seconds']} | {c['rss_mb']} | {c['tensors']} | {c['optimizers']} | "
          f"{c['lora_layers']} | {'yes' if c['adapter_freed'] else 'no'} |" for c in cycles],
        "", f"Resident memory growth from the second cycle on: **{100 * rss_growth(cycles):.1f} %** "
        "(the highest later value against the second); the goal is under 10 %.", "",
        *(visitor_lines(seen) if seen else ["## Several visitors, Stop, a closed page", "",
                                            "Not measured in this invocation (`--skip-app`).", ""]),
        "## What the limits cost", "",
        f"A training step took {per_step:.2f} s here (median of the cycles), so a run at the step limit "
        f"({S.limits.max_steps} steps) trains for about {per_step * S.limits.max_steps / 60:.1f} minutes before "
        "its answers are evaluated, and runs queue one at a time on the shared model: the cpu-basic limits "
        f"({S.limits.max_facts} facts, {S.limits.max_new_tokens} new tokens, {S.limits.max_general_prompts} "
        "general questions) keep the next visitor's wait to minutes. Raise them with `LUNE_MAX_*` on faster "
        "hardware.", "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3, help="steps of each run in the cycles")
    parser.add_argument("--skip-app", action="store_true", help="leave out the launched app's channel")
    parser.add_argument("--out", default=str(ROOT / "docs" / "reliability.md"))
    args = parser.parse_args()
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="lune-reliability-"))
    root = work / "models"
    places = corpus.make_model_folders(root, work / "elsewhere")
    os.environ["LUNE_MODEL_ROOTS"] = str(root)
    cases = corpus.load_cases(places)

    settings = dict(corpus.FAST, steps=args.steps, max_new_tokens=16)
    visitor = Session()
    S.load(visitor, "embedded", True)
    print(f"{args.cycles} unlearn/reset cycles of {args.steps} steps on the embedded model", flush=True)
    cycles = unlearn_reset_cycles(S, visitor, [corpus.GOOD_ROW], settings, args.cycles)
    for c in cycles:
        print(c, flush=True)

    results = {}
    print(f"corpus: {len(cases)} cases", flush=True)
    results["session API"] = session_channel(cases)
    results["command line"] = cli_channel(cases, work / "cli")
    app_log = work / "app.log"
    seen = None
    if not args.skip_app:
        results["app API (gradio_client)"] = app_channel(cases, root, app_log)
        print("visitors, stop, closed page", flush=True)
        seen = visitor_channel(work)
    for line in corpus_table(results):
        print(line)
    if corpus.remote_code_ran(root):
        raise SystemExit("a model's remote code ran: trust_remote_code must never be on")
    app_log_has_token = app_log.is_file() and TOKEN in app_log.read_text()
    write_report(Path(args.out), results, cycles, settings, time.perf_counter() - started, app_log_has_token, seen)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
