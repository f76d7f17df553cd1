"""Loading a causal LM in 4-bit NF4 (or full precision) from the embedded GGUF, a local path or a hub id
(lune_core.sources says which), on the device it will run on."""
from __future__ import annotations

import importlib.metadata
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .embedded import cache_dir, embedded_model_dir
from .errors import ModelLoadError
from .hub import hub_kwargs
from .ids import COMPUTE_DTYPES, EMBEDDED_MODEL
from .memory import free_memory
from .sources import explain_invalid, explain_missing, model_config, resolve_source


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


def load_model(model_id: str = EMBEDDED_MODEL, quantize: bool = True, device: str | None = None,
               compute_dtype: torch.dtype | None = None) -> LoadedModel:
    """Load a model for unlearning; errors come back as ModelLoadError with a readable message."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    start = time.perf_counter()
    device = pick_device(device)
    source, display = resolve_source(model_id)
    dtype = compute_dtype or resolve_compute_dtype("auto", device)
    common = hub_kwargs(source)
    model_config(source, model_id, common)

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
        raise ModelLoadError(explain_missing(model_id, err, common["local_files_only"])) from None
    except (ValueError, RuntimeError, ImportError) as err:
        raise ModelLoadError(explain_invalid(model_id, err)) from None
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
