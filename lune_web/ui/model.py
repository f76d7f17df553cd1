"""Step 1 · Model: which base model the page's runs use."""
from __future__ import annotations

import gradio as gr

from lune_core.ids import EMBEDDED_MODEL

from ..service import Service
from ..views import model_markdown
from .page import HEAVY, Page, guarded

CHOICES = [("SmolLM2-135M-Instruct (embedded, works offline)", EMBEDDED_MODEL),
           ("Qwen/Qwen2.5-0.5B-Instruct (from the hub)", "Qwen/Qwen2.5-0.5B-Instruct")]


def build(page: Page, service: Service) -> None:
    gr.Markdown("## 1 · Model", elem_classes="step-title")
    with gr.Row():
        page.model_id = gr.Dropdown(CHOICES, value=service.context.default_model, allow_custom_value=True, scale=3,
                                    label="Model", info="the embedded model works offline; or type a hub id")
        page.quantize = gr.Checkbox(value=service.context.quantize_4bit, label="4-bit (NF4) backbone", scale=1)
        page.load_button = gr.Button("Load model", variant="secondary", scale=1)
    page.model_info = gr.Markdown("No model loaded yet. Unlearn loads the default model by itself.")


def wire(page: Page, service: Service) -> None:
    @guarded(page.model_info)
    def on_load_model(state, model_id, quantize, progress=gr.Progress()):
        progress(0.1, desc="Loading the model (the first load of a model takes longest)…")
        return {page.model_info: model_markdown(service.load(state, model_id, quantize))}

    page.load_button.click(on_load_model, [page.state, page.model_id, page.quantize], [page.model_info],
                           api_name="load_model", **HEAVY)
