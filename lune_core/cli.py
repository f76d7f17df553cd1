"""Command line: `python -m lune_core run --facts FACTS.jsonl --out REPORT.json`."""
from __future__ import annotations

import argparse
import os
import sys

from .config import RunLimits, UnlearnConfig, validate_config
from .facts import FactError, load_facts
from .losses import METHODS
from .models import EMBEDDED_MODEL, ModelLoadError


class UsageError(Exception):
    """Bad input from the command line: one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage; we keep the one-line contract
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m lune_core", description="LUNE: LoRA-based unlearning with negative examples")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="unlearn facts and write a report")
    run.add_argument("--facts", required=True, help="JSON Lines: question, answer, replacement?, paraphrases?")
    run.add_argument("--general", help="JSON Lines: question, answers (default: the shipped set)")
    run.add_argument("--general-limit", type=int, default=None, help="use only the first N general questions")
    run.add_argument("--model", default=EMBEDDED_MODEL, help="'embedded', a hub id or an allowed local folder")
    run.add_argument("--method", default="lune", help=f"one of: {', '.join(METHODS)}")
    run.add_argument("--steps", type=int, default=UnlearnConfig.steps)
    run.add_argument("--lr", type=float, default=UnlearnConfig.learning_rate)
    run.add_argument("--rank", type=int, default=UnlearnConfig.lora_rank)
    run.add_argument("--seed", type=int, default=UnlearnConfig.seed)
    run.add_argument("--max-new-tokens", type=int, default=UnlearnConfig.max_new_tokens)
    run.add_argument("--no-early-stop", action="store_true", help="always run all steps")
    run.add_argument("--full-precision", action="store_true",
                     help="load without 4-bit quantization and fine-tune all weights (the full fine-tuning baseline)")
    run.add_argument("--device", default="auto", help="auto, cpu or cuda")
    run.add_argument("--out", required=True, help="where to write REPORT.json")
    run.add_argument("--save-adapter", help="folder for the trained LoRA adapter (PEFT format)")
    return parser


def _config(args) -> UnlearnConfig:
    kwargs = dict(method=args.method, steps=args.steps, learning_rate=args.lr, lora_rank=args.rank,
                  lora_alpha=2 * args.rank, seed=args.seed, max_new_tokens=args.max_new_tokens,
                  full_finetune=args.full_precision)
    if args.no_early_stop:
        kwargs["check_every"] = 0
    return UnlearnConfig(**kwargs)


def _format_step(record) -> str:
    parts = " ".join(f"{k}={v:.4f}" for k, v in record.parts.items())
    line = (f"step {record.step:3d}/{record.total_steps} loss={record.loss:.4f} {parts} "
            f"lr={record.learning_rate:.2e} {record.seconds:.2f}s mem={record.peak_memory_mb:.0f}MB")
    if record.leaks_left is not None:
        line += f" leaks_left={record.leaks_left}"
    if record.stopped:
        line += f" [{record.stopped}]"
    return line


def cmd_run(args) -> int:
    from .models import load_model
    from .runner import RunResult, load_anchors, load_general, run_unlearning, save_report

    limits = RunLimits()
    config = _config(args)
    validate_config(config, limits=limits)  # before the model load, so mistakes cost nothing
    facts = load_facts(args.facts, limits)
    general = load_general(args.general, args.general_limit)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise UsageError(f"output folder does not exist: {out_dir}")
    lm = load_model(args.model, quantize=not args.full_precision, device=args.device)
    print(f"model {lm.display_name} on {lm.device} ({lm.quantization}), loaded in {lm.load_seconds:.1f}s", flush=True)
    result = None
    for event in run_unlearning(lm, facts, config, general, load_anchors()):
        if isinstance(event, RunResult):
            result = event
        else:
            print(_format_step(event), flush=True)
    save_report(result.report, args.out)
    if args.save_adapter and result.adapter is not None:
        from .export import save_adapter

        save_adapter(result.adapter, args.save_adapter, lm.display_name)
    m = result.report["metrics"]
    print(f"forget_success={m['forget_success']} paraphrase_success={m['paraphrase_success']} "
          f"general_retention={m['general_retention']} degenerate_rate={m['degenerate_rate']} "
          f"train_seconds={m['train_seconds']} -> {args.out}")
    return 0


def _quiet_libraries() -> None:
    # Progress bars and advice from transformers would bury the one line per step.
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    try:
        _quiet_libraries()
        args = build_parser().parse_args(argv)
        return cmd_run(args)
    except (UsageError, FactError, ModelLoadError, ValueError, OSError, MemoryError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
