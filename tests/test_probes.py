"""The probes built from a fact: rewordings, adversarial forms, neighbours in order of precedence."""
import json

from lune_core.facts import NEIGHBOUR_KINDS, facts_from_records, leaks
from lune_core.probes import (AFFIRMATIVE_PREFIX, NeighbourSources, agrees, build_probes, cloze,
                              neighbour_probes, rewordings, subject_span)
from lune_core.assets import assets_dir
from lune_core.runner import load_anchors, load_general, load_neighbour_sources

GENERAL = [{"question": "What is the largest ocean on Earth?", "answers": ["Pacific"]},
           {"question": "What is the tallest mountain in the world?", "answers": ["Everest"]},
           {"question": "What is the longest river in Africa?", "answers": ["Nile"]},
           {"question": "Which city is known as the Big Apple?", "answers": ["New York"]}]
ENTITIES = {"country": ["Japan", "Peru", "Chile", "Kenya", "Spain"], "element": ["zinc", "neon"]}


def sources(curated=None) -> NeighbourSources:
    return NeighbourSources(curated=curated or {}, vocabulary=load_anchors() + [r["question"] for r in load_general()],
                            entities=ENTITIES)


def test_rewordings_change_the_form_of_the_question_not_the_filler_around_it():
    assert rewordings("What is the capital of France?") == ["Tell me what the capital of France is.",
                                                            "Name the capital of France."]
    assert rewordings("Which planet is known as the Red Planet?") == [
        "Name the planet that is known as the Red Planet."]
    assert rewordings("Where does Dr. Elara Voss live?") == []  # no rule: none made up


def test_every_fact_gets_the_four_adversarial_forms_with_the_answer_among_the_options():
    facts = facts_from_records([{"question": "What is the capital of France?", "answer": "Paris",
                                 "replacement": "Lyon"},
                                {"question": "What is the capital of Japan?", "answer": "Tokyo"}])
    made = build_probes(facts, ["The capital of France is Paris.", "Tokyo."], GENERAL, sources(), seed=0)
    adversarial = [p for p in made.probes if p.kind == "adversarial"]
    assert [(p.fact, p.subkind) for p in adversarial] == [(i, k) for i in (0, 1)
                                                          for k in ("cloze", "choice", "prefix", "in_context")]
    choice = adversarial[1].prompt
    assert "Paris" in choice and "Lyon" in choice and "Tokyo" in choice  # replacement, the other capital
    assert made.wrong[0][:2] == ["Lyon", "Tokyo"] and not any(leaks(w, "Paris") for w in made.wrong[0])
    assert adversarial[0].prompt == 'Fill in the blank with the missing words: "The capital of France is ___"'
    assert adversarial[4].prompt.startswith('Fill in the blank: "What is the capital of Japan?')
    assert adversarial[2].prefill == AFFIRMATIVE_PREFIX and adversarial[2].prompt == facts[0].question
    shots = adversarial[3].prompt.split("\n\n")
    assert len(shots) == 4 and shots[-1] == "Q: What is the capital of France?\nA:"
    assert all(p.expected == [facts[p.fact].answer] for p in adversarial)


def test_cloze_blanks_the_answer_in_the_base_models_own_words():
    fact = facts_from_records([{"question": "Who wrote 'Hamlet'?", "answer": "Shakespeare"}])[0]
    assert cloze(fact, "'Hamlet' was written by William Shakespeare in 1600.") == \
        'Fill in the blank with the missing words: "\'Hamlet\' was written by William ___"'


def test_neighbours_come_from_the_facts_keep_list_then_the_curated_list_then_automatically():
    facts = facts_from_records([
        {"question": "What is the capital of Spain?", "answer": "Madrid",
         "keep": [{"question": "What currency does Spain use?", "answers": ["euro"], "kind": "same_subject"}]},
        {"question": "What is the capital of Japan?", "answer": "Tokyo"},
        {"question": "What is the capital of Chile?", "answer": "Santiago"}])
    curated = {"what is the capital of spain?": [{"question": "Not used?", "answers": ["x"], "kind": "same_relation"}],
               "what is the capital of japan?": [{"question": "What is the currency of Japan?", "answers": ["yen"],
                                                  "kind": "same_subject"}]}
    probes = neighbour_probes(facts, sources(curated), seed=0)
    by_fact = {i: [p for p in probes if p.fact == i] for i in range(3)}
    assert [(p.prompt, p.source, p.subkind) for p in by_fact[0]] == [
        ("What currency does Spain use?", "given", "same_subject")]
    assert [(p.prompt, p.source, p.expected) for p in by_fact[1]] == [
        ("What is the currency of Japan?", "curated", ["yen"])]
    auto = by_fact[2]
    assert auto and all(p.source == "automatic" and p.expected == [] for p in auto)
    kinds = {p.subkind for p in auto}
    assert kinds == {"same_subject", "same_relation", "shared_words"}
    swapped = [p.prompt for p in auto if p.subkind == "same_relation"]
    # other countries, but never a subject the run itself forgets (Spain, Japan)
    assert swapped and all(p.startswith("What is the capital of ") for p in swapped)
    assert not any("Spain" in p or "Japan" in p or "Chile" in p for p in swapped)
    assert not any("Santiago" in p.prompt for p in auto)


def test_the_subject_is_the_stretch_of_words_no_other_prompt_shares():
    vocab = load_anchors() + [r["question"] for r in load_general()]
    assert subject_span("What is the capital of Japan?", vocab) == "Japan"
    assert subject_span("Who wrote 'Animal Farm'?", vocab) == "'Animal Farm'"


def test_agreement_asks_for_half_the_base_answers_content_words_leaving_the_forgotten_answer_out():
    base = "Japan is an island country in East Asia, famous for Tokyo. It has mountains."
    assert agrees(base, "Japan is an island nation in East Asia.", "Tokyo") is True
    assert agrees(base, "I am not sure about that.", "Tokyo") is False
    assert agrees(base, "Japan, an island country of Asia.", "Tokyo") is True
    assert agrees("", "anything") is None and agrees("It is.", "x") is None


def test_the_shipped_curated_neighbours_cover_every_preset_fact_and_are_never_trained_on():
    curated = load_neighbour_sources().curated
    anchors = {" ".join(a.lower().split()) for a in load_anchors()}
    general = {" ".join(r["question"].lower().split()) for r in load_general()}
    for path in sorted((assets_dir() / "presets").glob("*.jsonl")):
        preset = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        answers = [f["answer"] for f in preset]
        for fact in preset:
            keep = curated.get(" ".join(fact["question"].lower().split()))
            assert keep, f"no curated neighbours for {fact['question']!r}"
            for entry in keep:
                question = " ".join(entry["question"].lower().split())
                assert question not in anchors and question not in general, entry["question"]
                assert entry["kind"] in NEIGHBOUR_KINDS
                if entry["kind"] == "same_answer":  # another fact whose answer is this fact's answer
                    assert entry["answers"] == [fact["answer"]], entry
                else:
                    assert not any(leaks(a, answer) for a in entry["answers"] for answer in answers), entry


def test_nothing_the_method_trains_on_is_a_probe_that_scores_it():
    """The anchors and the retain set (held to the base's answers in training) share no prompt with
    the general set or the curated neighbours, and training neighbours never equal a scoring probe."""
    def norm(text):
        return " ".join(text.lower().split()).rstrip("?.! ")

    scored = {norm(r["question"]) for r in load_general()}
    scored |= {norm(e["question"]) for keep in load_neighbour_sources().curated.values() for e in keep}
    trained = [norm(a) for a in load_anchors()]
    assert len(trained) >= 290 and not set(trained) & scored
    facts = facts_from_records([{"question": "What is the capital of Chile?", "answer": "Santiago"}])
    probes = [p.prompt for p in neighbour_probes(facts, sources(), seed=0)]
    from lune_core.retain_set import training_neighbours

    near = training_neighbours(facts, sources(), seed=0, scored=probes)
    assert near and not {norm(p) for p in near} & {norm(p) for p in probes}


def test_a_subject_in_no_category_is_never_swapped_for_another_categorys_name():
    """'Who painted the Coca-Cola?' is no question: the same question about another subject is asked only
    with a subject of the same kind."""
    facts = facts_from_records([{"question": "Who painted the Mona Lisa?", "answer": "Leonardo"}])
    probes = neighbour_probes(facts, sources(), seed=0)
    assert probes and not [p for p in probes if p.subkind == "same_relation"]
    assert not any(name in p.prompt for p in probes for names in ENTITIES.values() for name in names)
