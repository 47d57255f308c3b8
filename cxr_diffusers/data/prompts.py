"""Text prompts from labels, metadata and reports: one vocabulary of finding names for every loader.

`FINDINGS` is the closed vocabulary of finding names (lower case, radiology wording) that every loader writes into
the `labels` column; `normalize_finding` maps the spellings of the source datasets onto it (NIH `Effusion` ->
`pleural effusion`, Open-i `Pulmonary Atelectasis` -> `atelectasis`, ...). `build_prompt` turns labels and
metadata into one deterministic sentence pair::

    >>> build_prompt(["cardiomegaly", "pleural effusion"], view="PA", age=58, sex="female")
    'PA chest radiograph of a 58 year old female. Findings: cardiomegaly, pleural effusion.'

Where a report (Indiana) or clinical notes (COVID) exist they are used as text, cleaned of the anonymisation tokens
(`XXXX`) by `clean_report`. `PromptBuilder(training=True, seed=...)` varies the wording and drops fields at random
(seeded) for training; `PromptBuilder()` is the deterministic `build_prompt`.
"""

from __future__ import annotations

import functools
import math
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "FINDINGS",
    "NO_FINDING",
    "PromptBuilder",
    "build_prompt",
    "clean_report",
    "display_finding",
    "normalize_finding",
    "normalize_findings",
    "prompt_from_example",
]

#: The closed vocabulary of finding names written to the `labels` column. An empty list means "no finding".
FINDINGS: tuple[str, ...] = (
    # the 14 NIH ChestX-ray14 findings
    "atelectasis",
    "cardiomegaly",
    "consolidation",
    "pulmonary edema",
    "pleural effusion",
    "emphysema",
    "fibrosis",
    "hernia",
    "infiltration",
    "mass",
    "nodule",
    "pleural thickening",
    "pneumonia",
    "pneumothorax",
    # pneumonia sources (Kermany, COVID-19 collection)
    "covid-19",
    "ards",
    # Open-i / Indiana problems that occur in at least a few reports
    "opacity",
    "airspace disease",
    "calcinosis",
    "calcified granuloma",
    "granuloma",
    "granulomatous disease",
    "scarring",
    "atherosclerosis",
    "tortuous aorta",
    "aortic aneurysm",
    "widened mediastinum",
    "hypoinflation",
    "hyperinflation",
    "flattened diaphragm",
    "elevated diaphragm",
    "eventration",
    "blunted costophrenic angle",
    "increased lung markings",
    "pulmonary congestion",
    "heart failure",
    "pulmonary hypertension",
    "enlarged pulmonary artery",
    "pericardial effusion",
    "copd",
    "interstitial lung disease",
    "bronchiectasis",
    "cavitation",
    "cyst",
    "lucency",
    "hyperlucent lung",
    "volume loss",
    "mediastinal shift",
    "subcutaneous emphysema",
    "hydropneumothorax",
    "hemothorax",
    "pneumoperitoneum",
    "sarcoidosis",
    "tuberculosis",
    "cystic fibrosis",
    "bronchitis",
    "degenerative spine disease",
    "spondylosis",
    "osteophyte",
    "scoliosis",
    "kyphosis",
    "fracture",
    "deformity",
    "dislocation",
    "arthritis",
    "bone disease",
    "sclerosis",
    "hiatal hernia",
    "pectus excavatum",
    "pectus carinatum",
    "medical device",
    "catheter",
    "tube",
    "stent",
    "surgical instruments",
    "sutures",
    "spinal fusion",
    "foreign body",
    "breast implants",
    "mastectomy",
    "pneumonectomy",
    "nipple shadow",
)

#: Spoken when the label list is empty.
NO_FINDING = "No acute cardiopulmonary abnormality."

_IGNORED = {
    "",
    "normal",
    "no finding",
    "no findings",
    "no indexing",
    "technical quality of image unsatisfactory",
    "todo",
}

# Spellings of the source datasets (lower case, underscores as spaces) -> FINDINGS.
_ALIASES: dict[str, str] = {
    # NIH
    "effusion": "pleural effusion",
    "edema": "pulmonary edema",
    "pleural thickening": "pleural thickening",
    # COVID-19 collection
    "covid19": "covid-19",
    "covid 19": "covid-19",
    "covid": "covid-19",
    "sars-cov-2": "covid-19",
    "acute respiratory distress syndrome": "ards",
    # Open-i problems
    "pulmonary atelectasis": "atelectasis",
    "cicatrix": "scarring",
    "infiltrate": "infiltration",
    "infiltrates": "infiltration",
    "pulmonary emphysema": "emphysema",
    "bullous emphysema": "emphysema",
    "pulmonary fibrosis": "fibrosis",
    "pulmonary disease, chronic obstructive": "copd",
    "chronic obstructive pulmonary disease": "copd",
    "hernia, hiatal": "hiatal hernia",
    "hernia, diaphragmatic": "hernia",
    "fractures, bone": "fracture",
    "fractures": "fracture",
    "catheters, indwelling": "catheter",
    "tube, inserted": "tube",
    "implanted medical device": "medical device",
    "stents": "stent",
    "foreign bodies": "foreign body",
    "diaphragmatic eventration": "eventration",
    "lung diseases, interstitial": "interstitial lung disease",
    "lung, hyperlucent": "hyperlucent lung",
    "hypertension, pulmonary": "pulmonary hypertension",
    "cysts": "cyst",
    "dislocations": "dislocation",
    "funnel chest": "pectus excavatum",
    "bone diseases, metabolic": "bone disease",
    "expansile bone lesions": "bone disease",
    "osteoporosis": "bone disease",
    "hyperostosis, diffuse idiopathic skeletal": "degenerative spine disease",
    "subcutaneous  emphysema": "subcutaneous emphysema",
    "hemopneumothorax": "hemothorax",
    "shift": "mediastinal shift",
    "airspace opacity": "opacity",
    "lung opacity": "opacity",
    "enlarged cardiomediastinum": "widened mediastinum",
}

# Open-i MeSH terms whose head is an anatomical site: the first qualifier carries the finding.
_MESH_QUALIFIED: dict[str, str] = {
    "lung/hypoinflation": "hypoinflation",
    "lung/hyperdistention": "hyperinflation",
    "lung/hyperlucent": "hyperlucent lung",
    "thoracic vertebrae/degenerative": "degenerative spine disease",
    "spine/degenerative": "degenerative spine disease",
    "lumbar vertebrae/degenerative": "degenerative spine disease",
    "cervical vertebrae/degenerative": "degenerative spine disease",
    "aorta/tortuous": "tortuous aorta",
    "aorta, thoracic/tortuous": "tortuous aorta",
    "aorta/enlarged": "tortuous aorta",
    "markings/lung": "increased lung markings",
    "markings/bronchovascular": "increased lung markings",
    "markings/interstitial": "increased lung markings",
    "density/lung": "opacity",
    "density/retrocardiac": "opacity",
    "cardiac shadow/enlarged": "cardiomegaly",
    "heart/enlarged": "cardiomegaly",
    "thickening/pleura": "pleural thickening",
    "pleura/thickening": "pleural thickening",
    "mediastinum/prominent": "widened mediastinum",
    "mediastinum/enlarged": "widened mediastinum",
    "costophrenic angle/blunted": "blunted costophrenic angle",
    "diaphragm/flattened": "flattened diaphragm",
    "diaphragm/elevated": "elevated diaphragm",
    "pulmonary artery/enlarged": "enlarged pulmonary artery",
}

_FINDING_SET = frozenset(FINDINGS)

_DISPLAY = {"covid-19": "COVID-19", "ards": "ARDS", "copd": "COPD"}

PEDIATRIC_SOURCES = frozenset({"kermany", "pneumoniamnist"})
ADULT_SOURCES = frozenset({"nih_subset", "nih_cxr8", "jsrt"})


def normalize_finding(name: str | None) -> str | None:
    """Map one finding name of any source onto `FINDINGS`.

    Returns None for "no finding" markers (`No Finding`, `normal`, `todo`, ...) and for names outside the vocabulary;
    loaders keep the raw names in a source column, so nothing is lost.
    """
    if name is None:
        return None
    key = re.sub(r"\s+", " ", str(name).replace("_", " ")).strip().lower()
    if key in _IGNORED:
        return None
    if key in _FINDING_SET:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    if "/" in key:  # an Open-i MeSH term: head/qualifier/...
        parts = [p.strip() for p in key.split("/")]
        qualified = _MESH_QUALIFIED.get("/".join(parts[:2]))
        if qualified:
            return qualified
        return normalize_finding(parts[0]) if parts[0] not in {"lung", "spine", "aorta"} else None
    return None


def normalize_findings(names: Iterable[str | None]) -> list[str]:
    """Normalize several names; drops unknowns and duplicates, keeps the order of first appearance."""
    out: list[str] = []
    for name in names:
        finding = normalize_finding(name)
        if finding and finding not in out:
            out.append(finding)
    return out


def display_finding(name: str) -> str:
    """The spelling used inside prompts (`covid-19` -> `COVID-19`)."""
    return _DISPLAY.get(name, name)


# ----------------------------------------------------------------------------------------------- report cleaning

_XXXX = re.compile(r"X{3,}(?:'s)?|\bXX\b")
# Conservative restorations of the most frequent anonymised words of Open-i reports.
_RESTORE = [
    (re.compile(r"\bx-X{2,}", re.IGNORECASE), "x-ray"),
    (re.compile(r"\blymph X{2,}"), "lymph nodes"),
    (re.compile(r"\bcostophrenic X{2,}"), "costophrenic angle"),
    (re.compile(r"\bpulmonary X{2,}"), "pulmonary vasculature"),
    (re.compile(r"\b([Tt])here (is|are) no X{2,} of\b"), r"\1here is no evidence of"),
    (re.compile(r"\b([Nn])o X{2,} of\b"), r"\1o evidence of"),
    (re.compile(r"X{2,}-year-old"), ""),
]
# A sentence whose subject was anonymised ("The XXXX are intact.") says nothing: it is dropped.
_LOST_SUBJECT = re.compile(r"(^|\b[Tt]he |\b[Vv]isualized )(X{2,}(?:'s)?[ ,]*)+(are|is|appear|appears|were|was)\b")
_LOST_PHRASE = re.compile(r"\bX{2,}[ ,]+X{2,}\b")


def clean_report(text: str | None) -> str:
    """Clean a radiology report or clinical note for use as prompt text.

    Removes the anonymisation tokens of Open-i reports (`XXXX`): a few frequent ones are restored (`x-XXXX` ->
    `x-ray`, `lymph XXXX` -> `lymph nodes`, `no XXXX of` -> `no evidence of`), sentences whose subject was
    anonymised ("The XXXX are intact."), that lost a phrase ("XXXX XXXX") or that are left without content are dropped,
    the remaining tokens are removed; list numbers ("1.") are dropped, and whitespace and punctuation are
    normalised. Returns "" for missing text (None, NaN, "None.").
    """
    if text is None or not isinstance(text, str):
        return ""
    return _clean_report(text)


@functools.lru_cache(maxsize=65536)
def _clean_report(text: str) -> str:
    text = re.sub(r"\s+", " ", text.replace("\u00a0", " ")).strip()
    if not text or text.lower() in {"none", "none.", "nan", "n/a"}:
        return ""
    for pattern, replacement in _RESTORE:
        text = pattern.sub(replacement, text)
    kept = []
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        if _LOST_SUBJECT.search(sentence.strip()) or _LOST_PHRASE.search(sentence):
            continue
        s = _XXXX.sub(" ", sentence)
        s = re.sub(r"\s+", " ", s)
        s = re.sub(r"\s+([.,;:!?])", r"\1", s).strip()
        s = re.sub(r"([,;:])(?:\s*[,;:])+", r"\1", s)  # ", ," -> ","
        s = re.sub(r"\(\s*\)", "", s)
        s = re.sub(r"^(\d+\.\s*)+", "", s)  # list numbers
        s = re.sub(r"^[,;:.\s]+", "", s)
        s = re.sub(r"[,;:\s]+([.!?])$", r"\1", s).strip()
        words = re.findall(r"[A-Za-z]{2,}", s)
        if len(words) < 2 and not (words and normalize_finding(words[0])):
            continue  # nothing left but a fragment ("Inferior."), unless it is a finding ("Cardiomegaly.")
        if s[:1].islower():
            s = s[0].upper() + s[1:]
        kept.append(s)
    text = " ".join(kept)
    text = re.sub(r"\.{2,}", ".", text)
    text = re.sub(r"\s+", " ", text).strip()
    if text and text[-1] not in ".!?":
        text += "."
    return text


def _truncate(text: str, max_chars: int | None) -> str:
    if not max_chars or len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
    return cut[: end + 1] if end > 0 else cut.rstrip() + "..."


# ----------------------------------------------------------------------------------------------------- prompts

_VIEW_WORDS = {
    "PA": ["PA", "posteroanterior", "PA view"],
    "AP": ["AP", "anteroposterior", "AP view"],
    "AP supine": ["AP supine", "supine AP", "supine anteroposterior"],
    "lateral": ["lateral", "lateral view"],
    "frontal": ["frontal", "frontal view"],
}
_MODALITY = ["chest radiograph", "chest X-ray", "chest x-ray", "CXR", "radiograph of the chest"]
_NORMAL = [
    NO_FINDING,
    "No acute cardiopulmonary process.",
    "No active disease.",
    "Normal chest.",
    "The lungs are clear. No acute findings.",
]
_FINDING_LEADS = ["Findings: {}.", "{}.", "Shows {}.", "Evidence of {}.", "Positive for {}."]


def _as_age(age) -> int | None:
    if age is None or (isinstance(age, float) and math.isnan(age)):
        return None
    return int(age)


def _article(number: int) -> str:
    s = str(number)
    return "an" if s.startswith("8") or number in (11, 18) else "a"


def _sex_noun(sex: str, age: int | None, rng: random.Random | None) -> str:
    if sex not in ("female", "male"):
        return ""
    if rng is None or age is None:
        return sex
    if age >= 18:
        return rng.choice([sex, {"female": "woman", "male": "man"}[sex]])
    return rng.choice([sex, {"female": "girl", "male": "boy"}[sex]])


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
    view_word = ""
    if view:
        view_word = rng.choice(_VIEW_WORDS.get(view, [view])) if rng else view
    modality = rng.choice(_MODALITY) if rng else "chest radiograph"
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
    age = _as_age(age)
    parts = [_header(view, age, sex, population, None)]
    phrases = _findings_phrase(labels, subtype)
    if text and not phrases:
        parts.append(text)
    else:
        parts.append(f"Findings: {', '.join(phrases)}." if phrases else NO_FINDING)
        if text:
            parts.append(text)
    return _truncate(" ".join(parts), max_chars)


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
        fields = _fields(example)
        if not self.training:
            return build_prompt(**fields, max_chars=self.max_chars)
        return self.sample(**fields)

    def sample(
        self,
        labels: Sequence[str] = (),
        *,
        view: str = "",
        age: int | None = None,
        sex: str = "",
        subtype: str = "",
        population: str = "",
        text: str = "",
    ) -> str:
        """One random variant of `build_prompt(...)` (training mode)."""
        rng = self._rng
        age = _as_age(age)
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
        parts = [_header(view, age, sex, population, rng)]
        phrases = _findings_phrase(labels, subtype)
        if phrases and len(phrases) > 1:
            phrases = rng.sample(phrases, len(phrases))
        if text and not phrases:
            parts.append(text)
        elif not (rng.random() < self.p_drop_findings):
            if phrases:
                lead = rng.choice(_FINDING_LEADS)
                body = _join(phrases, rng)
                sentence = lead.format(body)
                parts.append(sentence[0].upper() + sentence[1:])
            else:
                parts.append(rng.choice(_NORMAL))
            if text:
                parts.append(text)
        return _truncate(" ".join(parts), self.max_chars)


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
        "population": example.get("population") or _population(source),
        "text": text,
    }


def _population(source: str) -> str:
    if source in PEDIATRIC_SOURCES:
        return "pediatric"
    if source in ADULT_SOURCES:
        return "adult"
    return ""


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

