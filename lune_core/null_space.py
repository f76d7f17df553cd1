"""An option of the plain LoRA (`null_space`): keep its update inert on what general prompts feed each layer
(AlphaEdit, Fang et al. 2025, projects a weight edit onto the null space of preserved keys; here the keys
are the inputs of each LoRA-wrapped projection on the kept rows, sequences.TrainingData.kept, and the
constraint is kept by projection after every optimiser step).

A LoRA's update is B·A, read on an input x as B·(A·x). With every row of A in the subspace the kept rows'
inputs leave nearly empty, A·x ≈ 0 for them: the update acts on what is particular to the facts and leaves
general prompts' computation as the base's. The adapter stays a standard PEFT LoRA (A is saved as
projected); nothing of this is needed at inference."""
from __future__ import annotations

import torch
from peft.tuners.lora import LoraLayer

from .prompting import collate

BATCH = 16  # retain rows per pass while the keys are gathered


def lora_layers(peft_model) -> dict[str, LoraLayer]:
    return {name: m for name, m in peft_model.named_modules() if isinstance(m, LoraLayer) and m.active_adapters}


def projectors(peft_model, rows: list, pad_id: int, device: str, energy: float) -> dict[str, torch.Tensor]:
    """Per LoRA-wrapped projection, P = I − U·Uᵀ, U the top eigenvectors of its inputs' second moment on
    `rows` (token ids, labels) that hold `energy` of it (every token that is not padding), adapter off."""
    layers = lora_layers(peft_model)
    moments: dict[str, torch.Tensor] = {}
    mask_of_batch: list[torch.Tensor] = []

    def gather(name):
        def hook(_module, args):
            x = args[0].detach().float()
            keys = x[mask_of_batch[0].to(x.device)]
            moments[name] = moments.get(name, 0) + keys.T @ keys
        return hook

    handles = [m.register_forward_pre_hook(gather(n)) for n, m in layers.items()]
    try:
        with peft_model.disable_adapter(), torch.no_grad():
            for start in range(0, len(rows), BATCH):
                batch = collate(rows[start:start + BATCH], pad_id).to(device)
                mask_of_batch[:] = [batch.attention_mask.bool()]
                peft_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=1,
                           use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {name: _null_projector(moment, energy) for name, moment in moments.items()}


def _null_projector(moment: torch.Tensor, energy: float) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(moment)  # ascending
    values, vectors = values.flip(0).clamp(min=0), vectors.flip(1)
    share = values.cumsum(0) / values.sum()
    kept = int((share < energy).sum()) + 1  # the fewest directions that hold `energy` of the moment
    used = vectors[:, :kept]
    return torch.eye(len(values), device=moment.device) - used @ used.T


@torch.no_grad()
def project(peft_model, projections: dict[str, torch.Tensor]) -> None:
    """Put every row of each LoRA's A back into its null space (after an optimiser step)."""
    for name, layer in lora_layers(peft_model).items():
        if name in projections:
            for adapter in layer.active_adapters:
                weight = layer.lora_A[adapter].weight
                weight.copy_((weight.float() @ projections[name]).to(weight.dtype))
