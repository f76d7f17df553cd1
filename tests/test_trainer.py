"""The unlearning loop on a tiny random Llama: records, stopping, reproducibility, isolation."""
import copy
import os
from contextlib import nullcontext
from dataclasses import replace
import threading

import pytest
import torch

from lune_core.adapters import adapter_spec, attached
from lune_core.cost import MemoryMeter
from lune_core.config import UnlearnConfig, lora_layers, validate_config
from lune_core.sequences import build_training_data, pick_anchors
from lune_core.facts import facts_from_records
from lune_core.runner import RunResult, answer_with, run_unlearning
from lune_core.losses import Needs, select_positions, top_k_logprobs
from lune_core.models import load_model
from lune_core.prompting import collate, encode_pair
from lune_core.forward import MIN_SHARED_PREFIX, Forward, length_buckets, shared_prefix_length
from lune_core.trainer import REFERENCE_BATCH, REFERENCE_TOP_K, _reference, lr_at, shared_opening, unlearn
from tests.tiny import save_tiny_model, tiny_model

pytestmark = pytest.mark.integration  # a tiny model, a subprocess or the app server

FACTS = [{"question": "What is the capital of France?", "answer": "Paris", "replacement": "It is Lyon."},
         {"question": "Who wrote Hamlet?", "answer": "Shakespeare"}]
GENERAL = [{"question": "What is 2 plus 2?", "answers": ["4", "four"]}]
ANCHORS = ["Name a colour.", "What do bees make?", "What is the capital of Peru?"]


@pytest.fixture(scope="module")
def lm():
    return tiny_model()


def config(**kw):
    base = dict(steps=4, max_new_tokens=6, check_every=0, learning_rate=5e-3)
    base.update(kw)
    return UnlearnConfig(**base)


def run(lm, cfg, stop=None):
    events = list(run_unlearning(lm, facts_from_records(FACTS), cfg, GENERAL, ANCHORS, stop=stop))
    return events[:-1], events[-1]


def base_weights(lm):
    return {k: v.clone() for k, v in lm.model.state_dict().items()}


def test_loop_yields_one_record_per_step_with_each_loss_part(lm):
    records, result = run(lm, config())  # the default: plain LoRA
    assert [r.step for r in records] == [1, 2, 3, 4]
    assert all(set(r.parts) == {"replace_nll", "retain_kl"} for r in records)
    assert all(r.seconds > 0 and r.peak_memory_mb > 0 for r in records)
    assert records[-1].learning_rate < records[0].learning_rate  # cosine decay
    assert isinstance(result, RunResult) and result.adapter.num_params > 0
    assert result.report["metrics"]["trainable_params"] == result.adapter.num_params  # A and B train
    # Under the gate the KL has nothing to hold (the adapter is off wherever the gate is shut).
    gated, _ = run(lm, config(adapter="gated"))
    assert all(set(r.parts) == {"replace_nll"} for r in gated)


def test_training_lowers_the_replacement_loss(lm):
    records, _ = run(lm, config(steps=12, method="lune"))
    assert records[-1].parts["replace_nll"] < records[0].parts["replace_nll"]


def test_lora_b_leaves_zero_so_the_adapter_changes_outputs(lm):
    _, result = run(lm, config(adapter="lora"))
    b = [v for k, v in result.adapter.weights.items() if "lora_B" in k]
    assert b and any(t.abs().sum() > 0 for t in b)


def test_same_seed_gives_the_same_run_and_another_seed_does_not(lm):
    a, _ = run(lm, config(seed=3))
    b, _ = run(lm, config(seed=3))
    c, _ = run(lm, config(seed=4))
    assert [r.loss for r in a] == [r.loss for r in b]
    assert [r.loss for r in a] != [r.loss for r in c]


def test_activation_checkpointing_is_on_for_its_run_only_and_keeps_the_losses(lm):
    def checkpointed():
        return any(getattr(m, "gradient_checkpointing", False) for m in lm.model.modules())

    plain, _ = run(lm, config(seed=3))
    events = run_unlearning(lm, facts_from_records(FACTS), config(seed=3, gradient_checkpointing=True),
                            GENERAL, ANCHORS)
    recomputed = [next(events)]
    assert checkpointed()  # on while the run trains
    recomputed += [e for e in events if not isinstance(e, RunResult)]
    assert [r.loss for r in recomputed] == pytest.approx([r.loss for r in plain], rel=1e-5)
    # switched on for the run only: the shared base is left as it was
    assert not checkpointed()


def test_stop_flag_ends_the_run_at_the_next_step_and_still_reports(lm):
    stop = threading.Event()
    events = []
    for event in run_unlearning(lm, facts_from_records(FACTS), config(steps=50), GENERAL, ANCHORS, stop=stop):
        events.append(event)
        if len(events) == 2:
            stop.set()
    assert len(events) == 3 and isinstance(events[-1], RunResult)
    assert events[-1].report["metrics"]["steps_run"] == 2


def test_runs_leave_the_shared_base_weights_untouched(lm):
    before = base_weights(lm)
    _, result = run(lm, config())
    after = base_weights(lm)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not hasattr(lm.model, "peft_config")
    # the session's adapter still changes answers when attached, and only then
    fresh_before, with_adapter = answer_with(lm, result.adapter, ["Who wrote Hamlet?"], 6)
    plain, plain_again = answer_with(lm, None, ["Who wrote Hamlet?"], 6)
    assert fresh_before == plain == plain_again


def test_gradient_ascent_collapse_guard_stops_the_run():
    # Full fine-tuning at a high rate gets a random tiny model there within a few steps.
    records, result = run(tiny_model(seed=2), config(method="grad_ascent", steps=60, learning_rate=1e-2,
                                                     adapter="full"))
    assert records[-1].stopped and "collapse" in records[-1].stopped
    assert len(records) < 60
    assert result.report["stopped"] == records[-1].stopped


def test_early_stop_checks_leaks_every_few_steps(lm):
    records, _ = run(lm, config(steps=6, check_every=2))
    checked = [r.step for r in records if r.leaks_left is not None]
    assert checked and all(step % 2 == 0 for step in checked)


def test_full_finetune_trains_all_weights_of_its_own_copy():
    own = tiny_model(seed=1)
    before = base_weights(own)
    records, result = run(own, config(adapter="full", method="lune"))
    assert result.adapter is None
    assert result.report["metrics"]["trainable_params"] == result.report["metrics"]["total_params"]
    assert any(not torch.equal(before[k], v) for k, v in own.model.state_dict().items())


@pytest.mark.parametrize("adapter", ["subject", "lora"])
def test_reference_is_the_base_with_the_adapter_disabled(lm, adapter):
    cfg = config(adapter=adapter)
    facts = facts_from_records(FACTS)
    with attached(lm, adapter_spec(cfg, lm.num_layers, [lm.tokenizer(" France")["input_ids"][0]])) as adapted:
        peft_model = adapted.model
        data = build_training_data(lm, facts, ANCHORS, cfg, peft_model)
        records = list(unlearn(lm, peft_model, data, facts, cfg, peft_model=peft_model))
        ids = torch.tensor([data.target[0][0]])
        with peft_model.disable_adapter(), torch.no_grad():
            off = peft_model(input_ids=ids).logits
        on = peft_model(input_ids=ids).logits
    with torch.no_grad():
        bare = lm.model(input_ids=ids).logits
    assert len(records) == cfg.steps
    assert torch.allclose(off, bare) and not torch.allclose(on, bare)


def test_the_anchor_reference_in_batches_is_each_anchor_on_its_own(lm):
    """The KL's base values come from padded batches of anchors: per anchor, the same top tokens
    and log-probs as a forward of that anchor alone."""
    data = build_training_data(lm, facts_from_records(FACTS), ANCHORS, config())
    words = ("cat", "tree", "blue", "light", "stone", "rain", "ship", "bell", "road", "fire")
    rows = [encode_pair(lm.tokenizer, f"Name a word that rhymes with {w}.", f"{w * (i % 3 + 1)} rhymes.", add_eos=False)
            for i, w in enumerate(words * 2)]  # rows of different lengths, more than one batch
    data = replace(data, anchor=rows)
    assert len(data.anchor) > REFERENCE_BATCH
    forward = Forward(lm.model, "cpu", lm.tokenizer.pad_token_id)
    _, batched = _reference(forward, data, Needs(anchor=True), None)
    assert len(batched) == len(data.anchor)
    for row, (logp, ids) in zip(data.anchor, batched):
        alone_logp, alone_ids = top_k_logprobs(forward({"anchor": [row]})["anchor"].logits, REFERENCE_TOP_K)
        # padding moves the floats by ~1e-6, which may reorder near-ties deep in a random model's top 64
        assert torch.allclose(logp, alone_logp, atol=1e-5) and torch.equal(ids[:, :5], alone_ids[:, :5])


def test_forward_computes_logits_only_at_loss_positions_and_matches_a_full_forward(lm):
    facts = facts_from_records(FACTS)
    data = build_training_data(lm, facts, ANCHORS, config())
    groups = {"target": data.target, "forget": data.forget, "anchor": data.anchor}
    views = Forward(lm.model, "cpu", lm.tokenizer.pad_token_id, layer=1, with_hidden=True)(groups)
    for name, rows in groups.items():
        batch = collate(rows, lm.tokenizer.pad_token_id)
        with torch.no_grad():
            out = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
        full = select_positions(out.logits, batch.labels, out.hidden_states[2])
        assert views[name].logits.shape == full.logits.shape  # (answer tokens, vocab), not (rows, seq, vocab)
        assert torch.allclose(views[name].logits, full.logits, atol=1e-5)
        assert torch.equal(views[name].labels, full.labels) and torch.equal(views[name].rows, full.rows)
        if name == "forget":  # hidden states are kept for the suppression term's rows only
            assert torch.allclose(views[name].hidden, full.hidden, atol=1e-5)
        else:
            assert views[name].hidden is None


def test_length_buckets_split_only_where_the_padding_saved_outweighs_a_pass():
    assert length_buckets([40] * 20) == [list(range(20))]  # nothing to save
    assert length_buckets([]) == []
    lengths = [20, 300, 22, 21, 310, 19] * 3
    buckets = length_buckets(lengths)
    assert [sorted({lengths[i] for i in b}) for b in buckets] == [[19, 20, 21, 22], [300, 310]]
    assert all(b == sorted(b) for b in buckets) and len(length_buckets(lengths, most=1)) == 1


def test_rows_of_very_different_lengths_run_in_buckets_and_come_back_in_their_order(lm):
    """Rows far apart in length run in passes of their own (less padding); every view is as one pass gives it."""
    facts = facts_from_records(FACTS)
    data = build_training_data(lm, facts, ANCHORS, config())
    long = encode_pair(lm.tokenizer, "Describe, word by word, " + "a long and winding road " * 30, "A road.",
                       loss_span=(0, 7))
    groups = {"target": data.target, "forget": data.forget, "anchor": [data.anchor[0], long, *data.anchor[1:]]}
    rows = [s for seqs in groups.values() for s in seqs]
    buckets = length_buckets([len(ids) for ids, _ in rows])
    assert len(buckets) > 1 and sorted(i for b in buckets for i in b) == list(range(len(rows)))
    model = copy.deepcopy(lm.model).requires_grad_(True)
    results = []
    for split in (True, False):
        views = Forward(model, "cpu", lm.tokenizer.pad_token_id, layer=1, with_hidden=True)(groups) if split else {
            name: select_positions(out.logits, batch.labels, out.hidden_states[2] if name == "forget" else None)
            for name, batch in ((n, collate(r, lm.tokenizer.pad_token_id)) for n, r in groups.items())
            for out in [model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              output_hidden_states=True)]}
        loss = sum(v.logits.logsumexp(-1).sum() for v in views.values()) + views["forget"].hidden.sum()
        model.zero_grad()
        loss.backward()
        results.append((views, [p.grad.clone() for p in model.parameters()]))
    (split, split_grads), (whole, whole_grads) = results
    for name in groups:
        assert torch.allclose(split[name].logits, whole[name].logits, atol=1e-5)
        assert torch.equal(split[name].labels, whole[name].labels) and torch.equal(split[name].rows, whole[name].rows)
    assert torch.allclose(split["forget"].hidden, whole["forget"].hidden, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(split_grads, whole_grads))


@pytest.mark.parametrize("adapter", ["subject", "lora", "full"])
def test_sharing_the_opening_tokens_gives_the_same_logits_states_and_gradients(lm, adapter):
    """The chat template's opening, run once and cached, must change nothing a loss sees: without a graph
    for the subject adapter (its edited tokens are never in it), with one for a LoRA or full fine-tuning,
    whose weights every token passes through; and an edited token in the opening ends the shared part
    before it."""
    cfg = config(adapter=adapter)
    facts = facts_from_records(FACTS)
    tokens = [lm.tokenizer(" France")["input_ids"][0]] if adapter == "subject" else []
    full = copy.deepcopy(lm.model).requires_grad_(True)
    context = attached(lm, adapter_spec(cfg, lm.num_layers, tokens)) if adapter != "full" else nullcontext(None)
    with context as adapted:
        peft_model = adapted.model if adapted is not None else full
        data = build_training_data(lm, facts, ANCHORS, cfg, adapted.model if adapted is not None else None)
        groups = {"target": data.target, "forget": data.forget, "anchor": data.anchor}
        batch = collate([s for rows in groups.values() for s in rows], lm.tokenizer.pad_token_id)
        edited, trains = shared_opening(cfg, adapted.model if adapted is not None else None)
        assert (edited, trains) == ((frozenset(tokens), False) if adapter == "subject" else (frozenset(), True))
        assert shared_prefix_length(batch, edited) >= 10  # the system prompt and the user turn's opening
        assert shared_opening(config(adapter=adapter, gradient_checkpointing=True), peft_model) == (None, False)
        assert shared_opening(cfg, peft_model, gate=object()) == (None, False)
        params = [p for p in peft_model.parameters() if p.requires_grad]
        results = []
        for rows in (None, edited):
            forward = Forward(peft_model, "cpu", lm.tokenizer.pad_token_id, layer=1, with_hidden=True, edited=rows,
                              opening_trains=trains)
            views = forward(groups)
            loss = sum(v.logits.logsumexp(-1).sum() for v in views.values()) + views["forget"].hidden.sum()
            for p in params:
                p.grad = None
            loss.backward()
            results.append((views, [p.grad.clone() for p in params]))
        (plain, plain_grads), (cached, cached_grads) = results
        assert sum(float(g.abs().sum()) for g in plain_grads) > 0
        for plain_grad, cached_grad in zip(plain_grads, cached_grads):
            assert torch.allclose(plain_grad, cached_grad, atol=1e-5)
        for name in groups:
            assert torch.allclose(plain[name].logits, cached[name].logits, atol=1e-5)
            assert torch.equal(plain[name].labels, cached[name].labels)
            assert torch.equal(plain[name].rows, cached[name].rows)
        assert torch.allclose(plain["forget"].hidden, cached["forget"].hidden, atol=1e-5)
    # an edited token inside the opening: sharing stops before it
    opening = batch.input_ids[0, batch.attention_mask[0].tolist().index(1):].tolist()
    for token in (opening[5], opening[2]):
        cut = opening.index(token)
        assert shared_prefix_length(batch, frozenset([token])) == (cut if cut >= MIN_SHARED_PREFIX else 0)


def test_schedule_warms_up_then_decays_to_zero():
    cfg = UnlearnConfig(steps=100, learning_rate=1.0, warmup_fraction=0.1)
    rates = [lr_at(s, cfg) for s in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:])) and rates[-1] < 0.01


def test_lora_sits_on_the_mlps_of_the_middle_half_or_gated_on_the_upper_half_unless_told_otherwise():
    assert lora_layers(UnlearnConfig(), 30) == list(range(8, 22))
    assert UnlearnConfig().resolved().target_modules == ("gate_proj", "up_proj", "down_proj")
    assert lora_layers(UnlearnConfig(adapter="gated"), 30) == list(range(15, 30))
    assert len(UnlearnConfig(adapter="gated").resolved().target_modules) == 7
    assert lora_layers(UnlearnConfig(layers=(3, 1, 3)), 30) == [1, 3]
    assert lora_layers(UnlearnConfig(layer_band=(0.5, 1.0)), 30) == list(range(15, 30))


@pytest.mark.parametrize("kw, message", [
    (dict(steps=0), "steps"), (dict(steps=10**6), "steps"), (dict(learning_rate=-1.0), "learning rate"),
    (dict(lora_rank=0), "rank"), (dict(layers=(99,)), "layer indices"), (dict(method="nope"), "unknown method"),
    (dict(seed=-5), "seed"), (dict(suppress_layer=40), "suppression layer"), (dict(adapter="all"), "unknown adapter"),
    (dict(null_space=1.0), "null space"),
])
def test_bad_settings_are_refused_with_a_message(kw, message):
    with pytest.raises(ValueError, match=message):
        validate_config(UnlearnConfig(**kw), num_layers=30)


def test_neighbouring_anchors_are_picked_first():
    pool = pick_anchors(["What is the capital of Peru?", "Name a colour.", "What do bees make?",
                         "Who wrote Emma?", "Sing a song."], ["What is the capital of France?"], 2, seed=0)
    assert pool[0] == "What is the capital of Peru?" and len(pool) == 2


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's resident-size high-water mark")
def test_cpu_peak_memory_counts_what_was_freed_before_the_sample():
    meter = MemoryMeter("cpu")
    start = meter.sample()
    block = torch.ones(300 * 2**20 // 4)  # 300 MB, its own mapping: returned to the system when freed
    del block
    assert meter.sample() >= start + 290
    assert MemoryMeter("cpu").sample() < start + 290  # a new run starts from what is resident now


def test_memory_guard_refuses_runs_that_cannot_fit():
    from lune_core.cost import check_fits, estimate_run_memory_mb

    small = estimate_run_memory_mb(10**6, 576, 30, 49152, 1000)
    huge = estimate_run_memory_mb(10**11, 8192, 80, 150000, 10**5)
    assert 0 < small < huge
    check_fits(small, "cpu")
    with pytest.raises(MemoryError, match="MB are free"):
        check_fits(huge, "cpu")


def test_4bit_layers_keep_their_gradients_after_an_evaluation(tmp_path, monkeypatch):
    # On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights at the first eval forward for a
    # bf16 kernel that has no backward; training after the "before" answers then went wrong.
    monkeypatch.setenv("LUNE_MODEL_ROOTS", str(tmp_path))
    lm4 = load_model(str(save_tiny_model(tmp_path / "tiny")), device="cpu")
    ids = lm4.tokenizer(["The capital of France is"], return_tensors="pt").input_ids

    def input_gradient():
        embeds = lm4.model.get_input_embeddings()(ids).detach().requires_grad_(True)
        lm4.model(inputs_embeds=embeds).logits.sum().backward()
        return embeds.grad

    before = input_gradient()
    with torch.no_grad():
        lm4.model(ids)  # what answering a probe does
    assert torch.allclose(input_gradient(), before)
