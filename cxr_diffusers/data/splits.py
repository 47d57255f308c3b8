"""Patient-level splits: carve validation/test sets by patient, and check that splits share no patient.

Splits are always made by patient, never by image: all images of one patient land in the same split. The
assignment is deterministic for a given seed (patients are sorted, then shuffled with `random.Random(f"{seed}:{stratum}")`),
and can be stratified (for example by class) so that each split keeps the class balance.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence

from ..errors import DataError

__all__ = ["OVERLAP_POLICIES", "assign_patient_splits", "check_patient_disjoint"]

#: What to do when *official* splits of a dataset share patient ids: keep them (and report the count), drop the
#: shared patients from the training side, or raise.
OVERLAP_POLICIES = ("keep", "drop", "error")


def assign_patient_splits(
    patients: Iterable[str],
    fractions: Mapping[str, float],
    *,
    seed: int = 0,
    strata: Mapping[str, str] | None = None,
    rest: str = "train",
    exclude: Iterable[str] = (),
) -> dict[str, str]:
    """Assign each patient to a split.

    Args:
        patients: patient ids (repeats are fine).
        fractions: share of patients per carved split, e.g. `{"validation": 0.1, "test": 0.1}`; the rest go to `rest`.
        seed: the shuffle seed.
        strata: optional patient -> stratum (e.g. class); fractions apply within each stratum.
        rest: split of the remaining patients.
        exclude: patients that must stay in `rest` (e.g. ids also present in an official test split).

    Returns:
        `{patient_id: split}`.
    """
    for name, value in fractions.items():
        if not 0 <= value < 1:
            raise DataError(f"The {name} fraction must be in [0, 1), not {value}.")
    if sum(fractions.values()) >= 1:
        raise DataError(f"The split fractions {dict(fractions)} leave no patient for {rest}.")
    unique = sorted(set(patients))
    excluded = set(exclude)
    groups: dict[str, list[str]] = {}
    for patient in unique:
        stratum = (strata or {}).get(patient, "") if strata is not None else ""
        groups.setdefault(stratum, []).append(patient)
    assignment = {p: rest for p in unique}
    for stratum, members in sorted(groups.items()):
        candidates = [p for p in members if p not in excluded]
        random.Random(f"{seed}:{stratum}").shuffle(candidates)
        n = len(members)
        start = 0
        for name, fraction in fractions.items():
            if fraction <= 0:
                continue
            count = round(fraction * n)
            if count == 0 and n >= 1 + len(fractions) * 2:
                count = 1
            count = min(count, len(candidates) - start)
            for patient in candidates[start : start + count]:
                assignment[patient] = name
            start += count
    return assignment


def _patients_by_split(splits: Mapping[str, Sequence[str]]) -> dict[str, set[str]]:
    return {name: {p for p in ids if p} for name, ids in splits.items()}


def shared_patients(splits: Mapping[str, Sequence[str]]) -> dict[tuple[str, str], set[str]]:
    """`{(split_a, split_b): shared patient ids}` for every pair of splits that share any (empty ids ignored)."""
    sets = _patients_by_split(splits)
    names = list(sets)
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            common = sets[a] & sets[b]
            if common:
                out[(a, b)] = common
    return out


def check_patient_disjoint(
    splits: Mapping[str, Sequence[str]] | object,
    *,
    allowed: Iterable[tuple[str, str]] = (),
) -> None:
    """Raise DataError when two splits share a patient id.

    `splits` is either `{split: patient ids}` or a `DatasetDict` with a `patient_id` column. `allowed` lists pairs of
    splits that may share patients (official splits kept as published, see `OVERLAP_POLICIES`). Empty ids (sources
    without patient ids, such as PneumoniaMNIST) are not compared.
    """
    if not isinstance(splits, Mapping) or any(hasattr(v, "column_names") for v in splits.values()):
        splits = {name: ds["patient_id"] for name, ds in splits.items()}  # a DatasetDict
    allowed_pairs = {tuple(p) for p in allowed} | {tuple(reversed(p)) for p in allowed}
    for (a, b), common in shared_patients(splits).items():
        if (a, b) in allowed_pairs:
            continue
        examples = ", ".join(sorted(common)[:5])
        raise DataError(
            f"Duplicate patient ids across splits: {len(common)} patients are in both {a} and {b} (e.g. {examples})."
        )
