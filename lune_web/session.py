"""What one visitor owns: facts, adapter, results. Starts empty (gradio deep-copies it per browser
session); the base models are shared, a session owns only its adapter, attached for one job."""
from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass, field

from lune_core.adapters import AdapterState


@dataclass
class Session:
    model_key: tuple[str, bool] | None = None
    rows: list[list[str]] = field(default_factory=list)  # the facts table as last used
    adapter: AdapterState | None = None
    report: dict | None = None  # the last run's report
    history: list[dict] = field(default_factory=list)  # StepRecord dicts of the last run
    runs: list[dict] = field(default_factory=list)  # one summary per finished run
    full_ft: dict | None = None  # the full fine-tuning comparison of the last run
    robustness_result: dict | None = None
    # The taught adapter (packed, as jobs take it) when this page taught the model facts first: the
    # session's model is then the base with it merged in, for every job until it is dropped.
    taught: dict | None = None
    taught_history: list[dict] = field(default_factory=list)  # StepRecord dicts of the teach step
    stop: threading.Event | None = None  # a fresh one per job: an orphaned job keeps its own
    running: bool = False
    workdir: str | None = None

    def clear_results(self) -> None:
        """Drop the adapter and everything measured on it; the facts and the run history stay."""
        self.adapter = self.report = self.full_ft = self.robustness_result = None
        self.history = []

    def close(self) -> None:
        """Free what the session holds: stop its job, drop the adapter, delete its files. The one
        way a session ends, whether its page closed, gradio dropped its state or a test is done."""
        if self.stop is not None:
            self.stop.set()
        self.clear_results()
        self.taught, self.taught_history = None, []
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


@dataclass
class RunUpdate:
    """One thing the page should show while a job runs."""

    phase: str  # "preparing", "training", "evaluating", "done"
    elapsed: float
    step: dict | None = None  # the newest StepRecord as a dict
    done: bool = False
    notice: str = ""  # said before and during the run: facts the model does not state
    left: float | None = None  # seconds left in all phases (lune_core.forecast), where the job forecasts it
    asking: int = 0  # probes asked again after training, for the forecast's line
