"""Step 3 · Unlearn: the method and its settings, Unlearn / Stop / Reset, the live loss plot."""
from __future__ import annotations

import gradio as gr

from lune_core.config import DEFAULT_LEARNING_RATES, UnlearnConfig
from lune_core.losses import UNLEARNING_METHODS

from ..service import DEFAULT_GENERAL_PROMPTS, Service, comparison_rows, cost_rows
from ..views import (ROBUSTNESS_EMPTY, cards_html, comparison_html, cost_frame, finished_markdown, kind_markdown,
                     lens_figure, lens_markdown, loss_figure, method_markdown, progress_markdown, robustness_frame,
                     runs_frame)
from .page import HEAVY, LIGHT, Page, guarded

DEFAULTS = UnlearnConfig()


def build(page: Page, service: Service) -> None:
    limits = service.limits
    gr.Markdown("## 3 · Unlearn", elem_classes="step-title", elem_id="unlearn-title")
    with gr.Row():
        with gr.Column(scale=2):
            page.method = gr.Dropdown(UNLEARNING_METHODS, value=DEFAULTS.method, label="Method")
            page.method_info = gr.Markdown(method_markdown(DEFAULTS.method))
            with gr.Accordion("Advanced settings", open=False):
                page.steps = gr.Slider(1, limits.max_steps, value=min(DEFAULTS.steps, limits.max_steps), step=1,
                                       label="Steps (at most; stops early once no fact is said)")
                page.adapter = gr.Radio([("LoRA (LUNE): a plain adapter any PEFT user can load", "lora"),
                                         ("LoRA under the answer gate: an output guard, acting only where a forgotten "
                                          "answer is about to be said; needs its own code at inference", "gated"),
                                         ("The subject's token embeddings (alternative)", "subject")],
                                        value=DEFAULTS.adapter, label="What the adapter trains")
                # A textbox, not gr.Number: "empty" must reach the engine as empty (a Number shows and
                # sends 0); no widget bounds, so out-of-range values get the engine's message.
                page.lr = gr.Textbox(label=f"Learning rate (at most {limits.max_learning_rate:g})",
                                     placeholder=f"empty = {DEFAULT_LEARNING_RATES['lora']:g} for LoRA, "
                                                 f"{DEFAULT_LEARNING_RATES['subject']:g} for embeddings")
                page.rank = gr.Slider(1, limits.max_lora_rank, value=DEFAULTS.lora_rank, step=1,
                                      label="LoRA rank (LoRA only)")
                page.layers = gr.Textbox(label="Layers with LoRA (LoRA only)",
                                         placeholder="empty = the middle half (gated: upper half); or 8-20, or 4,6,8")
                page.seed = gr.Number(DEFAULTS.seed, precision=0, label="Seed")
                page.early_stop = gr.Checkbox(True, label="Stop early once no fact is said")
                page.general_prompts = gr.Slider(0, limits.max_general_prompts, step=1,
                                                 value=min(DEFAULT_GENERAL_PROMPTS, limits.max_general_prompts),
                                                 label="General questions to check (more = slower)")
                page.max_new_tokens = gr.Slider(4, limits.max_new_tokens, step=1,
                                                value=min(DEFAULTS.max_new_tokens, limits.max_new_tokens),
                                                label="Answer length (new tokens)")
            with gr.Row():
                page.run_button = gr.Button("Unlearn", variant="primary")
                can_stop = service.context.can_stop
                # On ZeroGPU no stop signal reaches the worker: say so rather than pretend.
                page.stop_button = gr.Button("Stop" if can_stop else "Stop (not available on ZeroGPU)",
                                             variant="stop", interactive=can_stop)
                page.reset_button = gr.Button("Reset")
        with gr.Column(scale=3):
            page.plot = gr.Plot(loss_figure([]), label="Loss", show_label=False, elem_id="loss-plot")
            page.run_status = gr.Markdown("Press **Unlearn** to train this page's adapter.", elem_id="run-status")


def wire(page: Page, service: Service) -> None:
    outputs = [page.plot, page.run_status, page.compare, page.cards, page.runs, page.cost, page.robust_table,
               page.robust_status, page.kind_line, page.lens_plot, page.lens_note]

    def cleared_robustness() -> dict:
        # The robustness panel belongs to the adapter it attacked: it goes with it.
        return {page.robust_table: robustness_frame([]), page.robust_status: ROBUSTNESS_EMPTY}

    @guarded(page.run_status)
    def on_run(state, rows, method, adapter, steps, lr, rank, layers, seed, max_new_tokens, early_stop,
               general_prompts, request: gr.Request):
        service.bind(state, request.session_hash if request else None)
        settings = {"method": method, "adapter": adapter, "steps": steps, "learning_rate": lr, "lora_rank": rank,
                    "layers": layers, "seed": seed, "max_new_tokens": max_new_tokens, "early_stop": early_stop}
        plotted = None
        for update in service.run(state, rows, settings, general_prompts):
            shown = {}
            if plotted != len(state.history) or update.done:
                shown[page.plot] = loss_figure(state.history)
            if plotted is None:
                shown.update(cleared_robustness())
            plotted = len(state.history)
            if not update.done:
                yield {**shown, page.run_status: progress_markdown(update)}
                continue
            report = state.report
            yield {**shown, **cleared_robustness(), page.run_status: finished_markdown(report),
                   page.compare: comparison_html(comparison_rows(report)), page.cards: cards_html(report["metrics"]),
                   page.kind_line: kind_markdown(report), page.lens_plot: lens_figure(report.get("logit_lens")),
                   page.lens_note: lens_markdown(report),
                   page.runs: runs_frame(state.runs), page.cost: cost_frame(cost_rows(state))}

    @guarded(page.run_status)
    def on_stop(state):
        if service.request_stop(state):
            return {page.run_status: "**Stopping** after the current step; the answers are then evaluated as usual."}
        return {page.run_status: "Nothing is running."}

    @guarded(page.run_status)
    def on_reset(state):
        service.reset(state)
        return {page.plot: loss_figure([]), page.compare: comparison_html([]), page.cards: cards_html(None),
                page.kind_line: "", page.lens_plot: lens_figure(None), page.lens_note: "",
                page.cost: cost_frame([]), **cleared_robustness(),
                page.run_status: "Adapter removed: the model answers like the base model again. The comparison, "
                                 "the cost table and the robustness check went with it (they described that adapter); "
                                 "your facts and the run history stay."}

    page.method.change(method_markdown, page.method, page.method_info, api_visibility="private", **LIGHT)
    page.run_button.click(on_run, [page.state, page.facts, page.method, page.adapter, page.steps, page.lr, page.rank,
                                   page.layers, page.seed, page.max_new_tokens, page.early_stop,
                                   page.general_prompts], outputs, api_name="unlearn",
                          show_progress_on=[page.run_status], **HEAVY)
    page.stop_button.click(on_stop, page.state, [page.run_status], api_name="stop", show_progress="hidden", **LIGHT)
    page.reset_button.click(on_reset, page.state, outputs, api_name="reset", **LIGHT)
