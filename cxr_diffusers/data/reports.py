"""Cleaning of free-text radiology reports (Open-i / Indiana) and clinical notes (COVID-19 collection) for prompts."""

from __future__ import annotations

import functools
import re

from .vocabulary import normalize_finding

__all__ = ["clean_report"]

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
