"""Shared test setup: offline hub, the `slow` marker, and the app server."""
from __future__ import annotations

import os

import pytest

from tests.app_server import AppFailed, serve_app

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: loads the embedded model and trains (minutes on a CPU)")


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
