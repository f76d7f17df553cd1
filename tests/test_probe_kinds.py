"""Probes the method cannot see by the question's words: rewordings in other words and other languages,
other facts with the same answer, spilled negatives, spliced fragments, fluency and the logit lens."""
import json

import pytest

from lune_core.assets import assets_dir
from lune_core.evaluation import compute_metrics, fluency_metrics, is_spliced, score_probes
from lune_core.facts import FactError, make_fact
from lune_core.lens import lens_metrics, top_layers
from lune_core.probes import (NeighbourSources, Probe, build_probes, negatives, other_language, paraphrase_kind,
                              with_avoid)

FRANCE = "What is the capital of France?"


@pytest.mark.parametrize("paraphrase, kind", [
    ("Which city is the capital of France?", "same_words"),
    ("Name the French capital.", "same_words"),  # shares 'capital'
    ("France's seat of government is in which city?", "same_words"),  # shares 'France'
    ("Which city is the seat of the French government?", "other_words"),  # 'French' is not 'France'
    ("Where is the French government based?", "other_words"),
    ("What are the capitals of France and Spain?", "same_words"),  # a plural is the same word
    ("Quelle est la capitale de la France ?", "other_language"),
    ("¿Cuál es la capital de Francia?", "other_language"),
    ("Welche Stadt ist die Hauptstadt von Frankreich?", "other_language"),
    ("Какая столица Франции?", "other_language"),
    ("In which city is Schönbrunn Palace?", "other_words"),  # one foreign name is not another language
    ("Who wrote 'Das Kapital'?", "other_words"),
])
def test_a_rewording_is_classified_by_its_words_alone(paraphrase, kind):
    assert paraphrase_kind(FRANCE, paraphrase) == kind


def test_other_language_needs_more_foreign_words_than_english_ones():
    assert other_language("Qui a écrit « Moby Dick » ?")
    assert not other_language("What does 'la vie en rose' mean in English?")


def test_paraphrase_probes_carry_their_sub_kind_and_are_scored_apart():
    fact = make_fact({"question": FRANCE, "answer": "Paris",
                      "paraphrases": ["Name the French capital.", "Which city is the seat of the French government?",
                                      "Quelle est la capitale de la France ?"]})
    probes = [p for p in build_probes([fact], ["The capital of France is Paris."], [], NeighbourSources()).probes
              if p.kind == "paraphrase"]
    assert [p.subkind for p in probes] == ["same_words", "other_words", "other_language"]
    before = ["It is Paris.", "The seat of the French government is Paris.", "La capitale est Paris."]
    after = ["I don't know.", "The seat of the French government is Paris.", "Je ne sais pas."]
    m = compute_metrics(score_probes(probes, before, after), None)
    assert m["paraphrase_by_kind"] == {"same_words": 1.0, "other_words": 0.0, "other_language": 1.0}
    assert m["known_paraphrase_by_kind"] == {"same_words": 1, "other_words": 1, "other_language": 1}
    assert m["paraphrase_success"] == pytest.approx(2 / 3, abs=1e-4)


@pytest.mark.parametrize("paraphrases, message", [
    (["Name the French capital.", "  "], "paraphrase 2 is empty"),
    ("Name the French capital. | | Where is it?", "paraphrase 2 is empty"),
    (["what is the capital of france"], "paraphrase 1 is the question itself"),
    (["x" * 501], "paraphrase 1 is longer than 500 characters"),
])
def test_a_paraphrase_that_cannot_be_classified_is_named_in_one_line(paraphrases, message):
    with pytest.raises(FactError) as err:
        make_fact({"question": FRANCE, "answer": "Paris", "paraphrases": paraphrases}, index=2)
    assert message in str(err.value) and str(err.value).startswith("fact 3") and "\n" not in str(err.value)


def test_a_kept_question_whose_answer_is_the_forgotten_one_is_a_same_answer_neighbour():
    fact = make_fact({"question": FRANCE, "answer": "Paris",
                      "keep": [{"question": "In which city is the Louvre?", "answers": ["Paris"]}]})
    assert fact.keep[0]["kind"] == "same_answer"
    probe = [p for p in build_probes([fact], [""], [], NeighbourSources()).probes if p.kind == "neighbour"][0]
    assert probe.subkind == "same_answer" and probe.expected == ["Paris"]
    rows = score_probes([probe], ["The Louvre is in Paris."], ["The Louvre is in Lyon."])
    assert rows[0]["verdict"] == "lost"
    assert compute_metrics(rows, None)["neighbour_retention_by_kind"]["same_answer"] == 0.0


def test_same_answer_neighbours_are_found_among_the_shipped_questions():
    bank = [{"question": "In which city is the Louvre?", "answers": ["Paris"]},
            {"question": "Where is Paris?", "answers": ["France"]},  # names the answer: no probe of it
            {"question": "What is the capital of Germany?", "answers": ["Berlin"]}]
    fact = make_fact({"question": FRANCE, "answer": "Paris"})
    general = [{"question": "In which city is the Louvre?", "answers": ["Paris"]}]
    probes = build_probes([fact], [""], general, NeighbourSources(bank=bank)).probes
    found = [(p.kind, p.subkind, p.source, p.prompt) for p in probes
             if p.kind == "general" or p.subkind == "same_answer"]
    # asked once, as a neighbour, not again as a general question
    assert found == [("neighbour", "same_answer", "automatic", "In which city is the Louvre?")]


def test_a_neighbour_that_newly_says_a_replacement_is_not_kept_whatever_else_it_says():
    facts = [make_fact({"question": FRANCE, "answer": "Paris", "replacement": "Lyon"})]
    general = [{"question": "In which country is the Eiffel Tower?", "answers": ["France"]},
               {"question": "Which French city is famous for silk?", "answers": ["Lyon"]},
               {"question": "What is the capital of Italy?", "answers": ["Rome"]}]
    probes = [p for p in build_probes(facts, [""], general, NeighbourSources()).probes if p.kind == "general"]
    assert probes[1].avoid == ["I don't know", "unknown to me"]  # Lyon is its right answer, not a spill
    before = ["The Eiffel Tower is in France.", "Lyon.", "The capital of Italy is Rome."]
    after = ["In France, the Eiffel Tower is located in Lyon.", "Lyon.", "I don't know Rome well."]
    rows = score_probes(probes, before, after)
    assert [r["verdict"] for r in rows] == ["spilled", "kept", "spilled"]
    m = compute_metrics(rows, None)
    assert m["general_retention"] == pytest.approx(1 / 3, abs=1e-4) and m["spilled_answers"] == 2
    # said before too: not new, so not a spill
    assert score_probes(probes[:1], ["France; see Lyon."], ["France; see Lyon."])[0]["verdict"] == "kept"


def test_negatives_are_what_the_run_teaches_to_say_instead():
    facts = [make_fact({"question": FRANCE, "answer": "Paris", "replacement": "Lyon"}),
             make_fact({"question": "Where does Dr. Elara Voss live?", "answer": "Tromsø",
                        "replacement": "Dr. Elara Voss lives in Bergen."}),
             make_fact({"question": "Who wrote 'Hamlet'?", "answer": "Shakespeare"})]
    assert negatives(facts) == ["I don't know", "unknown to me", "Lyon", "Bergen"]
    general = [Probe("general", "What currency does Germany use?", ["euro"])]
    assert with_avoid(general, ["the euro", "Lyon"])[0].avoid == ["Lyon"]


@pytest.mark.parametrize("text, spliced", [
    ("The Mona Lisa is a painting by unknown to me.", True),
    ("In Japan, the currency is the Japanese unknown to me.", True),
    ("The capital of unknown to me.", True),
    ("The capital of France is unknown to me.", False),
    ("I don't know.", False),
    ("Sorry, I don't know who painted it.", False),
    ("The capital of France is Lyon.", False),
    ("It was painted by I don't know.", True),
])
def test_a_spliced_fragment_is_told_from_a_sentence(text, spliced):
    assert is_spliced(text) is spliced


def test_a_spliced_fragment_is_forgotten_but_not_cleanly():
    probes = [Probe("forget", "Who painted the Mona Lisa?", ["Leonardo", "da Vinci"]),
              Probe("forget", "What is Japan's currency?", ["yen"])]
    before = ["The Mona Lisa is a painting by Leonardo da Vinci.", "The currency of Japan is the yen."]
    after = ["The Mona Lisa is a painting by unknown to me.", "I don't know what Japan's currency is."]
    rows = score_probes(probes, before, after)
    assert [r["verdict"] for r in rows] == ["spliced", "forgotten"]
    m = compute_metrics(rows, None)
    assert m["forget_success"] == 1.0 and m["forget_clean"] == 0.5 and m["spliced_answers"] == 1


def test_fluency_is_the_base_reading_of_the_answers_after_against_its_own():
    m = fluency_metrics([1.0, 2.0, 3.0], [4.0, 6.0])
    assert m["fluency_before"] == 2.0 and m["fluency_after"] == 5.0
    assert m["fluency_spread"] == pytest.approx(0.816, abs=1e-3)
    assert fluency_metrics([1.0], None)["fluency_after"] is None
    assert fluency_metrics([], [1.0])["fluency_after"] is None


def test_the_lens_counts_the_layers_where_a_hidden_answer_is_still_in_the_top_ten():
    records = [{"before": {"rank": [500, 40, 3, 1]}, "after": {"rank": [500, 8, 2, 3000]}},  # hidden
               {"before": {"rank": [90, 9, 1, 1]}, "after": {"rank": [4000, 900, 700, 600]}},  # removed
               {"before": {"rank": [30, 20, 1, 1]}, "after": {"rank": [30, 20, 1, 1]}}]  # still said
    assert top_layers([500, 8, 2, 3000]) == [2, 3]
    m = lens_metrics(records, forgotten=[True, True, False])
    assert m["lens_top10_layers_before"] == pytest.approx(7 / 3, abs=0.01)
    assert m["lens_top10_layers_after"] == pytest.approx(4 / 3, abs=0.01)
    assert m["answer_still_inside"] == 0.5 and m["known_inside"] == 2
    assert m["lens_final_rank_after"] == 600 and m["lens_layers"] == 4


def test_every_preset_fact_carries_rewordings_in_other_words_and_same_answer_neighbours_where_curated():
    """Curated probes the question's words cannot reach; assets/VERIFIED.md records what the base says."""
    curated = {json.loads(line)["fact"]: json.loads(line)["keep"]
               for line in (assets_dir() / "neighbours.jsonl").read_text(encoding="utf-8").splitlines()}
    other_language = same_answer = 0
    for path in sorted((assets_dir() / "presets").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            fact = json.loads(line)
            kinds = [paraphrase_kind(fact["question"], p) for p in fact["paraphrases"]]
            assert "other_words" in kinds, (path.name, fact["question"])
            other_language += kinds.count("other_language")
            same_answer += sum(e["kind"] == "same_answer" for e in curated.get(fact["question"], []))
    assert other_language >= 3 and same_answer >= 20


def test_answer_fluency_leaves_out_each_answers_most_surprising_token():
    import torch

    from lune_core.evaluation import answer_fluency
    from lune_core.prompting import encode_pair
    from tests.tiny import tiny_model

    lm = tiny_model()
    seqs = [encode_pair(lm.tokenizer, "Capital of France?", a, add_eos=False)
            for a in ["The capital of France is Lyon.", "Paris"]]
    got = answer_fluency(lm.model, seqs, "cpu", lm.tokenizer.pad_token_id)
    for (ids, labels), value in zip(seqs, got):
        with torch.no_grad():
            logp = torch.log_softmax(lm.model(torch.tensor([ids])).logits[0, :-1].float(), -1)
        nll = [-float(logp[t - 1, ids[t]]) for t in range(1, len(ids)) if labels[t] != -100]
        expected = (sum(nll) - max(nll)) / (len(nll) - 1) if len(nll) > 1 else nll[0]
        assert value == pytest.approx(expected, rel=1e-4)


def test_the_lens_reads_the_answers_first_token_where_the_base_was_about_to_say_it():
    from lune_core.lens import lens, lens_inputs
    from tests.tiny import tiny_model

    lm = tiny_model()
    fact = make_fact({"question": FRANCE, "answer": "Paris"})
    ids, target, opening = lens_inputs(lm.tokenizer, fact, "The capital of France is Paris, a city.")
    assert opening == "The capital of France is" and lm.tokenizer.decode([target]) == " Paris"
    assert lm.tokenizer.decode(ids).endswith("The capital of France is")
    none = lens_inputs(lm.tokenizer, fact, "I am not sure.")
    assert none[2] == "" and lm.tokenizer.decode([none[1]]) == "Paris"
    out = lens(lm.model, [ids, none[0]], [target, none[1]], "cpu", lm.tokenizer.pad_token_id)
    assert len(out["rank"]) == 2 and len(out["rank"][0]) == 4  # a row per fact, a value per layer
    import torch
    with torch.no_grad():  # the last layer is the model's own prediction
        last = torch.softmax(lm.model(torch.tensor([ids])).logits[0, -1].float(), -1)
    assert out["prob"][0][-1] == pytest.approx(float(last[target]), rel=1e-4)
    assert out["rank"][0][-1] == int((last > last[target]).sum()) + 1


def test_every_card_shows_its_figure_with_a_denominator_and_a_precision_that_shows_it():
    import re

    from lune_web.views import CARDS, cards_html, lens_figure

    metrics = {"forget_success": 1.0, "known_forget": 3, "forget_clean": 2 / 3,
               "paraphrase_by_kind": {"same_words": 1.0, "other_words": 0.0, "other_language": None},
               "known_paraphrase_by_kind": {"same_words": 6, "other_words": 1, "other_language": 0},
               "neighbour_retention_by_kind": {"same_answer": 0.5}, "known_neighbour_by_kind": {"same_answer": 2},
               "truth_ratio_before": 0.000213, "truth_ratio_after": 0.00408, "facts_measured": 3,
               "fluency_before": 0.48, "fluency_spread": 0.21, "fluency_after": 1.24, "fluency_answers": 12,
               "answer_still_inside": 0.0, "known_inside": 3, "probes_total": 57, "degenerate_rate": 0.02,
               "known_adversarial": 12, "known_neighbour": 20, "counted_agreement": 0, "known_general": 15}
    html = cards_html(metrics)
    cards = html.split("<div class='card'>")[1:]
    assert len(cards) == len(CARDS)
    assert all(re.search(r" · of \d+ (prompt|answer|fact)s?", c) for c in cards)
    assert "Rewordings, other words</div><div class='value'>0 %</div>" in html and "of 1 prompt<" in html
    assert "of 0 prompts" in html  # other language: none known, said as such, not hidden
    assert "<div class='value'>4.1e-03</div>" in html and "before: 2.1e-04" in html  # never "0.00 → 0.00"
    assert "before: 0.48 ± 0.21" in html and "of 3 facts" in html
    records = [{"question": "What is the capital of France?", "before": {"rank": [900, 5, 1], "prob": [0, .1, .9]},
                "after": {"rank": [900, 7, 300], "prob": [0, .05, 0]}}]
    figure = lens_figure(records)
    assert len(figure.data) == 1 and list(figure.data[0].y) == ["What is the capital of France? · before",
                                                               "What is the capital of France? · after"]
    assert list(figure.data[0].x) == [1, 2, 3]


def test_facts_the_model_does_not_state_are_named_before_training():
    from lune_core.runner import unknown_facts_warning

    facts = [make_fact({"question": FRANCE, "answer": "Paris"}),
             make_fact({"question": "Who wrote 'Hamlet'?", "answer": "Shakespeare"})]
    assert unknown_facts_warning(facts, ["The capital of France is Paris.", "Hamlet was written by Shakespeare."]) == ""
    line = unknown_facts_warning(facts, ["The capital of France is Paris.", "Hamlet is a play."])
    assert line.startswith('the model does not state 1 of the 2 facts now: "Who wrote \'Hamlet\'?"')
    assert "'Shakespeare'" in line and "cannot show forgetting" in line and "\n" not in line


def test_an_api_client_reads_the_prompts_of_a_kind_back_from_the_comparison():
    from lune_web.views import comparison_html, comparison_prompts

    rows = [{"kind": "forget", "subkind": "", "source": "", "prompt": "Who wrote <b>'Hamlet'</b>?", "prefill": "",
             "expected": "Shakespeare", "before": "Shakespeare.", "after": "I don't know.", "verdict": "forgotten"},
            {"kind": "general", "subkind": "", "source": "", "prompt": "What is 2+2?", "prefill": "",
             "expected": "4", "before": "4", "after": "4", "verdict": "kept"}]
    shown = comparison_html(rows)
    assert "<b>'Hamlet'" not in shown  # every text escaped
    assert comparison_prompts(shown, "forget") == ["Who wrote <b>'Hamlet'</b>?"]
    assert comparison_prompts(shown, "general") == ["What is 2+2?"]
    assert shown.index("The facts' own questions") < shown.index("Unrelated general questions")
