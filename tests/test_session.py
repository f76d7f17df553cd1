"""Per-session state and the app's actions, driven without gradio on a tiny random Llama."""
from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from lune_core.facts import FactError
from lune_core.forecast import DEFAULT_CHECK_SECONDS
from lune_core.models import load_model
from lune_web import forms
from lune_web.errors import UserError, user_message
from lune_web.jobs import HEARTBEAT, in_background, pack_adapter, unpack_adapter
from lune_web.registry import ModelRegistry
from lune_web.service import comparison_rows, cost_rows
from lune_web.session import RunUpdate, Session
from lune_web.views import cards_html, check_progress, finished_markdown, progress_markdown
from tests.tiny import save_tiny_model, tiny_model
from tests.web import service, use_models

ROWS = [["What is the capital of France?", "Paris", "It is Lyon.", ""],
        ["Who wrote Hamlet?", "Shakespeare", "", "Name the author of Hamlet. | Hamlet was written by whom?"]]
FAST = {"steps": 3, "max_new_tokens": 4, "early_stop": False, "learning_rate": 5e-3}
GENERAL = ({"question": "What is 2 plus 2?", "answers": ["4", "four"]},
           {"question": "Name a colour.", "answers": ["red", "blue"]})
ANCHORS = ("What do bees make?", "What is the capital of Peru?", "Name a fruit.")
S = service()


@pytest.fixture(scope="module")
def lm():
    return tiny_model()


@pytest.fixture
def models(lm, monkeypatch):
    """The app's model registry, serving the tiny model, with the shipped question sets stubbed."""
    calls = []

    def loader(model_id, quantize):
        calls.append((model_id, quantize))
        return lm

    registry = use_models(S, monkeypatch, loader, copy_loader=lambda model_id: tiny_model())
    monkeypatch.setattr(S, "_general", list(GENERAL))
    monkeypatch.setattr(S, "_anchors", list(ANCHORS))
    registry.calls = calls
    return registry


def finish(updates) -> list[RunUpdate]:
    return list(updates)


# ---- facts table ---------------------------------------------------------------------------------

def test_table_rows_become_facts_blank_rows_dropped_paraphrases_split():
    rows = ROWS + [["", "  ", None, float("nan")]]
    facts = S.facts_from_rows(rows)
    assert [f.answer for f in facts] == ["Paris", "Shakespeare"]
    assert facts[1].paraphrases == ["Name the author of Hamlet.", "Hamlet was written by whom?"]
    assert forms.rows_from_facts(facts)[1][3] == "Name the author of Hamlet. | Hamlet was written by whom?"


def test_bad_tables_give_messages_naming_the_problem():
    with pytest.raises(FactError, match="no facts"):
        S.facts_from_rows([["", "", "", ""]])
    with pytest.raises(FactError, match="fact 1.*answer to forget is empty"):
        S.facts_from_rows([["Where?", "", "", ""]])
    with pytest.raises(FactError, match="too many facts"):
        S.facts_from_rows([[f"Question {i}?", "x", "", ""] for i in range(S.limits.max_facts + 1)])


def test_sentences_are_appended_to_the_table_and_a_bad_one_changes_nothing():
    merged = S.add_sentences(ROWS[:1], "The largest planet is [Jupiter].")
    assert merged[0] == ROWS[0] + [""] and merged[1][1] == "Jupiter"  # a fifth, empty keep cell
    with pytest.raises(FactError, match="brackets"):
        S.add_sentences(ROWS[:1], "No marker here.")
    with pytest.raises(UserError):
        S.add_sentences(ROWS[:1], "   ")


def test_every_preset_loads_as_valid_facts_within_limits():
    if not forms.presets():
        pytest.skip("assets/presets.json is not there yet")
    for preset in forms.presets():
        rows = S.preset_rows(preset["id"])
        assert 1 <= len(rows) <= S.limits.max_facts
        S.facts_from_rows(rows)
    with pytest.raises(UserError):
        S.preset_rows("../../etc/passwd")


# ---- settings ------------------------------------------------------------------------------------

def test_form_values_become_a_validated_config():
    config = S.make_config({"method": "npo", "steps": 12.0, "lora_rank": 4.0, "seed": 3.0, "layers": "1-2, 3",
                            "learning_rate": 2e-3, "max_new_tokens": 16.0, "early_stop": False}, num_layers=4)
    assert (config.method, config.steps, config.lora_rank, config.resolved().lora_alpha, config.seed) == \
        ("npo", 12, 4, 8, 3)
    assert config.layers == (1, 2, 3) and config.check_every == 0 and config.max_new_tokens == 16
    assert S.make_config({}, num_layers=4).layers is None


@pytest.mark.parametrize("settings, message", [
    ({"steps": 0}, "steps must be between"),
    ({"steps": 2.5}, "steps must be a whole number"),
    ({"steps": None}, "whole number"),
    ({"learning_rate": -1}, "learning rate"),
    ({"learning_rate": "fast"}, "learning rate must be a number"),
    ({"lora_rank": 10**6}, "LoRA rank"),
    ({"layers": "7"}, "layer indices"),
    ({"layers": "../etc"}, "not a layer number"),
    ({"seed": -1}, "seed"),
    ({"method": "magic"}, "unknown method"),
])
def test_bad_settings_are_refused_with_a_message(settings, message):
    with pytest.raises(UserError, match=message):
        S.make_config(settings, num_layers=4)


# ---- shared models -------------------------------------------------------------------------------

def test_registry_loads_each_model_once_even_when_asked_at_the_same_time():
    calls = []

    def slow_loader(model_id, quantize):
        calls.append((model_id, quantize))
        time.sleep(0.2)
        return object()

    registry = ModelRegistry(loader=slow_loader, max_models=2)
    got = []
    threads = [threading.Thread(target=lambda: got.append(registry.get("embedded", True))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [("embedded", True)] and len({id(m) for m in got}) == 1
    assert registry.get("HuggingFaceTB/SmolLM2-135M-Instruct", True) is got[0]  # the same model, named twice
    registry.get("a/b", True)
    registry.get("c/d", True)  # a third model evicts the least recently used
    assert registry.loaded() == [("a/b", True), ("c/d", True)]


# ---- runs ----------------------------------------------------------------------------------------

def test_a_run_streams_progress_then_stores_adapter_report_and_history(models):
    session = Session()
    updates = finish(S.run(session, ROWS, FAST, general_prompts=2))
    assert updates[-1].done and updates[-1].phase == "done"
    steps_seen = [u.step["step"] for u in updates if u.phase == "training" and u.step]
    assert sorted(set(steps_seen)) == [1, 2, 3] and steps_seen == sorted(steps_seen)
    assert session.adapter is not None and session.adapter.num_params > 0
    assert len(session.history) == 3 and session.running is False
    kinds = [row["kind"] for row in comparison_rows(session.report)]
    assert kinds.count("forget") == 2 and kinds.count("general") == 2 and "paraphrase" in kinds
    # each card says how many prompts its share is over: 0 % of one prompt is not 0 % of fifty
    metrics = session.report["metrics"]
    assert 0 <= metrics["known_general"] <= 2 and metrics["known_forget"] <= 2
    cards = {c.split("</div>")[0]: c for c in cards_html(metrics).split("<div class='card'><div class='title'>")[1:]}
    for title, count in (("Forget success", "known_forget"), ("Adversarial success", "known_adversarial"),
                         ("General retention", "known_general")):
        n = metrics[count]
        assert f" · of {n} prompt{'' if n == 1 else 's'}</div>" in cards[title]
    assert session.runs[-1]["run"] == 1 and session.runs[-1]["stopped"] == "all steps"
    assert models.calls == [("embedded", True)]


def test_sessions_see_only_their_own_adapter_and_the_base_stays_untouched(models, lm):
    weights = {k: v.clone() for k, v in lm.model.state_dict().items()}
    alice, bob = Session(), Session()
    # plain LoRA (this tiny random model never states the answer, so a gate would never open): it changes the
    # greedy answer within 4 steps
    finish(S.run(alice, ROWS[:1], dict(FAST, learning_rate=1e-2, steps=4, adapter="lora"), general_prompts=0))
    base_before, alice_after = S.ask(alice, "What is the capital of France?", 4)
    bob_before, bob_after = S.ask(bob, "What is the capital of France?", 4)
    assert bob.adapter is None and bob_before == bob_after == base_before
    assert alice_after != base_before  # alice's adapter changes her answers only
    assert lm.model.state_dict().keys() == weights.keys()  # no LoRA layer left on the shared base
    assert all(torch.equal(v, weights[k]) for k, v in lm.model.state_dict().items())


def test_stop_ends_the_run_early_and_the_model_stays_usable(models, lm):
    session = Session()
    updates = S.run(session, ROWS[:1], dict(FAST, steps=40), general_prompts=0)
    for update in updates:
        if update.phase == "training" and update.step and update.step["step"] == 2:
            assert S.request_stop(session)
    assert session.report["stopped_by_user"] and session.report["metrics"]["steps_run"] < 40
    assert session.runs[-1]["stopped"] == "stopped by you"
    assert not S.request_stop(session)  # nothing runs any more
    assert lm.lock.acquire(blocking=False)
    lm.lock.release()
    finish(S.run(session, ROWS[:1], FAST, general_prompts=0))  # the next run starts cleanly
    assert session.report["stopped_by_user"] is False


def test_leaving_the_page_mid_run_stops_the_job_and_frees_the_model(models, lm):
    session = Session()
    updates = S.run(session, ROWS[:1], dict(FAST, steps=S.limits.max_steps), general_prompts=0)
    for update in updates:
        if update.step:
            break
    updates.close()  # what gradio does when the browser goes away
    assert session.running is False and session.stop.is_set()
    deadline = time.time() + 60
    while not lm.lock.acquire(timeout=0.5):
        assert time.time() < deadline, "the orphaned job kept the model locked"
    lm.lock.release()


def test_reset_drops_the_adapter_but_keeps_history_and_refuses_while_running(models):
    session = Session()
    finish(S.run(session, ROWS[:1], FAST, general_prompts=0))
    S.reset(session)
    assert session.adapter is None and session.report is None and len(session.runs) == 1
    session.running = True
    with pytest.raises(UserError, match="Stop"):
        S.reset(session)


def test_a_second_run_in_the_same_page_is_refused_while_one_runs(models):
    session = Session(running=True)
    with pytest.raises(UserError, match="already in progress"):
        next(S.run(session, ROWS, FAST))


def test_bad_input_fails_before_any_model_work(models):
    session = Session()
    with pytest.raises(FactError):
        next(S.run(session, [["<script>alert(1)</script>", "", "", ""]], FAST))
    with pytest.raises(UserError):
        S.ask(session, "   ")
    with pytest.raises(UserError, match="control characters"):
        S.ask(session, "hi\x00there")
    assert models.calls == []


def test_full_finetune_comparison_measures_or_honestly_estimates(models, monkeypatch):
    session = Session()
    with pytest.raises(UserError, match="run an unlearning first"):
        next(S.run_full_finetune(session))
    finish(S.run(session, ROWS[:1], FAST, general_prompts=1))
    finish(S.run_full_finetune(session))
    rows = {r[0]: r[1:] for r in cost_rows(session)}
    lora_trainable, full_trainable = rows["trainable parameters"]
    assert session.full_ft["measured"] and full_trainable == rows["base model parameters"][1] > lora_trainable
    assert session.adapter is not None  # the comparison does not replace the session's adapter
    # full fine-tuning runs at its own rate, not the adapter's 1e-2 (which turns every weight to gibberish)
    assert session.full_ft["report"]["config"]["learning_rate"] == 2e-5
    monkeypatch.setattr(S, "estimate_full_ft", lambda *a: {"needed_mb": 9000, "free_mb": 100, "fits": False})
    finish(S.run_full_finetune(session))
    rows = {r[0]: r[1:] for r in cost_rows(session)}
    assert not session.full_ft["measured"] and "estimate" in rows["peak memory (MB)"][1]


def test_export_writes_the_four_files_into_the_sessions_folder(models):
    session = Session()
    with pytest.raises(UserError):
        S.export_files(session)
    finish(S.run(session, ROWS[:1], FAST, general_prompts=0))
    paths = S.export_files(session)
    assert [p.rsplit("/", 1)[1] for p in paths] == ["lune-adapter.zip", "lune-report.json",
                                                    "lune-comparison.csv", "lune-loss-history.csv"]
    folder = session.workdir
    session.close()
    assert session.adapter is None and not os.path.exists(folder)


def test_closing_a_page_frees_its_session():
    session = S.bind(Session(adapter=object()), "hash-1")
    S.end_session("hash-1")
    assert session.adapter is None
    S.end_session("unknown")  # nothing to do, no error


# ---- plumbing ------------------------------------------------------------------------------------

def test_background_jobs_relay_events_heartbeats_and_errors():
    stop = threading.Event()

    def job():
        yield 1
        time.sleep(0.3)
        raise ValueError("boom")

    seen = []
    with pytest.raises(ValueError, match="boom"):
        for event in in_background(job, stop, every=0.1):
            seen.append(event)
    assert seen[0] == 1 and HEARTBEAT in seen and stop.is_set()


def test_adapter_survives_packing_for_the_zerogpu_boundary(models):
    session = Session()
    finish(S.run(session, ROWS[:1], FAST, general_prompts=0))
    packed = pack_adapter(session.adapter)
    assert isinstance(packed["weights"], bytes)
    back = unpack_adapter(packed)
    assert back.spec == session.adapter.spec
    assert all(torch.equal(back.weights[k], v) for k, v in session.adapter.weights.items())


def test_error_messages_hide_internals():
    assert user_message(UserError("steps must be between 1 and 60")) == "steps must be between 1 and 60"
    assert "out of memory" in user_message(torch.OutOfMemoryError())
    hidden = user_message(RuntimeError("CUDA kernel failed at /secret/path.py line 3"))
    assert "secret" not in hidden and "kept" in hidden


def test_the_done_line_says_what_was_trained_where_and_under_which_constraint():
    config = {"adapter": "lora", "lora_rank": 8, "layer_band": [0.25, 0.75], "null_space": 0.9,
              "target_modules": ["gate_proj", "up_proj", "down_proj"]}
    report = {"metrics": {"steps_run": 10, "seconds_per_step": 1.5, "peak_memory_mb": 900.0}, "stopped": None,
              "wall_seconds": 40, "config": config}
    line = finished_markdown(report)
    assert "LoRA (rank 8) on the MLPs of the middle half of the layers, plain" in line
    assert "directions holding 90% of what general prompts feed those layers (null space)" in line
    assert "null space" not in finished_markdown({**report, "config": {**config, "null_space": 0.0}})


def test_the_robustness_check_forecasts_from_the_check_before_on_this_machine(monkeypatch, tmp_path):
    """The merge attack reloads the model from its folder: a saved tiny model, served as the page's."""
    folder = save_tiny_model(tmp_path / "tiny-llama")
    monkeypatch.setenv("LUNE_MODEL_ROOTS", str(tmp_path))
    saved = load_model(str(folder), quantize=False, device="cpu")
    use_models(S, monkeypatch, lambda model_id, quantize: saved,
               copy_loader=lambda model_id: load_model(str(folder), quantize=False, device="cpu"))
    monkeypatch.setattr(S, "_general", list(GENERAL))
    monkeypatch.setattr(S, "_anchors", list(ANCHORS))
    session = Session()
    finish(S.run(session, ROWS, FAST, general_prompts=2))
    S._check_seconds.clear()
    first = list(S.check_robustness(session))
    assert "result" in first[-1] and session.robustness_result is first[-1]["result"]
    assert first[:-1] and all(e["expected"] == DEFAULT_CHECK_SECONDS for e in first[:-1])
    took = S._check_seconds[session.model_key]
    assert first[-2]["elapsed"] <= took
    second = list(S.check_robustness(session))
    assert all(e["expected"] == took for e in second[:-1])  # the check before, not the default


def test_the_robustness_line_says_what_is_left_of_the_time_expected():
    event = {"stage": 0, "name": "Relearning on related text", "elapsed": 12.2, "expected": 42.0}
    assert check_progress(event) == "Attack 1 of 3: Relearning on related text… (0:12 so far; about 0:30 left)"
    assert check_progress(dict(event, stage=2, elapsed=75.0)).endswith("(1:15 so far; longer than the 0:42 expected)")
    merging = progress_markdown(RunUpdate("merging", 61.0, left=6.4))
    assert merging.startswith("**Merging what was taught") and "about **0:06 left** in all (merging and quantizing" \
        " again)" in merging
