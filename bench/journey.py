"""The classroom journey's waits, through the real app (gradio_client), as a teacher clicks it.

    python bench/journey.py              # starts `python app.py` itself; about 15 minutes on a 2-core CPU
    python bench/journey.py --url URL    # an app already running

Steps: load the embedded model, preview a preset's facts (what the base says), Unlearn with the
defaults until Compare is filled, one asked prompt (before and after), the robustness check; then
the command line, `python -m lune_core run` on 3 and on 10 of the preset's facts with 24 general
questions (model loading included). Each wait is set against its target and against the arithmetic
bound of its tokens: 2 x parameters x tokens processed, over this CPU's measured fp32 matmul rate (what
no implementation on this machine can beat; a 4-bit model pays more, for dequantizing). Writes
docs/journey.md, its only output; bench/run_bench.py copies it into docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from lune_core.config import RunLimits  # noqa: E402
from lune_web.forms import FACT_COLUMNS, preset_rows  # noqa: E402
from lune_web.reliability.app_server import serve_app  # noqa: E402

PRESET, FACTS = "capitals", 2  # the lesson plan's preset and count
CLI_FACTS, CLI_GENERAL = (3, 10), 24  # the command-line runs: facts of the preset, general questions
TARGETS = {"load": None, "preview": 10.0, "unlearn": 45.0, "ask": 3.0, "robustness": 60.0, "cli_3": 25.0,
           "cli_10": 75.0}
NAMES = {"load": "load the embedded model", "preview": f"preset preview ({FACTS} facts: what the base says)",
         "unlearn": "preset → Unlearn → Compare filled (defaults)", "ask": "an asked prompt, before and after",
         "robustness": "robustness check (relearning, re-quantizing)",
         **{f"cli_{n}": f"command line: {n} facts, {CLI_GENERAL} general questions" for n in CLI_FACTS}}
SETTINGS = ("lune", "lora", 30, "", 8, "", 0, 32, True, 8)  # the page's defaults, in /unlearn's order
# A training row past the chat template's opening (24 tokens), on average: the lesson's rows measured 46 a row.
ROW_TOKENS = 23
MARK_BEGIN, MARK_END = "<!-- journey: bench/journey.py -->", "<!-- /journey -->"


def matmul_rate(seconds: float = 2.0) -> float:
    """fp32 multiply-adds per second x 2 (FLOP/s) of a 1024 x 1024 matmul on this CPU, as torch runs it."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return 2 * 1024**3 * n / (time.perf_counter() - start)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def token_count(tokenizer, prompts: list[str], answers: list[str]) -> int:
    """Tokens a greedy answer processes: the chat-formatted prompt once, then each answer token."""
    total = 0
    for prompt, answer in zip(prompts, answers):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        total += len(tokenizer(text)["input_ids"]) + len(tokenizer(answer)["input_ids"])
    return total


def run(url: str | None) -> dict:
    import gradio_client

    log = Path(tempfile.mkdtemp(prefix="lune-journey-")) / "app.log"
    context = nullcontext(url) if url else serve_app(log)
    rows = preset_rows(PRESET, RunLimits())[:FACTS]
    table = {"headers": FACT_COLUMNS, "data": rows}
    waits, extra = {}, {}
    with context as address:
        client = gradio_client.Client(address, verbose=False)
        _, waits["load"] = timed(lambda: client.predict("embedded", True, api_name="/load_model"))
        (base, status), waits["preview"] = timed(lambda: client.predict(table, 32, api_name="/preview"))
        outputs, waits["unlearn"] = timed(lambda: client.predict(table, *SETTINGS, api_name="/unlearn"))
        if "Done" not in outputs[1]:
            raise SystemExit(f"the run failed: {outputs[1]}")
        question = rows[0][0].replace("What is", "Tell me").rstrip("?") + "."
        (before, after, _), waits["ask"] = timed(lambda: client.predict(question, 32, api_name="/ask"))
        _, waits["robustness"] = timed(lambda: client.predict(api_name="/robustness"))
        files, _ = client.predict(api_name="/export")
        report = json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())
    extra.update(report=report, question=question, before=before, after=after)
    for n in CLI_FACTS:
        extra[f"cli_{n}"], waits[f"cli_{n}"] = timed(lambda: command_line_run(n))
    return {"waits": waits, **extra}


def command_line_run(n: int) -> dict:
    """`python -m lune_core run` on the first n facts of the preset, in a process of its own: its report."""
    folder = Path(tempfile.mkdtemp(prefix="lune-journey-cli-"))
    facts = folder / "facts.jsonl"
    facts.write_text("".join(json.dumps(dict(zip(("question", "answer", "replacement"), row[:3]))) + "\n"
                             for row in preset_rows(PRESET, RunLimits())[:n]), encoding="utf-8")
    out = folder / "report.json"
    subprocess.run([sys.executable, "-m", "lune_core", "run", "--facts", str(facts), "--general-limit",
                    str(CLI_GENERAL), "--out", str(out)], cwd=ROOT, check=True, capture_output=True)
    return json.loads(out.read_text(encoding="utf-8"))


def bounds(result: dict) -> dict:
    """Arithmetic lower bounds (seconds) of the waits whose tokens the report lets us count."""
    from lune_core.models import load_model

    lm = load_model("embedded", quantize=False, device="cpu")
    params, rate = lm.total_params, matmul_rate()
    facts = [p for p in result["report"]["probes"] if p["kind"] == "forget"]
    flops = lambda tokens: 2 * params * tokens / rate  # noqa: E731
    return {"rate": rate, "params": params,
            "preview": flops(token_count(lm.tokenizer, [p["prompt"] for p in facts], [p["before"] for p in facts])),
            "unlearn": flops(run_tokens(lm.tokenizer, result["report"])),
            "ask": flops(2 * token_count(lm.tokenizer, [result["question"]], [result["after"]])),
            **{f"cli_{n}": flops(run_tokens(lm.tokenizer, result[f"cli_{n}"])) for n in CLI_FACTS}}


def run_tokens(tokenizer, report: dict) -> int:
    """Tokens a run processes at least: every probe answered before and after, and each step's forward and
    backward (about 3 forwards) over its rows (a target and an answer per fact, the answer holds, the anchors;
    ROW_TOKENS each, past the opening they share)."""
    probes, config = report["probes"], report["config"]
    prompts = [p["prompt"] for p in probes]
    asked = sum(token_count(tokenizer, prompts, [p[when] for p in probes]) for when in ("before", "after"))
    rows = (2 + config["answer_holds"]) * len(report["facts"]) + config["anchors_per_step"]
    return asked + report["metrics"]["steps_run"] * 3 * rows * ROW_TOKENS


def table(result: dict, bound: dict, note: str) -> str:
    lines = [MARK_BEGIN, "## The classroom journey (the app, through gradio_client)", "",
             f"Written by `python bench/journey.py` on {time.strftime('%Y-%m-%d %H:%M %Z')}; "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores. {note} "
             f"The bound: 2 × {bound['params'] / 1e6:.0f} M parameters × the tokens each wait processes, "
             f"over this CPU's fp32 matmul rate ({bound['rate'] / 1e9:.0f} GFLOP/s, measured in the same run).",
             "", "| step | wait (s) | target (s) | met? | arithmetic bound (s) | wait / bound |",
             "|---|---|---|---|---|---|"]
    for key, name in NAMES.items():
        wait, target = result["waits"][key], TARGETS[key]
        met = "–" if target is None else ("met" if wait <= target else "**MISSED**")
        b = bound.get(key)
        # below the bound: nothing was computed, the answers came from the on-disk store of base answers
        ratio = "–" if not b else (f"{wait / b:.1f}× (stored answers)" if wait < b else f"{wait / b:.1f}×")
        lines.append(f"| {name} | {wait:.1f} | {target if target else '–'} | {met} | "
                     f"{f'{b:.2f}' if b else '–'} | {ratio} |")
    lines.append("")
    for key, what in (("report", "The page's run"), *((f"cli_{n}", f"The command line's {n}-fact run")
                                                      for n in CLI_FACTS)):
        report = result[key]
        m = report["metrics"]
        lines.append(f"- {what}: {len(report['facts'])} facts, {m['steps_run']} steps, {len(report['probes'])} "
                     f"probes asked before and after, train {m['train_seconds']} s of a {report['wall_seconds']} s "
                     "run.")
    lines.append(MARK_END)
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an app already running (default: start python app.py)")
    parser.add_argument("--note", default="Nothing else was running.", help="what else ran on the machine")
    args = parser.parse_args()
    result = run(args.url)
    block = table(result, bounds(result), args.note)
    (ROOT / "docs" / "journey.md").write_text(block, encoding="utf-8")
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
