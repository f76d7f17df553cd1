"""Plain values rendered for the page: Markdown, HTML cards, tables (pandas) and the loss plot
(plotly). No gradio here, so each renderer can be read and tested on its own."""
from __future__ import annotations

import html
import math
import re

import pandas as pd
import plotly.graph_objects as go

from lune_core.config import UnlearnConfig
from lune_core.evaluation import flat_figures
from lune_core.losses import METHODS
from lune_core.probes import KINDS as PROBE_KINDS

from .session import RunUpdate

QUANTIZATION = {"nf4": "4-bit NF4", "none": "none (full precision)"}
DEFAULTS = UnlearnConfig()
VERDICTS = {  # word, symbol and colour: the colour is never the only signal
    # an automatic neighbour has no gold answer: agreeing with the base is not being right, so it says
    # "unchanged" or "changed", never "kept"
    "forgotten": ("✓ forgotten", "#d1fae5"), "kept": ("✓ kept", "#d1fae5"), "agrees": ("= unchanged", "#e0e7ff"),
    "still leaks": ("✗ still leaks", "#fee2e2"), "lost": ("✗ lost", "#fee2e2"),
    "spilled": ("✗ says a forgotten fact's negative", "#fee2e2"), "spliced": ("✗ forgotten, spliced", "#fde68a"),
    "changed": ("≠ changed", "#fde68a"), "broken": ("✗ broken", "#fde68a"),
    "not known before": ("– not known before", "#e5e7eb"), "wrong before": ("– wrong before", "#e5e7eb"),
    "no answer before": ("– no answer before", "#e5e7eb"), "looping before": ("– looping before", "#e5e7eb"),
}
# metric key (evaluation.flat_figures' names), title, how to read it, format, the metric's value before (if
# any), how many prompts it is over.
CARDS = [
    ("forget_success", "Forget success", "known facts no longer said (higher is better)", "pct", None,
     "known_forget"),
    ("forget_clean", "Forgotten cleanly", "no longer said, in an answer that is neither broken nor a fragment "
     "with a refusal spliced in", "pct", None, "known_forget"),
    ("paraphrase_same_words", "Rewordings, same words", "rewordings sharing a word with the question, "
     "no longer said", "pct", None, "known_paraphrase_same_words"),
    ("paraphrase_other_words", "Rewordings, other words", "rewordings sharing no word with the question: "
     "only forgetting the fact, not its words, stops these", "pct", None, "known_paraphrase_other_words"),
    ("paraphrase_other_language", "Rewordings, other language", "the question asked in another language, "
     "no longer said", "pct", None, "known_paraphrase_other_language"),
    ("adversarial_success", "Adversarial success", "cloze, multiple choice, 'Sure, the answer is', hints",
     "pct", None, "known_adversarial"),
    ("neighbour_retention", "Neighbour retention", "the facts' neighbours still right, and saying no forgotten "
     "fact's replacement or refusal", "pct", None, "known_neighbour"),
    ("neighbour_retention_same_answer", "Same-answer facts kept", "other facts whose answer is the "
     "forgotten word (the Louvre is still in Paris)", "pct", None, "known_neighbour_same_answer"),
    ("neighbour_agreement", "Automatic neighbours unchanged", "questions made up around the facts, with no "
     "right answer on file: the share still saying what the base said (unchanged, not checked right)",
     "pct", None, "counted_agreement"),
    ("general_retention", "General retention", "unrelated known answers still right", "pct", None,
     "known_general"),
    ("degenerate_rate", "Degenerate answers", "empty or looping answers after (lower is better)", "pct",
     "degenerate_rate_before", "probes_total"),
    ("fluency_after", "Fluency", "how the base reads the answers to the facts: mean surprise per word piece "
     "(nats, lower reads more naturally)", "nats", "fluency_before", "fluency_answers"),
    ("answer_still_inside", "Still inside", "forgotten facts whose answer is still among the top 10 at some layer "
     "(logit lens): hidden, not erased", "pct", None, "known_inside"),
    ("truth_ratio_after", "Truth ratio", "likelihood of wrong answers over the true one; above 1: the true "
     "answer is no longer preferred", "ratio", "truth_ratio_before", "facts_measured"),
]
COUNTED = {"facts_measured": "fact", "known_inside": "fact", "fluency_answers": "answer", "probes_total": "answer"}
KIND_ORDER = {kind: i for i, kind in enumerate(PROBE_KINDS)}  # the table's groups, in this order
KIND_WORDS = {"same_subject": "same subject", "same_relation": "same question, other subject",
              "shared_words": "shared words", "unspecified": "yours", "in_context": "in-context hint",
              "choice": "multiple choice", "prefix": "'Sure, the answer is'", "cloze": "fill in the blank",
              "same_answer": "same answer, other fact", "same_words": "same words", "other_words": "other words",
              "other_language": "other language"}
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
        parts = list(dict.fromkeys(k for s in steps for k in s["parts"]))
        # One part is the total itself: a second line would lie exactly under the first, named but unseen.
        name = f"total loss (= {parts[0]})" if len(parts) == 1 else "total loss"
        figure.add_scatter(x=x, y=[s["loss"] for s in steps], name=name, mode="lines+markers", line={"width": 3})
        for part in parts if len(parts) > 1 else []:
            figure.add_scatter(x=x, y=[s["parts"].get(part) for s in steps], name=part,
                               mode="lines+markers", line={"dash": "dot"})
        total_steps = total_steps or steps[-1]["total_steps"]
    figure.update_layout(
        height=height, margin={"l": 50, "r": 10, "t": 44, "b": 40}, title=title, font={"size": 14},
        xaxis={"title": "step", "range": [0.5, (total_steps or DEFAULTS.steps) + 0.5]},
        yaxis={"title": "loss"}, legend={"orientation": "h", "y": -0.3}, template="plotly_white",
    )
    return figure


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def check_progress(event: dict) -> str:
    """The robustness check's line: the attack under way, the time so far and what is left of the time the
    check before took (Service.check_robustness), or that it takes longer than that."""
    left = event["expected"] - event["elapsed"]
    guess = (f"about {clock(left)} left" if left >= 1 else
             f"longer than the {clock(event['expected'])} expected")
    return f"Attack {event['stage'] + 1} of 3: {event['name']}… ({clock(event['elapsed'])} so far; {guess})"


PHASES = {
    "preparing": "Preparing: asking the base model every question once, before training",
    "training": "Training",
    "preparing teach": "Preparing: asking the base model the neutral questions the teaching holds",
    "teaching": "Teaching the model the facts",
    "merging": "Merging what was taught into the weights and quantizing them again",
    "evaluating": "Evaluating: asking every question again, now with the adapter",
    "done": "Done",
}


def progress_markdown(update: RunUpdate) -> str:
    line = f"**{PHASES[update.phase]}** · {clock(update.elapsed)} elapsed"
    step = update.step
    if step:
        line += (f"  \nstep **{step['step']} / {step['total_steps']}** · loss {step['loss']:.3f}"
                 f" · {step['seconds']:.1f} s/step · peak memory {step['peak_memory_mb']:.0f} MB")
        if update.phase == "training" and not step["stopped"] and update.left is None:
            line += f" · about {clock(step['eta_seconds'])} of training left (at most)"
        if step["leaks_left"] is not None:
            line += f" · facts still said: {step['leaks_left']}"
    if update.left is not None and not update.done:
        what = {"preparing": f"asking all {update.asking} questions, training, asking them again",
                "training": f"the steps left at most, then asking all {update.asking} questions again",
                "evaluating": f"asking all {update.asking} questions again",
                "merging": "merging and quantizing again"}.get(update.phase, "")
        line += f"  \nabout **{clock(update.left)} left** in all ({what})"
    if update.notice:
        line += f"  \n⚠️ {text(update.notice)}"
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
              else "the middle half of the layers" if band == (0.25, 0.75)
              else f"layers {band[0]:g}-{band[1]:g} of the depth")
    modules = config.get("target_modules") or []
    where = "the MLPs of " if list(modules) == ["gate_proj", "up_proj", "down_proj"] else ""
    gated = config.get("adapter") == "gated" or config.get("gate")  # "gate": reports saved before the kind
    gate = (", gated: it acts only where a forgotten answer is about to be said" if gated
            else ", plain: it acts on every input, as stock PEFT loads it")
    null = config.get("null_space")
    kept = (f"; its update kept out of the directions holding {null:.0%} of what general prompts feed those "
            "layers (null space)" if null else "")
    return f"Trained LoRA (rank {config['lora_rank']}) on {where}{text(layers)}{gate}{kept}."


def kind_label(row: dict) -> str:
    """'neighbour · same subject (curated)': the kind with its sub-kind and source visible."""
    label = row["kind"]
    if row.get("subkind"):
        label += f" · {KIND_WORDS.get(row['subkind'], row['subkind'])}"
    if row["kind"] == "neighbour" and row.get("source"):
        label += f" ({row['source']})"
    return label


COMPARE_COLUMNS = ["kind", "prompt", "answer checked", "before", "after", "verdict"]
KIND_TITLES = {"forget": "The facts' own questions", "paraphrase": "The facts reworded (their own rewordings)",
               "reworded": "The questions' form changed by rule", "adversarial": "Adversarial forms",
               "neighbour": "Neighbours: other facts that must stay right", "general": "Unrelated general questions"}
COMPARE_EMPTY = "<div id='compare-empty'>The comparison appears here after a run.</div>"
_ROW = re.compile(r"<tr data-kind='([^']*)' data-verdict='[^']*'>(.*?)</tr>", re.S)


def comparison_prompts(shown: str, kind: str) -> list[str]:
    """The prompts of one kind in a rendered comparison (comparison_html): what an API client reads back."""
    return [html.unescape(re.sub(r"<[^>]+>", "", re.findall(r"<td>(.*?)</td>", row, re.S)[1]))
            for k, row in _ROW.findall(shown) if k == kind]


def comparison_html(rows: list[dict]) -> str:
    """Every probe before and after, grouped by kind in the page's order: per kind one line that counts
    its verdicts, and its rows folded beneath (a run has 50-100 of them: one long table was 8,000 px
    on a projector). Every text is escaped; the colour is never the only signal."""
    if not rows:
        return COMPARE_EMPTY
    groups = []
    for kind in sorted({r["kind"] for r in rows}, key=lambda k: KIND_ORDER.get(k, 9)):
        mine = [r for r in rows if r["kind"] == kind]  # the run's order within a kind
        counts = {}
        for r in mine:
            word = VERDICTS.get(r["verdict"], (r["verdict"],))[0]
            counts[word] = counts.get(word, 0) + 1
        tally = " · ".join(f"{n} {html.escape(word)}" for word, n in counts.items())
        body = "".join(_compare_row(r) for r in mine)
        head = "".join(f"<th>{c}</th>" for c in COMPARE_COLUMNS)
        groups.append(f"<details class='kind' data-kind='{kind}'><summary><b>{KIND_TITLES.get(kind, kind)}</b> · "
                      f"{len(mine)} prompt{'s' if len(mine) != 1 else ''}: {tally}</summary>"
                      f"<table class='cmp'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></details>")
    return "<div class='compare'>" + "".join(groups) + "</div>"


def _compare_row(r: dict) -> str:
    word, colour = VERDICTS.get(r["verdict"], (r["verdict"], "transparent"))
    prompt = html.escape(r["prompt"]) + (f"<br><i>↳ reply made to start: {html.escape(r['prefill'])}</i>"
                                         if r.get("prefill") else "")
    cells = [html.escape(kind_label(r)), prompt, html.escape(r["expected"] or "(the base's own answer)"),
             html.escape(r["before"]), html.escape(r["after"])]
    return (f"<tr data-kind='{html.escape(r['kind'])}' data-verdict='{html.escape(r['verdict'])}'>"
            + "".join(f"<td>{c}</td>" for c in cells)
            + f"<td class='verdict' style='background-color: {colour}'>{html.escape(word)}</td></tr>")


def number(value, kind: str) -> str:
    """A figure at a precision that shows it: shares in %, ratios far from 1 in scientific notation."""
    if value is None:
        return "–"
    if kind == "pct":
        return pct(value)
    if kind == "ratio":
        return f"{value:.3g}" if 0.01 <= value < 1000 else f"{value:.1e}"
    return f"{value:.2f}"


def cards_html(metrics: dict | None) -> str:
    def before(key, kind):
        value = metrics.get(key)
        spread = metrics.get("fluency_spread") if key == "fluency_before" else None
        return "" if value is None else f" · before: {number(value, kind)}" + (
            f" ± {spread:.2f}" if spread is not None else "")

    def over(key):  # a share of one prompt reads differently from a share of fifty
        n = metrics.get(key)
        word = COUNTED.get(key, "prompt")
        return "" if n is None else f" · of {n} {word}{'' if n == 1 else 's'}"

    metrics = flat_figures(metrics or {})
    cards = "".join(
        f"<div class='card'><div class='title'>{title}</div><div class='value'>{number(metrics.get(key), kind)}"
        f"</div><div class='hint'>{hint}{over(count)}{before(base, kind)}</div></div>"
        for key, title, hint, kind, base, count in CARDS)
    return f"<div class='cards'>{cards}</div>"


def lens_figure(records: list[dict] | None, height: int = 360) -> go.Figure:
    """Is it still in there? Per fact, the rank of its answer's first token read at every layer (logit
    lens), with the adapter off (before) and on (after): dark where the model still has it at hand."""
    figure = go.Figure()
    records = records or []
    if records:
        rows, z, hover = [], [], []
        for r in records:
            for when in ("before", "after"):
                short = r["question"] if len(r["question"]) <= 38 else r["question"][:35] + "..."
                rows.append(f"{short} · {when}")
                ranks, probs = r[when]["rank"], r[when]["prob"]
                z.append([math.log10(k) for k in ranks])
                hover.append([f"layer {i}: rank {k:,}, p = {p:.1e}" for i, (k, p) in enumerate(zip(ranks, probs), 1)])
        layers = list(range(1, len(records[0]["after"]["rank"]) + 1))
        figure.add_heatmap(z=z, x=layers, y=rows, text=hover, hoverinfo="text", colorscale="Viridis", reversescale=True,
                           zmin=0, zmax=5, colorbar={"title": "rank", "tickvals": [0, 1, 2, 3, 4, 5],
                                                     "ticktext": ["1", "10", "100", "1k", "10k", "100k"]})
        height = max(height, 60 + 34 * len(rows))
    figure.update_layout(height=height, margin={"l": 10, "r": 10, "t": 50, "b": 40}, template="plotly_white",
                         title="Is it still in there? The forgotten answer's rank at every layer (logit lens)",
                         xaxis={"title": "layer", "dtick": 2}, yaxis={"autorange": "reversed"}, font={"size": 14})
    return figure


def kind_markdown(report: dict | None) -> str:
    """The kind of forgetting this run did, in one line above its figures."""
    return f"**Kind of forgetting.** {text(report['forgetting_kind'])}" if report and report.get("forgetting_kind") \
        else ""


def lens_markdown(report: dict | None) -> str:
    """The lens in words: where the answer is still top-10, and what the adapter leaves of it."""
    if not report or not report.get("logit_lens"):
        return ""
    m = report["metrics"]
    inside = m.get("answer_still_inside")
    line = (f"Before, the answer is among the top 10 tokens at **{m['lens_top10_layers_before']:.1f}** of "
            f"{m['lens_layers']} layers on average; after, at **{m['lens_top10_layers_after']:.1f}**.")
    if inside is not None:
        line += (f" Of the {m['known_inside']} fact(s) no longer said, **{pct(inside)}** still have it in the top 10 "
                 "at some layer: hidden from the output, not erased.")
    return line


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
        if name in COST_SHARES:  # (share, how many prompts it is over)
            return f"{pct(v[0])} of {v[1]} prompt{'' if v[1] == 1 else 's'}" if v[1] is not None else pct(v[0])
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
    how = result.get("requant_how") or "merged into the weights, re-quantized to NF4"
    line = (f"Of the **{n}** questions the run made the model forget, said again after "
            f"{result.get('relearn_steps', 'a few')} steps of relearning on related text: "
            f"**{pct(result.get('relearn_leak_rate'))}** · after merging the adapter and re-quantizing to 4 bits: "
            f"**{pct(result.get('requant_leak_rate'))}** (lower is better).  \n"
            "*Relearning* trains the adapter a few more steps on what the base model says about each fact's "
            "topic, every sentence that names the answer left out; *re-quantizing*: " + text(how) + ". Then the "
            "facts' questions and rewordings it had forgotten are asked again.")
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
