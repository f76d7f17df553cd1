"""Does forgetting survive? Relearning on related text, and merging + re-quantizing to 4 bits.

Both attacks are known to bring "forgotten" answers back (METHODS.md). Each returns the share
of probes that leaked before unlearning and leak again after the attack.
"""
from __future__ import annotations

import re
import shutil
import tempfile

import torch

from .adapters import AdapterState, attached
from .config import UnlearnConfig
from .facts import Fact, forget_probes, leaks
from .generation import base_answers, generate
from .memory import free_memory
from .models import LoadedModel, cache_dir, load_model
from .losses import mean_nll
from .prompting import encode_pair
from .trainer import Forward


def _leak_rate(answers: list[str], probes, known: list[bool]) -> float | None:
    hits = [leaks(a, p.expected[0]) for a, p, k in zip(answers, probes, known) if k]
    return round(sum(hits) / len(hits), 4) if hits else None


# The attacker's text is about the fact's topic but is asked for differently from the probes,
# so the attack cannot simply teach a new answer to the very questions it then asks.
RELATED_PROMPT = "Tell me a little about the topic of this question, without answering it: {question}"


def related_text(fact: Fact, text: str) -> str:
    """The sentences of `text` that do not state the answer ('' if none is left)."""
    sentences = re.split(r"(?<=[.!?])\s+", text.strip())
    return " ".join(s for s in sentences if s and not leaks(s, fact.answer))


def relearn_attack(lm: LoadedModel, adapter: AdapterState, facts: list[Fact], config: UnlearnConfig,
                   steps: int = 10, learning_rate: float | None = None) -> dict:
    """Keep training (a copy of) the session's adapter on related text that never states the answer:
    what the base model says about each fact's topic, with every sentence naming the answer dropped."""
    probes = forget_probes(facts)
    prompts = [p.prompt for p in probes]
    sources = [RELATED_PROMPT.format(question=q) for f in facts for q in [f.question, *f.probe_paraphrases()[:1]]]
    owners = [f for f in facts for _ in range(2)]
    with attached(lm, adapter.spec, adapter) as peft_model:
        before = base_answers(lm, prompts, config.max_new_tokens, peft_model)
        known = [leaks(b, p.expected[0]) for b, p in zip(before, probes)]
        texts = base_answers(lm, sources, config.max_new_tokens, peft_model)
        # At the run's own rate the adapter learnt these few texts by heart and said them to every
        # probe: that hides the fact as well as unlearning does, so the attack runs at a tenth of it
        # (1e-4 for LoRA, 1e-3 for subject embeddings).
        if learning_rate is None:
            learning_rate = config.resolved(adapter.spec["kind"]).learning_rate / 10
        pairs = [(q, related_text(f, t)) for q, f, t in zip(sources, owners, texts)]
        pairs = [(q, t) for q, t in pairs if t] or [(q, f.question) for q, f in zip(sources, owners)]
        rows = [encode_pair(lm.tokenizer, q, t) for q, t in pairs]
        forward = Forward(peft_model, lm.device, lm.tokenizer.pad_token_id)
        params = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=learning_rate)
        torch.manual_seed(config.seed)
        peft_model.train()
        for _ in range(steps):
            loss = mean_nll(forward({"related": rows})["related"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        peft_model.eval()
        after = generate(lm, prompts, config.max_new_tokens, model=peft_model)
    return {"relearn_leak_rate": _leak_rate(after, probes, known), "relearn_steps": steps,
            "relearn_texts": [{"prompt": q, "text": t} for q, t in pairs],
            "relearn_answers": [{"prompt": p, "after_relearning": a} for p, a in zip(prompts, after)]}


def requantize_attack(lm: LoadedModel, adapter: AdapterState, facts: list[Fact], config: UnlearnConfig) -> dict:
    """Merge the adapter into full-precision weights, quantize the result to NF4 again, re-ask."""
    probes = forget_probes(facts)
    prompts = [p.prompt for p in probes]
    before = base_answers(lm, prompts, config.max_new_tokens)
    known = [leaks(b, p.expected[0]) for b, p in zip(before, probes)]
    full = load_model(lm.model_id, quantize=False, device=lm.device)
    with attached(full, adapter.spec, adapter) as peft_model:
        merged = peft_model.merge_and_unload()
    cache_dir().mkdir(parents=True, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="requant-", dir=cache_dir())  # inside the allowed model roots
    try:
        merged.save_pretrained(folder)
        full.tokenizer.save_pretrained(folder)
        del merged, full
        free_memory()
        requant = load_model(folder, quantize=True, device=lm.device, compute_dtype=lm.compute_dtype)
        after = generate(requant, prompts, config.max_new_tokens)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"requant_leak_rate": _leak_rate(after, probes, known),
            "requant_answers": [{"prompt": p, "after_requant": a} for p, a in zip(prompts, after)]}


def check_robustness(lm: LoadedModel, adapter: AdapterState, facts: list[Fact], config: UnlearnConfig) -> dict:
    """Both attacks; the session's adapter itself is left unchanged."""
    result = relearn_attack(lm, adapter, facts, config)
    result.update(requantize_attack(lm, adapter, facts, config))
    return result
