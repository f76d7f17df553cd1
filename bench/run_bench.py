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

from lune_core.config import ALL_PROJECTIONS, DEFAULT_LEARNING_RATES, UnlearnConfig  # noqa: E402
from lune_core.evaluation import flat_figures  # noqa: E402
from lune_core.facts import read_jsonl  # noqa: E402
from lune_core.runner import load_general  # noqa: E402

METHODS = ["lune", "lune_null", "lune_gated", "lune_ungated", "lune_subject", "paper_recipe", "lune_misdirect",
           "lune_suppress", "grad_ascent", "npo", "simnpo", "full_ft"]
FULL_FT_LR = DEFAULT_LEARNING_RATES["full"]  # the engine's own default, passed explicitly for the record
METRICS = ["forget_success", "forget_clean", "paraphrase_success", "reworded_success", "adversarial_success",
           "neighbour_retention", "neighbour_agreement", "general_retention", "paraphrase_same_words",
           "paraphrase_other_words", "paraphrase_other_language", "neighbour_retention_same_answer", "spilled_answers",
           "fluency_before", "fluency_spread", "fluency_after", "lens_top10_layers_before", "lens_top10_layers_after",
           "answer_still_inside", "stock_forget_success", "stock_paraphrase_success", "stock_paraphrase_other_words",
           "stock_neighbour_retention", "stock_general_retention", "degenerate_rate",
           "answer_logprob_drop", "degenerate_rate_before", "truth_ratio_before", "truth_ratio_after",
           "trainable_params", "seconds_per_step", "train_seconds", "peak_memory_mb", "steps_run",
           "relearn_leak_rate", "requant_leak_rate"]
# Two fact sets, never mixed. "heldout": facts nobody tuned anything on (the figures to quote).
# "dev": the facts settings may be tuned on (France, gold and Hamlet were the earlier sessions' tuning
# facts). Each fact's curated neighbours (assets/neighbours.jsonl) come with it.
FACT_SETS = {
    "heldout": [("capitals", 1), ("science_symbols", 0), ("authors", 1), ("capitals", 3), ("science_symbols", 4),
                ("authors", 4), ("capitals", 6), ("science_symbols", 7), ("authors", 6), ("capitals", 8)],
    "dev": [("capitals", 0), ("science_symbols", 3), ("authors", 0), ("capitals", 2), ("science_symbols", 1),
            ("authors", 2), ("capitals", 5), ("science_symbols", 6), ("authors", 8), ("capitals", 9)],
    # three more development facts (the dev set's 4th-6th), so a trial is tuned on more than three
    "dev_b": [("capitals", 2), ("science_symbols", 1), ("authors", 2)],
    # and three of another kind (the Pope, Germany's currency, Microsoft's CEO: answers now outdated)
    "dev_c": [("outdated_facts", 0), ("outdated_facts", 3), ("outdated_facts", 6)],
    # Facts no session had run before the answer gate was built (sixteenth session): the shipped presets'
    # facts in no other set. Never tuned on, never read probe by probe; "heldout" above had been run by
    # several candidates before, so the gate's figures are quoted on both.
    "fresh": [("capitals", 4), ("science_symbols", 2), ("authors", 3), ("capitals", 7),
              ("science_symbols", 5), ("authors", 5), ("science_symbols", 8), ("authors", 7),
              ("science_symbols", 9), ("authors", 9)],
}
FACT_PICKS = FACT_SETS["heldout"]
UNTUNED = ("heldout", "fresh")  # the sets the targets are read on


def fact_set(n: int, name: str = "heldout") -> list[dict]:
    return [read_jsonl(ROOT / "assets" / "presets" / f"{preset}.jsonl")[i] for preset, i in FACT_SETS[name][:n]]


# What a benchmark method sets in the engine's config beyond its loss name; the CLI arguments of a
# run and the check that a saved run is the same (--resume) both come from here.
# The settings the plain LoRA default changed (eighteenth session), as they were before it.
_BEFORE = {"layer_band": (0.5, 1.0), "target_modules": ALL_PROJECTIONS, "answer_holds": 0, "retain_per_row": False,
           "null_space": 0.0}
VARIANTS = {
    # The answer gate (lune_core.gate), the default of sessions 16-17: LoRA on every projection of the upper
    # half, its update applied only where the base is about to state a forgotten answer. An output guard
    # that needs its own code at inference.
    "lune_gated": {"method": "lune", "adapter": "gated", **_BEFORE},
    # Plain LoRA as it was before the eighteenth session: the gate's layers, a KL on the facts' neighbours
    # and anchors, no answer holds. What the default's changes alone bring.
    "lune_ungated": {"method": "lune", "adapter": "lora", **_BEFORE},
    # The default with the null-space constraint (lune_core.null_space): LoRA's A kept out of the directions
    # holding 90 % of what the shipped retain prompts and the KL's anchors feed each projection; with the
    # whole-name splice, as it was measured (nineteenth session).
    "lune_null": {"method": "lune", "adapter": "lora", "null_space": 0.9, "whole_name": True},
    # LUNE's loss on the subject's token embeddings instead of LoRA (the default of sessions 6-8):
    # what the choice of adapter alone changes
    "lune_subject": {"method": "lune", "adapter": "subject"},
    # full fine-tuning of all (full-precision) weights with LUNE's loss. All weights at LoRA's 1e-3
    # turn the model into gibberish within 10 steps (seen here).
    "full_ft": {"method": "lune", "adapter": "full", "learning_rate": FULL_FT_LR},
    # The paper's recipe as a public reimplementation reads it: LoRA r16, alpha 16, dropout 0.05 on
    # every projection of every layer, AdamW 2e-4, NLL on the negative examples only (no retain term).
    "paper_recipe": {"method": "lune", "adapter": "lora", "lora_rank": 16, "lora_alpha": 16,
                     "target_modules": ALL_PROJECTIONS, "answer_holds": 0, "retain_per_row": False,
                     "lora_dropout": 0.05, "layer_band": (0.0, 1.0), "learning_rate": 2e-4, "retain_weight": 0.0,
                     "neighbour_anchors": 0, "null_space": 0.0},
    # The field's baselines as the field runs them: plain LoRA (no gate), their losses as published.
    "grad_ascent": {"method": "grad_ascent"},
    "npo": {"method": "npo"},
    "simnpo": {"method": "simnpo"},
}
# Settings that the CLI takes through `--set FIELD=VALUE` rather than a flag of their own.
_SET_FIELDS = ("lora_alpha", "lora_dropout", "layer_band", "target_modules", "retain_weight", "lora_rank",
               "neighbour_anchors", "answer_holds", "retain_per_row", "null_space", "whole_name")
# Settings added after some saved runs were made: absent from such a run's config, they were off.
_ADDED_LATER = {"answer_holds": 0, "retain_per_row": False, "null_space": 0.0, "whole_name": False}


def method_settings(method: str) -> dict:
    """The config fields a run of this benchmark method has: a loss of the registry, lune_lora or full_ft."""
    return {"adapter": UnlearnConfig.adapter, "method": method, **VARIANTS.get(method, {})}


def method_args(method: str, robustness: bool) -> list[str]:
    """CLI arguments for a benchmark method."""
    s = method_settings(method)
    if s["adapter"] == "full":  # the attacks need an adapter: not for full fine-tuning
        return ["--method", s["method"], "--adapter", "full", "--lr", str(s["learning_rate"])]
    args = ["--method", s["method"], "--adapter", s["adapter"]]
    if "learning_rate" in s:
        args += ["--lr", str(s["learning_rate"])]
    for key in _SET_FIELDS:
        if key in s:
            value = ",".join(map(str, s[key])) if isinstance(s[key], tuple) else str(s[key])
            args += ["--set", f"{key}={value}"]
    return args + (["--robustness"] if robustness else [])


def run_one(method: str, facts: list[dict], seed: int, steps: int, general_limit: int | None, out: Path,
            robustness: bool = True) -> dict:
    facts_path = out.with_suffix(".facts.jsonl")
    facts_path.write_text("".join(json.dumps(f) + "\n" for f in facts), encoding="utf-8")
    cmd = [sys.executable, "-m", "lune_core", "run", "--facts", str(facts_path), "--seed", str(seed),
           "--steps", str(steps), "--out", str(out)] + method_args(method, robustness)
    if general_limit:
        cmd += ["--general-limit", str(general_limit)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{method} failed: {done.stderr.strip().splitlines()[-1:]}")
    return flat_figures(json.loads(out.read_text())["metrics"])


def finished_run(out: Path, method: str, facts: list[dict], seed: int, steps: int, general_count: int,
                 robustness: bool = True) -> dict | None:
    """The saved output of a run with exactly these settings, or None: what --resume may keep."""
    try:
        saved = json.loads(out.read_text())
        config, metrics = saved["config"], saved["metrics"]
        if config.pop("full_finetune", False):  # saved before full fine-tuning became adapter "full"
            config["adapter"] = "full"
        if config.pop("gate", False) and config["adapter"] == "lora":  # saved before the gate became "gated"
            config["adapter"] = "gated"
    except (OSError, ValueError, KeyError):
        return None
    settings = dict(method_settings(method), seed=seed, steps=steps)
    # the settings added later as this method resolves them now: a run saved before one was added had it off
    resolved = UnlearnConfig(**settings).resolved()
    settings.update({key: getattr(resolved, key) for key in _ADDED_LATER})
    same = (all(config.get(key, _ADDED_LATER.get(key)) == (list(value) if isinstance(value, tuple) else value)
                for key, value in settings.items())
            and [(f["question"], f["answer"], f.get("replacement")) for f in saved.get("facts", [])]
            == [(f["question"], f["answer"], f.get("replacement")) for f in facts]
            and sum(p["kind"] == "general" for p in saved.get("probes", [])) == general_count
            and (config["adapter"] == "full" or not robustness or saved.get("robustness") is not None))
    return {"metrics": flat_figures(metrics), "created": saved.get("created")} if same else None


def aggregate(values: list) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "spread": None}
    return {"mean": round(statistics.mean(values), 4),
            "spread": round(statistics.pstdev(values), 4) if len(values) > 1 else 0.0}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 and 3 facts, lune vs full fine-tuning")
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument("--facts", nargs="*", type=int, default=None, help="fact-set sizes (default 1 3 10)")
    parser.add_argument("--seeds", nargs="*", type=int, default=None)
    parser.add_argument("--first-seed-only", nargs="*", type=int, default=[], metavar="SIZE",
                        help="fact-set sizes run with the first seed only (the table gives each row's seeds)")
    parser.add_argument("--only-saved", action="store_true",
                        help="with --resume: build the table from the saved runs alone, leaving out any not made")
    parser.add_argument("--first-seed-only-methods", nargs="*", default=[], metavar="METHOD",
                        help="methods run with the first seed only (the table gives each row's seeds)")
    parser.add_argument("--sets", nargs="*", default=None, choices=list(FACT_SETS),
                        help="fact sets (default: heldout, fresh and dev; --quick: heldout; dev_b, dev_c: trials only)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--no-robustness", action="store_true",
                        help="skip the relearning and re-quantization attacks (their columns read n/a)")
    parser.add_argument("--general-limit", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    parser.add_argument("--docs", default=str(ROOT / "docs"))
    parser.add_argument("--resume", action="store_true",
                        help="keep the runs saved beside --out (in out/) with the same settings; the table says "
                        "which. Only settings are compared, not code: do not resume across a change to lune_core")
    parser.add_argument("--keep-rows", action="store_true",
                        help="keep the rows of the existing --out that this invocation does not run (a method, "
                        "set and size not asked for): the table names them and the date they were measured")
    return parser.parse_args()


def measure(args, sets, methods, sizes, seeds, steps, general_limit, work: Path, stamp: str) -> tuple[list, list]:
    """A result row per set, size and method (its seeds' runs, run now or kept from a saved run), and the
    saved runs reused."""
    results, reused = [], []
    general_count = len(load_general(limit=general_limit))
    for name in sets:
        for n in sizes:
            facts = fact_set(n, name)
            for method in methods:
                runs = []
                one = n in args.first_seed_only or method in args.first_seed_only_methods
                for seed in seeds[:1] if one else seeds:
                    out = work / f"{method}-{name}-{n}-{seed}.json"
                    kept = (finished_run(out, method, facts, seed, steps, general_count, not args.no_robustness)
                            if args.resume else None)
                    if kept:
                        metrics = kept["metrics"]
                        reused.append({"method": method, "set": name, "facts": n, "seed": seed,
                                       "created": kept["created"]})
                    elif args.only_saved:
                        continue
                    else:
                        metrics = run_one(method, facts, seed, steps, general_limit, out, not args.no_robustness)
                    runs.append(metrics)
                    print(f"{method:14s} {name:7s} facts={n:2d} seed={seed} {'kept' if kept else 'ran '} " + " ".join(
                        f"{k}={metrics.get(k)}" for k in METRICS[:8]), flush=True)
                if runs:
                    results.append({"method": method, "set": name, "facts": n, "runs": runs, "measured": stamp,
                                    "summary": {k: aggregate([r.get(k) for r in runs]) for k in METRICS}})
    return results, reused


def earlier_rows(out: Path, results: list[dict]) -> tuple[list[dict], list[str]]:
    """The rows of an earlier results file that this invocation did not run (the stock rows are derived
    again), each with the date it was measured, and a line per row for the table."""
    earlier = json.loads(out.read_text(encoding="utf-8"))
    ran = {(r["method"], r["set"], r["facts"]) for r in results}
    rows, lines = [], []
    for row in earlier["results"]:
        if (row["method"], row.get("set", "heldout"), row["facts"]) not in ran and row["method"] != STOCK_ROW:
            row.setdefault("measured", earlier["meta"]["date"])
            rows.append(row)
            lines.append(f"{row.get('set', 'heldout')} {row['facts']} facts {row['method']} ({row['measured']})")
    return rows, lines


def add_ratios(results: list[dict]) -> None:
    """Each row's ratios to full fine-tuning of the same set and size, measured in the same invocation."""
    for row in results:
        row.pop("vs_full_ft", None)
        ft = next((r for r in results if r["method"] == "full_ft" and r["facts"] == row["facts"]
                   and r["set"] == row["set"] and r["measured"] == row["measured"]), None)
        if ft is None:
            continue
        ratio = {}
        for key in ("peak_memory_mb", "seconds_per_step", "trainable_params"):
            a, b = row["summary"][key]["mean"], ft["summary"][key]["mean"]
            ratio[key] = round(a / b, 4) if a is not None and b else None
        a, b = row["summary"]["forget_success"]["mean"], ft["summary"]["forget_success"]["mean"]
        ratio["forget_success_gap"] = round(a - b, 4) if a is not None and b is not None else None
        row["vs_full_ft"] = ratio


def main() -> None:
    args = arguments()
    methods = args.methods or (["lune", "full_ft"] if args.quick else METHODS)
    sizes = args.facts or ([1, 3] if args.quick else [1, 3, 10])
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    general_limit = args.general_limit or (16 if args.quick else None)
    steps = min(args.steps, 10) if args.quick else args.steps
    sets = args.sets or (["heldout"] if args.quick else ["heldout", "fresh", "dev"])

    work = Path(args.out).resolve().parent / "out"  # each run's full output, beside the results
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M")  # rows measured by this invocation; ratios pair rows of one stamp
    results, reused = measure(args, sets, methods, sizes, seeds, steps, general_limit, work, stamp)
    kept_rows = []
    if args.keep_rows and Path(args.out).exists():
        rows, kept_rows = earlier_rows(Path(args.out), results)
        results += rows
    results += stock_rows(results)
    order = {m: i for i, m in enumerate(METHODS + [STOCK_ROW])}
    results.sort(key=lambda r: (list(FACT_SETS).index(r["set"]), r["facts"], order.get(r["method"], len(order))))
    add_ratios(results)
    meta = environment(args.quick, seeds, sizes, steps, general_limit, time.time() - started)
    meta["sets"] = sets
    meta["first_seed_only"] = [n for n in sizes if n in args.first_seed_only]
    meta["first_seed_only_methods"] = [m for m in methods if m in args.first_seed_only_methods]
    meta["reused_runs"] = reused
    meta["kept_rows"] = kept_rows
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2), encoding="utf-8")
    write_docs(Path(args.docs), meta, results)
    print(f"wrote {args.out} and {args.docs}/benchmarks.md in {time.time() - started:.0f}s")


STOCK_ROW = "lune_gated, stock PEFT load"
# The gated adapter as PeftModel.from_pretrained runs it (no gate): the run asked these again that way. A plain
# LoRA (the default) is what stock PEFT loads: its own row.
STOCK_COLUMNS = {"forget_success": "stock_forget_success", "paraphrase_success": "stock_paraphrase_success",
                 "paraphrase_other_words": "stock_paraphrase_other_words",
                 "neighbour_retention": "stock_neighbour_retention", "general_retention": "stock_general_retention"}


def stock_rows(results: list[dict]) -> list[dict]:
    """Per `lune_gated` row, the same runs read as a stock PEFT load gives them; the columns it did not measure
    n/a."""
    out = []
    for row in results:
        if row["method"] != "lune_gated":
            continue
        summary = {k: {"mean": None, "spread": None} for k in METRICS}
        summary.update({k: row["summary"][v] for k, v in STOCK_COLUMNS.items()})
        summary["trainable_params"] = row["summary"]["trainable_params"]
        out.append({**row, "method": STOCK_ROW, "summary": summary})
    return out


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


# The targets of the plain-local-LoRA issue (the default on facts nobody tuned on): (op, bound) per fact count.
TARGETS = {
    "forget_success": (">=", {3: 1.0, 10: 0.95}), "forget_clean": (">=", {3: 1.0, 10: 0.95}),
    "paraphrase_same_words": (">=", {3: 0.90, 10: 0.85}), "paraphrase_other_words": (">=", {3: 0.75, 10: 0.70}),
    "adversarial_success": (">=", {3: 0.80, 10: 0.75}), "neighbour_retention": (">=", {3: 0.90, 10: 0.85}),
    "neighbour_retention_same_answer": (">=", {3: 0.90, 10: 0.85}),
    "general_retention": (">=", {3: 0.95, 10: 0.92}), "train_seconds": ("<=", {3: 20, 10: 60}),
    # the exported adapter loaded by stock PEFT forgets and keeps what the run measured
    "stock_forget_success": ("=", {3: "forget_success", 10: "forget_success"}),
    "stock_general_retention": ("=", {3: "general_retention", 10: "general_retention"}),
}
RATIO_TARGETS = {"peak_memory_mb": 0.35}
DEGENERATE_MARGIN = 0.02  # degenerate_rate at most the base's own rate plus this


def _fmt(cell: dict, digits: int = 2) -> str:
    if cell["mean"] is None:
        return "n/a"
    if cell["spread"]:
        return f"{cell['mean']:.{digits}f} ± {cell['spread']:.{digits}f}"
    return f"{cell['mean']:.{digits}f}"


def _first_seed_only(meta: dict) -> str:
    sizes, methods = meta.get("first_seed_only"), meta.get("first_seed_only_methods")
    parts = ([f"at {', '.join(map(str, sizes))} facts"] if sizes else []) + (
        [f"for {', '.join(methods)}"] if methods else [])
    return f" (the first only {' and '.join(parts)})" if parts else ""


def _reused(meta: dict) -> str:
    runs = meta.get("reused_runs")
    if not runs:
        return ""
    groups: dict[tuple, dict[int, list[str]]] = {}
    for r in runs:
        groups.setdefault((r.get("set", "heldout"), r["facts"]), {}).setdefault(r["seed"], []).append(r["method"])
    kept = "; ".join(f"{name} {n} facts seed {seed} ({'every method' if set(ms) >= set(METHODS) else ', '.join(ms)})"
                     for (name, n), by_seed in groups.items() for seed, ms in by_seed.items())
    created = sorted(r["created"] or "?" for r in runs)
    return (f" (this invocation's; {len(runs)} runs, made {created[0]} to {created[-1]}, were kept from an "
            f"earlier one with `--resume`: {kept})")


def _kept_rows(meta: dict) -> str:
    rows = meta.get("kept_rows")
    return (f"; {len(rows)} rows were kept from the table before (`--keep-rows`), measured then: "
            + "; ".join(rows)) if rows else ""


COLUMNS = [  # header, summary key, digits
    ("forget", "forget_success", 2), ("clean", "forget_clean", 2), ("paraphrase", "paraphrase_success", 2),
    ("same words", "paraphrase_same_words", 2), ("other words", "paraphrase_other_words", 2),
    ("other language", "paraphrase_other_language", 2),
    ("reworded", "reworded_success", 2), ("adversarial", "adversarial_success", 2),
    ("neighbour", "neighbour_retention", 2), ("same answer", "neighbour_retention_same_answer", 2),
    ("agreement", "neighbour_agreement", 2), ("general", "general_retention", 2),
    ("spilled", "spilled_answers", 1), ("still inside", "answer_still_inside", 2),
    ("top-10 layers", "lens_top10_layers_after", 1)]


def _plain(value) -> str:
    return "" if value is None else str(value)


def _ratio(cell: dict) -> str:
    """A truth ratio at a precision that shows it: it lives anywhere from 1e-4 to 1e4."""
    if cell["mean"] is None:
        return "n/a"
    return f"{cell['mean']:.2g}" + (f" ± {cell['spread']:.1g}" if cell["spread"] else "")


def _met(value, op: str, bound) -> str:
    ok = value is not None and (value >= bound if op == ">=" else value <= bound)
    return "met" if ok else "MISSED"


def target_lines(results: list[dict]) -> list[str]:
    """Each target of the locality issue against `lune` on the facts never tuned on, met or MISSED."""
    lines = []
    for name, n in [(name, n) for name in UNTUNED for n in (3, 10)]:
        row = next((r for r in results if r["method"] == "lune" and r["facts"] == n and r["set"] == name), None)
        lines += ["", f"### {n} facts ({name} set)", ""]
        if row is None:
            lines.append(f"- not measured: this table has no {n}-fact `lune` run on the {name} facts")
            continue
        s = row["summary"]
        for key, (op, bounds) in TARGETS.items():
            value, bound = s[key]["mean"], bounds[n]
            if op == "=":  # the same as another figure of the same runs
                bound = s[bound]["mean"]
                lines.append(f"- {key} = {bounds[n]} ({bound}): {value} — {'met' if value == bound else 'MISSED'}")
                continue
            lines.append(f"- {key} {op} {bound}: {value} — {_met(value, op, bound)}")
        fluency, centre, spread = (s[k]["mean"] for k in ("fluency_after", "fluency_before", "fluency_spread"))
        within = None if centre is None or spread is None else round(centre + spread, 3)
        lines.append(f"- fluency_after <= the base's own + its spread ({within}): {fluency} — "
                     f"{_met(fluency, '<=', within) if within is not None else 'MISSED'}")
        degenerate, base = s["degenerate_rate"]["mean"], s["degenerate_rate_before"]["mean"]
        bound = None if base is None else round(base + DEGENERATE_MARGIN, 4)
        lines.append(f"- degenerate_rate <= base + {DEGENERATE_MARGIN} ({bound}): {degenerate} — "
                     f"{_met(degenerate, '<=', bound) if bound is not None else 'MISSED'}")
        for key, bound in RATIO_TARGETS.items():
            if "vs_full_ft" not in row:  # a ratio needs full fine-tuning on the same facts: not a miss, a gap
                lines.append(f"- {key} ratio to full FT <= {bound}: not measured (no full_ft row of this set "
                             "and size)")
                continue
            value = row["vs_full_ft"].get(key)
            lines.append(f"- {key} ratio to full FT <= {bound}: {value} — {_met(value, '<=', bound)}")
    return lines


def write_docs(folder: Path, meta: dict, results: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["# Benchmarks", "", "Generated by `python bench/run_bench.py"
             + (" --quick" if meta["quick"] else "") + (" --resume" if meta.get("reused_runs") else "")
             + (" --keep-rows" if meta.get("kept_rows") else "")
             + "`; do not edit by hand.", "",
             f"- date {meta['date']}; {meta['machine']}; Python {meta['python']}, torch {meta['torch']}, "
             f"transformers {meta['transformers']}, peft {meta['peft']}, bitsandbytes {meta['bitsandbytes']}",
             "- model: embedded SmolLM2-135M-Instruct, NF4 4-bit (full_ft: full precision fp32, all weights)",
             f"- fact sets {meta.get('sets', ['heldout'])} (heldout, fresh: never tuned on; dev: may be tuned on), "
             f"sizes {meta['fact_sets']}, seeds {meta['seeds']}{_first_seed_only(meta)}, at most "
             f"{meta['max_steps']} steps (early stop on), general set limit {meta['general_limit'] or 'all'}; "
             f"wall time {meta['wall_seconds']} s" + _reused(meta) + _kept_rows(meta),
             "- every figure is a share of the probes the base model could show it on (docs/metrics.md): "
             "forget-like kinds where the base said the answer, neighbour and general where it answered "
             "right, agreement where it answered at all. clean: forgotten, not degenerate, not a spliced "
             "fragment; same words / other words / other language: the paraphrases by sub-kind (docs/metrics.md); "
             "neighbour: curated neighbours (same subject, same relation, shared words, same answer), a kept "
             "answer that newly says a negative counts as lost; spilled: such answers, per run; still inside: "
             "forgotten facts whose answer is top-10 at some layer (logit lens); top-10 layers: per fact, after; "
             "fluency: the base's mean per-token NLL of the answers to the facts (most surprising token left "
             "out), after (before ± spread); agreement: automatic neighbours; truth ratio: geometric mean over "
             "facts, before → after (above 1: a wrong answer is more likely than the true one); "
             f"{STOCK_ROW}: the `lune_gated` runs asked again through the LoRA without its gate",
             "- peak MB: during training; the process's resident high-water mark (VmHWM) on CPU, so it "
             "includes the interpreter and the loaded weights; the allocator's peak on CUDA",
             "- mem / FT, step time / FT: against the full_ft row of the same set and size measured in the same "
             "invocation, so on the same machine under the same load; blank where there is none",
             "", "| set | facts | method | seeds | " + " | ".join(h for h, _, _ in COLUMNS)
             + " | fluency (before ± spread) | degenerate (before) | truth ratio | trainable params | s/step "
             "| train s | peak MB | mem / FT | step time / FT | relearn leak | requant leak |",
             "|" + "---|" * (4 + len(COLUMNS) + 11)]
    for row in results:
        s, v = row["summary"], row.get("vs_full_ft", {})
        truth = f"{_ratio(s['truth_ratio_before'])} → {_ratio(s['truth_ratio_after'])}"
        fluency = (f"{_fmt(s['fluency_after'])} ({_fmt(s['fluency_before'])} ± {_fmt(s['fluency_spread'])})"
                   if s.get("fluency_before", {}).get("mean") is not None else "n/a")
        lines.append("| " + " | ".join([
            row["set"], str(row["facts"]), row["method"], str(len(row["runs"])),
            *[_fmt(s.get(key, {"mean": None}), digits) for _, key, digits in COLUMNS], fluency,
            f"{_fmt(s['degenerate_rate'])} ({_fmt(s['degenerate_rate_before'])})", truth,
            f"{int(s['trainable_params']['mean'] or 0):,}", _fmt(s["seconds_per_step"]), _fmt(s["train_seconds"], 1),
            _fmt(s["peak_memory_mb"], 0), _plain(v.get("peak_memory_mb")), _plain(v.get("seconds_per_step")),
            _fmt(s["relearn_leak_rate"]), _fmt(s["requant_leak_rate"])]) + " |")
    lines += ["", "## Targets (`lune`, default settings, facts never tuned on)"] + target_lines(results)
    lines += ["", "Notes on each method are in the section below, written after reading this table.", ""]
    for kept in ("journey.md", "benchmarks_notes.md"):  # written by bench/journey.py and by hand
        if (folder / kept).exists():
            lines += [(folder / kept).read_text(encoding="utf-8")]
    (folder / "benchmarks.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    chart(folder / "forget_vs_retention.html", results)


def chart(path: Path, results: list[dict]) -> None:
    import plotly.graph_objects as go

    fig = go.Figure()
    for method in dict.fromkeys(r["method"] for r in results):
        rows = [r for r in results if r["method"] == method]
        fig.add_trace(go.Scatter(
            x=[r["summary"]["neighbour_retention"]["mean"] for r in rows],
            y=[r["summary"]["forget_clean"]["mean"] for r in rows],
            text=[f"{r['set']} {r['facts']}" for r in rows], mode="markers+text", name=method,
            textposition="top center"))
    fig.update_layout(title="Clean forgetting vs neighbour retention (mean over seeds)",
                      xaxis_title="neighbour_retention", yaxis_title="forget_clean")
    fig.write_html(path, include_plotlyjs="cdn")


if __name__ == "__main__":
    main()
