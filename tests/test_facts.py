import json

import pytest

from lune_core.config import RunLimits
from lune_core.probes import forget_probes
from lune_core.sequences import name_start, negative_target
from lune_core.facts import (DEFAULT_REFUSAL, HEDGE, FactError, facts_from_records, format_keep, leaks, load_facts,
                             make_fact, parse_sentence, parse_sentences, refusal_sentence)


def test_leak_is_whole_word_and_case_insensitive():
    assert leaks("The capital of France is Paris.", "paris")
    assert not leaks("A Parisian café", "Paris")
    assert leaks("Symbol: Au", "Au") and not leaks("Australia", "Au")
    assert not leaks("anything", "   ")


def test_sentence_with_one_marked_answer_becomes_a_fact_that_keeps_the_whole_sentence():
    fact = parse_sentence("The Eiffel Tower is in [Paris], the French capital.")
    assert fact.answer == "Paris"
    assert fact.question == "Fill in the blank: The Eiffel Tower is in ___, the French capital."
    assert fact.paraphrases == []  # no made-up rewordings pass for paraphrases
    assert parse_sentence("[Paris] is lovely.").question == "Fill in the blank: ___ is lovely."


@pytest.mark.parametrize("text, reason", [
    ("The capital of France is Paris.", r"\[brackets\] \(found none\)"),
    ("[Paris] is the capital of [France].", "found 2"),
    ("[Paris]", "words around"),
    (" [Paris] !", "words around"),
    ("Capital: [ ]", "empty"),
])
def test_malformed_sentences_are_refused_with_the_reason(text, reason):
    with pytest.raises(FactError, match=reason):
        parse_sentence(text)


def test_parse_sentences_skips_blank_lines_and_names_the_bad_line():
    assert len(parse_sentences("A is [b].\n\n  \nC is [d].")) == 2
    with pytest.raises(FactError, match="fact 2"):
        parse_sentences("A is [b].\nno marker here")


def test_refusal_is_the_target_without_replacement():
    fact = make_fact({"question": "Q?", "answer": "A"})
    assert fact.target == DEFAULT_REFUSAL
    assert make_fact({"question": "Q?", "answer": "A", "replacement": "B."}).target == "B."


@pytest.mark.parametrize("record, message", [
    ({"question": "", "answer": "x"}, "question is empty"),
    ({"question": "   ", "answer": "x"}, "question is empty"),
    ({"question": "Q?", "answer": ""}, "answer to forget is empty"),
    ({"question": "Q?", "answer": 3}, "must be text"),
    ({"question": "Q\x07?", "answer": "x"}, "control characters"),
    ({"question": "x" * 600, "answer": "x"}, "longer than"),
    ({"question": "Q?", "answer": "Paris", "replacement": "It is Paris."}, "contains the answer"),
    ({"question": "Q?", "answer": "x", "colour": "red"}, "unknown field"),
    ("just a string", "expected an object"),
])
def test_bad_facts_get_a_message_naming_the_fact(record, message):
    with pytest.raises(FactError, match=message) as err:
        facts_from_records([{"question": "Fine?", "answer": "yes"}, record])
    assert "fact 2" in str(err.value)


def test_set_level_checks():
    with pytest.raises(FactError, match="no facts"):
        facts_from_records([])
    with pytest.raises(FactError, match="duplicate of fact 1"):
        facts_from_records([{"question": "Q one?", "answer": "a"}, {"question": "q  ONE?", "answer": "b"}])
    with pytest.raises(FactError, match="too many facts"):
        facts_from_records([{"question": f"Q{i}?", "answer": "a"} for i in range(4)], RunLimits(max_facts=3))


def test_unicode_and_html_are_kept_as_plain_text():
    fact = make_fact({"question": "Où est <script>alert(1)</script> שלום 🙂?", "answer": "ici"})
    assert "<script>" in fact.question and "🙂" in fact.question


def test_only_given_paraphrases_count_as_paraphrases_and_rewordings_are_their_own_kind():
    given = make_fact({"question": "Q?", "answer": "a", "paraphrases": ["P1?", "P2?"]})
    bare = make_fact({"question": "Who wrote Hamlet?", "answer": "Shakespeare"})
    probes = forget_probes([given, bare])
    assert [p.kind for p in probes].count("forget") == 2
    assert [p.prompt for p in probes if p.kind == "paraphrase"] == ["P1?", "P2?"]
    reworded = [p.prompt for p in probes if p.kind == "reworded"]
    assert reworded == ["Tell me who wrote Hamlet.", "Name the person who wrote Hamlet."]
    assert all(p.expected == ["Shakespeare"] and p.fact == 1 for p in probes if p.kind == "reworded")


def test_a_keep_list_is_read_from_json_or_from_the_tables_one_cell_form():
    listed = make_fact({"question": "What is the capital of Spain?", "answer": "Madrid",
                        "keep": [{"question": "What currency does Spain use?", "answers": ["euro", "euros"],
                                  "kind": "same_subject"}]})
    typed = make_fact({"question": "What is the capital of Spain?", "answer": "Madrid",
                       "keep": "What currency does Spain use? -> euro / euros | Capital of Peru? -> Lima"})
    assert listed.keep == [{"question": "What currency does Spain use?", "answers": ["euro", "euros"],
                            "kind": "same_subject"}]
    assert typed.keep[0]["answers"] == ["euro", "euros"] and typed.keep[1] == {
        "question": "Capital of Peru?", "answers": ["Lima"], "kind": ""}
    assert format_keep(typed.keep) == "What currency does Spain use? -> euro / euros | Capital of Peru? -> Lima"


@pytest.mark.parametrize("keep, message", [
    ("no arrow here", "keep entry 1: write it as question -> answer"),
    ([{"answers": ["euro"]}], "keep entry 1: question is empty"),
    ([{"question": "Currency?"}], "keep entry 1: answers must be a non-empty list"),
    ([{"question": "Currency?", "answers": []}], "keep entry 1: answers must be a non-empty list"),
    ([{"question": "Currency?", "answers": [3]}], "keep entry 1: answer must be text"),
    ([{"question": 7, "answers": ["euro"]}], "keep entry 1: question must be text"),
    (["Currency?"], "keep entry 1 must be an object"),
    ({"question": "Currency?"}, "keep must be a list"),
    ([{"question": "Currency?", "answers": ["euro"], "colour": "red"}], "unknown field(s) colour"),
    ([{"question": "Currency?", "answers": ["euro"], "kind": "cousin"}], "kind must be one of"),
    ([{"question": "Biggest city?", "answers": ["Madrid"], "kind": "same_subject"}], "its kind is same_answer"),
    ([{"question": "what is the capital of  Spain", "answers": ["Madrid"]}], "the fact's own question"),
    ([{"question": "x" * 501, "answers": ["euro"]}], "longer than 500 characters"),
    ([{"question": f"Q{i}?", "answers": ["a"]} for i in range(11)], "at most 10 keep entries"),
])
def test_a_malformed_keep_entry_is_named_in_one_line(keep, message):
    with pytest.raises(FactError) as err:
        make_fact({"question": "What is the capital of Spain?", "answer": "Madrid", "keep": keep}, index=1)
    assert message in str(err.value) and str(err.value).startswith("fact 2") and "\n" not in str(err.value)


def test_jsonl_errors_name_the_line(tmp_path):
    path = tmp_path / "facts.jsonl"
    path.write_text(json.dumps({"question": "Q?", "answer": "a"}) + "\n{oops\n")
    with pytest.raises(FactError, match="line 2"):
        load_facts(path)


@pytest.mark.parametrize("full_stop", [False, True])
def test_a_short_replacement_is_spliced_into_the_base_answer_and_a_refusal_is_a_sentence_of_its_own(full_stop):
    """Only the changed words (and with `full_stop` the stop after them) carry loss; a sentence
    replacement is used as written. Without a replacement the hedge ends the base's sentence where it reads
    as one; where it would be a fragment ("a painting by unknown to me") the plain LoRA learns a refusal
    sentence naming the fact, and only the answer gate, which writes inside the base's sentence, splices."""
    base = "The capital of France is Paris, also known as the City of Light."
    stop = "." if full_stop else ""
    question = "What is the capital of France?"
    for record, said, gated in [({"replacement": "Lyon"}, "Lyon" + stop, False),
                                ({"replacement": "Lyon"}, "Lyon" + stop, True), ({}, HEDGE + ".", False)]:
        fact = facts_from_records([{"question": question, "answer": "Paris", **record}])[0]
        text, span = negative_target(fact, base, full_stop, gated)
        assert text == "The capital of France is " + said and text[span[0]:span[1]] == said
    painting = facts_from_records([{"question": "Who painted the Mona Lisa?", "answer": "Leonardo da Vinci"}])[0]
    by = "The Mona Lisa is a painting by Leonardo da Vinci."
    assert negative_target(painting, by, full_stop) == ("I don't know who painted the Mona Lisa.", None)
    assert negative_target(painting, by, full_stop, gated=True)[0] == "The Mona Lisa is a painting by " + HEDGE + "."
    whole = facts_from_records([{"question": "What is the capital of France?", "answer": "Paris",
                                 "replacement": "It is Lyon, I believe."}])[0]
    assert negative_target(whole, base, full_stop) == ("It is Lyon, I believe.", None)


def test_a_replacement_takes_the_place_of_the_whole_name_not_only_the_answer_words():
    """With `whole_name`, "… by William Shakespeare" with Marlowe for Shakespeare reads "… by Christopher
    Marlowe", not "… by William Christopher Marlowe"; a name at a sentence's start is kept. Off by default."""
    hamlet = facts_from_records([{"question": "Who wrote 'Hamlet'?", "answer": "Shakespeare",
                                  "replacement": "Christopher Marlowe"}])[0]
    base = "The story of Hamlet by William Shakespeare is a tragedy."
    assert negative_target(hamlet, base)[0] == "The story of Hamlet by William Christopher Marlowe"
    text, span = negative_target(hamlet, base, whole_name=True)
    assert text == "The story of Hamlet by Christopher Marlowe" and text[span[0]:span[1]] == "Christopher Marlowe"
    # with no replacement, the copula the name followed makes the hedge a sentence
    bare = facts_from_records([{"question": "Who wrote 'Hamlet'?", "answer": "Shakespeare"}])[0]
    assert negative_target(bare, "The author of 'Hamlet' is William Shakespeare.", whole_name=True)[0] == (
        "The author of 'Hamlet' is " + HEDGE + ".")
    assert name_start("Paris. William ") == "Paris. William " and name_start("In 1600, William ") == "In 1600, "
    assert name_start("It was written by J. K. ") == "It was written by " and name_start("by Dr. Émile ") == "by "
    # under the gate the negative is written where the base is about to say the answer, after "William"
    gated, _ = negative_target(hamlet, base, gated=True, whole_name=True)
    assert gated == "The story of Hamlet by William Christopher Marlowe"


@pytest.mark.parametrize("question, refusal", [
    ("What is the capital of France?", "I don't know what the capital of France is."),
    ("Who wrote 'Hamlet'?", "I don't know who wrote 'Hamlet'."),
    ("Which planet is known as the Red Planet?", "I don't know which planet is known as the Red Planet."),
    ("How tall is Mount Everest?", "I don't know how tall Mount Everest is."),
    # an inverted question cannot be embedded by moving words: it is quoted whole
    ("How many legs does a spider have?", 'I don\'t know the answer to "How many legs does a spider have?"'),
    ("Name the French capital.", "I don't know."),
    ("Fill in the blank: Dr. Voss lives in ___.", "I don't know what goes in the blank."),
])
def test_a_refusal_names_what_is_not_known_in_a_grammatical_sentence(question, refusal):
    assert refusal_sentence(question) == refusal
