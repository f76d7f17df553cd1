"""What a deployment tells the web service: built once by app.py (from lune_deploy), or left at
these laptop defaults by tests and notebooks."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from lune_core.config import RunLimits
from lune_core.ids import EMBEDDED_MODEL


def no_gpu_task(duration) -> Callable:
    """The identity decorator: off ZeroGPU a job is a plain call in this process."""
    return lambda fn: fn


@dataclass(frozen=True)
class WebContext:
    default_model: str = EMBEDDED_MODEL
    quantize_4bit: bool = True
    compute_dtype: str = "float32"  # a name of lune_core.ids.COMPUTE_DTYPES
    limits: RunLimits = field(default_factory=RunLimits)  # bounds on what one request may ask
    on_spaces: bool = False  # shows the "duplicate this Space" button
    # gpu_task(duration)(fn): how a job gets a GPU. ZeroGPU lends one per call, in a forked worker
    # that no threading.Event reaches, so Stop cannot work there (can_stop False; the page says so).
    gpu_task: Callable = no_gpu_task
    can_stop: bool = True
