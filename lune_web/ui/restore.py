"""What the visitor typed survives a reload or a lost connection: the facts table and the run's settings
are kept in the visitor's own browser (Gradio's BrowserState, local storage) and put back when the page
loads, with a line that says so. Nothing of it is kept on the server."""
from __future__ import annotations

import os
import secrets

import gradio as gr

from lune_core.embedded import cache_dir

from .. import forms
from ..service import Service
from .page import LIGHT, Page

STORAGE_KEY = "lune-inputs"
# The inputs kept, by the page's attribute names: the facts first, then the settings a run reads.
KEPT = ("facts", "preset_count", "method", "adapter", "steps", "lr", "rank", "layers", "seed", "early_stop",
        "general_prompts", "max_new_tokens")


def browser_secret() -> str:
    """The key the kept inputs are sealed with. Gradio's default is new at every start, so a restarted
    server could not read what a visitor's browser kept: LUNE_BROWSER_SECRET, else one made once and
    kept in the cache folder."""
    if os.environ.get("LUNE_BROWSER_SECRET"):
        return os.environ["LUNE_BROWSER_SECRET"]
    path = cache_dir() / "browser-secret"
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        pass
    secret = secrets.token_urlsafe(24)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secret, encoding="utf-8")
    except OSError:
        pass  # a read-only disk: kept inputs last as long as this server
    return secret


def build(page: Page, service: Service) -> None:
    page.kept = gr.BrowserState({}, storage_key=STORAGE_KEY, secret=browser_secret())


def wire(page: Page, service: Service) -> None:
    inputs = [getattr(page, name) for name in KEPT]

    def keep(*values) -> dict:
        saved = dict(zip(KEPT, values))
        saved["facts"] = forms.clean_rows(saved["facts"])
        return saved

    def restore(saved: dict | None) -> dict:
        saved = saved if isinstance(saved, dict) else {}
        rows = forms.clean_rows(saved.get("facts") or [])
        shown = {getattr(page, name): saved[name] for name in KEPT[1:] if saved.get(name) is not None}
        if rows:
            shown[page.facts] = rows
            shown[page.facts_status] = (f"Restored the {len(rows)} fact{'s' if len(rows) != 1 else ''} and the "
                                        "settings you had on this page (kept in this browser, not on the server).")
        elif shown:
            shown[page.facts_status] = "Restored the settings you had on this page (kept in this browser)."
        return shown or {page.facts_status: gr.update()}  # gradio reads an empty dict as one value

    for component in inputs:
        component.change(keep, inputs, page.kept, api_visibility="private", show_progress="hidden", **LIGHT)
    page.demo.load(restore, page.kept, inputs + [page.facts_status], api_visibility="private",
                   show_progress="hidden", **LIGHT)
