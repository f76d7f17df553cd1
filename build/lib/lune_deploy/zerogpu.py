"""ZeroGPU support that costs nothing elsewhere.

On ZeroGPU hardware a Space holds no GPU between requests. A function decorated with
``spaces.GPU`` is run in a *forked worker process* that is lent a GPU for at most ``duration``
seconds; arguments and results cross the process boundary by pickling, so a job must do all its
GPU work in the one decorated call and return only plain data (lune_web.jobs does). State set
inside the worker is lost when the call ends, and no threading.Event reaches it: Stop cannot work.
How long each job asks for is the job's own estimate (lune_web.jobs.run_seconds).
"""
from __future__ import annotations

from typing import Callable, TypeVar

from .config import zero_gpu_enabled

F = TypeVar("F", bound=Callable)


def gpu_task(duration_fn: Callable[..., int] | int) -> Callable[[F], F]:
    """Decorator: ``spaces.GPU(duration=duration_fn)`` on ZeroGPU, the function itself anywhere else.

    Works for plain and generator functions (``spaces.GPU`` handles both). Apply it at start-up,
    before anything initialises CUDA: ``spaces`` patches torch when it is imported. ``spaces`` is
    imported only here and only on ZeroGPU, so it is not a local dependency.
    """

    def decorate(fn: F) -> F:
        if not zero_gpu_enabled():
            return fn
        import spaces  # noqa: PLC0415 - only present (and needed) on ZeroGPU Spaces

        return spaces.GPU(duration=duration_fn)(fn)

    return decorate
