"""Step 1 · Model: which base model the page's runs use."""
from __future__ import annotations

import gradio as gr

from lune_core.ids import EMBEDDED_MODEL, EMBEDDED_NAME

from ..service import Service
from ..views import model_markdown, text
from .page import HEAVY, Page, warning

CHOICES = [("SmolLM2-135M-Instruct (embedded, works offline)", EMBEDDED_MODEL),
           ("Qwen/Qwen2.5-0.5B-Instruct (from the hub)", "Qwen/Qwen2.5-0.5B-Instruct")]


def build(page: Page, service: Service) -> None:
    gr.Markdown("## 1 · Model", elem_classes="step-title", elem_id="model-title")
    with gr.Row():
        page.model_id = gr.Dropdown(CHOICES, value=service.context.default_model, allow_custom_value=True, scale=3,
                                    label="Model", info="the embedded model works offline; or type a hub id")
        page.quantize = gr.Checkbox(value=service.context.quantize_4bit, label="4-bit (NF4) backbone", scale=1)
        page.load_button = gr.Button("Load model", variant="secondary", scale=1)
    page.model_info = gr.Markdown("No model loaded yet. Unlearn loads the default model by itself.")


def next_model_line(state, service: Service) -> str:
    model_id, quantize = state.model_key or service.default_model_key
    name = EMBEDDED_NAME if model_id == EMBEDDED_MODEL else model_id
    return f"The next run uses **{text(name)}**{' in 4-bit' if quantize else ''}."


def wire(page: Page, service: Service) -> None:
    def on_load_model(state, model_id, quantize, progress=gr.Progress()):
        progress(0.1, desc="Loading the model (the first load of a model takes longest)…")
        try:
            return {page.model_info: model_markdown(service.load(state, model_id, quantize))}
        except Exception as err:  # noqa: BLE001 - the last good model stays, and the page says which
            failed = warning(err, page.model_info)
            return {page.model_info: f"{failed[page.model_info]} · {next_model_line(state, service)}"}

    def on_page_load(state):
        """The model panel as the server has it, not as the page was first drawn."""
        key = state.model_key or service.default_model_key
        if key in service.models.loaded():
            return {page.model_info: model_markdown(dict(service.models.get(*key).describe(), reused=True))}
        return {page.model_info: "The default model loads in the background; Unlearn waits for it if needed. "
                                 + next_model_line(state, service)}

    page.load_button.click(on_load_model, [page.state, page.model_id, page.quantize], [page.model_info],
                           api_name="load_model", **HEAVY)
    page.demo.load(on_page_load, [page.state], [page.model_info], api_visibility="private")
