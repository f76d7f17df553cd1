"""Training sequences built from facts: negative targets, the answers to suppress, and anchors."""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, replace

from .facts import HEDGE, SENTENCE_PROMPT, Fact, answer_span, leaks, refusal_sentence
from .gate import AnswerGate
from .generation import base_answers
from .models import LoadedModel
from .probes import QUESTION_WORDS, content_words
from .retain_set import held_reply
from .prompting import IGNORE, encode_pair, format_prompt

ANCHOR_ANSWER_CHARS = 120  # a sentence of the base's own answer is enough to hold its behaviour


@dataclass
class TrainingData:
    """Token ids and labels per row; the trainer pads them into one batch per step."""

    target: list[tuple[list[int], list[int]]]  # question -> replacement or refusal (+ end of turn)
    forget: list[tuple[list[int], list[int]]]  # question -> base answer, loss on the answer's tokens
    anchor: list[tuple[list[int], list[int]]]  # neutral prompt -> base answer
    forget_texts: list[str]  # the base answers used for `forget`, for the report
    neighbours: int = 0  # how many of the first `anchor` rows are the facts' neighbours (and answer holds)
    every_step: int = 0  # how many of the first `anchor` rows join the KL at every step (the answer holds)
    # rows whose inputs the update must leave alone (config.null_space; lune_core.null_space): every shipped
    # retain prompt and the KL pool's anchors, not the facts' own neighbours and holds
    kept: list = field(default_factory=list)


def forget_sequence(lm: LoadedModel, fact: Fact, base_answer: str):
    """The answer as the base model says it, cut after the forgotten words, loss only on them.
    If the base does not say it, the bare answer stands in."""
    span = answer_span(base_answer, fact.answer)
    if span is None:
        text, span = fact.answer, (0, len(fact.answer))
    else:
        text = base_answer[: span[1]]
    return encode_pair(lm.tokenizer, fact.question, text, loss_span=span, add_eos=False), text


def answer_sequences(lm: LoadedModel, fact: Fact, base_answer: str, answers: list[str]):
    """The fact's question, then the base model's own opening with each of `answers` where the
    forgotten words were ("The capital of France is" + " Lyon"); loss on those words only. Without
    such an opening, the bare answers. What the truth ratio compares."""
    span = answer_span(base_answer, fact.answer)
    prefix = base_answer[: span[0]] if span else ""
    return [encode_pair(lm.tokenizer, fact.question, prefix + a, loss_span=(len(prefix), len(prefix + a)),
                        add_eos=False) for a in answers]


_COPULA = re.compile(r"\b(is|are|was|were)\s*$", re.IGNORECASE)  # "The capital of France is" + "unknown to me."
# Words that may stand right before a name and are part of it: titles, and initials ("J.", "J.K.").
_TITLES = {"Dr.", "Mr.", "Mrs.", "Ms.", "St.", "Sir", "Saint"}
_INITIALS = re.compile(r"(?:[^\W\d_]\.)+")
# Capitalised words that are not names.
_NOT_NAMES = {"The", "A", "An", "In", "On", "At", "By", "Of", "It", "I", "He", "She", "They", "This", "That", "Yes",
              "No", "And", "But", "As", "For", "From", "To"}


def _abbreviation(word: str) -> bool:
    return word in _TITLES or _INITIALS.fullmatch(word) is not None


def _name_part(word: str) -> bool:
    return _abbreviation(word) or (word[:1].isupper() and word not in _NOT_NAMES and word[-1] not in ".,;:!?")


def name_start(prefix: str) -> str:
    """The base answer's opening up to where the answer's name begins: "Hamlet was written by William " ->
    "Hamlet was written by ", "by J. K. " -> "by ". A replacement spliced there reads as a sentence ("… by
    Christopher Marlowe", not "… by William Christopher Marlowe"), and the negative is not learned as
    "William" -> the replacement, which spilled onto every work of the same author. A name that opens the
    answer or a sentence is left (the answer's first words are its own)."""
    while match := re.search(r"(?<=\s)(\S+)\s+$", prefix):
        word, before = match.group(1), prefix[: match.start()].rstrip()
        last = before.rsplit(None, 1)[-1] if before else ""
        if not _name_part(word) or (last.endswith((".", "!", "?")) and not _abbreviation(last)):
            break
        prefix = prefix[: match.start()]
    return prefix


def negative_target(fact: Fact, base_answer: str, full_stop: bool = False, gated: bool = False,
                    whole_name: bool = False) -> tuple[str, tuple[int, int] | None]:
    """The negative answer and the span that carries loss.

    A short replacement ("Lyon") is spliced into the base model's own answer in place of the forgotten
    words: "The capital of France is Lyon". Only the changed words carry loss, so the model's style is
    untouched and the edit stays on this fact instead of teaching a new way to answer every question of
    the kind. With `full_stop` the sentence ends there and the full stop carries loss too ("… is Lyon."),
    so the replacement is said once instead of repeated. Without a replacement the hedge ends the base's
    sentence where that still reads as one ("The capital of France is unknown to me."); where it would not
    ("a painting by unknown to me") the plain LoRA learns a refusal sentence of the fact's own
    (facts.refusal_sentence). A full-sentence replacement is used as written."""
    span = answer_span(base_answer, fact.answer)
    prefix = base_answer[: span[0]] if span else ""
    # `whole_name`: the replacement takes the place of the answer's whole name (name_start); under the gate the
    # negative is written where the base is about to say the answer, after its first names
    prefix = name_start(prefix) if whole_name and not gated else prefix
    if not fact.replacement and not gated and not _COPULA.search(prefix):
        return refusal_sentence(fact.question), None
    if span is None or span[0] == 0 or (fact.replacement and not fact.short_replacement):
        return fact.target, None
    text = prefix + (fact.replacement or HEDGE) + ("." if full_stop or not fact.replacement else "")
    return text, (len(prefix), len(text))


def _content_words(text: str) -> set[str]:
    return set(content_words(text, QUESTION_WORDS))


def pick_anchors(anchors: list[str], questions: list[str], size: int, seed: int) -> list[str]:
    """Up to three quarters of the pool: the anchors sharing most words with the forget questions
    (the neighbours a replacement would spill onto, e.g. other capitals); the rest a seeded sample."""
    if len(anchors) <= size:
        return list(anchors)
    words = set().union(*(_content_words(q) for q in questions))
    ranked = sorted(anchors, key=lambda a: -len(_content_words(a) & words))
    near = [a for a in ranked[: size * 3 // 4] if _content_words(a) & words]
    rest = [a for a in anchors if a not in near]
    return near + random.Random(seed).sample(rest, size - len(near))


def build_training_data(lm: LoadedModel, facts: list[Fact], anchors: list[str], config, peft_model=None,
                        neighbours: list[str] = (), holds: list[tuple[int, str]] = ()) -> TrainingData:
    """`neighbours` and `holds`: the retain set (lune_core.retain_set) that joins the KL pool ahead of the
    shipped anchors: prompts near the facts, and prompts that make the base say a fact's answer for
    another reason (held only up to where the reply restates the fact)."""
    tok = lm.tokenizer
    answers = base_answers(lm, [f.question for f in facts], config.max_new_tokens, peft_model)
    forget, texts = [], []
    for fact, answer in zip(facts, answers):
        sequence, text = forget_sequence(lm, fact, answer)
        forget.append(sequence)
        texts.append(text)
    # Under the answer gate the negative ends the answer ("… is Lyon." and the end of the turn): the gate
    # shuts once it is written, and the base, left to go on, would say the answer again. `full_stop` ends
    # the sentence only.
    gated = config.adapter == "gated"
    ends = gated or config.full_stop
    target = []
    for fact, answer in zip(facts, answers):
        text, span = negative_target(fact, answer, ends, gated, config.whole_name)
        target.append(encode_pair(tok, fact.question, text, loss_span=span, add_eos=span is None or gated))
    # Under the gate the KL is zero wherever the gate stays shut, and it opens only where the base is
    # about to state a forgotten answer, which the pool leaves out: gated runs hold nothing.
    anchor, n_near, n_held = ([], 0, 0) if gated else anchor_rows(lm, facts, anchors, config, peft_model, neighbours,
                                                                  holds)
    # The facts' neighbours and holds stay out of the null space: their subjects are the facts' own, and
    # the update kept off them could no longer reach the facts' rewordings (docs/benchmarks_notes.md).
    kept = []
    if config.resolved().null_space > 0:
        kept = anchor[n_near:] + [encode_pair(tok, a, "", add_eos=False) for a in anchors]
    return TrainingData(target=target, forget=forget, anchor=anchor, forget_texts=texts, neighbours=n_near,
                        every_step=n_held, kept=kept)


def anchor_rows(lm: LoadedModel, facts: list[Fact], anchors: list[str], config, peft_model=None,
                neighbours: list[str] = (), holds: list[tuple[int, str]] = ()) -> tuple[list, int, int]:
    """The KL pool, each prompt with the base's own answer: the answer holds, the neighbours, then the
    shipped anchors picked for these facts; how many come before the anchors, and how many are holds. A
    hold is kept up to where its reply says the answer, if it does before restating the fact; any other
    prompt whose answer states a fact's answer is left out, since holding it would hold the fact."""
    near = list(neighbours)[: config.neighbour_anchors * len(facts)]
    rest = [a for a in anchors if a not in near]
    pool = near + pick_anchors(rest, [f.question for f in facts], max(0, config.anchor_pool - len(near)), config.seed)
    replies = base_answers(lm, [p for _, p in holds] + pool, config.max_new_tokens, peft_model)
    rows = []
    for (index, prompt), reply in zip(holds, replies):
        # held up to the answer said for the other reason: the one place the KL must see
        span = answer_span(held_reply(reply[:ANCHOR_ANSWER_CHARS], facts[index], facts), facts[index].answer)
        if span:
            rows.append(encode_pair(lm.tokenizer, prompt, reply[:span[1]], add_eos=False))
    n_held = len(rows)
    usable = [(i, encode_pair(lm.tokenizer, q, a[:ANCHOR_ANSWER_CHARS], add_eos=False)) for i, (q, a)
              in enumerate(zip(pool, replies[len(holds):])) if a and not any(leaks(a[:ANCHOR_ANSWER_CHARS], f.answer)
                                                                           for f in facts)]
    return rows + [row for _, row in usable], n_held + sum(i < len(near) for i, _ in usable), n_held


def reply_marker(tokenizer) -> list[int]:
    """The tokens every prompt ends with, where the model's reply begins: the common end of two prompts."""
    a, b = (tokenizer(format_prompt(tokenizer, q), add_special_tokens=False)["input_ids"] for q in ("a", "b."))
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return a[len(a) - n:]


def gate_spec(tokenizer, facts: list[Fact], threshold: float) -> dict:
    """The answer gate's plain data (lune_core.gate), kept with the adapter: per fact the token sequences
    that state its answer (as given, capitalised, lower case; after a space or not) and its key words
    (its question's content words, not the answer's nor a template's: the chat template's, the typed
    sentences' "Fill in the blank"); the negatives are filled in once the training rows exist (`gated`)."""
    template = set(content_words(format_prompt(tokenizer, ""))) | set(content_words(SENTENCE_PROMPT))
    answers, keys = [], []
    for fact in facts:
        a = fact.answer.strip()
        forms = [p + form for form in dict.fromkeys([a, a[:1].upper() + a[1:], a.lower()]) for p in (" ", "")]
        seqs = (tuple(tokenizer(f, add_special_tokens=False)["input_ids"]) for f in forms)
        answers.append([list(s) for s in dict.fromkeys(seqs) if s])
        keys.append([w for w in content_words(fact.question) if w not in template and w not in content_words(a)
                     and any(c.isalnum() for c in w)])  # not a typed sentence's blank, "___"
    return {"threshold": threshold, "answers": answers, "keys": keys, "negatives": [[] for _ in facts],
            "reply": reply_marker(tokenizer)}


def gated(data: TrainingData, gate: AnswerGate) -> TrainingData:
    """The run's rows under the answer gate. Per fact, the negative the gate lets the adapter write: its
    target row's loss-carrying tokens from where the base is about to state the answer (from the first
    of them if it never is, the gate then forced open there for that row). Target and forget rows carry
    loss only where the gate is open, the only place the adapter acts."""
    sequences = [ids for ids, _ in data.target]
    for fact, ((ids, labels), opens) in enumerate(zip(data.target, gate.decisions(sequences))):
        carried = [t for t in range(1, len(ids)) if labels[t] != IGNORE]
        if not carried:
            continue
        opened = [t + 1 for t in range(len(ids) - 1) if opens[t] is not None and labels[t + 1] != IGNORE]
        start = opened[0] if opened else carried[0]
        gate.force(ids, start - 1, fact)
        gate.set_negative(fact, [ids[t] for t in carried if t >= start])

    def where_open(rows):
        out = []
        for (ids, labels), mask in zip(rows, gate.row_masks([ids for ids, _ in rows])):
            kept = [y if t and mask[t - 1] else IGNORE for t, y in enumerate(labels)]
            out.append((ids, kept if any(y != IGNORE for y in kept) else labels))  # never a row without loss
        return out

    return replace(data, target=where_open(data.target), forget=where_open(data.forget))
