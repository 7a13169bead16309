"""Datasets over array files: uint8 video scaled and normalised per clip, series standardised per channel.

Nothing here turns a whole array into float: each item is converted when it is read,
so memory-mapped ``.npy`` video stays on disk until a batch needs it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import InputError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ArrayRows",
    "Compose",
    "SeriesAugment",
    "SeriesTransform",
    "VideoTransform",
    "as_float32",
    "check_labels",
    "inverse_frequency_weights",
    "check_rows",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class VideoTransform:
    """One clip ``(C, T, H, W)`` to float32: uint8 scaled to [0, 1] and normalised; float taken as given.

    ``size`` (T, H, W), when set, resamples clips of another size (nearest frame in time,
    bilinear in space).
    """

    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    size: Sequence[int] | None = None

    def __call__(self, clip: np.ndarray) -> Tensor:
        x = torch.from_numpy(np.array(clip))  # a writable copy of one clip
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
            mean = torch.tensor(self.mean, dtype=x.dtype).view(-1, 1, 1, 1)
            std = torch.tensor(self.std, dtype=x.dtype).view(-1, 1, 1, 1)
            x = x.sub_(mean).div_(std)
        else:
            x = x.float()
        if self.size is not None and tuple(x.shape[1:]) != tuple(self.size):
            t, h, w = self.size
            frames = torch.linspace(0, x.shape[1] - 1, t).round().long()
            x = F.interpolate(x[:, frames], size=(h, w), mode="bilinear", align_corners=False)
        return x

    def to_dict(self) -> dict[str, Any]:
        """Plain values, to store in a checkpoint."""
        out = asdict(self)
        return {k: list(v) if v is not None else None for k, v in out.items()}


@dataclass
class SeriesTransform:
    """One series ``(C, L)`` to float32, standardised per channel; ``length`` resamples linearly."""

    mean: Sequence[float] = field(default_factory=list)
    std: Sequence[float] = field(default_factory=list)
    length: int | None = None

    @classmethod
    def fit(cls, series: np.ndarray, length: int | None = None) -> "SeriesTransform":
        """Per-channel mean and standard deviation of ``(N, C, L)`` training series (NaNs ignored)."""
        flat = np.moveaxis(np.asarray(series, dtype=np.float64), 1, 0).reshape(series.shape[1], -1)
        mean = np.nanmean(flat, axis=1)
        std = np.nanstd(flat, axis=1)
        std = np.where(std > 1e-8, std, 1.0)
        return cls(mean=mean.tolist(), std=std.tolist(), length=length)

    def __call__(self, series: np.ndarray) -> Tensor:
        x = torch.from_numpy(np.array(series, dtype=np.float32))
        if self.mean:
            x = (x - torch.tensor(self.mean, dtype=x.dtype)[:, None]) / torch.tensor(self.std, dtype=x.dtype)[:, None]
        if self.length is not None and x.shape[-1] != self.length:
            x = F.interpolate(x[None], size=self.length, mode="linear", align_corners=True)[0]
        return x

    def to_dict(self) -> dict[str, Any]:
        """Plain values, to store in a checkpoint."""
        return {"mean": list(self.mean), "std": list(self.std), "length": self.length}


def as_float32(row: np.ndarray) -> Tensor:
    """A row as a float32 tensor, unchanged otherwise."""
    return torch.from_numpy(np.array(row, dtype=np.float32))


@dataclass
class SeriesAugment:
    """Random training-time changes to a standardised series ``(C, L)``.

    Each channel is scaled by ``N(1, scale)``, shifted in time by up to ``shift * L`` steps
    (edges repeated) and given Gaussian ``jitter``. Draws from torch's generator, so
    ``--seed`` makes it repeatable.
    """

    jitter: float = 0.03
    scale: float = 0.1
    shift: float = 0.1

    def __call__(self, x: Tensor) -> Tensor:
        channels, length = x.shape
        if self.scale:
            x = x * (1 + self.scale * torch.randn(channels, 1))
        max_shift = int(self.shift * length)
        if max_shift:
            offset = int(torch.randint(-max_shift, max_shift + 1, ()))
            index = (torch.arange(length) - offset).clamp(0, length - 1)
            x = x[:, index]
        if self.jitter:
            x = x + self.jitter * torch.randn_like(x)
        return x


class Compose:
    """Apply callables in order (picklable, for data-loading processes)."""

    def __init__(self, *steps: Callable) -> None:
        self.steps = steps

    def __call__(self, x):
        for step in self.steps:
            x = step(x)
        return x


class ArrayRows(Dataset):
    """Row i of several equally long arrays, each through its transform, plus label i if given."""

    def __init__(
        self,
        arrays: Sequence[np.ndarray],
        transforms: Sequence[Callable[[np.ndarray], Tensor]],
        labels: np.ndarray | None = None,
    ) -> None:
        if len(arrays) != len(transforms):
            raise ValueError("one transform per array")
        self.arrays = list(arrays)
        self.transforms = list(transforms)
        self.labels = None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.arrays[0])

    def __getitem__(self, i: int) -> tuple[Tensor, ...]:
        items = tuple(t(a[i]) for a, t in zip(self.arrays, self.transforms))
        return items if self.labels is None else (*items, self.labels[i])


def check_rows(named: dict[str, np.ndarray]) -> int:
    """The common row count of ``{path: array}``, or :class:`InputError` naming the files that disagree."""
    counts = {name: len(a) for name, a in named.items()}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{name} has {n}" for name, n in counts.items())
        raise InputError(f"row counts differ: {listed}")
    return next(iter(counts.values()))


def inverse_frequency_weights(labels: np.ndarray, num_classes: int) -> list[float]:
    """Per-class loss weights ``N / (K * n_c)`` (1 for classes absent from ``labels``)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 1.0)
    return weights.tolist()


def check_labels(path: str, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Labels as int64 ``(N,)`` in ``[0, num_classes)``, or :class:`InputError` naming ``path``."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise InputError(f"{path}: labels must be a 1-D array, got shape {labels.shape}")
    if labels.size and not np.all(np.equal(np.mod(labels, 1), 0)):
        raise InputError(f"{path}: labels must be whole numbers")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(f"{path}: labels must lie in [0, {num_classes}), found {labels.min()}..{labels.max()}")
    return labels
