"""Unlearn/reset cycles in one process, measured after each: what a classroom does to a Space in an
hour. Used by tests/test_repeated_runs.py (tiny model) and bench/run_reliability.py (embedded model)."""
from __future__ import annotations

import gc
import os
import time
import weakref

import psutil
import torch


def live(kind: type) -> int:
    """How many objects of `kind` the garbage collector can reach."""
    return sum(1 for obj in gc.get_objects() if isinstance(obj, kind))


def unlearn_reset_cycles(S, session, rows: list[list[str]], settings: dict, cycles: int = 10) -> list[dict]:
    """Run and reset `cycles` times on `session`; after each reset: resident memory, live tensors,
    optimizers and LoRA layers, and whether the run's adapter weights are gone."""
    from peft.tuners.lora import LoraLayer

    process = psutil.Process(os.getpid())
    figures = []
    for cycle in range(1, cycles + 1):
        started = time.perf_counter()
        updates = list(S.run(session, rows, settings, 0))
        assert updates[-1].done and session.adapter is not None
        adapter_weights = weakref.ref(next(iter(session.adapter.weights.values())))
        seconds_per_step = session.report["metrics"]["seconds_per_step"]
        S.reset(session)  # drops the adapter and results, collects garbage
        figures.append({
            "cycle": cycle,
            "seconds": round(time.perf_counter() - started, 2),
            "steps": session.runs[-1]["steps"],
            "seconds_per_step": seconds_per_step,
            "rss_mb": round(process.memory_info().rss / 2**20, 1),
            "tensors": live(torch.Tensor),
            "optimizers": live(torch.optim.Optimizer),
            "lora_layers": live(LoraLayer),
            "adapter_freed": adapter_weights() is None,
        })
    return figures


def rss_growth(figures: list[dict]) -> float:
    """Growth of resident memory from the end of the second cycle to the highest later one."""
    base = figures[1]["rss_mb"]
    return max(f["rss_mb"] for f in figures[1:]) / base - 1
