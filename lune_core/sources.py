"""Where a model comes from: what the user typed, checked (the embedded model, an allowed local folder or a
hub id; never remote code), and its config read before any weight."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .embedded import cache_dir, embedded_model_dir
from .errors import ModelLoadError
from .hub import hub_kwargs
from .ids import EMBEDDED_MODEL, EMBEDDED_NAME, EMBEDDED_PACKAGE, HUB_ID, has_control_chars


MAX_MODEL_ID_CHARS = 300


def allowed_local_roots() -> list[Path]:
    """Local model folders may only come from here (LUNE_MODEL_ROOTS, os.pathsep-separated)."""
    roots = os.environ.get("LUNE_MODEL_ROOTS", "")
    return [Path(r).resolve() for r in roots.split(os.pathsep) if r] + [cache_dir().resolve()]


def shown(text: str, width: int = 60) -> str:
    """What the user typed, quoted and cut short, for a message."""
    return repr(text if len(text) <= width else text[: width - 3] + "...")


def resolve_source(model_id: str) -> tuple[str, str]:
    """Map what the user typed to (path or hub id, display name); refuse anything else.

    Anything that names an existing file or folder counts as a local path, even when it looks
    like owner/name: transformers would read it from disk, so it must lie under an allowed root."""
    if not isinstance(model_id, (str, type(None))):
        raise ModelLoadError("the model id must be text")
    model_id = (model_id or "").strip()
    if model_id in ("", EMBEDDED_MODEL, EMBEDDED_NAME):
        if importlib.util.find_spec(EMBEDDED_PACKAGE) is None:
            # A Space pushed as-is has no wheel but has the hub: fetch the same model from there.
            return EMBEDDED_NAME, EMBEDDED_NAME
        return str(embedded_model_dir()), EMBEDDED_NAME
    if len(model_id) > MAX_MODEL_ID_CHARS:
        raise ModelLoadError(f"{shown(model_id)} is too long for a model id or folder")
    if has_control_chars(model_id, allowed=""):
        raise ModelLoadError(f"{shown(model_id)} contains control characters")
    looks_local = model_id.startswith(("/", ".", "~")) or "\\" in model_id or ".." in model_id
    if looks_local or Path(model_id).exists():
        path = Path(model_id).expanduser().resolve()
        if not any(path == root or root in path.parents for root in allowed_local_roots()):
            raise ModelLoadError(f"local path {shown(model_id)} is outside the allowed model folders "
                                 "(set LUNE_MODEL_ROOTS)")
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"no model (config.json) found in {shown(model_id)}")
        return str(path), path.name
    if not HUB_ID.match(model_id):
        raise ModelLoadError(f"{shown(model_id)} is not a model id of the form owner/name")
    return model_id, model_id


def load_config(model_id: str = EMBEDDED_MODEL):
    """The model's config alone (no weights): checks the id, the folder and that no remote code is
    needed, so a bad model costs a second, not a download."""
    source, _ = resolve_source(model_id)
    return model_config(source, model_id)


def model_config(source: str, model_id: str, hub: dict | None = None):
    from transformers import AutoConfig

    hub = hub or hub_kwargs(source)
    try:
        config = AutoConfig.from_pretrained(source, **hub)
    except OSError as err:
        raise ModelLoadError(explain_missing(model_id, err, hub["local_files_only"])) from None
    except ValueError as err:  # e.g. an architecture that needs remote code
        raise ModelLoadError(explain_invalid(model_id, err)) from None
    if getattr(config, "auto_map", None) and config.model_type not in _known_model_types():
        raise ModelLoadError(f"{shown(model_id)} needs trust_remote_code, which this app never enables")
    return config


def _known_model_types() -> set[str]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return set(CONFIG_MAPPING_NAMES)


def explain_missing(model_id: str, err: Exception, offline: bool) -> str:
    """`offline`: the load already found the hub out of reach (hub_reachable), not asked again here."""
    text = str(err)
    if offline or os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in text.lower() or "connect" in text.lower():
        return (f"{shown(model_id)} is not on this machine and the model hub is out of reach, so it cannot be "
                "checked: is the id spelled owner/name as on the hub? The embedded model works offline")
    if "401" in text or "gated" in text.lower():
        return f"{shown(model_id)} is gated or private: set HF_TOKEN in the environment"
    return f"model {shown(model_id)} was not found"


def explain_invalid(model_id: str, err: Exception) -> str:
    """One short line: transformers' messages can list every known architecture."""
    text = str(err)
    if "trust_remote_code" in text:
        return f"{shown(model_id)} needs trust_remote_code, which this app never enables"
    first = text.splitlines()[0].split(". ")[0] if text else type(err).__name__
    return f"cannot load {shown(model_id)}: {first[:200]}"
