"""The app through its API (gradio_client), launched as `python app.py` on 127.0.0.1.

Loads the embedded model, unlearns a preset's first fact, reads the comparison, and checks that two
visitors at once each see only their own adapter. Minutes on a CPU: marked slow.
"""
from __future__ import annotations

import time

import pytest

gradio_client = pytest.importorskip("gradio_client")

from lune_core.config import RunLimits  # noqa: E402
from lune_web.forms import FACT_COLUMNS, preset_rows, presets  # noqa: E402

pytestmark = pytest.mark.slow
TABLE = {"headers": FACT_COLUMNS, "data": []}
DEFAULT_SETTINGS = {"method": "lune", "adapter": "lora", "steps": 30, "lr": None, "rank": 8, "layers": "",
                    "seed": 0, "max_new_tokens": 32, "early_stop": True, "general_prompts": 4}


def table(rows: list[list[str]]) -> dict:
    return dict(TABLE, data=[list(r) + [""] * (len(FACT_COLUMNS) - len(r)) for r in rows])


def unlearn(client, rows, **overrides):
    s = dict(DEFAULT_SETTINGS, **overrides)
    return client.submit(table(rows), s["method"], s["adapter"], s["steps"], s["lr"], s["rank"], s["layers"],
                         s["seed"], s["max_new_tokens"], s["early_stop"], s["general_prompts"], api_name="/unlearn")


def compare_rows(outputs) -> list[dict]:
    """The comparison of an /unlearn result (HTML, a fold per kind) as dicts keyed by column."""
    import html
    import re

    from lune_web.views import COMPARE_COLUMNS

    rows = re.findall(r"<tr data-kind='[^']*' data-verdict='[^']*'>(.*?)</tr>", outputs[2], re.S)
    cells = [[html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
             for row in rows]
    return [dict(zip(COMPARE_COLUMNS, row)) for row in cells]


@pytest.fixture(scope="module")
def client(app_url):
    return gradio_client.Client(app_url, verbose=False)


@pytest.fixture(scope="module")
def first_fact():
    if not presets():
        pytest.skip("no presets in assets/")
    return presets()[0]["id"], preset_rows(presets()[0]["id"], RunLimits())[0]


def test_embedded_model_loads_and_describes_itself(client):
    info = client.predict("embedded", True, api_name="/load_model")
    assert "SmolLM2-135M-Instruct" in info.replace("\\", "") and "4-bit NF4" in info and "cpu" in info
    assert "parameters" in info and "MB" in info


def test_bad_input_gives_a_message_and_changes_nothing(client):
    facts, status, typed, *_ = client.predict(table([["Who?", "Bob", "", ""]]), "No answer marked here.",
                                              api_name="/add_sentences")
    assert status.startswith("⚠️") and "brackets" in status
    assert facts == {"__type__": "update"} and typed == {"__type__": "update"}  # the table and text stay
    assert client.predict("../../etc", True, api_name="/load_model").startswith("⚠️")
    outputs = unlearn(client, [["", "", "", ""]]).result()
    assert outputs[1].startswith("⚠️") and "no facts" in outputs[1]
    assert "whole number" in unlearn(client, [["Who?", "Bob", "", ""]], steps=2.5).result()[1]
    assert client.predict(api_name="/export")[1].startswith("⚠️")
    assert "run an unlearning first" in client.predict(api_name="/robustness")[1]


def test_preset_fact_is_forgotten_general_answers_kept_and_visitors_isolated(app_url, first_fact):
    preset_id, fact = first_fact
    alice = gradio_client.Client(app_url, verbose=False)
    bob = gradio_client.Client(app_url, verbose=False)
    rows = alice.predict(preset_id, 1, api_name="/use_preset")[0]["data"]
    assert rows[0] == fact
    question, answer = fact[0], fact[1]

    run = unlearn(alice, [fact])
    bob_asks = bob.submit(question, 32, api_name="/ask")  # at the same time, queued behind alice's run
    outputs = run.result(timeout=1800)
    assert "Done" in outputs[1], outputs[1]
    rows = compare_rows(outputs)
    forget = [r for r in rows if r["kind"] == "forget"]
    assert len(forget) == 1 and "forgotten" in forget[0]["verdict"], forget
    assert answer.lower() in forget[0]["before"].lower() and answer.lower() not in forget[0]["after"].lower()
    general = [r for r in rows if r["kind"] == "general" and "wrong before" not in r["verdict"]]
    kept = [r for r in general if "kept" in r["verdict"]]
    assert general and len(kept) >= len(general) / 2, general  # most known general answers survive

    # Bob has no adapter: his "after" is the base answer, which still says the fact.
    bob_before, bob_after, bob_note = bob_asks.result(timeout=600)
    assert bob_before == bob_after and answer.lower() in bob_after.lower()
    assert "No adapter" in bob_note
    alice_before, alice_after, _ = alice.predict(question, 32, api_name="/ask")
    assert alice_before == bob_before and answer.lower() not in alice_after.lower()

    # Bob trains his own adapter on another question and stops it after its first step; Alice's
    # answers do not move, and Bob's table holds only Bob's fact.
    other = [["What is the tallest mountain on Earth?", "Everest", "", ""]]
    bob_run = unlearn(bob, other, steps=20, early_stop=False, general_prompts=0)
    deadline = time.time() + 1200
    while not any("step 1 / 20" in str(o[1]).replace("*", "") for o in bob_run.outputs()):
        assert time.time() < deadline and not bob_run.done(), bob_run.outputs()[-1:]
        time.sleep(0.5)
    assert "Stopping" in bob.predict(api_name="/stop")
    bob_outputs = bob_run.result(timeout=1200)
    assert "Done" in bob_outputs[1] and "stopped by you" in bob_outputs[1], bob_outputs[1]
    assert {r["prompt"] for r in compare_rows(bob_outputs) if r["kind"] == "forget"} == {other[0][0]}
    assert alice.predict(question, 32, api_name="/ask")[1] == alice_after

    # The run's files are ready for download.
    files, status = alice.predict(api_name="/export")
    names = sorted(str(f).rsplit("/", 1)[-1] for f in files)
    assert names == ["lune-adapter.zip", "lune-comparison.csv", "lune-loss-history.csv", "lune-report.json"]

    # One click asks whether the forgetting survives relearning and re-quantization, probe by probe.
    frame, note = alice.predict(api_name="/robustness")
    assert frame["headers"] == ["prompt", "after relearning", "after re-quantizing"]
    assert question in [row[0] for row in frame["data"]]
    assert all(row[1].strip() and row[2].strip() for row in frame["data"])
    assert "relearning on related text: **" in note and "re-quantizing to 4 bits: **" in note
    assert "the run made the model forget" in note

    # Reset removes the adapter the panel described, and the panel with it.
    cleared = alice.predict(api_name="/reset")
    assert cleared[6]["data"] == [] and "after a run" in cleared[7]
