"""bench/journey.py's table: every wait against its target and its bound, the runs it timed named."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import journey  # noqa: E402

pytestmark = pytest.mark.unit


def report(facts: int, steps: int) -> dict:
    probes = [{"kind": "forget", "prompt": "What is the capital of France?", "before": "Paris.", "after": "Lyon."}]
    return {"facts": [{}] * facts, "probes": probes * 4, "config": {"answer_holds": 4, "anchors_per_step": 8},
            "metrics": {"steps_run": steps, "train_seconds": 12.5}, "wall_seconds": 30.0}


def test_the_table_sets_every_wait_against_its_target_and_bound():
    waits = {"load": 2.0, "preview": 0.1, "unlearn": 50.0, "ask": 1.0, "robustness": 20.0, "cli_3": 20.0,
             "cli_10": 90.0}
    result = {"waits": waits, "report": report(2, 10), "cli_3": report(3, 15), "cli_10": report(10, 20)}
    bound = {"rate": 2e11, "params": 135e6, "unlearn": 25.0, "ask": 0.1, "preview": 0.2, "cli_3": 10.0, "cli_10": 30.0}
    text = journey.table(result, bound, "Nothing else was running.")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "met" in rows["command line: 3 facts, 24 general questions"]
    assert "**MISSED** | 30.00 | 3.0×" in rows["command line: 10 facts, 24 general questions"]
    assert "**MISSED** | 25.00 | 2.0×" in rows["preset → Unlearn → Compare filled (defaults)"]
    assert "- The command line's 10-fact run: 10 facts, 20 steps, 4 probes" in text


def test_a_runs_token_count_grows_with_its_facts_and_steps():
    class Words:  # a tokenizer of words, enough to count
        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return messages[0]["content"]

        def __call__(self, text):
            return {"input_ids": text.split()}

    small, more_facts, more_steps = (journey.run_tokens(Words(), r) for r in (report(2, 10), report(3, 10),
                                                                               report(2, 20)))
    asked = 4 * (6 + 1) * 2  # four probes of 6 + 1 words, before and after
    assert small == asked + 10 * 3 * (6 * 2 + 8) * journey.ROW_TOKENS
    assert more_facts - small == 10 * 3 * 6 * journey.ROW_TOKENS and more_steps - small == small - asked
