"""Command line: `python -m lune_core run --facts FACTS.jsonl --out REPORT.json` (or `--check` to validate only)."""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields

from .config import RunLimits, UnlearnConfig, parse_layers, validate_config
from .evaluation import flat_figures
from .facts import FactError, load_facts, parse_sentences, validate_facts
from .ids import EMBEDDED_MODEL
from .errors import ModelLoadError
from .hub import short_message


class UsageError(Exception):
    """Bad input from the command line: one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage; we keep the one-line contract
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m lune_core", description="LUNE: LoRA-based unlearning with negative examples")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="unlearn facts and write a report")
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--facts", help="JSON Lines: question, answer, replacement?, paraphrases?, "
                                        "keep? (a list of {question, answers} that must stay right)")
    source.add_argument("--sentences", help="text file, one sentence a line with the answer in [brackets]")
    run.add_argument("--general", help="JSON Lines: question, answers (default: the shipped set)")
    run.add_argument("--general-limit", type=int, default=None, help="use only the first N general questions")
    run.add_argument("--model", default=EMBEDDED_MODEL, help="'embedded', a hub id or an allowed local folder")
    for f in fields(UnlearnConfig):  # every setting with a flag of its own, from the config's field metadata
        if "flag" not in f.metadata:
            continue
        if _base_type(f) == "bool":
            run.add_argument(f.metadata["flag"], dest=f.name, action="store_true", help=f.metadata["help"])
        else:
            run.add_argument(f.metadata["flag"], dest=f.name, default=None, help=f.metadata["help"],
                             type={"int": int, "float": float}.get(_base_type(f), str))
    run.add_argument("--no-early-stop", action="store_true", help="always run all steps")
    run.add_argument("--device", default="auto", help="auto, cpu or cuda")
    run.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                     help="any other setting of lune_core.config.UnlearnConfig, e.g. --set lora_dropout=0.05 "
                          "--set layer_band=0,1 (repeatable; applied after the flags above)")
    run.add_argument("--out", required=True, help="where to write REPORT.json")
    run.add_argument("--save-adapter", help="folder for the trained adapter (PEFT format)")
    run.add_argument("--robustness", action="store_true",
                     help="after the run, relearn on related text and re-quantize; report the leak rates")
    run.add_argument("--check", action="store_true",
                     help="check the facts, settings and model (its config only), then stop before loading weights")
    return parser


def _base_type(f) -> str:
    """'int' for 'int | None', 'tuple' for 'tuple[float, float]': how a typed value is parsed."""
    return str(f.type).split("|")[0].split("[")[0].strip()


def _config(args) -> UnlearnConfig:
    kwargs = {}
    for f in fields(UnlearnConfig):
        value = getattr(args, f.name, None) if "flag" in f.metadata else None
        if value is not None and value is not False:  # 0 is a value (and a wrong one for --steps)
            kwargs[f.name] = parse_layers(value) if f.metadata.get("parse") == "layers" else value
    if args.no_early_stop:
        kwargs["check_every"] = 0
    kwargs.update(parse_settings(args.set))
    return UnlearnConfig(**kwargs)


def parse_settings(items: list[str]) -> dict:
    """FIELD=VALUE pairs parsed by the config field's type: numbers, true/false, comma lists."""
    out = {}
    known = {f.name: f for f in fields(UnlearnConfig)}
    for item in items:
        name, sep, raw = item.partition("=")
        name, raw = name.strip().replace("-", "_"), raw.strip()
        if not sep or name not in known:
            raise UsageError(f"--set {item[:40]!r}: expected FIELD=VALUE with a field of UnlearnConfig")
        kind = str(known[name].type)
        try:
            if raw.lower() in ("none", ""):
                value = None
            elif _base_type(known[name]) == "bool":
                value = {"true": True, "false": False}[raw.lower()]
            elif _base_type(known[name]) == "tuple":
                item_type = float if "float" in kind else int if "int" in kind else str
                value = tuple(item_type(p.strip()) for p in raw.split(",") if p.strip())
            else:
                value = {"int": int, "float": float}.get(_base_type(known[name]), str)(raw)
        except (KeyError, ValueError):
            raise UsageError(f"--set {name}: {raw[:20]!r} is not a valid value") from None
        out[name] = value
    return out


def _format_step(record) -> str:
    parts = " ".join(f"{k}={v:.4f}" for k, v in record.parts.items())
    line = (f"step {record.step:3d}/{record.total_steps} loss={record.loss:.4f} {parts} "
            f"lr={record.learning_rate:.2e} {record.seconds:.2f}s mem={record.peak_memory_mb:.0f}MB")
    if record.leaks_left is not None:
        line += f" leaks_left={record.leaks_left}"
    if record.stopped:
        line += f" [{record.stopped}]"
    return line


def _facts(args, limits: RunLimits):
    if args.facts:
        return load_facts(args.facts, limits)
    try:
        with open(args.sentences, encoding="utf-8-sig") as handle:
            text = handle.read()
    except UnicodeDecodeError:
        raise FactError(f"{os.path.basename(args.sentences)}: not UTF-8 text") from None
    return validate_facts(parse_sentences(text, limits), limits)


def cmd_run(args) -> int:
    """Every check that needs no weights comes first, so a mistake costs a second, not a model load."""
    from .models import load_model
    from .sources import load_config
    from .generation import base_answers
    from .runner import RunResult, load_anchors, load_general, run_unlearning, save_report, unknown_facts_warning

    limits = RunLimits().with_env()
    config = _config(args)
    validate_config(config, limits=limits)
    facts = _facts(args, limits)
    if args.general_limit is not None and args.general_limit < 0:
        raise UsageError("--general-limit must not be negative")
    general = load_general(args.general, args.general_limit)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise UsageError(f"output folder does not exist: {out_dir}")
    if os.path.isdir(args.out):
        raise UsageError(f"--out is a folder, not a file: {args.out}")
    num_layers = load_config(args.model).num_hidden_layers
    validate_config(config, num_layers, limits)
    if args.check:
        print(f"ok: {len(facts)} facts, {len(general)} general questions, model {args.model} "
              f"({num_layers} layers), settings valid; nothing trained (--check)")
        return 0
    lm = load_model(args.model, quantize=config.adapter != "full", device=args.device)
    print(f"model {lm.display_name} on {lm.device} ({lm.quantization}), loaded in {lm.load_seconds:.1f}s", flush=True)
    # the run asks the same questions first: these answers are its own, from the cache
    warning = unknown_facts_warning(facts, base_answers(lm, [f.question for f in facts], config.max_new_tokens))
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    result = None
    for event in run_unlearning(lm, facts, config, general, load_anchors()):
        if isinstance(event, RunResult):
            result = event
        else:
            print(_format_step(event), flush=True)
    if args.robustness and result.adapter is not None:
        from .robustness import run_attacks

        attacks = run_attacks(lm, result.adapter, facts, config)
        result.report["robustness"] = attacks
        result.report["metrics"].update({k: attacks[k] for k in ("relearn_leak_rate", "requant_leak_rate",
                                                                 "still_leaking_after_training")})
    save_report(result.report, args.out)
    if args.save_adapter and result.adapter is not None:
        from .export import save_adapter

        save_adapter(result.adapter, args.save_adapter, lm.display_name)
    print(summary_line(result.report["metrics"]) + f" -> {args.out}")
    print(f"kind: {result.report['forgetting_kind']}")
    return 0


# The figures the last line prints, in the order a reader weighs them (evaluation.flat_figures' names).
SUMMARY = ("forget_success", "forget_clean", "paraphrase_success", "paraphrase_same_words",
           "paraphrase_other_words", "paraphrase_other_language", "reworded_success",
           "adversarial_success", "neighbour_retention", "neighbour_retention_same_answer",
           "neighbour_agreement", "general_retention", "spilled_answers", "truth_ratio_before", "truth_ratio_after",
           "fluency_before", "fluency_spread", "fluency_after", "lens_top10_layers_before", "lens_top10_layers_after",
           "answer_still_inside", "stock_forget_success", "stock_general_retention", "degenerate_rate",
           "degenerate_rate_before", "relearn_leak_rate", "requant_leak_rate", "train_seconds")


def summary_line(metrics: dict) -> str:
    """`name=value` for each SUMMARY figure the run has."""
    figures = flat_figures(metrics)
    return " ".join(f"{key}={figures[key]}" for key in SUMMARY if key in figures)


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
        print(f"error: {short_message(message)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
