"""Step 4 · Compare: the figures, every probe before and after, past runs, a prompt of your own, and
whether the forgetting survives two attacks."""
from __future__ import annotations

import gradio as gr

from ..service import Service, robustness_rows
from ..views import (ROBUSTNESS_EMPTY, cards_html, check_progress, comparison_html, lens_figure, robustness_frame,
                     robustness_markdown, runs_frame)
from .page import HEAVY, Page, guarded, warning


def build(page: Page, service: Service) -> None:
    limits = service.limits
    gr.Markdown("## 4 · Compare before and after", elem_classes="step-title", elem_id="compare-title")
    page.kind_line = gr.Markdown("", elem_id="forgetting-kind")
    page.cards = gr.HTML(cards_html(None), elem_id="metric-cards")
    with gr.Accordion("Is it still in there? The forgotten answers inside the model, layer by layer", open=True):
        page.lens_plot = gr.Plot(lens_figure(None), show_label=False, elem_id="lens-plot")
        page.lens_note = gr.Markdown("")
    gr.Markdown("**Every question, before (adapter off) and after (adapter on)**, by kind: open a kind to see "
                "its rows.")
    page.compare = gr.HTML(comparison_html([]), elem_id="compare")
    with gr.Accordion("Runs in this page", open=False):
        page.runs = gr.Dataframe(runs_frame([]), interactive=False, wrap=True, elem_id="runs",
                                 label="Past runs (kept until you leave)")
    with gr.Row():
        with gr.Column():
            # No max_length: the box would cut a long prompt silently; the service says it is too long.
            page.prompt = gr.Textbox(label="Try your own prompt", info=f"at most {limits.max_text_chars} characters",
                                     placeholder="e.g. a paraphrase of a forgotten fact")
            page.ask_button = gr.Button("Ask before and after")
            page.ask_status = gr.Markdown()
        page.before_box = gr.Textbox(label="Before (base model)", interactive=False, lines=4)
        page.after_box = gr.Textbox(label="After (with your adapter)", interactive=False, lines=4)
    with gr.Accordion("Robustness: does the forgetting survive relearning or re-quantization?", open=False):
        page.robust_button = gr.Button("Check robustness")
        page.robust_status = gr.Markdown(ROBUSTNESS_EMPTY)
        page.robust_table = gr.Dataframe(robustness_frame([]), interactive=False, wrap=True,
                                         column_widths=["24%", "38%", "38%"])


def wire(page: Page, service: Service) -> None:
    def on_ask(state, prompt, max_new_tokens):
        try:
            before, after = service.ask(state, prompt, max_new_tokens)
        except Exception as err:  # noqa: BLE001 - the answers beside a refused prompt would be another prompt's
            return {page.before_box: "", page.after_box: "", **warning(err, page.ask_status)}
        note = ("No adapter yet: both answers come from the base model." if state.adapter is None else
                "Left: base model (adapter off). Right: with this page's adapter.")
        return {page.before_box: before, page.after_box: after, page.ask_status: note}

    @guarded(page.robust_status)
    def on_robustness(state):
        for event in service.check_robustness(state):
            if "result" in event:
                result = event["result"]
                yield {page.robust_table: robustness_frame(robustness_rows(result)),
                       page.robust_status: robustness_markdown(result)}
            else:
                yield {page.robust_status: check_progress(event)}

    ask_in, ask_out = [page.state, page.prompt, page.max_new_tokens], [page.before_box, page.after_box, page.ask_status]
    page.ask_button.click(on_ask, ask_in, ask_out, api_name="ask", **HEAVY)
    page.prompt.submit(on_ask, ask_in, ask_out, api_visibility="private", **HEAVY)
    page.robust_button.click(on_robustness, page.state, [page.robust_table, page.robust_status], api_name="robustness",
                             show_progress_on=[page.robust_status], **HEAVY)
