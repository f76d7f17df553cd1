"""Step 7 · Guide for the classroom: the prose lives in assets/guide.md."""
from __future__ import annotations

import gradio as gr

from lune_core.assets import asset

from ..service import Service
from .page import Page


def build(page: Page, service: Service) -> None:
    # The last section, one click away from every step (the step bar's "7 Guide"). A side panel squeezed
    # the page to half its width on a 1024-pixel projector.
    gr.Markdown("## 7 · Guide for the classroom", elem_classes="step-title", elem_id="guide-title")
    with gr.Accordion("The guide: what unlearning is, how to read the page, a lesson plan", open=True,
                      elem_id="guide"):
        gr.Markdown(asset("guide.md").read_text(encoding="utf-8"))


def wire(page: Page, service: Service) -> None:
    """Nothing to wire: the guide is text."""
