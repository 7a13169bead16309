"""Datasets over array files: uint8 video scaled and normalised per clip, series standardised per channel.

Nothing here turns a whole array into float: each item is converted when it is read,
so memory-mapped ``.npy`` video stays on disk until a batch needs it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import InputError
from .arrays import release_row

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ArrayRows",
    "Compose",
    "SeriesAugment",
    "SeriesTransform",
    "VideoTransform",
    "as_float32",
    "check_finite",
    "check_labels",
    "check_rows",
    "inverse_frequency_weights",
    "pad_series",
    "series_length",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class VideoTransform:
    """One clip ``(C, T, H, W)`` to the model's input: uint8 scaled to [0, 1] and normalised; float taken as given.

    ``size`` (T, H, W), when set, resamples clips of another size (nearest frame in time,
    bilinear in space). Calling the transform does it all; a data loader can instead
    :meth:`read` clips, which stay uint8 unless they must be resampled, and the training
    step :meth:`normalize` the batch on its device: a quarter of the bytes through the
    loader and onto the GPU, the same values.
    """

    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    size: Sequence[int] | None = None

    def __call__(self, clip: np.ndarray) -> Tensor:
        return self.normalize(self.read(clip))

    def read(self, clip: np.ndarray) -> Tensor:
        """The clip as a tensor of its own: uint8 as stored, or, when it must be resampled, normalised float."""
        x = torch.from_numpy(np.array(clip))  # a writable copy of one clip
        if self.size is None or tuple(x.shape[1:]) == tuple(self.size):
            return x
        t, h, w = self.size
        frames = torch.linspace(0, x.shape[1] - 1, t).round().long()
        return F.interpolate(self.normalize(x)[:, frames], size=(h, w), mode="bilinear", align_corners=False)

    def normalize(self, x: Tensor) -> Tensor:
        """uint8 clips ``(..., C, T, H, W)`` scaled and normalised to float32 (on their device); float ones as given."""
        if x.dtype != torch.uint8:
            return x.float()
        x = x.float().div_(255)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)
        return x.sub_(mean).div_(std)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, to store in a checkpoint."""
        out = asdict(self)
        return {k: list(v) if v is not None else None for k, v in out.items()}


def series_length(x: np.ndarray | Tensor) -> int:
    """Valid length of one ``(C, L)`` series: trailing steps where every channel is NaN are padding."""
    present = ~(np.isnan(x) if isinstance(x, np.ndarray) else torch.isnan(x).numpy()).all(axis=0)
    return int(np.flatnonzero(present)[-1]) + 1 if present.any() else 0


def pad_series(series: Sequence[np.ndarray], length: int | None = None) -> np.ndarray:
    """Series of unequal length, each ``(C, L_i)``, as one NaN-padded float32 ``(N, C, max L_i)`` array.

    ``length`` pads to at least that many steps. This is the form variable-length data take in
    DuST: the model treats the trailing NaN steps as padding.
    """
    series = [np.asarray(s, dtype=np.float32) for s in series]
    if not series:
        raise ValueError("no series to pad")
    if any(s.ndim != 2 or s.shape[0] != series[0].shape[0] for s in series):
        raise ValueError("every series must be (channels, length) with the same channels")
    width = max([s.shape[1] for s in series] + [length or 0])
    out = np.full((len(series), series[0].shape[0], width), np.nan, dtype=np.float32)
    for row, s in zip(out, series):
        row[:, :s.shape[1]] = s
    return out


@dataclass
class SeriesTransform:
    """One series ``(C, L)`` to float32, standardised per channel; ``length`` resamples linearly.

    Series are taken to come at the time scale of the training arrays, ``source_length``
    steps wide, and are resampled by ``length / source_length``. NaN-padded (variable-length)
    series stay NaN-padded: only their valid part is resampled, then padded back to
    ``length`` with NaN (a series too long for ``length`` is squeezed into it), so how much
    padding an input carries changes nothing. With ``stretch`` every valid part is resampled
    to the full ``length`` instead.
    """

    mean: Sequence[float] = field(default_factory=list)
    std: Sequence[float] = field(default_factory=list)
    length: int | None = None
    stretch: bool = False
    """Resample every series' valid part to the full ``length``: variable-length series become
    equal-length ones, as for gestures whose speed varies."""
    source_length: int | None = None
    """Width of the training arrays (None: each input's own width)."""

    @classmethod
    def fit(cls, series: np.ndarray, length: int | None = None, stretch: bool = False) -> SeriesTransform:
        """Per-channel mean and standard deviation of ``(N, C, L)`` training series (NaNs ignored)."""
        flat = np.moveaxis(np.asarray(series, dtype=np.float64), 1, 0).reshape(series.shape[1], -1)
        mean = np.nanmean(flat, axis=1)
        std = np.nanstd(flat, axis=1)
        std = np.where(std > 1e-8, std, 1.0)
        return cls(mean=mean.tolist(), std=std.tolist(), length=length, stretch=stretch,
                   source_length=int(series.shape[-1]))

    def __call__(self, series: np.ndarray) -> Tensor:
        x = torch.from_numpy(np.array(series, dtype=np.float32))
        if self.mean:
            x = (x - torch.tensor(self.mean, dtype=x.dtype)[:, None]) / torch.tensor(self.std, dtype=x.dtype)[:, None]
        if self.length is None:
            return x
        valid = series_length(x) if torch.isnan(x).any() else x.shape[-1]
        if self.stretch:
            size = self.length
        else:
            size = min(self.length, max(1, round(valid * self.length / (self.source_length or x.shape[-1]))))
        body = x[:, :max(valid, 1)]  # resample the series, never across its padding
        if size != body.shape[-1]:
            body = F.interpolate(body[None], size=size, mode="linear", align_corners=True)[0]
        return F.pad(body, (0, self.length - size), value=float("nan")) if size < self.length else body

    def to_dict(self) -> dict[str, Any]:
        """Plain values, to store in a checkpoint."""
        return {"mean": list(self.mean), "std": list(self.std), "length": self.length, "stretch": self.stretch,
                "source_length": self.source_length}


def as_float32(row: np.ndarray) -> Tensor:
    """A row as a float32 tensor, unchanged otherwise."""
    return torch.from_numpy(np.array(row, dtype=np.float32))


@dataclass
class SeriesAugment:
    """Random training-time changes to a standardised series ``(C, L)``.

    Each channel is scaled by ``N(1, scale)``; with ``crop``, a random stretch of at least
    ``(1 - crop) * L`` steps is cut out and stretched back to ``L`` (window slicing); the
    series is shifted in time by up to ``shift * L`` steps (edges repeated) and given
    Gaussian ``jitter``. NaN padding at the end (a variable-length series) is left as it
    is and everything acts on the valid part only. Draws from torch's generator, so
    ``--seed`` makes it repeatable.
    """

    jitter: float = 0.03
    scale: float = 0.1
    shift: float = 0.1
    crop: float = 0.0

    def __post_init__(self) -> None:
        for name in ("jitter", "scale"):
            if not 0 <= getattr(self, name) < math.inf:
                raise InputError(f"--{name} must be a finite non-negative number, got {getattr(self, name)}")
        for name in ("shift", "crop"):
            if not 0 <= getattr(self, name) <= 1:
                raise InputError(f"--{name} is a fraction of the length, in [0, 1]; got {getattr(self, name)}")

    def __call__(self, x: Tensor) -> Tensor:
        channels, full = x.shape
        length = series_length(x) if torch.isnan(x).any() else full
        if length == 0:
            return x
        padding, x = x[:, length:], x[:, :length]
        if self.scale:
            x = x * (1 + self.scale * torch.randn(channels, 1))
        if self.crop and length > 2:
            keep = max(2, round(length * (1 - self.crop * float(torch.rand(())))))
            start = int(torch.randint(0, length - keep + 1, ()))
            x = F.interpolate(x[None, :, start:start + keep], size=length, mode="linear", align_corners=True)[0]
        max_shift = int(self.shift * length)
        if max_shift:
            offset = int(torch.randint(-max_shift, max_shift + 1, ()))
            index = (torch.arange(length) - offset).clamp(0, length - 1)
            x = x[:, index]
        if self.jitter:
            x = x + self.jitter * torch.randn_like(x)
        return torch.cat([x, padding], dim=-1) if length < full else x


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
        for array in self.arrays:  # rows are copied by now: memory-mapped pages need not stay resident
            release_row(array, i)
        return items if self.labels is None else (*items, self.labels[i])


def check_finite(name: str, array: np.ndarray, what: str, *, nan_allowed: bool = False) -> None:
    """Refuse infinities (and NaN unless ``nan_allowed``) in a floating-point array of rows, naming ``name``
    and the first bad row; read a block of rows at a time, so a memory-mapped file is never held whole."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    rows = max(1, (64 << 20) // max(1, array[0].nbytes))  # about 64 MiB read at once, whatever the file's size
    for start in range(0, len(array), rows):
        block = np.asarray(array[start:start + rows]).reshape(min(rows, len(array) - start), -1)
        bad = np.isinf(block) if nan_allowed else ~np.isfinite(block)
        if block.dtype.itemsize > 4:  # float64 beyond float32's range would turn infinite as the model reads it
            bad |= np.abs(block) > np.finfo(np.float32).max
        if bad.any():
            row = int(np.argmax(bad.any(axis=1)))
            values = block[row]
            kind = ("NaN" if np.isnan(values).any() and not nan_allowed else
                    "infinite" if np.isinf(values).any() else "float32-overflowing (over 3.4e38)")
            raise InputError(f"{name}: {what} row {start + row} holds {kind} values")


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


def check_labels(path: str, labels: np.ndarray, num_classes: int | None) -> np.ndarray:
    """Labels as int64 ``(N,)`` in ``[0, num_classes)`` (``None``: any non-negative), or :class:`InputError`
    naming ``path``."""
    labels = np.asarray(labels)
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)
            or labels.dtype == np.bool_):
        raise InputError(f"{path}: labels must be class indices (numbers), got {labels.dtype} values")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise InputError(f"{path}: labels must be a 1-D array, got shape {labels.shape}")
    if labels.size and not np.all(np.equal(np.mod(labels, 1), 0)):
        raise InputError(f"{path}: labels must be whole numbers")
    if labels.size and labels.dtype.kind == "f" and np.abs(labels).max() >= 2**62:  # beyond what int64 holds
        raise InputError(f"{path}: labels must be class indices, found {np.abs(labels).max():g}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or (num_classes is not None and labels.max() >= num_classes)):
        bound = "be non-negative class indices" if num_classes is None else f"lie in [0, {num_classes})"
        raise InputError(f"{path}: labels must {bound}, found {labels.min()}..{labels.max()}")
    return labels
