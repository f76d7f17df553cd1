"""Session-owned adapters attached to the shared base model only for the length of a job.

Two kinds, both PEFT adapters over a frozen base: LoRA on a band of layers, or trainable rows of the
token embeddings (PEFT's trainable tokens) for the tokens that name the facts' subjects."""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from peft import (LoraConfig, PeftConfig, TrainableTokensConfig, get_peft_model, get_peft_model_state_dict,
                  set_peft_model_state_dict)
from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

from .config import UnlearnConfig, lora_layers
from .gate import AnswerGate
from .memory import free_memory
from .models import LoadedModel, load_model


@dataclass
class AdapterState:
    """What a session owns after a run: adapter settings and weights on the CPU (a few MB)."""

    spec: dict  # see adapter_spec
    weights: dict[str, torch.Tensor]
    info: dict = field(default_factory=dict)  # method, steps, facts: for the model card

    @property
    def num_params(self) -> int:
        """Numbers the adapter trains; a tied copy (the output side of tied embeddings) counts once."""
        unique: list[torch.Tensor] = []
        for t in self.weights.values():
            if not any(t.shape == u.shape and torch.equal(t, u) for u in unique):
                unique.append(t)
        return sum(t.numel() for t in unique)


def adapter_spec(config: UnlearnConfig, num_layers: int, token_ids: list[int] | None = None) -> dict:
    """Plain-data settings of the adapter (kept in the session and the report): "kind" plus the
    keyword arguments of its PEFT config. `token_ids` are the subject's tokens for kind "subject"."""
    if config.adapter == "subject":
        return {"kind": "subject", "target_modules": ["embed_tokens"], "token_indices": sorted(token_ids or [])}
    config = config.resolved()
    return {
        "kind": "lora",
        "r": config.lora_rank,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "target_modules": list(config.target_modules),
        "layers_to_transform": lora_layers(config, num_layers),
        "bias": "none",
        "task_type": "CAUSAL_LM",
    }


def forgetting_kind(config: dict) -> str:
    """The kind of forgetting a run's adapter does, in one line: where it acts and what that withstands."""
    if config.get("adapter") == "full":
        return ("Weights changed everywhere: every weight of a full-precision copy was fine-tuned, so any load of "
                "the saved model behaves as measured; nothing decides where it acts, so it can spill anywhere.")
    if config.get("adapter") == "subject":
        return ("Weights adapted for a few words: the embeddings of the tokens naming each fact's subject change "
                "every text that contains them, in any wording or load, and no text without them.")
    if config.get("adapter") == "gated" or config.get("gate"):  # "gate": reports saved before the kind
        return ("Output suppressed where a condition holds: the LoRA acts only where the base is about to say a "
                "listed spelling of a forgotten answer in a text sharing a word with its question. It withstands "
                "other forms of the same words; not rewordings in other words, other languages or spellings, "
                "and not a stock PEFT load, which applies the LoRA everywhere.")
    return ("Weights adapted everywhere: a plain LoRA that acts on every input, exactly as stock PEFT loads it; "
            "it reaches rewordings as far as training generalised, and other answers just as far.")


def peft_config(spec: dict, **extra) -> PeftConfig:
    """The PEFT config for a spec. Trainable tokens on a model whose input and output embeddings are
    tied (SmolLM2) edit both, so merging the adapter into the weights gives the same model."""
    kwargs = {k: v for k, v in spec.items() if k not in ("kind", "gate")}
    if spec["kind"] == "subject":
        return TrainableTokensConfig(**kwargs, **extra)
    return LoraConfig(**kwargs, **extra)


@dataclass
class Attached:
    """A session's adapter on the shared base, for one job: the PeftModel every adapted forward reads,
    and the answer gate of a gated LoRA (None for any other adapter), passed to whatever reads it."""

    model: object  # peft.PeftModel
    gate: AnswerGate | None = None

    def base(self):
        """The base model's view: the same weights with the adapter off."""
        return self.model.disable_adapter()


@contextmanager
def attached(lm: LoadedModel, spec: dict, state: AdapterState | None = None):
    """Wrap the shared base in a PeftModel with a fresh (or the session's) adapter, and always strip it
    again, so the next job, whoever's it is, starts from the bare base weights. Yields an Attached."""
    with lm.lock:
        with warnings.catch_warnings():
            # PEFT warns whenever a tied embedding is in an adapter; trainable tokens do edit both sides
            # (tests/test_export.py checks that the merged model gives the adapter's outputs).
            warnings.filterwarnings("ignore", message=".*tie_word_embeddings.*")
            peft_model = get_peft_model(lm.model, peft_config(spec))
        gate = None
        try:
            for module in peft_model.modules():
                if isinstance(module, TrainableTokensLayer):
                    module.forward = partial(edited_rows_forward, module)
            if state is not None:
                set_peft_model_state_dict(peft_model, {k: v.to(lm.device) for k, v in state.weights.items()})
            gate = AnswerGate(peft_model, spec["gate"], lm.tokenizer) if spec.get("gate") is not None else None
            yield Attached(peft_model, gate)
        finally:
            if gate is not None:
                gate.close()
            peft_model.unload()
            # get_peft_model leaves its config on the base; a stale one would confuse the next wrap.
            if hasattr(lm.model, "peft_config"):
                del lm.model.peft_config


def edited_rows_forward(layer: TrainableTokensLayer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """PEFT's trainable tokens forward: the same outputs, without its costs. PEFT copies the whole
    embedding matrix with the trained rows swapped in on every call and backpropagates a dense
    gradient into the copy: 49 k x 576 floats (113 MB) each, for the input side and again for the
    tied output side, and at every generated token. Here the frozen matrix does its usual work and
    only the edited tokens' positions (input) or columns (output) come from the trained rows."""
    names = [n for n in layer.active_adapters if n in layer.trainable_tokens_delta]
    base_layer = layer.base_layer
    if (layer.disable_adapters or layer.merged or len(names) != 1
            or not isinstance(base_layer, (torch.nn.Embedding, torch.nn.Linear))):
        return type(layer).forward(layer, x, *args, **kwargs)
    delta = layer.trainable_tokens_delta[names[0]]
    index = torch.tensor(layer.token_indices[names[0]], device=delta.device)
    base = base_layer(x, *args, **kwargs)
    if isinstance(base_layer, torch.nn.Embedding):
        match = x[..., None] == index  # (..., edited tokens)
        rows = delta.to(base.dtype)[match.int().argmax(-1)]
        scale = layer._get_embed_scale()  # models whose embedding scales its output (Gemma 3)
        if scale is not None:
            rows = rows * scale.to(base.dtype)
        return torch.where(match.any(-1, keepdim=True), rows, base)
    edited = torch.nn.functional.linear(x, delta.to(x.dtype))  # the tied output side: logits of the edited tokens
    return base.index_copy(base.dim() - 1, index, edited.to(base.dtype))


def snapshot(peft_model, spec: dict, info: dict | None = None) -> AdapterState:
    weights = {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(peft_model).items()}
    return AdapterState(spec=dict(spec), weights=weights, info=dict(info or {}))


def save_merged(lm: LoadedModel, adapter: AdapterState, folder: Path) -> None:
    """The adapter merged into a full-precision copy of `lm`'s weights, saved as a model folder
    (weights and tokenizer) that load_model opens like any other."""
    full = load_model(lm.model_id, quantize=False, device=lm.device)
    with attached(full, adapter.spec, adapter) as adapted:
        merged = adapted.model.merge_and_unload()
    merged.save_pretrained(folder)
    full.tokenizer.save_pretrained(folder)
    del merged, full
    free_memory()
