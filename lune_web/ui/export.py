"""Step 6 · Export: the adapter (PEFT folder + model card), the report, the comparison, the losses."""
from __future__ import annotations

import gradio as gr

from ..service import Service
from .page import LIGHT, Page, guarded


def build(page: Page, service: Service) -> None:
    gr.Markdown("## 6 · Export", elem_classes="step-title", elem_id="export-title")
    with gr.Row(equal_height=True):
        page.export_button = gr.Button("Prepare downloads", scale=1)
        page.export_status = gr.Markdown()
    # no fixed height: the list is as tall as its four files
    page.downloads = gr.File(file_count="multiple", label="Adapter (PEFT folder + model card, zipped), "
                             "report JSON, comparison CSV, loss history CSV", interactive=False)


def wire(page: Page, service: Service) -> None:
    @guarded(page.export_status)
    def on_export(state, request: gr.Request):
        service.bind(state, request.session_hash if request else None)
        files = service.export_files(state)
        return {page.downloads: files,
                page.export_status: f"{len(files)} files ready below: each one's download link is at its right."}

    page.export_button.click(on_export, page.state, [page.downloads, page.export_status], api_name="export", **LIGHT)
