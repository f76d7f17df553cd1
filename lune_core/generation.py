"""Batched greedy answers, with the base model's answers cached (they never change)."""
from __future__ import annotations

import json
from contextlib import nullcontext
from itertools import islice

import torch

from .models import LoadedModel
from .prompting import encode_prompts

BASE_CACHE_ENTRIES = 4096  # base answers kept per model (a few MB)


def generate(lm: LoadedModel, questions: list[str], max_new_tokens: int = 32, model=None,
             batch_size: int = 64, prefills: list[str] | None = None, gate=None) -> list[str]:
    """Greedy answers; `model` is the (adapter-attached) module to use, default the bare base; `gate`: a
    gated adapter's AnswerGate, which then decodes; `prefills`: per question, words the reply starts
    with (not part of the returned answer).
    Big batches: on CPU each decoding step dequantizes every 4-bit weight, whatever the batch."""
    prefills = prefills or [""] * len(questions)
    model = model if model is not None else lm.model
    tok = lm.tokenizer
    answers: list[str] = []
    # Another session's job may have its adapter attached to these same weights.
    with lm.lock, torch.no_grad():
        for start in range(0, len(questions), batch_size):
            enc = encode_prompts(tok, questions[start:start + batch_size],
                                 prefills[start:start + batch_size]).to(lm.device)
            width = enc["input_ids"].shape[1]
            out = (gate.generate if gate is not None else model.generate)(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                # Greedy decoding must not inherit sampling settings from generation_config.
                temperature=None, top_p=None, top_k=None,
            )
            answers += [tok.decode(row[width:], skip_special_tokens=True).strip() for row in out]
    return answers


def _stored(lm: LoadedModel) -> dict:
    """The answers kept on disk for this model (read once per process)."""
    if lm.answer_store is None:
        return {}
    if lm.stored_answers is None:
        stored = {}
        try:
            for line in lm.answer_store.read_text(encoding="utf-8").splitlines():
                try:
                    q, p, n, a = json.loads(line)
                    stored[(q, p, n)] = a
                except (ValueError, TypeError):
                    continue  # a line cut short by a crash: ask again
        except OSError:
            pass
        lm.stored_answers = stored
    return lm.stored_answers


def _store(lm: LoadedModel, fresh: dict) -> None:
    if lm.answer_store is None or not fresh:
        return
    try:
        lm.answer_store.parent.mkdir(parents=True, exist_ok=True)
        with open(lm.answer_store, "a", encoding="utf-8") as handle:
            handle.writelines(json.dumps([*k, a], ensure_ascii=False) + "\n" for k, a in fresh.items())
        _stored(lm).update(fresh)
    except OSError:
        pass  # a read-only disk only costs the next process the same generation again


def base_answers(lm: LoadedModel, questions: list[str], max_new_tokens: int = 32, peft_model=None,
                 prefills: list[str] | None = None) -> list[str]:
    """Answers of the untouched base; with an adapter attached they come from disable_adapter().
    Kept in memory per process and, for a model with a stable identity, on disk across processes."""
    cache = lm.base_answer_cache
    keys = [(q, p, max_new_tokens) for q, p in zip(questions, prefills or [""] * len(questions))]
    with lm.lock:  # the cache is shared by every session's jobs
        stored = _stored(lm)
        cache.update({k: stored[k] for k in dict.fromkeys(keys) if k not in cache and k in stored})
        missing = [k for k in dict.fromkeys(keys) if k not in cache]
        if missing:
            context = peft_model.disable_adapter() if peft_model is not None else nullcontext()
            with context:
                fresh = generate(lm, [q for q, _, _ in missing], max_new_tokens, model=peft_model,
                                 prefills=[p for _, p, _ in missing])
            cache.update(dict(zip(missing, fresh)))
            _store(lm, dict(zip(missing, fresh)))
        answers = [cache[k] for k in keys]
        for key in list(islice(cache, max(0, len(cache) - BASE_CACHE_ENTRIES))):
            del cache[key]  # oldest first: every visitor's free prompts would otherwise pile up for good
    return answers
