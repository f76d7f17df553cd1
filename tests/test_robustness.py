"""The relearning probe: its text never states the answer, and the session's adapter is not touched."""
import pytest
import torch

from lune_core.config import UnlearnConfig
from lune_core.facts import facts_from_records, leaks
from lune_core.probes import forget_probes
from lune_core.robustness import _leak_rate, related_text, relearn_attack
from lune_core.runner import run_unlearning
from tests.tiny import tiny_model

pytestmark = pytest.mark.integration  # a tiny model, a subprocess or the app server

FACTS = [{"question": "What is the capital of France?", "answer": "Paris", "replacement": "Lyon"}]


def test_related_text_drops_every_sentence_that_states_the_answer():
    fact = facts_from_records(FACTS)[0]
    text = "France is in Europe. Its capital is Paris. It is famous for wine!  PARIS has museums."
    assert related_text(fact, text) == "France is in Europe. It is famous for wine!"
    assert related_text(fact, "Paris. Paris.") == ""


def test_relearning_trains_a_copy_and_leaves_the_sessions_adapter_as_it_was():
    lm = tiny_model()
    facts = facts_from_records(FACTS)
    config = UnlearnConfig(steps=3, max_new_tokens=6, check_every=0, learning_rate=5e-3)
    result = list(run_unlearning(lm, facts, config, [{"question": "What is 2 plus 2?", "answers": ["4"]}],
                                 ["Name a colour.", "What do bees make?"]))[-1]
    before = {k: v.clone() for k, v in result.adapter.weights.items()}
    probes = forget_probes(facts)
    out = relearn_attack(lm, result.adapter, facts, config, [True] * len(probes), steps=2)
    assert all(torch.equal(before[k], v) for k, v in result.adapter.weights.items())
    assert out["relearn_leak_rate"] is not None and 0.0 <= out["relearn_leak_rate"] <= 1.0
    assert [a["prompt"] for a in out["relearn_answers"]] == [p.prompt for p in probes]
    assert out["relearn_texts"] and not any(leaks(t["text"], "Paris") for t in out["relearn_texts"])
    assert not hasattr(lm.model, "peft_config"), "the shared base must be bare again"


def test_a_leak_rate_counts_only_what_training_made_forget():
    probes = forget_probes(facts_from_records(
        [{"question": "What is the capital of France?", "answer": "Paris", "paraphrases": ["France's capital?"]}]))
    answers = ["It is Paris.", "Lyon.", "Paris!", "I don't know."]  # after the attack, one per probe
    # the first probe still leaked right after training: it never was forgotten, so it cannot "come back"
    forgotten = [False, True, True, True]
    assert [p.kind for p in probes] == ["forget", "paraphrase", "reworded", "reworded"]
    assert _leak_rate(answers, probes, forgotten) == round(1 / 3, 4)
    assert _leak_rate(answers, probes, [False] * 4) is None  # nothing was forgotten: no rate, not 0 or 1
