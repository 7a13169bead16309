"""PNG figures: confusion matrices and training curves (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..atomic import atomic_output  # noqa: E402
from .metrics import ClassificationReport  # noqa: E402

__all__ = ["plot_confusion", "plot_history"]


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_confusion(report: ClassificationReport, path: Path, title: str = "") -> None:
    """The confusion matrix (rows: true class, columns: predicted) with counts in the cells."""
    matrix = np.asarray(report.confusion)
    k = len(report.class_names)
    fig, ax = plt.subplots(figsize=(1.2 * k + 2, 1.1 * k + 1.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), report.class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), report.class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = matrix.max() or 1
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color="white" if matrix[i, j] > top / 2 else "black")
    ax.set_title(f"{title}\naccuracy {report.accuracy:.3f}, macro-F1 {report.macro_f1:.3f}")
    _save(fig, path)


def plot_history(history: dict[str, Any], path: Path) -> None:
    """Training and validation loss, validation accuracy and macro-F1 per validated epoch."""
    rows = history.get("history", [])
    epochs = [r["epoch"] for r in rows]
    fig, (loss_ax, score_ax) = plt.subplots(1, 2, figsize=(10, 3.5))
    loss_ax.plot(epochs, [r["train_loss"] for r in rows], label="train loss")
    loss_ax.plot(epochs, [r["val_loss"] for r in rows], label="validation loss")
    score_ax.plot(epochs, [r["val_accuracy"] for r in rows], label="validation accuracy")
    score_ax.plot(epochs, [r["val_macro_f1"] for r in rows], label="validation macro-F1")
    best = history.get("best")
    for ax in (loss_ax, score_ax):
        if best:
            ax.axvline(best["epoch"], color="grey", linestyle=":", label=f"best epoch {best['epoch']}")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    score_ax.set_ylim(0, 1)
    fig.suptitle(history.get("stage", ""))
    _save(fig, path)
