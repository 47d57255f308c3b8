"""Binary classification metrics with bootstrap 95% confidence intervals (PNEUMONIA = positive class).

Plain numpy, vectorised over bootstrap resamples; the point values equal scikit-learn's (`accuracy_score`,
`precision_score`, `recall_score`, `f1_score`, `roc_auc_score`; tests check this), with sklearn's `zero_division=0`
convention for precision/F1 and NaN for a metric that is undefined (AUROC, recall/sensitivity or specificity on a
one-class sample; sklearn would report 0 for recall there).

    result = evaluate_predictions(y_true, p_pneumonia, threshold=0.5, n_bootstrap=1000, seed=0)
    result["metrics"]["auroc"]   # {"value": 0.97, "ci_low": 0.96, "ci_high": 0.98}
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from ..errors import CXRInputError

__all__ = ["METRICS", "binary_metrics", "bootstrap_metrics", "evaluate_predictions", "resampled_metrics", "roc_auc",
           "summarize_seeds"]

METRICS = ("accuracy", "precision", "recall", "f1", "auroc", "sensitivity", "specificity")


def _check(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).astype(np.int64).reshape(-1)
    y_score = np.asarray(y_score, dtype=np.float64).reshape(-1)
    if y_true.shape != y_score.shape:
        raise CXRInputError(f"{len(y_true)} labels but {len(y_score)} scores.")
    if len(y_true) == 0:
        raise CXRInputError("No predictions to evaluate.")
    if not np.isin(y_true, (0, 1)).all():
        raise CXRInputError("Labels must be 0 (NORMAL) or 1 (PNEUMONIA).")
    if not np.isfinite(y_score).all():
        raise CXRInputError("Scores contain NaN or infinite values.")
    return y_true, y_score


def _rank_rows(scores: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties shared) along the last axis."""
    from scipy.stats import rankdata

    return rankdata(scores, axis=-1, method="average")


def _auroc_rows(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """AUROC of each row (Mann-Whitney U / (n1 n0)); NaN for a row with one class."""
    y_true = np.atleast_2d(y_true)
    ranks = _rank_rows(np.atleast_2d(y_score))
    n_pos = y_true.sum(axis=-1).astype(np.float64)
    n_neg = y_true.shape[-1] - n_pos
    rank_sum = (ranks * y_true).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    return auc


def roc_auc(y_true, y_score) -> float:
    """Area under the ROC curve (equals `sklearn.metrics.roc_auc_score`); NaN when only one class is present."""
    y_true, y_score = _check(y_true, y_score)
    return float(_auroc_rows(y_true, y_score)[0])


def _threshold_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, np.ndarray]:
    """Confusion-count metrics along the last axis (vectorised)."""
    tp = ((y_pred == 1) & (y_true == 1)).sum(-1).astype(np.float64)
    tn = ((y_pred == 0) & (y_true == 0)).sum(-1).astype(np.float64)
    fp = ((y_pred == 1) & (y_true == 0)).sum(-1).astype(np.float64)
    fn = ((y_pred == 0) & (y_true == 1)).sum(-1).astype(np.float64)
    n = tp + tn + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        specificity = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    return {"accuracy": (tp + tn) / n, "precision": precision, "recall": recall,
            "f1": f1, "sensitivity": recall, "specificity": specificity, "tp": tp, "tn": tn, "fp": fp, "fn": fn}


def binary_metrics(y_true, y_score, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, precision, recall, F1, AUROC, sensitivity, specificity (+ tp/tn/fp/fn) at `score >= threshold`."""
    y_true, y_score = _check(y_true, y_score)
    values = _threshold_metrics(y_true, (y_score >= threshold).astype(np.int64))
    out = {k: float(v) for k, v in values.items()}
    out["auroc"] = roc_auc(y_true, y_score)
    for key in ("tp", "tn", "fp", "fn"):
        out[key] = int(out[key])
    return out


def bootstrap_metrics(y_true, y_score, threshold: float = 0.5, n_bootstrap: int = 1000, seed: int = 0,
                      confidence: float = 0.95, chunk: int = 200) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CIs (resampling images with replacement, seeded) of every metric in `METRICS`.

    Resamples where a metric is undefined (one class only) are skipped for that metric.
    """
    y_true, y_score = _check(y_true, y_score)
    if n_bootstrap < 1:
        raise CXRInputError(f"n_bootstrap must be at least 1, got {n_bootstrap}.")
    rng = np.random.default_rng(seed)
    n = len(y_true)
    y_pred = (y_score >= threshold).astype(np.int64)
    samples: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    for start in range(0, n_bootstrap, chunk):
        index = rng.integers(0, n, size=(min(chunk, n_bootstrap - start), n))
        values = _threshold_metrics(y_true[index], y_pred[index])
        values["auroc"] = _auroc_rows(y_true[index], y_score[index])
        for m in METRICS:
            samples[m].append(values[m])
    alpha = (1 - confidence) / 2
    out = {}
    for m in METRICS:
        data = np.concatenate(samples[m])
        data = data[np.isfinite(data)]
        out[m] = ((float(np.quantile(data, alpha)), float(np.quantile(data, 1 - alpha))) if len(data)
                  else (math.nan, math.nan))
    return out


def resampled_metrics(y_true, y_score, index, threshold: float = 0.5, chunk: int = 200) -> dict[str, np.ndarray]:
    """Every metric of `METRICS` on given resamples: `index` (B, n) rows of image indices (the same rows for two
    models give a paired bootstrap). Returns `{metric: (B,) array}`, NaN where a resample leaves a metric undefined."""
    y_true, y_score = _check(y_true, y_score)
    index = np.asarray(index, dtype=np.int64)
    if index.ndim != 2 or (index.size and (index.min() < 0 or index.max() >= len(y_true))):
        raise CXRInputError(f"Resample indices must be a (B, n) array of indices below {len(y_true)}.")
    y_pred = (y_score >= threshold).astype(np.int64)
    samples: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
    for start in range(0, len(index), chunk):
        rows = index[start:start + chunk]
        values = _threshold_metrics(y_true[rows], y_pred[rows])
        values["auroc"] = _auroc_rows(y_true[rows], y_score[rows])
        for m in METRICS:
            samples[m].append(values[m])
    return {m: np.concatenate(v) if v else np.zeros(0) for m, v in samples.items()}


def evaluate_predictions(y_true, y_score, threshold: float = 0.5, n_bootstrap: int = 1000, seed: int = 0,
                         confidence: float = 0.95) -> dict:
    """Point metrics with bootstrap CIs, the confusion matrix and counts, as a JSON-ready dict.

    `{"metrics": {name: {"value", "ci_low", "ci_high"}}, "confusion_matrix": [[tn, fp], [fn, tp]] (rows: true
    NORMAL, PNEUMONIA), "n", "n_pneumonia", "n_normal", "threshold", "n_bootstrap", "confidence"}`.
    """
    point = binary_metrics(y_true, y_score, threshold)
    intervals = bootstrap_metrics(y_true, y_score, threshold, n_bootstrap, seed, confidence) if n_bootstrap else {}
    y = np.asarray(y_true).reshape(-1)
    return {
        "metrics": {m: {"value": point[m], "ci_low": intervals.get(m, (math.nan,))[0],
                        "ci_high": intervals.get(m, (math.nan, math.nan))[1]} for m in METRICS},
        "confusion_matrix": [[point["tn"], point["fp"]], [point["fn"], point["tp"]]],
        "n": len(y), "n_pneumonia": int((y == 1).sum()), "n_normal": int((y == 0).sum()),
        "threshold": float(threshold), "n_bootstrap": int(n_bootstrap), "confidence": float(confidence),
    }


def summarize_seeds(results: Iterable[dict]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation (ddof=1; 0 for one run) of each metric over `evaluate_predictions` results."""
    results = list(results)
    if not results:
        raise CXRInputError("No runs to summarise.")
    out = {}
    for m in METRICS:
        values = np.array([r["metrics"][m]["value"] for r in results], dtype=np.float64)
        out[m] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                  "values": values.tolist()}
    return out
