"""Facts to forget: parsing, validation, and the training examples and probes built from them."""
from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import RunLimits
from .ids import has_control_chars

DEFAULT_REFUSAL = "I don't know."
HEDGE = "unknown to me"  # spliced into the model's own answer where the forgotten words were
# What a user's `keep` entry may say about itself: the kinds of neighbour (docs/metrics.md). "same_answer":
# another fact whose answer is the forgotten string ("In which city is the Louvre?" after forgetting France's
# capital); an entry whose answers contain the forgotten answer is of this kind, whatever else it says.
NEIGHBOUR_KINDS = ("same_subject", "same_relation", "shared_words", "same_answer")
MAX_KEEP_ANSWERS = 5
# How a typed sentence is asked; its words are never taken for the fact's subject (lune_core.subject).
SENTENCE_PROMPT = "Fill in the blank: {blank}"
_MARKED = re.compile(r"\[([^\[\]]+)\]")


class FactError(ValueError):
    """A fact is malformed; the message names the fact."""


@dataclass
class Fact:
    question: str
    answer: str  # the string whose appearance in an answer counts as a leak
    replacement: str = ""  # what the model should say instead; empty means refuse
    paraphrases: list[str] = field(default_factory=list)
    # Questions that must stay answered right: {"question", "answers": [...], "kind"?}.
    keep: list[dict] = field(default_factory=list)

    @property
    def short_replacement(self) -> bool:
        """A few words ("Lyon") rather than a sentence ("The capital of France is Lyon.")."""
        text = self.replacement.strip()
        return bool(text) and len(text.split()) <= 4 and not text.endswith((".", "!", "?"))

    @property
    def target(self) -> str:
        return self.replacement or DEFAULT_REFUSAL

    def to_dict(self) -> dict:
        return asdict(self)


_WH_BE = re.compile(r"^(what|who|which|where|when|how \w+)\s+(is|are|was|were)\s+(.+)$", re.IGNORECASE)
_WH = re.compile(r"^(what|who|whom|which|where|when|why|how)\b", re.IGNORECASE)
_DO = re.compile(r"\b(do|does|did|can|could|will|would|should|has|have|had)\b", re.IGNORECASE)  # inverted: no embedding


def refusal_sentence(question: str) -> str:
    """A refusal that names what is not known: "Who wrote 'Hamlet'?" -> "I don't know who wrote 'Hamlet'.",
    "What is the capital of France?" -> "I don't know what the capital of France is." A refusal of its own
    per fact spills less than one "I don't know." learned for every question, and reads as a sentence
    where a hedge spliced into the model's own words would not ("a painting by unknown to me")."""
    text = " ".join(question.split()).rstrip("?!. ")
    if text.startswith(SENTENCE_PROMPT.split("{")[0].strip()):
        return "I don't know what goes in the blank."
    match = _WH_BE.match(text)
    if match:
        return f"I don't know {match[1].lower()} {match[3]} {match[2].lower()}."
    if _WH.match(text) and not _DO.search(text):
        return f"I don't know {text[0].lower()}{text[1:]}."
    return f'I don\'t know the answer to "{text}?"' if _WH.match(text) else DEFAULT_REFUSAL


def answer_span(text: str, answer: str) -> tuple[int, int] | None:
    """Where `answer` first occurs in `text` as whole words, case-insensitive: 'Paris' in 'Paris.' but
    not in 'Parisian'. The one matching rule of leaks, training targets and cloze probes."""
    if not answer.strip():
        return None
    match = re.search(rf"(?<!\w){re.escape(answer.strip())}(?!\w)", text or "", flags=re.IGNORECASE)
    return match.span() if match else None


def leaks(text: str, answer: str) -> bool:
    return answer_span(text, answer) is not None


def is_blank(text: str) -> bool:
    """No visible character: only spaces or invisible ones (zero-width, direction marks)."""
    return not any(unicodedata.category(ch)[0] not in "ZC" for ch in text)


def _clean(value, what: str, label: str, limits: RunLimits, required: bool = True) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise FactError(f"{label}: {what} must be text")
    value = unicodedata.normalize("NFC", value).strip()
    if has_control_chars(value):
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
    unknown = set(data) - {"question", "answer", "replacement", "paraphrases", "keep"}
    if unknown:
        raise FactError(f"{_label(index)}: unknown field(s) {', '.join(sorted(unknown))}")
    question = _clean(data.get("question"), "question", _label(index), limits)
    label = _label(index, question)
    answer = _clean(data.get("answer"), "answer to forget", label, limits)
    replacement = _clean(data.get("replacement"), "replacement", label, limits, required=False)
    paraphrases = _paraphrases(data.get("paraphrases"), question, label, limits)
    if replacement and leaks(replacement, answer):
        raise FactError(f"{label}: the replacement contains the answer to forget")
    keep = _keep_entries(data.get("keep"), question, answer, label, limits)
    return Fact(question, answer, replacement, paraphrases, keep)


def _same_question(a: str, b: str) -> bool:
    return " ".join(a.lower().split()).rstrip("?.! ") == " ".join(b.lower().split()).rstrip("?.! ")


def _paraphrases(raw, question: str, label: str, limits: RunLimits) -> list[str]:
    """A fact's rewordings: each one a question of its own, neither empty nor the question itself, since
    an empty or repeated one cannot be classified (same words, other words, other language) or scored."""
    if raw is None or (isinstance(raw, str) and is_blank(raw)):
        return []
    if isinstance(raw, str):
        raw = raw.split("|")
    if not isinstance(raw, list):
        raise FactError(f"{label}: paraphrases must be a list of questions")
    paraphrases = []
    for number, text in enumerate(raw, 1):
        text = _clean(text, f"paraphrase {number}", label, limits)
        if _same_question(text, question):
            raise FactError(f"{label}: paraphrase {number} is the question itself: reword it, or leave it out")
        paraphrases.append(text)
    if len(paraphrases) > limits.max_paraphrases:
        raise FactError(f"{label}: at most {limits.max_paraphrases} paraphrases")
    return paraphrases


def parse_keep(text: str, label: str) -> list[dict]:
    """The app's one-cell form of a keep list: 'question -> answer / other spelling | question -> answer'."""
    entries = []
    for number, part in enumerate((p for p in text.split("|") if p.strip()), 1):
        if "->" not in part:
            raise FactError(f"{label}: keep entry {number}: write it as question -> answer")
        question, answers = part.split("->", 1)
        entries.append({"question": question, "answers": [a for a in answers.split("/") if a.strip()]})
    return entries


def format_keep(entries: list[dict]) -> str:
    return " | ".join(f"{e['question']} -> {' / '.join(e['answers'])}" for e in entries)


def _keep_entries(raw, fact_question: str, answer: str, label: str, limits: RunLimits) -> list[dict]:
    """A fact's `keep` list: each entry a question with the answers that must stay right. One whose
    answers contain the forgotten answer is a `same_answer` neighbour: it must stay right all the same."""
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        raw = parse_keep(raw, label)
    if not isinstance(raw, list):
        raise FactError(f"{label}: keep must be a list of {{question, answers}} objects")
    if len(raw) > limits.max_keep:
        raise FactError(f"{label}: at most {limits.max_keep} keep entries")
    return [_keep_entry(entry, f"{label}: keep entry {number}", fact_question, answer, limits)
            for number, entry in enumerate(raw, 1)]


def _keep_entry(entry, where: str, fact_question: str, answer: str, limits: RunLimits) -> dict:
    if not isinstance(entry, dict):
        raise FactError(f"{where} must be an object with question and answers")
    unknown = set(entry) - {"question", "answers", "kind"}
    if unknown:
        raise FactError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    question = _clean(entry.get("question"), "question", where, limits)
    if _same_question(question, fact_question):
        raise FactError(f"{where} is the fact's own question: a neighbour is another question")
    answers = _keep_answers(entry.get("answers"), where, limits)
    return {"question": question, "answers": answers,
            "kind": _neighbour_kind(entry.get("kind") or "", answers, answer, where)}


def _keep_answers(answers, where: str, limits: RunLimits) -> list[str]:
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not answers:
        raise FactError(f"{where}: answers must be a non-empty list of texts")
    if len(answers) > MAX_KEEP_ANSWERS:
        raise FactError(f"{where}: at most {MAX_KEEP_ANSWERS} answers")
    return [_clean(a, "answer", where, limits) for a in answers]


def _neighbour_kind(kind: str, answers: list[str], answer: str, where: str) -> str:
    """The entry's kind; one whose answers contain the forgotten answer is a `same_answer` neighbour."""
    if kind and kind not in NEIGHBOUR_KINDS:
        raise FactError(f"{where}: kind must be one of {', '.join(NEIGHBOUR_KINDS)}")
    if not any(leaks(a, answer) for a in answers):
        return kind
    if kind not in ("", "same_answer"):
        raise FactError(f"{where}: its answer is the answer to forget, so its kind is same_answer, not {kind}")
    return "same_answer"


def parse_sentence(sentence: str, index: int = 0, limits: RunLimits = RunLimits()) -> Fact:
    """'The capital of France is [Paris].' -> a fill-in-the-blank fact forgetting 'Paris'."""
    text = _clean(sentence, "sentence", _label(index), limits)
    marks = _MARKED.findall(text)
    if len(marks) != 1:
        found = "none" if not marks else f"{len(marks)}"
        raise FactError(f"{_label(index, text)}: mark exactly one answer with [brackets] (found {found}), "
                        "e.g. 'The capital of France is [Paris].'")
    answer = marks[0].strip()
    if not answer:
        raise FactError(f"{_label(index, text)}: the [answer] is empty")
    blank = _MARKED.sub("___", text)
    if not re.search(r"\w", blank.replace("___", "")):
        raise FactError(f"{_label(index, text)}: put some words around the [answer]")
    # The whole sentence with its blank is the question, words after the bracket included.
    return make_fact({"question": SENTENCE_PROMPT.format(blank=blank), "answer": answer}, index, limits)


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
