"""Jobs on the shared model: each runs on a thread of its own and relays its events.

One interface, two ways to run: in this process (a thread, with a stop event), or on ZeroGPU,
where a decorator (WebContext.gpu_task) sends each call to a forked worker that is lent a GPU.
Arguments and results then cross a process boundary: only plain data goes in and comes out (the
adapter as safetensors bytes), and no stop event reaches the worker (`can_stop` is False)."""
from __future__ import annotations

import hashlib
import math
import queue
import threading
from typing import Callable, Iterator

import safetensors.torch

from lune_core import robustness
from lune_core.adapters import AdapterState
from lune_core.config import RunLimits, UnlearnConfig
from lune_core.facts import Fact
from lune_core.memory import free_memory
from lune_core.models import LoadedModel, load_model, pick_device
from lune_core.runner import RunResult, answer_with, run_unlearning
from lune_core.teach import remove_taught, taught_model, teach_config, teach_events

from .context import no_gpu_task
from .registry import ModelRegistry

HEARTBEAT = object()  # yielded by in_background while the job is busy between events


def in_background(make_events: Callable[[], Iterator], stop: threading.Event, every: float = 2.0) -> Iterator:
    """Run a job's generator on its own thread and relay its events.

    The engine holds the model lock inside its generator; gradio would step a generator from
    different worker threads and close it from yet another, which an RLock refuses. Here the job
    thread owns the lock from start to end. If the consumer goes away (page closed), `stop` is set
    and the job ends at its next step, still on its own thread."""
    events: queue.Queue = queue.Queue()

    def work():
        try:
            for event in make_events():
                events.put(("event", event))
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            events.put(("error", err))
        finally:
            events.put(("done", None))

    threading.Thread(target=work, name="lune-job", daemon=True).start()
    try:
        while True:
            try:
                kind, payload = events.get(timeout=every)
            except queue.Empty:
                yield HEARTBEAT
                continue
            if kind == "done":
                return
            if kind == "error":
                raise payload
            yield payload
    finally:
        stop.set()


def pack_adapter(adapter: AdapterState | None) -> dict | None:
    """Plain picklable form (ZeroGPU returns it across processes)."""
    if adapter is None:
        return None
    weights = {k: v.contiguous() for k, v in adapter.weights.items()}
    return {"spec": adapter.spec, "info": adapter.info, "weights": safetensors.torch.save(weights)}


def unpack_adapter(data: dict | None) -> AdapterState | None:
    if data is None:
        return None
    return AdapterState(spec=data["spec"], weights=safetensors.torch.load(data["weights"]), info=data["info"])


def full_precision_copy(model_id: str) -> LoadedModel:
    """A throwaway full-precision copy for full fine-tuning, which changes every weight it holds."""
    return load_model(model_id, quantize=False, device=pick_device(None))


# What a call asks ZeroGPU for. ZeroGPU refuses a call whose duration exceeds the visitor's remaining
# daily quota, and shorter requests queue better, so the estimate is bounded and grows with the
# request. Rough costs for a <=0.5B model in 4-bit on one ZeroGPU slice, with margin.
MIN_SECONDS = 30  # ZeroGPU schedules in whole seconds; below ~30 s the model load alone may not fit
MAX_SECONDS = 300  # beyond this a call outlasts even a PRO visitor's patience and quota share
WARMUP_S = 20.0  # move the shared base model to the GPU, first CUDA kernels, LoRA init
STEP_BASE_S = 0.15  # one optimizer step: forward + backward on the forget batch and retain anchors
STEP_PER_FACT_S = 0.01  # the forget batch grows with the number of facts
PROBE_S = 0.6  # one greedy generation (a fact question or a general prompt, <= ~64 new tokens)
SAFETY = 1.5  # a call killed at the deadline loses all its work, so over-ask a little


def raw_duration(steps: int, n_facts: int, n_probes: int) -> float:
    """Unbounded estimate in seconds:
    SAFETY * (WARMUP + steps * (STEP_BASE + n_facts * STEP_PER_FACT) + n_probes * PROBE)."""
    steps, n_facts, n_probes = (max(0, int(v)) for v in (steps, n_facts, n_probes))
    per_step = STEP_BASE_S + n_facts * STEP_PER_FACT_S
    return SAFETY * (WARMUP_S + steps * per_step + n_probes * PROBE_S)


def gpu_duration(steps: int, n_facts: int, n_probes: int) -> int:
    """Seconds to request for one unlearning call, clamped to [MIN_SECONDS, MAX_SECONDS]."""
    return int(min(MAX_SECONDS, max(MIN_SECONDS, math.ceil(raw_duration(steps, n_facts, n_probes)))))


def run_seconds(model_key, taught, facts, config, general, *_) -> int:
    """The duration of a training job, from the same arguments (as spaces.GPU calls it)."""
    return gpu_duration(config["steps"], len(facts), 4 * len(facts) + len(general))


def teach_seconds(model_key, facts, *_) -> int:
    return gpu_duration(teach_config().steps, len(facts), 2 * len(facts)) + 30  # + merging and re-quantizing


class Jobs:
    """The kinds of work on a model: teach facts, train (any adapter kind, full fine-tuning included)
    and evaluate, answer free prompts, attack an adapter. Each takes and returns plain data; `taught`
    (a packed adapter or None) names a session's taught model, which replaces the base for that job."""

    TAUGHT_MODELS = 2  # taught models kept built at once (each ~150 MB in 4-bit, plus its folder on disk)

    def __init__(self, models: ModelRegistry, limits: RunLimits, gpu_task: Callable = no_gpu_task,
                 can_stop: bool = True, copy_loader: Callable[[str], LoadedModel] = full_precision_copy):
        self.models, self.limits, self.can_stop, self._copy = models, limits, can_stop, copy_loader
        self._taught: dict[tuple, LoadedModel] = {}
        self._taught_lock = threading.Lock()

        # Decorated here, once, at start-up: ZeroGPU needs its decorator before CUDA is first touched.
        self.teach = gpu_task(teach_seconds)(self._teach)
        self.train = gpu_task(run_seconds)(self._train)
        self.answer = gpu_task(60)(self._answer)
        self.attack = gpu_task(300)(self._attack)

    def model(self, model_key, taught: dict | None) -> LoadedModel:
        """The shared base, or the session's taught model built on it (kept for the next job)."""
        base = self.models.get(*model_key)
        if taught is None:
            return base
        key = (tuple(model_key), hashlib.sha256(taught["weights"]).hexdigest())
        with self._taught_lock:
            if key in self._taught:
                self._taught[key] = self._taught.pop(key)  # most recently used last
                return self._taught[key]
        with base.lock:
            lm = taught_model(base, unpack_adapter(taught))
        with self._taught_lock:
            self._taught[key] = lm
            while len(self._taught) > self.TAUGHT_MODELS:
                remove_taught(self._taught.pop(next(iter(self._taught))))
        return lm

    def stop_for_worker(self, stop: threading.Event) -> threading.Event | None:
        return stop if self.can_stop else None  # an Event cannot cross to the ZeroGPU worker

    def _teach(self, model_key, facts, config, anchors, stop) -> Iterator[dict]:
        """Teach the facts to the base, then build the taught model (so the next job finds it ready)."""
        base = self.models.get(*model_key)
        with base.lock:
            for event in teach_events(base, [Fact(**f) for f in facts], anchors, UnlearnConfig.from_dict(config),
                                      stop=stop):
                if isinstance(event, AdapterState):
                    taught = pack_adapter(event)
                else:
                    yield {"step": event.to_dict()}
        yield {"building": True}
        self.model(model_key, taught)  # built now, inside this job, so the page's next job finds it ready
        yield {"taught": taught}

    def _train(self, model_key, taught, facts, config, general, anchors, stop) -> Iterator[dict]:
        """Train, evaluate and serialize in one call: on ZeroGPU this is the GPU worker."""
        settings = UnlearnConfig.from_dict(config)
        full = settings.adapter == "full"
        lm = self._copy(model_key[0]) if full else self.model(model_key, taught)
        try:
            for event in run_unlearning(lm, [Fact(**f) for f in facts], settings, general, anchors, stop=stop,
                                        limits=self.limits):
                if isinstance(event, RunResult):
                    yield {"report": event.report, "adapter": pack_adapter(event.adapter)}
                else:
                    yield {"step": event.to_dict()}
        finally:
            if full:
                del lm
                free_memory()

    def _answer(self, model_key, taught, adapter, questions, max_new_tokens) -> tuple[list[str], list[str]]:
        lm = self.model(model_key, taught)
        return answer_with(lm, unpack_adapter(adapter), questions, max_new_tokens)  # the engine takes lm.lock

    def _attack(self, model_key, taught, adapter, facts, config) -> Iterator[dict]:
        lm = self.model(model_key, taught)
        with lm.lock:
            yield from robustness.robustness_events(lm, unpack_adapter(adapter), [Fact(**f) for f in facts],
                                                    UnlearnConfig.from_dict(config))
