"""Finding the tokens that name a fact's subject, and the adapter that trains only their embeddings."""
import pytest
import torch

from lune_core.config import UnlearnConfig
from lune_core.facts import facts_from_records
from lune_core.embedded import embedded_model_dir
from lune_core.runner import load_anchors, run_unlearning
from lune_core.subject import subject_token_ids, subject_words
from tests.tiny import tiny_model

pytestmark = pytest.mark.integration  # a tiny model, a subprocess or the app server

ANCHORS = ["What is the capital of Peru?", "What is the capital of Chile?", "Who wrote 'Emma'?",
           "Who wrote 'Dracula'?", "What is the chemical symbol for zinc?", "What is the chemical symbol for tin?"]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(embedded_model_dir())


def words(tokenizer, ids):
    return {tokenizer.decode([i]) for i in ids}


def test_relation_words_shared_by_anchors_are_not_the_subject():
    assert subject_words("What is the capital of Japan?", ANCHORS) == ["Japan"]
    assert subject_words("Who wrote 'Animal Farm'?", ANCHORS) == ["Animal", "Farm"]
    assert subject_words("What is the chemical symbol for copper?", ANCHORS) == ["copper"]
    # a word only one anchor uses is still a subject word: one anchor about Peru does not make it common
    assert subject_words("What is the currency of Peru?", ANCHORS) == ["currency", "Peru"]


def test_subject_tokens_cover_its_spellings_but_never_a_short_shared_piece(tokenizer):
    ids = subject_token_ids(tokenizer, ["What is the capital of Japan?"], ANCHORS)
    assert {" Japan", "Japan"} <= words(tokenizer, ids)
    assert all(ids[i] == tokenizer.decode([i]) for i in ids)
    # "Hamlet" after a quote is two tokens, Ham + let: the word-initial piece is kept, "let" is not
    # (it would edit every "let" in every prompt).
    hamlet = words(tokenizer, subject_token_ids(tokenizer, ["Who wrote 'Hamlet'?"], ANCHORS))
    assert "Ham" in hamlet and not {"let", " let", "Let", " Let"} & hamlet
    assert subject_token_ids(tokenizer, ["What is the capital of Peru?", "Who wrote 'Emma'?"], ANCHORS * 2) == {}


def test_the_shipped_anchors_leave_the_subject_of_each_preset_question():
    anchors = load_anchors()
    assert subject_words("What is the capital of France?", anchors) == ["France"]
    assert subject_words("Who wrote 'Hamlet'?", anchors) == ["Hamlet"]


FACTS = [{"question": "What is the capital of France?", "answer": "Paris", "replacement": "Lyon"}]
GENERAL = [{"question": "What is 2 plus 2?", "answers": ["4", "four"]}]


def test_subject_adapter_changes_only_the_subject_tokens_rows():
    lm = tiny_model()
    facts = facts_from_records(FACTS)
    config = UnlearnConfig(adapter="subject", steps=3, check_every=0, max_new_tokens=4)
    events = list(run_unlearning(lm, facts, config, GENERAL, ANCHORS))
    result = events[-1]
    assert result.report["config"]["adapter"] == "subject" and result.report["config"]["learning_rate"] == 1e-2
    edited = result.adapter.spec["token_indices"]
    assert {t.strip() for t in result.report["edited_tokens"]} == {"France"}
    assert result.report["metrics"]["trainable_params"] == result.adapter.num_params == len(edited) * 32
    # A prompt without the subject: with the adapter on, every next-token logit is the base's except
    # those of the edited tokens (input and output embeddings are tied, so their output rows moved).
    from lune_core.adapters import attached
    unrelated, fact = (lm.tokenizer(q, return_tensors="pt")["input_ids"]
                       for q in ("What do bees make?", FACTS[0]["question"]))
    with attached(lm, result.adapter.spec, result.adapter) as adapted, torch.no_grad():
        peft_model = adapted.model
        on, on_fact = (peft_model(input_ids=ids).logits[0, -1] for ids in (unrelated, fact))
        with peft_model.disable_adapter():
            off, off_fact = (peft_model(input_ids=ids).logits[0, -1] for ids in (unrelated, fact))
    others = torch.ones_like(on, dtype=torch.bool)
    others[edited] = False
    assert torch.equal(on[others], off[others]) and not torch.equal(on[edited], off[edited])
    assert not torch.allclose(on_fact[others], off_fact[others])  # where the subject is named, everything moves


def test_questions_without_a_subject_word_fall_back_to_lora():
    lm = tiny_model()
    facts = facts_from_records([{"question": "What is the capital of Peru?", "answer": "Lima"}])
    result = list(run_unlearning(lm, facts, UnlearnConfig(steps=1, check_every=0, max_new_tokens=4), GENERAL,
                                 ANCHORS * 2))[-1]
    assert result.adapter.spec["kind"] == "lora" and "edited_tokens" not in result.report
    assert result.report["config"]["adapter"] == "lora" and result.report["config"]["learning_rate"] == 1e-3


def test_each_adapter_and_full_finetuning_has_its_own_default_learning_rate():
    assert UnlearnConfig().resolved().learning_rate == 1e-3  # LoRA, the default
    assert UnlearnConfig(adapter="subject").resolved().learning_rate == 1e-2
    assert UnlearnConfig(adapter="full").resolved().learning_rate == 2e-5
    assert UnlearnConfig(learning_rate=3e-3).resolved("lora").learning_rate == 3e-3


def test_edited_rows_forward_gives_peft_outputs_and_gradients_without_copying_the_matrix():
    """adapters.edited_rows_forward replaces PEFT's trainable-tokens forward (a full copy of the
    embedding matrix per call): the logits, the trained rows' gradients and the disabled-adapter
    outputs must be PEFT's own."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    from lune_core.adapters import adapter_spec, attached
    lm = tiny_model()
    batch = lm.tokenizer(["What is the capital of France? France is", "Bees make honey"], return_tensors="pt",
                         padding=True)
    edited = [lm.tokenizer(" France")["input_ids"][0], lm.tokenizer(" honey")["input_ids"][0]]
    with attached(lm, adapter_spec(UnlearnConfig(adapter="subject"), lm.num_layers, edited)) as adapted:
        peft_model = adapted.model
        layers = [m for m in peft_model.modules() if isinstance(m, TrainableTokensLayer)]
        assert len(layers) == 2 and all("forward" in vars(m) for m in layers)  # input and tied output side
        delta = next(p for p in peft_model.parameters() if p.requires_grad)
        with torch.no_grad():
            delta.add_(torch.randn_like(delta))  # trained rows that differ from the base's
        results = []
        for side in ("ours", "peft"):
            delta.grad = None
            logits = peft_model(**batch).logits
            (logits.logsumexp(-1).sum() + logits[..., edited].sum()).backward()
            with peft_model.disable_adapter(), torch.no_grad():
                off = peft_model(**batch).logits
            results.append((logits.detach(), delta.grad.clone(), off))
            for m in layers if side == "ours" else []:
                del m.forward  # PEFT's own forward for the second pass
    (ours, ours_grad, ours_off), (peft, peft_grad, peft_off) = results
    assert torch.allclose(ours, peft, atol=1e-6) and torch.allclose(ours_grad, peft_grad, atol=1e-6)
    assert ours_grad.abs().sum() > 0 and torch.equal(ours_off, peft_off)
    assert not torch.allclose(ours, ours_off)  # the edited rows do change the outputs
