"""Step 5 · Cost: this run's adapter against the same loss as full fine-tuning of every weight."""
from __future__ import annotations

import gradio as gr

from ..service import Service, cost_rows
from ..views import cost_frame, full_ft_forecast, progress_markdown
from .page import HEAVY, Page, guarded


def build(page: Page, service: Service) -> None:
    gr.Markdown("## 5 · Cost", elem_classes="step-title", elem_id="cost-title")
    page.cost = gr.Dataframe(cost_frame([]), interactive=False, label="This run's adapter vs full fine-tuning")
    gr.Markdown("On a CPU, peak memory is the resident memory of the whole server process.")
    page.full_ft_button = gr.Button("Run the same loss as full fine-tuning")
    page.cost_status = gr.Markdown()


def wire(page: Page, service: Service) -> None:
    @guarded(page.cost_status)
    def on_full_ft(state, request: gr.Request):
        service.bind(state, request.session_hash if request else None)
        service.check_full_finetune(state)  # a refusal, if any, comes before the estimate of a wait
        yield {page.cost_status: f"Full fine-tuning: {full_ft_forecast(state.report)}"}
        for update in service.run_full_finetune(state):
            if not update.done:
                yield {page.cost_status: "Full fine-tuning — " + progress_markdown(update)}
                continue
            full = state.full_ft
            if full["measured"]:
                note = "**Measured**: the same loss, facts and settings, training every weight in full precision."
            else:
                est = full["estimate"]
                note = (f"**Estimate, not measured**: full fine-tuning needs about {est['needed_mb']:,} MB "
                        f"(weights, gradients, Adam moments) and only {est['free_mb']:,} MB are free here.")
            yield {page.cost: cost_frame(cost_rows(state)), page.cost_status: note}

    page.full_ft_button.click(on_full_ft, page.state, [page.cost, page.cost_status], api_name="full_finetune",
                              show_progress_on=[page.cost_status], **HEAVY)
