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
    """Peak memory during a run: the CUDA allocator's peak on GPU; on CPU the kernel's high-water
    mark of the resident set (VmHWM, reset when the run starts), so memory used and freed within
    a step counts too. Where /proc has neither, the resident size sampled after each step."""

    def __init__(self, device: str):
        self.device = device
        self.peak_bytes = 0
        self._process = psutil.Process(os.getpid())
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            self._high_water = _reset_high_water_mark()

    def sample(self) -> float:
        if self.device == "cuda":
            now = torch.cuda.max_memory_allocated()
        else:
            now = (_high_water_mark() if self._high_water else None) or self._process.memory_info().rss
        self.peak_bytes = max(self.peak_bytes, now)
        return self.peak_mb

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20


def _reset_high_water_mark() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM to the current resident size."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return _high_water_mark() is not None
    except OSError:
        return False


def _high_water_mark() -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# A trained fp32 weight, its gradient and two Adam moments: 4 × 4 bytes.
TRAINING_BYTES_PER_PARAM = 16


def estimate_run_memory_mb(trainable_params: int, hidden: int, layers: int, vocab: int, batch_tokens: int) -> float:
    """Rough upper estimate of what a run adds on top of the loaded weights: trainable weights,
    gradients and two Adam moments, activations kept for backward, and logits."""
    optimizer = trainable_params * TRAINING_BYTES_PER_PARAM
    activations = batch_tokens * hidden * layers * 24 * 4
    logits = batch_tokens * vocab * 4 * 3
    return (optimizer + activations + logits) / 2**20


def available_memory_mb(device: str) -> float:
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return free / 2**20
    return psutil.virtual_memory().available / 2**20


def check_fits(needed_mb: float, device: str, headroom: float = 1.2) -> None:
    """Refuse a run that would not fit, instead of letting it die with an out-of-memory error."""
    available = available_memory_mb(device)
    if needed_mb * headroom > available:
        raise MemoryError(f"this run needs about {needed_mb:,.0f} MB but only {available:,.0f} MB are free on "
                          f"{device}: use fewer facts, a smaller model or LoRA instead of full fine-tuning")
