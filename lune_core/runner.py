"""One unlearning run end to end: build data, train, evaluate, report. Used by CLI, app and bench."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from . import __version__
from .adapters import AdapterState, adapter_spec, attached, snapshot
from .config import RunLimits, UnlearnConfig, lora_layers, validate_config
from .cost import check_fits, count_params, estimate_run_memory_mb
from .evaluation import answer_logprobs, compute_metrics, score_probes
from .examples import build_training_data
from .facts import Fact, FactError, forget_probes, general_probes, read_jsonl
from .generation import base_answers, generate
from .memory import free_memory
from .models import LoadedModel
from .subject import subject_token_ids
from .trainer import StepRecord, unlearn

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def load_general(path: str | Path | None = None, limit: int | None = None) -> list[dict]:
    """General-knowledge questions {question, answers: [...]}, the first `limit` of them."""
    path = Path(path or ASSETS / "general_knowledge.jsonl")
    records = read_jsonl(path)
    for number, r in enumerate(records, 1):
        answers = r.get("answers") if isinstance(r, dict) else None
        if not (isinstance(r, dict) and isinstance(r.get("question"), str) and r["question"].strip()
                and isinstance(answers, list) and answers and all(isinstance(a, str) for a in answers)):
            raise FactError(f"{path.name} record {number}: needs a question and a list of answers")
    return records if limit is None else records[:limit]


def load_anchors(path: str | Path | None = None) -> list[str]:
    return [r["question"] for r in read_jsonl(path or ASSETS / "anchor_prompts.jsonl")]


@dataclass
class RunResult:
    """The end of a run: the session's adapter (None after full fine-tuning) and the report."""

    adapter: AdapterState | None
    report: dict = field(default_factory=dict)


def _report(lm, config, facts, records, rows, logprob_drop, trainable, total, started) -> dict:
    metrics = compute_metrics(rows, logprob_drop)
    train_seconds = sum(r.seconds for r in records)
    metrics.update(
        trainable_params=trainable,
        total_params=total,
        steps_run=len(records),
        train_seconds=round(train_seconds, 2),
        seconds_per_step=round(train_seconds / len(records), 3) if records else None,
        peak_memory_mb=max((r.peak_memory_mb for r in records), default=None),
    )
    return {
        "lune_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config.to_dict(),
        "model": lm.describe(),
        "facts": [f.to_dict() for f in facts],
        "steps": [r.to_dict() for r in records],
        "stopped": records[-1].stopped if records else "stopped before the first step",
        "probes": rows,
        "metrics": metrics,
        "wall_seconds": round(time.perf_counter() - started, 2),
    }


def _check_memory(lm: LoadedModel, facts: list[Fact], config: UnlearnConfig, n_tokens: int) -> None:
    cfg = lm.model.config
    if config.full_finetune:
        trainable = lm.total_params
    elif config.adapter == "subject":  # a row per token, in the input and the output embedding
        trainable = 2 * n_tokens * cfg.hidden_size
    else:  # LoRA: A and B of at most hidden-size width on each adapted projection (an upper bound)
        trainable = 2 * config.lora_rank * cfg.hidden_size * len(config.target_modules)
        trainable *= len(lora_layers(config, lm.num_layers))
    tokens = (2 * len(facts) + config.anchors_per_step) * 96  # rows x a generous sequence length
    check_fits(estimate_run_memory_mb(trainable, cfg.hidden_size, lm.num_layers, cfg.vocab_size, tokens), lm.device)


def run_unlearning(lm: LoadedModel, facts: list[Fact], config: UnlearnConfig, general: list[dict],
                   anchors: list[str], stop=None, limits: RunLimits | None = None) -> Iterator[StepRecord | RunResult]:
    """Yield a StepRecord per step, then one RunResult. With config.full_finetune, `lm` must be a
    full-precision copy that may be consumed; otherwise only an adapter is trained (config.adapter).
    `limits`: the caller's request bounds (default: RunLimits with the environment's overrides)."""
    validate_config(config, lm.num_layers, limits or RunLimits().with_env())
    tokens = {}
    if config.adapter == "subject":
        tokens = subject_token_ids(lm.tokenizer, [f.question for f in facts], anchors)
    # No subject word found (every word of the questions is common): LoRA on the layers instead.
    config = config.resolved("lora" if config.adapter == "subject" and not tokens else None)
    _check_memory(lm, facts, config, len(tokens))
    started = time.perf_counter()
    probes = forget_probes(facts) + general_probes(general)
    prompts = [p.prompt for p in probes]
    records: list[StepRecord] = []
    if config.full_finetune:
        before = base_answers(lm, prompts, config.max_new_tokens)
        data = build_training_data(lm, facts, anchors, config)
        before_logp = answer_logprobs(lm.model, data.forget, lm.device, lm.tokenizer.pad_token_id)
        free_memory()  # the generation's freed caches, before training sets the peak
        for p in lm.model.parameters():
            p.requires_grad_(True)
        trainable, total = count_params(lm.model)
        for record in unlearn(lm, lm.model, data, facts, config, stop=stop):
            records.append(record)
            yield record
        lm.model.eval()
        after = generate(lm, prompts, config.max_new_tokens)
        after_logp = answer_logprobs(lm.model, data.forget, lm.device, lm.tokenizer.pad_token_id)
        adapter = None
    else:
        spec = adapter_spec(config, lm.num_layers, list(tokens))
        torch.manual_seed(config.seed)  # LoRA A is initialised randomly
        with attached(lm, spec) as peft_model:
            before = base_answers(lm, prompts, config.max_new_tokens, peft_model)
            data = build_training_data(lm, facts, anchors, config, peft_model)
            free_memory()  # the generation's freed caches, before training sets the peak
            trainable, total = count_params(peft_model)
            for record in unlearn(lm, peft_model, data, facts, config, peft_model=peft_model, stop=stop):
                records.append(record)
                yield record
            after = generate(lm, prompts, config.max_new_tokens, model=peft_model)
            pad = lm.tokenizer.pad_token_id
            before_logp = answer_logprobs(peft_model, data.forget, lm.device, pad, peft_model.disable_adapter())
            after_logp = answer_logprobs(peft_model, data.forget, lm.device, pad)
            info = {"method": config.method, "facts": len(facts), "steps": len(records), "seed": config.seed}
            adapter = snapshot(peft_model, spec, info)
    drop = float((before_logp - after_logp).mean())
    rows = score_probes(probes, before, after)
    report = _report(lm, config, facts, records, rows, drop, trainable, total, started)
    report["forget_targets"] = data.forget_texts
    if config.adapter == "subject" and not config.full_finetune:
        report["edited_tokens"] = [tokens[i] for i in sorted(tokens)]
    free_memory()
    yield RunResult(adapter=adapter, report=report)


def answer_with(lm: LoadedModel, adapter: AdapterState | None, questions: list[str],
                max_new_tokens: int = 32) -> tuple[list[str], list[str]]:
    """(before, after) answers for free prompts; without an adapter both are the base's."""
    if adapter is None:
        before = base_answers(lm, questions, max_new_tokens)
        return before, list(before)
    with attached(lm, adapter.spec, adapter) as peft_model:
        before = base_answers(lm, questions, max_new_tokens, peft_model)
        after = generate(lm, questions, max_new_tokens, model=peft_model)
    return before, after


def save_report(report: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
