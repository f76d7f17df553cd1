"""Step 2 · Facts to forget: the editable table, presets, sentences, and what the base says now."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from .. import forms
from ..service import Service
from ..views import base_frame, text
from .page import HEAVY, LIGHT, Page, guarded


def build(page: Page, service: Service) -> None:
    limits = service.limits
    gr.Markdown("## 2 · Facts to forget", elem_classes="step-title", elem_id="facts-title")
    with gr.Row(equal_height=True):
        page.preset = gr.Dropdown([(p["title"], p["id"]) for p in forms.presets()], value=None, scale=2,
                                  label="Preset", info="themed sets checked against the embedded model")
        page.preset_count = gr.Slider(1, limits.max_facts, value=min(2, limits.max_facts), step=1, scale=1,
                                      label="Facts to take from it", elem_id="preset-count")
        page.preset_info = gr.Markdown(elem_id="preset-info")
    columns = forms.FACT_COLUMNS
    page.facts = gr.Dataframe(
        value=pd.DataFrame([[""] * len(columns)], columns=columns), headers=columns, datatype="str",
        interactive=True, wrap=True, column_count=len(columns), label="Facts (editable)", elem_id="facts",
        column_widths=["24%", "13%", "15%", "22%", "26%"], max_chars=limits.max_text_chars)
    with gr.Accordion("Or write sentences with the answer in [brackets]", open=False):
        page.sentences = gr.Textbox(lines=3, max_length=limits.max_text_chars * limits.max_facts,
                                    label="One per line", placeholder="The capital of France is [Paris].")
        page.add_button = gr.Button("Add to the table")
    with gr.Row():
        page.preview_button = gr.Button("Ask the base model about these facts", size="sm")
        page.preset_button = gr.Button("Reload the preset", size="sm")
    page.facts_status = gr.Markdown(elem_id="facts-status")
    page.base_table = gr.Dataframe(label="What the base model says now", elem_id="base-answers", interactive=False,
                                   wrap=True, column_widths=["28%", "14%", "46%", "12%"],
                                   headers=["question", "answer to forget", "the model says now", "known?"])


def wire(page: Page, service: Service) -> None:
    @guarded(page.facts_status)
    def on_preset(preset_id, count):
        entry = next((p for p in forms.presets() if p["id"] == preset_id), {})
        all_rows = service.preset_rows(preset_id)
        rows = all_rows[: max(1, int(count or 1))]
        note = f"Loaded {len(rows)} of the preset's {len(all_rows)} facts (fewer facts, quicker runs)."
        if entry.get("kind") == "taught":
            note += (" The model has never heard of this invented person, so these rows will read *not known "
                     "before*: a fact the model does not say cannot be forgotten (teaching it first is not in this "
                     "version).")
        return {page.facts: rows, page.preset_info: text(entry.get("description", "")), page.facts_status: note}

    @guarded(page.facts_status)
    def on_preview(state, rows, max_new_tokens):
        found = service.preview(state, rows, max_new_tokens)
        known = sum(r["known"] for r in found)
        return {page.base_table: base_frame(found),
                page.facts_status: f"The base model says {known} of {len(found)} answers now. "
                                   "A fact it does not say cannot show forgetting."}

    @guarded(page.facts_status)
    def on_add_sentences(rows, sentences):
        merged = service.add_sentences(rows, sentences)
        return {page.facts: merged, page.facts_status: f"The table now holds {len(merged)} facts.",
                page.sentences: ""}

    preview_in = [page.state, page.facts, page.max_new_tokens]
    preview_out = [page.base_table, page.facts_status]
    for trigger, api in ((page.preset.input, "use_preset"), (page.preset_button.click, "reload_preset")):
        trigger(on_preset, [page.preset, page.preset_count], [page.facts, page.preset_info, page.facts_status],
                api_name=api, **LIGHT).success(
            on_preview, preview_in, preview_out, api_visibility="private", show_progress_on=[page.facts_status],
            **HEAVY)
    page.preview_button.click(on_preview, preview_in, preview_out, api_name="preview",
                              show_progress_on=[page.facts_status], **HEAVY)
    page.add_button.click(on_add_sentences, [page.facts, page.sentences],
                          [page.facts, page.facts_status, page.sentences], api_name="add_sentences", **LIGHT)
