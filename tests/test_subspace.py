"""The focused LoRA: A is set to the input directions the forget rows use and the rows to keep do
not, and frozen, so whatever B learns moves the forget rows far more than the rows to keep."""
import pytest
import torch

from lune_core.adapters import adapter_spec, attached
from lune_core.config import UnlearnConfig
from lune_core.prompting import IGNORE, collate
from lune_core.subspace import _collect, focus_lora, focused_directions
from tests.tiny import tiny_model

pytestmark = pytest.mark.integration  # a tiny model, a subprocess or the app server


def change(peft_model, rows, pad):
    batch = collate(rows, pad)
    with torch.no_grad():
        on = peft_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        with peft_model.disable_adapter():
            off = peft_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return float((on - off)[batch.attention_mask.bool()].norm(dim=-1).mean())


def test_a_focused_update_moves_the_forget_rows_and_barely_the_rows_to_keep():
    lm = tiny_model()
    tok, pad = lm.tokenizer, lm.tokenizer.pad_token_id
    # Plain token rows (no chat template, whose shared system prompt would dominate a 32-wide model).
    def rows(*texts):
        return [(tok(t)["input_ids"],) * 2 for t in texts]

    forget = rows("Paris is the capital of France")
    keep = rows("Bees make honey in summer", "Two plus two is four", "The sky is blue today", "Cats sleep a lot")
    spec = adapter_spec(UnlearnConfig(adapter="lora", layer_band=(0, 1)), lm.num_layers)

    def randomise_b(peft_model):
        torch.manual_seed(1)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=1e-4)  # a small trained B: its first-order effect

    torch.manual_seed(0)
    with attached(lm, spec) as peft_model:  # the plain LoRA initialisation: no preference
        randomise_b(peft_model)
        assert change(peft_model, forget, pad) < 2 * change(peft_model, keep, pad)
    with attached(lm, spec) as peft_model:
        contrast = focus_lora(peft_model, forget, [keep[:1], keep[1:]], "cpu", pad, ridge=1e-3)
        assert contrast and max(contrast.values()) > 1  # directions with more forget than keep energy
        frozen = [p for n, p in peft_model.named_parameters() if "lora_A" in n]
        assert frozen and not any(p.requires_grad for p in frozen)
        assert all(p.requires_grad for n, p in peft_model.named_parameters() if "lora_B" in n)
        randomise_b(peft_model)
        assert change(peft_model, forget, pad) > 5 * change(peft_model, keep, pad)


def test_the_few_forget_rows_give_the_same_directions_as_the_full_eigenproblem():
    """Fewer forget tokens than the layer is wide: the n × n route solves the same generalised
    eigenproblem as the dense d × d one (up to each direction's sign), normalised to vᵀ(C_k + λI)v = 1."""
    torch.manual_seed(0)
    d, n, r, ridge = 48, 20, 6, 0.1
    x_f = torch.randn(n, d, dtype=torch.float64)
    x_k = torch.randn(200, d, dtype=torch.float64) @ torch.randn(d, d, dtype=torch.float64)
    c_k = x_k.T @ x_k / len(x_k)
    values, rows = focused_directions(x_f, c_k, ridge, r)
    m = c_k + (ridge * float(torch.trace(c_k)) / d + 1e-12) * torch.eye(d, dtype=torch.float64)
    reference = torch.linalg.eigvals(torch.linalg.solve(m, x_f.T @ x_f / n)).real  # M⁻¹C_f's eigenvalues
    assert torch.allclose(values, torch.sort(reference, descending=True).values[:r], rtol=1e-8)
    # each row solves C_f v = μ M v, and vᵀ M v = 1
    for mu, v in zip(values, rows):
        assert torch.allclose(x_f.T @ (x_f @ v) / n, mu * (m @ v), rtol=1e-7, atol=1e-9)
        assert abs(float(v @ m @ v) - 1) < 1e-9
    # the dense route (n ≥ d) gives the same directions up to sign
    wide_values, wide_rows = focused_directions(torch.cat([x_f, torch.zeros(d, d, dtype=torch.float64)]) * (
        ((n + d) / n) ** 0.5), c_k, ridge, r)
    assert torch.allclose(wide_values, values, rtol=1e-8)
    signs = torch.sign((wide_rows * rows).sum(1, keepdim=True))
    assert torch.allclose(wide_rows, signs * rows, rtol=1e-6, atol=1e-9)


def test_repeated_forget_rows_give_zero_directions_not_huge_ones():
    """A target row and its forget row share their prefix, so the forget inputs can have fewer
    independent rows than the rank: the missing directions are zero (no gate there), never the
    blow-up of dividing by a zero eigenvalue; the real ones are those of the dense route."""
    torch.manual_seed(0)
    d, r, ridge = 48, 4, 0.1
    base = torch.randn(2, d, dtype=torch.float64)
    x_f = base.repeat(4, 1)  # 8 rows, rank 2
    x_k = torch.randn(200, d, dtype=torch.float64)
    c_k = x_k.T @ x_k / len(x_k)
    values, rows = focused_directions(x_f, c_k, ridge, r)
    assert torch.isfinite(rows).all() and torch.equal(rows[2:], torch.zeros_like(rows[2:]))
    dense_values, dense_rows = focused_directions(torch.cat([x_f, torch.zeros(d, d, dtype=torch.float64)]) * (
        ((8 + d) / 8) ** 0.5), c_k, ridge, r)
    assert torch.allclose(values[:2], dense_values[:2], rtol=1e-8)
    signs = torch.sign((dense_rows[:2] * rows[:2]).sum(1, keepdim=True))
    assert torch.allclose(dense_rows[:2], signs * rows[:2], rtol=1e-6, atol=1e-9)


def test_answer_positions_are_the_states_that_predict_a_trained_token():
    """focus_positions "answer": C_f is built only from the positions whose next token carries loss
    (the state about to say the answer), not from every token of the forget row."""
    lm = tiny_model()
    tok, pad = lm.tokenizer, lm.tokenizer.pad_token_id
    ids = tok("Paris is the capital of France")["input_ids"]
    labels = [IGNORE] * (len(ids) - 2) + ids[-2:]  # loss on the last two tokens
    keep = [(tok("Bees make honey")["input_ids"],) * 2]
    spec = adapter_spec(UnlearnConfig(adapter="lora", layer_band=(0, 1)), lm.num_layers)
    with attached(lm, spec) as peft_model:
        every = _collect(peft_model, [(ids, labels)], {"keep": keep}, "cpu", pad)
        answer = _collect(peft_model, [(ids, labels)], {"keep": keep}, "cpu", pad, answer_only=True)
    owner = next(iter(every.forget_rows))
    assert sum(len(x) for x in every.forget_rows[owner]) == len(ids)
    rows = torch.cat(answer.forget_rows[owner])
    assert len(rows) == 2 and torch.equal(rows, torch.cat(every.forget_rows[owner])[-3:-1])
    assert answer.keep_tokens == every.keep_tokens
