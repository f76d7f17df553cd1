"""The unlearning loop: a generator that yields one StepRecord per optimiser step."""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from typing import Iterator

import torch

from .config import UnlearnConfig, suppression_layer
from .cost import MemoryMeter
from .sequences import TrainingData
from .facts import Fact, leaks
from .generation import generate
from .forward import Forward
from .losses import METHODS, LossInputs, Method, Needs, Reference, mean_nll, sequence_logp, top_k_logprobs
from . import null_space
from .memory import allocator_for_generation, allocator_for_training
from .models import LoadedModel

# Answer NLL this many nats above where it started (probability down ~20,000x): far past
# forgetting, and where ascent-type losses start turning the model into gibberish.
COLLAPSE_RISE = 10.0
# Reference tokens kept per anchor position for the KL; the rest of the vocabulary is one bucket.
# With 64, no answer of the tuning runs changed against the full-vocabulary KL (2 seeds).
REFERENCE_TOP_K = 64
REFERENCE_BATCH = 16  # anchors per reference forward: their logits at answer tokens are ~60 MB


@dataclass
class StepRecord:
    step: int
    total_steps: int
    loss: float
    parts: dict
    learning_rate: float
    seconds: float
    elapsed: float
    peak_memory_mb: float
    answer_nll: float | None = None  # mean NLL of the forgotten answer's tokens (before this update)
    leaks_left: int | None = None  # set on check steps: forget questions still answered
    stopped: str | None = None  # why the run ends at this step, if it does
    eta_seconds: float = field(default=0.0)

    def to_dict(self) -> dict:
        return asdict(self)


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def lr_at(step: int, config: UnlearnConfig) -> float:
    """Linear warm-up, then cosine decay to zero; or the same rate throughout ("constant")."""
    if config.schedule == "constant":
        return config.learning_rate
    warmup = max(1, math.ceil(config.warmup_fraction * config.steps))
    if step < warmup:
        return config.learning_rate * (step + 1) / warmup
    progress = (step - warmup) / max(1, config.steps - warmup)
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


def shared_opening(config: UnlearnConfig, peft_model, gate=None) -> tuple[frozenset[int] | None, bool]:
    """How the rows' common opening is shared (Forward): (the tokens it must end before, whether weights it
    passes through train). The subject adapter trains only its tokens' embedding rows; a LoRA or full
    fine-tuning trains weights every token passes through. (None, False): share nothing, under the answer gate
    (its mask covers whole rows) or with checkpointing (transformers drops a cache in checkpointed layers)."""
    if gate is not None or config.gradient_checkpointing:
        return None, False
    if config.adapter == "subject":
        rows = getattr(peft_model.active_peft_config, "token_indices", None) if peft_model is not None else None
        return (frozenset(rows), False) if rows else (None, False)
    return frozenset(), True


def _reference(forward: Forward, data: TrainingData, needs: Needs, peft_model) -> tuple[Reference, list]:
    """Base-model values computed once, before any update, adapter disabled (no second copy).
    Anchors: a list with each anchor's top-k log-probs and ids."""
    context = peft_model.disable_adapter() if peft_model is not None else nullcontext()
    ref = Reference()
    anchor_top: list[tuple[torch.Tensor, torch.Tensor]] = []
    with context, torch.no_grad():
        if needs.hidden or needs.ref_logp:
            view = forward({"forget": data.forget})["forget"]
            ref.forget_hidden = view.hidden.detach() if view.hidden is not None else None
            ref.forget_logp = sequence_logp(view).detach()
        # In batches: on a 4-bit CPU model each forward dequantizes every weight, whatever its rows.
        for start in range(0, len(data.anchor) if needs.anchor else 0, REFERENCE_BATCH):
            view = forward({"anchor": data.anchor[start:start + REFERENCE_BATCH]})["anchor"]
            top_logp, top_ids = top_k_logprobs(view.logits.detach(), REFERENCE_TOP_K)
            per_row = torch.bincount(view.rows, minlength=view.n_rows).tolist()  # rows come in order
            anchor_top += zip(top_logp.split(per_row), top_ids.split(per_row))
    return ref, anchor_top


@dataclass
class Prepared:
    """Everything a step reads, set up once per run before the first update."""

    method: Method
    needs: Needs
    forward: Forward
    ref: Reference
    anchor_top: list
    steering: torch.Tensor
    params: list
    optimizer: torch.optim.Optimizer
    n_anchor: int  # anchors per step
    null: dict  # per LoRA-wrapped projection, the projector that keeps its A inert on the kept rows


def prepare(lm: LoadedModel, model, data: TrainingData, config: UnlearnConfig, peft_model=None,
            gate=None) -> Prepared:
    """The method's inputs, the base's reference values, the optimiser. `gate`: a gated adapter's."""
    method = METHODS[config.method]
    needs = method.needs if config.retain_weight > 0 else replace(method.needs, anchor=False)
    set_seed(config.seed)
    layer = suppression_layer(config, lm.num_layers)
    edited, opening_trains = shared_opening(config, peft_model, gate)
    forward = Forward(model, lm.device, lm.tokenizer.pad_token_id, layer, needs.hidden, edited, gate, opening_trains)
    ref, anchor_top = _reference(forward, data, needs, peft_model)
    generator = torch.Generator().manual_seed(config.seed)
    steering = torch.nn.functional.normalize(
        torch.randn(lm.model.config.hidden_size, generator=generator), dim=0).to(lm.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    n_anchor = min(config.anchors_per_step, len(data.anchor)) if needs.anchor else 0
    null = {}
    if data.kept and peft_model is not None:
        null = null_space.projectors(peft_model, data.kept, lm.tokenizer.pad_token_id, lm.device, config.null_space)
        null_space.project(peft_model, null)
    return Prepared(method, needs, forward, ref, anchor_top, steering, params, optimizer, n_anchor, null)


def train_step(run: Prepared, model, data: TrainingData, config: UnlearnConfig,
               step: int) -> tuple[float, dict, float | None]:
    """One optimiser update: (loss, its parts, the forgotten answer's NLL before the update)."""
    lr = lr_at(step, config)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    # the answer holds at every step, the rest of the pool in turn
    every = data.every_step if run.n_anchor else 0
    turn = len(data.anchor) - every
    picked = list(range(every)) + [every + (step * run.n_anchor + i) % turn for i in range(run.n_anchor if turn else 0)]
    groups = {
        "target": data.target if run.needs.target else [],
        "forget": data.forget if run.needs.forget else [],
        "anchor": [data.anchor[i] for i in picked],
    }
    model.train()
    views = run.forward(groups)
    step_ref = Reference(run.ref.forget_logp, run.ref.forget_hidden)
    if picked:
        step_ref.anchor_top_logp = torch.cat([run.anchor_top[i][0] for i in picked])
        step_ref.anchor_top_ids = torch.cat([run.anchor_top[i][1] for i in picked])
    inputs = LossInputs(views.get("target"), views.get("forget"), views.get("anchor"), step_ref, run.steering)
    loss, parts = run.method.loss(inputs, config)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if math.isfinite(config.max_grad_norm):
        torch.nn.utils.clip_grad_norm_(run.params, config.max_grad_norm)
    run.optimizer.step()
    if run.null:
        null_space.project(model, run.null)
    model.eval()
    nll = round(float(mean_nll(views["forget"]).detach()), 5) if "forget" in views else None
    return float(loss.detach()), {k: round(float(v.detach()), 5) for k, v in parts.items()}, nll


def stop_reason(record: StepRecord, method: Method, start_nll: float | None) -> str | None:
    """Why the run ends after this step without a generation, if it does: collapse or a non-finite loss."""
    nll = record.answer_nll
    if method.ascent and nll is not None and start_nll is not None and nll > start_nll + COLLAPSE_RISE:
        return "collapse guard: the answer's likelihood is already gone"
    if not math.isfinite(record.loss):
        return "loss is not finite"
    return None


def check_due(record: StepRecord, config: UnlearnConfig) -> bool:
    """Whether to ask the forget questions after this step: on schedule, not after the last step, and
    only once the answer is clearly unlikely (a greedy check costs a generation)."""
    unlikely = record.answer_nll is None or record.answer_nll >= config.stop_answer_nll
    step = record.step
    return bool(config.check_every) and step % config.check_every == 0 and step < config.steps and unlikely


def unlearn(lm: LoadedModel, model, data: TrainingData, facts: list[Fact], config: UnlearnConfig,
            peft_model=None, stop=None, gate=None) -> Iterator[StepRecord]:
    """Train `model` (a PeftModel, or the full model for adapter "full") on the method's loss; `gate`:
    a gated adapter's AnswerGate, through which every pass and every check reads the model.

    Yields a StepRecord per step. Ends early when `stop` (a threading.Event) is set, when a check
    finds no forget question leaking (for a method that learns: every fact said), or when an
    ascent-type loss starts to collapse."""
    config = config.resolved()  # a learning rate, if the caller left it to the adapter
    run = prepare(lm, model, data, config, peft_model, gate)
    meter = MemoryMeter(lm.device)
    questions = [f.question for f in facts]
    start = time.perf_counter()
    start_nll = None
    if config.gradient_checkpointing:  # on the shared base only for this run
        lm.model.activation_checkpointing_enable()
    allocator_for_training()
    try:
        for step in range(config.steps):
            if stop is not None and stop.is_set():
                break
            tick = time.perf_counter()
            loss, parts, nll = train_step(run, model, data, config, step)
            meter.sample()
            record = StepRecord(step=step + 1, total_steps=config.steps, loss=loss, parts=parts,
                                learning_rate=lr_at(step, config), seconds=time.perf_counter() - tick, elapsed=0.0,
                                peak_memory_mb=round(meter.peak_mb, 1), answer_nll=nll)
            start_nll = nll if start_nll is None else start_nll
            record.stopped = stop_reason(record, run.method, start_nll)
            if record.stopped is None and check_due(record, config):
                # as far as the evaluation asks: a trained model may name the answer later than the base did
                answers = generate(lm, questions, config.max_new_tokens, model=model, gate=gate)
                record.leaks_left = sum(leaks(a, f.answer) for a, f in zip(answers, facts))
                if run.method.learns and record.leaks_left == len(facts):
                    record.stopped = "early stop: every fact is said now"
                elif not run.method.learns and record.leaks_left == 0:
                    record.stopped = "early stop: no forget question leaks any more"
            record.elapsed = time.perf_counter() - start
            record.eta_seconds = 0.0 if record.stopped else record.elapsed / (step + 1) * (config.steps - step - 1)
            yield record
            if record.stopped:
                break
    finally:
        allocator_for_generation()
        if config.gradient_checkpointing:
            lm.model.activation_checkpointing_disable()
        run.optimizer.zero_grad(set_to_none=True)
        del run  # Adam moments are twice the adapter's size: free them with the run
