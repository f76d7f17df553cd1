import math

import pytest
import torch

from lune_core.config import UnlearnConfig
from lune_core.losses import (METHODS, LossInputs, Reference, Selected, kl_to_reference, loss_positions, mean_nll,
                              misdirection, select_positions, sequence_logp, top_k_logprobs)
from lune_core.prompting import IGNORE


def selected(logits, labels, rows, hidden=None):
    return Selected(torch.tensor(logits, dtype=torch.float32, requires_grad=True), torch.tensor(labels),
                    torch.tensor(rows), n_rows=max(rows) + 1, hidden=hidden)


def test_select_positions_keeps_positions_that_predict_labelled_tokens():
    logits = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    labels = torch.tensor([[IGNORE, IGNORE, 1, 2], [IGNORE, 0, IGNORE, IGNORE]])
    sel = select_positions(logits, labels, None)
    assert sel.labels.tolist() == [1, 2, 0]
    assert sel.rows.tolist() == [0, 0, 1]
    # position p predicts token p+1
    assert torch.equal(sel.logits[0], logits[0, 1]) and torch.equal(sel.logits[2], logits[1, 0])


def test_sequence_logp_sums_per_row_and_nll_is_the_token_mean():
    uniform = [[0.0, 0.0]] * 3
    sel = selected(uniform, [0, 1, 0], [0, 0, 1])
    assert torch.allclose(sequence_logp(sel), torch.tensor([2 * math.log(0.5), math.log(0.5)]))
    assert math.isclose(float(mean_nll(sel).detach()), math.log(2), rel_tol=1e-6)


def test_select_positions_takes_logits_already_cut_to_the_loss_positions():
    logits = torch.randn(2, 4, 3)
    labels = torch.tensor([[IGNORE, IGNORE, 1, 2], [IGNORE, 0, IGNORE, IGNORE]])
    full = select_positions(logits, labels, None)
    cut = select_positions(logits[loss_positions(labels)], labels, None)
    assert torch.equal(full.logits, cut.logits) and torch.equal(full.labels, cut.labels)


def full_kl(ref_logits, logits):
    p, q = torch.log_softmax(ref_logits, -1), torch.log_softmax(logits, -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def test_kl_is_zero_against_itself_and_positive_otherwise():
    logits = torch.tensor([[1.0, 2.0, 0.5]])
    sel = Selected(logits.clone(), torch.tensor([0]), torch.tensor([0]), 1)
    assert float(kl_to_reference(sel, *top_k_logprobs(logits, 3))) == pytest.approx(0.0, abs=1e-7)
    sel.logits = torch.tensor([[3.0, 0.0, 0.0]])
    assert float(kl_to_reference(sel, *top_k_logprobs(logits, 3))) == pytest.approx(full_kl(logits, sel.logits))
    assert float(kl_to_reference(sel, *top_k_logprobs(logits, 3))) > 0.1


def test_top_k_kl_is_a_lower_bound_that_tightens_with_k():
    torch.manual_seed(0)
    ref_logits = torch.randn(6, 50) * 4  # peaked, like a model's answer tokens
    sel = Selected(torch.randn(6, 50) * 4, torch.zeros(6, dtype=torch.long), torch.arange(6), 6)
    exact = full_kl(ref_logits, sel.logits)
    by_k = [float(kl_to_reference(sel, *top_k_logprobs(ref_logits, k))) for k in (1, 8, 50)]
    assert by_k[0] <= by_k[1] + 1e-6 <= exact + 2e-6
    assert by_k[2] == pytest.approx(exact, rel=1e-5)


def test_misdirection_is_zero_on_the_goal_and_about_one_plus_s2_from_an_orthogonal_state():
    u = torch.tensor([1.0, 0.0])
    ref = torch.tensor([[0.0, 2.0]])
    assert float(misdirection(torch.tensor([[2.0, 0.0]]), ref, u, 1.0)) == pytest.approx(0.0)
    assert float(misdirection(ref, ref, u, 1.0)) == pytest.approx(2.0)
    assert float(misdirection(ref, ref, u, 2.0)) == pytest.approx(5.0)


def _inputs():
    torch.manual_seed(0)
    hidden = torch.randn(3, 4, requires_grad=True)
    target = selected(torch.randn(3, 5).tolist(), [1, 2, 3], [0, 0, 1])
    forget = selected(torch.randn(3, 5).tolist(), [0, 4, 2], [0, 1, 1], hidden=hidden)
    anchor = selected(torch.randn(2, 5).tolist(), [1, 1], [0, 1])
    top_logp, top_ids = top_k_logprobs(torch.randn(2, 5), 3)
    ref = Reference(forget_logp=torch.tensor([-1.0, -2.0]), forget_hidden=torch.randn(3, 4),
                    anchor_top_logp=top_logp, anchor_top_ids=top_ids)
    return LossInputs(target, forget, anchor, ref, torch.nn.functional.normalize(torch.randn(4), dim=0))


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_returns_a_differentiable_loss_and_named_parts(name):
    inputs = _inputs()
    loss, parts = METHODS[name].loss(inputs, UnlearnConfig(method=name))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert parts and all(torch.isfinite(torch.as_tensor(v)) for v in parts.values())
    leaves = (inputs.target.logits, inputs.forget.logits, inputs.forget.hidden, inputs.anchor.logits)
    used = [t for t in leaves if t.grad is not None and t.grad.abs().sum() > 0]
    assert used, "the loss must depend on the policy's outputs"


def test_lune_is_the_sum_of_its_parts():
    inputs = _inputs()
    config = UnlearnConfig(suppress_weight=0.5, retain_weight=2.0)
    loss, parts = METHODS["lune"].loss(inputs, config)
    assert torch.allclose(loss, parts["replace_nll"] + 2.0 * parts["retain_kl"])
    assert set(parts) == {"replace_nll", "retain_kl"}
    loss, parts = METHODS["lune_misdirect"].loss(inputs, config)
    expected = parts["replace_nll"] + 0.5 * parts["suppress"] + 2.0 * parts["retain_kl"]
    assert torch.allclose(loss, expected)
    assert set(parts) == {"replace_nll", "suppress", "retain_kl"}


def test_gradient_ascent_pushes_the_answer_down():
    inputs = _inputs()
    loss, parts = METHODS["grad_ascent"].loss(inputs, UnlearnConfig())
    assert torch.allclose(loss, -parts["forget_nll"])


def test_npo_equals_its_formula_and_is_2_over_beta_log2_at_the_reference():
    config = UnlearnConfig(retain_weight=0.0)
    inputs = _inputs()
    inputs.ref.forget_logp = sequence_logp(inputs.forget).detach()
    loss, _ = METHODS["npo"].loss(inputs, config)
    assert float(loss) == pytest.approx(2 / config.npo_beta * math.log(2), rel=1e-5)


def test_simnpo_does_not_read_the_reference():
    config = UnlearnConfig(retain_weight=0.0)
    a, b = _inputs(), _inputs()
    b.ref.forget_logp = b.ref.forget_logp + 100
    assert torch.allclose(METHODS["simnpo"].loss(a, config)[0], METHODS["simnpo"].loss(b, config)[0])


def test_registry_lists_lune_first_and_flags_ascent_methods():
    assert list(METHODS)[0] == "lune"
    assert {m.name for m in METHODS.values() if m.ascent} == {"grad_ascent", "npo", "simnpo"}
    assert all(m.description for m in METHODS.values())


def test_the_per_row_kl_weighs_a_one_token_row_as_much_as_a_long_one():
    """Row 0 holds one token that drifted, row 1 three tokens that did not: per token the drift is a quarter
    of the mean, per row a half."""
    ref = torch.tensor([[2.0, 0.0, 0.0]] * 4)
    logits = torch.tensor([[0.0, 2.0, 0.0]] + [[2.0, 0.0, 0.0]] * 3)
    sel = Selected(logits, torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 1, 1]), 2)
    drift = full_kl(ref[:1], logits[:1])
    assert float(kl_to_reference(sel, *top_k_logprobs(ref, 3))) == pytest.approx(drift / 4, rel=1e-5)
    assert float(kl_to_reference(sel, *top_k_logprobs(ref, 3), per_row=True)) == pytest.approx(drift / 2, rel=1e-5)
