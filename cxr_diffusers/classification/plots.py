"""PNG plots for the classifier: training curves, confusion matrix, ROC curve (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

__all__ = ["plot_confusion_matrix", "plot_roc", "plot_training_curves"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(history: dict[str, list[tuple[int, float]]], path: str | os.PathLike,
                         title: str = "Pneumonia classifier training") -> None:
    """Loss (train/validation) on the left, accuracy and AUROC (train/validation) on the right, against step.

    `history` maps series names (as logged by `JsonlLogger`: train_loss, val_loss, train_accuracy, val_accuracy,
    val_auroc) to (step, value) points; absent series are skipped.
    """
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, names, ylabel in ((left, ("train_loss", "val_loss"), "cross-entropy"),
                              (right, ("train_accuracy", "val_accuracy", "val_auroc"), "accuracy / AUROC")):
        for name in names:
            points = history.get(name) or []
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, label=name, marker="o" if name.startswith("val") else None,
                        markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    right.set_ylim(min(0.5, right.get_ylim()[0]), 1.01)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion_matrix(matrix: Sequence[Sequence[int]], path: str | os.PathLike,
                          labels: Sequence[str] = ("NORMAL", "PNEUMONIA"), title: str = "Confusion matrix") -> None:
    """Counts (and row percentages) with true class on rows, predicted on columns."""
    plt = _pyplot()
    matrix = np.asarray(matrix, dtype=np.int64)
    fig, ax = plt.subplots(figsize=(4.6, 4))
    ax.imshow(matrix, cmap="Blues")
    rows = matrix.sum(axis=1, keepdims=True)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            share = matrix[i, j] / rows[i, 0] if rows[i, 0] else 0.0
            ax.text(j, i, f"{matrix[i, j]}\n({share:.1%})", ha="center", va="center",
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_roc(y_true, y_score, path: str | os.PathLike, title: str = "ROC (PNEUMONIA positive)",
             operating_threshold: float | None = 0.5) -> None:
    """ROC curve with its AUROC in the legend and the operating point at `operating_threshold` marked."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    if len(np.unique(y_true)) == 2:
        fpr, tpr, _ = roc_curve(y_true, y_score)
        ax.plot(fpr, tpr, label=f"AUROC {roc_auc_score(y_true, y_score):.3f}")
        if operating_threshold is not None:
            pred = y_score >= operating_threshold
            ax.plot([(pred & (y_true == 0)).sum() / max(1, (y_true == 0).sum())],
                    [(pred & (y_true == 1)).sum() / max(1, (y_true == 1).sum())], "o",
                    label=f"threshold {operating_threshold:g}")
    ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=0.8)
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
