"""Shared test setup: offline hub, the test tiers, and the app server."""
from __future__ import annotations

import os

import pytest

from lune_web.reliability.app_server import AppFailed, serve_app

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


# Tests that take one of these fixtures run a model (a tiny one), a subprocess or the app server.
INTEGRATION_FIXTURES = frozenset({"lm", "models", "world", "session", "figures", "space_repo", "app_url"})


def pytest_collection_modifyitems(config, items):
    """Every test lands in one tier: e2e (the embedded model or a browser: marked slow / browser),
    integration (marked so, or taking an integration fixture), else unit (no model, no subprocess)."""
    for item in items:
        if item.get_closest_marker("slow") or item.get_closest_marker("browser"):
            item.add_marker(pytest.mark.e2e)
        elif item.get_closest_marker("integration") or INTEGRATION_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session")
def app_url(tmp_path_factory):
    """`python app.py` on a free 127.0.0.1 port, shared by the API and browser tests (one model
    process at a time); its log is shown if it fails to come up. LUNE_APP_URL reuses a running app."""
    if os.environ.get("LUNE_APP_URL"):
        yield os.environ["LUNE_APP_URL"]
        return
    log_path = tmp_path_factory.mktemp("app") / "app.log"
    try:
        with serve_app(log_path) as url:
            yield url
    except AppFailed as err:
        pytest.fail(str(err))
    finally:
        if os.environ.get("LUNE_SHOW_APP_LOG"):
            print(log_path.read_text()[-5000:])
