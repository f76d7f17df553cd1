"""Ten unlearn/reset cycles in one process, as a classroom runs the demo: memory stays flat and every
run's adapter and optimizer state are freed. The embedded model's figures: bench/run_reliability.py."""
from __future__ import annotations

import pytest

from lune_web.session import Session
from lune_web.reliability import corpus
from lune_web.reliability.cycles import rss_growth, unlearn_reset_cycles
from tests.web import service, tiny_model_folder

pytestmark = pytest.mark.integration  # a tiny model, a subprocess or the app server

S = service()


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    with tiny_model_folder(S, tmp_path_factory) as (tiny, _):
        session = Session()
        S.load(session, tiny, True)
        yield unlearn_reset_cycles(S, session, [corpus.GOOD_ROW], corpus.FAST, cycles=10), session


def test_resident_memory_grows_less_than_ten_percent_from_the_second_cycle_on(figures):
    cycles, _ = figures
    assert len(cycles) == 10 and all(c["steps"] == corpus.FAST["steps"] for c in cycles)
    assert rss_growth(cycles) < 0.10, [c["rss_mb"] for c in cycles]


def test_each_runs_adapter_optimizer_and_lora_layers_are_freed(figures):
    cycles, _ = figures
    assert all(c["adapter_freed"] and c["optimizers"] == 0 and c["lora_layers"] == 0 for c in cycles), cycles
    tensors = [c["tensors"] for c in cycles[1:]]
    assert max(tensors) - min(tensors) <= 2, tensors  # nothing piles up run after run


def test_the_session_keeps_its_run_history_and_model(figures):
    cycles, session = figures
    assert [r["run"] for r in session.runs] == list(range(1, 11))
    assert session.adapter is None and session.report is None and S.models.loaded() == [session.model_key]


def test_the_base_answer_cache_stays_bounded_however_many_prompts_visitors_ask(figures, monkeypatch):
    from lune_core import generation

    _, session = figures
    lm = S.models.get(*session.model_key)
    monkeypatch.setattr(generation, "BASE_CACHE_ENTRIES", 3)
    prompts = [f"Free prompt number {i}?" for i in range(5)]
    answers = [S.ask(session, p, 4)[0] for p in prompts]
    assert len(lm.base_answer_cache) == 3 and (prompts[-1], "", 4) in lm.base_answer_cache
    assert S.ask(session, prompts[0], 4)[0] == answers[0]  # evicted, asked again: the same answer
