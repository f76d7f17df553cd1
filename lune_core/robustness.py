"""Does forgetting survive? Relearning on related text, and merging + re-quantizing to 4 bits.

Both attacks are known to bring "forgotten" answers back (METHODS.md). Each rate is over the probes
the run made forget (said by the base, not said after training): the share that says the answer
again after the attack. A probe that still leaked after training never counts as "came back"; it is
reported apart (`still_leaking_after_training`).
"""
from __future__ import annotations

import math
import re
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from .adapters import AdapterState, attached, save_merged
from .config import UnlearnConfig
from .facts import Fact, leaks
from .generation import base_answers, generate
from .embedded import cache_dir
from .models import LoadedModel, load_model
from .probes import forget_probes, rewordings
from .prompting import encode_pair
from .sequences import TrainingData
from .pipeline import train_pipeline


def _leak_rate(answers: list[str], probes, forgotten: list[bool]) -> float | None:
    hits = [leaks(a, p.expected[0]) for a, p, k in zip(answers, probes, forgotten) if k]
    return round(sum(hits) / len(hits), 4) if hits else None


def forgotten_after_training(lm: LoadedModel, adapter: AdapterState, probes, config: UnlearnConfig) -> dict:
    """Which probes the base said and the trained adapter no longer says: what an attack can bring back."""
    prompts = [p.prompt for p in probes]
    with attached(lm, adapter.spec, adapter) as adapted:
        before = base_answers(lm, prompts, config.max_new_tokens, adapted.model)
        after = generate(lm, prompts, config.max_new_tokens, model=adapted.model, gate=adapted.gate)
    known = [leaks(b, p.expected[0]) for b, p in zip(before, probes)]
    still = [k and leaks(a, p.expected[0]) for k, a, p in zip(known, after, probes)]
    return {"forgotten": [k and not s for k, s in zip(known, still)], "known": sum(known),
            "still_leaking_after_training": sum(still),
            "still_leaking_prompts": [p.prompt for p, s in zip(probes, still) if s]}


# The attacker's text is about the fact's topic but is asked for differently from the probes,
# so the attack cannot simply teach a new answer to the very questions it then asks.
RELATED_PROMPT = "Tell me a little about the topic of this question, without answering it: {question}"


def related_text(fact: Fact, text: str) -> str:
    """The sentences of `text` that do not state the answer ('' if none is left)."""
    sentences = re.split(r"(?<=[.!?])\s+", text.strip())
    return " ".join(s for s in sentences if s and not leaks(s, fact.answer))


def relearn_attack(lm: LoadedModel, adapter: AdapterState, facts: list[Fact], config: UnlearnConfig,
                   forgotten: list[bool], steps: int = 10, learning_rate: float | None = None) -> dict:
    """Keep training (a copy of) the session's adapter on related text that never states the answer:
    what the base model says about each fact's topic, with every sentence naming the answer dropped.
    `forgotten`: per forget probe, whether training made it forget (forgotten_after_training)."""
    probes = forget_probes(facts)
    prompts = [p.prompt for p in probes]
    sources = [RELATED_PROMPT.format(question=q) for f in facts
               for q in [f.question, *(f.paraphrases or rewordings(f.question) or [f.question])[:1]]]
    owners = [f for f in facts for _ in range(2)]
    # At the run's own rate the adapter learnt these few texts by heart and said them to every probe: that
    # hides the fact as well as unlearning does, so the attack runs at a tenth of it (1e-4 for LoRA, 1e-3 for
    # subject embeddings).
    if learning_rate is None:
        learning_rate = config.resolved(adapter.spec["kind"]).learning_rate / 10
    # Plain fine-tuning through the run's own pipeline: a constant rate, no clipping, nothing held.
    attack = replace(config, method="finetune", adapter=adapter.spec["kind"], steps=steps,
                     learning_rate=learning_rate, schedule="constant", max_grad_norm=math.inf, weight_decay=0.01,
                     retain_weight=0.0, null_space=0.0, check_every=0, gradient_checkpointing=False)
    pairs: list[tuple[str, str]] = []

    def prepare(adapted) -> TrainingData:
        texts = base_answers(lm, sources, config.max_new_tokens, adapted.model)
        found = [(q, related_text(f, t)) for q, f, t in zip(sources, owners, texts)]
        pairs.extend([(q, t) for q, t in found if t] or [(q, f.question) for q, f in zip(sources, owners)])
        return TrainingData(target=[encode_pair(lm.tokenizer, q, t) for q, t in pairs], forget=[], anchor=[],
                            forget_texts=[])

    def finish(adapted) -> list[str]:
        return generate(lm, prompts, config.max_new_tokens, model=adapted.model, gate=adapted.gate)

    for event in train_pipeline(lm, adapter.spec, attack, [], prepare, finish, state=adapter):
        pass
    after = event.finished
    return {"relearn_leak_rate": _leak_rate(after, probes, forgotten), "relearn_steps": steps,
            "relearn_texts": [{"prompt": q, "text": t} for q, t in pairs],
            "relearn_answers": [{"prompt": p, "after_relearning": a} for p, a in zip(prompts, after)]}


def nf4_rounded(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each tensor through 4-bit NF4 and back (blocks of 64, as bitsandbytes quantizes weights)."""
    import bitsandbytes.functional as bnb

    out = {}
    for name, t in weights.items():
        packed, state = bnb.quantize_4bit(t.float().contiguous(), quant_type="nf4", blocksize=64)
        out[name] = bnb.dequantize_4bit(packed, state).reshape(t.shape).to(t.dtype)
    return out


def requantize_attack(lm: LoadedModel, adapter: AdapterState, facts: list[Fact], config: UnlearnConfig,
                      forgotten: list[bool]) -> dict:
    """Merge the adapter into full-precision weights, quantize the result to NF4 again, re-ask. A gated
    adapter cannot be merged (the gate is not a weight): its own weights go through NF4 instead, and it
    answers, gated, on the 4-bit base."""
    probes = forget_probes(facts)
    prompts = [p.prompt for p in probes]
    if adapter.spec.get("gate") is not None:
        rounded = AdapterState(adapter.spec, nf4_rounded(adapter.weights), adapter.info)
        with attached(lm, rounded.spec, rounded) as adapted:
            after = generate(lm, prompts, config.max_new_tokens, model=adapted.model, gate=adapted.gate)
        how = "adapter weights rounded through NF4, gate kept"
    else:
        cache_dir().mkdir(parents=True, exist_ok=True)
        folder = tempfile.mkdtemp(prefix="requant-", dir=cache_dir())  # inside the allowed model roots
        try:
            save_merged(lm, adapter, Path(folder))
            requant = load_model(folder, quantize=True, device=lm.device, compute_dtype=lm.compute_dtype)
            after = generate(requant, prompts, config.max_new_tokens)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        how = "merged into the weights, re-quantized to NF4"
    return {"requant_leak_rate": _leak_rate(after, probes, forgotten), "requant_how": how,
            "requant_answers": [{"prompt": p, "after_requant": a} for p, a in zip(prompts, after)]}


ATTACK_STAGES = ("checking what training made forget", "relearning on related text",
                 "merging and re-quantizing to 4 bits")


def robustness_events(lm: LoadedModel, adapter: AdapterState, facts: list[Fact], config: UnlearnConfig):
    """Both attacks as a generator: {"stage": i, "name": …} as each of ATTACK_STAGES starts, then
    {"result": …}. The session's adapter itself is left unchanged."""
    yield {"stage": 0, "name": ATTACK_STAGES[0]}
    state = forgotten_after_training(lm, adapter, forget_probes(facts), config)
    result = {k: v for k, v in state.items() if k != "forgotten"}
    result["forgotten_probes"] = sum(state["forgotten"])
    yield {"stage": 1, "name": ATTACK_STAGES[1]}
    result.update(relearn_attack(lm, adapter, facts, config, state["forgotten"]))
    yield {"stage": 2, "name": ATTACK_STAGES[2]}
    result.update(requantize_attack(lm, adapter, facts, config, state["forgotten"]))
    yield {"result": result}


def run_attacks(lm: LoadedModel, adapter: AdapterState, facts: list[Fact], config: UnlearnConfig) -> dict:
    """Both attacks, their result only."""
    return [e for e in robustness_events(lm, adapter, facts, config) if "result" in e][0]["result"]
