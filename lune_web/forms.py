"""The page's inputs turned into engine values: the facts table, sentences, presets, settings.
Every function takes the request limits; a bad value raises UserError (or FactError) with a
message the visitor can act on."""
from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import fields
from functools import lru_cache

from lune_core.assets import assets_dir
from lune_core.config import RunLimits, UnlearnConfig, parse_layers, validate_config
from lune_core.facts import Fact, FactError, facts_from_records, format_keep, is_blank, parse_sentences, read_jsonl
from lune_core.ids import has_control_chars

from .errors import UserError

FACT_COLUMNS = ["question", "answer to forget", "replacement (optional)", "paraphrases (optional, separate with |)",
                "must stay right (optional: question -> answer | …)"]
# The settings form's fields and the config field each one sets; the rest keep UnlearnConfig's defaults.
SETTING_FIELDS = ("method", "adapter", "steps", "learning_rate", "lora_rank", "layers", "seed", "max_new_tokens")


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


def facts_from_rows(rows, limits: RunLimits) -> list[Fact]:
    records = [{"question": q, "answer": a, "replacement": r, "paraphrases": p, "keep": k}
               for q, a, r, p, k in clean_rows(rows)]
    if len(records) > limits.max_facts:
        raise FactError(f"too many facts: {len(records)} given, at most {limits.max_facts} per run")
    return facts_from_records(records, limits)


def rows_from_facts(facts: list[Fact]) -> list[list[str]]:
    return [[f.question, f.answer, f.replacement, " | ".join(f.paraphrases), format_keep(f.keep)] for f in facts]


def add_sentences(rows, text: str, limits: RunLimits) -> list[list[str]]:
    """Append facts written as 'The capital of France is [Paris].' (one per line) to the table."""
    if not (text or "").strip():
        raise UserError("type one sentence per line with the answer in [brackets]")
    if len(text) > limits.max_text_chars * limits.max_facts:
        raise UserError(f"the text is too long (at most {limits.max_text_chars * limits.max_facts} characters)")
    merged = clean_rows(rows) + rows_from_facts(parse_sentences(text, limits))
    facts_from_rows(merged, limits)  # the whole table must stay valid (count, duplicates)
    return merged


@lru_cache(maxsize=1)
def presets() -> tuple[dict, ...]:
    """Preset index from assets/presets.json: {id, title, description, file, kind}."""
    path = assets_dir() / "presets.json"
    if not path.is_file():
        return ()
    return tuple(json.loads(path.read_text(encoding="utf-8")))


def preset_rows(preset_id: str, limits: RunLimits) -> list[list[str]]:
    entry = next((p for p in presets() if p["id"] == preset_id), None)
    if entry is None:
        raise UserError("choose a preset from the list")
    root = assets_dir().resolve()
    path = (root / entry["file"]).resolve()
    if root not in path.parents or not path.is_file():
        raise UserError(f"preset {preset_id!r} has no readable file")
    return rows_from_facts(facts_from_records(read_jsonl(path)[: limits.max_facts], limits))


def bounded_int(value, name: str, lo: int, hi: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{name} must be a whole number") from None
    if not math.isfinite(number) or number != int(number):
        raise UserError(f"{name} must be a whole number")
    if not lo <= number <= hi:
        raise UserError(f"{name} must be between {lo} and {hi}")
    return int(number)


def prompt_text(question: str, limits: RunLimits) -> str:
    """A free prompt typed into the page, checked like a fact's question."""
    question = unicodedata.normalize("NFC", question or "").strip()
    if is_blank(question):
        raise UserError("type a question first")
    if len(question) > limits.max_text_chars:
        raise UserError(f"the prompt is longer than {limits.max_text_chars} characters")
    if has_control_chars(question):
        raise UserError("the prompt contains control characters")
    return question


def make_config(settings: dict, num_layers: int, limits: RunLimits) -> UnlearnConfig:
    """UnlearnConfig from the form's values (numbers arrive as floats or None). The form sets the
    fields of SETTING_FIELDS and `early_stop`; LoRA alpha follows the rank (UnlearnConfig.resolved)."""
    default = UnlearnConfig()
    unknown = set(settings) - set(SETTING_FIELDS) - {"early_stop"}
    if unknown:
        raise UserError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    bounds = {"steps": (1, limits.max_steps), "lora_rank": (1, limits.max_lora_rank), "seed": (0, 2**32 - 1),
              "max_new_tokens": (1, limits.max_new_tokens)}
    words = {"steps": "steps", "lora_rank": "LoRA rank", "seed": "seed", "max_new_tokens": "max new tokens"}
    values = {name: bounded_int(settings.get(name, getattr(default, name)), words[name], *bounds[name])
              for name in bounds}
    lr = settings.get("learning_rate")
    try:
        lr = None if lr is None or str(lr).strip() == "" else float(lr)  # empty: the adapter's default
    except (TypeError, ValueError):
        raise UserError("learning rate must be a number") from None
    try:
        layers = parse_layers(settings.get("layers", ""))
    except ValueError as err:
        raise UserError(str(err)) from None
    adapter = str(settings.get("adapter") or default.adapter)
    config = UnlearnConfig(
        method=str(settings.get("method") or default.method), adapter=adapter, learning_rate=lr, layers=layers,
        check_every=default.check_every if settings.get("early_stop", True) else 0, **values)
    try:
        validate_config(config, num_layers, limits)
    except ValueError as err:
        raise UserError(str(err)) from None
    return config


assert set(SETTING_FIELDS) <= {f.name for f in fields(UnlearnConfig)}
