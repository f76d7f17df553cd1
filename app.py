"""LUNE web app: lays out the page and wires its events. Everything that acts (loading, training,
answering, exporting) lives in lune_core.session; this file only turns its plain values into
components. Launch with `python app.py` (http://127.0.0.1:7860)."""
from __future__ import annotations

import functools
import html
import re
import threading
from pathlib import Path

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from lune_core import session as S
from lune_core.config import UnlearnConfig
from lune_core.deploy import running_on_spaces
from lune_core.losses import METHODS
from lune_core.models import EMBEDDED_MODEL
from lune_core.probes import KINDS as PROBE_KINDS

QUANTIZATION = {"nf4": "4-bit NF4", "none": "none (full precision)"}
MODEL_QUEUE = "model"  # training and generation share the weights: one job at a time, in order
MAX_UPLOAD = "1mb"  # the page takes no uploads; this bounds what gradio's upload route accepts
CACHE_CLEANUP = (3600, 3600)  # every hour, delete served files (exports) older than an hour
LIMITS = S.LIMITS
DEFAULTS = UnlearnConfig()
MODEL_CHOICES = [("SmolLM2-135M-Instruct (embedded, works offline)", EMBEDDED_MODEL),
                 ("Qwen/Qwen2.5-0.5B-Instruct (from the hub)", "Qwen/Qwen2.5-0.5B-Instruct")]
VERDICTS = {  # word, symbol and colour: the colour is never the only signal
    "forgotten": ("✓ forgotten", "#d1fae5"), "kept": ("✓ kept", "#d1fae5"), "agrees": ("✓ agrees", "#d1fae5"),
    "still leaks": ("✗ still leaks", "#fee2e2"), "lost": ("✗ lost", "#fee2e2"),
    "changed": ("✗ changed", "#fee2e2"), "broken": ("✗ broken", "#fde68a"),
    "not known before": ("– not known before", "#e5e7eb"), "wrong before": ("– wrong before", "#e5e7eb"),
    "no answer before": ("– no answer before", "#e5e7eb"), "looping before": ("– looping before", "#e5e7eb"),
}
CARDS = [  # metric key, title, how to read it, format, the metric's value before (if any)
    ("forget_success", "Forget success", "known facts no longer said (higher is better)", "pct", None),
    ("forget_clean", "Forgotten cleanly", "no longer said, and the answer is not broken", "pct", None),
    ("paraphrase_success", "Paraphrase success", "the fact's own rewordings no longer said", "pct", None),
    ("adversarial_success", "Adversarial success", "cloze, multiple choice, 'Sure, the answer is', hints",
     "pct", None),
    ("neighbour_retention", "Neighbour retention", "the facts' neighbours still right: same subject, same "
     "question about others, shared words", "pct", None),
    ("neighbour_agreement", "Neighbour agreement", "automatic neighbours that still say what the base said",
     "pct", None),
    ("general_retention", "General retention", "unrelated known answers still right", "pct", None),
    ("degenerate_rate", "Degenerate answers", "empty or looping answers after (lower is better)", "pct",
     "degenerate_rate_before"),
    ("truth_ratio_after", "Truth ratio", "likelihood of wrong answers over the true one; above 1: the true "
     "answer is no longer preferred", "num", "truth_ratio_before"),
]
KIND_ORDER = {kind: i for i, kind in enumerate(PROBE_KINDS)}  # the table's groups, in this order
KIND_WORDS = {"same_subject": "same subject", "same_relation": "same question, other subject",
              "shared_words": "shared words", "unspecified": "yours", "in_context": "in-context hint",
              "choice": "multiple choice", "prefix": "'Sure, the answer is'", "cloze": "fill in the blank"}
CSS = """
.cards {display: grid; grid-template-columns: repeat(auto-fit, minmax(170px, 1fr)); gap: 10px;}
.card {border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 10px 14px;
       background: var(--background-fill-secondary);}
.card .value {font-size: 1.8em; font-weight: 700;}
.card .title {font-weight: 600;}
.card .hint {font-size: 0.85em; opacity: 0.75;}
.step-title {margin-top: 0.6em !important;}
"""


# ---- rendering plain values --------------------------------------------------------------------

def text(value) -> str:
    """User or model text made inert inside Markdown: no HTML, no markup, no maths."""
    escaped = html.escape(str(value), quote=False)
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|~$>])", r"\\\1", escaped)


def fail(err: BaseException, outputs: int, status_at: int = 0):
    """Show an error without touching any other output (typed facts and past results stay)."""
    message = S.user_message(err)
    gr.Warning(html.escape(message))
    values = [gr.skip()] * outputs
    values[status_at] = f"⚠️ {text(message)}"
    return values[0] if outputs == 1 else tuple(values)


def guarded(outputs: int, status_at: int = 0):
    def wrap(fn):
        @functools.wraps(fn)
        def call(*args):
            try:
                return fn(*args)
            except Exception as err:  # noqa: BLE001 - every error becomes a message in the page
                return fail(err, outputs, status_at)
        return call
    return wrap


def guarded_stream(outputs: int, status_at: int = 0):
    def wrap(fn):
        @functools.wraps(fn)
        def call(*args):
            try:
                yield from fn(*args)
            except Exception as err:  # noqa: BLE001
                yield fail(err, outputs, status_at)
        return call
    return wrap


def model_markdown(info: dict) -> str:
    reuse = "already loaded, shared with every visitor" if info["reused"] else f"loaded in {info['load_seconds']} s"
    return (f"**{text(info['name'])}** — {reuse}  \n"
            f"device **{info['device']}** · quantization **{QUANTIZATION[info['quantization']]}**"
            f" · compute {info['compute_dtype']} · **{info['total_params'] / 1e6:.1f} M** parameters"
            f" · {info['num_layers']} layers · weights in memory **{info['memory_mb']:.0f} MB**")


def loss_figure(steps: list[dict], total_steps: int | None = None) -> go.Figure:
    figure = go.Figure()
    if steps:
        x = [s["step"] for s in steps]
        figure.add_scatter(x=x, y=[s["loss"] for s in steps], name="total loss", mode="lines+markers",
                           line={"width": 3})
        for part in dict.fromkeys(k for s in steps for k in s["parts"]):
            figure.add_scatter(x=x, y=[s["parts"].get(part) for s in steps], name=part,
                               mode="lines+markers", line={"dash": "dot"})
        total_steps = total_steps or steps[-1]["total_steps"]
    figure.update_layout(
        height=320, margin={"l": 40, "r": 10, "t": 40, "b": 40}, title="Loss per step (total and each part)",
        xaxis={"title": "step", "range": [0.5, (total_steps or DEFAULTS.steps) + 0.5]},
        yaxis={"title": "loss"}, legend={"orientation": "h", "y": -0.25}, template="plotly_white",
    )
    return figure


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


PHASES = {
    "preparing": "Preparing: asking the base model every question once, before training",
    "training": "Training the adapter",
    "evaluating": "Evaluating: asking every question again, now with the adapter",
    "done": "Done",
}


def progress_markdown(update: S.RunUpdate) -> str:
    line = f"**{PHASES[update.phase]}** · {_clock(update.elapsed)} elapsed"
    step = update.step
    if step:
        line += (f"  \nstep **{step['step']} / {step['total_steps']}** · loss {step['loss']:.3f}"
                 f" · {step['seconds']:.1f} s/step · peak memory {step['peak_memory_mb']:.0f} MB")
        if update.phase == "training" and not step["stopped"]:
            line += f" · about {_clock(step['eta_seconds'])} left (at most)"
        if step["leaks_left"] is not None:
            line += f" · facts still said: {step['leaks_left']}"
    return line


def finished_markdown(report: dict) -> str:
    m = report["metrics"]
    why = "stopped by you" if report.get("stopped_by_user") else (report["stopped"] or "ran all steps")
    return (f"**Done** in {_clock(report['wall_seconds'])} · {m['steps_run']} steps ({text(why)}) · "
            f"{m['seconds_per_step']} s/step · peak memory {m['peak_memory_mb']:.0f} MB. "
            f"{_what_was_trained(report)} See the comparison below.")


def _what_was_trained(report: dict) -> str:
    config = report["config"]
    if config.get("full_finetune"):
        return "Trained every weight."
    if "edited_tokens" in report:
        words = list(dict.fromkeys(t.strip() for t in report["edited_tokens"]))
        return f"Trained the embeddings of {len(report['edited_tokens'])} tokens: {text(', '.join(words))}."
    layers = "the middle layers" if config.get("layers") is None else "layers " + ", ".join(map(str, config["layers"]))
    focused = " (A focused on the facts' inputs and frozen, B trained)" if config.get("focus_ridge") else ""
    return f"Trained LoRA (rank {config['lora_rank']}) on {text(layers)}{focused}."


def kind_label(row: dict) -> str:
    """'neighbour · same subject (curated)': the kind with its sub-kind and source visible."""
    label = row["kind"]
    if row.get("subkind"):
        label += f" · {KIND_WORDS.get(row['subkind'], row['subkind'])}"
    if row["kind"] == "neighbour" and row.get("source"):
        label += f" ({row['source']})"
    return label


def comparison_frame(rows: list[dict]):
    rows = sorted(rows, key=lambda r: KIND_ORDER.get(r["kind"], 9))  # stable: the run's order within a kind
    frame = pd.DataFrame(
        [[kind_label(r), r["prompt"] + (f"\n↳ reply made to start: {r['prefill']}" if r.get("prefill") else ""),
          r["expected"] or "(the base's own answer)", r["before"], r["after"],
          VERDICTS.get(r["verdict"], (r["verdict"],))[0]] for r in rows],
        columns=["kind", "prompt", "answer checked", "before", "after", "verdict"])
    if frame.empty:
        return frame
    colours = {word: colour for word, colour in VERDICTS.values()}
    return frame.style.map(lambda v: f"background-color: {colours.get(v, 'transparent')}; color: #111",
                           subset=["verdict"])


def cards_html(metrics: dict | None) -> str:
    def show(value, kind):
        if value is None:
            return "–"
        return f"{100 * value:.0f} %" if kind == "pct" else f"{value:.2f}"

    def before(key, kind):
        return f" · before: {show(metrics[key], kind)}" if key and metrics.get(key) is not None else ""

    metrics = metrics or {}
    cards = "".join(
        f"<div class='card'><div class='title'>{title}</div><div class='value'>{show(metrics.get(key), kind)}</div>"
        f"<div class='hint'>{hint}{before(base, kind)}</div></div>" for key, title, hint, kind, base in CARDS)
    return f"<div class='cards'>{cards}</div>"


def runs_frame(runs: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(runs, columns=["run", "method", "facts", "steps", "forget_success", "paraphrase_success",
                                       "adversarial_success", "neighbour_retention", "neighbour_agreement",
                                       "general_retention", "seconds", "stopped"])


def cost_frame(rows: list[list]) -> pd.DataFrame:
    def show(v):
        if v is None:
            return "not measured"
        return f"{v:,}" if isinstance(v, int) else str(v)

    return pd.DataFrame([[name, show(a), show(b)] for name, a, b in rows],
                        columns=["measure", "adapter (this run)", "full fine-tuning"])


def base_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(
        [[r["question"], r["answer"], r["base_answer"], "✓ says it" if r["known"] else "– does not say it"]
         for r in rows], columns=["question", "answer to forget", "the model says now", "known?"])


def method_markdown(name: str) -> str:
    method = METHODS.get(name)
    return f"*{text(method.description)}*" if method else ""


# ---- event handlers: call the session, render the result ------------------------------------------

@guarded(outputs=1)
def on_load_model(state: S.Session, model_id: str, quantize: bool, progress=gr.Progress()):
    progress(0.1, desc="Loading the model (the first load of a model takes longest)…")
    return model_markdown(S.load(state, model_id, quantize))


@guarded(outputs=3, status_at=2)
def on_preset(preset_id: str, count):
    entry = next((p for p in S.presets() if p["id"] == preset_id), {})
    all_rows = S.preset_rows(preset_id)
    rows = all_rows[: max(1, int(count or 1))]
    note = f"Loaded {len(rows)} of the preset's {len(all_rows)} facts (fewer facts, quicker runs)."
    if entry.get("kind") == "taught":
        note += (" The model has never heard of this invented person, so these rows will read *not known "
                 "before*: a fact the model does not say cannot be forgotten (teaching it first is not in this "
                 "version).")
    return rows, text(entry.get("description", "")), note


@guarded(outputs=2, status_at=1)
def on_preview(state: S.Session, rows, max_new_tokens):
    found = S.preview(state, rows, max_new_tokens)
    known = sum(r["known"] for r in found)
    return base_frame(found), (f"The base model says {known} of {len(found)} answers now. "
                               "A fact it does not say cannot show forgetting.")


@guarded(outputs=3, status_at=1)
def on_add_sentences(rows, sentences: str):
    merged = S.add_sentences(rows, sentences)
    return merged, f"The table now holds {len(merged)} facts.", ""


ROBUSTNESS_COLUMNS = ["prompt", "after relearning", "after re-quantizing"]
ROBUSTNESS_EMPTY = "Press **Check robustness** after a run."


def _run_outputs(state: S.Session, update: S.RunUpdate, plot_again: bool, first: bool = False):
    """plot, progress, comparison, cards, run history, cost table, robustness table and status."""
    figure = loss_figure(state.history) if plot_again else gr.skip()
    # The robustness panel belongs to the adapter it attacked: it goes when a new run starts.
    robust = (pd.DataFrame(columns=ROBUSTNESS_COLUMNS), ROBUSTNESS_EMPTY) if first or update.done else (
        gr.skip(), gr.skip())
    if not update.done:
        return figure, progress_markdown(update), *[gr.skip()] * 4, *robust
    report = state.report
    return (figure, finished_markdown(report), comparison_frame(S.comparison_rows(report)),
            cards_html(report["metrics"]), runs_frame(state.runs), cost_frame(S.cost_rows(state)), *robust)


@guarded_stream(outputs=8, status_at=1)
def on_run(state: S.Session, rows, method, adapter, steps, lr, rank, layers, seed, max_new_tokens, early_stop,
           general_prompts, request: gr.Request):
    S.bind(state, request.session_hash if request else None)
    settings = {"method": method, "adapter": adapter, "steps": steps, "learning_rate": lr, "lora_rank": rank,
                "layers": layers, "seed": seed, "max_new_tokens": max_new_tokens, "early_stop": early_stop}
    plotted = None
    for update in S.run(state, rows, settings, general_prompts):
        yield _run_outputs(state, update, plot_again=plotted != len(state.history) or update.done,
                           first=plotted is None)
        plotted = len(state.history)


@guarded(outputs=1)
def on_stop(state: S.Session):
    if S.request_stop(state):
        return "**Stopping** after the current step; the answers are then evaluated as usual."
    return "Nothing is running."


@guarded(outputs=8, status_at=1)
def on_reset(state: S.Session):
    S.reset(state)
    return (loss_figure([]), "Adapter removed: the model answers like the base model again. "
            "Your facts and the run history stay.", comparison_frame([]), cards_html(None), gr.skip(),
            cost_frame([]), pd.DataFrame(columns=ROBUSTNESS_COLUMNS), ROBUSTNESS_EMPTY)


@guarded(outputs=3, status_at=2)
def on_ask(state: S.Session, prompt: str, max_new_tokens):
    before, after = S.ask(state, prompt, max_new_tokens)
    note = "No adapter yet: both answers come from the base model." if state.adapter is None else \
        "Left: base model (adapter off). Right: with this page's adapter."
    return before, after, note


@guarded_stream(outputs=2, status_at=1)
def on_full_ft(state: S.Session, request: gr.Request):
    S.bind(state, request.session_hash if request else None)
    for update in S.run_full_finetune(state):
        if update.done:
            full = state.full_ft
            if full["measured"]:
                note = "**Measured**: the same loss, facts and settings, training every weight in full precision."
            else:
                est = full["estimate"]
                note = (f"**Estimate, not measured**: full fine-tuning needs about {est['needed_mb']:,} MB "
                        f"(weights, gradients, Adam moments) and only {est['free_mb']:,} MB are free here.")
            yield cost_frame(S.cost_rows(state)), note
        else:
            yield gr.skip(), "Full fine-tuning — " + progress_markdown(update)


@guarded(outputs=2, status_at=1)
def on_export(state: S.Session, request: gr.Request):
    S.bind(state, request.session_hash if request else None)
    files = S.export_files(state)
    return files, f"{len(files)} files ready: click a name to download."


def robustness_markdown(result: dict) -> str:
    def pct(v):
        return "–" if v is None else f"{100 * v:.0f} %"

    n = result.get("forgotten_probes", 0)
    line = (f"Of the **{n}** questions the run made the model forget, said again after "
            f"{result.get('relearn_steps', 'a few')} steps of relearning on related text: "
            f"**{pct(result.get('relearn_leak_rate'))}** · after merging the adapter and re-quantizing to 4 bits: "
            f"**{pct(result.get('requant_leak_rate'))}** (lower is better).")
    still = result.get("still_leaking_after_training")
    if still:
        line += (f" {still} question(s) still gave the answer right after training; they were never forgotten, "
                 "so they are not counted as coming back.")
    return line


@guarded_stream(outputs=2, status_at=1)
def on_robustness(state: S.Session):
    for event in S.check_robustness(state):
        if "result" in event:
            result = event["result"]
            yield (pd.DataFrame([[r["prompt"], r.get("after_relearning", ""), r.get("after_requant", "")]
                                 for r in S.robustness_rows(result)], columns=ROBUSTNESS_COLUMNS),
                   robustness_markdown(result))
        else:
            yield gr.skip(), (f"Attack {event['stage'] + 1} of 3: {event['name']}… "
                              f"({_clock(event['elapsed'])} so far; the whole check takes a minute or more on a CPU)")


def on_unload(request: gr.Request):
    S.end_session(request.session_hash)


# ---- the page ---------------------------------------------------------------------------------

GUIDE_TEXT = (Path(__file__).parent / "assets" / "guide.md").read_text(encoding="utf-8")


def build() -> gr.Blocks:
    deploy = S.DEPLOY
    with gr.Blocks(title="LUNE — unlearning with LoRA", delete_cache=CACHE_CLEANUP) as demo:
        state = gr.State(S.Session(), delete_callback=S.Session.close)
        with gr.Row():
            gr.Markdown("# 🌘 LUNE — make a language model forget chosen facts\n"
                        "Pick facts, train a small adapter on negative examples, and compare the answers "
                        "before and after. The base model is shared and never changed; your adapter is yours "
                        "alone. New here? Read the **Guide** at the bottom.")
            if running_on_spaces():
                gr.DuplicateButton(value="Duplicate this Space for a private copy", size="lg")

        # 1. Model
        gr.Markdown("## 1 · Model", elem_classes="step-title")
        with gr.Row():
            model_id = gr.Dropdown(MODEL_CHOICES, value=deploy.default_model, allow_custom_value=True, scale=3,
                                   label="Model", info="the embedded model works offline; or type a hub id")
            quantize = gr.Checkbox(value=deploy.quantize_4bit, label="4-bit (NF4) backbone", scale=1)
            load_button = gr.Button("Load model", variant="secondary", scale=1)
        model_info = gr.Markdown("No model loaded yet. Unlearn loads the default model by itself.")

        # 2. Facts
        gr.Markdown("## 2 · Facts to forget", elem_classes="step-title", elem_id="facts-title")
        with gr.Row(equal_height=True):
            preset = gr.Dropdown([(p["title"], p["id"]) for p in S.presets()], value=None, scale=2,
                                 label="Preset", info="themed sets checked against the embedded model")
            preset_count = gr.Slider(1, LIMITS.max_facts, value=min(2, LIMITS.max_facts), step=1, scale=1,
                                     label="Facts to take from it", elem_id="preset-count")
            preset_info = gr.Markdown(elem_id="preset-info")
        facts = gr.Dataframe(
            value=pd.DataFrame([[""] * len(S.FACT_COLUMNS)], columns=S.FACT_COLUMNS), headers=S.FACT_COLUMNS,
            datatype="str", interactive=True, wrap=True, column_count=len(S.FACT_COLUMNS), label="Facts (editable)",
            elem_id="facts", column_widths=["24%", "13%", "15%", "22%", "26%"], max_chars=LIMITS.max_text_chars)
        with gr.Accordion("Or write sentences with the answer in [brackets]", open=False):
            sentences = gr.Textbox(lines=3, max_length=LIMITS.max_text_chars * LIMITS.max_facts,
                                   label="One per line", placeholder="The capital of France is [Paris].")
            add_button = gr.Button("Add to the table")
        with gr.Row():
            preview_button = gr.Button("Ask the base model about these facts", size="sm")
            preset_button = gr.Button("Reload the preset", size="sm")
        facts_status = gr.Markdown(elem_id="facts-status")
        base_table = gr.Dataframe(label="What the base model says now", elem_id="base-answers", interactive=False,
                                  wrap=True, column_widths=["28%", "14%", "46%", "12%"],
                                  headers=["question", "answer to forget", "the model says now", "known?"])

        # 3. Unlearn
        gr.Markdown("## 3 · Unlearn", elem_classes="step-title", elem_id="unlearn-title")
        with gr.Row():
            with gr.Column(scale=2):
                method = gr.Dropdown([(f"{name}", name) for name in METHODS], value="lune", label="Method")
                method_info = gr.Markdown(method_markdown("lune"))
                with gr.Accordion("Advanced settings", open=False):
                    steps = gr.Slider(1, LIMITS.max_steps, value=min(DEFAULTS.steps, LIMITS.max_steps), step=1,
                                      label="Steps (at most; stops early once no fact is said)")
                    adapter = gr.Radio([("LoRA on the middle layers, focused (LUNE)", "lora"),
                                        ("The subject's token embeddings (alternative)", "subject")],
                                       value=DEFAULTS.adapter,
                                       label="What the adapter trains")
                    # A textbox, not gr.Number: "empty" must reach the engine as empty (a Number shows and
                    # sends 0); no widget bounds, so out-of-range values get the engine's message.
                    lr = gr.Textbox(label=f"Learning rate (at most {LIMITS.max_learning_rate:g})",
                                    placeholder="empty = 0.001 for LoRA, 0.01 for embeddings")
                    rank = gr.Slider(1, LIMITS.max_lora_rank, value=DEFAULTS.lora_rank, step=1,
                                     label="LoRA rank (LoRA only)")
                    layers = gr.Textbox(label="Layers with LoRA (LoRA only)",
                                        placeholder="empty = the middle band; or 8-20, or 4,6,8")
                    seed = gr.Number(DEFAULTS.seed, precision=0, label="Seed")
                    early_stop = gr.Checkbox(True, label="Stop early once no fact is said")
                    general_prompts = gr.Slider(0, LIMITS.max_general_prompts, step=1,
                                                value=min(S.DEFAULT_GENERAL_PROMPTS, LIMITS.max_general_prompts),
                                                label="General questions to check (more = slower)")
                    max_new_tokens = gr.Slider(4, LIMITS.max_new_tokens, step=1,
                                               value=min(DEFAULTS.max_new_tokens, LIMITS.max_new_tokens),
                                               label="Answer length (new tokens)")
                with gr.Row():
                    run_button = gr.Button("Unlearn", variant="primary")
                    stop_button = gr.Button("Stop", variant="stop")
                    reset_button = gr.Button("Reset")
            with gr.Column(scale=3):
                plot = gr.Plot(loss_figure([]), label="Loss", show_label=False, elem_id="loss-plot")
                run_status = gr.Markdown("Press **Unlearn** to train this page's adapter.", elem_id="run-status")

        # 4. Compare
        gr.Markdown("## 4 · Compare before and after", elem_classes="step-title", elem_id="compare-title")
        cards = gr.HTML(cards_html(None), elem_id="metric-cards")
        # Every row on the page, no inner scroll: a projector shows the whole comparison.
        compare = gr.Dataframe(comparison_frame([]), interactive=False, wrap=True, elem_id="compare",
                               label="Every question, before (adapter off) and after (adapter on)", max_height=20000,
                               column_widths=["13%", "19%", "9%", "23%", "23%", "13%"])
        with gr.Accordion("Runs in this page", open=False):
            runs = gr.Dataframe(runs_frame([]), interactive=False, label="Past runs (kept until you leave)")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Try your own prompt", max_length=LIMITS.max_text_chars,
                                    placeholder="e.g. a paraphrase of a forgotten fact")
                ask_button = gr.Button("Ask before and after")
                ask_status = gr.Markdown()
            before_box = gr.Textbox(label="Before (base model)", interactive=False, lines=4)
            after_box = gr.Textbox(label="After (with your adapter)", interactive=False, lines=4)
        with gr.Accordion("Robustness: does the forgetting survive relearning or re-quantization?", open=False):
            robust_button = gr.Button("Check robustness")
            robust_status = gr.Markdown(ROBUSTNESS_EMPTY)
            robust_table = gr.Dataframe(pd.DataFrame(columns=ROBUSTNESS_COLUMNS), interactive=False, wrap=True,
                                        column_widths=["24%", "38%", "38%"])

        # 5. Cost
        gr.Markdown("## 5 · Cost", elem_classes="step-title")
        cost = gr.Dataframe(cost_frame([]), interactive=False, label="This run's adapter vs full fine-tuning")
        gr.Markdown("On a CPU, peak memory is the resident memory of the whole server process.")
        full_ft_button = gr.Button("Run the same loss as full fine-tuning")
        cost_status = gr.Markdown()

        # 6. Export
        gr.Markdown("## 6 · Export", elem_classes="step-title")
        with gr.Row(equal_height=True):
            export_button = gr.Button("Prepare downloads", scale=1)
            export_status = gr.Markdown()
        downloads = gr.File(file_count="multiple", label="Adapter (PEFT folder + model card, zipped), "
                            "report JSON, comparison CSV, loss history CSV", interactive=False, height=150)

        # 7. Guide
        gr.Markdown("## 7 · Guide for the classroom", elem_classes="step-title")
        gr.Markdown(GUIDE_TEXT)

        # ---- wiring ----
        heavy = {"concurrency_id": MODEL_QUEUE, "concurrency_limit": 1}
        light = {"concurrency_limit": None}
        load_button.click(on_load_model, [state, model_id, quantize], model_info, api_name="load_model", **heavy)
        for trigger, api in ((preset.input, "use_preset"), (preset_button.click, "reload_preset")):
            trigger(on_preset, [preset, preset_count], [facts, preset_info, facts_status], api_name=api,
                    **light).success(
                on_preview, [state, facts, max_new_tokens], [base_table, facts_status], api_visibility="private",
                show_progress_on=[facts_status], **heavy)
        preview_button.click(on_preview, [state, facts, max_new_tokens], [base_table, facts_status],
                             api_name="preview", show_progress_on=[facts_status], **heavy)
        add_button.click(on_add_sentences, [facts, sentences], [facts, facts_status, sentences],
                         api_name="add_sentences", **light)
        method.change(method_markdown, method, method_info, api_visibility="private", **light)
        run_outputs = [plot, run_status, compare, cards, runs, cost, robust_table, robust_status]
        run_button.click(on_run, [state, facts, method, adapter, steps, lr, rank, layers, seed, max_new_tokens,
                                  early_stop, general_prompts], run_outputs, api_name="unlearn",
                         show_progress_on=[run_status], **heavy)
        stop_button.click(on_stop, state, run_status, api_name="stop", show_progress="hidden", **light)
        reset_button.click(on_reset, state, run_outputs, api_name="reset", **light)
        ask_button.click(on_ask, [state, prompt, max_new_tokens], [before_box, after_box, ask_status],
                         api_name="ask", **heavy)
        prompt.submit(on_ask, [state, prompt, max_new_tokens], [before_box, after_box, ask_status],
                      api_visibility="private", **heavy)
        full_ft_button.click(on_full_ft, state, [cost, cost_status], api_name="full_finetune",
                             show_progress_on=[cost_status], **heavy)
        export_button.click(on_export, state, [downloads, export_status], api_name="export", **light)
        robust_button.click(on_robustness, state, [robust_table, robust_status], api_name="robustness",
                            show_progress_on=[robust_status], **heavy)
        demo.unload(on_unload)
    return demo


demo = build()
demo.queue(max_size=64)


def preload_default_model() -> None:
    """Load the default model in the background so the first visitor does not wait for it."""
    def load():
        try:
            S.MODELS.get(S.DEPLOY.default_model, S.DEPLOY.quantize_4bit)
        except Exception as err:  # noqa: BLE001 - shown again, as a message, when someone loads it
            S.log.warning("preloading the default model failed: %s", err)

    threading.Thread(target=load, name="lune-preload", daemon=True).start()


if __name__ == "__main__":
    preload_default_model()
    # GRADIO_SERVER_NAME / GRADIO_SERVER_PORT are honoured by launch(); default 127.0.0.1:7860.
    demo.launch(theme=gr.themes.Soft(primary_hue="indigo"), css=CSS, max_file_size=MAX_UPLOAD)
