"""Plain values rendered for the page: Markdown, HTML cards, tables (pandas) and the loss plot
(plotly). No gradio here, so each renderer can be read and tested on its own."""
from __future__ import annotations

import html
import re

import pandas as pd
import plotly.graph_objects as go

from lune_core.config import UnlearnConfig
from lune_core.losses import METHODS
from lune_core.probes import KINDS as PROBE_KINDS

from .session import RunUpdate

QUANTIZATION = {"nf4": "4-bit NF4", "none": "none (full precision)"}
DEFAULTS = UnlearnConfig()
VERDICTS = {  # word, symbol and colour: the colour is never the only signal
    "forgotten": ("✓ forgotten", "#d1fae5"), "kept": ("✓ kept", "#d1fae5"), "agrees": ("✓ agrees", "#d1fae5"),
    "still leaks": ("✗ still leaks", "#fee2e2"), "lost": ("✗ lost", "#fee2e2"),
    "changed": ("✗ changed", "#fee2e2"), "broken": ("✗ broken", "#fde68a"),
    "not known before": ("– not known before", "#e5e7eb"), "wrong before": ("– wrong before", "#e5e7eb"),
    "no answer before": ("– no answer before", "#e5e7eb"), "looping before": ("– looping before", "#e5e7eb"),
}
# metric key, title, how to read it, format, the metric's value before (if any), how many prompts it is over
CARDS = [
    ("forget_success", "Forget success", "known facts no longer said (higher is better)", "pct", None,
     "known_forget"),
    ("forget_clean", "Forgotten cleanly", "no longer said, and the answer is not broken", "pct", None,
     "known_forget"),
    ("paraphrase_success", "Paraphrase success", "the fact's own rewordings no longer said", "pct", None,
     "known_paraphrase"),
    ("adversarial_success", "Adversarial success", "cloze, multiple choice, 'Sure, the answer is', hints",
     "pct", None, "known_adversarial"),
    ("neighbour_retention", "Neighbour retention", "the facts' neighbours still right: same subject, same "
     "question about others, shared words", "pct", None, "known_neighbour"),
    ("neighbour_agreement", "Neighbour agreement", "automatic neighbours that still say what the base said",
     "pct", None, "counted_agreement"),
    ("general_retention", "General retention", "unrelated known answers still right", "pct", None,
     "known_general"),
    ("degenerate_rate", "Degenerate answers", "empty or looping answers after (lower is better)", "pct",
     "degenerate_rate_before", None),
    ("truth_ratio_after", "Truth ratio", "likelihood of wrong answers over the true one; above 1: the true "
     "answer is no longer preferred", "num", "truth_ratio_before", None),
]
KIND_ORDER = {kind: i for i, kind in enumerate(PROBE_KINDS)}  # the table's groups, in this order
KIND_WORDS = {"same_subject": "same subject", "same_relation": "same question, other subject",
              "shared_words": "shared words", "unspecified": "yours", "in_context": "in-context hint",
              "choice": "multiple choice", "prefix": "'Sure, the answer is'", "cloze": "fill in the blank"}
def text(value) -> str:
    """User or model text made inert inside Markdown: no HTML, no markup, no maths."""
    escaped = html.escape(str(value), quote=False)
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|~$>])", r"\\\1", escaped)


def model_markdown(info: dict) -> str:
    reuse = "already loaded, shared with every visitor" if info["reused"] else f"loaded in {info['load_seconds']} s"
    return (f"**{text(info['name'])}** — {reuse}  \n"
            f"device **{info['device']}** · quantization **{QUANTIZATION[info['quantization']]}**"
            f" · compute {info['compute_dtype']} · **{info['total_params'] / 1e6:.1f} M** parameters"
            f" · {info['num_layers']} layers · weights in memory **{info['memory_mb']:.0f} MB**")


def loss_figure(steps: list[dict], total_steps: int | None = None, title: str = "Loss per step (total and each part)",
                height: int = 320) -> go.Figure:
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
        height=height, margin={"l": 40, "r": 10, "t": 40, "b": 40}, title=title,
        xaxis={"title": "step", "range": [0.5, (total_steps or DEFAULTS.steps) + 0.5]},
        yaxis={"title": "loss"}, legend={"orientation": "h", "y": -0.25}, template="plotly_white",
    )
    return figure


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


PHASES = {
    "preparing": "Preparing: asking the base model every question once, before training",
    "training": "Training",
    "preparing teach": "Preparing: asking the base model the neutral questions the teaching holds",
    "teaching": "Teaching the model the facts",
    "merging": "Merging what was taught into the weights and quantizing them again (about half a minute)",
    "evaluating": "Evaluating: asking every question again, now with the adapter",
    "done": "Done",
}


def progress_markdown(update: RunUpdate) -> str:
    line = f"**{PHASES[update.phase]}** · {clock(update.elapsed)} elapsed"
    step = update.step
    if step:
        line += (f"  \nstep **{step['step']} / {step['total_steps']}** · loss {step['loss']:.3f}"
                 f" · {step['seconds']:.1f} s/step · peak memory {step['peak_memory_mb']:.0f} MB")
        if update.phase == "training" and not step["stopped"]:
            line += f" · about {clock(step['eta_seconds'])} left (at most)"
        if step["leaks_left"] is not None:
            line += f" · facts still said: {step['leaks_left']}"
    return line


def finished_markdown(report: dict) -> str:
    m = report["metrics"]
    why = "stopped by you" if report.get("stopped_by_user") else (report["stopped"] or "ran all steps")
    return (f"**Done** in {clock(report['wall_seconds'])} · {m['steps_run']} steps ({text(why)}) · "
            f"{m['seconds_per_step']} s/step · peak memory {m['peak_memory_mb']:.0f} MB. "
            f"{_what_was_trained(report)} See the comparison below.")


def _what_was_trained(report: dict) -> str:
    config = report["config"]
    if config.get("adapter") == "full":
        return "Trained every weight."
    if "edited_tokens" in report:
        words = list(dict.fromkeys(t.strip() for t in report["edited_tokens"]))
        return f"Trained the embeddings of {len(report['edited_tokens'])} tokens: {text(', '.join(words))}."
    band = tuple(config.get("layer_band") or ())
    layers = ("layers " + ", ".join(map(str, config["layers"])) if config.get("layers")
              else "the upper half of the layers" if band == (0.5, 1.0)
              else f"layers {band[0]:g}-{band[1]:g} of the depth")
    gate = (", gated: it acts only where a forgotten answer is about to be said" if config.get("gate")
            else ", without the gate: it acts on every input")
    return f"Trained LoRA (rank {config['lora_rank']}) on {text(layers)}{gate}."


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
        return pct(value) if kind == "pct" else f"{value:.2f}"

    def before(key, kind):
        return f" · before: {show(metrics[key], kind)}" if key and metrics.get(key) is not None else ""

    def over(key):  # a share of one prompt reads differently from a share of fifty
        n = metrics.get(key) if key else None
        return "" if n is None else f" · of {n} prompt{'' if n == 1 else 's'}"

    metrics = metrics or {}
    cards = "".join(
        f"<div class='card'><div class='title'>{title}</div><div class='value'>{show(metrics.get(key), kind)}</div>"
        f"<div class='hint'>{hint}{over(count)}{before(base, kind)}</div></div>"
        for key, title, hint, kind, base, count in CARDS)
    return f"<div class='cards'>{cards}</div>"


def pct(value) -> str:
    """A share as the page shows every share: '86 %', or '–' when not measured."""
    return "–" if value is None else f"{100 * value:.0f} %"


# The run history's columns: what each summary key is called on the page, and which are shares.
RUN_COLUMNS = {"run": "run", "method": "method", "facts": "facts", "steps": "steps", "forget_success": "forgotten",
               "paraphrase_success": "paraphrases forgotten", "adversarial_success": "adversarial forgotten",
               "neighbour_retention": "neighbours kept", "neighbour_agreement": "neighbours agree",
               "general_retention": "general kept", "seconds": "seconds", "stopped": "ended by"}
SHARES = {"forget_success", "paraphrase_success", "adversarial_success", "neighbour_retention",
          "neighbour_agreement", "general_retention"}
COST_SHARES = {"forget success", "forgotten cleanly", "neighbour retention", "general retention"}


def runs_frame(runs: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([[pct(r[k]) if k in SHARES else r[k] for k in RUN_COLUMNS] for r in runs],
                        columns=list(RUN_COLUMNS.values()))


def cost_frame(rows: list[list], trained: str = "adapter (this run)") -> pd.DataFrame:
    def show(name, v):
        if v is None:
            return "not measured"
        if name in COST_SHARES:
            return pct(v)
        return f"{v:,}" if isinstance(v, int) else str(v)

    return pd.DataFrame([[name, show(name, a), show(name, b)] for name, a, b in rows],
                        columns=["measure", trained, "full fine-tuning"])


def base_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(
        [[r["question"], r["answer"], r["base_answer"], "✓ says it" if r["known"] else "– does not say it"]
         for r in rows], columns=["question", "answer to forget", "the model says now", "known?"])


def method_markdown(name: str) -> str:
    method = METHODS.get(name)
    return f"*{text(method.description)}*" if method else ""


ROBUSTNESS_COLUMNS = ["prompt", "after relearning", "after re-quantizing"]
ROBUSTNESS_EMPTY = "Press **Check robustness** after a run."


def robustness_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([[r["prompt"], r.get("after_relearning", ""), r.get("after_requant", "")] for r in rows],
                        columns=ROBUSTNESS_COLUMNS)


def robustness_markdown(result: dict) -> str:
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


# Full fine-tuning against the LoRA run it repeats, measured here (bench/out, held-out 3 facts, seed 0):
# 13.5 vs 3.5 s a step, and 300 vs 230 s for everything else (asking the questions, twice); the
# full-precision copy loads in about 20 s.
FULL_FT_STEP_RATIO = 3.9
FULL_FT_REST_RATIO = 1.3
FULL_FT_LOAD_SECONDS = 20


def full_ft_forecast(report: dict) -> str:
    """What the comparison will cost, said before it starts: the adapter run's own time, scaled."""
    m = report["metrics"]
    train = (m.get("train_seconds") or 0) * FULL_FT_STEP_RATIO
    rest = FULL_FT_REST_RATIO * max(0.0, report["wall_seconds"] - (m.get("train_seconds") or 0))
    return (f"about {clock(FULL_FT_LOAD_SECONDS + train + rest)} (loading a full-precision copy, "
            f"{m['steps_run']} steps, asking every question again); it trains every weight, no adapter.")
