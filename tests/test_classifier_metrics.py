"""Classifier metrics: point values against scikit-learn, bootstrap CIs, seed summaries."""

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from cxr_diffusers.classification.metrics import (
    METRICS,
    binary_metrics,
    bootstrap_metrics,
    evaluate_predictions,
    roc_auc,
    summarize_seeds,
)
from cxr_diffusers.errors import CXRInputError


def _sample(seed, n=300, ties=False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    scores = np.clip(0.35 * y + rng.normal(0.35, 0.25, n), 0, 1)
    if ties:
        scores = np.round(scores, 1)  # many tied scores
    return y, scores


@pytest.mark.parametrize("seed,ties,threshold", [(0, False, 0.5), (1, True, 0.5), (2, False, 0.3), (3, True, 0.7)])
def test_point_metrics_match_scikit_learn(seed, ties, threshold):
    y, s = _sample(seed, ties=ties)
    pred = (s >= threshold).astype(int)
    ours = binary_metrics(y, s, threshold)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    expected = {
        "accuracy": skm.accuracy_score(y, pred),
        "precision": skm.precision_score(y, pred, zero_division=0),
        "recall": skm.recall_score(y, pred),
        "f1": skm.f1_score(y, pred, zero_division=0),
        "auroc": skm.roc_auc_score(y, s),
        "sensitivity": skm.recall_score(y, pred),
        "specificity": skm.recall_score(y, pred, pos_label=0),
    }
    for name in METRICS:
        assert ours[name] == pytest.approx(expected[name], abs=1e-12), name
    assert (ours["tn"], ours["fp"], ours["fn"], ours["tp"]) == (tn, fp, fn, tp)
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)


def test_no_positive_predictions_follow_sklearn_zero_division():
    y = np.array([0, 1, 1, 0, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.45])
    ours = binary_metrics(y, s)
    assert ours["precision"] == skm.precision_score(y, s >= 0.5, zero_division=0) == 0.0
    assert ours["f1"] == 0.0 and ours["recall"] == 0.0 and ours["specificity"] == 1.0


def test_one_class_auroc_is_nan_and_bad_input_is_rejected():
    assert math.isnan(roc_auc([1, 1, 1], [0.2, 0.5, 0.9]))
    with pytest.raises(CXRInputError, match="labels but"):
        binary_metrics([0, 1], [0.3])
    with pytest.raises(CXRInputError, match="0 \\(NORMAL\\) or 1"):
        binary_metrics([0, 2], [0.3, 0.5])
    with pytest.raises(CXRInputError, match="NaN"):
        binary_metrics([0, 1], [0.3, float("nan")])


def test_bootstrap_intervals_are_seeded_and_bracket_the_estimate():
    y, s = _sample(5, n=400)
    first = bootstrap_metrics(y, s, n_bootstrap=300, seed=7)
    assert first == bootstrap_metrics(y, s, n_bootstrap=300, seed=7)
    assert first != bootstrap_metrics(y, s, n_bootstrap=300, seed=8)
    point = binary_metrics(y, s)
    for name in METRICS:
        low, high = first[name]
        assert low <= point[name] <= high and high - low < 0.25, name
    # the AUROC interval agrees with a slow scikit-learn bootstrap of the same resamples
    rng = np.random.default_rng(7)
    index = rng.integers(0, len(y), size=(300, len(y)))
    slow = [skm.roc_auc_score(y[i], s[i]) for i in index]
    assert first["auroc"][0] == pytest.approx(np.quantile(slow, 0.025), abs=1e-12)
    assert first["auroc"][1] == pytest.approx(np.quantile(slow, 0.975), abs=1e-12)


def test_evaluate_predictions_layout_and_seed_summary():
    y, s = _sample(11, n=120)
    result = evaluate_predictions(y, s, n_bootstrap=100, seed=0)
    assert set(result["metrics"]) == set(METRICS)
    assert result["n"] == 120 and result["n_pneumonia"] + result["n_normal"] == 120
    (tn, fp), (fn, tp) = result["confusion_matrix"]
    assert tn + fp + fn + tp == 120 and tp + fn == result["n_pneumonia"]
    runs = [evaluate_predictions(*_sample(seed, n=120), n_bootstrap=10) for seed in (0, 1, 2)]
    summary = summarize_seeds(runs)
    values = [r["metrics"]["auroc"]["value"] for r in runs]
    assert summary["auroc"]["mean"] == pytest.approx(np.mean(values))
    assert summary["auroc"]["std"] == pytest.approx(np.std(values, ddof=1))
    assert summarize_seeds(runs[:1])["accuracy"]["std"] == 0.0
