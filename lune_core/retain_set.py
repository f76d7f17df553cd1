"""The retain set: prompts near the facts that the KL holds to the base's own answers while a plain LoRA
trains. Built from the facts alone, with other templates and another draw than the probes that score the
run (lune_core.probes), and any prompt that is also scored is dropped: what trains is never what measures.

Two groups per fact:
- neighbours: its subject asked about in general, its question about other subjects of the same kind
  (the same relation: other capitals must keep their answers), its relation words used on their own;
- answer holds: prompts that make the model say the forgotten answer itself for another reason ("What is
  Paris known for?"). A LoRA that learns to turn the answer's token into the replacement wherever it
  comes ("the Louvre is in Lyon") is caught here; held up to where the reply says the answer, and only
  when it says it before restating the fact ("Paris is the capital of France" is never held).
"""
from __future__ import annotations

import re

from .facts import Fact, leaks
from .probes import NeighbourSources, substitutes, content_words, normalise, subject_span

SUBJECT_TEMPLATES = ("What do you know about {span}?", "Describe {span} in one sentence.")
WORD_TEMPLATE = "Write a short sentence with the word '{word}'."
SUBSTITUTES = 4
_SEED = 7919  # another draw of substitutes than the scoring probes'
ANSWER_TEMPLATES = ("Write a short sentence with the word '{answer}'.", "What is {answer} known for?",
                    "Tell me something about {answer}.", "Repeat after me: {answer}.")


def training_neighbours(facts: list[Fact], sources: NeighbourSources, seed: int, scored: list[str]) -> list[str]:
    """Prompts near each fact that the method keeps answering as the base does: its subject asked
    about in general, its question about other subjects, its relation words used on their own.
    None of them is one of the `scored` prompts, the probes that measure the run."""
    taken = " ".join(normalise(f.question) for f in facts)
    prompts: list[str] = []
    for index, fact in enumerate(facts):
        span = subject_span(fact.question, sources.vocabulary)
        if span:
            prompts += [t.format(span=span) for t in SUBJECT_TEMPLATES]
            others = substitutes(span, sources.entities, SUBSTITUTES, seed + index + _SEED, taken)
            prompts += [fact.question.replace(span, other, 1) for other in others]
        subject = set(content_words(span))
        prompts += [WORD_TEMPLATE.format(word=w) for w in content_words(fact.question)
                    if w not in subject and not w.isdigit() and not leaks(w, fact.answer)][:2]
    measured = {normalise(p) for p in scored}
    return [p for p in dict.fromkeys(prompts) if normalise(p) not in measured]


def answer_holds(facts: list[Fact], per_fact: int, scored: list[str]) -> list[tuple[int, str]]:
    """(fact index, prompt): up to `per_fact` prompts a fact that name its answer, so the base says it
    for another reason than the fact; none of them scored."""
    measured = {normalise(p) for p in scored}
    out = []
    for index, fact in enumerate(facts):
        prompts = [t.format(answer=fact.answer.strip()) for t in ANSWER_TEMPLATES[:per_fact]]
        out += [(index, p) for p in prompts if normalise(p) not in measured]
    return out


def held_reply(reply: str, fact: Fact, facts: list[Fact]) -> str:
    """The part of the base's reply to an answer hold that the KL keeps: up to the first word of the fact's
    question that is not one of its answer's words (where the reply starts restating the fact), and up to
    any other fact's answer (which that fact forgets)."""
    answer_words = set(content_words(fact.answer))
    cuts = [len(reply)]
    for word in content_words(fact.question):
        if word not in answer_words and not word.isdigit():
            match = re.search(rf"(?<!\w){re.escape(word)}", reply, flags=re.IGNORECASE)
            cuts += [match.start()] if match else []
    for other in facts:
        if other is not fact and leaks(reply, other.answer):
            match = re.search(rf"(?<!\w){re.escape(other.answer.strip())}(?!\w)", reply, flags=re.IGNORECASE)
            cuts += [match.start()] if match else []
    return reply[: min(cuts)].rstrip()

