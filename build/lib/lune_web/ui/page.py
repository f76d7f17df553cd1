"""What every section shares: the components by name, and error handling that touches only the
status line a section names (the typed facts, the loaded model and past results stay)."""
from __future__ import annotations

import functools
import html
import inspect
from types import SimpleNamespace

import gradio as gr

from ..errors import user_message
from ..views import text

MODEL_QUEUE = "model"  # training and generation share the weights: one job at a time, in order
HEAVY = {"concurrency_id": MODEL_QUEUE, "concurrency_limit": 1}
LIGHT = {"concurrency_limit": None}


class Page(SimpleNamespace):
    """The page's components as attributes (page.facts, page.run_status, …): sections create them
    in build(), and every handler returns a dict keyed by them, never a tuple by position."""


def warning(err: BaseException, status) -> dict:
    message = user_message(err)
    gr.Warning(html.escape(message))
    return {status: f"⚠️ {text(message)}"}


def guarded(status):
    """Turn any error of a handler (plain or streaming) into one line in `status`."""
    def wrap(fn):
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def stream(*args):
                try:
                    yield from fn(*args)
                except Exception as err:  # noqa: BLE001 - every error becomes a message in the page
                    yield warning(err, status)
            return stream

        @functools.wraps(fn)
        def call(*args):
            try:
                return fn(*args)
            except Exception as err:  # noqa: BLE001
                return warning(err, status)
        return call
    return wrap
