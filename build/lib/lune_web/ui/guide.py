"""Step 7 · Guide for the classroom: the prose lives in assets/guide.md."""
from __future__ import annotations

import gradio as gr

from lune_core.assets import asset

from ..service import Service
from .page import Page


def build(page: Page, service: Service) -> None:
    # A side panel, not the end of a long page: reachable from every step (the ›  at the right edge).
    with gr.Sidebar(label="Guide for the classroom", open=False, position="right", width=520, elem_id="guide"):
        gr.Markdown("## 7 · Guide for the classroom")
        gr.Markdown(asset("guide.md").read_text(encoding="utf-8"))


def wire(page: Page, service: Service) -> None:
    """Nothing to wire: the guide is text."""
