"""The page: one module per section, each creating its own components and wiring its own events.
Sections are built in page order first, then wired, so a handler may fill another section's
components (a run fills the comparison and the cost table)."""
from __future__ import annotations

import gradio as gr

from ..service import Service
from ..session import Session
from . import compare, cost, export, facts, guide, model, restore, unlearn
from .page import Page

SECTIONS = (model, facts, unlearn, compare, cost, export, guide, restore)
CSS = """
.cards {display: grid; grid-template-columns: repeat(auto-fit, minmax(170px, 1fr)); gap: 10px;}
.card {border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 10px 14px;
       background: var(--background-fill-secondary);}
.card .value {font-size: 1.8em; font-weight: 700;}
.card .title {font-weight: 600;}
/* projector legibility: at least 14 px at a contrast of at least 4.5:1 (WCAG AA), never faded */
.card .hint {font-size: 14px; color: var(--body-text-color-subdued);}
.step-title {margin-top: 0.6em !important; scroll-margin-top: 64px;}
/* gradio's container hides its overflow, which makes it the sticky bar's scroll box: clip instead */
.gradio-container {overflow: clip !important;}
#steps-nav {position: sticky; top: 0; z-index: 50; background: var(--background-fill-primary);
            border-bottom: 1px solid var(--border-color-primary); padding: 6px 0;}
#steps-nav a {margin-right: 1.1em; font-weight: 600; text-decoration: none; font-size: 1.05em;}
/* projector-friendly: the comparison and the facts in a larger type than gradio's default tables */
#compare, #facts, #base-answers {font-size: 16px;}
/* the comparison: a kind per fold, words never broken inside (no "Washingt/on"), the table within its box */
.compare details {border: 1px solid var(--border-color-primary); border-radius: 8px; margin: 6px 0;
                  padding: 4px 10px;}
.compare summary {cursor: pointer; padding: 6px 0;}
.compare table.cmp {width: 100%; border-collapse: collapse; table-layout: auto;}
.compare th, .compare td {border-top: 1px solid var(--border-color-primary); padding: 6px; vertical-align: top;
                          text-align: left; word-break: normal; overflow-wrap: normal; hyphens: none;}
.compare td.verdict {color: #111; white-space: nowrap;}
#runs table {table-layout: auto;}
"""
STEPS = [("model-title", "1 Model"), ("facts-title", "2 Facts"), ("unlearn-title", "3 Unlearn"),
         ("compare-title", "4 Compare"), ("cost-title", "5 Cost"), ("export-title", "6 Export"),
         ("guide-title", "7 Guide")]
MAX_UPLOAD = "1mb"  # the page takes no uploads; this bounds what gradio's upload route accepts
CACHE_CLEANUP = (3600, 3600)  # every hour, delete served files (exports) older than an hour


def build(service: Service) -> gr.Blocks:
    page = Page()
    with gr.Blocks(title="LUNE — unlearning with LoRA", delete_cache=CACHE_CLEANUP) as demo:
        page.demo = demo
        page.state = gr.State(Session(), delete_callback=Session.close)
        with gr.Row():
            gr.Markdown("# 🌘 LUNE — make a language model forget chosen facts\n"
                        "Pick facts, train a small LoRA adapter on negative examples, and compare the answers "
                        "before and after. The base model is shared and never changed; your adapter is yours "
                        "alone. New here? Read the **Guide** (7 in the bar below).")
            if service.context.on_spaces:
                gr.DuplicateButton(value="Duplicate this Space for a private copy", size="lg")
        gr.HTML("".join(f"<a href='#{anchor}'>{name}</a>" for anchor, name in STEPS), elem_id="steps-nav")
        for section in SECTIONS:
            section.build(page, service)
        for section in SECTIONS:
            section.wire(page, service)

        def on_unload(request: gr.Request):
            service.end_session(request.session_hash)

        demo.unload(on_unload)
    demo.queue(max_size=64)
    return demo


def theme() -> gr.themes.Base:
    """Soft, sized for a projector: body text 16 px, hints and small buttons 14 px, and the subdued text
    (hints, info lines) #4b5563 instead of #9ca3af: 7.6:1 on white instead of 2.5:1."""
    return gr.themes.Soft(primary_hue="indigo", text_size=gr.themes.sizes.text_lg).set(
        body_text_color_subdued="*neutral_600")


def launch_options() -> dict:
    return {"theme": theme(), "css": CSS, "max_file_size": MAX_UPLOAD}
