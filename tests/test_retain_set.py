"""The retain set a plain LoRA's KL holds: built from the facts, never a scored probe, never the fact."""
from lune_core.facts import facts_from_records
from lune_core.probes import normalise
from lune_core.retain_set import answer_holds, held_reply

FACTS = facts_from_records([{"question": "What is the capital of France?", "answer": "Paris"},
                            {"question": "Who wrote 'Hamlet'?", "answer": "William Shakespeare"}])


def test_answer_holds_name_the_answer_and_skip_every_scored_prompt():
    holds = answer_holds(FACTS, 4, scored=[])
    assert [i for i, _ in holds] == [0] * 4 + [1] * 4
    assert all(FACTS[i].answer in prompt for i, prompt in holds)
    scored = [holds[1][1].upper()]  # scored prompts are compared normalised
    kept = answer_holds(FACTS, 4, scored=scored)
    assert len(kept) == 7 and normalise(holds[1][1]) not in {normalise(p) for _, p in kept}
    assert answer_holds(FACTS, 0, scored=[]) == []


def test_a_held_reply_stops_where_it_restates_the_fact_or_names_another_forgotten_answer():
    france, hamlet = FACTS
    assert held_reply("Paris is the capital of France.", france, FACTS) == "Paris is the"
    assert held_reply("Paris is famous for the Eiffel Tower.", france, FACTS) == "Paris is famous for the Eiffel Tower."
    # another fact of the run is forgotten too: its answer is never held
    assert held_reply("Paris staged plays by William Shakespeare.", france, FACTS) == "Paris staged plays by"
    # the answer's own words are not a restatement, even when the question shares them
    assert held_reply("William Shakespeare was born in 1564 and wrote many plays.", hamlet, FACTS) == \
        "William Shakespeare was born in 1564 and"
