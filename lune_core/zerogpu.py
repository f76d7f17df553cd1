"""ZeroGPU support that costs nothing elsewhere.

On ZeroGPU hardware a Space holds no GPU between requests. A function decorated with
``spaces.GPU`` is run in a *forked worker process* that is lent a GPU for at most ``duration``
seconds; arguments and results cross the process boundary by pickling. Therefore the one
decorated call must do everything that needs the GPU: train the LoRA adapter, evaluate it and
serialize the adapter (e.g. a safetensors state dict as bytes), and it must return or yield only
plain picklable data (dicts, lists, str, numbers, bytes). Live models, CUDA tensors, open files,
locks or gradio components must not be returned, and state set inside the worker (module globals,
caches) is lost when the call ends.

The requested duration matters: ZeroGPU refuses a call whose duration exceeds the visitor's
remaining daily quota, and shorter requests get a better queue position. ``gpu_duration`` gives a
bounded estimate from the request size. ``spaces.GPU`` calls a duration callable with the same
arguments as the decorated function, so wrap it, e.g.::

    @gpu_task(lambda facts, steps, prompts, *_: gpu_duration(steps, len(facts), len(facts) + len(prompts)))
    def unlearn(facts, steps, prompts, settings): ...
"""
from __future__ import annotations

import math
from typing import Callable, TypeVar

from .deploy import zero_gpu_enabled

F = TypeVar("F", bound=Callable)

MIN_SECONDS = 30  # ZeroGPU schedules in whole seconds; below ~30 s the model load alone may not fit
MAX_SECONDS = 300  # beyond this a call outlasts even a PRO visitor's patience and quota share
# Rough per-phase costs for a <=0.5B model in 4-bit on one ZeroGPU slice (H200), with margin.
WARMUP_S = 20.0  # move the shared base model to the GPU, first CUDA kernels, LoRA init
STEP_BASE_S = 0.15  # one optimizer step: forward + backward on the forget batch and retain anchors
STEP_PER_FACT_S = 0.01  # the forget batch grows with the number of facts
PROBE_S = 0.6  # one greedy generation (a fact question or a general prompt, <= ~64 new tokens)
SAFETY = 1.5  # a call killed at the deadline loses all its work, so over-ask a little


def raw_duration(steps: int, n_facts: int, n_probes: int) -> float:
    """Unbounded estimate in seconds: SAFETY * (WARMUP + steps * (STEP_BASE + n_facts * STEP_PER_FACT) + n_probes * PROBE)."""
    steps, n_facts, n_probes = (max(0, int(v)) for v in (steps, n_facts, n_probes))
    per_step = STEP_BASE_S + n_facts * STEP_PER_FACT_S
    return SAFETY * (WARMUP_S + steps * per_step + n_probes * PROBE_S)


def gpu_duration(steps: int, n_facts: int, n_probes: int) -> int:
    """Seconds to request from ZeroGPU for one unlearning call, clamped to [MIN_SECONDS, MAX_SECONDS]."""
    return int(min(MAX_SECONDS, max(MIN_SECONDS, math.ceil(raw_duration(steps, n_facts, n_probes)))))


def gpu_task(duration_fn: Callable[..., int] | int) -> Callable[[F], F]:
    """Decorator: ``spaces.GPU(duration=duration_fn)`` on ZeroGPU, the function itself anywhere else.

    Works for plain and generator functions (``spaces.GPU`` handles both). Apply it at import
    time, before anything initialises CUDA: ``spaces`` patches torch when it is imported.
    ``spaces`` is imported only here and only on ZeroGPU, so it is not a local dependency.
    """

    def decorate(fn: F) -> F:
        if not zero_gpu_enabled():
            return fn
        import spaces  # noqa: PLC0415 - only present (and needed) on ZeroGPU Spaces

        return spaces.GPU(duration=duration_fn)(fn)

    return decorate
