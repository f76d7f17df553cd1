"""One unlearning run end to end: build data, train, evaluate, report. Used by CLI, app and bench."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from . import __version__
from .assets import asset
from .adapters import AdapterState, adapter_spec, attached, forgetting_kind
from .config import RunLimits, UnlearnConfig, lora_layers, validate_config
from .cost import check_fits, count_params, estimate_run_memory_mb
from .evaluation import (answer_fluency, answer_logprobs, compute_metrics, fluency_metrics, likelihood_metrics,
                         score_probes, token_logprobs)
from .lens import lens, lens_inputs, lens_metrics, lens_report
from .sequences import TrainingData, answer_sequences, build_training_data, gate_spec, gated
from .facts import Fact, FactError, leaks, read_jsonl
from .generation import base_answers, generate
from .memory import free_memory
from .models import LoadedModel
from .prompting import encode_pair
from .probes import NeighbourSources, build_probes, normalise
from .retain_set import answer_holds, training_neighbours
from .subject import subject_token_ids
from .pipeline import parts, train_pipeline
from .trainer import StepRecord

def load_general(path: str | Path | None = None, limit: int | None = None) -> list[dict]:
    """General-knowledge questions {question, answers: [...]}, the first `limit` of them."""
    path = Path(path or asset("general_knowledge.jsonl"))
    records = read_jsonl(path)
    for number, r in enumerate(records, 1):
        answers = r.get("answers") if isinstance(r, dict) else None
        if not (isinstance(r, dict) and isinstance(r.get("question"), str) and r["question"].strip()
                and isinstance(answers, list) and answers and all(isinstance(a, str) for a in answers)):
            raise FactError(f"{path.name} record {number}: needs a question and a list of answers")
    return records if limit is None else records[:limit]


def load_anchors(path: str | Path | None = None) -> list[str]:
    """Prompts the method holds to the base's own answers (never scored): the neutral anchors and the
    general-knowledge retain set (assets/retain_prompts.jsonl, disjoint from every probe set)."""
    paths = [path] if path else [asset("anchor_prompts.jsonl"), asset("retain_prompts.jsonl")]
    return [r["question"] for p in paths for r in read_jsonl(p)]


@dataclass
class RunResult:
    """The end of a run: the session's adapter (None after full fine-tuning) and the report."""

    adapter: AdapterState | None
    report: dict = field(default_factory=dict)


def load_neighbour_sources() -> NeighbourSources:
    """The shipped curated neighbours, the entity lists automatic neighbours swap subjects from, and
    the prompts whose shared words tell a subject word from a relation word (anchors and the whole
    general set, whatever part of it a run asks). A few milliseconds: read per run, kept nowhere."""
    records = read_jsonl(asset("neighbours.jsonl"))
    curated = {normalise(r["fact"]): r["keep"] for r in records}
    entities = json.loads(asset("entities.json").read_text(encoding="utf-8"))
    general = load_general()
    vocabulary = load_anchors() + [r["question"] for r in general]
    bank = general + [e for r in records for e in r["keep"]]
    return NeighbourSources(curated=curated, vocabulary=vocabulary, entities=entities, bank=bank)


def _report(lm, config, facts, records, rows, logprob_drop, likelihood, trainable, total, started) -> dict:
    metrics = compute_metrics(rows, logprob_drop, likelihood)
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
    if config.adapter == "full":
        trainable = lm.total_params
    elif config.adapter == "subject":  # a row per token, in the input and the output embedding
        trainable = 2 * n_tokens * cfg.hidden_size
    else:  # LoRA: A and B of at most hidden-size width on each adapted projection (an upper bound)
        trainable = 2 * config.lora_rank * cfg.hidden_size * len(config.resolved().target_modules)
        trainable *= len(lora_layers(config, lm.num_layers))
    tokens = (2 * len(facts) + config.anchors_per_step) * 96  # rows x a generous sequence length
    check_fits(estimate_run_memory_mb(trainable, cfg.hidden_size, lm.num_layers, cfg.vocab_size, tokens), lm.device)


@dataclass
class _Likelihood:
    """Per fact, the true answer's and the wrong answers' sequences, and their per-token log-probs."""

    true: list
    wrong: list[list]

    def measure(self, model, lm: LoadedModel, disable=None, gate=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        sizes = [len(seqs) for seqs in self.wrong]
        flat = token_logprobs(model, self.true + [s for seqs in self.wrong for s in seqs], lm.device,
                              lm.tokenizer.pad_token_id, disable, gate)
        true, rest = flat[: len(self.true)], flat[len(self.true):]
        return true, list(rest.split(sizes))


# Kinds whose answers a person reads as answers to the fact: their fluency is measured (no prefilled reply).
FLUENCY_KINDS = ("forget", "paraphrase", "reworded")
# Kinds asked again through the adapter as stock PEFT runs it (no gate): what a user of the export gets.
STOCK_KINDS = ("forget", "paraphrase", "neighbour", "general")
STOCK_FIGURES = ("forget_success", "paraphrase_success", "paraphrase_by_kind", "neighbour_retention",
                 "general_retention")


def _fluency(model, lm: LoadedModel, pairs: list[tuple[str, str]], disable=None) -> list[float]:
    """Per (prompt, answer) with an answer, how naturally the answer reads to `model` (answer_fluency)."""
    pairs = [(q, a) for q, a in pairs if a.strip()]
    if not pairs:
        return []
    seqs = [encode_pair(lm.tokenizer, q, a, add_eos=False) for q, a in pairs]
    return answer_fluency(model, seqs, lm.device, lm.tokenizer.pad_token_id, disable)


class _Measurement:
    """What a run asks the model, before training (prepare, which also builds the rows to train on) and
    after (finish), inside the attached adapter: the pipeline's two hooks (lune_core.pipeline)."""

    def __init__(self, lm: LoadedModel, facts: list[Fact], config: UnlearnConfig, general: list[dict],
                 anchors: list[str], sources: NeighbourSources):
        self.lm, self.facts, self.config, self.general, self.anchors, self.sources = (
            lm, facts, config, general, anchors, sources)

    def prepare(self, adapted) -> TrainingData:
        lm, facts, config = self.lm, self.facts, self.config
        model, peft_model, gate = parts(lm, adapted)
        mnt = config.max_new_tokens
        self.fact_answers = base_answers(lm, [f.question for f in facts], mnt, peft_model)
        self.probe_set = build_probes(facts, self.fact_answers, self.general, self.sources, config.seed)
        self.probes = self.probe_set.probes
        self.prompts, self.prefills = [p.prompt for p in self.probes], [p.prefill for p in self.probes]
        self.before = base_answers(lm, self.prompts, mnt, peft_model, self.prefills)
        # Never train on what scores the run: anchors that are also probes are left out.
        scored = {normalise(p) for p in self.prompts}
        self.train_anchors = [a for a in self.anchors if normalise(a) not in scored]
        near = training_neighbours(facts, self.sources, config.seed, self.prompts)
        holds = answer_holds(facts, config.answer_holds, self.prompts)
        data = build_training_data(lm, facts, self.train_anchors, config, peft_model, neighbours=near, holds=holds)
        if gate is not None:
            data = gated(data, gate)
        self.data = data
        self.likelihood = _Likelihood(
            true=[answer_sequences(lm, f, a, [f.answer])[0] for f, a in zip(facts, self.fact_answers)],
            wrong=[answer_sequences(lm, f, a, w) for f, a, w in zip(facts, self.fact_answers, self.probe_set.wrong)])
        base = adapted.base if adapted is not None else (lambda: None)  # the same weights, adapter off
        pad = lm.tokenizer.pad_token_id
        self.before_logp = answer_logprobs(model, data.forget, lm.device, pad, base())
        self.true_before, self.wrong_before = self.likelihood.measure(model, lm, base())
        self.fluent = [i for i, p in enumerate(self.probes) if p.kind in FLUENCY_KINDS and not p.prefill]
        self.nll_before = _fluency(model, lm, [(self.prompts[i], self.before[i]) for i in self.fluent], base())
        self.lensed = [lens_inputs(lm.tokenizer, f, a) for f, a in zip(facts, self.fact_answers)]
        self.lens_args = ([ids for ids, _, _ in self.lensed], [t for _, t, _ in self.lensed], lm.device, pad)
        self.lens_before = lens(model, *self.lens_args, disable=base())
        free_memory()  # the generation's freed caches, before training sets the peak
        self.prepared = time.perf_counter()
        return data

    def finish(self, adapted) -> None:
        lm, config = self.lm, self.config
        model, peft_model, gate = parts(lm, adapted)
        mnt, pad, prompts = config.max_new_tokens, lm.tokenizer.pad_token_id, self.prompts
        self.trained = time.perf_counter()
        self.trainable, self.total = count_params(model)
        self.after = generate(lm, prompts, mnt, model=model, prefills=self.prefills, gate=gate)
        self.after_logp = answer_logprobs(model, self.data.forget, lm.device, pad, gate=gate)
        self.true_after, self.wrong_after = self.likelihood.measure(model, lm, gate=gate)
        self.lens_after = lens(model, *self.lens_args, gate=gate)
        # The base reads the adapted answers: full fine-tuning changed the base itself, so it has none.
        self.nll_after = (_fluency(model, lm, [(prompts[i], self.after[i]) for i in self.fluent], adapted.base())
                          if peft_model is not None else None)
        self.stock = None
        if gate is not None:  # the LoRA everywhere, as PeftModel.from_pretrained runs it without the gate's code
            asked = [i for i, p in enumerate(self.probes) if p.kind in STOCK_KINDS]
            with gate.suspended():
                stock_after = generate(lm, [prompts[i] for i in asked], mnt, model=peft_model)
            self.stock = ([self.probes[i] for i in asked], [self.before[i] for i in asked], stock_after)
        self.evaluated = time.perf_counter()


def run_unlearning(lm: LoadedModel, facts: list[Fact], config: UnlearnConfig, general: list[dict],
                   anchors: list[str], stop=None, limits: RunLimits | None = None,
                   sources: NeighbourSources | None = None) -> Iterator[StepRecord | RunResult]:
    """Yield a StepRecord per step, then one RunResult. With adapter "full", `lm` must be a
    full-precision copy that may be consumed; otherwise only an adapter is trained (config.adapter).
    `limits`: the caller's request bounds (default: RunLimits with the environment's overrides);
    `sources`: where neighbour probes come from (default: the shipped ones)."""
    validate_config(config, lm.num_layers, limits or RunLimits().with_env())
    sources = sources or load_neighbour_sources()
    tokens = {}
    if config.adapter == "subject":
        tokens = subject_token_ids(lm.tokenizer, [f.question for f in facts], anchors)
    # No subject word found (every word of the questions is common): LoRA on the layers instead.
    config = config.resolved("lora" if config.adapter == "subject" and not tokens else None)
    _check_memory(lm, facts, config, len(tokens))
    started = time.perf_counter()
    spec = None
    if config.adapter != "full":
        spec = adapter_spec(config, lm.num_layers, list(tokens))
        if config.adapter == "gated":
            spec["gate"] = gate_spec(lm.tokenizer, facts, config.gate_threshold)
    m = _Measurement(lm, facts, config, general, anchors, sources)
    info = {"method": config.method, "facts": len(facts), "steps": 0, "seed": config.seed}
    for event in train_pipeline(lm, spec, config, facts, m.prepare, m.finish, stop, info=info):
        if isinstance(event, StepRecord):
            yield event
    records, adapter = event.records, event.adapter
    drop = float((m.before_logp - m.after_logp).mean())
    rows = score_probes(m.probes, m.before, m.after)
    lens_records = lens_report(lm.tokenizer, facts, m.fact_answers, m.lens_before, m.lens_after, m.lens_args[1],
                               [o for _, _, o in m.lensed])
    said = {r["fact"]: r["leaked_before"] and not r["leaked_after"] for r in rows if r["kind"] == "forget"}
    figures = {**likelihood_metrics(m.true_before, m.wrong_before, m.true_after, m.wrong_after),
               **fluency_metrics(m.nll_before, m.nll_after),
               **lens_metrics(lens_records, [said.get(i, False) for i in range(len(facts))])}
    report = _report(lm, config, facts, records, rows, drop, figures, m.trainable, m.total, started)
    report["logit_lens"] = lens_records
    # how long each phase took, and how many probes were asked in each: the pace of the next forecast
    report["phases"] = {"preparing": round(m.prepared - started, 2), "training": round(m.trained - m.prepared, 2),
                        "evaluating": round(m.evaluated - m.trained, 2), "prompts": len(m.prompts)}
    report["stock"] = _stock_report(m.stock)
    report["forgetting_kind"] = forgetting_kind(report["config"])
    # The exported adapter as stock PEFT runs it: the run's own figures unless a gate decided where it acted.
    stock_m = report["stock"].get("metrics") or report["metrics"]
    report["metrics"].update({f"stock_{k}": stock_m.get(k) for k in STOCK_FIGURES})
    report["forget_targets"] = m.data.forget_texts
    report["wrong_answers"] = m.probe_set.wrong
    report["anchors_left_out"] = len(anchors) - len(m.train_anchors)
    if config.adapter == "subject":
        report["edited_tokens"] = [tokens[i] for i in sorted(tokens)]
    free_memory()
    yield RunResult(adapter=adapter, report=report)


def _stock_report(stock) -> dict:
    """How the exported adapter answers when stock PEFT loads it. Without a gate that is the run itself."""
    if stock is None:
        return {"same_as_measured": True}
    probes, before, after = stock
    rows = score_probes(probes, before, after)
    m = compute_metrics(rows, None)
    keys = ("forget_success", "forget_clean", "paraphrase_success", "paraphrase_by_kind", "neighbour_retention",
            "general_retention", "degenerate_rate", "known_forget", "known_paraphrase", "known_neighbour",
            "known_general")
    return {"same_as_measured": False, "metrics": {k: m[k] for k in keys},
            "answers": [{"kind": r["kind"], "prompt": r["prompt"], "after": r["after"]} for r in rows
                        if r["kind"] in ("forget", "paraphrase")]}


def unknown_facts_warning(facts: list[Fact], base: list[str]) -> str:
    """One line naming the facts whose answer the model does not state now (`base`: its answers to their
    questions), or ''. Said before training: such a fact cannot show forgetting, however long it trains."""
    unknown = [f for f, a in zip(facts, base) if not leaks(a, f.answer)]
    if not unknown:
        return ""
    named = "; ".join(f"{f.question!r} (it does not say {f.answer!r})" for f in unknown[:3])
    more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
    return (f"the model does not state {len(unknown)} of the {len(facts)} facts now: {named}{more}. A fact it "
            "does not say cannot show forgetting; teach it first, or check the answer's spelling.")


def answer_with(lm: LoadedModel, adapter: AdapterState | None, questions: list[str],
                max_new_tokens: int = 32) -> tuple[list[str], list[str]]:
    """(before, after) answers for free prompts; without an adapter both are the base's."""
    if adapter is None:
        before = base_answers(lm, questions, max_new_tokens)
        return before, list(before)
    with attached(lm, adapter.spec, adapter) as adapted:
        before = base_answers(lm, questions, max_new_tokens, adapted.model)
        after = generate(lm, questions, max_new_tokens, model=adapted.model, gate=adapted.gate)
    return before, after


def save_report(report: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
