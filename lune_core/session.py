"""What one visitor owns (facts, adapter, results) and the actions the web app calls.

No gradio here: the app passes plain values in and renders plain values out, so a notebook or
a test can drive the same journey. The base models are shared through `MODELS`; a session owns
only its adapter, which is attached to the shared base for the length of one job.
"""
from __future__ import annotations

import json
import logging
import math
import queue
import shutil
import tempfile
import threading
import time
import traceback
import unicodedata
import weakref
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import psutil
import safetensors.torch
import torch

from . import export, robustness
from .adapters import AdapterState
from .config import RunLimits, UnlearnConfig, parse_layers, validate_config
from .deploy import load_deploy_config, resolve_compute_dtype, zero_gpu_enabled
from .facts import Fact, FactError, facts_from_records, format_keep, is_blank, leaks, parse_sentences, read_jsonl
from .memory import free_memory
from .models import (EMBEDDED_MODEL, EMBEDDED_NAME, LoadedModel, ModelLoadError, load_model, pick_device, redact_token,
                     short_message)
from .runner import ASSETS, RunResult, answer_with, load_anchors, load_general, run_unlearning
from .zerogpu import gpu_duration, gpu_task


log = logging.getLogger("lune.session")

FACT_COLUMNS = ["question", "answer to forget", "replacement (optional)", "paraphrases (optional, separate with |)",
                "must stay right (optional: question -> answer | …)"]
DEFAULT_GENERAL_PROMPTS = 8  # collateral damage shows on a handful; each one costs a generation
# Full fine-tuning holds fp32 weights, gradients and two Adam moments: 16 bytes per parameter.
FULL_FT_BYTES_PER_PARAM = 16


class UserError(Exception):
    """Something the visitor can fix; the message is shown in the page as is."""


DEPLOY = load_deploy_config()
# The deployment's bounds (deploy.json), then any LUNE_MAX_* environment variable on top.
LIMITS = RunLimits(
    max_facts=DEPLOY.limits.max_facts,
    max_text_chars=DEPLOY.limits.max_text_chars,
    max_steps=DEPLOY.limits.max_steps,
    max_new_tokens=DEPLOY.limits.max_new_tokens,
    max_general_prompts=DEPLOY.limits.max_general_prompts,
).with_env()


# ---- shared base models ----------------------------------------------------------------------

def canonical_model_id(model_id: str | None) -> str:
    model_id = (model_id or "").strip()
    return EMBEDDED_MODEL if model_id in ("", EMBEDDED_MODEL, EMBEDDED_NAME) else model_id


class ModelRegistry:
    """Each (model id, 4-bit) pair is loaded once per process and shared by every session.

    At most `max_models` stay registered (least recently used goes first), so visitors typing
    many hub ids cannot fill the memory; a session holding an evicted model keeps it alive."""

    def __init__(self, loader: Callable[..., LoadedModel] | None = None, max_models: int = 2):
        self._loader = loader or _load_for_deploy
        self._max = max_models
        self._models: dict[tuple[str, bool], LoadedModel] = {}
        self._loading: dict[tuple[str, bool], threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, model_id: str | None, quantize: bool = True) -> LoadedModel:
        key = (canonical_model_id(model_id), bool(quantize))
        with self._lock:
            if key in self._models:
                self._models[key] = self._models.pop(key)  # most recently used last
                return self._models[key]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:  # a second visitor asking for the same model waits for the first load
            with self._lock:
                if key in self._models:
                    return self._models[key]
            lm = self._loader(key[0], key[1])
            with self._lock:
                self._models[key] = lm
                self._loading.pop(key, None)
                while len(self._models) > self._max:
                    self._models.pop(next(iter(self._models)))
            return lm

    def loaded(self) -> list[tuple[str, bool]]:
        with self._lock:
            return list(self._models)


def _load_for_deploy(model_id: str, quantize: bool) -> LoadedModel:
    device = pick_device(None)
    return load_model(model_id, quantize=quantize, device=device,
                      compute_dtype=resolve_compute_dtype(DEPLOY.compute_dtype, device))


MODELS = ModelRegistry()


# ---- the session ---------------------------------------------------------------------------------

@dataclass
class Session:
    """One visitor's work. Starts empty (gradio deep-copies it per browser session)."""

    model_key: tuple[str, bool] | None = None
    rows: list[list[str]] = field(default_factory=list)  # the facts table as last used
    adapter: AdapterState | None = None
    report: dict | None = None  # the last run's report
    history: list[dict] = field(default_factory=list)  # StepRecord dicts of the last run
    runs: list[dict] = field(default_factory=list)  # one summary per finished run
    full_ft: dict | None = None  # the full fine-tuning comparison of the last run
    robustness_result: dict | None = None
    stop: threading.Event | None = None  # a fresh one per job: an orphaned job keeps its own
    running: bool = False
    workdir: str | None = None

    def close(self) -> None:
        """Free what the session holds: stop its job, drop the adapter, delete its files."""
        if self.stop is not None:
            self.stop.set()
        self.adapter = self.report = self.full_ft = self.robustness_result = None
        self.history = []
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


_LIVE: "weakref.WeakValueDictionary[str, Session]" = weakref.WeakValueDictionary()


def bind(session: Session, session_hash: str | None) -> Session:
    """Remember which browser session owns `session`, so closing the page can free it."""
    if session_hash:
        _LIVE[session_hash] = session
    return session


def end_session(session_hash: str | None) -> None:
    session = _LIVE.pop(session_hash, None) if session_hash else None
    if session is not None:
        session.close()


def _model(session: Session) -> LoadedModel:
    if session.model_key is None:
        session.model_key = (canonical_model_id(DEPLOY.default_model), DEPLOY.quantize_4bit)
    return MODELS.get(*session.model_key)


def load(session: Session, model_id: str, quantize: bool) -> dict:
    """Load (or reuse) a base model for this session; a different model drops the old adapter."""
    key = (canonical_model_id(model_id), bool(quantize))
    reused = key in MODELS.loaded()
    lm = MODELS.get(*key)
    if session.model_key not in (None, key) and session.adapter is not None:
        session.adapter = None  # an adapter only fits the model it was trained on
    session.model_key = key
    info = lm.describe()
    info["reused"] = reused
    return info


# ---- facts ---------------------------------------------------------------------------------------

def _cell(value) -> str:
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


def clean_rows(rows) -> list[list[str]]:
    """The facts table as lists of strings, one per column, blank rows dropped (pandas, lists or None in)."""
    if rows is None:
        return []
    if hasattr(rows, "values") and hasattr(rows, "columns"):
        rows = rows.values.tolist()
    cleaned = []
    for row in rows:
        width = len(FACT_COLUMNS)
        cells = [_cell(c) for c in list(row)[:width]] + [""] * (width - len(row))
        if any(c.strip() for c in cells):
            cleaned.append(cells)
    return cleaned


def facts_from_rows(rows, limits: RunLimits | None = None) -> list[Fact]:
    limits = limits or LIMITS
    records = [{"question": q, "answer": a, "replacement": r, "paraphrases": p, "keep": k}
               for q, a, r, p, k in clean_rows(rows)]
    if len(records) > limits.max_facts:
        raise FactError(f"too many facts: {len(records)} given, at most {limits.max_facts} per run")
    return facts_from_records(records, limits)


def rows_from_facts(facts: list[Fact]) -> list[list[str]]:
    return [[f.question, f.answer, f.replacement, " | ".join(f.paraphrases), format_keep(f.keep)] for f in facts]


def add_sentences(rows, text: str, limits: RunLimits | None = None) -> list[list[str]]:
    """Append facts written as 'The capital of France is [Paris].' (one per line) to the table."""
    limits = limits or LIMITS
    if not (text or "").strip():
        raise UserError("type one sentence per line with the answer in [brackets]")
    if len(text) > limits.max_text_chars * limits.max_facts:
        raise UserError(f"the text is too long (at most {limits.max_text_chars * limits.max_facts} characters)")
    current = clean_rows(rows)
    facts = parse_sentences(text, limits)
    merged = current + rows_from_facts(facts)
    facts_from_rows(merged, limits)  # the whole table must stay valid (count, duplicates)
    return merged


@lru_cache(maxsize=1)
def presets() -> tuple[dict, ...]:
    """Preset index from assets/presets.json: {id, title, description, file, kind}."""
    path = ASSETS / "presets.json"
    if not path.is_file():
        return ()
    return tuple(json.loads(path.read_text(encoding="utf-8")))


def preset_rows(preset_id: str, limits: RunLimits | None = None) -> list[list[str]]:
    limits = limits or LIMITS
    entry = next((p for p in presets() if p["id"] == preset_id), None)
    if entry is None:
        raise UserError("choose a preset from the list")
    path = (ASSETS / entry["file"]).resolve()
    if ASSETS.resolve() not in path.parents or not path.is_file():
        raise UserError(f"preset {preset_id!r} has no readable file")
    return rows_from_facts(facts_from_records(read_jsonl(path)[: limits.max_facts], limits))


# ---- jobs on the shared model ------------------------------------------------------------------

HEARTBEAT = object()  # yielded by in_background while the job is busy between events


def in_background(make_events: Callable[[], Iterator], stop: threading.Event, every: float = 2.0) -> Iterator:
    """Run a job's generator on its own thread and relay its events.

    The engine holds the model lock inside its generator; gradio would step a generator from
    different worker threads and close it from yet another, which an RLock refuses. Here the job
    thread owns the lock from start to end. If the consumer goes away (page closed), `stop` is set
    and the job ends at its next step, still on its own thread."""
    events: queue.Queue = queue.Queue()

    def work():
        try:
            for event in make_events():
                events.put(("event", event))
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            events.put(("error", err))
        finally:
            events.put(("done", None))

    threading.Thread(target=work, name="lune-job", daemon=True).start()
    try:
        while True:
            try:
                kind, payload = events.get(timeout=every)
            except queue.Empty:
                yield HEARTBEAT
                continue
            if kind == "done":
                return
            if kind == "error":
                raise payload
            yield payload
    finally:
        stop.set()


def pack_adapter(adapter: AdapterState | None) -> dict | None:
    """Plain picklable form (ZeroGPU returns it across processes)."""
    if adapter is None:
        return None
    weights = {k: v.contiguous() for k, v in adapter.weights.items()}
    return {"spec": adapter.spec, "info": adapter.info, "weights": safetensors.torch.save(weights)}


def unpack_adapter(data: dict | None) -> AdapterState | None:
    if data is None:
        return None
    return AdapterState(spec=data["spec"], weights=safetensors.torch.load(data["weights"]), info=data["info"])


def _events(lm: LoadedModel, facts: list[dict], config: dict, general: list[dict], anchors: list[str],
            stop) -> Iterator[dict]:
    for event in run_unlearning(lm, [Fact(**f) for f in facts], UnlearnConfig.from_dict(config),
                                general, anchors, stop=stop, limits=LIMITS):
        if isinstance(event, RunResult):
            yield {"report": event.report, "adapter": pack_adapter(event.adapter)}
        else:
            yield {"step": event.to_dict()}


def _run_seconds(model_key, facts, config, general, *_):
    return gpu_duration(config["steps"], len(facts), 4 * len(facts) + len(general))


@gpu_task(_run_seconds)
def _lora_job(model_key, facts, config, general, anchors, stop) -> Iterator[dict]:
    """Train, evaluate and serialize in one call: on ZeroGPU this is the GPU worker."""
    yield from _events(MODELS.get(*model_key), facts, config, general, anchors, stop)


@gpu_task(_run_seconds)
def _full_ft_job(model_key, facts, config, general, anchors, stop) -> Iterator[dict]:
    """The same loss on every weight of a throwaway full-precision copy, freed afterwards."""
    copy = load_model(model_key[0], quantize=False, device=pick_device(None))
    try:
        yield from _events(copy, facts, config, general, anchors, stop)
    finally:
        del copy
        free_memory()


@gpu_task(60)
def _answer_job(model_key, adapter, questions, max_new_tokens) -> tuple[list[str], list[str]]:
    lm = MODELS.get(*model_key)
    return answer_with(lm, unpack_adapter(adapter), questions, max_new_tokens)  # the engine takes lm.lock


def _stop_for_job(session: Session) -> threading.Event:
    session.stop = threading.Event()
    return session.stop


def _job_stop_arg(stop: threading.Event):
    return None if zero_gpu_enabled() else stop  # an Event cannot cross to the ZeroGPU worker


@lru_cache(maxsize=1)
def _general_pool() -> tuple[dict, ...]:
    return tuple(load_general())


@lru_cache(maxsize=1)
def _anchors() -> tuple[str, ...]:
    return tuple(load_anchors())


def general_records(n: int, limits: RunLimits | None = None) -> list[dict]:
    n = _bounded_int(n, "general questions", 0, (limits or LIMITS).max_general_prompts)
    return [dict(r) for r in _general_pool()[:n]]


def preview(session: Session, rows, max_new_tokens: int = UnlearnConfig.max_new_tokens) -> list[dict]:
    """What the base model says to each fact's question now, before any unlearning."""
    facts = facts_from_rows(rows)
    session.rows = clean_rows(rows)
    max_new_tokens = _bounded_int(max_new_tokens, "max new tokens", 1, LIMITS.max_new_tokens)
    _model(session)
    before, _ = _answer_job(session.model_key, None, [f.question for f in facts], max_new_tokens)
    return [{"question": f.question, "answer": f.answer, "base_answer": b, "known": leaks(b, f.answer)}
            for f, b in zip(facts, before)]


def _bounded_int(value, name: str, lo: int, hi: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{name} must be a whole number") from None
    if not math.isfinite(number) or number != int(number):
        raise UserError(f"{name} must be a whole number")
    if not lo <= number <= hi:
        raise UserError(f"{name} must be between {lo} and {hi}")
    return int(number)


def make_config(settings: dict, num_layers: int, limits: RunLimits | None = None) -> UnlearnConfig:
    """UnlearnConfig from the form's values (numbers arrive as floats or None)."""
    limits = limits or LIMITS
    default = UnlearnConfig()
    rank = _bounded_int(settings.get("lora_rank", default.lora_rank), "LoRA rank", 1, limits.max_lora_rank)
    lr = settings.get("learning_rate")
    try:
        lr = None if lr is None or str(lr).strip() == "" else float(lr)  # empty: the adapter's default
    except (TypeError, ValueError):
        raise UserError("learning rate must be a number") from None
    try:
        layers = parse_layers(settings.get("layers", ""))
    except ValueError as err:
        raise UserError(str(err)) from None
    config = UnlearnConfig(
        method=str(settings.get("method") or default.method),
        adapter=str(settings.get("adapter") or default.adapter),
        steps=_bounded_int(settings.get("steps", default.steps), "steps", 1, limits.max_steps),
        learning_rate=lr,
        lora_rank=rank,
        lora_alpha=2 * rank,
        layers=layers,
        seed=_bounded_int(settings.get("seed", default.seed), "seed", 0, 2**32 - 1),
        max_new_tokens=_bounded_int(settings.get("max_new_tokens", default.max_new_tokens),
                                    "max new tokens", 1, limits.max_new_tokens),
        check_every=default.check_every if settings.get("early_stop", True) else 0,
    )
    try:
        validate_config(config, num_layers, limits)
    except ValueError as err:
        raise UserError(str(err)) from None
    return config


@dataclass
class RunUpdate:
    """One thing the page should show while a job runs."""

    phase: str  # "preparing", "training", "evaluating", "done"
    elapsed: float
    step: dict | None = None  # the newest StepRecord as a dict
    done: bool = False


def run(session: Session, rows, settings: dict, general_prompts: int = DEFAULT_GENERAL_PROMPTS) -> Iterator[RunUpdate]:
    """Train this session's adapter on the facts; streams RunUpdates, stores the result at the end."""
    if session.running:
        raise UserError("a run is already in progress in this page: wait for it or press Stop")
    facts = facts_from_rows(rows)
    session.rows = clean_rows(rows)
    lm = _model(session)
    config = make_config(settings, lm.num_layers)
    general = general_records(general_prompts)
    yield from _job(session, _lora_job, facts, config, general, on_result=_store_run, live_history=True)


def _job(session: Session, job, facts: list[Fact], config: UnlearnConfig, general: list[dict],
         on_result: Callable[[Session, dict, list[dict]], None], live_history: bool = False) -> Iterator[RunUpdate]:
    stop = _stop_for_job(session)
    session.running = True
    started = time.perf_counter()
    steps: list[dict] = []
    if live_history:
        session.history = steps  # the live chart and the loss CSV read the current run
    args = (session.model_key, [f.to_dict() for f in facts], config.to_dict(), general, list(_anchors()))
    try:
        for event in in_background(lambda: job(*args, _job_stop_arg(stop)), stop):
            elapsed = time.perf_counter() - started
            if event is HEARTBEAT:
                yield RunUpdate(_phase(steps, stop), elapsed, steps[-1] if steps else None)
            elif "step" in event:
                steps.append(event["step"])
                yield RunUpdate("training", elapsed, event["step"])
            else:
                event["report"]["stopped_by_user"] = stop.is_set() and not (steps and steps[-1]["stopped"])
                on_result(session, event, steps)
                yield RunUpdate("done", elapsed, steps[-1] if steps else None, done=True)
    finally:
        session.running = False


def _phase(steps: list[dict], stop: threading.Event) -> str:
    """Between events: asking the base model first, training, or asking again after the last step."""
    if not steps:
        return "preparing"
    last = steps[-1]
    return "evaluating" if last["stopped"] or stop.is_set() or last["step"] == last["total_steps"] else "training"


def _store_run(session: Session, event: dict, steps: list[dict]) -> None:
    report = event["report"]
    session.adapter = unpack_adapter(event["adapter"])
    session.report = report
    session.full_ft = session.robustness_result = None
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


def request_stop(session: Session) -> bool:
    """Ask the running job to end after its current step; False when nothing runs."""
    if not session.running or session.stop is None:
        return False
    session.stop.set()
    return True


def reset(session: Session) -> None:
    """Remove the adapter and the current results; the typed facts and the run history stay."""
    if session.running:
        raise UserError("a run is in progress: press Stop first, then Reset")
    session.adapter = session.report = session.full_ft = session.robustness_result = None
    session.history = []
    free_memory()


def ask(session: Session, question: str, max_new_tokens: int = UnlearnConfig.max_new_tokens) -> tuple[str, str]:
    """The base answer and this session's adapted answer to a free prompt."""
    question = unicodedata.normalize("NFC", question or "").strip()
    if is_blank(question):
        raise UserError("type a question first")
    if len(question) > LIMITS.max_text_chars:
        raise UserError(f"the prompt is longer than {LIMITS.max_text_chars} characters")
    if any(unicodedata.category(ch) == "Cc" and ch not in "\t\n" for ch in question):
        raise UserError("the prompt contains control characters")
    max_new_tokens = _bounded_int(max_new_tokens, "max new tokens", 1, LIMITS.max_new_tokens)
    _model(session)
    before, after = _answer_job(session.model_key, pack_adapter(session.adapter), [question], max_new_tokens)
    return before[0], after[0]


# ---- cost: the full fine-tuning comparison -------------------------------------------------------

def full_ft_estimate(total_params: int, device: str) -> dict:
    """Memory full fine-tuning needs (weights, gradients, Adam moments) against what is free."""
    needed = total_params * FULL_FT_BYTES_PER_PARAM
    if device == "cuda":
        free = torch.cuda.mem_get_info()[0]
    else:
        free = psutil.virtual_memory().available
    return {"needed_mb": round(needed / 2**20), "free_mb": round(free / 2**20), "fits": needed < 0.7 * free}


def run_full_finetune(session: Session) -> Iterator[RunUpdate]:
    """Repeat the last run's loss, facts and settings as full fine-tuning of every weight."""
    if session.report is None:
        raise UserError("run an unlearning first: the comparison repeats its settings")
    if session.running:
        raise UserError("a run is already in progress in this page")
    report = session.report
    lm = _model(session)
    estimate = full_ft_estimate(report["metrics"]["total_params"], lm.device)
    if not estimate["fits"]:
        session.full_ft = {"estimate": estimate, "measured": False}
        yield RunUpdate("done", 0.0, done=True)
        return
    facts = [Fact(**f) for f in report["facts"]]
    # Its own learning rate (DEFAULT_LEARNING_RATES): every weight at the adapter's rate turns the
    # model into gibberish within a few steps.
    config = UnlearnConfig.from_dict(dict(report["config"], full_finetune=True, learning_rate=None))
    general = general_records(sum(r["kind"] == "general" for r in report["probes"]))

    def store(s: Session, event: dict, steps: list[dict]) -> None:
        s.full_ft = {"estimate": estimate, "measured": True, "report": event["report"], "steps": steps}

    yield from _job(session, _full_ft_job, facts, config, general, on_result=store)


def cost_rows(session: Session) -> list[list]:
    """The adapter run vs full fine-tuning, one row per measure (None where not measured)."""
    if session.report is None:
        return []
    lora = session.report["metrics"]
    full = session.full_ft or {}
    fm = full["report"]["metrics"] if full.get("measured") else {}
    est = full.get("estimate") or {}

    def pct(m):
        return None if not m.get("total_params") else round(100 * m["trainable_params"] / m["total_params"], 3)

    return [
        ["trainable parameters", lora["trainable_params"], fm.get("trainable_params")],
        ["total parameters", lora["total_params"], fm.get("total_params")],
        ["trainable share (%)", pct(lora), pct(fm) if fm else None],
        ["steps run", lora["steps_run"], fm.get("steps_run")],
        ["seconds per step", lora["seconds_per_step"], fm.get("seconds_per_step")],
        ["training seconds", lora["train_seconds"], fm.get("train_seconds")],
        ["peak memory (MB)", lora["peak_memory_mb"], fm.get("peak_memory_mb") or
         (f"≈ {est['needed_mb']} (estimate)" if est and not full.get("measured") else None)],
        ["forget success", lora["forget_success"], fm.get("forget_success")],
        ["forgotten cleanly", lora.get("forget_clean"), fm.get("forget_clean")],
        ["neighbour retention", lora.get("neighbour_retention"), fm.get("neighbour_retention")],
        ["general retention", lora["general_retention"], fm.get("general_retention")],
    ]


@gpu_task(300)
def _robustness_job(model_key, adapter, facts, config) -> Iterator[dict]:
    lm = MODELS.get(*model_key)
    with lm.lock:
        yield from robustness.robustness_events(lm, unpack_adapter(adapter), [Fact(**f) for f in facts],
                                                UnlearnConfig.from_dict(config))


def check_robustness(session: Session) -> Iterator[dict]:
    """Does the forgetting survive a few steps of relearning, or merging and re-quantizing? Yields
    {"stage", "name", "elapsed"} as each attack starts (and every few seconds), then {"result"}."""
    if session.adapter is None or session.report is None:
        raise UserError("run an unlearning first")
    _model(session)
    report = session.report
    stop = threading.Event()  # the attacks are short and have no step to stop at; set when the page goes
    started, stage = time.perf_counter(), {"stage": 0, "name": robustness.ATTACK_STAGES[0]}
    events = in_background(lambda: _robustness_job(session.model_key, pack_adapter(session.adapter),
                                                   report["facts"], report["config"]), stop)
    for event in events:
        if event is not HEARTBEAT and "result" in event:
            if session.report is report:  # a Reset or a new run meanwhile: the result belongs to neither
                session.robustness_result = event["result"]
            yield event
            return
        stage = stage if event is HEARTBEAT else event
        yield dict(stage, elapsed=time.perf_counter() - started)


def robustness_rows(result: dict) -> list[dict]:
    """One row per forget-like prompt: its answer after each attack."""
    rows: dict[str, dict] = {}
    for key, column in (("relearn_answers", "after_relearning"), ("requant_answers", "after_requant")):
        for item in result.get(key, []):
            rows.setdefault(item["prompt"], {"prompt": item["prompt"]})[column] = item.get(column, "")
    return list(rows.values())


# ---- results ---------------------------------------------------------------------------------------

def comparison_rows(report: dict | None) -> list[dict]:
    if not report:
        return []
    keys = ("kind", "subkind", "source", "prompt", "prefill", "expected", "before", "after", "verdict")
    return [{k: r.get(k, "") for k in keys} for r in report["probes"]]


def export_files(session: Session) -> list[str]:
    """Adapter zip (PEFT folder + model card), report JSON, comparison CSV, loss history CSV."""
    if session.report is None:
        raise UserError("nothing to export yet: run an unlearning first")
    if session.workdir is None:
        session.workdir = tempfile.mkdtemp(prefix="lune-session-")
    base = session.report["model"]["name"]
    paths = export.write_exports(Path(session.workdir), session.report, session.adapter, base, session.history)
    return [str(p) for p in paths.values()]


def user_message(err: BaseException) -> str:
    """The line shown in the page for an error; internals stay in the server log."""
    if isinstance(err, (UserError, FactError, ModelLoadError)):
        return short_message(str(err))
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        free_memory()
        return "out of memory: try fewer facts, fewer general questions, a lower LoRA rank or a smaller model"
    log.error("unexpected error\n%s", redact_token("".join(traceback.format_exception(err))))
    return "something went wrong on the server (it is logged); your facts and results are kept"
