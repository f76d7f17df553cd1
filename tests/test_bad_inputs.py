"""Every case of the bad-input corpus through the session API and the command line, and the limits
that bound one request. The app's own API gets the same corpus in test_app_reliability.py.

The session runs on a tiny random Llama saved under an allowed model root and loaded in 4-bit like
any model a visitor names; it has facts and a finished run before the first case, and must still
have them after every one."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lune_core.config import RunLimits, UnlearnConfig
from lune_deploy.config import load_deploy_config
from lune_web.errors import UserError, user_message
from lune_web.session import Session
from lune_web.reliability import corpus
from tests.tiny import save_tiny_model
from tests.web import service, use_models

pytestmark = pytest.mark.integration  # a tiny model, a subprocess or the app server

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hf_MARKERtokenNEVERshown0123456789"
PLACES = {name: f"/nonexistent/{name}" for name in ("MODEL_OUTSIDE_ROOTS", "EMPTY_FOLDER_IN_ROOT",
          "REMOTE_CODE_MODEL", "REMOTE_CODE_MODEL_NO_TYPE", "UNKNOWN_TYPE_MODEL", "SYMLINK_OUT_OF_ROOT")}
CASES = corpus.load_cases(PLACES)  # for the test ids; the fixtures load them again with real folders
S = service()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Allowed model root with the tiny model and the corpus' model folders, HF_TOKEN set to a marker,
    the repository as working directory (a case names one of its folders)."""
    root = tmp_path_factory.mktemp("models")
    outside = tmp_path_factory.mktemp("elsewhere")
    places = corpus.make_model_folders(root, outside)
    tiny = save_tiny_model(root / "tiny-llama")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LUNE_MODEL_ROOTS", str(root))
        mp.setenv("HF_TOKEN", TOKEN)
        mp.chdir(ROOT)
        yield {"root": root, "tiny": str(tiny), "cases": {c.id: c for c in corpus.load_cases(places)}}


@pytest.fixture(scope="module")
def session(world):
    """A visitor who loaded the tiny model and finished a run: what a bad input must not take away."""
    with pytest.MonkeyPatch.context() as mp:
        use_models(S, mp)
        visitor = Session()
        S.load(visitor, world["tiny"], True)
        list(S.run(visitor, [corpus.GOOD_ROW], corpus.TRAIN, 0))
        assert visitor.report is not None and visitor.adapter is not None
        yield visitor


@pytest.mark.parametrize("case_id", [c.id for c in CASES])
def test_session_api_handles_the_case(world, session, case_id):
    outcome = corpus.run_session_case(S, session, world["cases"][case_id])
    assert outcome.handled, (outcome.message, outcome.problems)
    assert TOKEN not in outcome.message


@pytest.mark.parametrize("case_id", [c.id for c in CASES if c.where != "ask"])
def test_command_line_handles_the_case(world, tmp_path, case_id):
    outcome = corpus.run_cli_case(world["cases"][case_id], tmp_path)
    assert outcome.handled, (outcome.message, outcome.problems)
    assert TOKEN not in outcome.message


def test_after_the_corpus_the_session_still_has_its_model_facts_and_results(world, session):
    assert session.model_key == (world["tiny"], True)
    assert session.adapter is not None and len(session.runs) == 1
    before, after = S.ask(session, corpus.GOOD_ROW[0], 8)
    assert before != after  # its adapter is still applied
    assert not corpus.remote_code_ran(world["root"])  # trust_remote_code stayed off throughout


def test_the_corpus_covers_every_kind_of_bad_input():
    where = {c.where for c in CASES}
    assert where == {"facts", "sentences", "settings", "model", "ask"}
    ids = " ".join(c.id for c in CASES)
    for topic in ("empty", "whitespace", "100kb", "500", "emoji", "rtl", "nul", "html", "no-marker",
                  "two-markers", "not-in-model-output", "duplicate", "steps-negative", "steps-zero",
                  "steps-huge", "lr", "rank", "layer", "seed", "nonexistent", "dotdot", "absolute",
                  "remote-code"):
        assert topic in ids, topic
    html_in = {c.where for c in CASES if "<script>" in json.dumps(c.input)}
    assert html_in == {"facts", "sentences", "settings", "model", "ask"}
    assert {c.expect for c in CASES} == {"rejected", "accepted"}


@pytest.mark.parametrize("case_id", ["facts-nul-in-question", "model-needs-remote-code", "facts-html-question"])
def test_a_real_process_prints_one_line_and_no_traceback(world, tmp_path, case_id):
    def run(argv):
        env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
        done = subprocess.run([sys.executable, "-m", "lune_core", *argv], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
        return done.returncode, done.stdout, done.stderr

    outcome = corpus.run_cli_case(world["cases"][case_id], tmp_path, run)
    assert outcome.handled, (outcome.message, outcome.problems)
    assert TOKEN not in outcome.message


def test_unexpected_errors_are_logged_without_the_token(world, caplog):
    with caplog.at_level(logging.ERROR, logger="lune.web"):
        shown = user_message(RuntimeError(f"upstream said Authorization: Bearer {TOKEN}"))
    assert "something went wrong" in shown and TOKEN not in shown
    assert caplog.records and "[HF_TOKEN]" in caplog.text and TOKEN not in caplog.text
    assert TOKEN not in user_message(UserError(f"model {TOKEN} was not found"))


# ---- limits ------------------------------------------------------------------------------------------

def test_limits_come_from_the_environment_in_one_place():
    limits = RunLimits().with_env({"LUNE_MAX_FACTS": "3", "LUNE_MAX_STEPS": " 7 ", "LUNE_MAX_NEW_TOKENS": "",
                                   "LUNE_MAX_LEARNING_RATE": "0.5", "LUNE_MAX_TEXT_CHARS": "40"})
    assert (limits.max_facts, limits.max_steps, limits.max_learning_rate, limits.max_text_chars) == (3, 7, 0.5, 40)
    assert limits.max_new_tokens == RunLimits().max_new_tokens  # empty means unset
    for name, value in (("LUNE_MAX_STEPS", "ten"), ("LUNE_MAX_STEPS", "0"), ("LUNE_MAX_FACTS", "2.5"),
                        ("LUNE_MAX_LEARNING_RATE", "nan")):
        with pytest.raises(ValueError, match=name):
            RunLimits().with_env({name: value})


def test_the_apps_limits_are_the_deployments_with_the_environment_on_top():
    code = "from app import CONTEXT as C; print(C.limits.max_steps, C.limits.max_facts, C.limits.max_new_tokens)"
    env = dict(os.environ, PYTHONPATH=str(ROOT), LUNE_MAX_STEPS="7")
    env.pop("LUNE_MAX_FACTS", None)
    env.pop("LUNE_MAX_NEW_TOKENS", None)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    deploy = load_deploy_config().limits
    assert done.stdout.split() == ["7", str(deploy.max_facts), str(deploy.max_new_tokens)], done.stderr


@pytest.mark.parametrize("variable, value, argv, default_message", [
    ("LUNE_MAX_FACTS", "12", [], "too many facts: 12 given, at most 10"),
    ("LUNE_MAX_STEPS", "500", ["--steps", "300"], "steps must be an integer between 1 and 200"),
    ("LUNE_MAX_NEW_TOKENS", "128", ["--max-new-tokens", "100"], "max new tokens must be between 1 and 64"),
])
def test_the_command_line_honours_the_limits(tmp_path, monkeypatch, variable, value, argv, default_message):
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps({"question": f"Question {i}?", "answer": f"a{i}"}) + "\n" for i in range(12)
                             if variable == "LUNE_MAX_FACTS" or i == 0))
    argv = ["run", "--facts", str(facts), "--out", str(tmp_path / "r.json"), "--check", *argv]
    monkeypatch.delenv(variable, raising=False)
    code, _, err = corpus.main_in_process(argv)
    assert code == 2 and default_message in err
    monkeypatch.setenv(variable, value)
    code, out, err = corpus.main_in_process(argv)
    assert code == 0 and out.startswith("ok:"), err
    monkeypatch.setenv(variable, "lots")
    code, _, err = corpus.main_in_process(argv)
    assert code == 2 and variable in err


def test_a_run_within_the_deployments_limits_is_not_refused_by_the_engine(world, monkeypatch):
    """A GPU Space allows 96 new tokens; the engine used to re-check against its own default of 64
    and fail the run with 'something went wrong'."""
    use_models(S, monkeypatch, limits=RunLimits(max_new_tokens=96, max_steps=300))
    visitor = Session()
    S.load(visitor, world["tiny"], True)
    updates = list(S.run(visitor, [corpus.GOOD_ROW], dict(corpus.FAST, steps=1, max_new_tokens=80), 0))
    assert updates[-1].done and visitor.report["config"]["max_new_tokens"] == 80
    assert UnlearnConfig().max_new_tokens <= RunLimits().max_new_tokens < 80
