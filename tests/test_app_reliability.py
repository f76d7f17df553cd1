"""The launched app (`python app.py`) under bad input, several visitors, stopped runs and closed pages.

The app serves a tiny random Llama saved under an allowed model root (LUNE_MODEL_ROOTS) and loaded in
4-bit NF4 like any model a visitor names, so every run takes seconds; LUNE_MAX_STEPS is raised so a
run can outlast the checks that stop it; HF_TOKEN is a marker that must never come back.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest

gradio_client = pytest.importorskip("gradio_client")
httpx = pytest.importorskip("httpx")

from lune_web.reliability import corpus, visitors  # noqa: E402
from lune_web.reliability.app_server import serve_app  # noqa: E402
from tests.tiny import save_tiny_model  # noqa: E402

pytestmark = pytest.mark.integration  # a tiny model, a subprocess or the app server

TOKEN = "hf_MARKERtokenNEVERshown0123456789"
SEEN: list[str] = []  # every message the app returned, checked for the token at the end


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    places = corpus.make_model_folders(root, tmp_path_factory.mktemp("elsewhere"))
    tiny = save_tiny_model(root / "tiny-llama")
    log = tmp_path_factory.mktemp("app") / "app.log"
    env = {"LUNE_MODEL_ROOTS": str(root), "LUNE_MAX_STEPS": str(visitors.LONG_RUN), "HF_TOKEN": TOKEN,
           "GRADIO_HEARTBEAT_INTERVAL": "1"}  # a closed page is noticed within a second
    with serve_app(log, env) as url:
        yield SimpleNamespace(url=url, tiny=str(tiny), root=root, log=log,
                              cases={c.id: c for c in corpus.load_cases(places)})


# ---- bad input -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(app):
    """A visitor with the tiny model, a finished run and its answer: what bad input must not take away."""
    client = visitors.visitor(app.url, app.tiny)
    outputs = corpus.unlearn(client, [corpus.GOOD_ROW], **corpus.TRAIN).result(timeout=300)
    assert "Done" in outputs[1], outputs[1]
    before, after, _ = client.predict(corpus.GOOD_ROW[0], 8, api_name="/ask")
    assert before != after
    return SimpleNamespace(client=client, after=after)


CASE_IDS = [c.id for c in corpus.load_cases({k: "" for k in (
    "MODEL_OUTSIDE_ROOTS", "EMPTY_FOLDER_IN_ROOT", "REMOTE_CODE_MODEL", "REMOTE_CODE_MODEL_NO_TYPE",
    "UNKNOWN_TYPE_MODEL", "SYMLINK_OUT_OF_ROOT")})]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_the_api_answers_each_case_with_a_clear_message(app, trained, case_id):
    outcome = corpus.run_app_case(app.cases[case_id], trained.client, [corpus.GOOD_ROW])
    SEEN.append(outcome.message)
    assert outcome.handled, (outcome.message, outcome.problems)


def test_after_the_corpus_the_visitor_keeps_model_adapter_and_results(app, trained):
    before, after, note = trained.client.predict(corpus.GOOD_ROW[0], 8, api_name="/ask")
    assert after == trained.after and "with this page's adapter" in note
    files, status = trained.client.predict(api_name="/export")
    assert len(files) == 4, status
    assert not corpus.remote_code_ran(app.root)


def test_the_page_declares_its_tables_as_plain_text(app):
    """Cells typed as 'str' are shown as text by the front end; 'markdown' or 'html' would render
    a visitor's <script> or [link](javascript:...)."""
    config = httpx.get(app.url + "config", timeout=30).json()
    tables = [c["props"] for c in config["components"] if c["type"] == "dataframe"]
    assert tables and all(set([t["datatype"]] if isinstance(t["datatype"], str) else t["datatype"]) == {"str"}
                          for t in tables), [t["datatype"] for t in tables]


# ---- many visitors, stopped runs and closed pages (lune_web/reliability/visitors.py) -------------

def test_four_visitors_at_once_each_see_only_their_own_adapter(app):
    seen = visitors.four_visitors(app.url, app.tiny, corpus.TRAIN)
    assert seen["base_page_unchanged"] and seen["base_words"] == 0
    for page in seen["pages"]:
        assert page["done"], page["status"]
        assert page["own_fact_only"] and page["own_word_said"] and page["base_before"], page
        assert page["foreign_words"] == 0, page
    assert seen["fresh_sees_base"]


def test_stop_mid_run_keeps_the_model_and_the_next_run_starts_cleanly(app):
    seen = visitors.stop_mid_run(app.url, app.tiny)
    assert "Stopping" in seen["reply"]
    assert "Done" in seen["first_status"] and "stopped by you" in seen["first_status"], seen
    assert "Nothing is running" in seen["idle_reply"]
    second = seen["second_status"]
    assert "Done" in second and "3 steps" in second and "stopped by you" not in second, second
    assert seen["history_runs"] == 2 and seen["asks_after"]  # both runs are in the page's history


def test_closing_the_page_mid_run_stops_the_job_and_frees_the_model(app):
    # Queued behind the orphaned run: it finishes only if that run was stopped (5000 steps take minutes).
    seen = visitors.closed_page(app.url, app.tiny)
    assert "Done" in seen["status"] and "3 steps" in seen["status"], seen
    assert seen["seconds"] < 120


# ---- safety ----------------------------------------------------------------------------------------

def test_uploads_are_refused_above_the_limit(app):
    big = httpx.post(app.url + "gradio_api/upload", files={"files": ("big.bin", b"\0" * (2 * 2**20))}, timeout=60)
    small = httpx.post(app.url + "gradio_api/upload", files={"files": ("small.txt", b"hello")}, timeout=60)
    assert big.status_code == 413, big.text[:200]
    assert small.status_code == 200


def test_the_token_never_reaches_the_page_or_the_log(app):
    client = visitors.visitor(app.url, app.tiny)
    for model in ("someone/gated-model", app.cases["model-needs-remote-code"].input, "../../etc"):
        SEEN.append(client.predict(model, True, api_name="/load_model"))
    assert SEEN and not [m for m in SEEN if TOKEN in m]
    log = app.log.read_text()
    assert log and TOKEN not in log


# ---- editing the facts ---------------------------------------------------------------------------

def test_a_preset_replaces_the_table_or_joins_it_as_asked(app):
    client = gradio_client.Client(app.url, verbose=False)
    mine = ["Who painted the Mona Lisa?", "Leonardo da Vinci", "", "", ""]
    typed = {"headers": corpus_columns(), "data": [mine]}
    replaced = client.predict("capitals", 2, "replace", typed, api_name="/use_preset")[0]["data"]
    joined = client.predict("capitals", 2, "append", typed, api_name="/use_preset")
    assert "below yours" in joined[2], joined[2]
    assert [r[0] for r in joined[0]["data"]] == [mine[0]] + [r[0] for r in replaced]
    assert mine[0] not in [r[0] for r in replaced]
    # a preset that repeats a typed fact is refused, and the table is left as it was
    again = client.predict("capitals", 2, "append", joined[0], api_name="/use_preset")
    assert again[2].startswith("⚠️") and "duplicate" in again[2].lower(), again[2]
    # removing rows keeps the status true
    fewer, status, base, described = client.predict(joined[0], api_name="/remove_row")
    assert not base["data"] and described == ""  # what described the table before is gone with the change
    assert len(fewer["data"]) == 2 and "holds 2 facts" in status


def test_reset_says_what_it_cleared(app, trained):
    outputs = trained.client.predict(api_name="/reset")
    assert "went with it" in outputs[1] and "appears here after a run" in outputs[2], outputs[1]


def corpus_columns() -> list[str]:
    from lune_web.forms import FACT_COLUMNS

    return FACT_COLUMNS
