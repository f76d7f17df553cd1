"""Scoring before/after answers: leaks, correctness, degeneration, and the run's metrics."""
from __future__ import annotations

import re
from contextlib import nullcontext

import torch

from .facts import Probe, leaks
from .losses import sequence_logp
from .trainer import Forward


def is_degenerate(text: str) -> bool:
    """Empty, punctuation only, or looping ('la femme, la femme, la femme')."""
    words = re.findall(r"\w+", text.lower())
    if not words:
        return True
    if len(words) >= 6 and len(set(words)) / len(words) < 0.35:
        return True
    trigrams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    return any(trigrams.count(t) >= 3 for t in set(trigrams))


def is_correct(text: str, accepted: list[str]) -> bool:
    return any(leaks(text, a) for a in accepted)


def verdict(kind: str, before: str, after: str, expected: list[str]) -> str:
    if kind == "general":
        if not is_correct(before, expected):
            return "wrong before"
        if is_correct(after, expected):
            return "kept"
        return "broken" if is_degenerate(after) else "lost"
    if not is_correct(before, expected):
        return "not known before"
    if is_correct(after, expected):
        return "still leaks"
    return "broken" if is_degenerate(after) else "forgotten"


def score_probes(probes: list[Probe], before: list[str], after: list[str]) -> list[dict]:
    rows = []
    for probe, b, a in zip(probes, before, after):
        hit_b, hit_a = is_correct(b, probe.expected), is_correct(a, probe.expected)
        row = {"kind": probe.kind, "prompt": probe.prompt, "expected": " / ".join(probe.expected),
               "before": b, "after": a, "verdict": verdict(probe.kind, b, a, probe.expected),
               "degenerate_before": is_degenerate(b), "degenerate_after": is_degenerate(a)}
        if probe.kind == "general":
            row.update(correct_before=hit_b, correct_after=hit_a)
        else:
            row.update(leaked_before=hit_b, leaked_after=hit_a)
        rows.append(row)
    return rows


def _share(hits: list[bool]) -> float | None:
    return round(sum(hits) / len(hits), 4) if hits else None


def compute_metrics(rows: list[dict], logprob_drop: float | None) -> dict:
    def stopped_leaking(kind: str) -> float | None:
        return _share([not r["leaked_after"] for r in rows if r["kind"] == kind and r["leaked_before"]])

    general = [r for r in rows if r["kind"] == "general"]
    return {
        "forget_success": stopped_leaking("forget"),
        "paraphrase_success": stopped_leaking("paraphrase"),
        "general_accuracy_before": _share([r["correct_before"] for r in general]),
        "general_accuracy_after": _share([r["correct_after"] for r in general]),
        "general_retention": _share([r["correct_after"] for r in general if r["correct_before"]]),
        "answer_logprob_drop": None if logprob_drop is None else round(logprob_drop, 4),
        "degenerate_rate": _share([r["degenerate_after"] for r in rows]),
        # The base model loops now and then too: the rate it starts from.
        "degenerate_rate_before": _share([r["degenerate_before"] for r in rows]),
        "known_forget": sum(r["leaked_before"] for r in rows if r["kind"] == "forget"),
        "known_paraphrase": sum(r["leaked_before"] for r in rows if r["kind"] == "paraphrase"),
    }


def answer_logprobs(model, sequences, device: str, pad_id: int, disable=None) -> torch.Tensor:
    """log π(answer | question) per forget sequence; `disable` is a context for the base model."""
    with (disable or nullcontext()), torch.no_grad():
        return sequence_logp(Forward(model, device, pad_id)({"answers": sequences})["answers"]).cpu()
