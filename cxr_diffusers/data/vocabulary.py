"""The closed vocabulary of the data: finding names, their source spellings, and the words prompts are made of.

`FINDINGS` is the closed vocabulary of finding names (lower case, radiology wording) that every loader writes into
the `labels` column; `normalize_finding` maps the spellings of the source datasets onto it (NIH `Effusion` ->
`pleural effusion`, Open-i `Pulmonary Atelectasis` -> `atelectasis`, ...). `source_population` says which sources
hold children or adults. The word lists at the end are the wordings `prompts.PromptBuilder` draws from.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "ADULT_SOURCES",
    "FINDINGS",
    "FINDING_LEADS",
    "MODALITY_WORDS",
    "NORMAL_PHRASES",
    "NO_FINDING",
    "PEDIATRIC_SOURCES",
    "SEX_NOUNS",
    "VIEW_WORDS",
    "display_finding",
    "normalize_finding",
    "normalize_findings",
    "source_population",
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

#: `source` values whose images are all children's / all adults' (prompts name the population when age is unknown).
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


def source_population(source: str) -> str:
    """`pediatric`, `adult`, or "" when the `source` column does not tell."""
    if source in PEDIATRIC_SOURCES:
        return "pediatric"
    if source in ADULT_SOURCES:
        return "adult"
    return ""


# ----------------------------------------------------------------------------------------------- prompt wording
# The first entry of each list is the wording of the deterministic prompt (`prompts.build_prompt`).

VIEW_WORDS = {
    "PA": ["PA", "posteroanterior", "PA view"],
    "AP": ["AP", "anteroposterior", "AP view"],
    "AP supine": ["AP supine", "supine AP", "supine anteroposterior"],
    "lateral": ["lateral", "lateral view"],
    "frontal": ["frontal", "frontal view"],
}
MODALITY_WORDS = ["chest radiograph", "chest X-ray", "chest x-ray", "CXR", "radiograph of the chest"]
NORMAL_PHRASES = [
    NO_FINDING,
    "No acute cardiopulmonary process.",
    "No active disease.",
    "Normal chest.",
    "The lungs are clear. No acute findings.",
]
FINDING_LEADS = ["Findings: {}.", "{}.", "Shows {}.", "Evidence of {}.", "Positive for {}."]
#: sex -> (adult noun, child noun), the alternatives to "female" / "male" in varied prompts.
SEX_NOUNS = {"female": ("woman", "girl"), "male": ("man", "boy")}
