"""Turning questions and answers into token batches: chat template, left padding, answer-only labels."""
from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100


def format_prompt(tokenizer, question: str, prefill: str = "") -> str:
    """Chat models see their own template (SmolLM2's adds a system prompt); others plain text.
    `prefill`: words the reply is made to start with (the affirmative-prefix attack)."""
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
    else:
        prompt = f"Question: {question}\nAnswer:"
    return prompt + (prefill if prefill else "")


@dataclass
class TokenBatch:
    """Left-padded sequences; labels are IGNORE everywhere except the tokens that carry loss."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def to(self, device) -> "TokenBatch":
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def encode_pair(tokenizer, question: str, answer: str, loss_span: tuple[int, int] | None = None,
                add_eos: bool = True) -> tuple[list[int], list[int]]:
    """Token ids of prompt+answer and labels. loss_span (char offsets into answer) limits the loss
    to the tokens overlapping it; by default every answer token (and the end token) carries loss."""
    prompt_ids = tokenizer(format_prompt(tokenizer, question), add_special_tokens=False)["input_ids"]
    enc = tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
    answer_ids, offsets = enc["input_ids"], enc["offset_mapping"]
    if loss_span is None:
        answer_labels = list(answer_ids)
    else:
        lo, hi = loss_span
        answer_labels = [t if (s < hi and e > lo) else IGNORE for t, (s, e) in zip(answer_ids, offsets)]
    ids = prompt_ids + answer_ids
    labels = [IGNORE] * len(prompt_ids) + answer_labels
    # Chat models end a turn with their eos (<|im_end|> for SmolLM2); learning it keeps answers short.
    end = tokenizer.eos_token_id
    if add_eos and end is not None:
        ids.append(end)
        labels.append(end)
    return ids, labels


def collate(sequences: list[tuple[list[int], list[int]]], pad_id: int) -> TokenBatch:
    """Left-pad so the last position of every row is a real token (matches generation)."""
    width = max(len(ids) for ids, _ in sequences)
    input_ids, mask, labels = [], [], []
    for ids, labs in sequences:
        pad = width - len(ids)
        input_ids.append([pad_id] * pad + ids)
        mask.append([0] * pad + [1] * len(ids))
        labels.append([IGNORE] * pad + labs)
    return TokenBatch(torch.tensor(input_ids), torch.tensor(mask), torch.tensor(labels))


def encode_prompts(tokenizer, questions: list[str], prefills: list[str] | None = None) -> dict:
    prompts = [format_prompt(tokenizer, q, p) for q, p in zip(questions, prefills or [""] * len(questions))]
    return tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
