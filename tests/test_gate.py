"""The answer gate (lune_core.gate): shut, the adapted model is the base to the last bit; it opens only in
the reply, where the model is about to state a forgotten answer in a text about that fact; decoding
through it with a cache gives what recomputing everything at every step gives."""
import pytest
import torch

from lune_core.adapters import adapter_spec, attached
from lune_core.config import RunLimits, UnlearnConfig
from lune_core.facts import Fact, parse_sentences
from lune_core.gate import GATE_THRESHOLD, Open
from lune_core.generation import generate
from lune_core.prompting import IGNORE, format_prompt
from lune_core.sequences import TrainingData, gate_spec, gated, reply_marker
from tests.tiny import tiny_model

pytestmark = pytest.mark.integration  # a tiny model, a subprocess or the app server

# The tiny random model says "mythologies ..." to both; only the first is about the fact's words.
QUESTION = "Describe Paris."
ELSEWHERE = "Name a colour."


@pytest.fixture(scope="module")
def lm():
    return tiny_model()


def ids_of(lm, text: str) -> list[int]:
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def base(lm):
    """The bare model's replies (asked before any adapter is attached: attached, the bare model's layers
    carry the adapter, and a gated one refuses to run without its gate)."""
    return dict(zip([QUESTION, ELSEWHERE], generate(lm, [QUESTION, ELSEWHERE], 10)))


@pytest.fixture(scope="module")
def fact(base):
    """A fact whose answer is what the tiny model really says: the first two words of its reply, so
    that the gate reads ahead past the answer's first token."""
    answer = " ".join(base[QUESTION].split()[:2])
    assert answer.replace(" ", "").isalpha() and base[ELSEWHERE].startswith(answer)
    return Fact(QUESTION, answer, "Lyon")


def gated_model(lm, facts, seed=0):
    """The tiny model with a gated LoRA whose B is random (a trained adapter's B is not zero)."""
    spec = adapter_spec(UnlearnConfig(layers=(1, 2, 3)), lm.num_layers)
    spec["gate"] = gate_spec(lm.tokenizer, facts, GATE_THRESHOLD)
    torch.manual_seed(seed)
    context = attached(lm, spec)
    adapted = context.__enter__()
    for name, param in adapted.model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    return context, adapted


def test_the_spec_names_the_answers_spellings_the_questions_words_and_where_replies_start(lm):
    spec = gate_spec(lm.tokenizer, [Fact("Who wrote 'Hamlet'?", "Shakespeare")], GATE_THRESHOLD)
    assert [ids_of(lm, " Shakespeare"), ids_of(lm, "Shakespeare"), ids_of(lm, " shakespeare")] == spec["answers"][0][:3]
    assert spec["keys"] == [["wrote", "hamlet"]]  # not the answer's words, not the chat template's
    typed = parse_sentences("The Eiffel Tower is in [Paris].", RunLimits())
    assert gate_spec(lm.tokenizer, typed, GATE_THRESHOLD)["keys"] == [["eiffel", "tower"]]  # not "fill", "blank"
    prompt = ids_of(lm, format_prompt(lm.tokenizer, "Anything at all?"))
    assert spec["reply"] == reply_marker(lm.tokenizer) and prompt[-len(spec["reply"]):] == spec["reply"]
    assert lm.tokenizer.decode(spec["reply"]).strip().endswith("assistant")


def test_a_shut_gate_leaves_the_base_model_to_the_last_bit(lm, fact, base):
    context, adapted = gated_model(lm, [fact])
    peft_model, gate = adapted.model, adapted.gate
    try:
        row = ids_of(lm, format_prompt(lm.tokenizer, ELSEWHERE))
        assert not any(gate.row_masks([row])[0])
        gate.mask = torch.zeros(1, len(row))
        shut = peft_model(input_ids=torch.tensor([row])).logits
        with peft_model.disable_adapter():
            bare = peft_model(input_ids=torch.tensor([row])).logits
        assert torch.equal(shut, bare)
        gate.mask = torch.ones(1, len(row))  # the same adapter, open: it does change the outputs
        assert not torch.allclose(peft_model(input_ids=torch.tensor([row])).logits, bare, atol=1e-3)
        assert generate(lm, [ELSEWHERE], 10, model=peft_model, gate=gate) == [base[ELSEWHERE]]
        with pytest.raises(RuntimeError, match="gate"):  # the bare model's layers now carry the gated adapter
            generate(lm, [ELSEWHERE], 10)
        with gate.suspended():  # as stock PEFT runs it: the LoRA everywhere, no mask asked for
            everywhere = peft_model(input_ids=torch.tensor([row])).logits
        gate.mask = torch.ones(1, len(row))
        assert torch.equal(everywhere, peft_model(input_ids=torch.tensor([row])).logits)
    finally:
        context.__exit__(None, None, None)


def test_the_gate_opens_in_the_reply_where_the_base_is_about_to_say_the_answer(lm, fact, base):
    context, adapted = gated_model(lm, [fact])
    gate = adapted.gate
    try:
        prompt = ids_of(lm, format_prompt(lm.tokenizer, QUESTION))
        reply = ids_of(lm, base[QUESTION])
        row = prompt + reply
        opens = gate.decisions([row])[0]
        where = [t for t, f in enumerate(opens) if f is not None]
        said = lm.tokenizer.decode(row[where[0] + 1:]).strip()
        assert where and where[0] >= len(prompt) - 1 and said.startswith(fact.answer), (where, said)
        # the same reply to a text that shares no word with the fact's question: shut
        elsewhere = ids_of(lm, format_prompt(lm.tokenizer, ELSEWHERE)) + reply
        assert gate.decisions([elsewhere])[0] == [None] * len(elsewhere)
        # the prompt itself is read by the base alone, whatever it says
        echo = ids_of(lm, format_prompt(lm.tokenizer, f"{QUESTION} {fact.answer} {fact.answer}"))
        assert all(f is None for f in gate.decisions([echo])[0][:len(echo) - 1])
    finally:
        context.__exit__(None, None, None)


def test_the_gate_stays_open_while_the_negative_is_written_then_shuts(lm, fact):
    context, adapted = gated_model(lm, [fact])
    gate = adapted.gate
    try:
        prompt = ids_of(lm, format_prompt(lm.tokenizer, QUESTION))
        negative = ids_of(lm, " Lyon is a city.")
        target = (prompt + negative, [IGNORE] * len(prompt) + negative)
        data = gated(TrainingData(target=[target], forget=[], anchor=[], forget_texts=[]), gate)
        assert gate.spec["negatives"] == [negative]  # the tiny model never opens here: forced at the first
        mask = gate.row_masks([target[0]])[0]
        assert mask == [0.0] * (len(prompt) - 1) + [1.0] * len(negative) + [0.0]
        assert data.target[0][1] == target[1]  # every token of the negative is written with the gate open
        # the same tokens, one of them changed: the gate shuts at the first that is not the negative's
        state = Open(0)
        for token in negative[:2]:
            state = gate.advance(state, token)
        assert state == Open(0, 2) and gate.advance(state, negative[0]) is None
    finally:
        context.__exit__(None, None, None)


def slow_greedy(peft_model, gate, prompt: list[int], steps: int, eos: int) -> list[int]:
    """The gated greedy answer with every position recomputed at every step, no cache, one row."""
    seq, mask, state = list(prompt), [0.0] * len(prompt), None
    for _ in range(steps):
        t = len(seq) - 1
        if state is None:
            gate.mask = torch.tensor([mask[:t] + [0.0]])
            logits = peft_model(input_ids=torch.tensor([seq])).logits[0, -1]
            fact = gate.opening([seq], torch.log_softmax(logits.float(), -1)[None])[0]
            state = None if fact is None else Open(fact)
        mask[t] = 0.0 if state is None else 1.0
        gate.mask = torch.tensor([mask])
        token = int(peft_model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
        seq.append(token)
        mask.append(0.0)
        state = gate.advance(state, token)
        if token == eos:
            break
    return seq[len(prompt):]


def test_cached_gated_decoding_gives_the_recomputed_answer(lm, fact, base):
    context, adapted = gated_model(lm, [fact])
    peft_model, gate = adapted.model, adapted.gate
    try:
        gate.spec["negatives"] = [ids_of(lm, " Lyon.") + [lm.tokenizer.eos_token_id]]
        for question in (QUESTION, ELSEWHERE):
            prompt = ids_of(lm, format_prompt(lm.tokenizer, question))
            with torch.no_grad():
                slow = slow_greedy(peft_model, gate, prompt, 10, lm.tokenizer.eos_token_id)
                out = gate.generate(input_ids=torch.tensor([prompt]), max_new_tokens=10)
            fast = [t for t in out[0, len(prompt):].tolist() if t != lm.tokenizer.pad_token_id]
            assert fast == [t for t in slow if t != lm.tokenizer.pad_token_id], question
        # the question opens the gate, so the adapter changes its answer; the other prompt keeps the base's
        answers = generate(lm, [QUESTION, ELSEWHERE], 10, model=peft_model, gate=gate)
        assert answers[0] != base[QUESTION] and answers[1] == base[ELSEWHERE]
    finally:
        context.__exit__(None, None, None)


def test_detaching_the_adapter_removes_the_gate(lm, fact):
    context, adapted = gated_model(lm, [fact])
    context.__exit__(None, None, None)
    assert "generate" not in vars(adapted.model) and not hasattr(adapted.model, "answer_gate")
    assert not any(m._forward_hooks for m in lm.model.modules())
