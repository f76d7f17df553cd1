"""The benchmark script end to end, in its smallest form: LUNE and full fine-tuning on one fact."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def bench(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "bench/run_bench.py", "--quick", "--facts", "1", *args],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_quick_benchmark_measures_both_methods_and_writes_table_and_chart(tmp_path):
    out, docs = tmp_path / "results.json", tmp_path / "docs"
    bench("--seeds", "0", "1", "--first-seed-only", "1", "--out", str(out), "--docs", str(docs))
    sys.path.insert(0, str(ROOT / "bench"))
    import run_bench

    rows = {r["method"]: r for r in json.loads(out.read_text())["results"]}
    # the plain LoRA default is what stock PEFT loads: no second reading (only the gate's runs get one)
    assert set(rows) == {"lune", "full_ft"} and run_bench.STOCK_ROW.startswith("lune_gated")
    assert all(len(r["runs"]) == 1 for r in rows.values())  # size 1 asked for the first seed only
    lune, ft = rows["lune"]["summary"], rows["full_ft"]["summary"]
    assert lune["forget_success"]["mean"] == 1.0  # the capital of Japan, known to the model
    # Ratios come from this same run, and LoRA trains a sliver of what full fine-tuning does.
    ratios = rows["lune"]["vs_full_ft"]
    assert ratios["trainable_params"] < 0.02
    assert ratios["peak_memory_mb"] == pytest.approx(lune["peak_memory_mb"]["mean"] / ft["peak_memory_mb"]["mean"],
                                                     abs=1e-3)
    # The attacks ran for the LoRA run only: full fine-tuning leaves no adapter to attack.
    assert lune["relearn_leak_rate"]["mean"] is not None and lune["requant_leak_rate"]["mean"] is not None
    assert ft["relearn_leak_rate"]["mean"] is None
    table = (docs / "benchmarks.md").read_text()
    assert "| heldout | 1 | lune | 1 | 1.00 |" in table and "| heldout | 1 | full_ft |" in table
    assert "seeds [0, 1] (the first only at 1 facts)" in table
    assert "not measured: this table has no 3-fact `lune` run on the heldout facts" in table
    header = next(line for line in table.splitlines() if line.startswith("| set |"))
    for column in ("clean", "same words", "other words", "other language", "adversarial", "neighbour", "same answer",
                   "agreement", "spilled", "still inside", "top-10 layers", "fluency (before ± spread)", "truth ratio"):
        assert f" {column} |" in header
    assert run_bench.STOCK_ROW not in table.split("| set |")[1]
    assert "plotly" in (docs / "forget_vs_retention.html").read_text()

    # --resume keeps the saved runs of the same settings, reruns nothing, and the table says so.
    kept = bench("--seeds", "0", "1", "--first-seed-only", "1", "--out", str(out), "--docs", str(docs), "--resume")
    assert kept.stdout.count(" kept ") == 2 and " ran " not in kept.stdout
    again = json.loads(out.read_text())
    assert [r["runs"] for r in again["results"] if r["method"] != run_bench.STOCK_ROW] == [
        rows["lune"]["runs"], rows["full_ft"]["runs"]]
    assert [r["method"] for r in again["meta"]["reused_runs"]] == ["lune", "full_ft"]
    assert "2 runs, made " in (docs / "benchmarks.md").read_text()
    assert "--resume`: heldout 1 facts seed 0 (lune, full_ft))" in (docs / "benchmarks.md").read_text()
    # A run with any other setting is not the same run.
    saved, facts = tmp_path / "out" / "lune-heldout-1-0.json", run_bench.fact_set(1)
    assert run_bench.finished_run(saved, "lune", facts, 0, 10, 16) is not None
    assert run_bench.finished_run(saved, "lune", facts, 0, 5, 16) is None  # another steps budget
    assert run_bench.finished_run(saved, "lune", facts, 1, 10, 16) is None  # another seed
    assert run_bench.finished_run(saved, "lune_subject", facts, 0, 10, 16) is None  # another adapter
    assert run_bench.finished_run(saved, "lune", facts, 0, 10, 112) is None  # the whole general set
    assert run_bench.finished_run(saved, "lune", run_bench.fact_set(3), 0, 10, 16) is None  # other facts
    full_ft = tmp_path / "out" / "full_ft-heldout-1-0.json"
    assert run_bench.finished_run(full_ft, "full_ft", facts, 0, 10, 16) is not None


def test_a_ratio_without_full_finetuning_beside_it_is_not_measured_not_missed():
    sys.path.insert(0, str(ROOT / "bench"))
    import run_bench

    summary = {k: {"mean": 0.5, "spread": 0.0} for k in run_bench.METRICS}
    row = {"method": "lune", "set": "fresh", "facts": 10, "summary": summary}
    lines = run_bench.target_lines([row])
    assert any("10 facts (fresh set)" in line for line in lines)
    assert "- peak_memory_mb ratio to full FT <= 0.35: not measured (no full_ft row of this set and size)" in lines
    assert "- forget_success >= 0.95: 0.5 — MISSED" in lines  # a measured miss stays a miss
    # the stock load's figures against the run's own: the same runs, so equal or MISSED
    assert "- stock_forget_success = forget_success (0.5): 0.5 — met" in lines
    # fluency within the base's own spread: 0.5 <= 0.5 + 0.5
    assert "- fluency_after <= the base's own + its spread (1.0): 0.5 — met" in lines
    row["vs_full_ft"] = {"peak_memory_mb": 0.4}
    lines = run_bench.target_lines([row])
    assert "- peak_memory_mb ratio to full FT <= 0.35: 0.4 — MISSED" in lines
