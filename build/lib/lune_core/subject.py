"""The tokens that name what a fact is about (its subject), found without asking the user.

A word of the question is the subject's when it is not a question or relation word: it occurs in
fewer than two of the shipped anchor prompts ("capital", "wrote", "symbol" occur in many; "Japan",
"copper", "Farm" in at most one). Editing the input embeddings of exactly these tokens changes what
the model recalls about the subject in any wording that names it, and nothing about other subjects
of the same kind, which a LoRA on the transformer layers could not keep apart (see README)."""
from __future__ import annotations

import re
from collections import Counter

from .facts import SENTENCE_PROMPT

_QUESTION_WORDS = frozenset(
    "a an the of is are was were what which who whom whose how when where why in on at for to and or "
    "do does did name give tell me by from with as its it this that".split()) | frozenset(
    w.lower() for w in re.findall(r"[^\W\d_]+", SENTENCE_PROMPT))  # a typed sentence's template
MIN_PIECE_CHARS = 3  # a shorter word-initial piece ("Ha") is part of too many other words
_WORD = re.compile(r"[^\W\d_]+")  # letters only: numbers and punctuation never name a subject


def subject_words(question: str, anchors: list[str]) -> list[str]:
    """The question's words that fewer than two anchor prompts share, in order."""
    shared = Counter(w for anchor in anchors for w in {w.lower() for w in _WORD.findall(anchor)})
    words = dict.fromkeys(_WORD.findall(question))
    return [w for w in words if w.lower() not in _QUESTION_WORDS and shared[w.lower()] < 2]


def subject_token_ids(tokenizer, questions: list[str], anchors: list[str]) -> dict[int, str]:
    """Vocabulary ids to edit, each with its text: for every subject word, each spelling that is one
    token (Japan, " Japan", " japan"), else the word's first piece if it is long enough ("Ham" of
    "Hamlet"), never a short or shared piece that other words are made of."""
    chosen: dict[int, str] = {}
    for question in questions:
        for word in subject_words(question, anchors):
            spellings = {word, word.lower(), word.capitalize()}
            for form in sorted(spellings | {" " + s for s in spellings}):
                ids = tokenizer(form, add_special_tokens=False)["input_ids"]
                piece = tokenizer.decode(ids[:1])
                if len(ids) == 1 or (len(piece.strip()) >= MIN_PIECE_CHARS and piece.strip().isalpha()):
                    chosen.setdefault(ids[0], piece)
    return chosen
