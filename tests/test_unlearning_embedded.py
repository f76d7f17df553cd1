"""The real thing: the embedded 4-bit SmolLM2 forgets three facts it knows and keeps the rest, with the
default plain LoRA and with the answer gate."""
import pytest

from lune_core.config import UnlearnConfig
from lune_core.facts import facts_from_records, read_jsonl
from lune_core.models import load_model
from lune_core.runner import RunResult, load_anchors, load_general, run_unlearning
from tests.test_assets import ASSETS

pytestmark = pytest.mark.slow
# What the default measured on these facts (docs/benchmarks.md, heldout, 3 facts, seed 0), rounded down.
# Measured 2026-12-07: same words 0.67, other words 0.00 (of 1), adversarial 0.56, neighbours 0.75, general 0.90.
PARAPHRASE_SAME_WORDS, ADVERSARIAL, NEIGHBOURS, GENERAL = 0.6, 0.5, 0.7, 0.85
SAMPLES, SAMPLED_LEAKS = 3, 0  # sampled answers per fact (temperature 0.7, top-p 0.9), and how many may say it


def _run(config: UnlearnConfig) -> RunResult:
    lm = load_model()
    assert lm.quantization == "nf4"
    # Facts not used while tuning the defaults: one capital, one symbol, one author.
    picks = [("capitals", 1), ("science_symbols", 0), ("authors", 1)]
    facts = facts_from_records([read_jsonl(ASSETS / "presets" / f"{name}.jsonl")[i] for name, i in picks])
    events = list(run_unlearning(lm, facts, config, load_general(limit=48), load_anchors()))
    assert isinstance(events[-1], RunResult)
    return events[-1]


@pytest.fixture(scope="module")
def result():
    return _run(UnlearnConfig())


@pytest.fixture(scope="module")
def gated():
    return _run(UnlearnConfig(adapter="gated"))


@pytest.fixture(scope="module")
def report(result):
    return result.report


def test_the_model_knew_the_facts_before(report):
    assert report["metrics"]["known_forget"] == 3
    assert report["metrics"]["known_paraphrase"] >= 6


def test_all_three_facts_stop_leaking(report):
    rows = [r for r in report["probes"] if r["kind"] == "forget"]
    assert all(r["leaked_before"] and not r["leaked_after"] for r in rows), rows


def test_the_known_paraphrases_and_adversarial_forms_stop_leaking(report):
    # Measured on these facts (docs/benchmarks.md, heldout 3 facts, seed 0), a little below, so a change that
    # loses forgetting fails here; the locality issue's bars are in the benchmark, met or MISSED.
    m = report["metrics"]
    assert m["paraphrase_by_kind"]["same_words"] >= PARAPHRASE_SAME_WORDS, lost(report)
    assert m["adversarial_success"] >= ADVERSARIAL, lost(report)
    assert m["forget_clean"] == 1.0 and m["degenerate_rate"] <= m["degenerate_rate_before"] + 0.05


def lost(report):
    return [(r["prompt"], r["after"]) for r in report["probes"]
            if r["verdict"] in ("lost", "broken", "still leaks", "spilled", "spliced")]


def test_the_report_shows_what_the_question_words_cannot_reach(report):
    """Rewordings that share no word with the question, other facts with the same answer, fluency and the
    logit lens are in the report, and the plain LoRA's figures are what stock PEFT loads. (Its other-words
    rewording of Japan's capital still gets Tokyo here: a figure the benchmark marks MISSED.)"""
    rows, m = report["probes"], report["metrics"]
    other = [r for r in rows if r["kind"] == "paraphrase" and r["subkind"] == "other_words" and r["leaked_before"]]
    same = [r for r in rows if r["kind"] == "neighbour" and r["subkind"] == "same_answer" and r["correct_before"]]
    assert other and m["known_paraphrase_by_kind"]["other_words"] == len(other)
    assert len(same) >= 2 and m["known_neighbour_by_kind"]["same_answer"] == len(same)
    assert m["paraphrase_by_kind"]["other_words"] is not None
    assert m["fluency_before"] is not None and m["fluency_after"] is not None and m["fluency_answers"] >= 9
    assert len(report["logit_lens"]) == 3 and m["lens_layers"] == 30
    assert all(rec["before"]["rank"][-1] <= 3 for rec in report["logit_lens"]), "the base says each answer"
    assert "Weights adapted everywhere" in report["forgetting_kind"]
    assert report["stock"] == {"same_as_measured": True}  # what stock PEFT loads is what was measured


def test_the_gate_keys_on_the_question_words_and_its_blind_spot_is_visible(gated):
    """The gate keys on the question's words: the preset's other-words rewording of Japan's capital still gets
    Tokyo (measured here); what it keeps it keeps by construction."""
    m = gated.report["metrics"]
    assert m["paraphrase_by_kind"]["other_words"] < 1.0 and m["forget_success"] == 1.0
    assert m["general_retention"] >= 0.95, lost(gated.report)
    assert "Output suppressed where a condition holds" in gated.report["forgetting_kind"]
    config, spec = gated.report["config"], gated.adapter.spec
    assert config["adapter"] == "gated" and spec["kind"] == "lora"
    assert spec["layers_to_transform"] == list(range(15, 30))
    # the gate knows each fact's answer and the negative it lets the adapter write
    assert len(spec["gate"]["answers"]) == 3 and all(spec["gate"]["negatives"])
    # A (8 x in) and B (out x 8) on q, o; k, v (3 key-value heads of 64); gate, up, down (SmolLM2: 576, MLP 1536)
    per_layer = 8 * (2 * (576 + 576) + 2 * (576 + 192) + 3 * (576 + 1536))
    assert gated.report["metrics"]["trainable_params"] == gated.adapter.num_params == 15 * per_layer


def test_the_general_answers_the_model_got_right_stay_right(report):
    assert report["metrics"]["general_retention"] >= GENERAL, lost(report)


def test_the_default_is_a_plain_lora_on_the_mlps_of_the_middle_half(result, report):
    config = report["config"]
    assert config["adapter"] == "lora" and "edited_tokens" not in report
    spec = result.adapter.spec
    assert spec["kind"] == "lora" and "gate" not in spec and spec["layers_to_transform"] == list(range(8, 22))
    assert spec["target_modules"] == ["gate_proj", "up_proj", "down_proj"]
    # A (8 x in) and B (out x 8) on gate, up (576 -> 1536) and down (1536 -> 576)
    assert report["metrics"]["trainable_params"] == result.adapter.num_params == 14 * 8 * 3 * (576 + 1536)


def test_report_records_config_steps_and_cost(report):
    assert report["config"]["method"] == "lune"
    assert report["steps"] and all("loss" in s and "parts" in s for s in report["steps"])
    m = report["metrics"]
    assert 0 < m["trainable_params"] < m["total_params"] / 20
    assert m["train_seconds"] > 0 and m["peak_memory_mb"] > 0


def test_the_facts_neighbours_stay_right(report):
    # The same subject's other facts, the same question about other subjects, the question's words in another
    # sense, other facts with the same answer: measured here, a little below (the bar, 0.90, is the
    # benchmark's).
    assert report["metrics"]["neighbour_retention"] >= NEIGHBOURS, lost(report)


def test_the_presets_curated_neighbours_and_the_adversarial_forms_are_scored(report):
    rows = [r for r in report["probes"] if r["kind"] == "neighbour"]
    assert {r["source"] for r in rows} == {"curated"} and {r["fact"] for r in rows} == {0, 1, 2}
    assert {r["subkind"] for r in rows} == {"same_subject", "same_relation", "shared_words", "same_answer"}
    m = report["metrics"]
    assert m["known_neighbour"] >= 9, "assets/VERIFIED.md records which neighbours the base answers right"
    assert m["neighbour_retention"] is not None and m["adversarial_success"] is not None
    assert m["known_adversarial"] >= 6
    # The base model ranks the true answers far above the wrong ones; after forgetting it does not.
    assert m["true_preferred_before"] == 1.0 and m["truth_ratio_before"] < 0.1
    assert m["truth_ratio_after"] > 10 * m["truth_ratio_before"]


# Run after the model card's snippet in a fresh interpreter: the forget questions through the chat
# template, greedy, as the run asked them.
STRANGER = """
import json, sys
import torch
questions, max_new_tokens, sample = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
torch.manual_seed(0)
answers = []
for question in questions:
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt")
    decoding = (dict(do_sample=True, temperature=0.7, top_p=0.9, top_k=None) if sample else
                dict(do_sample=False, temperature=None, top_p=None, top_k=None))
    out = generate(**ids, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.eos_token_id, **decoding)
    answers.append(tokenizer.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
print(json.dumps(answers))
"""


def _exported(result, tmp_path) -> tuple[str, str]:
    """The zip unpacked where a stranger would: (the card, the card's loading code)."""
    import re
    import zipfile

    from lune_core.export import adapter_zip

    report = result.report
    archive = adapter_zip(result.adapter, report["model"]["name"], report, tmp_path / "lune-adapter.zip")
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(tmp_path / "home")
    card = (tmp_path / "home" / "lune-adapter" / "README.md").read_text(encoding="utf-8")
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert "lune" not in snippet.replace("lune-adapter", "")
    return card, snippet


def _ask(code: str, questions: list[str], max_new_tokens: int, home, sample: bool = False) -> list[str]:
    """`code` (which defines model and tokenizer) and STRANGER in a fresh interpreter: plain transformers + PEFT."""
    import json
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code + STRANGER, json.dumps(questions), str(max_new_tokens),
                           "1" if sample else "0"],
                          cwd=home, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_stranger_loads_the_exported_zip_as_its_card_says_and_gets_the_runs_answers(result, tmp_path):
    """Plain transformers + PEFT in a fresh process, nothing of lune imported: the card's own code, which is
    PeftModel.from_pretrained and nothing else. The facts, their rewordings and their neighbours get the run's
    own answers, greedy; sampled, the facts stay forgotten."""
    from lune_core.facts import leaks

    report = result.report
    card, snippet = _exported(result, tmp_path)
    assert "PeftModel.from_pretrained" in snippet and "gate" not in snippet and "stock PEFT, no gate" not in card
    rows = [r for r in report["probes"] if r["kind"] in ("forget", "paraphrase", "neighbour") and not r["prefill"]]
    answers = _ask(snippet, [r["prompt"] for r in rows], report["config"]["max_new_tokens"], tmp_path / "home")
    # The same opening words as the run's own "after" everywhere, and the same verdict on the facts; one at a
    # time instead of in a padded batch, a near-tie later in a long answer may go the other way (seen: a
    # rewording of copper's symbol went on "…also abbreviated as Co" where the batch said "…known as Cu").
    differ = []
    for row, answer in zip(rows, answers):
        expected = row["expected"] or row["after"]
        assert answer.split()[:3] == row["after"].split()[:3], (row["prompt"], answer, row["after"])
        if leaks(answer, expected) != leaks(row["after"], expected):
            assert row["kind"] != "forget", (row["prompt"], answer, row["after"])
            differ.append((row["prompt"], answer, row["after"]))
    assert len(differ) <= len(rows) // 10, differ
    forget = [r for r in rows if r["kind"] == "forget"]
    sampled = _ask(snippet, [r["prompt"] for r in forget for _ in range(SAMPLES)], report["config"]["max_new_tokens"],
                   tmp_path / "home", sample=True)
    said = [a for a, r in zip(sampled, [r for r in forget for _ in range(SAMPLES)]) if leaks(a, r["expected"])]
    assert len(said) <= SAMPLED_LEAKS, said


def test_stock_peft_and_a_merge_answer_as_the_card_says_the_gated_adapter_does_when_loaded_so(gated, tmp_path):
    """The way PEFT, vLLM or a merge load every LoRA: PeftModel.from_pretrained and no gate. The card states
    what that model answers (the run measured it with the gate's code taken off); here a fresh process
    without the gate's lines gives the same answers. merge_and_unload on the 4-bit base re-quantizes the
    merged weights: each answer is then the stock one or, where the small update rounded away, the base's
    own (seen here: Japan's capital said again), as the card warns."""
    from lune_core.facts import leaks

    report = gated.report
    card, snippet = _exported(gated, tmp_path)
    stock = snippet.split("import json, sys")[0] + "generate = model.generate\n"  # up to the gate's lines
    assert "PeftModel.from_pretrained" in stock and "answer_gate" not in stock
    assert "Loaded the way PEFT loads every LoRA" in card and "stock PEFT, no gate" in card
    expected = [a for a in report["stock"]["answers"] if a["kind"] == "forget"]
    questions, mnt = [a["prompt"] for a in expected], report["config"]["max_new_tokens"]
    truth = {r["prompt"]: r["expected"] for r in report["probes"] if r["kind"] == "forget"}
    loaded = _ask(stock, questions, mnt, tmp_path / "home")
    merged = _ask(stock + "model = model.merge_and_unload()\ngenerate = model.generate\n", questions, mnt,
                  tmp_path / "home")
    base = {r["prompt"]: r["before"] for r in report["probes"] if r["kind"] == "forget"}
    for row, plain, folded in zip(expected, loaded, merged):
        assert plain.split()[:3] == row["after"].split()[:3], (plain, row["after"])
        answer = truth[row["prompt"]]
        assert leaks(plain, answer) == leaks(row["after"], answer), (plain, row["after"])
        assert folded.split()[:3] in (plain.split()[:3], base[row["prompt"]].split()[:3]), (folded, plain)
