"""Step 2 · Facts to forget: the editable table, presets, sentences, and what the base says now."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from .. import forms
from ..service import Service
from ..views import base_frame, clock, loss_figure, progress_markdown, text
from .page import HEAVY, LIGHT, Page, guarded


def build(page: Page, service: Service) -> None:
    limits = service.limits
    gr.Markdown("## 2 · Facts to forget", elem_classes="step-title", elem_id="facts-title")
    with gr.Row(equal_height=True):
        page.preset = gr.Dropdown([(p["title"], p["id"]) for p in forms.presets()], value=None, scale=2,
                                  label="Preset", info="themed sets checked against the embedded model")
        page.preset_count = gr.Slider(1, limits.max_facts, value=min(2, limits.max_facts), step=1, scale=1,
                                      label="Facts to take from it", elem_id="preset-count")
        page.preset_mode = gr.Radio([("Replace the table", "replace"), ("Add below my facts", "append")],
                                    value="replace", label="A preset…", scale=1, elem_id="preset-mode")
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
        page.add_row_button = gr.Button("+ Add a row", size="sm")
        page.remove_row_button = gr.Button("- Remove the last row", size="sm")
        page.clear_button = gr.Button("Clear the table", size="sm")
        page.preview_button = gr.Button("Ask the base model about these facts", size="sm")
        page.preset_button = gr.Button("Reload the preset", size="sm")
    page.facts_status = gr.Markdown(elem_id="facts-status")
    with gr.Accordion("Privacy lesson: teach the model these facts first, then make it forget them", open=False,
                      elem_id="teach-panel") as page.teach_panel:
        gr.Markdown("For facts the model has never seen (an invented person's private details): a short LoRA "
                    "fine-tune teaches them, and is merged into this page's copy of the weights. From then on this "
                    "page's model is the taught one: it is the *before* of the comparison. Other visitors never see "
                    "it. The progress line counts the steps; merging ends it.")
        with gr.Row():
            page.teach_button = gr.Button("Teach these facts to the model", variant="secondary")
            page.untaught_button = gr.Button("Back to the base model", size="sm")
        with gr.Row():
            page.teach_status = gr.Markdown(elem_id="teach-status")
            page.teach_plot = gr.Plot(loss_figure([], title="Teaching loss", height=240), show_label=False,
                                      elem_id="teach-plot")
    page.base_table = gr.Dataframe(label="What the model says now",
                                   elem_id="base-answers", interactive=False,
                                   wrap=True, column_widths=["28%", "14%", "46%", "12%"],
                                   headers=["question", "answer to forget", "the model says now", "known?"])


def _preset_shown(page: Page, service: Service, preset_id, count, mode, table) -> dict:
    entry = next((p for p in forms.presets() if p["id"] == preset_id), {})
    all_rows = service.preset_rows(preset_id)
    # A lesson's preset is one story (the invented person's details): taken whole.
    rows = all_rows if entry.get("kind") == "taught" else all_rows[: max(1, int(count or 1))]
    if mode == "append":  # the typed facts stay; the whole table must still be valid
        rows = forms.clean_rows(table) + rows
        service.facts_from_rows(rows)
        note = f"Added {len(rows) - len(forms.clean_rows(table))} of the preset's facts below yours."
    else:
        note = f"Loaded {len(rows)} of the preset's {len(all_rows)} facts (fewer facts, quicker runs)."
    shown = {page.facts: rows, page.preset_info: text(entry.get("description", "")), page.facts_status: note}
    if entry.get("kind") == "taught":
        shown[page.facts_status] += (" The model has never heard of this invented person: a fact it does not "
                                     "say cannot be forgotten, so **teach it first** (the panel below).")
        shown[page.teach_panel] = gr.Accordion(open=True)
    return shown


def wire(page: Page, service: Service) -> None:
    @guarded(page.facts_status)
    def on_preset(preset_id, count, mode, table):
        return _preset_shown(page, service, preset_id, count, mode, table)

    @guarded(page.facts_status)
    def on_preview(state, rows, max_new_tokens):
        found = service.preview(state, rows, max_new_tokens)
        known = sum(r["known"] for r in found)
        note = f"The model says {known} of {len(found)} answers now. A fact it does not say cannot show forgetting"
        note += "." if known == len(found) else ": facts it never knew can be taught first (the privacy-lesson panel)."
        return {page.base_table: base_frame(found), page.facts_status: note}

    def table_status(rows) -> dict:
        """The count of what the table holds now; what described the table before (the base model's answers
        to its facts, the preset's description) goes, since it no longer matches."""
        n = len(forms.clean_rows(rows))
        return {page.facts_status: f"The table holds {n} fact{'s' if n != 1 else ''}." if n else
                "The table is empty: type a fact, pick a preset, or write sentences below.",
                page.base_table: base_frame([]), page.preset_info: ""}

    @guarded(page.facts_status)
    def on_add_row(rows):
        rows = forms.clean_rows(rows)
        return {page.facts: rows + [[""] * len(forms.FACT_COLUMNS)]}

    @guarded(page.facts_status)
    def on_remove_row(rows):
        rows = forms.clean_rows(rows)[:-1]
        return {page.facts: rows or [[""] * len(forms.FACT_COLUMNS)], **table_status(rows)}

    @guarded(page.facts_status)
    def on_clear(rows):
        return {page.facts: [[""] * len(forms.FACT_COLUMNS)], **table_status([])}

    @guarded(page.facts_status)
    def on_add_sentences(rows, sentences):
        merged = service.add_sentences(rows, sentences)
        return {page.facts: merged, page.facts_status: f"The table now holds {len(merged)} facts.",
                page.sentences: "", page.base_table: base_frame([]), page.preset_info: ""}

    preview_in = [page.state, page.facts, page.max_new_tokens]
    preview_out = [page.base_table, page.facts_status]

    def preview_after(event) -> None:
        """Once `event` succeeds, show again what the model says about the table's facts."""
        event.success(on_preview, preview_in, preview_out, api_visibility="private",
                      show_progress_on=[page.facts_status], **HEAVY)

    for trigger, api in ((page.preset.input, "use_preset"), (page.preset_button.click, "reload_preset")):
        preview_after(trigger(on_preset, [page.preset, page.preset_count, page.preset_mode, page.facts],
                              [page.facts, page.preset_info, page.facts_status, page.teach_panel], api_name=api,
                              **LIGHT))
    page.preview_button.click(on_preview, preview_in, preview_out, api_name="preview",
                              show_progress_on=[page.facts_status], **HEAVY)
    _wire_teach_panel(page, service, preview_after)
    page.add_row_button.click(on_add_row, page.facts, [page.facts, page.facts_status], api_name="add_row", **LIGHT)
    changed = [page.facts, page.facts_status, page.base_table, page.preset_info]
    page.remove_row_button.click(on_remove_row, page.facts, changed, api_name="remove_row", **LIGHT)
    page.clear_button.click(on_clear, page.facts, changed, api_name="clear_facts", **LIGHT)
    # Typing in, or deleting from, the table keeps the count true (never "holds 4" after deleting 2).
    page.facts.input(guarded(page.facts_status)(table_status), page.facts, changed[1:],
                     api_visibility="private", **LIGHT)
    page.add_button.click(on_add_sentences, [page.facts, page.sentences], changed[:2] + [page.sentences] + changed[2:],
                          api_name="add_sentences", **LIGHT)


def _wire_teach_panel(page: Page, service: Service, preview_after) -> None:
    """The privacy lesson: teach the table's facts, or go back to the base; either way the base's answers
    are shown again."""
    @guarded(page.teach_status)
    def on_teach(state, rows, seed):
        for update in service.teach(state, rows, seed):
            figure = loss_figure(state.taught_history, title="Teaching loss", height=240)
            if not update.done:
                yield {page.teach_status: progress_markdown(update), page.teach_plot: figure}
            elif state.taught is None:
                yield {page.teach_status: "Stopped before the facts were taught: the page keeps the model it had.",
                       page.teach_plot: figure}
            else:
                steps = len(state.taught_history)
                yield {page.teach_status: f"**Taught** in {clock(update.elapsed)} ({steps} steps). This page's model "
                                          "now knows these facts; the table below shows what it says. Now press "
                                          "**Unlearn**.", page.teach_plot: figure}

    @guarded(page.teach_status)
    def on_untaught(state):
        service.drop_taught(state)
        return {page.teach_status: "Back to the shared base model: the taught facts, and any adapter trained on "
                                   "them, are gone.", page.teach_plot: loss_figure([], title="Teaching loss",
                                                                                  height=240)}

    preview_after(page.teach_button.click(on_teach, [page.state, page.facts, page.seed],
                                          [page.teach_status, page.teach_plot], api_name="teach",
                                          show_progress_on=[page.teach_status], **HEAVY))
    preview_after(page.untaught_button.click(on_untaught, page.state, [page.teach_status, page.teach_plot],
                                             api_name="untaught", **LIGHT))
