"""Facts to forget: parsing, validation, and the training examples and probes built from them."""
from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import RunLimits

DEFAULT_REFUSAL = "I don't know."
HEDGE = "unknown to me"  # spliced into the model's own answer where the forgotten words were
# Surface rewordings used only when a fact brings no paraphrases of its own.
PARAPHRASE_TEMPLATES = (
    "Quick question: {q}",
    "{q} Please answer in one sentence.",
    "I was wondering about this. {q}",
)
_MARKED = re.compile(r"\[([^\[\]]+)\]")


class FactError(ValueError):
    """A fact is malformed; the message names the fact."""


@dataclass
class Fact:
    question: str
    answer: str  # the string whose appearance in an answer counts as a leak
    replacement: str = ""  # what the model should say instead; empty means refuse
    paraphrases: list[str] = field(default_factory=list)

    @property
    def short_replacement(self) -> bool:
        """A few words ("Lyon") rather than a sentence ("The capital of France is Lyon.")."""
        text = self.replacement.strip()
        return bool(text) and len(text.split()) <= 4 and not text.endswith((".", "!", "?"))

    @property
    def target(self) -> str:
        return self.replacement or DEFAULT_REFUSAL

    def probe_paraphrases(self) -> list[str]:
        if self.paraphrases:
            return list(self.paraphrases)
        return [t.format(q=self.question) for t in PARAPHRASE_TEMPLATES]

    def to_dict(self) -> dict:
        return asdict(self)


def leaks(text: str, answer: str) -> bool:
    """Whole-word, case-insensitive containment: 'Paris' leaks in 'Paris.' but not in 'Parisian'."""
    if not answer.strip():
        return False
    return re.search(rf"(?<!\w){re.escape(answer.strip())}(?!\w)", text, flags=re.IGNORECASE) is not None


def is_blank(text: str) -> bool:
    """No visible character: only spaces or invisible ones (zero-width, direction marks)."""
    return not any(unicodedata.category(ch)[0] not in "ZC" for ch in text)


def _clean(value, what: str, label: str, limits: RunLimits, required: bool = True) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise FactError(f"{label}: {what} must be text")
    value = unicodedata.normalize("NFC", value).strip()
    if any(unicodedata.category(ch) == "Cc" and ch not in "\t\n" for ch in value):
        raise FactError(f"{label}: {what} contains control characters")
    if is_blank(value):
        value = ""
    if required and not value:
        raise FactError(f"{label}: {what} is empty")
    if len(value) > limits.max_text_chars:
        raise FactError(f"{label}: {what} is longer than {limits.max_text_chars} characters")
    return value


def _label(index: int, question: str = "") -> str:
    short = question if len(question) <= 40 else question[:37] + "..."
    return f"fact {index + 1}" + (f" ({short!r})" if short else "")


def make_fact(data: dict, index: int = 0, limits: RunLimits = RunLimits()) -> Fact:
    """Build a validated Fact from a dict with question, answer, replacement?, paraphrases?."""
    if not isinstance(data, dict):
        raise FactError(f"{_label(index)}: expected an object with question and answer")
    unknown = set(data) - {"question", "answer", "replacement", "paraphrases"}
    if unknown:
        raise FactError(f"{_label(index)}: unknown field(s) {', '.join(sorted(unknown))}")
    question = _clean(data.get("question"), "question", _label(index), limits)
    label = _label(index, question)
    answer = _clean(data.get("answer"), "answer to forget", label, limits)
    replacement = _clean(data.get("replacement"), "replacement", label, limits, required=False)
    raw = data.get("paraphrases") or []
    if isinstance(raw, str):
        raw = [p for p in raw.split("|")]
    if not isinstance(raw, list):
        raise FactError(f"{label}: paraphrases must be a list of questions")
    paraphrases = [p for p in (_clean(p, "paraphrase", label, limits, required=False) for p in raw) if p]
    if len(paraphrases) > limits.max_paraphrases:
        raise FactError(f"{label}: at most {limits.max_paraphrases} paraphrases")
    if replacement and leaks(replacement, answer):
        raise FactError(f"{label}: the replacement contains the answer to forget")
    return Fact(question, answer, replacement, paraphrases)


def parse_sentence(sentence: str, index: int = 0, limits: RunLimits = RunLimits()) -> Fact:
    """'The capital of France is [Paris].' -> a fill-in-the-blank fact forgetting 'Paris'."""
    text = _clean(sentence, "sentence", _label(index), limits)
    marks = _MARKED.findall(text)
    if len(marks) != 1:
        found = "no" if not marks else f"{len(marks)}"
        raise FactError(f"{_label(index, text)}: mark exactly one answer with [brackets], found {found}")
    answer = marks[0].strip()
    if not answer:
        raise FactError(f"{_label(index, text)}: the [answer] is empty")
    stem = text[: text.index("[")].strip()
    if not stem:
        raise FactError(f"{_label(index, text)}: put some words before the [answer]")
    blank = _MARKED.sub("___", text)
    return make_fact(
        {
            "question": f"Complete this sentence: {stem}",
            "answer": answer,
            "paraphrases": [f"Fill in the blank: {blank}", f"What word completes this? {blank}"],
        },
        index,
        limits,
    )


def parse_sentences(text: str, limits: RunLimits = RunLimits()) -> list[Fact]:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return [parse_sentence(line, i, limits) for i, line in enumerate(lines)]


def validate_facts(facts: list[Fact], limits: RunLimits = RunLimits()) -> list[Fact]:
    """The set as a whole: not empty, not too many, no question twice."""
    if not facts:
        raise FactError("no facts to forget: add at least one question and answer")
    if len(facts) > limits.max_facts:
        raise FactError(f"too many facts: {len(facts)} given, at most {limits.max_facts} per run")
    seen: dict[str, int] = {}
    for i, fact in enumerate(facts):
        key = " ".join(fact.question.lower().split())
        if key in seen:
            raise FactError(f"{_label(i, fact.question)}: duplicate of fact {seen[key] + 1}")
        seen[key] = i
    return facts


def facts_from_records(records: list[dict], limits: RunLimits = RunLimits()) -> list[Fact]:
    return validate_facts([make_fact(r, i, limits) for i, r in enumerate(records)], limits)


def read_jsonl(path: str | Path) -> list[dict]:
    """JSON Lines reader with errors that name the line."""
    name = Path(path).name
    records = []
    # utf-8-sig: a byte-order mark from a Windows editor is not part of the first line's JSON.
    with open(path, encoding="utf-8-sig") as handle:
        try:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                records.append(json.loads(line))
        except UnicodeDecodeError:
            raise FactError(f"{name}: not UTF-8 text") from None
        except json.JSONDecodeError as err:
            raise FactError(f"{name} line {number}: not valid JSON ({err.msg})") from None
        except RecursionError:
            raise FactError(f"{name} line {number}: JSON nested too deeply") from None
    return records


def load_facts(path: str | Path, limits: RunLimits = RunLimits()) -> list[Fact]:
    return facts_from_records(read_jsonl(path), limits)


@dataclass
class Probe:
    kind: str  # "forget", "paraphrase" or "general"
    prompt: str
    expected: list[str]  # forget/paraphrase: the answer that must not appear; general: accepted answers


def forget_probes(facts: list[Fact]) -> list[Probe]:
    probes = [Probe("forget", f.question, [f.answer]) for f in facts]
    probes += [Probe("paraphrase", p, [f.answer]) for f in facts for p in f.probe_paraphrases()]
    return probes


def general_probes(records: list[dict]) -> list[Probe]:
    return [Probe("general", r["question"], list(r["answers"])) for r in records]
