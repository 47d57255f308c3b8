"""Prompts from labels, metadata and reports: one deterministic sentence per image, or seeded variants for training.

`build_prompt` turns labels (finding names of `vocabulary.FINDINGS`) and metadata into one deterministic sentence
pair::

    >>> build_prompt(["cardiomegaly", "pleural effusion"], view="PA", age=58, sex="female")
    'PA chest radiograph of a 58 year old female. Findings: cardiomegaly, pleural effusion.'

Where a report (Indiana) or clinical notes (COVID) exist they are used as text, cleaned by `reports.clean_report`.
`PromptBuilder(training=True, seed=...)` varies the wording and drops fields at random (seeded) for training;
`PromptBuilder()` gives the deterministic prompt. `pneumonia_class_from_prompt` reads a prompt's class back.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .reports import clean_report
from .vocabulary import (
    ADULT_SOURCES,
    FINDING_LEADS,
    FINDINGS,
    MODALITY_WORDS,
    NO_FINDING,
    NORMAL_PHRASES,
    PEDIATRIC_SOURCES,
    SEX_NOUNS,
    VIEW_WORDS,
    display_finding,
    normalize_finding,
    normalize_findings,
    source_population,
)

# The vocabulary and `clean_report` lived here before vocabulary.py and reports.py: still importable from here.
__all__ = [
    "ADULT_SOURCES",
    "FINDINGS",
    "NO_FINDING",
    "PEDIATRIC_SOURCES",
    "PromptBuilder",
    "build_prompt",
    "clean_report",
    "display_finding",
    "normalize_finding",
    "normalize_findings",
    "pneumonia_class_from_prompt",
    "prompt_from_example",
]


def _truncate(text: str, max_chars: int | None) -> str:
    if not max_chars or len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
    return cut[: end + 1] if end > 0 else cut.rstrip() + "..."


def _pick(options: Sequence[str], rng: random.Random | None) -> str:
    """A random wording, or the first (the deterministic one) without `rng`."""
    return rng.choice(options) if rng else options[0]


def _as_age(age) -> int | None:
    if age is None or (isinstance(age, float) and math.isnan(age)):
        return None
    return int(age)


def _article(number: int) -> str:
    s = str(number)
    return "an" if s.startswith("8") or number in (11, 18) else "a"


def _sex_noun(sex: str, age: int | None, rng: random.Random | None) -> str:
    if sex not in SEX_NOUNS:
        return ""
    if rng is None or age is None:
        return sex
    adult_noun, child_noun = SEX_NOUNS[sex]
    return rng.choice([sex, adult_noun if age >= 18 else child_noun])


def _findings_phrase(labels: Sequence[str], subtype: str) -> list[str]:
    """Finding names as spoken: pneumonia with its subtype ("bacterial pneumonia", "COVID-19 pneumonia")."""
    names = [n for n in labels if n]
    phrases: list[str] = []
    for name in names:
        if name == "covid-19" and "pneumonia" in names:
            continue  # folded into "COVID-19 pneumonia"
        if name == "pneumonia":
            if "covid-19" in names:
                phrases.append("COVID-19 pneumonia")
            elif subtype:
                phrases.append(f"{subtype} pneumonia")
            else:
                phrases.append("pneumonia")
        else:
            phrases.append(display_finding(name))
    return phrases


def _join(items: Sequence[str], rng: random.Random | None = None) -> str:
    if len(items) <= 1 or rng is None:
        return ", ".join(items)
    if rng.random() < 0.5:
        return ", ".join(items[:-1]) + " and " + items[-1]
    return ", ".join(items)


def _header(view: str, age: int | None, sex: str, population: str, rng: random.Random | None) -> str:
    view_word = _pick(VIEW_WORDS.get(view, [view]), rng) if view else ""
    modality = _pick(MODALITY_WORDS, rng)
    if population == "pediatric" and age is None:
        view_word = (view_word + " pediatric").strip() if view_word else "pediatric"
    head = f"{view_word} {modality}".strip()
    head = head[0].upper() + head[1:]
    noun = _sex_noun(sex, age, rng)
    if age is not None:
        if rng is not None and rng.random() < 0.5:
            who = f"{_article(age)} {age}-year-old {noun or 'patient'}"
        else:
            who = f"{_article(age)} {age} year old {noun or 'patient'}"
        return f"{head} of {who}."
    if noun:
        return f"{head} of an adult {noun}." if population == "adult" else f"{head} of a {noun} patient."
    if population == "adult":
        return f"{head} of an adult."
    return f"{head}."


def _findings_sentence(phrases: Sequence[str], rng: random.Random | None) -> str:
    if not phrases:
        return _pick(NORMAL_PHRASES, rng)
    sentence = _pick(FINDING_LEADS, rng).format(_join(phrases, rng))
    return sentence[0].upper() + sentence[1:]


def _compose(
    labels: Sequence[str], view: str, age: int | None, sex: str, subtype: str, population: str, text: str,
    rng: random.Random | None = None, p_drop_findings: float = 0.0,
) -> str:  # fmt: skip
    """The prompt sentences: header, findings (or the normal phrase), then the text; varied when `rng` is given."""
    parts = [_header(view, age, sex, population, rng)]
    phrases = _findings_phrase(labels, subtype)
    if rng is not None and len(phrases) > 1:
        phrases = rng.sample(phrases, len(phrases))
    if text and not phrases:
        parts.append(text)
    elif rng is None or not rng.random() < p_drop_findings:
        parts.append(_findings_sentence(phrases, rng))
        if text:
            parts.append(text)
    return " ".join(parts)


def build_prompt(
    labels: Sequence[str] = (),
    *,
    view: str = "",
    age: int | None = None,
    sex: str = "",
    subtype: str = "",
    population: str = "",
    text: str = "",
    max_chars: int | None = None,
) -> str:
    """Deterministic prompt from labels and metadata, or from report text where there is one.

    Args:
        labels: finding names from `FINDINGS` (empty: "No acute cardiopulmonary abnormality.").
        view: canonical view (`PA`, `AP`, `AP supine`, `lateral`, `frontal`) or "".
        age: age in years or None. sex: `female`, `male` or "".
        subtype: pneumonia subtype (`bacterial`, `viral`, ...), spoken as "bacterial pneumonia".
        population: `pediatric` or `adult` when the age is unknown but the population is.
        text: cleaned report or notes. A report (`labels` empty) replaces the findings sentence; clinical notes come
            after it when labels are given as well.
        max_chars: cut the result at a sentence end before this length.
    """
    return _truncate(_compose(labels, view, _as_age(age), sex, subtype, population, text), max_chars)


@dataclass
class PromptBuilder:
    """Prompts for one example, deterministic (`training=False`) or varied and seeded for training.

    In training mode each call draws new wording (modality noun, view spelling, age phrasing, finding lead, order of
    findings, normal phrase) and drops the view, age, sex, findings or report text with the given probabilities,
    from a `random.Random(seed)` stream: the same seed gives the same sequence of prompts. Give each data-loader
    worker its own seed (for example `seed + worker_id`).

    `builder(example)` reads the common columns (`labels`, `view`, `age`, `sex`, `source`) and the optional
    `subtype`, `impression`, `findings`, `report`, `clinical_notes` columns of one example.
    """

    training: bool = False
    seed: int | None = 0
    p_drop_view: float = 0.2
    p_drop_age: float = 0.3
    p_drop_sex: float = 0.3
    p_drop_findings: float = 0.05
    p_drop_text: float = 0.3
    p_empty: float = 0.0
    max_chars: int | None = None

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def reseed(self, seed: int | None) -> None:
        """Restart the random stream (for example in a DataLoader `worker_init_fn`)."""
        self.seed = seed
        self._rng = random.Random(seed)

    def __call__(self, example: Mapping) -> str:
        return self.sample(example) if self.training else prompt_from_example(example, self.max_chars)

    def sample(self, example: Mapping) -> str:
        """One random variant of `prompt_from_example(example)` (what training mode returns)."""
        fields = _fields(example)
        rng = self._rng
        view, age, sex, text = fields["view"], fields["age"], fields["sex"], fields["text"]
        if self.p_empty and rng.random() < self.p_empty:
            return ""
        if rng.random() < self.p_drop_view:
            view = ""
        if rng.random() < self.p_drop_age:
            age = None
        if rng.random() < self.p_drop_sex:
            sex = ""
        if text and rng.random() < self.p_drop_text:
            text = ""
        prompt = _compose(fields["labels"], view, age, sex, fields["subtype"], fields["population"], text,
                          rng=rng, p_drop_findings=self.p_drop_findings)  # fmt: skip
        return _truncate(prompt, self.max_chars)


def _fields(example: Mapping) -> dict:
    """Prompt fields of one dataset example (a row of any loader)."""
    text_parts = []
    for column in ("impression", "findings", "report"):
        value = clean_report(example.get(column))
        if value:
            text_parts.append(value if column == "report" else f"{column.capitalize()}: {value}")
    notes = clean_report(example.get("clinical_notes"))
    labels = list(example.get("labels") or [])
    if text_parts:  # a radiology report replaces the label sentence
        labels = []
        text = " ".join(text_parts)
    else:
        text = notes
    source = example.get("source") or ""
    age = example.get("age")
    return {
        "labels": labels,
        "view": example.get("view") or "",
        "age": int(age) if age is not None else None,
        "sex": example.get("sex") or "",
        "subtype": example.get("subtype") or "",
        "population": example.get("population") or source_population(source),
        "text": text,
    }


def prompt_from_example(example: Mapping, max_chars: int | None = None) -> str:
    """The deterministic prompt of one dataset row (what the loaders write into `prompt`)."""
    return build_prompt(**_fields(example), max_chars=max_chars)


# ------------------------------------------------------------------------------------------ prompt -> class
_NEGATED_PNEUMONIA = re.compile(
    r"\b(no|without|negative for|free of|absence of|resolved|resolving)\s+(\w+\s+){0,2}pneumonia\b"
)
_PNEUMONIA_WORD = re.compile(r"\bpneumonia\b")
_NORMAL_PHRASE = re.compile(
    r"\b(no acute|normal|no finding|no findings|no abnormality|no abnormalities|unremarkable|lungs are clear|"
    r"clear lungs|healthy)\b"
)


def pneumonia_class_from_prompt(prompt: str | None) -> str | None:
    """
    "PNEUMONIA", "NORMAL" or None (cannot tell) for a prompt: the one reading of a prompt's class that training
    (synthetic labels) and evaluation (prompt agreement) share.

    Pneumonia named and not negated ("no", "without", "negative for", "free of", "absence of", "resolved",
    "resolving" up to two words before it) -> PNEUMONIA; a normal phrase ("no acute ...", "normal", "unremarkable",
    ...) or a negated pneumonia -> NORMAL; prompts that name other findings only (e.g. "pleural effusion") -> None.
    """
    text = " ".join(str(prompt or "").lower().split())
    if _PNEUMONIA_WORD.search(_NEGATED_PNEUMONIA.sub(" ", text)):
        return "PNEUMONIA"
    if _NORMAL_PHRASE.search(text) or _NEGATED_PNEUMONIA.search(text):
        return "NORMAL"
    return None

