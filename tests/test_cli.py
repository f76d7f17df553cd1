"""The CLI contract: bad input is one line on stderr and exit code 2, never a traceback."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # a tiny model, a subprocess or the app server

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "lune_core", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def facts(tmp_path):
    path = tmp_path / "facts.jsonl"
    path.write_text(json.dumps({"question": "What is the capital of Japan?", "answer": "Tokyo"}) + "\n")
    return path


def assert_clean_error(done, fragment):
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert fragment in lines[0]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("content, fragment", [
    ("", "no facts"),
    ("{not json\n", "line 1"),
    (json.dumps({"question": "Q?"}) + "\n", "answer to forget is empty"),
    (json.dumps({"question": "Q?", "answer": "a"}) * 1 + "\n" + json.dumps({"question": "Q?", "answer": "b"}) + "\n",
     "duplicate"),
])
def test_bad_facts_files(tmp_path, content, fragment):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    assert_clean_error(cli("run", "--facts", str(path), "--out", str(tmp_path / "r.json")), fragment)


def test_missing_facts_file(tmp_path):
    assert_clean_error(cli("run", "--facts", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "r.json")),
                       "No such file")


@pytest.mark.parametrize("args, fragment", [
    (["--method", "nope"], "unknown method"),
    (["--steps", "0"], "steps"),
    (["--steps", "ten"], "invalid int"),
    (["--lr", "-1"], "learning rate"),
    (["--rank", "0"], "rank"),
    (["--model", "../../etc"], "outside the allowed model folders"),
    (["--model", "/etc"], "outside the allowed model folders"),
    (["--model", "no such model!"], "not a model id"),
    (["--model", "someone/does-not-exist-anywhere"], "offline"),
])
def test_bad_settings_and_models(tmp_path, facts, args, fragment):
    assert_clean_error(cli("run", "--facts", str(facts), "--out", str(tmp_path / "r.json"), *args), fragment)


def test_missing_required_argument():
    done = cli("run")
    assert_clean_error(done, "required")


def test_output_folder_must_exist(tmp_path, facts):
    assert_clean_error(cli("run", "--facts", str(facts), "--out", str(tmp_path / "no" / "r.json")), "does not exist")


@pytest.mark.parametrize("general, extra, fragment", [
    ('{"question": "Q?"}\n', [], "record 1: needs a question and a list of answers"),
    ('{"question": "Q?", "answers": "4"}\n', [], "record 1: needs a question and a list of answers"),
    ('["Q?", "4"]\n', [], "record 1: needs a question and a list of answers"),
    ('\xff\xfe\n', [], "not UTF-8 text"),
    ('[' * 100000 + '\n', [], "nested too deeply"),
    ('{"question": "Q?", "answers": ["4"]}\n', ["--general-limit", "-1"], "must not be negative"),
])
def test_bad_general_question_files_and_limits(tmp_path, facts, general, extra, fragment):
    from lune_web.reliability.corpus import main_in_process

    path = tmp_path / "general.jsonl"
    path.write_bytes(general.encode("latin-1") if "\xff" in general else general.encode())
    code, _, err = main_in_process(["run", "--facts", str(facts), "--general", str(path), "--out",
                                    str(tmp_path / "r.json"), "--check", *extra])
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err


def test_check_validates_without_training_and_a_zero_general_limit_means_none(tmp_path, facts):
    from lune_web.reliability.corpus import main_in_process

    code, out, err = main_in_process(["run", "--facts", str(facts), "--out", str(tmp_path / "r.json"), "--check",
                                      "--general-limit", "0"])
    assert code == 0 and out.startswith("ok: 1 facts, 0 general questions") and not (tmp_path / "r.json").exists()
    code, _, err = main_in_process(["run", "--facts", str(facts), "--out", str(tmp_path), "--check"])
    assert code == 2 and "is a folder" in err


def test_a_run_on_facts_without_keep_lists_reports_automatic_neighbours_and_adversarial_probes(tmp_path):
    """A fact nobody wrote neighbours for still gets them (automatic, scored by agreement), and every
    fact gets the four adversarial forms; a keep list replaces the automatic neighbours."""
    from tests.tiny import save_tiny_model

    model = save_tiny_model(tmp_path / "tiny")
    path = tmp_path / "facts.jsonl"
    path.write_text(json.dumps({"question": "What is the capital of Peru?", "answer": "Lima"}) + "\n"
                    + json.dumps({"question": "Who wrote 'Dracula'?", "answer": "Stoker",
                                  "keep": [{"question": "Who wrote 'Frankenstein'?", "answers": ["Shelley"]}]}) + "\n")
    out = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "lune_core", "run", "--facts", str(path), "--out", str(out),
                           "--model", str(model), "--steps", "2", "--max-new-tokens", "6", "--general-limit", "4",
                           "--adapter", "lora", "--no-early-stop"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=dict(ENV, LUNE_MODEL_ROOTS=str(tmp_path)))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    rows, m = report["probes"], report["metrics"]
    first = [r for r in rows if r["kind"] == "neighbour" and r["fact"] == 0]
    assert first and {r["source"] for r in first} == {"automatic"} and all(r["expected"] == "" for r in first)
    assert {r["subkind"] for r in first} == {"same_subject", "same_relation", "shared_words"}
    second = [r for r in rows if r["kind"] == "neighbour" and r["fact"] == 1]
    assert [(r["prompt"], r["source"]) for r in second] == [("Who wrote 'Frankenstein'?", "given")]
    assert [r["subkind"] for r in rows if r["kind"] == "adversarial"] == ["cloze", "choice", "prefix", "in_context"] * 2
    for key in ("neighbour_agreement", "neighbour_retention", "adversarial_success", "forget_clean",
                "paraphrase_success", "truth_ratio_before", "truth_ratio_after"):
        assert key in m
    assert m["counted_agreement"] == sum(r.get("counted", False) for r in rows)
    assert m["truth_ratio_before"] > 0 and "neighbour_agreement=" in done.stdout
    # a random tiny model states neither fact: said once, before the first step, and the run goes on
    warning = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and "does not state 2 of the 2 facts" in warning[0], done.stderr[-1000:]
    assert "kind: " in done.stdout  # the kind of forgetting, in one line
