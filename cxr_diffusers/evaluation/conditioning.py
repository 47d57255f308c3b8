"""Conditioning check: does a classifier agree with the prompt an image was generated from?

    prompts = DEFAULT_PROMPTS                               # {"NORMAL": "...", "PNEUMONIA": "..."}
    classifier = ClassifierFeatureExtractor.from_pretrained("pretrained/pneumonia-classifier")
    result = conditioning_agreement(expected=[expected_class(p) for p in image_prompts],
                                    predicted=classifier.predict(images))

The expected class of a prompt is PNEUMONIA when it mentions pneumonia (and does not negate it), NORMAL otherwise
(`cxr_diffusers.data.prompts.pneumonia_class_from_prompt`, which training shares);
the classifier's label names (`config.id2label`) are matched case-insensitively.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..data.prompts import build_prompt, pneumonia_class_from_prompt
from ..errors import CXRInputError

__all__ = [
    "CLASSES",
    "DEFAULT_PROMPTS",
    "GROUP_PROMPTS",
    "conditioning_agreement",
    "expected_class",
    "label_from_labels",
]

CLASSES = ("NORMAL", "PNEUMONIA")

#: One prompt per class, written the way the Kermany training prompts are (`cxr_diffusers.data.build_prompt`).
DEFAULT_PROMPTS: dict[str, str] = {
    "NORMAL": build_prompt([], population="pediatric"),
    "PNEUMONIA": build_prompt(["pneumonia"], population="pediatric"),
}

#: One prompt per prompt group (`evaluation.fidelity.GROUPS`): the fixed protocol of `evaluate --prompt-groups`.
GROUP_PROMPTS: dict[str, str] = {
    "pediatric normal": DEFAULT_PROMPTS["NORMAL"],
    "pediatric pneumonia": DEFAULT_PROMPTS["PNEUMONIA"],
    "adult normal": build_prompt([], population="adult"),
    "adult pneumonia": build_prompt(["pneumonia"], population="adult"),
}

def expected_class(prompt: str) -> str:
    """The class a pneumonia-vs-rest classifier should give an image of `prompt`: `pneumonia_class_from_prompt`,
    with prompts that name other findings only counted as NORMAL (not pneumonia)."""
    return pneumonia_class_from_prompt(prompt) or "NORMAL"


def label_from_labels(labels: Sequence[str] | None) -> str | None:
    """Class of a dataset row from its `labels` column (None when unknown)."""
    if labels is None:
        return None
    return "PNEUMONIA" if any("pneumonia" in str(label).lower() for label in labels) else "NORMAL"


def _canonical(label: Any) -> str:
    return str(label).strip().upper()


def conditioning_agreement(
    expected: Sequence[str], predicted: Sequence[str], prompts: Sequence[str] | None = None
) -> dict[str, Any]:
    """How often `predicted` equals `expected` (case-insensitive): overall, per expected class, per prompt, and the
    confusion matrix (rows expected, columns predicted)."""
    from sklearn.metrics import confusion_matrix

    exp = [_canonical(e) for e in expected]
    pred = [_canonical(p) for p in predicted]
    if len(exp) != len(pred) or not exp:
        raise CXRInputError(f"conditioning_agreement needs as many predictions as prompts, got {len(pred)} and {len(exp)}.")
    unknown = sorted(set(exp) - set(pred) - set(CLASSES))
    labels = sorted(set(exp) | set(pred) | set(CLASSES))
    agree = np.array([e == p for e, p in zip(exp, pred)])
    from ..classification.input_check import NOT_A_RADIOGRAPH

    out: dict[str, Any] = {
        "agreement": float(agree.mean()),
        "n": len(exp),
        "not_a_radiograph": int(sum(p == NOT_A_RADIOGRAPH for p in pred)),  # counted as disagreements
        "per_class": {c: {"n": int(sum(e == c for e in exp)), "agreement": float(agree[[e == c for e in exp]].mean())}
                      for c in labels if any(e == c for e in exp)},
        "confusion_matrix": {"labels": labels, "matrix": confusion_matrix(exp, pred, labels=labels).tolist()},
    }
    if unknown:
        out["warning"] = f"expected classes {unknown} are not among the classifier's predictions"
    if prompts is not None:
        per_prompt: dict[str, dict[str, Any]] = {}
        for prompt, ok in zip(prompts, agree):
            entry = per_prompt.setdefault(prompt, {"n": 0, "agree": 0})
            entry["n"] += 1
            entry["agree"] += int(ok)
        out["per_prompt"] = {p: {"n": v["n"], "agreement": v["agree"] / v["n"]} for p, v in per_prompt.items()}
    return out


def check_classifier_labels(labels: Sequence[str]) -> None:
    """Raise when a classifier's label names cannot be matched to NORMAL / PNEUMONIA."""
    names = {_canonical(label) for label in labels}
    if not set(CLASSES) <= names:
        raise CXRInputError(
            f"The classifier's labels {sorted(names)} do not include NORMAL and PNEUMONIA; set config.id2label."
        )
