"""The CUDA path, measured: LUNE (LoRA on NF4) against full fine-tuning on a GPU.

Runs `python -m lune_core run` (the same CLI as bench/run_bench.py) on randomly initialised
models of the SmolLM2 architectures (135M, 360M, 1.7B): the GPU machine this was written for
has no network and no room for real weights, so only the cost columns mean anything here
(seconds per step, peak CUDA memory, load time, trainable parameters); the answers are noise.
Writes gpu_results.json and benchmarks_gpu.md into --out.

    python bench/gpu_check.py --tokenizer DIR --out DIR [--archs smollm2-135m smollm2-1.7b]

DIR for --tokenizer: a SmolLM2 tokenizer folder (the embedded model's cache has one).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run_bench import FULL_FT_LR, fact_set, method_args  # noqa: E402

# Published SmolLM2 shapes (vocabulary 49,152, tied embeddings, as the embedded model).
ARCHS = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3),
    "smollm2-360m": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                         num_attention_heads=15, num_key_value_heads=5),
    "smollm2-1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                         num_attention_heads=32, num_key_value_heads=32),
}
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"]


def random_model(arch: str, tokenizer: Path, folder: Path) -> None:
    """A randomly initialised bf16 model of `arch`, saved with the SmolLM2 tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tokenizer)
    for key, value in ARCHS[arch].items():
        setattr(config, key, value)
    config.head_dim = config.hidden_size // config.num_attention_heads
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if (tokenizer / name).is_file():
            shutil.copy(tokenizer / name, folder / name)


def run_cli(model: Path, facts: Path, variant: str, steps: int, report: Path, device: str, robustness: bool) -> dict:
    """`variant`: a method name, or full_ft; a "+ckpt" / "-ckpt" suffix turns activation checkpointing
    on / off (without one, the adapter's default: on for the subject adapter, off otherwise)."""
    method, flag = variant, []
    for suffix, option in (("+ckpt", "--gradient-checkpointing"), ("-ckpt", "--no-gradient-checkpointing")):
        if variant.endswith(suffix):
            method, flag = variant[: -len(suffix)], [option]
    cmd = [sys.executable, "-m", "lune_core", "run", "--model", str(model), "--facts", str(facts),
           "--steps", str(steps), "--no-early-stop", "--general-limit", "16", "--device", device,
           "--out", str(report)] + method_args(method, robustness) + flag
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    row = {"method": variant, "exit": done.returncode, "process_seconds": round(time.perf_counter() - started, 1)}
    if done.returncode != 0 or not report.is_file():
        row["error"] = (done.stderr or done.stdout)[-3000:]
        return row
    data = json.loads(report.read_text())
    m = data["metrics"]
    row.update({k: m.get(k) for k in ("trainable_params", "total_params", "steps_run", "seconds_per_step",
                                      "train_seconds", "peak_memory_mb", "relearn_leak_rate", "requant_leak_rate")})
    row.update(load_seconds=data["model"]["load_seconds"], weights_mb=data["model"]["memory_mb"],
               quantization=data["model"]["quantization"], compute_dtype=data["model"]["compute_dtype"],
               run_wall_seconds=data["wall_seconds"], step_log=[s["seconds"] for s in data["steps"]])
    later = row["step_log"][1:]  # the first step also pays for CUDA's warm-up
    row["warm_seconds_per_step"] = round(sum(later) / len(later), 4) if later else None
    return row


def device_name(device: str) -> str:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "CPU"


def _ratio(row: dict, ft: dict | None, key: str) -> str:
    """`row`'s figure over full fine-tuning's of the same shape; blank for full_ft itself."""
    return f"{row[key] / ft[key]:.2f}" if row["method"] != "full_ft" and ft and ft[key] else ""


def write(out: Path, meta: dict, rows: list[dict]) -> None:
    (out / "gpu_results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = ["# Benchmarks on a GPU (CUDA path)", "",
             f"Generated by `python bench/gpu_check.py`; {meta['date']}; {meta['device']}; torch {meta['torch']}, "
             f"transformers {meta['transformers']}, peft {meta['peft']}, bitsandbytes {meta['bitsandbytes']}.", "",
             "**Randomly initialised weights** of the SmolLM2 shapes (no network and no room for real weights on "
             "that machine): the cost columns are real, the answers are noise, so no quality column is shown. "
             f"3 facts, {meta['steps']} steps without early stop, 16 general questions. `lune`: NF4 4-bit weights, "
             "bf16 compute, the default adapter (the subject's token embeddings); `lune_lora`: the same with LoRA on "
             "the middle layers. Activation checkpointing: the default (on for `lune`, off for the others) "
             "unless `+ckpt` (on) or `-ckpt` (off). `full_ft`: all weights "
             f"in bf16, AdamW at {FULL_FT_LR}, `lune_replace` loss. Peak memory: CUDA allocator peak during training. "
             "s/step after warm-up: steps 2 to the last (the first pays for CUDA's warm-up). Ratios: to `full_ft` "
             "of the same shape, steps after warm-up.", "",
             "| model shape | method | trainable params | s/step | s/step after warm-up | train s | peak MB "
             "| weights MB | load s | mem / FT | step time / FT |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ft = next((r for r in rows if r["arch"] == row["arch"] and r["method"] == "full_ft" and "error" not in r), None)
        if "error" in row:
            lines.append(f"| {row['arch']} | {row['method']} | failed (exit {row['exit']}) | | | | | | | | |")
            continue
        lines.append(f"| {row['arch']} | {row['method']} | {row['trainable_params']:,} | {row['seconds_per_step']:.3f} "
                     f"| {row['warm_seconds_per_step']:.3f} | {row['train_seconds']:.1f} | {row['peak_memory_mb']:.0f} "
                     f"| {row['weights_mb']:.0f} | {row['load_seconds']:.1f} | {_ratio(row, ft, 'peak_memory_mb')} "
                     f"| {_ratio(row, ft, 'warm_seconds_per_step')} |")
    (out / "benchmarks_gpu.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    import torch
    import transformers
    import peft
    import bitsandbytes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--archs", nargs="*", default=list(ARCHS))
    parser.add_argument("--methods", nargs="*", default=["lune", "lune-ckpt", "lune_lora", "lune_lora+ckpt", "full_ft"],
                        help="methods, full_ft, or a method with +ckpt / -ckpt (activation checkpointing on / off)")
    parser.add_argument("--robustness", action="store_true", help="also run both attacks after each LoRA run")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "device": device_name(args.device), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "bitsandbytes": bitsandbytes.__version__, "steps": args.steps, "robustness": args.robustness}
    print(json.dumps(meta), flush=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    os.environ["LUNE_MODEL_ROOTS"] = str(work)  # the CLI loads local folders only from allowed roots
    facts = work / "facts.jsonl"
    facts.write_text("".join(json.dumps(f) + "\n" for f in fact_set(3)))
    rows = []
    for arch in args.archs:
        folder = work / arch
        started = time.perf_counter()
        random_model(arch, args.tokenizer, folder)
        print(f"{arch}: random model saved in {time.perf_counter() - started:.1f}s", flush=True)
        for method in args.methods:
            report = work / f"{arch}-{method}.json"
            row = {"arch": arch, **run_cli(folder, facts, method, args.steps, report, args.device, args.robustness)}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "step_log"}), flush=True)
            write(args.out, meta, rows)  # after every run: a cut-off session keeps what it measured
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
