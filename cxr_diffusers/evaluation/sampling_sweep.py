"""Scores of sampling configurations (scheduler, steps, guidance interval, distilled model) against real images and
against each other, each beside its noise floor, and the decision rule that picks the fast default.

What `benchmarks/sweep_sampling.py` and `benchmarks/bench_sampling.py` share:

    scorer = RealScorer(real_images, real_groups, extractor, generated_groups, draws=10)
    scores = scorer.score(images, groups)          # {"all": {...}, "<group>": {...}} against the real reference
    scorer.floors                                  # the same scores of held-out real images: the real-vs-real floor
    rule = recommend(candidates, tolerances)       # the cheapest candidate within noise of the best on every score

Scores, all "lower is better" (`SCORE_NAMES`):

- `fd_classifier`: Frechet distance on the bundled pneumonia classifier's penultimate features (`frechet_distance`);
- `histogram_w1`: Wasserstein-1 distance of the pooled intensity histograms, grey levels (`fidelity.histogram_w1`);
- `sharpness_log_error`: |ln sharpness ratio| (`fidelity.sharpness_ratio`: mean Laplacian variance, generated /
  real; the ratio itself is reported beside it as `sharpness_ratio`).

Floors. The real images are split once into a held-out set with the generated set's size and prompt-group mix (per
group as many images as were generated, at most half of the group) and a reference (the rest); generated sets are
scored against that reference. The real-vs-real floor is the held-out set scored against the same reference, over
`draws` random splits (mean, standard deviation and values): it is what the scores of a perfect generator would be at
this sample size, and its spread is the noise of a score. `fd_pair` is the FD between two disjoint size-matched real
sets (the held-out set and as many reference images of the same groups): the floor of the FD between two generated
sets of the same size. Both follow `runner.distribution_step`'s size-matched floor (`runner._group_split`'s rule: at
most half of a group held out).

Decision rule (`recommend`): for every score the best value over the candidates is found (or given); a candidate is
within noise when `value - best <= tolerance` on every score that has a tolerance; the recommendation is the cheapest
such candidate (fewest UNet evaluations per image, then measured seconds per image).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import CXRInputError
from .distribution import (
    feature_statistics,
    frechet_distance,
    frechet_distance_from_statistics,
)
from .fidelity import histogram_w1, mean_sharpness

__all__ = [
    "RULE_TEXT",
    "SCORE_NAMES",
    "RealScorer",
    "fd",
    "floor_summary",
    "jsonable",
    "paired_psnr",
    "recommend",
    "within_noise",
]

SCORE_NAMES = ("fd_classifier", "histogram_w1", "sharpness_log_error")

RULE_TEXT = (
    "For every score (lower is better) take the best value over all candidates; a candidate is within noise when "
    "value - best <= tolerance on every score that has a tolerance (a missing value fails); the recommended "
    "configuration is the cheapest one within noise: fewest UNet evaluations per image, then fewest measured seconds "
    "per image. A candidate that changes what is sampled on purpose (a guidance interval) is exempt from the "
    "scores against the full-guidance reference (its `exempt_scores`) and is judged on the real-image scores alone."
)


# ------------------------------------------------------------------------------------------------------- rule
def within_noise(value: float | None, best: float | None, tolerance: float | None) -> bool | None:
    """`value - best <= tolerance` (scores are lower-is-better); None when there is no tolerance or best to test
    against, False for a missing or non-finite value."""
    if tolerance is None or best is None or not math.isfinite(tolerance):
        return None
    if value is None or not math.isfinite(value):
        return False
    return bool(value - best <= tolerance + 1e-12)


def _finite(value) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)


def recommend(
    candidates: Sequence[Mapping[str, Any]],
    tolerances: Mapping[str, float | None],
    best: Mapping[str, float] | None = None,
    cost_keys: Sequence[str] = ("unet_evals_per_image", "seconds_per_image"),
) -> dict[str, Any]:
    """
    The decision rule (`RULE_TEXT`).

    Args:
        candidates: each a mapping with "name", "scores" (score name -> value or None, lower is better), the
            `cost_keys` (missing costs count as infinite) and optionally "exempt_scores" (score names neither tested
            for it nor counted in the best values).
        tolerances: score name -> the noise of that score (None: the score is reported but not tested).
        best: score name -> a fixed best value (e.g. the reference's own score); default the minimum over candidates.
        cost_keys: the costs compared in order to pick the cheapest candidate within noise.

    Returns:
        {"rule", "tolerances", "best", "checks" (candidate -> score -> value/best/tolerance/within), "qualifying"
        (names, cheapest first), "recommended" (a name or None), "note"}.
    """
    tested = [m for m, tol in tolerances.items() if _finite(tol)]
    best_values: dict[str, float | None] = {}
    for metric in tested:
        if best is not None and metric in best and _finite(best[metric]):
            best_values[metric] = float(best[metric])
            continue
        values = [c["scores"].get(metric) for c in candidates if metric not in c.get("exempt_scores", ())]
        values = [float(v) for v in values if _finite(v)]
        best_values[metric] = min(values) if values else None
    tested = [m for m in tested if best_values[m] is not None]
    checks: dict[str, dict[str, Any]] = {}
    qualifying = []
    for c in candidates:
        entry = {}
        for metric in tested:
            if metric in c.get("exempt_scores", ()):
                continue
            value = c["scores"].get(metric)
            entry[metric] = {"value": value, "best": best_values[metric], "tolerance": float(tolerances[metric]),
                             "within": within_noise(value, best_values[metric], float(tolerances[metric]))}
        checks[c["name"]] = entry
        if tested and all(e["within"] for e in entry.values()):
            qualifying.append(c)

    def cost(c):
        return tuple(float(c[k]) if _finite(c.get(k)) else math.inf for k in cost_keys)

    qualifying.sort(key=cost)
    note = None
    if not tested:
        note = "no score has a noise tolerance (give real images for floors): nothing can be decided"
    elif not qualifying:
        note = "no candidate is within noise of the best on every score"
    return {
        "rule": RULE_TEXT,
        "scores_tested": tested,
        "tolerances": {m: (float(t) if _finite(t) else None) for m, t in tolerances.items()},
        "best": best_values,
        "checks": checks,
        "qualifying": [c["name"] for c in qualifying],
        "recommended": qualifying[0]["name"] if qualifying else None,
        "note": note,
    }


# ------------------------------------------------------------------------------------------------- floors
def floor_summary(values: Sequence[float | None]) -> dict[str, Any] | None:
    """Mean, sample standard deviation (None for one value) and the values of a floor over its draws."""
    finite = [float(v) for v in values if _finite(v)]
    if not finite:
        return None
    return {"mean": float(np.mean(finite)), "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
            "values": finite}


def fd(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    """`frechet_distance(a, b)`; None with fewer than two rows on a side. With far fewer images than feature
    dimensions both covariances are singular and `scipy.linalg.sqrtm` can return a large imaginary part: then the
    covariances are regularised (1e-6, then 1e-4 and 1e-2 times their mean variance added to the diagonal) until it
    is real; the `regularised_fd_calls` counter of this module counts those cases."""
    global regularised_fd_calls

    if a is None or b is None or len(a) < 2 or len(b) < 2:
        return None
    try:
        return frechet_distance(a, b)
    except ArithmeticError:
        pass
    mu1, s1 = feature_statistics(a)
    mu2, s2 = feature_statistics(b)
    scale = max(float(np.mean(np.diag(s1)) + np.mean(np.diag(s2))) / 2, 1e-12)
    regularised_fd_calls += 1
    for factor in (1e-6, 1e-4, 1e-2):
        offset = np.eye(len(s1)) * factor * scale
        try:
            return frechet_distance_from_statistics(mu1, s1 + offset, mu2, s2 + offset)
        except ArithmeticError:
            continue
    return None


regularised_fd_calls = 0
_fd = fd


def _as_images(images):
    """(N, 1, H, W) float tensor in [0, 1] (`features.images_to_tensor` for anything else)."""
    from .features import images_to_tensor

    return images_to_tensor(images)


class RealScorer:
    """
    Scores of generated image sets against real images, with size- and group-matched real-vs-real floors.

    Args:
        real_images: the real images, already at the generated size: an (N, 1, H, W) tensor in [0, 1] (or what
            `images_to_tensor` takes).
        real_groups: prompt group of each real image (`fidelity.example_group`; None where unknown), or None.
        extractor: a feature extractor for `fd_classifier` (e.g. `ClassifierFeatureExtractor`), or None to skip FD.
        generated_groups: the prompt group of each image of the generated sets that will be scored (their mix sets
            the held-out set's); when the real groups cannot match them, one pool of all real images is used.
        draws: random held-out / reference splits for the floors (the first is the reference of `score`).
        seed: seed of the splits.
    """

    def __init__(self, real_images, real_groups: Sequence[str | None] | None, extractor,
                 generated_groups: Sequence[str | None], draws: int = 10, seed: int = 0):
        from .image_quality import sharpness

        if draws < 1:
            raise CXRInputError(f"draws must be at least 1, got {draws}.")
        self.real = _as_images(real_images)
        n_real = len(self.real)
        groups = list(real_groups) if real_groups is not None else [None] * n_real
        if len(groups) != n_real:
            raise CXRInputError(f"Got {n_real} real images but {len(groups)} groups.")
        composition: dict[str | None, int] = {}
        for g in generated_groups:
            composition[g] = composition.get(g, 0) + 1
        matched = any(g is not None and g in groups for g in composition)
        self.pooled = not matched
        if self.pooled:  # the groups cannot be matched: one pool of all real images
            groups = [None] * n_real
            composition = {None: len(generated_groups)}
        self.groups = groups
        self.composition = composition
        self.extractor = extractor
        self.features = extractor(self.real) if extractor is not None else None
        self.sharpness = np.array([sharpness(a[0].numpy().astype(np.float64)) for a in self.real])
        self.notes: list[str] = []
        for g, n in composition.items():
            have = sum(1 for x in groups if x == g)
            if have < 2 * n:
                self.notes.append(f"group {g or 'all'}: {have} real images for {n} generated; held out "
                                  f"{min(n, have // 2)} (at most half) for the floors")
        rng = np.random.default_rng(seed)
        self.splits = [self._split(rng) for _ in range(int(draws))]
        self.held, self.reference = self.splits[0][0], self.splits[0][1]
        self.scopes = ["all"]
        if not self.pooled:
            self.scopes += [g for g in composition if g is not None and any(x == g for x in groups)]
        self.floors = self._floors()

    # ----------------------------------------------------------------------------------------------- splits
    def _split(self, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(held-out, reference, pair) indices: held-out with the generated mix, the rest as the reference, and a
        same-mix subset of the reference for the two-sample floor `fd_pair`."""
        held, pair = [], []
        groups = np.asarray([str(g) for g in self.groups])
        for g, n in self.composition.items():
            rows = rng.permutation(np.flatnonzero(groups == str(g)))
            k = min(n, len(rows) // 2)
            held += rows[:k].tolist()
            pair += rows[k : 2 * k].tolist()
        held_set = set(held)
        reference = np.asarray([i for i in range(len(self.real)) if i not in held_set], dtype=np.int64)
        return np.sort(np.asarray(held, dtype=np.int64)), reference, np.sort(np.asarray(pair, dtype=np.int64))

    def _scope_rows(self, rows: np.ndarray, scope: str) -> np.ndarray:
        if scope == "all":
            return rows
        return np.asarray([i for i in rows if self.groups[i] == scope], dtype=np.int64)

    # ----------------------------------------------------------------------------------------------- scores
    def _scores(self, images, features, sharp_mean, reference: np.ndarray) -> dict[str, Any]:
        """The scores of a set (images, its features, its mean sharpness) against real rows `reference`."""
        if len(images) == 0 or len(reference) == 0:
            return {"fd_classifier": None, "histogram_w1": None, "sharpness_ratio": None, "sharpness_log_error": None,
                    "n_generated": len(images), "n_real": len(reference)}
        ratio = sharp_mean / max(float(self.sharpness[reference].mean()), 1e-12)
        return {
            "fd_classifier": _fd(None if self.features is None else self.features[reference], features),
            "histogram_w1": histogram_w1(images, self.real[reference]),
            "sharpness_ratio": float(ratio),
            "sharpness_log_error": abs(math.log(ratio)) if ratio > 0 else None,
            "n_generated": len(images),
            "n_real": len(reference),
        }

    def score(self, images, groups: Sequence[str | None], features: np.ndarray | None = None) -> dict[str, Any]:
        """Scores of a generated set (with the prompt group of each image, and its features if already computed)
        against the reference, overall ("all") and per group."""
        images = _as_images(images)
        if len(groups) != len(images):
            raise CXRInputError(f"Got {len(images)} images but {len(groups)} groups.")
        if features is None and self.extractor is not None:
            features = self.extractor(images)
        out = {}
        for scope in self.scopes:
            rows = np.arange(len(images)) if scope == "all" else np.flatnonzero([g == scope for g in groups])
            out[scope] = self._scores(images[rows], None if features is None else features[rows],
                                      mean_sharpness(images[rows]) if len(rows) else 0.0,
                                      self._scope_rows(self.reference, scope))
        return out

    def _floors(self) -> dict[str, Any]:
        """Per scope and score: the held-out real images against the reference over the draws (`floor_summary`),
        with `sharpness_log_ratio` (signed, whose spread is the noise of `sharpness_log_error`); overall also
        `fd_pair`."""
        out: dict[str, Any] = {}
        for scope in self.scopes:
            values: dict[str, list] = {name: [] for name in (*SCORE_NAMES, "sharpness_ratio", "sharpness_log_ratio")}
            pair_values = []
            for held, reference, pair in self.splits:
                held, reference = self._scope_rows(held, scope), self._scope_rows(reference, scope)
                if len(held) == 0:
                    continue
                s = self._scores(self.real[held], None if self.features is None else self.features[held],
                                 float(self.sharpness[held].mean()), reference)
                for name in (*SCORE_NAMES, "sharpness_ratio"):
                    values[name].append(s[name])
                values["sharpness_log_ratio"].append(math.log(s["sharpness_ratio"]) if s["sharpness_ratio"] else None)
                if scope == "all" and self.features is not None:
                    pair_values.append(_fd(self.features[held], self.features[pair]))
            entry = {name: floor_summary(v) for name, v in values.items()}
            entry["n_held_out"] = len(self._scope_rows(self.held, scope))
            entry["n_reference"] = len(self._scope_rows(self.reference, scope))
            if scope == "all":
                entry["fd_pair"] = floor_summary(pair_values)
            out[scope] = entry
        return out

    def tolerance(self, score: str, scope: str = "all") -> float | None:
        """The noise of `score` in `scope`: the standard deviation of its real-vs-real floor over the draws (for
        `sharpness_log_error` that of the signed log ratio); None with a single draw."""
        entry = self.floors.get(scope, {})
        summary = entry.get("sharpness_log_ratio" if score == "sharpness_log_error" else score)
        return None if summary is None else summary["std"]

    def describe(self) -> dict[str, Any]:
        """The split and floors, for a benchmark's JSON."""
        return {
            "n_real": len(self.real),
            "n_held_out": len(self.held),
            "n_reference": len(self.reference),
            "draws": len(self.splits),
            "pooled_groups": self.pooled,
            "composition": {str(k): v for k, v in self.composition.items()},
            "floors": self.floors,
            "notes": self.notes,
        }


def paired_psnr(reference, images) -> float | None:
    """Mean PSNR of paired images (same prompt and seed) against `reference`; identical pairs (infinite) left out."""
    from .image_quality import psnr

    a, b = _as_images(reference), _as_images(images)
    values = [psnr(x[0].numpy().astype(np.float64), y[0].numpy().astype(np.float64)) for x, y in zip(a, b)]
    values = [v for v in values if math.isfinite(v)]
    return float(np.mean(values)) if values else None


def jsonable(value):
    """`value` for a strict JSON file: non-finite floats as "inf" / "-inf" (None for NaN), numpy scalars as Python
    numbers, tuples as lists."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value
