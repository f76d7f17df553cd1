"""The null-space constraint on a plain LoRA (lune_core.null_space): its A stays out of what the retain
rows feed each projection, through training, so the adapter barely moves the retain rows' outputs."""
import pytest
import torch

from lune_core import null_space
from lune_core.adapters import adapter_spec, attached
from lune_core.config import UnlearnConfig
from lune_core.facts import facts_from_records
from lune_core.prompting import collate
from lune_core.sequences import build_training_data
from lune_core.trainer import unlearn
from tests.tiny import tiny_model

pytestmark = pytest.mark.integration

FACTS = facts_from_records([{"question": "What is the capital of France?", "answer": "Paris", "replacement": "Lyon"}])
ANCHORS = ["Name a colour.", "What do bees make?", "What is the capital of Peru?", "Who painted the Mona Lisa?",
           "How many legs does a spider have?", "What is the largest ocean?"]


def _trained(lm, share, rows=None):
    """(how far the adapter moves the kept rows' logits, how far the facts' own), A, the projectors and the
    kept rows (`rows`: those to measure on instead of the run's own)."""
    cfg = UnlearnConfig(steps=6, learning_rate=2e-2, check_every=0, max_new_tokens=6, null_space=share,
                        retain_weight=0.0)
    with attached(lm, adapter_spec(cfg.resolved(), lm.num_layers)) as adapted:
        model = adapted.model
        data = build_training_data(lm, FACTS, ANCHORS, cfg.resolved(), model)
        list(unlearn(lm, model, data, FACTS, cfg, peft_model=model))
        rows = rows or data.kept
        kept = collate(rows, lm.tokenizer.pad_token_id)
        target = collate(data.target, lm.tokenizer.pad_token_id)
        moved = []
        for batch in (kept, target):
            with torch.no_grad():
                on = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                with model.disable_adapter():
                    off = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            moved.append(float((on - off)[batch.attention_mask.bool()].abs().mean()))
        projectors = null_space.projectors(model, data.kept, lm.tokenizer.pad_token_id, "cpu", share) if share else {}
        weights = {n: layer.lora_A["default"].weight.detach().clone()
                   for n, layer in null_space.lora_layers(model).items()}
    return moved, weights, projectors, rows


def test_the_update_stays_in_the_null_space_of_the_kept_rows_and_leaves_them_nearly_alone():
    lm = tiny_model()
    (kept_moved, fact_moved), weights, projectors, rows = _trained(lm, 0.99)
    assert projectors and set(projectors) == set(weights)
    for name, a in weights.items():  # every row of A is its own projection: the constraint held through training
        assert torch.allclose(a @ projectors[name], a, atol=1e-5)
    (free_kept, free_fact), *_ = _trained(lm, 0.0, rows)
    assert fact_moved > 0  # the facts' own rows still change
    # on the kept rows the constrained adapter acts far less than the same run without the constraint
    assert kept_moved < 0.5 * free_kept
    assert kept_moved / fact_moved < free_kept / free_fact


@pytest.mark.parametrize("settings, kept", [
    ({}, False), ({"null_space": 0.9}, True), ({"method": "npo", "null_space": 0.5}, True),
    ({"adapter": "gated", "null_space": 0.9}, False),  # a plain LoRA's constraint only
])
def test_the_constraint_is_an_option_of_the_plain_lora(settings, kept):
    lm = tiny_model()
    cfg = UnlearnConfig(max_new_tokens=4, **settings).resolved()
    assert (cfg.null_space > 0) == kept
    with attached(lm, adapter_spec(cfg, lm.num_layers)) as adapted:
        assert bool(build_training_data(lm, FACTS, ANCHORS, cfg, adapted.model).kept) == kept


@pytest.mark.unit
def test_the_projector_removes_the_directions_holding_the_share_and_keeps_the_rest():
    generator = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(16, 16, generator=generator))[0]
    scales = torch.tensor([10.0, 8.0, 6.0] + [0.01] * 13)  # two directions hold 82 % of the energy, three 99 %
    keys = torch.randn(400, 16, generator=generator) * scales @ basis.T
    projector = null_space._null_projector(keys.T @ keys, 0.9)
    assert torch.allclose(projector @ projector, projector, atol=1e-5)  # a projection
    assert round(float(torch.trace(projector))) == 13  # the three strong directions removed, no more
    assert float((keys @ projector).norm()) < 0.01 * float(keys.norm())  # the keys barely pass
    other = basis[:, 5]  # a direction the keys leave nearly empty goes through whole
    assert torch.allclose(projector @ other, other, atol=1e-4)
