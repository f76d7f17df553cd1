"""Unlearning losses as pure functions of model outputs, reference values and settings.

Every method reads the same `LossInputs` and returns (loss, parts). Notation as in docs/method.md:
θ = base + LoRA, ref = the same weights with the adapter disabled (precomputed once per run).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from .prompting import IGNORE

if TYPE_CHECKING:  # the losses read settings, they do not depend on where they are defined
    from .config import RetainSettings, SuppressSettings, UnlearnConfig


@dataclass
class Selected:
    """Model outputs at the positions that predict a loss-carrying token, flattened over rows."""

    logits: torch.Tensor  # (N, vocab)
    labels: torch.Tensor  # (N,)
    rows: torch.Tensor  # (N,) which sequence each token belongs to
    n_rows: int
    hidden: torch.Tensor | None = None  # (N, hidden) at the suppression layer


@dataclass
class Reference:
    """Values of the base model (adapter off) aligned with the policy's selected tokens."""

    forget_logp: torch.Tensor | None = None  # (rows,) log π_ref(y_f | x)
    forget_hidden: torch.Tensor | None = None  # (N_f, hidden)
    # The base's top-k next-token log-probs on the anchors: (N_a, k) values and vocabulary ids,
    # k numbers per position instead of the whole vocabulary (64 instead of 49 k for SmolLM2).
    anchor_top_logp: torch.Tensor | None = None
    anchor_top_ids: torch.Tensor | None = None


@dataclass
class LossInputs:
    target: Selected | None  # forget question -> replacement (or refusal)
    forget: Selected | None  # forget question -> the answer as the base model says it
    anchor: Selected | None  # neutral prompt -> the base model's own answer
    ref: Reference
    steering: torch.Tensor | None  # fixed random unit vector u for misdirection


# ---- shared pieces -------------------------------------------------------------------------

def loss_positions(labels: torch.Tensor) -> torch.Tensor:
    """(rows, seq) mask of the positions whose next token carries loss (logits at p predict p+1).
    Passed to the model as `logits_to_keep`, so the vocabulary projection runs only there."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE
    return mask


def select_positions(logits: torch.Tensor, labels: torch.Tensor, hidden: torch.Tensor | None) -> Selected:
    """Outputs at the loss positions. `logits` is either (rows, seq, vocab) or already only at
    those positions, (N, vocab), as a forward with logits_to_keep=loss_positions(labels) returns."""
    mask = loss_positions(labels)
    rows, cols = torch.nonzero(mask, as_tuple=True)
    return Selected(
        logits=logits[mask] if logits.dim() == 3 else logits,
        labels=labels[rows, cols + 1],
        rows=rows,
        n_rows=labels.shape[0],
        hidden=hidden[mask] if hidden is not None else None,
    )


def token_logp(sel: Selected) -> torch.Tensor:
    return torch.log_softmax(sel.logits.float(), dim=-1).gather(-1, sel.labels[:, None]).squeeze(-1)


def sequence_logp(sel: Selected) -> torch.Tensor:
    """log π(y|x) summed over each row's answer tokens."""
    return torch.zeros(sel.n_rows, device=sel.logits.device).index_add(0, sel.rows, token_logp(sel))


def sequence_length(sel: Selected) -> torch.Tensor:
    return torch.zeros(sel.n_rows, device=sel.logits.device).index_add(
        0, sel.rows, torch.ones_like(sel.rows, dtype=torch.float32))


def mean_nll(sel: Selected) -> torch.Tensor:
    return -token_logp(sel).mean()


def top_k_logprobs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most likely next tokens per position: (log-probs, vocabulary ids)."""
    return torch.log_softmax(logits.float(), dim=-1).topk(min(k, logits.shape[-1]), dim=-1)


def kl_to_reference(sel: Selected, ref_top_logp: torch.Tensor, ref_top_ids: torch.Tensor,
                    per_row: bool = False) -> torch.Tensor:
    """KL(ref ‖ θ) per token, averaged, over the reference's top k tokens plus one bucket for the
    rest of the vocabulary: keeps the model's own answers on neutral prompts. Exact when the tail
    is empty, a lower bound of the full KL otherwise. `per_row`: averaged per row first, so a row of one
    held token weighs as much as a row of thirty."""
    logq = torch.log_softmax(sel.logits.float(), dim=-1).gather(-1, ref_top_ids)
    head = (ref_top_logp.exp() * (ref_top_logp - logq)).sum(-1)
    tail_p = (1 - ref_top_logp.exp().sum(-1)).clamp_min(1e-8)
    tail_q = (1 - logq.exp().sum(-1)).clamp_min(1e-8)
    per_token = head + tail_p * (tail_p.log() - tail_q.log())
    if not per_row:
        return per_token.mean()
    sums = torch.zeros(sel.n_rows, device=per_token.device).index_add(0, sel.rows, per_token)
    return (sums / sequence_length(sel).clamp_min(1))[sequence_length(sel) > 0].mean()


def misdirection(hidden: torch.Tensor, ref_hidden: torch.Tensor, steering: torch.Tensor, scale: float) -> torch.Tensor:
    """‖h_θ − s·‖h_ref‖·u‖² / ‖h_ref‖²: 0 once the answer's state points along the random u,
    about 1 + s² at the start; scale-free across models and layers."""
    norm = ref_hidden.float().norm(dim=-1, keepdim=True).clamp_min(1e-6)
    goal = scale * norm * steering
    return ((hidden.float() - goal) ** 2).sum(-1).div(norm.squeeze(-1) ** 2).mean()


def _retain(inp: LossInputs, config: RetainSettings, parts: dict) -> torch.Tensor:
    if inp.anchor is None or config.retain_weight == 0:
        return torch.zeros(())
    parts["retain_kl"] = kl_to_reference(inp.anchor, inp.ref.anchor_top_logp, inp.ref.anchor_top_ids,
                                         config.retain_per_row)
    return config.retain_weight * parts["retain_kl"]


def _suppress(inp: LossInputs, config: SuppressSettings, parts: dict) -> torch.Tensor:
    parts["suppress"] = misdirection(inp.forget.hidden, inp.ref.forget_hidden, inp.steering, config.steering_scale)
    return config.suppress_weight * parts["suppress"]


# ---- methods --------------------------------------------------------------------------------

def lune(inp: LossInputs, config: UnlearnConfig):
    """L = NLL_θ(y_neg|x) + λ_r·KL(ref‖θ) on the retain set (the facts' neighbours, the answer holds) and the
    anchors. Under the answer gate (lune_core.gate) the NLL is taken where the gate is open and there are no
    KL rows: the adapter is off everywhere else, so the KL would be zero there."""
    parts: dict = {}
    parts["replace_nll"] = mean_nll(inp.target)
    return parts["replace_nll"] + _retain(inp, config, parts), parts


def lune_misdirect(inp: LossInputs, config: UnlearnConfig):
    """L = NLL_θ(y_neg|x) + λ_s·misdirection(h_ℓ at answer tokens) + λ_r·KL(ref‖θ)."""
    parts: dict = {}
    parts["replace_nll"] = mean_nll(inp.target)
    loss = parts["replace_nll"] + _suppress(inp, config, parts) + _retain(inp, config, parts)
    return loss, parts


def lune_suppress(inp: LossInputs, config: UnlearnConfig):
    """L = λ_s·misdirection(h_ℓ at answer tokens) + λ_r·KL(ref‖θ) on anchors."""
    parts: dict = {}
    loss = _suppress(inp, config, parts) + _retain(inp, config, parts)
    return loss, parts


def teach(inp: LossInputs, config: UnlearnConfig):
    """L = NLL_θ(y_true|x) + λ_r·KL(ref‖θ): LUNE's formula on the facts' true answers (the privacy
    lesson's teach step, lune_core.teach)."""
    parts: dict = {}
    parts["answer_nll"] = mean_nll(inp.target)
    return parts["answer_nll"] + _retain(inp, config, parts), parts


def grad_ascent(inp: LossInputs, config: UnlearnConfig):
    """L = −NLL_θ(y_f|x): push the answer's likelihood down, with nothing holding the rest."""
    parts = {"forget_nll": mean_nll(inp.forget)}
    return -parts["forget_nll"], parts


def npo(inp: LossInputs, config: UnlearnConfig):
    """L = −(2/β)·mean log σ(−β·[log π_θ(y_f|x) − log π_ref(y_f|x)]) + λ_r·KL(ref‖θ)."""
    beta = config.npo_beta
    ratio = sequence_logp(inp.forget) - inp.ref.forget_logp
    parts = {"npo": -(2 / beta) * F.logsigmoid(-beta * ratio).mean()}
    return parts["npo"] + _retain(inp, config, parts), parts


def simnpo(inp: LossInputs, config: UnlearnConfig):
    """L = −(2/β)·mean log σ(β·[NLL_θ(y_f|x)/|y_f| − δ]) + λ_r·KL(ref‖θ); no reference needed."""
    beta = config.simnpo_beta
    avg_nll = -sequence_logp(inp.forget) / sequence_length(inp.forget)
    parts = {"simnpo": -(2 / beta) * F.logsigmoid(beta * (avg_nll - config.simnpo_delta)).mean()}
    return parts["simnpo"] + _retain(inp, config, parts), parts


def finetune(inp: LossInputs, config: UnlearnConfig):
    """L = NLL_θ(y|x) on the target rows: plain fine-tuning. Not an unlearning method: what the
    relearning attack trains (lune_core.robustness)."""
    parts = {"nll": mean_nll(inp.target)}
    return parts["nll"], parts


@dataclass(frozen=True)
class Needs:
    """What the trainer computes for a method. A field, not a string: a typo fails at import."""

    target: bool = False  # question -> negative answer rows
    forget: bool = False  # question -> the answer as the base says it (also tracks the answer's NLL)
    hidden: bool = False  # the suppression layer's states at the forget rows' answer tokens
    anchor: bool = False  # neighbours and anchors, with the base's top-k log-probs for the KL
    ref_logp: bool = False  # the base's log π_ref(y_f|x)


@dataclass(frozen=True)
class Method:
    name: str
    loss: Callable[[LossInputs, UnlearnConfig], tuple[torch.Tensor, dict]]
    needs: Needs
    description: str
    ascent: bool = False  # pushes likelihood down without bound: the collapse guard watches it
    listed: bool = True  # offered as an unlearning method (CLI help, the app's list)
    learns: bool = False  # teaches rather than forgets: a check stops the run once every fact is said


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("lune", lune, Needs(target=True, forget=True, anchor=True),
           "LUNE: learn the negative answer (a replacement, or a refusal that reads as a sentence) in a LoRA, "
           "while a KL term holds the base's own answers to prompts near the facts, to prompts that name the "
           "forgotten answer for another reason and to neutral prompts (under the answer gate: only where the "
           "model is about to state a forgotten answer, no KL)"),
    Method("lune_misdirect", lune_misdirect, Needs(target=True, forget=True, hidden=True, anchor=True),
           "LUNE plus misdirection: also push the answer's hidden state toward a random direction (RMU-style)"),
    Method("lune_suppress", lune_suppress, Needs(forget=True, hidden=True, anchor=True),
           "LUNE, suppression part only: misdirect the answer's hidden state, KL-anchored"),
    Method("grad_ascent", grad_ascent, Needs(forget=True),
           "Gradient ascent on the answer (baseline, prone to collapse)", ascent=True),
    Method("npo", npo, Needs(forget=True, ref_logp=True, anchor=True),
           "Negative preference optimisation vs. the base model (baseline)", ascent=True),
    Method("simnpo", simnpo, Needs(forget=True, anchor=True),
           "SimNPO: length-normalised NPO without a reference (baseline)", ascent=True),
    Method("finetune", finetune, Needs(target=True), "Plain fine-tuning on the target rows (the relearning "
           "attack's loss, not an unlearning method)", listed=False, learns=True),
    Method("teach", teach, Needs(target=True, anchor=True), "Teach the facts' answers while a KL term holds neutral "
           "prompts to the base's answers (the privacy lesson's first step, not an unlearning method)",
           listed=False, learns=True),
)}
UNLEARNING_METHODS = [name for name, m in METHODS.items() if m.listed]
