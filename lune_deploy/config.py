"""Per-deployment settings: which hardware a Space targets, its default model and its request limits.

One code base serves a free cpu-basic Space, a paid GPU Space and a ZeroGPU Space; what differs
lives in a small ``deploy.json`` (see ``spaces_config/<target>/deploy.json``) that the space
builder drops next to app.py. Without one, the cpu-basic defaults below apply, so a plain
``python app.py`` on a laptop behaves like the free Space.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from lune_core.config import RunLimits
from lune_core.ids import COMPUTE_DTYPES, EMBEDDED_MODEL, HUB_ID

ENV_CONFIG = "LUNE_DEPLOY_CONFIG"
# Flavours from the Spaces docs / huggingface_hub.SpaceHardware; "zero-a10g" is how ZeroGPU is named.
HARDWARE = frozenset({
    "cpu-basic", "cpu-upgrade", "zero-a10g",
    "t4-small", "t4-medium", "l4x1", "l4x4", "l40sx1", "l40sx4", "l40sx8",
    "a10g-small", "a10g-large", "a10g-largex2", "a10g-largex4",
    "a100-large", "a100x4", "a100x8",
})
# The request limits a deploy.json sets: the RunLimits fields that say within which bounds.
LIMIT_RANGES = {f.name: f.metadata["deploy"] for f in fields(RunLimits) if "deploy" in f.metadata}


@dataclass(frozen=True)
class DeployConfig:
    target: str
    suggested_hardware: str
    default_model: str  # "embedded" or a hub id
    quantize_4bit: bool
    compute_dtype: str  # one of COMPUTE_DTYPES; lune_core.models.resolve_compute_dtype turns it into a dtype
    zero_gpu: bool
    preload_from_hub: tuple[str, ...]
    limits: RunLimits  # the deployment's bounds; the LUNE_MAX_* variables apply on top (with_env)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["preload_from_hub"] = list(self.preload_from_hub)
        data["limits"] = {key: getattr(self.limits, key) for key in LIMIT_RANGES}
        return data


# Must equal spaces_config/cpu-basic/deploy.json (a test checks it).
DEFAULTS: dict[str, Any] = {
    "target": "cpu-basic",
    "suggested_hardware": "cpu-basic",
    "default_model": "embedded",
    "quantize_4bit": True,
    "compute_dtype": "float32",
    "zero_gpu": False,
    "preload_from_hub": [],
    "limits": {
        "max_facts": 10,
        "max_steps": 60,
        "max_new_tokens": 32,
        "max_text_chars": 500,
        "max_general_prompts": 24,
    },
}


def _exact_keys(data: Any, expected: set[str], where: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"deploy config: {where or 'top level'} must be a JSON object")
    prefix = f"{where}." if where else ""
    missing = sorted(expected - set(data))
    if missing:
        raise ValueError(f"deploy config: missing key {prefix}{missing[0]}")
    unknown = sorted(set(data) - expected)
    if unknown:  # a misspelt key would otherwise be silently ignored
        raise ValueError(f"deploy config: unknown key {prefix}{unknown[0]}")


def _typed(data: dict, key: str, kind: type, where: str = "") -> Any:
    value = data[key]
    # bool is an int subclass; true must not pass as 1 step, nor 1 as true.
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise ValueError(f"deploy config: {where}{key} must be a {kind.__name__}, got {value!r}")
    return value


def config_from_dict(data: Any) -> DeployConfig:
    """Validate a parsed deploy.json; any problem -> ValueError naming the offending key."""
    _exact_keys(data, {f for f in DeployConfig.__dataclass_fields__}, "")
    target = _typed(data, "target", str).strip()
    if not target:
        raise ValueError("deploy config: target must not be empty")
    hardware = _typed(data, "suggested_hardware", str)
    if hardware not in HARDWARE:
        raise ValueError(f"deploy config: suggested_hardware {hardware!r} is not a Spaces hardware flavour")
    model = _typed(data, "default_model", str)
    if model != EMBEDDED_MODEL and not HUB_ID.match(model):
        raise ValueError(f"deploy config: default_model must be 'embedded' or a hub id owner/name, got {model!r}")
    quantize = _typed(data, "quantize_4bit", bool)
    dtype = _typed(data, "compute_dtype", str)
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"deploy config: compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {dtype!r}")
    zero_gpu = _typed(data, "zero_gpu", bool)
    if zero_gpu != hardware.startswith("zero-"):
        raise ValueError("deploy config: zero_gpu must be true exactly when suggested_hardware is a zero-* flavour")
    if hardware.startswith("cpu-") and dtype in ("bfloat16", "float16"):
        raise ValueError(f"deploy config: compute_dtype {dtype} is too slow on CPU hardware; use float32 or auto")
    preload = _preload_from_hub(data)
    return DeployConfig(target, hardware, model, quantize, dtype, zero_gpu, preload, _limits(data["limits"]))


def _preload_from_hub(data: dict) -> tuple[str, ...]:
    preload = _typed(data, "preload_from_hub", list)
    for item in preload:
        # Spaces also accept "repo file1,file2 [sha]"; only the repo part is checked here.
        if not isinstance(item, str) or not HUB_ID.match(item.split(" ")[0]):
            raise ValueError(f"deploy config: preload_from_hub entry {item!r} is not a hub id")
    return tuple(preload)


def _limits(data: Any) -> RunLimits:
    _exact_keys(data, set(LIMIT_RANGES), "limits")
    limits = {}
    for key, (lo, hi) in LIMIT_RANGES.items():
        value = _typed(data, key, int, "limits.")
        if not lo <= value <= hi:
            raise ValueError(f"deploy config: limits.{key} must be between {lo} and {hi}, got {value}")
        limits[key] = value
    return RunLimits(**limits)


def default_config() -> DeployConfig:
    return config_from_dict(DEFAULTS)


def load_deploy_config(path: str | os.PathLike | None = None, app_dir: str | os.PathLike | None = None) -> DeployConfig:
    """path, else $LUNE_DEPLOY_CONFIG, else deploy.json in `app_dir` (beside app.py), else the
    cpu-basic defaults."""
    if path is None:
        path = os.environ.get(ENV_CONFIG) or None
    if path is None:
        candidate = Path(app_dir or ".") / "deploy.json"
        if not candidate.is_file():
            return default_config()
        path = candidate
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"deploy config: cannot read {path}: {err.strerror or err}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"deploy config: {path} is not valid JSON (line {err.lineno}: {err.msg})") from None
    return config_from_dict(data)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip() != ""


def running_on_spaces() -> bool:
    """Hugging Face sets SPACE_ID in every Space container."""
    return _flag("SPACE_ID")


def zero_gpu_enabled() -> bool:
    """ZeroGPU hardware sets SPACES_ZERO_GPU; the `spaces` package reads the same variable."""
    value = os.environ.get("SPACES_ZERO_GPU", "").strip().lower()
    # `spaces` treats only 1/t/true as on; match it so both agree about "false" or "0".
    return value in ("1", "t", "true")
