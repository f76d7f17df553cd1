"""Benchmark: every method on the same facts, seeds and probes, plus full fine-tuning.

Each run is one `python -m lune_core run` subprocess (the CLI is the contract), so peak memory
is measured per run and not inherited from the previous one. Writes bench/results.json,
docs/benchmarks.md and docs/forget_vs_retention.html.

    python bench/run_bench.py            # the full grid (several hours on a 2-core CPU)
    python bench/run_bench.py --quick    # a few minutes: a smoke test of the whole pipeline
    python bench/run_bench.py --resume   # keep finished runs of an interrupted (or smaller) grid
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lune_core.config import DEFAULT_LEARNING_RATES, UnlearnConfig  # noqa: E402
from lune_core.facts import read_jsonl  # noqa: E402
from lune_core.runner import load_general  # noqa: E402

METHODS = ["lune", "lune_lora", "lune_replace", "lune_suppress", "grad_ascent", "npo", "simnpo", "full_ft"]
FULL_FT_LR = DEFAULT_LEARNING_RATES["full"]  # the engine's own default, passed explicitly for the record
METRICS = ["forget_success", "paraphrase_success", "general_retention", "degenerate_rate", "answer_logprob_drop",
           "degenerate_rate_before", "trainable_params", "seconds_per_step", "train_seconds", "peak_memory_mb",
           "steps_run", "relearn_leak_rate", "requant_leak_rate"]
# Facts not used while tuning the defaults (those were France, gold, Romeo and Juliet and Hamlet).
FACT_PICKS = [("capitals", 1), ("science_symbols", 0), ("authors", 1), ("capitals", 3), ("science_symbols", 4),
              ("authors", 4), ("capitals", 6), ("science_symbols", 7), ("authors", 6), ("capitals", 8)]


def fact_set(n: int) -> list[dict]:
    return [read_jsonl(ROOT / "assets" / "presets" / f"{name}.jsonl")[i] for name, i in FACT_PICKS[:n]]


# What a benchmark method sets in the engine's config beyond its loss name; the CLI arguments of a
# run and the check that a saved run is the same (--resume) both come from here.
VARIANTS = {
    # LUNE's loss on LoRA adapters over the middle layers (the default until the subject-token
    # adapter): what the choice of adapter alone changes
    "lune_lora": {"method": "lune", "adapter": "lora"},
    # full fine-tuning of all (full-precision) weights with LUNE's replacement loss. All weights at
    # LoRA's 1e-3 turn the model into gibberish within 10 steps (seen here).
    "full_ft": {"method": "lune_replace", "full_finetune": True, "learning_rate": FULL_FT_LR},
}


def method_settings(method: str) -> dict:
    """The config fields a run of this benchmark method has: a loss of the registry, lune_lora or full_ft."""
    return {"adapter": UnlearnConfig.adapter, "full_finetune": False, "method": method, **VARIANTS.get(method, {})}


def method_args(method: str, robustness: bool) -> list[str]:
    """CLI arguments for a benchmark method."""
    s = method_settings(method)
    if s["full_finetune"]:  # the attacks need an adapter: not for full fine-tuning
        return ["--method", s["method"], "--full-precision", "--lr", str(s["learning_rate"])]
    return ["--method", s["method"], "--adapter", s["adapter"]] + (["--robustness"] if robustness else [])


def run_one(method: str, facts: list[dict], seed: int, steps: int, general_limit: int | None, out: Path) -> dict:
    facts_path = out.with_suffix(".facts.jsonl")
    facts_path.write_text("".join(json.dumps(f) + "\n" for f in facts), encoding="utf-8")
    cmd = [sys.executable, "-m", "lune_core", "run", "--facts", str(facts_path), "--seed", str(seed),
           "--steps", str(steps), "--out", str(out)] + method_args(method, robustness=True)
    if general_limit:
        cmd += ["--general-limit", str(general_limit)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{method} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.read_text())["metrics"]


def finished_run(out: Path, method: str, facts: list[dict], seed: int, steps: int, general_count: int) -> dict | None:
    """The saved output of a run with exactly these settings, or None: what --resume may keep."""
    try:
        saved = json.loads(out.read_text())
        config, metrics = saved["config"], saved["metrics"]
    except (OSError, ValueError, KeyError):
        return None
    settings = dict(method_settings(method), seed=seed, steps=steps)
    same = (all(config.get(key) == value for key, value in settings.items())
            and [(f["question"], f["answer"], f.get("replacement")) for f in saved.get("facts", [])]
            == [(f["question"], f["answer"], f.get("replacement")) for f in facts]
            and sum(p["kind"] == "general" for p in saved.get("probes", [])) == general_count
            and (config.get("full_finetune") or saved.get("robustness") is not None))
    return {"metrics": metrics, "created": saved.get("created")} if same else None


def aggregate(values: list) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "spread": None}
    return {"mean": round(statistics.mean(values), 4),
            "spread": round(statistics.pstdev(values), 4) if len(values) > 1 else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 and 3 facts, lune vs full fine-tuning")
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument("--facts", nargs="*", type=int, default=None, help="fact-set sizes (default 1 3 10)")
    parser.add_argument("--seeds", nargs="*", type=int, default=None)
    parser.add_argument("--first-seed-only", nargs="*", type=int, default=[], metavar="SIZE",
                        help="fact-set sizes run with the first seed only (the table gives each row's seeds)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--general-limit", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    parser.add_argument("--docs", default=str(ROOT / "docs"))
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs saved beside --out (in out/) with the same settings; the table says "
                        "which. Only settings are compared, not code: do not resume across a change to lune_core")
    args = parser.parse_args()
    methods = args.methods or (["lune", "full_ft"] if args.quick else METHODS)
    sizes = args.facts or ([1, 3] if args.quick else [1, 3, 10])
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    general_limit = args.general_limit or (16 if args.quick else None)
    steps = min(args.steps, 10) if args.quick else args.steps

    work = Path(args.out).resolve().parent / "out"  # each run's full output, beside the results
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results, reused = [], []
    general_count = len(load_general(limit=general_limit))
    for n in sizes:
        facts = fact_set(n)
        for method in methods:
            runs = []
            for seed in seeds[:1] if n in args.first_seed_only else seeds:
                out = work / f"{method}-{n}-{seed}.json"
                kept = finished_run(out, method, facts, seed, steps, general_count) if args.resume else None
                if kept:
                    metrics = kept["metrics"]
                    reused.append({"method": method, "facts": n, "seed": seed, "created": kept["created"]})
                else:
                    metrics = run_one(method, facts, seed, steps, general_limit, out)
                runs.append(metrics)
                print(f"{method:14s} facts={n:2d} seed={seed} {'kept' if kept else 'ran '} " + " ".join(
                    f"{k}={metrics.get(k)}" for k in METRICS[:5]), flush=True)
            results.append({"method": method, "facts": n, "runs": runs,
                            "summary": {k: aggregate([r.get(k) for r in runs]) for k in METRICS}})
    for row in results:  # ratios to full fine-tuning measured in this same run
        ft = next((r for r in results if r["method"] == "full_ft" and r["facts"] == row["facts"]), None)
        if ft is None:
            continue
        ratio = {}
        for key in ("peak_memory_mb", "seconds_per_step", "trainable_params"):
            a, b = row["summary"][key]["mean"], ft["summary"][key]["mean"]
            ratio[key] = round(a / b, 4) if a is not None and b else None
        a, b = row["summary"]["forget_success"]["mean"], ft["summary"]["forget_success"]["mean"]
        ratio["forget_success_gap"] = round(a - b, 4) if a is not None and b is not None else None
        row["vs_full_ft"] = ratio
    meta = environment(args.quick, seeds, sizes, steps, general_limit, time.time() - started)
    meta["first_seed_only"] = [n for n in sizes if n in args.first_seed_only]
    meta["reused_runs"] = reused
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2), encoding="utf-8")
    write_docs(Path(args.docs), meta, results)
    print(f"wrote {args.out} and {args.docs}/benchmarks.md in {time.time() - started:.0f}s")


def environment(quick, seeds, sizes, steps, general_limit, seconds) -> dict:
    import torch
    import transformers
    import peft
    import bitsandbytes

    return {"date": time.strftime("%Y-%m-%d"), "quick": quick, "seeds": seeds, "fact_sets": sizes,
            "max_steps": steps, "general_limit": general_limit, "machine": f"{cpu_name()}, "
            f"{__import__('os').cpu_count()} CPU cores, {platform.system()}", "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "bitsandbytes": bitsandbytes.__version__, "wall_seconds": round(seconds)}


def cpu_name() -> str:
    """The CPU's model name: step times differ several-fold between CPUs of the same core count."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


TARGETS = {"forget_success": (">=", 0.95), "paraphrase_success": (">=", 0.85), "general_retention": (">=", 0.95),
           "degenerate_rate": ("<=", 0.05)}


def _fmt(cell: dict, digits: int = 2) -> str:
    if cell["mean"] is None:
        return "n/a"
    if cell["spread"]:
        return f"{cell['mean']:.{digits}f} ± {cell['spread']:.{digits}f}"
    return f"{cell['mean']:.{digits}f}"


def _first_seed_only(meta: dict) -> str:
    sizes = meta.get("first_seed_only")
    return f" (the first only at {', '.join(map(str, sizes))} facts)" if sizes else ""


def _reused(meta: dict) -> str:
    runs = meta.get("reused_runs")
    if not runs:
        return ""
    groups: dict[int, dict[int, list[str]]] = {}
    for r in runs:
        groups.setdefault(r["facts"], {}).setdefault(r["seed"], []).append(r["method"])
    kept = "; ".join(f"{n} facts seed {seed} ({'every method' if set(ms) >= set(METHODS) else ', '.join(ms)})"
                     for n, by_seed in groups.items() for seed, ms in by_seed.items())
    created = sorted(r["created"] or "?" for r in runs)
    return (f" (this invocation's; {len(runs)} runs, made {created[0]} to {created[-1]}, were kept from an "
            f"earlier one with `--resume`: {kept})")


def write_docs(folder: Path, meta: dict, results: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["# Benchmarks", "", "Generated by `python bench/run_bench.py"
             + (" --quick" if meta["quick"] else "") + (" --resume" if meta.get("reused_runs") else "")
             + "`; do not edit by hand.", "",
             f"- date {meta['date']}; {meta['machine']}; Python {meta['python']}, torch {meta['torch']}, "
             f"transformers {meta['transformers']}, peft {meta['peft']}, bitsandbytes {meta['bitsandbytes']}",
             "- model: embedded SmolLM2-135M-Instruct, NF4 4-bit (full_ft: full precision fp32, all weights)",
             f"- seeds {meta['seeds']}{_first_seed_only(meta)}, fact sets {meta['fact_sets']}, at most "
             f"{meta['max_steps']} steps (early stop on), general set limit {meta['general_limit'] or 'all'}; "
             f"wall time {meta['wall_seconds']} s" + _reused(meta),
             "- peak MB: during training; the process's resident high-water mark (VmHWM) on CPU, so it "
             "includes the interpreter and the loaded weights; the allocator's peak on CUDA",
             "", "| facts | method | seeds | forget | paraphrase | retention | degenerate (before) "
             "| logprob drop | trainable params | s/step | train s | peak MB | mem / FT | step time / FT "
             "| relearn leak | requant leak |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in results:
        s, v = row["summary"], row.get("vs_full_ft", {})
        lines.append("| " + " | ".join([
            str(row["facts"]), row["method"], str(len(row["runs"])), _fmt(s["forget_success"]),
            _fmt(s["paraphrase_success"]), _fmt(s["general_retention"]),
            f"{_fmt(s['degenerate_rate'])} ({_fmt(s['degenerate_rate_before'])})", _fmt(s["answer_logprob_drop"]),
            f"{int(s['trainable_params']['mean'] or 0):,}", _fmt(s["seconds_per_step"]), _fmt(s["train_seconds"], 1),
            _fmt(s["peak_memory_mb"], 0), str(v.get("peak_memory_mb", "")), str(v.get("seconds_per_step", "")),
            _fmt(s["relearn_leak_rate"]), _fmt(s["requant_leak_rate"])]) + " |")
    lines += ["", "## Targets (3 facts, `lune`, default settings)", ""]
    lune3 = next((r for r in results if r["method"] == "lune" and r["facts"] == 3), None)
    if lune3 is None:
        lines.append("- not measured: this table has no 3-fact `lune` run")
    else:
        s = lune3["summary"]
        for key, (op, bound) in TARGETS.items():
            value = s[key]["mean"]
            ok = value is not None and (value >= bound if op == ">=" else value <= bound)
            lines.append(f"- {key} {op} {bound}: {value} — {'met' if ok else 'MISSED'}")
        train = s["train_seconds"]["mean"]
        lines.append(f"- train time <= 45 s: {train} — {'met' if train is not None and train <= 45 else 'MISSED'}")
        v = lune3.get("vs_full_ft", {})
        for key, bound in (("peak_memory_mb", 0.5), ("seconds_per_step", 0.6)):
            value = v.get(key)
            lines.append(f"- {key} ratio to full FT <= {bound}: {value} — "
                         f"{'met' if value is not None and value <= bound else 'MISSED'}")
        gap = v.get("forget_success_gap")
        lines.append(f"- forget_success within 0.05 of full FT: gap {gap} — "
                     f"{'met' if gap is not None and abs(gap) <= 0.05 else 'MISSED'}")
    lines += ["", "Notes on each method are in the section below, written after reading this table.", ""]
    notes = folder / "benchmarks_notes.md"
    if notes.exists():
        lines += [notes.read_text(encoding="utf-8")]
    (folder / "benchmarks.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    chart(folder / "forget_vs_retention.html", results)


def chart(path: Path, results: list[dict]) -> None:
    import plotly.graph_objects as go

    fig = go.Figure()
    for method in dict.fromkeys(r["method"] for r in results):
        rows = [r for r in results if r["method"] == method]
        fig.add_trace(go.Scatter(
            x=[r["summary"]["general_retention"]["mean"] for r in rows],
            y=[r["summary"]["forget_success"]["mean"] for r in rows],
            text=[f"{r['facts']} facts" for r in rows], mode="markers+text", name=method, textposition="top center"))
    fig.update_layout(title="Forget success vs general retention (mean over seeds)",
                      xaxis_title="general_retention", yaxis_title="forget_success")
    fig.write_html(path, include_plotlyjs="cdn")


if __name__ == "__main__":
    main()
