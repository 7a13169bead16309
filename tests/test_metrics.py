"""The evaluation report's metrics agree with the training history's (torchmetrics)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from dust.evaluation.metrics import classification_report


def test_per_class_figures_and_macro_f1_over_the_classes_seen():
    labels, predictions = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 1, 1, 2, 1])
    report = classification_report(labels, predictions, ["a", "b", "c", "never"])
    assert report.precision == pytest.approx([1, 2 / 3, 1, 0])
    assert report.recall == pytest.approx([1, 1, 0.5, 0])
    assert report.support == [2, 2, 2, 0]
    assert report.macro_f1 == pytest.approx((1 + 0.8 + 2 / 3) / 3)  # "never" has no examples and no predictions
    assert report.accuracy == pytest.approx(5 / 6)


@pytest.mark.parametrize("seed", range(5))
def test_report_matches_the_training_history_metrics(seed):
    rng = np.random.default_rng(seed)
    k = 5
    labels = rng.integers(0, k - 1, 40)  # the last class never occurs
    predictions = np.where(rng.random(40) < 0.6, labels, rng.integers(0, k, 40))
    report = classification_report(labels, predictions, [str(i) for i in range(k)])
    preds, target = torch.from_numpy(predictions), torch.from_numpy(labels)
    assert report.macro_f1 == pytest.approx(float(MulticlassF1Score(k, average="macro")(preds, target)), abs=1e-6)
    assert report.accuracy == pytest.approx(float(MulticlassAccuracy(k, average="micro")(preds, target)), abs=1e-6)
