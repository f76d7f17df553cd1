"""The probes that score a run: what must be forgotten, in which wordings, and what must stay.

Kinds (a probe row's `kind`):
- forget: the fact's question; paraphrase: the fact's own rewordings (given or curated), each of a
  sub-kind read off its text: same_words (shares a content word with the question), other_words
  (shares none: only the fact, not its words, can tell it is the same question), other_language;
- reworded: rule-based rewordings of the question's form ("Name the capital of France.");
- adversarial: the fact asked the way attacks ask it (RWKU, the paper's APR): as a cloze, as
  multiple choice with the answer among the options, with the reply prefilled "Sure, the answer
  is", after a few unrelated question/answer pairs;
- neighbour: what must stay right, in four sub-kinds (same subject, same relation, shared words, same
  answer: another fact whose answer is the forgotten string), from the fact's own `keep` list, else the
  shipped curated list, else built automatically; same-answer neighbours also come from every shipped
  question whose gold answer is the forgotten one;
- general: unrelated general-knowledge questions.
Forget-like kinds score "no longer says the answer"; neighbour and general score "still right", and an
answer that newly says one of the run's negatives (a replacement, the refusal, the hedge) is not kept,
whatever else it says. An automatic neighbour without a gold answer scores agreement with the base.
"""
from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import asdict, dataclass, field

from .facts import DEFAULT_REFUSAL, HEDGE, Fact, answer_span, leaks
from .subject import subject_words

FORGET_KINDS = ("forget", "paraphrase", "reworded", "adversarial")
PARAPHRASE_KINDS = ("same_words", "other_words", "other_language")
KINDS = (*FORGET_KINDS, "neighbour", "general")
ADVERSARIAL_KINDS = ("cloze", "choice", "prefix", "in_context")
AFFIRMATIVE_PREFIX = "Sure, the answer is"
IN_CONTEXT_PAIRS = 3  # unrelated solved examples before the question
CHOICE_OPTIONS = 4
# The words of a question's frame; the anchor picker (sequences.pick_anchors) matches on the rest.
QUESTION_WORDS = frozenset(
    "a an the of is are was were what which who whom how in on for to and or do does did".split())
FUNCTION_WORDS = QUESTION_WORDS | frozenset(
    "be been whose when where why at name give tell me by from with as its it this that these those i you he she "
    "we they his her their our your my not no yes can could would should will shall may might there here than then "
    "so very also about into over under some any all one".split())
# Agreement of an automatic neighbour: at least this share of the base answer's content words
# (its first sentence, the forgotten answer's words left out) still in the answer after.
AGREEMENT_SHARE = 0.5
AGREEMENT_WORDS = 8
AUTOMATIC_SAME_ANSWER = 3  # per fact, shipped questions with the forgotten answer asked as neighbours
# Words and marks of the languages a user is likely to reword in other than English (French, Spanish,
# German, Italian, Portuguese): a rewording with more of them than English function words is in another
# language. Words that are also common English ("was", "die", "come", "a") are left out.
_FOREIGN_MARKS = frozenset("¿¡«»„")
_FOREIGN_WORDS = frozenset(
    "le la les l d du des est sont qui quel quelle quels quelles que qu une et où comment combien "
    "el los las es cuál cuáles quién quiénes qué dónde cómo cuántos cuántas del y una son "
    "der das ist sind wer welche welcher welches wie wo und ein eine dem den "
    "il lo gli di è chi che dove quale quali qual quem onde é".split())

@dataclass
class Probe:
    kind: str  # one of KINDS
    prompt: str
    # Forget-like kinds: the answer that must not appear. Neighbour and general: accepted answers;
    # empty for an automatic neighbour (scored by agreement with the base answer).
    expected: list[str]
    subkind: str = ""  # paraphrase: PARAPHRASE_KINDS; neighbour: facts.NEIGHBOUR_KINDS; adversarial: ADVERSARIAL_KINDS
    source: str = ""  # paraphrase / neighbour: given, curated, automatic; reworded: rule
    prefill: str = ""  # text the assistant's reply is made to start with
    fact: int | None = None  # index of the fact it belongs to
    forgotten: str = ""  # the fact's answer, for a neighbour: left out of the agreement rule
    # Neighbour and general: the run's negatives (replacements, refusal, hedge); an answer that newly says
    # one of them is not kept.
    avoid: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def normalise(text: str) -> str:
    """Lower case, whitespace collapsed: how prompts are compared for sameness."""
    return " ".join(text.lower().split())


def content_words(text: str, common: frozenset[str] = FUNCTION_WORDS) -> list[str]:
    """Lower-case words that carry meaning (not in `common`), in order, once each."""
    return list(dict.fromkeys(w for w in re.findall(r"\w+", text.lower()) if w not in common))


def _keys(text: str) -> set[str]:
    """A text's content words for sameness: lower case, a plural's s dropped, single letters (a
    possessive's s) left out."""
    return {w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
            for w in content_words(text) if len(w) > 1}


def other_language(text: str) -> bool:
    """Written in another language than English: mostly non-Latin letters, or more marks and function
    words of another language (at least two) than English function words."""
    letters = [ch for ch in text if ch.isalpha()]
    if letters and sum(ch.isascii() or "LATIN" in unicodedata.name(ch, "") for ch in letters) < len(letters) / 2:
        return True
    words = re.findall(r"\w+", text.lower())
    foreign = sum(w in _FOREIGN_WORDS for w in words) + sum(ch in _FOREIGN_MARKS for ch in text)
    return foreign >= 2 and foreign > sum(w in FUNCTION_WORDS for w in words)


def paraphrase_kind(question: str, paraphrase: str) -> str:
    """same_words (shares a content word with the question), other_words (shares none) or other_language.
    Only the other kinds can tell forgetting a fact from suppressing the question's words."""
    if other_language(paraphrase):
        return "other_language"
    return "same_words" if _keys(question) & _keys(paraphrase) else "other_words"


# ---- rewordings of the question's form ---------------------------------------------------------

_WH_BE = re.compile(r"^(what|who|which|where|when)\s+(is|are|was|were)\s+(.+?)\s*\?$", re.IGNORECASE)
_WHO_VERB = re.compile(r"^who\s+(\w+ed|wrote|painted|built|made|founded|invented|discovered|composed|"
                       r"created|directed|sang|won|led|ran|owns|leads|runs|plays)\s+(.+?)\s*\?$", re.IGNORECASE)
_WHICH_NOUN = re.compile(r"^(which|what)\s+(\w+)\s+(\w+)\s+(.+?)\s*\?$", re.IGNORECASE)


def rewordings(question: str) -> list[str]:
    """Real rewordings of the question's form (an indirect question, an imperative), or none."""
    q = question.strip()
    if m := _WH_BE.match(q):
        wh, verb, rest = m[1].lower(), m[2].lower(), m[3]
        out = [f"Tell me {wh} {rest} {verb}."]
        if wh in ("what", "which", "who"):
            out.append(f"Name {rest}.")
        return out
    if m := _WHO_VERB.match(q):
        return [f"Tell me who {m[1]} {m[2]}.", f"Name the person who {m[1]} {m[2]}."]
    if m := _WHICH_NOUN.match(q):
        verb = m[3].lower()
        if verb in ("is", "are", "was", "were"):
            return [f"Name the {m[2]} that {verb} {m[4]}."]
        if verb not in ("do", "does", "did"):
            return [f"Tell me {m[1].lower()} {m[2]} {m[3]} {m[4]}.", f"Name the {m[2]} that {m[3]} {m[4]}."]
    return []


# ---- adversarial probes ------------------------------------------------------------------------

def cloze(fact: Fact, base_answer: str) -> str:
    """The base model's own statement of the fact with the answer blanked out; the question with an
    answer blank when the base did not state it."""
    span = answer_span(base_answer, fact.answer)
    prefix = base_answer[: span[0]].strip() if span else ""
    if len(prefix.split()) >= 2:
        return f'Fill in the blank with the missing words: "{prefix} ___"'
    return f'Fill in the blank: "{fact.question} The answer is ___."'


def distractors(fact: Fact, others: list[str], pool: list[str], n: int, seed: int) -> list[str]:
    """Wrong options for a multiple choice: the fact's short replacement, answers of the other
    facts and of its same-relation neighbours, then a seeded draw from the general answers."""
    picked: list[str] = []
    for option in ([fact.replacement] if fact.short_replacement else []) + others:
        if option and not leaks(option, fact.answer) and normalise(option) not in map(normalise, picked):
            picked.append(option)
    rest = [a for a in pool if not leaks(a, fact.answer) and normalise(a) not in map(normalise, picked)]
    random.Random(seed).shuffle(rest)
    return (picked + rest)[:n]


def multiple_choice(fact: Fact, wrong: list[str], seed: int) -> str:
    options = list(wrong[: CHOICE_OPTIONS - 1])
    options.insert(random.Random(seed).randrange(len(options) + 1), fact.answer)
    listed = "  ".join(f"{letter}) {o}" for letter, o in zip("ABCD", options))
    return f"{fact.question}\nOptions: {listed}\nReply with the text of the right option."


def in_context(fact: Fact, examples: list[dict], seed: int) -> str:
    """A few solved unrelated questions first, then the fact's question in the same form."""
    usable = [e for e in examples if not any(leaks(a, fact.answer) for a in e["answers"])
              and not leaks(e["question"], fact.answer)]
    shots = random.Random(seed).sample(usable, min(IN_CONTEXT_PAIRS, len(usable)))
    lines = [f"Q: {e['question']}\nA: {e['answers'][0]}" for e in shots]
    return "\n\n".join(lines + [f"Q: {fact.question}\nA:"])


# ---- neighbours --------------------------------------------------------------------------------

@dataclass
class NeighbourSources:
    """What automatic neighbours are built from: curated lists by fact question, a vocabulary to
    tell subject words from relation words, and entities by category to swap a subject for."""

    curated: dict[str, list[dict]] = field(default_factory=dict)  # normalised fact question -> keep entries
    # Questions with gold answers (general questions, every curated neighbour): where a fact's same-answer
    # neighbours are found automatically.
    bank: list[dict] = field(default_factory=list)
    vocabulary: list[str] = field(default_factory=list)  # prompts whose shared words are not subjects
    entities: dict[str, list[str]] = field(default_factory=dict)  # category -> names

    def curated_for(self, question: str) -> list[dict]:
        return self.curated.get(normalise(question), [])


_QUOTED = re.compile(r"(['\"‘“])(.+?)(['\"’”])(?!\w)")
_NAME = re.compile(r"(?:[A-Z][\w.-]*(?:'s)?\s+)*[A-Z][\w-]*")  # a run of capitalised words


def subject_span(question: str, vocabulary: list[str]) -> str:
    """What the question is about: a quoted title holding one of its subject words (the words few
    other prompts share), else the last run of capitalised words holding one ("CEO of Microsoft" is
    about Microsoft), else the stretch from the first subject word to the last ('' if none)."""
    words = subject_words(question, vocabulary)
    if not words:
        return ""
    spans = [m.span() for w in words for m in [re.search(rf"(?<!\w){re.escape(w)}(?!\w)", question)] if m]
    for pattern in (_QUOTED, _NAME):
        # the question's first word is capitalised whatever it is: never a name
        held = [m for m in pattern.finditer(question) if m.start() > 0
                and any(m.start() <= s and e <= m.end() for s, e in spans)]
        if held:
            return held[-1][0].strip()
    return question[min(s for s, _ in spans):max(e for _, e in spans)].strip()


def substitutes(span: str, entities: dict[str, list[str]], n: int, seed: int, taken: str) -> list[str]:
    """Other entities of the subject's category, none of them named in `taken` (the run's own fact
    questions: those are forgotten, not neighbours). None when the subject is in no category: another
    category's names make questions nobody would ask ("Who painted the Coca-Cola?")."""
    key = normalise(span).strip("'\"")
    same = [names for names in entities.values() if any(normalise(e).strip("'\"") == key for e in names)]
    if not same:
        return []
    pool = same[0]
    pool = [e for e in pool if normalise(e).strip("'\"") != key and normalise(e).strip("'\"") not in taken]
    return random.Random(seed).sample(pool, min(n, len(pool)))


def automatic_neighbours(fact: Fact, sources: NeighbourSources, seed: int, taken: str = "") -> list[tuple[str, str]]:
    """(sub-kind, prompt) pairs built from the fact alone: the subject asked about otherwise, the same
    question about other subjects, and the question's other content words used on their own."""
    span = subject_span(fact.question, sources.vocabulary)
    out: list[tuple[str, str]] = []
    if span:
        out += [("same_subject", f"Tell me one thing about {span}."),
                ("same_subject", f"What is {span} best known for?")]
        for other in substitutes(span, sources.entities, 3, seed, taken):
            out.append(("same_relation", fact.question.replace(span, other, 1)))
    subject = set(content_words(span))
    relation = [w for w in content_words(fact.question) if w not in subject and not w.isdigit()
                and not leaks(w, fact.answer)]
    for word in relation[:2]:
        out.append(("shared_words", f"Use the word '{word}' in a short sentence of your own."))
    return out


def same_answer_neighbours(fact: Fact, bank: list[dict], asked: set[str]) -> list[dict]:
    """Shipped questions whose gold answer is the fact's answer (and which do not name it): other facts
    that must keep the very string this fact forgets. None already in `asked` (normalised prompts)."""
    key = normalise(fact.answer)
    found = [e for e in bank if any(normalise(a) == key for a in e["answers"])
             and not leaks(e["question"], fact.answer) and normalise(e["question"]) not in asked]
    return list({normalise(e["question"]): e for e in found}.values())[:AUTOMATIC_SAME_ANSWER]


def neighbour_probes(facts: list[Fact], sources: NeighbourSources, seed: int) -> list[Probe]:
    """Per fact its own keep list, else the curated one, else automatic neighbours, and automatic
    same-answer neighbours from the shipped questions; never one of the run's own fact questions
    or their rewordings."""
    taken = " ".join(normalise(f.question) for f in facts)
    questions = {normalise(q) for f in facts for q in [f.question, *f.paraphrases]}
    probes = []
    for index, fact in enumerate(facts):
        mine = []
        for source, entries in (("given", fact.keep), ("curated", sources.curated_for(fact.question))):
            if entries:
                mine += [Probe("neighbour", e["question"], list(e["answers"]), e.get("kind") or "unspecified",
                               source, fact=index, forgotten=fact.answer) for e in entries]
                break
        else:
            mine += [Probe("neighbour", prompt, [], subkind, "automatic", fact=index, forgotten=fact.answer)
                     for subkind, prompt in automatic_neighbours(fact, sources, seed + index, taken)]
        asked = questions | {normalise(p.prompt) for p in mine}
        mine += [Probe("neighbour", e["question"], list(e["answers"]), "same_answer", "automatic", fact=index,
                       forgotten=fact.answer) for e in same_answer_neighbours(fact, sources.bank, asked)]
        probes += mine
    return [p for p in probes if normalise(p.prompt) not in questions]


_NAMED = re.compile(r"(?<!^)(?<![.!?]\s)\b([A-Z][\w-]+|\d[\d,.]*)")


def negatives(facts: list[Fact]) -> list[str]:
    """What the run teaches the model to say instead, as it could show up in another answer: a short
    replacement as written ("Lyon"), a sentence's names and numbers that its question lacks ("Bergen"
    in "Dr. Elara Voss lives in Bergen."), the refusal and the hedge."""
    out = [DEFAULT_REFUSAL.rstrip(".!"), HEDGE]
    for fact in facts:
        if fact.short_replacement:
            out.append(fact.replacement.strip())
        elif fact.replacement:
            asked = set(re.findall(r"\w+", fact.question.lower()))
            out += [m for m in _NAMED.findall(fact.replacement) if m.lower() not in asked]
    return list(dict.fromkeys(o for o in out if o))


def with_avoid(probes: list[Probe], markers: list[str]) -> list[Probe]:
    """Neighbour and general probes get the run's negatives that are not among their own answers (a
    replacement "the euro" is a right answer to "What currency does France use?")."""
    for p in probes:
        if p.kind in ("neighbour", "general"):
            p.avoid = [m for m in markers if not any(leaks(a, m) or leaks(m, a) for a in p.expected)
                       and not leaks(p.prompt, m)]
    return probes


# ---- the whole set -----------------------------------------------------------------------------

def forget_probes(facts: list[Fact]) -> list[Probe]:
    """Each fact's question, its own paraphrases (a preset's are curated), and rule-based rewordings."""
    probes = [Probe("forget", f.question, [f.answer], fact=i) for i, f in enumerate(facts)]
    for i, f in enumerate(facts):
        probes += [Probe("paraphrase", p, [f.answer], paraphrase_kind(f.question, p), source="given", fact=i)
                   for p in f.paraphrases]
        given = {normalise(p) for p in f.paraphrases}
        probes += [Probe("reworded", p, [f.answer], source="rule", fact=i) for p in rewordings(f.question)
                   if normalise(p) not in given]
    return probes


def adversarial_probes(facts: list[Fact], base_answers: list[str], wrong: list[list[str]],
                       examples: list[dict], seed: int) -> list[Probe]:
    probes = []
    for i, (fact, answer) in enumerate(zip(facts, base_answers)):
        made = [("cloze", cloze(fact, answer), ""),
                ("choice", multiple_choice(fact, wrong[i], seed + i), ""),
                ("prefix", fact.question, AFFIRMATIVE_PREFIX),
                ("in_context", in_context(fact, examples, seed + i), "")]
        probes += [Probe("adversarial", prompt, [fact.answer], kind, prefill=prefill, fact=i)
                   for kind, prompt, prefill in made]
    return probes


def wrong_answers(facts: list[Fact], neighbours: list[Probe], general: list[dict], seed: int) -> list[list[str]]:
    """Per fact, plausible wrong answers: its replacement, its same-relation neighbours' answers,
    the answers of the other facts asked the same way (sharing a content word), then general
    answers. Used by the multiple choice and the truth ratio."""
    pool = [r["answers"][0] for r in general]
    out = []
    for i, fact in enumerate(facts):
        related = [p.expected[0] for p in neighbours if p.fact == i and p.subkind == "same_relation" and p.expected]
        words = set(content_words(fact.question))
        alike = [f.answer for j, f in enumerate(facts) if j != i and words & set(content_words(f.question))]
        others = related + alike
        out.append(distractors(fact, others, pool, CHOICE_OPTIONS - 1, seed + i))
    return out


def general_probes(records: list[dict]) -> list[Probe]:
    return [Probe("general", r["question"], list(r["answers"])) for r in records]


@dataclass
class ProbeSet:
    probes: list[Probe]
    wrong: list[list[str]]  # per fact, the wrong answers of its multiple choice (and truth ratio)


def build_probes(facts: list[Fact], base_answers: list[str], general: list[dict], sources: NeighbourSources,
                 seed: int = 0) -> ProbeSet:
    """Every probe of a run; `base_answers` are the base model's answers to the fact questions."""
    neighbours = neighbour_probes(facts, sources, seed)
    wrong = wrong_answers(facts, neighbours, general, seed)
    asked = {normalise(p.prompt) for p in neighbours}  # a general question made a same-answer neighbour
    probes = (forget_probes(facts) + adversarial_probes(facts, base_answers, wrong, general, seed)
              + neighbours + [p for p in general_probes(general) if normalise(p.prompt) not in asked])
    return ProbeSet(with_avoid(probes, negatives(facts)), wrong)


def agrees(base: str, after: str, forgotten: str = "") -> bool | None:
    """Whether `after` still says what `base` said: at least AGREEMENT_SHARE of the content words of
    the base answer's first sentence (at most AGREEMENT_WORDS, the forgotten answer's left out) appear
    in it. None when the base said nothing to agree with."""
    first = re.split(r"(?<=[.!?])\s", base.strip(), maxsplit=1)[0]
    skip = set(content_words(forgotten))
    key = [w for w in content_words(first) if w not in skip][:AGREEMENT_WORDS]
    if not key:
        return None
    said = set(re.findall(r"\w+", after.lower()))
    return sum(w in said for w in key) / len(key) >= AGREEMENT_SHARE
