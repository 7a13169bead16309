"""Time-series classifiers trained apart and predicting together."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .ts_swin import TimeSeriesSwin, series_lengths

__all__ = ["SeriesEnsemble", "shift_in_time"]


def shift_in_time(x: Tensor, fraction: float, lengths: Tensor | None = None) -> Tensor:
    """``(B, C, L)`` series moved later in time by ``fraction`` of each one's valid length.

    A negative ``fraction`` moves them earlier. The edge step is repeated into the gap, as
    :class:`~dust.data.datasets.SeriesAugment` does in training; steps from ``lengths[b]``
    on (NaN padding) are left where they are. Without ``lengths`` they come from the NaNs.
    """
    size = x.shape[-1]
    if lengths is None:
        lengths = series_lengths(x) if bool(torch.isnan(x).any()) else torch.full((x.shape[0],), size)
    lengths = torch.as_tensor(lengths, device=x.device).long().clamp(1, size)[:, None]  # (B, 1)
    steps = torch.arange(size, device=x.device)[None]  # (1, L)
    offsets = torch.round(lengths * fraction).long()
    index = torch.where(steps < lengths, torch.minimum((steps - offsets).clamp(min=0), lengths - 1), steps)
    return x.gather(-1, index[:, None].expand_as(x))


class SeriesEnsemble(nn.Module):
    """``members`` :class:`TimeSeriesSwin` classifiers of one config; predicts the mean of their
    class probabilities.

    :meth:`forward` returns the log of that mean, so ``softmax`` of it gives the averaged
    probabilities and ``argmax`` the ensemble's class. On data sets of tens of series one
    model's accuracy moves by several points with its seed; the average of a few moves less
    and is, on the whole, better than its members.

    ``test_shift`` > 0 averages each member over five views of the input too: as given, and
    moved by ``test_shift / 2`` and ``test_shift`` of its length either way (test-time
    augmentation matching training's time shift; see :func:`shift_in_time`).
    """

    def __init__(self, members: int = 3, test_shift: float = 0.0, **config: Any) -> None:
        super().__init__()
        if members < 1:
            raise ValueError(f"an ensemble needs at least one member, got {members}")
        if not 0.0 <= test_shift < 1.0:
            raise ValueError(f"test_shift is a fraction of the length in [0, 1), got {test_shift}")
        self.members = nn.ModuleList(TimeSeriesSwin(**config) for _ in range(members))
        self.test_shift = float(test_shift)
        self.config = {**self.members[0].config, "members": members}
        if test_shift:
            self.config["test_shift"] = self.test_shift
        self.num_classes = self.members[0].num_classes

    @classmethod
    def of(cls, models: Sequence[TimeSeriesSwin], test_shift: float = 0.0) -> SeriesEnsemble:
        """The ensemble of trained ``models`` (same config), their weights copied."""
        ensemble = cls(len(models), test_shift, **models[0].config)
        for member, model in zip(ensemble.members, models, strict=True):
            member.load_state_dict(model.state_dict())
        return ensemble

    def views(self, x: Tensor, lengths: Tensor | None = None) -> list[Tensor]:
        """The inputs each member is averaged over: ``x`` alone, or its five time-shifted views."""
        if not self.test_shift:
            return [x]
        s = self.test_shift
        return [x if f == 0 else shift_in_time(x, f, lengths) for f in (-s, -s / 2, 0.0, s / 2, s)]

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``(B, C, L)`` series -> ``(B, num_classes)`` log of the mean class probabilities."""
        if lengths is None and bool(torch.isnan(x).any()):  # once, not again by every view and member
            lengths = series_lengths(x)
        log_probs = torch.stack([member(view, lengths).log_softmax(-1)
                                 for view in self.views(x, lengths) for member in self.members])
        return log_probs.logsumexp(0) - math.log(len(log_probs))
