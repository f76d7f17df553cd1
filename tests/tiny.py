"""A tiny randomly initialised Llama with the embedded model's tokenizer: fast unit tests."""
from __future__ import annotations

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from lune_core.models import LoadedModel, embedded_model_dir


def tiny_model(layers: int = 4, seed: int = 0) -> LoadedModel:
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    tokenizer.padding_side = "left"
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, model_id="tiny", display_name="tiny-llama",
                       device="cpu", quantization="none", compute_dtype=torch.float32, load_seconds=0.0)
