"""Step 7 · Guide for the classroom: the prose lives in assets/guide.md."""
from __future__ import annotations

import gradio as gr

from lune_core.assets import asset

from ..service import Service
from .page import Page


def build(page: Page, service: Service) -> None:
    gr.Markdown("## 7 · Guide for the classroom", elem_classes="step-title")
    gr.Markdown(asset("guide.md").read_text(encoding="utf-8"))


def wire(page: Page, service: Service) -> None:
    """Nothing to wire: the guide is text."""
