"""Base answers are asked once: in memory per process, and on disk across processes for a model with
a stable identity; a store cut short by a crash costs only the lost answers."""
import dataclasses

import pytest

from lune_core import generation
from tests.tiny import tiny_model

pytestmark = pytest.mark.integration  # a tiny model, a subprocess or the app server


def test_base_answers_come_back_from_the_store_in_a_new_process_without_generating(tmp_path, monkeypatch):
    store = tmp_path / "answers.jsonl"
    first = dataclasses.replace(tiny_model(), answer_store=store)
    asked = generation.base_answers(first, ["Name a colour.", "What do bees make?"], 4, prefills=["", "Sure,"])
    assert len(store.read_text().splitlines()) == 2
    with open(store, "a") as handle:
        handle.write('["half a line')  # a crash in the middle of a write
    calls = []
    monkeypatch.setattr(generation, "generate", lambda *a, **k: calls.append(a[1]) or ["new"] * len(a[1]))
    second = dataclasses.replace(tiny_model(), answer_store=store, base_answer_cache={}, stored_answers=None)
    again = generation.base_answers(second, ["Name a colour.", "What do bees make?", "Count to three."], 4,
                                    prefills=["", "Sure,", ""])
    assert again[:2] == asked and again[2] == "new" and calls == [["Count to three."]]
    # the same prompt with another prefill or answer length is another question
    assert generation.base_answers(second, ["Name a colour."], 5) == ["new"]
