"""Training pieces: schedule, class weights, series augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dust.data.datasets import SeriesAugment, inverse_frequency_weights
from dust.training.task import warmup_cosine


def test_warmup_then_cosine():
    factors = [warmup_cosine(step, 4, 20) for step in range(21)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == pytest.approx(1.0)
    assert factors[12] == pytest.approx(0.5)
    assert factors[20] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))


def test_inverse_frequency_weights():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    weights = inverse_frequency_weights(labels, 4)
    assert weights[:3] == pytest.approx([10 / 24, 10 / 12, 10 / 4])
    assert weights[3] == 1.0  # absent class


def test_series_augment_changes_series_repeatably():
    x = torch.randn(3, 40)
    torch.manual_seed(1)
    a = SeriesAugment()(x)
    torch.manual_seed(1)
    b = SeriesAugment()(x)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    assert torch.equal(SeriesAugment(jitter=0, scale=0, shift=0)(x), x)
