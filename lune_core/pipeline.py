"""One pipeline for every training the engine does: the unlearning run (lune_core.runner), the privacy
lesson's teach step (lune_core.teach) and the relearning attack (lune_core.robustness).

    attach the adapter to the shared base  ->  prepare: the rows to train on (and what is measured before)
    ->  train (trainer.unlearn, one StepRecord per step)  ->  finish: what is measured after, inside the
    adapter  ->  snapshot the adapter  ->  detach

Full fine-tuning has no adapter: the same steps run on the full-precision copy itself (spec None)."""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from .adapters import AdapterState, Attached, attached, snapshot
from .config import UnlearnConfig
from .facts import Fact
from .models import LoadedModel
from .sequences import TrainingData
from .trainer import StepRecord, unlearn


@dataclass
class Trained:
    """The end of a pipeline: the adapter as trained (None for full fine-tuning), the steps, and what
    `finish` measured."""

    adapter: AdapterState | None
    records: list[StepRecord]
    finished: Any = None


def parts(lm: LoadedModel, adapted: Attached | None) -> tuple:
    """(the model every pass reads, the PeftModel or None, the answer gate or None) of an attached adapter,
    or of the full-precision copy itself when there is none."""
    if adapted is None:
        return lm.model, None, None
    return adapted.model, adapted.model, adapted.gate


def train_pipeline(lm: LoadedModel, spec: dict | None, config: UnlearnConfig, facts: list[Fact],
                   prepare: Callable[[Attached | None], TrainingData],
                   finish: Callable[[Attached | None], Any] | None = None, stop=None,
                   state: AdapterState | None = None, info: dict | None = None) -> Iterator[StepRecord | Trained]:
    """Yield a StepRecord per step, then a Trained. `spec`: the adapter to attach (adapters.adapter_spec; with
    "gate", an answer gate), or None to train `lm`'s own weights; `state`: weights to start from (a fresh
    adapter otherwise); `prepare(adapted)` returns the rows, `finish(adapted)` what is measured after
    training; `info` goes into the snapshot (the model card)."""
    if spec is not None:
        torch.manual_seed(config.seed)  # a fresh LoRA's A is initialised randomly
    with attached(lm, spec, state) if spec is not None else nullcontext(None) as adapted:
        model, peft_model, gate = parts(lm, adapted)
        data = prepare(adapted)
        if spec is None:
            for p in lm.model.parameters():
                p.requires_grad_(True)
        records = []
        for record in unlearn(lm, model, data, facts, config, peft_model=peft_model, stop=stop, gate=gate):
            records.append(record)
            yield record
        model.eval()
        finished = finish(adapted) if finish is not None else None
        adapter = None
        if peft_model is not None:
            # a gated adapter is saved with its gate as it ended: the negatives it writes, set in training
            saved = {**spec, "gate": gate.spec} if gate is not None else spec
            adapter = snapshot(peft_model, saved, {**(info or {}), "steps": len(records)})
    yield Trained(adapter, records, finished)
