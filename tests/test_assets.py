"""The shipped data: presets load as valid facts, the general set is broad, anchors stay apart."""
import json
from pathlib import Path

from lune_core.facts import load_facts, read_jsonl
from lune_core.runner import load_anchors, load_general

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def test_every_preset_in_the_index_loads_as_valid_facts():
    index = json.loads((ASSETS / "presets.json").read_text())
    assert len(index) >= 4 and {"known", "taught"} >= {p["kind"] for p in index}
    for preset in index:
        facts = load_facts(ASSETS / preset["file"])
        assert facts and preset["title"] and preset["description"]
        assert all(f.paraphrases for f in facts)


def test_general_set_is_broad_and_well_formed():
    general = load_general()
    assert len(general) >= 60
    assert {"geography", "science", "history", "literature", "arithmetic"} <= {r["topic"] for r in general}
    assert all(r["question"].strip() and r["answers"] for r in general)


def test_anchors_never_repeat_an_evaluation_question():
    anchors = set(load_anchors())
    evaluation = {r["question"] for r in load_general()}
    presets = {r["question"] for p in (ASSETS / "presets").glob("*.jsonl") for r in read_jsonl(p)}
    assert len(anchors) >= 32
    assert not anchors & evaluation and not anchors & presets
