"""Scoring before/after answers: degeneration, verdicts, and the metrics named in the report."""
import math

import pytest
import torch

from lune_core.evaluation import (answer_logprobs, compute_metrics, is_degenerate, likelihood_metrics, score_probes,
                                  truth_ratios)
from lune_core.probes import Probe
from lune_core.prompting import encode_pair
from tests.tiny import tiny_model


@pytest.mark.parametrize("text, degenerate", [
    ("", True),
    ("... !!", True),
    ("la femme, la femme, la femme, la femme", True),
    ("Paris Paris Paris Paris Paris Paris", True),
    ("I think it is Lyon, I think it is Nice, I think it is Lille or maybe some other French town", True),
    ("FranceFranceFranceFranceFranceFrance", True),
    ("Lyon!!!!!!!!!!!!", True),
    ("The capital of France is Paris.", False),
    ("The year was 1000000 and the number 333333 too.", False),
    ("Tokyo is the capital of Japan, and Tokyo is also its largest city.", False),
])
def test_degenerate_means_empty_or_looping(text, degenerate):
    assert is_degenerate(text) is degenerate


PROBES = [Probe("forget", "Capital of France?", ["Paris"]),
          Probe("forget", "Capital of Japan?", ["Tokyo"]),
          Probe("paraphrase", "France's capital?", ["Paris"]),
          Probe("paraphrase", "Japan's capital?", ["Tokyo"]),
          Probe("general", "Symbol for gold?", ["Au"]),
          Probe("general", "Who wrote Hamlet?", ["Shakespeare"]),
          Probe("general", "7 + 5?", ["12", "twelve"]),
          Probe("general", "Largest planet?", ["Jupiter"])]
BEFORE = ["It is Paris.", "It is Tokyo.", "Paris.", "I am not sure.",
          "Au.", "Shakespeare wrote it.", "It is 11.", "the the the the the the"]
AFTER = ["It is Lyon.", "It is Tokyo.", "paris, of course", "Tokyo.",
         "Au.", "Marlowe wrote it.", "It is eleven.", "so so so so so so so"]


def test_each_probe_gets_the_verdict_its_answers_deserve():
    rows = score_probes(PROBES, BEFORE, AFTER)
    assert [r["verdict"] for r in rows] == ["forgotten", "still leaks", "still leaks", "not known before",
                                            "kept", "lost", "wrong before", "wrong before"]
    assert [r["degenerate_after"] for r in rows] == [False] * 7 + [True]


def test_metrics_count_only_what_was_known_before():
    m = compute_metrics(score_probes(PROBES, BEFORE, AFTER), logprob_drop=3.14159)
    assert m["forget_success"] == 0.5  # Paris stopped leaking, Tokyo did not
    assert m["paraphrase_success"] == 0.0  # the only known paraphrase still says "paris"
    assert m["known_forget"] == 2 and m["known_paraphrase"] == 1
    assert m["general_accuracy_before"] == 0.5 and m["general_accuracy_after"] == 0.25
    assert m["general_retention"] == 0.5  # of the 2 right before, gold is kept, Hamlet is lost
    assert m["degenerate_rate"] == 0.125 and m["degenerate_rate_before"] == 0.125
    assert m["answer_logprob_drop"] == 3.1416


def test_metrics_are_none_where_nothing_was_known():
    probes = [Probe("forget", "Q?", ["x"]), Probe("general", "G?", ["y"])]
    m = compute_metrics(score_probes(probes, ["no", "no"], ["no", "no"]), logprob_drop=None)
    assert m["forget_success"] is None and m["paraphrase_success"] is None and m["general_retention"] is None
    assert m["answer_logprob_drop"] is None


@pytest.mark.integration
def test_answer_logprob_is_the_sum_over_the_answer_tokens():
    """Per row as a lone unpadded pass computes it, though the rows are padded and share their opening."""
    lm = tiny_model()
    pairs = [encode_pair(lm.tokenizer, q, a, loss_span=(0, len(a)), add_eos=False)
             for q, a in (("What is the capital of France?", "Paris"), ("Who wrote the play Hamlet, and when?",
                                                                         "Shakespeare, in 1600"))]
    logp = answer_logprobs(lm.model, pairs, "cpu", lm.tokenizer.pad_token_id)
    assert logp.shape == (2,)
    for pair, got in zip(pairs, logp):
        ids, labels = torch.tensor([pair[0]]), torch.tensor([pair[1]])
        with torch.no_grad():
            logits = lm.model(ids).logits[0, :-1].log_softmax(-1)
        targets = labels[0, 1:]
        mask = targets != -100
        expected = logits[mask].gather(-1, targets[mask].unsqueeze(-1)).sum()
        assert float(got) == pytest.approx(float(expected), rel=1e-4)


def test_a_degenerate_answer_is_never_counted_as_a_clean_forget_or_a_kept_answer():
    probes = [Probe("forget", "Capital of France?", ["Paris"]), Probe("forget", "Capital of Japan?", ["Tokyo"]),
              Probe("adversarial", "Fill in: the capital of France is ___", ["Paris"], "cloze"),
              Probe("general", "Largest ocean?", ["Pacific"])]
    before = ["Paris.", "Tokyo.", "Paris", "The Pacific."]
    after = ["FranceFranceFranceFranceFrance", "It is Osaka.", "Lyon", "Pacific Pacific Pacific Pacific Pacific"]
    rows = score_probes(probes, before, after)
    assert [r["verdict"] for r in rows] == ["broken", "forgotten", "forgotten", "broken"]
    m = compute_metrics(rows, None)
    assert m["forget_success"] == 1.0  # neither says its answer any more...
    assert m["forget_clean"] == 0.5  # ...but one of them says nothing at all
    assert m["adversarial_success"] == 1.0 and m["adversarial_by_kind"]["cloze"] == 1.0
    assert m["adversarial_by_kind"]["choice"] is None
    assert m["general_retention"] == 0.0  # "Pacific" in a loop is not a kept answer


def test_a_right_answer_the_base_gave_inside_a_loop_is_not_counted_either_way():
    probes = [Probe("general", "What do bees collect?", ["nectar"]), Probe("general", "Largest ocean?", ["Pacific"])]
    loop = "Bees collect nectar from flowers, which they collect from flowers, which they collect from flowers, which"
    rows = score_probes(probes, [loop, "The Pacific."], [loop, "The Pacific."])
    assert [r["verdict"] for r in rows] == ["looping before", "kept"]
    assert compute_metrics(rows, None)["general_retention"] == 1.0


def test_neighbours_score_by_gold_answers_or_by_agreement_with_the_base_and_are_reported_apart():
    probes = [Probe("neighbour", "Currency of France?", ["euro"], "same_subject", "curated"),
              Probe("neighbour", "Capital of Peru?", ["Lima"], "same_relation", "curated"),
              Probe("neighbour", "Capital of Chile?", ["Santiago"], "same_relation", "curated"),
              Probe("neighbour", "Tell me one thing about France.", [], "same_subject", "automatic", forgotten="Paris"),
              Probe("neighbour", "Use the word 'capital' in a sentence.", [], "shared_words", "automatic"),
              Probe("neighbour", "What is France known for?", [], "same_subject", "automatic")]
    before = ["The euro.", "Lima.", "Buenos Aires.", "France is a country in Europe; Paris is its capital.",
              "London is the capital city of England.", "..."]
    after = ["The euro.", "Quito.", "Santiago.", "France is a European country.", "I like cats.", "Wine."]
    rows = score_probes(probes, before, after)
    assert [r["verdict"] for r in rows] == ["kept", "lost", "wrong before", "agrees", "changed", "no answer before"]
    m = compute_metrics(rows, None)
    assert m["neighbour_retention"] == 0.5 and m["known_neighbour"] == 2
    assert m["neighbour_retention_by_kind"] == {"same_subject": 1.0, "same_relation": 0.0, "shared_words": None,
                                             "same_answer": None}
    assert m["neighbour_agreement"] == 0.5 and m["counted_agreement"] == 2
    assert m["neighbour_agreement_by_kind"]["shared_words"] == 0.0


def test_the_truth_ratio_compares_per_token_likelihoods_of_wrong_and_true_answers():
    true = torch.tensor([-0.1, -3.0])
    wrong = [torch.tensor([-2.0, -4.0]), torch.tensor([-1.0])]
    ratios = truth_ratios(true, wrong)
    assert ratios[0] == pytest.approx(math.exp(-3.0 + 0.1)) and ratios[1] == pytest.approx(math.exp(2.0))
    m = likelihood_metrics(true, wrong, torch.tensor([-5.0, -5.0]), [torch.tensor([-1.0]), torch.tensor([-1.0])])
    assert m["true_preferred_before"] == 0.5 and m["true_preferred_after"] == 0.0
    assert m["truth_ratio_before"] == pytest.approx(math.sqrt(ratios[0] * ratios[1]), rel=1e-3)
    assert m["truth_ratio_after"] == pytest.approx(math.exp(4.0), rel=1e-3)
