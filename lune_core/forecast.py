"""How long a run will take, in all its phases, said before it starts and corrected as it goes.

A run asks every probe once before training (the base model, often from its answer cache), trains at most
`steps` steps, then asks every probe again through the adapter. The pace of each (seconds per probe asked,
seconds per step) is what this machine measured: on the run before, else on this run's own first steps,
else the defaults, measured on a 2-core CPU (docs/benchmarks.md)."""
from __future__ import annotations

from dataclasses import dataclass

# A 2-core laptop-class CPU, the embedded 4-bit model (heldout, 3 facts, 24 general questions, nothing else
# running): asking one probe through the adapter with the run's checks (fluency, the logit lens), and a
# training step with its checks (28.6 s for 84 probes, 61.2 s for 15 steps).
DEFAULT_ASK_SECONDS = 0.35
DEFAULT_STEP_SECONDS = 4.0
# The robustness check (relearning, merging and re-quantizing, asking again) of the lesson's 2-fact run, the
# same CPU, as bench/journey.py measured it (docs/journey.md); the check before on this machine once there is one.
DEFAULT_CHECK_SECONDS = 42.0
# The privacy lesson's merge of the taught LoRA into the weights and their re-quantizing: 7.5 and 9.9 s on
# this CPU beside a test suite (the embedded model); the merge before on this machine once there is one.
DEFAULT_MERGE_SECONDS = 10.0


@dataclass(frozen=True)
class Pace:
    """Seconds per probe asked after training, and per training step, as a finished run measured them."""

    ask: float = DEFAULT_ASK_SECONDS
    step: float = DEFAULT_STEP_SECONDS

    @classmethod
    def of(cls, report: dict) -> "Pace":
        """The pace a finished run's report records (its `phases`), the defaults for what it lacks."""
        phases = report.get("phases") or {}
        prompts, steps = phases.get("prompts") or 0, len(report.get("steps") or [])
        ask = phases["evaluating"] / prompts if prompts and phases.get("evaluating") else DEFAULT_ASK_SECONDS
        step = phases["training"] / steps if steps and phases.get("training") else DEFAULT_STEP_SECONDS
        return cls(ask=ask, step=step)


@dataclass(frozen=True)
class Forecast:
    prompts: int  # probes asked before and again after training
    steps: int  # at most
    pace: Pace = Pace()

    def left(self, phase: str, elapsed: float, step: dict | None = None, training_ended: float | None = None) -> float:
        """Seconds left in all phases. `step`: the newest step (a StepRecord as a dict), whose own timing
        replaces the pace's; `training_ended`: when the last step came, once evaluating."""
        evaluate = self.prompts * self.pace.ask
        if phase == "evaluating":
            return max(0.0, evaluate - (elapsed - (training_ended or elapsed)))
        if phase == "training" and step:
            per_step = step["elapsed"] / max(1, step["step"])
            remaining = 0 if step.get("stopped") else step["total_steps"] - step["step"]
            return remaining * per_step + evaluate
        # preparing: the base's answers (at most as long as asking them again) and every step
        return max(0.0, evaluate - elapsed) + self.steps * self.pace.step + evaluate
