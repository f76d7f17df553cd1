"""Where each LoRA layer may act: the input directions the forget prompts use and the prompts to
keep do not (a generalised form of AlphaEdit's null-space constraint, applied to LoRA's A factor).

LoRA's update is ΔW·x = B·A·x, so A decides which inputs the update sees at all. For every adapted
layer, the inputs it receives (base model, adapter off) give two covariances: C_f on the forget rows
and C_k on the rows to keep (the KL prompts: the facts' neighbours and the shipped anchors). The rows
of A are set to the r leading solutions of the generalised eigenproblem (C per token)

    C_f v = μ (C_k + λ·I) v,        λ = ridge · trace(C_k) / d,

the directions with the most forget energy per unit of keep energy, scaled together so that the
leading one has unit mean square on the forget inputs; A is then frozen and only B trains. The
update responds to what the facts' own prompts carry and barely to what the prompts to keep carry:
a gate made of the adapter's own weights, which stock PEFT loads like any LoRA.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from peft.tuners.lora import LoraLayer

from .losses import loss_positions
from .prompting import collate


@dataclass
class _Inputs:
    """What the adapted layers receive from the base model (adapter off), per distinct input: layers
    fed the same tensor (q, k and v; gate and up) share one entry, named by the first of them."""

    owner: dict[str, str] = field(default_factory=dict)  # layer name -> the layer whose input it reads
    keep_sums: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # group -> owner -> Σ xᵀx
    keep_tokens: dict[str, int] = field(default_factory=dict)
    forget_rows: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # owner -> the forget inputs x


def _collect(peft_model, forget: list, keep: dict[str, list], device: str, pad_id: int,
             batch_size: int = 16, answer_only: bool = False) -> _Inputs:
    """The forget rows' inputs as they are (few: their covariance has low rank) and each keep group's
    Σ xᵀx, over the real (unpadded) positions; with `answer_only`, the forget rows' inputs only at the
    positions that predict a trained token."""
    layers = {name: m for name, m in peft_model.named_modules() if isinstance(m, LoraLayer) and m.lora_A}
    seen = _Inputs(keep_sums={g: {} for g in keep}, keep_tokens={g: 0 for g in keep})
    current: dict = {}

    def hook(name):
        def grab(_module, args):
            x = args[0]
            # Held for the whole forward, so no later tensor can take the address of one already seen.
            owner = next((n for t, n in current["held"] if t is x), None)
            if owner is None:
                current["held"].append((x, name))
                owner = name
            seen.owner.setdefault(name, owner)
            if owner != name:
                return
            rows = x.detach().reshape(-1, x.shape[-1])[current["mask"]]
            if current["group"] is None:
                seen.forget_rows.setdefault(name, []).append(rows)
            else:
                rows = rows.double()
                bucket = seen.keep_sums[current["group"]]
                bucket[name] = bucket.get(name, 0) + rows.T @ rows
        return grab

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    try:
        with peft_model.disable_adapter(), torch.no_grad():
            for group, rows in [(None, forget), *keep.items()]:
                for start in range(0, len(rows), batch_size):
                    batch = collate(rows[start:start + batch_size], pad_id).to(device)
                    answers = group is None and answer_only  # the positions that predict a trained token
                    mask = loss_positions(batch.labels) if answers else batch.attention_mask.bool()
                    current.update(group=group, mask=mask.reshape(-1), held=[])
                    if group is not None:
                        seen.keep_tokens[group] += int(batch.attention_mask.sum())
                    peft_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=1)
    finally:
        current.clear()
        for handle in handles:
            handle.remove()
    return seen


def focused_directions(x_f: torch.Tensor, c_k: torch.Tensor, ridge: float, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The r leading solutions of C_f v = μ (C_k + λI) v with C_f = x_fᵀx_f / n (x_f: the forget
    inputs, n × d): (μ, leading first; the directions v as rows, normalised to vᵀ(C_k + λI)v = 1).
    With L the Cholesky factor of C_k + λI, the problem is the ordinary one of S = Zᵀ Z / n,
    Z = x_f L⁻ᵀ. When n < d (a few facts' tokens against a wide layer), S's eigenvectors come from
    the n × n matrix Z Zᵀ / n instead (w = Zᵀ u / √(n μ)): the same solutions, far cheaper."""
    x_f = x_f.double()
    n, d = x_f.shape
    lam = ridge * float(torch.trace(c_k)) / d + 1e-12
    chol = torch.linalg.cholesky(c_k + lam * torch.eye(d, dtype=c_k.dtype, device=c_k.device))
    z = torch.linalg.solve_triangular(chol, x_f.T, upper=False).T  # x_f L⁻ᵀ
    if n < d and r <= n:
        values, u = torch.linalg.eigh(z @ z.T / n)
        values, u = values[-r:].flip(0), u[:, -r:].flip(1)
        # Repeated rows (a target and a forget row share their prefix) leave fewer than r solutions:
        # dividing by a zero eigenvalue would blow a direction up, so those directions stay zero.
        real = values > 1e-10 * values[0].clamp_min(1e-30)
        w = z.T @ u / (n * values.clamp_min(1e-30)).sqrt() * real
    else:
        values, w = torch.linalg.eigh(z.T @ z / n)
        values, w = values[-r:].flip(0), w[:, -r:].flip(1)
    return values, torch.linalg.solve_triangular(chol.T, w, upper=True).T  # v = L⁻ᵀ w


def focus_lora(peft_model, forget: list, keep: list[list], device: str, pad_id: int, ridge: float,
               answer_only: bool = False) -> dict[str, float]:
    """Set and freeze every LoRA layer's A to the forget-vs-keep directions; `keep` is a list of row
    groups (the facts' neighbours, the anchors), each weighing the same in C_k whatever its size, so a
    few neighbours count as much as many anchors. Returns, per layer, how much more forget than keep
    energy per token its directions carry (the mean generalised eigenvalue)."""
    keep_groups = {f"keep{i}": rows for i, rows in enumerate(keep) if rows}
    seen = _collect(peft_model, forget, keep_groups, device, pad_id, answer_only=answer_only)
    solved: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    contrast = {}
    for name, module in peft_model.named_modules():
        owner = seen.owner.get(name)
        if not (isinstance(module, LoraLayer) and module.lora_A and owner in seen.forget_rows):
            continue
        r = max(module.lora_A[a].weight.shape[0] for a in module.active_adapters if a in module.lora_A)
        if owner not in solved:
            # per-token means: the groups have different numbers of rows
            c_k = sum(seen.keep_sums[g][owner] / seen.keep_tokens[g] for g in keep_groups) / len(keep_groups)
            solved[owner] = focused_directions(torch.cat(seen.forget_rows[owner]), c_k, ridge, r)
        values, directions = solved[owner]
        for adapter in module.active_adapters:
            if adapter not in module.lora_A:
                continue
            weight = module.lora_A[adapter].weight  # (r, d)
            rank = weight.shape[0]
            # Along each direction the keep inputs' mean square is at most 1 and the forget inputs' is μ.
            # One common factor then gives the leading direction unit forget response, so B trains at
            # LoRA's usual scale.
            with torch.no_grad():
                weight.copy_((directions[:rank] / values[0].clamp_min(1e-12).sqrt()).to(weight.dtype))
            weight.requires_grad_(False)
        contrast[name] = round(float(values[:r].mean()), 3)
    return contrast
