"""The actions the page calls, for every visitor at once: load, preview, run, ask, reset, compare
with full fine-tuning, attack, export. No gradio here: plain values in, plain values out, so a
notebook or a test drives the same journey. One Service per process, built from a WebContext."""
from __future__ import annotations

import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Callable, Iterator

from lune_core import export, robustness
from lune_core.config import UnlearnConfig
from lune_core.cost import TRAINING_BYTES_PER_PARAM, available_memory_mb
from lune_core.facts import Fact, leaks
from lune_core.ids import canonical_model_id
from lune_core.memory import free_memory
from lune_core.models import LoadedModel, load_model, pick_device, resolve_compute_dtype
from lune_core.forecast import DEFAULT_CHECK_SECONDS, DEFAULT_MERGE_SECONDS, Forecast, Pace
from lune_core.probes import NeighbourSources, build_probes
from lune_core.runner import load_anchors, load_general, load_neighbour_sources, unknown_facts_warning

from . import forms
from .context import WebContext
from .errors import UserError
from .jobs import HEARTBEAT, Jobs, in_background, pack_adapter, unpack_adapter
from .registry import ModelRegistry
from .session import RunUpdate, Session

DEFAULT_GENERAL_PROMPTS = 8  # collateral damage shows on a handful; each one costs a generation


def full_ft_estimate(total_params: int, device: str) -> dict:
    """Memory full fine-tuning needs (every weight trained in fp32, with Adam) against what is free."""
    needed, free = total_params * TRAINING_BYTES_PER_PARAM / 2**20, available_memory_mb(device)
    return {"needed_mb": round(needed), "free_mb": round(free), "fits": needed < 0.7 * free}


class Service:
    """`models`, `jobs`, `general` and `anchors` default to the real ones; tests hand in their own."""

    def __init__(self, context: WebContext | None = None, models: ModelRegistry | None = None,
                 jobs: Jobs | None = None, general: list[dict] | None = None, anchors: list[str] | None = None):
        self.context = context or WebContext()
        self.limits = self.context.limits
        self.models = models or ModelRegistry(loader=self._load)
        self.jobs = jobs or Jobs(self.models, self.limits, self.context.gpu_task, self.context.can_stop)
        self._general = general
        self._anchors = anchors
        self._sources: NeighbourSources | None = None
        self._pace: dict[tuple, Pace] = {}  # per model key, as the last finished run measured it
        self._check_seconds: dict[tuple, float] = {}  # per model key, the last robustness check's wait
        self._merge_seconds: dict[tuple, float] = {}  # per model key, the last taught model's merge
        self._live: weakref.WeakValueDictionary[str, Session] = weakref.WeakValueDictionary()
        self.estimate_full_ft: Callable[[int, str], dict] = full_ft_estimate

    def _load(self, model_id: str, quantize: bool) -> LoadedModel:
        device = pick_device(None)
        return load_model(model_id, quantize=quantize, device=device,
                          compute_dtype=resolve_compute_dtype(self.context.compute_dtype, device))

    @property
    def default_model_key(self) -> tuple[str, bool]:
        return canonical_model_id(self.context.default_model), self.context.quantize_4bit

    def general_pool(self) -> list[dict]:
        if self._general is None:
            self._general = load_general()
        return self._general

    def anchors(self) -> list[str]:
        if self._anchors is None:
            self._anchors = load_anchors()
        return self._anchors

    def sources(self) -> NeighbourSources:
        if self._sources is None:
            self._sources = load_neighbour_sources()
        return self._sources

    # ---- sessions and models ----------------------------------------------------------------

    def bind(self, session: Session, session_hash: str | None) -> Session:
        """Remember which browser session owns `session`, so closing the page can free it."""
        if session_hash:
            self._live[session_hash] = session
        return session

    def end_session(self, session_hash: str | None) -> None:
        session = self._live.pop(session_hash, None) if session_hash else None
        if session is not None:
            session.close()

    def model(self, session: Session) -> LoadedModel:
        if session.model_key is None:
            session.model_key = self.default_model_key
        return self.models.get(*session.model_key)

    def load(self, session: Session, model_id: str, quantize: bool) -> dict:
        """Load (or reuse) a base model for this session; a different model drops the old adapter."""
        key = (canonical_model_id(model_id), bool(quantize))
        reused = key in self.models.loaded()
        lm = self.models.get(*key)
        if session.model_key not in (None, key) and session.adapter is not None:
            session.adapter = None  # an adapter only fits the model it was trained on
        session.model_key = key
        return dict(lm.describe(), reused=reused)

    # ---- facts --------------------------------------------------------------------------------

    def facts_from_rows(self, rows) -> list[Fact]:
        return forms.facts_from_rows(rows, self.limits)

    def add_sentences(self, rows, text: str) -> list[list[str]]:
        return forms.add_sentences(rows, text, self.limits)

    def preset_rows(self, preset_id: str) -> list[list[str]]:
        return forms.preset_rows(preset_id, self.limits)

    def general_records(self, n) -> list[dict]:
        n = forms.bounded_int(n, "general questions", 0, self.limits.max_general_prompts)
        return [dict(r) for r in self.general_pool()[:n]]

    def make_config(self, settings: dict, num_layers: int) -> UnlearnConfig:
        return forms.make_config(settings, num_layers, self.limits)

    def preview(self, session: Session, rows, max_new_tokens: int = UnlearnConfig.max_new_tokens) -> list[dict]:
        """What the base model says to each fact's question now, before any unlearning."""
        facts = self.facts_from_rows(rows)
        session.rows = forms.clean_rows(rows)
        max_new_tokens = forms.bounded_int(max_new_tokens, "max new tokens", 1, self.limits.max_new_tokens)
        self.model(session)
        before, _ = self.jobs.answer(session.model_key, session.taught, None, [f.question for f in facts],
                                     max_new_tokens)
        return [{"question": f.question, "answer": f.answer, "base_answer": b, "known": leaks(b, f.answer)}
                for f, b in zip(facts, before)]

    # ---- runs ---------------------------------------------------------------------------------

    def run(self, session: Session, rows, settings: dict,
            general_prompts: int = DEFAULT_GENERAL_PROMPTS) -> Iterator[RunUpdate]:
        """Train this session's adapter on the facts; streams RunUpdates, stores the result at the end."""
        if session.running:
            raise UserError("a run is already in progress in this page: wait for it or press Stop")
        facts = self.facts_from_rows(rows)
        session.rows = forms.clean_rows(rows)
        lm = self.model(session)
        config = self.make_config(settings, lm.num_layers)
        general = self.general_records(general_prompts)
        # Asked first, before any step: the run then finds these answers in the base model's cache.
        before, _ = self.jobs.answer(session.model_key, session.taught, None, [f.question for f in facts],
                                     config.max_new_tokens)
        notice = unknown_facts_warning(facts, before)
        # the same probes the run will ask, built the same way (no model needed): what the forecast counts
        asked = len(build_probes(facts, before, general, self.sources(), config.seed).probes)
        forecast = Forecast(asked, config.steps, self._pace.get(session.model_key, Pace()))
        training_ended = None
        for update in self._job(session, facts, config, general, on_result=_store_run, live_history=True):
            if update.phase == "evaluating" and training_ended is None:
                training_ended = update.elapsed
            if not update.done:
                update.left = forecast.left(update.phase, update.elapsed, update.step, training_ended)
            update.notice, update.asking = notice, asked
            yield update
        if session.report is not None:  # this machine's pace, for the next run's forecast
            self._pace[session.model_key] = Pace.of(session.report)

    def _job(self, session: Session, facts: list[Fact], config: UnlearnConfig, general: list[dict],
             on_result: Callable[[Session, dict, list[dict]], None], live_history: bool = False) -> Iterator[RunUpdate]:
        args = (session.model_key, session.taught, [f.to_dict() for f in facts], config.to_dict(), general,
                list(self.anchors()))

        def store(s: Session, event: dict, steps: list[dict]) -> None:
            event["report"]["stopped_by_user"] = _stopped_by_user(s, steps)
            on_result(s, event, steps)

        yield from self._stream(session, lambda stop: self.jobs.train(*args, stop), store,
                                session.history if live_history else None, RUN_PHASES)

    def _stream(self, session: Session, start: Callable, on_result: Callable[[Session, dict, list[dict]], None],
                steps: list | None, phases: tuple[str, str, str]) -> Iterator[RunUpdate]:
        """Relay one job's events as RunUpdates, in `phases` (before the first step, at each step, after
        the last), and hand the job's last event to `on_result`. `steps`: the list the live chart reads."""
        session.stop = stop = threading.Event()
        session.running = True
        started = time.perf_counter()
        steps = [] if steps is None else steps
        steps.clear()
        try:
            for event in in_background(lambda: start(self.jobs.stop_for_worker(stop)), stop):
                elapsed = time.perf_counter() - started
                if event is HEARTBEAT or "building" in event:
                    yield RunUpdate(_between_events(phases, steps, stop), elapsed, steps[-1] if steps else None)
                elif "step" in event:
                    steps.append(event["step"])
                    yield RunUpdate(phases[1], elapsed, event["step"])
                else:
                    on_result(session, event, steps)
                    yield RunUpdate("done", elapsed, steps[-1] if steps else None, done=True)
        finally:
            session.running = False

    # ---- the privacy lesson: teach, then forget ------------------------------------------------

    def teach(self, session: Session, rows, seed=0) -> Iterator[RunUpdate]:
        """Teach this session's model the facts (a short LoRA fine-tune, merged and re-quantized): from
        then on every job of this page runs on the taught model, which is its "before". Other pages
        never see it. An unlearning adapter trained before no longer fits and is dropped."""
        if session.running:
            raise UserError("a run is already in progress in this page: wait for it or press Stop")
        facts = self.facts_from_rows(rows)
        session.rows = forms.clean_rows(rows)
        self.model(session)
        seed = forms.bounded_int(seed, "seed", 0, 2**32 - 1)
        config = UnlearnConfig(seed=seed).to_dict()
        args = (session.model_key, [f.to_dict() for f in facts], config, list(self.anchors()))

        def store(s: Session, event: dict, steps: list[dict]) -> None:
            if _stopped_by_user(s, steps):
                return  # stopped half-taught: keep the model the page had
            s.clear_results()
            s.taught = event["taught"]

        # The merge follows the last step: what is left of it is foreseen from the merge before on this machine.
        expected, last_step, trained = self._merge_seconds.get(session.model_key, DEFAULT_MERGE_SECONDS), None, 0.0
        for update in self._stream(session, lambda stop: self.jobs.teach(*args, stop), store, session.taught_history,
                                   TEACH_PHASES):
            if update.step is not None and update.step is not last_step:  # a new step, not a heartbeat
                last_step, trained = update.step, update.elapsed
            if update.phase == "merging":
                update.left = max(0.0, expected - (update.elapsed - trained))
            elif update.done and last_step is not None and session.taught is not None:
                self._merge_seconds[session.model_key] = update.elapsed - trained
            yield update

    def drop_taught(self, session: Session) -> None:
        """Back to the shared base model: the taught facts and everything measured on them go."""
        if session.running:
            raise UserError("a run is in progress: press Stop first")
        session.clear_results()
        session.taught, session.taught_history = None, []

    def request_stop(self, session: Session) -> bool:
        """Ask the running job to end after its current step; False when nothing runs."""
        if not session.running or session.stop is None:
            return False
        session.stop.set()
        return True

    def reset(self, session: Session) -> None:
        """Remove the adapter and the current results; the typed facts and the run history stay."""
        if session.running:
            raise UserError("a run is in progress: press Stop first, then Reset")
        session.clear_results()
        free_memory()

    def ask(self, session: Session, question: str,
            max_new_tokens: int = UnlearnConfig.max_new_tokens) -> tuple[str, str]:
        """The base answer and this session's adapted answer to a free prompt."""
        question = forms.prompt_text(question, self.limits)
        max_new_tokens = forms.bounded_int(max_new_tokens, "max new tokens", 1, self.limits.max_new_tokens)
        self.model(session)
        before, after = self.jobs.answer(session.model_key, session.taught, pack_adapter(session.adapter), [question],
                                         max_new_tokens)
        return before[0], after[0]

    # ---- cost: the full fine-tuning comparison ----------------------------------------------

    def check_full_finetune(self, session: Session) -> None:
        """Refuse, with the reason, a full fine-tuning comparison that cannot start now."""
        if session.report is None:
            raise UserError("run an unlearning first: the comparison repeats its settings")
        if session.running:
            raise UserError("a run is already in progress in this page")
        if session.taught is not None:
            raise UserError("the full fine-tuning comparison runs on the shared base model, and this page's model "
                            "was taught facts first: drop the taught model to compare")

    def run_full_finetune(self, session: Session) -> Iterator[RunUpdate]:
        """Repeat the last run's loss, facts and settings as full fine-tuning of every weight."""
        self.check_full_finetune(session)
        report = session.report
        lm = self.model(session)
        estimate = self.estimate_full_ft(report["metrics"]["total_params"], lm.device)
        if not estimate["fits"]:
            session.full_ft = {"estimate": estimate, "measured": False}
            yield RunUpdate("done", 0.0, done=True)
            return
        facts = [Fact(**f) for f in report["facts"]]
        # Its own learning rate (DEFAULT_LEARNING_RATES): every weight at the adapter's rate turns the
        # model into gibberish within a few steps.
        config = UnlearnConfig.from_dict(dict(report["config"], adapter="full", learning_rate=None))
        general = self.general_records(sum(r["kind"] == "general" for r in report["probes"]))

        def store(s: Session, event: dict, steps: list[dict]) -> None:
            s.full_ft = {"estimate": estimate, "measured": True, "report": event["report"], "steps": steps}

        yield from self._job(session, facts, config, general, on_result=store)

    # ---- robustness -----------------------------------------------------------------------------

    def check_robustness(self, session: Session) -> Iterator[dict]:
        """Does the forgetting survive a few steps of relearning, or merging and re-quantizing? Yields
        {"stage", "name", "elapsed", "expected"} as each attack starts (and every few seconds), then {"result"};
        `expected`: how long the check before took on this machine (or the journey's measure)."""
        if session.adapter is None or session.report is None:
            raise UserError("run an unlearning first")
        self.model(session)
        report = session.report
        stop = threading.Event()  # the attacks are short and have no step to stop at; set when the page goes
        started, stage = time.perf_counter(), {"stage": 0, "name": robustness.ATTACK_STAGES[0]}
        events = in_background(lambda: self.jobs.attack(session.model_key, session.taught,
                                                        pack_adapter(session.adapter), report["facts"],
                                                        report["config"]), stop)
        expected = self._check_seconds.get(session.model_key, DEFAULT_CHECK_SECONDS)
        for event in events:
            if event is not HEARTBEAT and "result" in event:
                if session.report is report:  # a Reset or a new run meanwhile: the result belongs to neither
                    session.robustness_result = event["result"]
                self._check_seconds[session.model_key] = time.perf_counter() - started
                yield event
                return
            stage = stage if event is HEARTBEAT else event
            yield dict(stage, elapsed=time.perf_counter() - started, expected=expected)

    # ---- export -----------------------------------------------------------------------------------

    def export_files(self, session: Session) -> list[str]:
        """Adapter zip (PEFT folder + model card), report JSON, comparison CSV, loss history CSV."""
        if session.report is None:
            raise UserError("nothing to export yet: run an unlearning first")
        if session.workdir is None:
            session.workdir = tempfile.mkdtemp(prefix="lune-session-")
        base = session.report["model"]["name"]
        paths = export.write_exports(Path(session.workdir), session.report, session.adapter, base, session.history)
        return [str(p) for p in paths.values()]


# What a job's progress reads, before its first step, at each step and after its last: a run asks the
# base every question first and again after training; teaching merges and re-quantizes at the end.
RUN_PHASES = ("preparing", "training", "evaluating")
TEACH_PHASES = ("preparing teach", "teaching", "merging")


def _between_events(phases: tuple[str, str, str], steps: list[dict], stop: threading.Event) -> str:
    if not steps:
        return phases[0]
    last = steps[-1]
    return phases[2] if last["stopped"] or stop.is_set() or last["step"] == last["total_steps"] else phases[1]


def _stopped_by_user(session: Session, steps: list[dict]) -> bool:
    """Stop was pressed (or the page closed), rather than the job ending by a rule of its own."""
    return session.stop.is_set() and not (steps and steps[-1]["stopped"])


def _store_run(session: Session, event: dict, steps: list[dict]) -> None:
    report = event["report"]
    session.clear_results()
    session.history = steps
    session.adapter = unpack_adapter(event["adapter"])
    session.report = report
    m = report["metrics"]
    session.runs.append({
        "run": len(session.runs) + 1,
        "method": report["config"]["method"],
        "facts": len(report["facts"]),
        "steps": m["steps_run"],
        "forget_success": m["forget_success"],
        "paraphrase_success": m["paraphrase_success"],
        "adversarial_success": m["adversarial_success"],
        "neighbour_retention": m["neighbour_retention"],
        "neighbour_agreement": m["neighbour_agreement"],
        "general_retention": m["general_retention"],
        "seconds": report["wall_seconds"],
        "stopped": "stopped by you" if report["stopped_by_user"] else (report["stopped"] or "all steps"),
    })


# ---- what the result tables show ----------------------------------------------------------------

def cost_rows(session: Session) -> list[list]:
    """The adapter run vs full fine-tuning, one row per measure (None where not measured)."""
    if session.report is None:
        return []
    lora = session.report["metrics"]
    full = session.full_ft or {}
    fm = full["report"]["metrics"] if full.get("measured") else {}
    est = full.get("estimate") or {}

    # The base model's own count in both columns: an adapter's total would add its own few numbers.
    base = session.report["model"]["total_params"]

    def pct(m):
        return round(100 * m["trainable_params"] / base, 3)

    def share(m, key, count):  # a share with the number of prompts it is over: 86 % of 7 is not 86 % of 70
        return None if m.get(key) is None else (m[key], m.get(count))

    return [
        ["trainable parameters", lora["trainable_params"], fm.get("trainable_params")],
        ["base model parameters", base, base if fm else None],
        ["trainable share of the base (%)", pct(lora), pct(fm) if fm else None],
        ["steps run", lora["steps_run"], fm.get("steps_run")],
        ["seconds per step", lora["seconds_per_step"], fm.get("seconds_per_step")],
        ["training seconds", lora["train_seconds"], fm.get("train_seconds")],
        ["peak memory (MB)", lora["peak_memory_mb"], fm.get("peak_memory_mb") or
         (f"≈ {est['needed_mb']} (estimate)" if est and not full.get("measured") else None)],
        ["forget success", share(lora, "forget_success", "known_forget"), share(fm, "forget_success", "known_forget")],
        ["forgotten cleanly", share(lora, "forget_clean", "known_forget"), share(fm, "forget_clean", "known_forget")],
        ["neighbour retention", share(lora, "neighbour_retention", "known_neighbour"),
         share(fm, "neighbour_retention", "known_neighbour")],
        ["general retention", share(lora, "general_retention", "known_general"),
         share(fm, "general_retention", "known_general")],
    ]


def robustness_rows(result: dict) -> list[dict]:
    """One row per forget-like prompt: its answer after each attack."""
    rows: dict[str, dict] = {}
    for key, column in (("relearn_answers", "after_relearning"), ("requant_answers", "after_requant")):
        for item in result.get(key, []):
            rows.setdefault(item["prompt"], {"prompt": item["prompt"]})[column] = item.get(column, "")
    return list(rows.values())


def comparison_rows(report: dict | None) -> list[dict]:
    if not report:
        return []
    keys = ("kind", "subkind", "source", "prompt", "prefill", "expected", "before", "after", "verdict")
    return [{k: r.get(k, "") for k in keys} for r in report["probes"]]
