"""Giving memory back between runs: cached CUDA blocks to the device, freed heap pages to the system."""
from __future__ import annotations

import ctypes
import gc

import torch


def free_memory() -> None:
    """glibc keeps a run's freed activations in its arenas, which reads as growth run after run.
    (Capping glibc's mmap threshold would return them within a run too: −35 % peak on the embedded
    model, but +30 % step time, so it is not done; see docs/benchmarks_notes.md.)"""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl, Windows)
        return
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)
