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

import torch
from peft.tuners.lora import LoraLayer

from .prompting import collate


def _input_covariances(peft_model, groups: dict[str, list], device: str, pad_id: int,
                       batch_size: int = 16) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, int]]:
    """{group: {layer name: Σ xᵀx}} over the real (unpadded) positions of each group's rows, and
    {group: number of those positions}."""
    layers = {name: m for name, m in peft_model.named_modules() if isinstance(m, LoraLayer) and m.lora_A}
    sums: dict[str, dict[str, torch.Tensor]] = {g: {} for g in groups}
    current: dict = {}
    tokens = {g: 0 for g in groups}

    def hook(name):
        def grab(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1])[current["mask"]].double()
            bucket = sums[current["group"]]
            bucket[name] = bucket.get(name, 0) + x.T @ x
        return grab

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    try:
        with peft_model.disable_adapter(), torch.no_grad():
            for group, rows in groups.items():
                for start in range(0, len(rows), batch_size):
                    batch = collate(rows[start:start + batch_size], pad_id).to(device)
                    current.update(group=group, mask=batch.attention_mask.reshape(-1).bool())
                    tokens[group] += int(batch.attention_mask.sum())
                    peft_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    return sums, tokens


def focus_lora(peft_model, forget: list, keep: list[list], device: str, pad_id: int, ridge: float) -> dict[str, float]:
    """Set and freeze every LoRA layer's A to the forget-vs-keep directions; `keep` is a list of row
    groups (the facts' neighbours, the anchors), each weighing the same in C_k whatever its size, so a
    few neighbours count as much as many anchors. Returns, per layer, how much more forget than keep
    energy per token its directions carry (the mean generalised eigenvalue)."""
    groups = {"forget": forget, **{f"keep{i}": rows for i, rows in enumerate(keep) if rows}}
    sums, tokens = _input_covariances(peft_model, groups, device, pad_id)
    keep_groups = [g for g in groups if g != "forget"]
    contrast = {}
    for name, module in peft_model.named_modules():
        if not (isinstance(module, LoraLayer) and module.lora_A and name in sums["forget"]):
            continue
        # per-token means: the groups have different numbers of rows
        c_f = sums["forget"][name] / max(tokens["forget"], 1)
        c_k = sum(sums[g][name] / tokens[g] for g in keep_groups) / len(keep_groups)
        d = c_k.shape[0]
        lam = ridge * float(torch.trace(c_k)) / d + 1e-12
        chol = torch.linalg.cholesky(c_k + lam * torch.eye(d, dtype=c_k.dtype, device=c_k.device))
        inv = torch.linalg.inv(chol)
        values, vectors = torch.linalg.eigh(inv @ c_f @ inv.T)
        for adapter in module.active_adapters:
            if adapter not in module.lora_A:
                continue
            weight = module.lora_A[adapter].weight  # (r, d)
            r = weight.shape[0]
            # Generalised eigenvectors come normalised to vᵀ(C_k + λI)v = 1: along each, the keep inputs'
            # mean square is at most 1 and the forget inputs' is μ. One common factor then gives the
            # leading direction unit forget response, so B trains at LoRA's usual scale.
            directions = (inv.T @ vectors[:, -r:].flip(1)).T  # (r, d), leading first
            with torch.no_grad():
                weight.copy_((directions / values[-1].clamp_min(1e-12).sqrt()).to(weight.dtype))
            weight.requires_grad_(False)
        contrast[name] = round(float(values[-r:].mean()), 3)
    return contrast
