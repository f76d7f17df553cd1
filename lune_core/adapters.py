"""Session-owned LoRA adapters attached to the shared base model only for the length of a job."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

from .config import UnlearnConfig, lora_layers
from .models import LoadedModel


@dataclass
class AdapterState:
    """What a session owns after a run: LoRA settings and weights on the CPU (a few MB)."""

    lora: dict
    weights: dict[str, torch.Tensor]
    info: dict = field(default_factory=dict)  # method, steps, facts: for the model card

    @property
    def num_params(self) -> int:
        return sum(t.numel() for t in self.weights.values())


def lora_config(config: UnlearnConfig, num_layers: int) -> dict:
    return {
        "r": config.lora_rank,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "target_modules": list(config.target_modules),
        "layers_to_transform": lora_layers(config, num_layers),
        "bias": "none",
        "task_type": "CAUSAL_LM",
    }


@contextmanager
def attached(lm: LoadedModel, lora: dict, state: AdapterState | None = None):
    """Wrap the shared base in a PeftModel with a fresh (or the session's) adapter, and always
    strip it again, so the next job, whoever's it is, starts from the bare base weights."""
    with lm.lock:
        peft_model = get_peft_model(lm.model, LoraConfig(**lora))
        try:
            if state is not None:
                set_peft_model_state_dict(peft_model, {k: v.to(lm.device) for k, v in state.weights.items()})
            yield peft_model
        finally:
            peft_model.unload()
            # get_peft_model leaves its config on the base; a stale one would confuse the next wrap.
            if hasattr(lm.model, "peft_config"):
                del lm.model.peft_config


def snapshot(peft_model, lora: dict, info: dict | None = None) -> AdapterState:
    weights = {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(peft_model).items()}
    return AdapterState(lora=dict(lora), weights=weights, info=dict(info or {}))
