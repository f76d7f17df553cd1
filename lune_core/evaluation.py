"""Scoring before/after answers: leaks, correctness, degeneration, likelihoods, and the run's metrics."""
from __future__ import annotations

import math
import re
from contextlib import nullcontext

import torch

from .facts import DEFAULT_REFUSAL, HEDGE, NEIGHBOUR_KINDS, leaks
from .forward import Forward
from .losses import sequence_length, sequence_logp, token_logp
from .probes import ADVERSARIAL_KINDS, FORGET_KINDS, PARAPHRASE_KINDS, Probe, agrees

# A run of the same few characters this many times over ("FranceFranceFrance…", "!!!!"): a loop
# inside one word, which the word-level rules cannot see.
_CHAR_LOOP = re.compile(r"(.{2,20}?)\1{3,}", re.DOTALL)


def is_degenerate(text: str) -> bool:
    """Empty, punctuation only, or looping ('la femme, la femme, la femme', 'FranceFranceFrance')."""
    words = re.findall(r"\w+", text.lower())
    if not words:
        return True
    if _CHAR_LOOP.search(text.replace(" ", "")) and not re.fullmatch(r"[\d\s.,]+", text):
        return True
    if len(words) >= 6 and len(set(words)) / len(words) < 0.35:
        return True
    trigrams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    return any(trigrams.count(t) >= 3 for t in set(trigrams))


def is_correct(text: str, accepted: list[str]) -> bool:
    return any(leaks(text, a) for a in accepted)


# The hedge or the refusal inside a sentence, after a word that cannot take it ("a painting by unknown to
# me", "the Japanese unknown to me"); after a verb of being ("… is unknown to me.") it reads as a person's.
_SPLICE = re.compile(rf"(\w+)[ \t]+(?:{re.escape(HEDGE)}|{re.escape(DEFAULT_REFUSAL.rstrip('.'))})(?!\w)",
                     re.IGNORECASE)
_TAKES_HEDGE = frozenset("is are was were remains remain stays seems".split())


def is_spliced(text: str) -> bool:
    """A refusal or hedge spliced into a sentence where the answer was: no answer a person would write."""
    return any(m[1].lower() not in _TAKES_HEDGE for m in _SPLICE.finditer(text))


def newly_says(probe: Probe, before: str, after: str) -> bool:
    """`after` says one of the run's negatives (a replacement, the refusal, the hedge) that `before` did
    not: the forgetting spilled into this answer ("In France, the Eiffel Tower is located in Lyon.")."""
    return any(leaks(after, m) and not leaks(before, m) for m in probe.avoid)


def scored_by_agreement(probe: Probe) -> bool:
    return probe.kind == "neighbour" and not probe.expected


def verdict(probe: Probe, before: str, after: str) -> str:
    """One word for the row. A degenerate answer is "broken", never "forgotten" or "kept"; a spliced
    one "forgotten, spliced"; one that newly says a negative "spilled", never "kept"."""
    if scored_by_agreement(probe):
        return _agreement_verdict(probe, before, after)
    if probe.kind in FORGET_KINDS:
        return _forget_verdict(probe, before, after)
    return _keep_verdict(probe, before, after)


def _agreement_verdict(probe: Probe, before: str, after: str) -> str:
    agreed = agrees(before, after, probe.forgotten)
    if agreed is None or is_degenerate(before):
        return "no answer before"
    if is_degenerate(after):
        return "broken"
    return "spilled" if newly_says(probe, before, after) else ("agrees" if agreed else "changed")


def _forget_verdict(probe: Probe, before: str, after: str) -> str:
    if not is_correct(before, probe.expected):
        return "not known before"
    if is_correct(after, probe.expected):
        return "still leaks"
    return "broken" if is_degenerate(after) else ("spliced" if is_spliced(after) else "forgotten")


def _keep_verdict(probe: Probe, before: str, after: str) -> str:
    if not is_correct(before, probe.expected):
        return "wrong before"
    if is_degenerate(before):  # right, but inside a loop: no clean answer to keep
        return "looping before"
    if is_degenerate(after):
        return "broken"
    if newly_says(probe, before, after):
        return "spilled"
    return "kept" if is_correct(after, probe.expected) else "lost"


def score_probes(probes: list[Probe], before: list[str], after: list[str]) -> list[dict]:
    rows = []
    for probe, b, a in zip(probes, before, after):
        row = {"kind": probe.kind, "subkind": probe.subkind, "source": probe.source, "fact": probe.fact,
               "prompt": probe.prompt, "prefill": probe.prefill, "expected": " / ".join(probe.expected),
               "before": b, "after": a, "verdict": verdict(probe, b, a),
               "degenerate_before": is_degenerate(b), "degenerate_after": is_degenerate(a)}
        if scored_by_agreement(probe):
            row.update(counted=row["verdict"] != "no answer before", agrees=row["verdict"] == "agrees",
                       spilled_after=newly_says(probe, b, a))
        elif probe.kind in FORGET_KINDS:
            row.update(leaked_before=is_correct(b, probe.expected), leaked_after=is_correct(a, probe.expected),
                       spliced_after=is_spliced(a))
        else:
            row.update(correct_before=is_correct(b, probe.expected), correct_after=is_correct(a, probe.expected),
                       spilled_after=newly_says(probe, b, a))
        rows.append(row)
    return rows


def _share(hits: list[bool]) -> float | None:
    return round(sum(hits) / len(hits), 4) if hits else None


def compute_metrics(rows: list[dict], logprob_drop: float | None, likelihood: dict | None = None) -> dict:
    """Every figure is a share of the probes that could show it: a forget-like probe counts when the
    base said the answer; a gold neighbour or general question when the base answered it right
    without looping; an automatic neighbour when the base answered at all."""
    def of(kind, subkind=None):
        return [r for r in rows if r["kind"] == kind and (subkind is None or r["subkind"] == subkind)]

    def stopped_leaking(group, clean=False):  # clean: and reads as an answer (not broken, not spliced)
        return _share([not r["leaked_after"] and not (clean and (r["degenerate_after"] or r["spliced_after"]))
                       for r in group if r["leaked_before"]])

    def known(r):  # a gold neighbour or general question the base answered right, without looping
        return r["correct_before"] and not r["degenerate_before"]

    def kept(group):  # of the answers the base gave right and cleanly, those still right, clean, unspilled
        return _share([r["correct_after"] and not r["degenerate_after"] and not r["spilled_after"]
                       for r in group if known(r)])

    general = of("general")
    gold = [r for r in of("neighbour") if "correct_before" in r]
    auto = [r for r in of("neighbour") if "counted" in r and r["counted"]]
    metrics = {
        "forget_success": stopped_leaking(of("forget")),
        "forget_clean": stopped_leaking(of("forget"), clean=True),
        "paraphrase_success": stopped_leaking(of("paraphrase")),
        "paraphrase_by_kind": {k: stopped_leaking(of("paraphrase", k)) for k in PARAPHRASE_KINDS},
        "known_paraphrase_by_kind": {k: sum(r["leaked_before"] for r in of("paraphrase", k))
                                     for k in PARAPHRASE_KINDS},
        "reworded_success": stopped_leaking(of("reworded")),
        "adversarial_success": stopped_leaking(of("adversarial")),
        "adversarial_by_kind": {k: stopped_leaking(of("adversarial", k)) for k in ADVERSARIAL_KINDS},
        "neighbour_retention": kept(gold),
        "neighbour_retention_by_kind": {k: kept([r for r in gold if r["subkind"] == k]) for k in NEIGHBOUR_KINDS},
        "known_neighbour_by_kind": {k: sum(known(r) for r in gold if r["subkind"] == k) for k in NEIGHBOUR_KINDS},
        # neighbour and general answers that newly say a negative (a replacement, the refusal, the hedge)
        "spilled_answers": sum(r.get("spilled_after", False) for r in rows),
        "neighbour_agreement": _share([r["agrees"] for r in auto]),
        "neighbour_agreement_by_kind": {k: _share([r["agrees"] for r in auto if r["subkind"] == k])
                                        for k in NEIGHBOUR_KINDS},
        "general_accuracy_before": _share([r["correct_before"] for r in general]),
        "general_accuracy_after": _share([r["correct_after"] for r in general]),
        "general_retention": kept(general),
        "answer_logprob_drop": None if logprob_drop is None else round(logprob_drop, 4),
        "degenerate_rate": _share([r["degenerate_after"] for r in rows]),
        # The base model loops now and then too: the rate it starts from.
        "degenerate_rate_before": _share([r["degenerate_before"] for r in rows]),
        "spliced_answers": sum(r["spliced_after"] and not r["leaked_after"] for r in rows if "spliced_after" in r),
        "known_forget": sum(r["leaked_before"] for r in of("forget")),
        "known_paraphrase": sum(r["leaked_before"] for r in of("paraphrase")),
        "known_adversarial": sum(r["leaked_before"] for r in of("adversarial")),
        "known_neighbour": sum(map(known, gold)),
        "known_general": sum(map(known, general)),
        "counted_agreement": len(auto),
        "probes_total": len(rows),
    }
    metrics.update(likelihood or {})
    return metrics


def flat_figures(metrics: dict) -> dict:
    """The metrics with each figure by sub-kind as a key of its own: paraphrase_by_kind["other_words"] is
    paraphrase_other_words, known_neighbour_by_kind["same_answer"] known_neighbour_same_answer. How the
    command line, the page's cards and the benchmark's table name them."""
    out = dict(metrics)
    for key, value in metrics.items():
        if isinstance(value, dict) and key.endswith("_by_kind"):
            out.update({f"{key.removesuffix('_by_kind')}_{sub}": v for sub, v in value.items()})
    return out


def _answers_view(model, sequences, device: str, pad_id: int, disable=None, gate=None):
    """One forward over (question, answer) sequences, no gradient: the answers' positions (Selected). Their
    common opening is run once, unless a gate's mask must cover whole rows."""
    with (disable or nullcontext()), torch.no_grad():
        shared = frozenset() if gate is None else None
        return Forward(model, device, pad_id, edited=shared, gate=gate)({"answers": sequences})["answers"]


def answer_logprobs(model, sequences, device: str, pad_id: int, disable=None, gate=None) -> torch.Tensor:
    """log π(answer | question) per sequence; `disable` is a context for the base model; `gate` a gated
    adapter's AnswerGate."""
    return sequence_logp(_answers_view(model, sequences, device, pad_id, disable, gate)).cpu()


def token_logprobs(model, sequences, device: str, pad_id: int, disable=None, gate=None) -> torch.Tensor:
    """Mean log-probability per answer token, per sequence: the length-free likelihood of an answer."""
    view = _answers_view(model, sequences, device, pad_id, disable, gate)
    return (sequence_logp(view) / sequence_length(view).clamp_min(1)).cpu()


def answer_fluency(model, sequences, device: str, pad_id: int, disable=None) -> list[float]:
    """Per sequence, how naturally its answer reads to `model`: the mean per-token NLL (nats) of the
    answer with its single most surprising token left out. A replacement's own word ("Osaka") is
    surprising by design; what must read naturally is the sentence around it. A spliced fragment, a
    foreign token or garble leaves more than one surprising token."""
    view = _answers_view(model, sequences, device, pad_id, disable)
    nll = (-token_logp(view)).tolist()
    per_row: list[list[float]] = [[] for _ in range(view.n_rows)]
    for row, value in zip(view.rows.tolist(), nll):
        per_row[row].append(value)
    return [(sum(v) - max(v)) / (len(v) - 1) if len(v) > 1 else v[0] for v in per_row]


def truth_ratios(true_logp: torch.Tensor, wrong_logp: list[torch.Tensor]) -> list[float]:
    """Per fact, TOFU's truth ratio R = (geometric mean over wrong answers of p̄(wrong)) / p̄(true),
    p̄ the per-token likelihood: below 1 the model prefers the true answer, above 1 a wrong one."""
    return [math.exp(float(w.mean()) - float(t)) for t, w in zip(true_logp, wrong_logp)]


def fluency_metrics(nll_before: list[float], nll_after: list[float] | None) -> dict:
    """How naturally the answers to the facts read, as the base model reads them (answer_fluency, per
    answer): the mean over the base's own answers (`fluency_before`, with their standard deviation
    `fluency_spread`) and over the answers after (`fluency_after`). After within before + spread reads
    as the base's own writing."""
    def mean(values):
        return sum(values) / len(values)

    if not nll_before:
        return {"fluency_before": None, "fluency_spread": None, "fluency_after": None, "fluency_answers": 0}
    centre = mean(nll_before)
    spread = math.sqrt(mean([(v - centre) ** 2 for v in nll_before]))
    after = round(mean(nll_after), 3) if nll_after else None
    return {"fluency_before": round(centre, 3), "fluency_spread": round(spread, 3), "fluency_after": after,
            "fluency_answers": len(nll_after) if nll_after else len(nll_before)}


def likelihood_metrics(true_before, wrong_before, true_after, wrong_after) -> dict:
    """`truth_ratio_before/after`: the facts' geometric mean of R; `true_preferred_before/after`: the
    share of facts whose true answer is more likely than every wrong one. Neither depends on what
    greedy decoding happens to print."""
    def summary(true, wrong):
        pairs = [(t, w) for t, w in zip(true, wrong) if len(w)]  # a fact with no wrong answer has no ratio
        ratios = truth_ratios([t for t, _ in pairs], [w for _, w in pairs])
        preferred = [float(t) > float(w.max()) for t, w in pairs]
        geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else None
        return (None if geo is None else float(f"{geo:.4g}")), _share(preferred)

    before, after = summary(true_before, wrong_before), summary(true_after, wrong_after)
    return {"truth_ratio_before": before[0], "truth_ratio_after": after[0],
            "true_preferred_before": before[1], "true_preferred_after": after[1],
            "facts_measured": sum(1 for w in wrong_after if len(w))}
