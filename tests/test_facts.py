import json

import pytest

from lune_core.config import RunLimits
from lune_core.facts import (DEFAULT_REFUSAL, FactError, facts_from_records, forget_probes, leaks, load_facts,
                             make_fact, parse_sentence, parse_sentences)


def test_leak_is_whole_word_and_case_insensitive():
    assert leaks("The capital of France is Paris.", "paris")
    assert not leaks("A Parisian café", "Paris")
    assert leaks("Symbol: Au", "Au") and not leaks("Australia", "Au")
    assert not leaks("anything", "   ")


def test_sentence_with_one_marked_answer_becomes_a_fact():
    fact = parse_sentence("The capital of France is [Paris].")
    assert fact.answer == "Paris"
    assert "The capital of France is" in fact.question
    assert fact.paraphrases and all("___" in p for p in fact.paraphrases)


@pytest.mark.parametrize("text, reason", [
    ("The capital of France is Paris.", "found no"),
    ("[Paris] is the capital of [France].", "found 2"),
    ("[Paris] is lovely", "before the"),
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


def test_probes_use_given_paraphrases_else_templates():
    given = make_fact({"question": "Q?", "answer": "a", "paraphrases": ["P1?", "P2?"]})
    bare = make_fact({"question": "Who wrote Hamlet?", "answer": "Shakespeare"})
    probes = forget_probes([given, bare])
    kinds = [p.kind for p in probes]
    assert kinds.count("forget") == 2
    assert [p.prompt for p in probes if p.kind == "paraphrase"][:2] == ["P1?", "P2?"]
    assert any("Who wrote Hamlet?" in p.prompt for p in probes[4:])
    assert all(p.expected == ["a"] for p in probes if p.prompt.startswith("P"))


def test_jsonl_errors_name_the_line(tmp_path):
    path = tmp_path / "facts.jsonl"
    path.write_text(json.dumps({"question": "Q?", "answer": "a"}) + "\n{oops\n")
    with pytest.raises(FactError, match="line 2"):
        load_facts(path)
