"""Batched greedy answers, with the base model's answers cached (they never change)."""
from __future__ import annotations

from contextlib import nullcontext

import torch

from .models import LoadedModel
from .prompting import encode_prompts


def generate(lm: LoadedModel, questions: list[str], max_new_tokens: int = 32, model=None,
             batch_size: int = 64) -> list[str]:
    """Greedy answers; `model` is the (adapter-attached) module to use, default the bare base.
    Big batches: on CPU each decoding step dequantizes every 4-bit weight, whatever the batch."""
    model = model if model is not None else lm.model
    tok = lm.tokenizer
    answers: list[str] = []
    # Another session's job may have its adapter attached to these same weights.
    with lm.lock, torch.no_grad():
        for start in range(0, len(questions), batch_size):
            enc = encode_prompts(tok, questions[start:start + batch_size]).to(lm.device)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                # Greedy decoding must not inherit sampling settings from generation_config.
                temperature=None, top_p=None, top_k=None,
            )
            width = enc["input_ids"].shape[1]
            answers += [tok.decode(row[width:], skip_special_tokens=True).strip() for row in out]
    return answers


def base_answers(lm: LoadedModel, questions: list[str], max_new_tokens: int = 32, peft_model=None) -> list[str]:
    """Answers of the untouched base; with an adapter attached they come from disable_adapter()."""
    missing = [q for q in dict.fromkeys(questions) if (q, max_new_tokens) not in lm.base_answer_cache]
    if missing:
        context = peft_model.disable_adapter() if peft_model is not None else nullcontext()
        with context:
            fresh = generate(lm, missing, max_new_tokens, model=peft_model)
        lm.base_answer_cache.update({(q, max_new_tokens): a for q, a in zip(missing, fresh)})
    return [lm.base_answer_cache[(q, max_new_tokens)] for q in questions]
