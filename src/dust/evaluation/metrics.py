"""Classification metrics from labels and predictions (plain numpy, no state)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["ClassificationReport", "classification_report", "confusion_matrix"]


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K, K)`` counts; row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
    return matrix


@dataclass
class ClassificationReport:
    """Accuracy, macro-F1 and per-class precision / recall / F1 / support, with the confusion matrix."""

    class_names: list[str]
    accuracy: float
    macro_f1: float
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]
    confusion: list[list[int]]

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for JSON."""
        return asdict(self)

    def table(self) -> str:
        """Per-class rows and the overall figures, as aligned text."""
        width = max(8, *(len(n) for n in self.class_names))
        lines = [f"{'class':{width}} {'precision':>9} {'recall':>7} {'F1':>6} {'support':>8}"]
        for i, name in enumerate(self.class_names):
            lines.append(f"{name:{width}} {self.precision[i]:>9.3f} {self.recall[i]:>7.3f} {self.f1[i]:>6.3f} "
                         f"{self.support[i]:>8d}")
        lines.append(f"accuracy {self.accuracy:.3f}   macro-F1 {self.macro_f1:.3f}   n = {sum(self.support)}")
        return "\n".join(lines)


def classification_report(labels: np.ndarray, predictions: np.ndarray, class_names: Sequence[str]) -> ClassificationReport:
    """Metrics of ``predictions`` against ``labels`` (both integer class indices).

    Precision / recall / F1 of a class with no predictions / no examples count as 0;
    macro-F1 averages F1 over the classes that have examples or predictions, as the
    training history's macro-F1 (torchmetrics) and scikit-learn's default do.
    """
    k = len(class_names)
    matrix = confusion_matrix(labels, predictions, k)
    tp = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0)
    support = matrix.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    total = matrix.sum()
    seen = (support > 0) | (predicted > 0)
    return ClassificationReport(
        class_names=list(class_names),
        accuracy=float(tp.sum() / total) if total else float("nan"),
        macro_f1=float(f1[seen].mean()) if seen.any() else float("nan"),
        precision=precision.tolist(),
        recall=recall.tolist(),
        f1=f1.tolist(),
        support=support.astype(int).tolist(),
        confusion=matrix.tolist(),
    )
