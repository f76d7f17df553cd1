"""Tiny randomly initialised Llamas: a model folder the app loads like any visitor's model (4-bit NF4
included), on which a run takes seconds. The tests and bench/run_reliability.py serve one."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM


def tiny_llama(tokenizer, hidden: int, layers: int, tie: bool, seed: int) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                         tie_word_embeddings=tie)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def save_tiny_model(folder: Path, tokenizer_dir: Path, seed: int = 1) -> Path:
    """Widths are multiples of 64 (the quantizer's block size), and untied embeddings make its greedy
    answers varied words rather than blank lines, so a change of answer is easy to see."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tiny_llama(tokenizer, hidden=64, layers=4, tie=False, seed=seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)
