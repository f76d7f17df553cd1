"""Cost accounting: parameters, time and peak memory of a run."""
from __future__ import annotations

import os

import psutil
import torch


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total); packed 4-bit weights count as the parameters they encode."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        # bitsandbytes stores two 4-bit values per uint8 element.
        if param.dtype == torch.uint8 and hasattr(param, "quant_state"):
            n *= 2
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


class MemoryMeter:
    """Peak memory during a run: CUDA allocator peak on GPU, sampled resident set size on CPU."""

    def __init__(self, device: str):
        self.device = device
        self.peak_bytes = 0
        self._process = psutil.Process(os.getpid())
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def sample(self) -> float:
        if self.device == "cuda":
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated())
        else:
            self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)
        return self.peak_mb

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20
