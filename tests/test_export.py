"""Exports: a PEFT folder that PeftModel.from_pretrained loads back, a model card, CSVs, a report."""
from __future__ import annotations

import copy
import csv
import json
import zipfile

import pytest
import torch
from peft import PeftModel, get_peft_model, set_peft_model_state_dict
from transformers import LlamaConfig, LlamaForCausalLM

from lune_core.adapters import peft_config, snapshot
from lune_core.export import adapter_zip, model_card, save_adapter, write_exports

pytestmark = pytest.mark.integration  # a tiny model, a subprocess or the app server

LORA = {"kind": "lora", "r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj", "down_proj"], "layers_to_transform": [1], "bias": "none",
        "task_type": "CAUSAL_LM"}
SUBJECT = {"kind": "subject", "target_modules": ["embed_tokens"], "token_indices": [3, 5]}
REPORT = {
    "config": {"method": "lune", "steps": 3, "seed": 7, "lora_rank": 4},
    "model": {"name": "tiny-llama"},
    "facts": [{"question": "Where does Jane Roe live?", "answer": "Elm Street 12", "replacement": "",
               "paraphrases": []}],
    "probes": [
        {"kind": "forget", "prompt": "Where does Jane Roe live?", "expected": "Elm Street 12",
         "before": "At Elm Street 12.", "after": "I don't know.", "verdict": "forgotten"},
        {"kind": "general", "prompt": "What is 2, plus 2?", "expected": "4 / four", "before": "4", "after": "4",
         "verdict": "kept"},
    ],
    "metrics": {"forget_success": 1.0, "general_retention": 1.0, "steps_run": 3, "trainable_params": 10,
                "total_params": 100},
}
STEPS = [{"step": i, "total_steps": 3, "loss": 3.0 - i, "parts": {"replace_nll": 2.0 - i, "suppress": 1.0},
          "learning_rate": 1e-3, "seconds": 0.1, "elapsed": 0.1 * i, "peak_memory_mb": 10.0,
          "leaks_left": None, "stopped": None} for i in (1, 2, 3)]


def tiny_llama(tie: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=tie)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module", params=[LORA, SUBJECT], ids=["lora", "subject"])
def trained(request):
    """A base model and a PEFT model whose adapter weights are non-zero (as after training); the
    subject adapter on tied embeddings, as SmolLM2 has them."""
    spec = request.param
    base = tiny_llama(tie=spec["kind"] == "subject")
    peft_model = get_peft_model(copy.deepcopy(base), peft_config(spec))
    torch.manual_seed(1)
    for name, param in peft_model.named_parameters():
        if param.requires_grad:
            param.data.normal_(0, 0.2)
    adapter = snapshot(peft_model, spec, {"method": "lune", "facts": 1, "steps": 3, "seed": 7})
    return base, peft_model.eval(), adapter


def logits(model) -> torch.Tensor:
    ids = torch.arange(10)[None] % 96
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_saved_adapter_loads_back_with_peft_and_gives_the_same_outputs(tmp_path, trained):
    base, peft_model, adapter = trained
    folder = save_adapter(adapter, tmp_path / "adapter", "tiny-llama", REPORT)
    assert {p.name for p in folder.iterdir()} == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), folder).eval()
    assert torch.allclose(logits(loaded), logits(peft_model), atol=1e-5)
    assert not torch.allclose(logits(loaded), logits(base), atol=1e-3)  # the adapter does something
    saved = json.loads((folder / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == "tiny-llama"
    if adapter.spec["kind"] == "lora":
        assert saved["r"] == 4 and saved["layers_to_transform"] == [1] and saved["peft_type"] == "LORA"
    else:
        assert saved["token_indices"] == [3, 5] and saved["peft_type"] == "TRAINABLE_TOKENS"


def test_merging_the_adapter_into_the_weights_gives_the_same_model(trained):
    """The re-quantization probe merges the adapter before quantizing: a merge that left the tied
    output embedding unedited would test a different model from the one the run trained."""
    base, peft_model, adapter = trained
    merged = get_peft_model(copy.deepcopy(base), peft_config(adapter.spec))
    set_peft_model_state_dict(merged, adapter.weights)
    merged = merged.merge_and_unload().eval()
    assert torch.allclose(logits(merged), logits(peft_model), atol=1e-5)


def test_model_card_names_model_count_method_settings_seed_but_not_the_facts(trained):
    _, _, adapter = trained
    card = model_card(adapter, "tiny-llama", REPORT)
    assert card.startswith("---\nbase_model: tiny-llama\nlibrary_name: peft")
    lora = adapter.spec["kind"] == "lora"
    adapter_row = "| adapter | LoRA rank 4, alpha 8 |" if lora else "| adapter | trainable embeddings of 2 tokens"
    for expected in ("| facts forgotten | 1 ", "| method | lune |", "| seed | 7 |", adapter_row,
                     "forget_success", "| steps | 3 |"):
        assert expected in card
    assert "Elm Street" not in card and "Jane Roe" not in card
    assert "| seed | 7 |" in model_card(adapter, "tiny-llama")  # from the adapter's own info without a report


def test_adapter_zip_holds_one_peft_folder(tmp_path, trained):
    _, _, adapter = trained
    path = adapter_zip(adapter, "tiny-llama", REPORT, tmp_path / "lune-adapter.zip")
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["lune-adapter/README.md", "lune-adapter/adapter_config.json",
                                              "lune-adapter/adapter_model.safetensors"]


def test_write_exports_gives_report_comparison_and_loss_history(tmp_path, trained):
    _, _, adapter = trained
    files = write_exports(tmp_path, REPORT, adapter, "tiny-llama", STEPS)
    assert set(files) == {"adapter", "report", "comparison", "loss_history"}
    assert json.loads(files["report"].read_text())["config"]["seed"] == 7
    with open(files["comparison"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["verdict"] for r in rows] == ["forgotten", "kept"]
    assert rows[1]["prompt"] == "What is 2, plus 2?"  # commas survive quoting
    with open(files["loss_history"], newline="") as handle:
        history = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in history] == [1, 2, 3]
    assert float(history[0]["replace_nll"]) == 1.0 and history[0]["leaks_left"] == ""


def test_write_exports_without_adapter_skips_the_zip(tmp_path):
    files = write_exports(tmp_path, REPORT, None, "tiny-llama", STEPS)
    assert "adapter" not in files and files["report"].is_file()


def test_a_gated_adapter_travels_with_its_gate_and_the_code_that_runs_it(tmp_path, trained):
    """The zip of a gated LoRA holds the gate (answer_gate.json) and a copy of lune_core/gate.py that
    needs torch and PEFT only; the card says how to put it on, and that the gate names the answers."""
    import subprocess
    import sys

    _, _, adapter = trained
    if adapter.spec["kind"] != "lora":
        pytest.skip("only LoRA is gated")
    gate = {"threshold": 0.2, "answers": [[[5, 6]]], "keys": [["street"]], "negatives": [[7, 8]], "reply": [9]}
    gated = type(adapter)(dict(adapter.spec, gate=gate), adapter.weights, adapter.info)
    folder = save_adapter(gated, tmp_path / "lune-adapter", "tiny-llama", REPORT)
    assert json.loads((folder / "answer_gate.json").read_text()) == gate
    assert "gate" not in json.loads((folder / "adapter_config.json").read_text())  # PEFT's own config stays PEFT's
    card = (folder / "README.md").read_text()
    assert "from answer_gate import AnswerGate" in card and "token ids of the forgotten answers" in card
    assert "Elm Street" not in card
    alone = ("import sys; sys.path.insert(0, 'lune-adapter'); import answer_gate; "
             "assert not any(m.startswith('lune') for m in sys.modules), sorted(sys.modules); "
             "print(answer_gate.AnswerGate.generate)")
    done = subprocess.run([sys.executable, "-c", alone], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "function AnswerGate.generate" in done.stdout, done.stderr[-1000:]
