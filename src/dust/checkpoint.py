"""DuST checkpoints: a model's weights together with everything needed to rebuild it."""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from . import __version__
from .atomic import atomic_output
from .errors import InputError
from .models import DuST, SeriesEnsemble, TimeSeriesSwin, VideoSwin
from .models.weights import WeightsError, load_weights, to_tensors

__all__ = ["Checkpoint", "ModelKind", "build_model", "check_pair", "load_checkpoint", "save_checkpoint"]

ModelKind = Literal["video", "ts", "fusion"]
FORMAT = "dust-checkpoint"
FORMAT_VERSION = 1
_CLASSES = {"video": VideoSwin, "ts": TimeSeriesSwin, "fusion": DuST}


@dataclass
class Checkpoint:
    """A saved model: its kind, constructor config, preset name, weights and free-form metadata."""

    kind: ModelKind
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    preset: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    dust_version: str = __version__

    @cached_property
    def fingerprint(self) -> str:
        """A digest of the weights (names, shapes, dtypes, values): which model produced what.

        Stage 3 records it beside the features it writes, stage 4 keeps it, and a predictor
        refuses a video model other than the one whose features the fused model learned from.
        """
        digest = hashlib.blake2b(digest_size=16)
        for name in sorted(self.state_dict):
            tensor = self.state_dict[name].detach().cpu().contiguous()
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        return digest.hexdigest()

    def build(self) -> nn.Module:
        """The model with its weights loaded, in eval mode."""
        source = self.meta.get("path", f"{self.kind} checkpoint")
        try:
            model = build_model(self.kind, self.config)
        except (TypeError, ValueError, RuntimeError) as err:  # a config no model of this dust takes
            raise WeightsError(f"{source}: its model config does not build ({str(err).splitlines()[0]})") from None
        load_weights(model, self.state_dict, source=source)
        return model.eval()


def build_model(kind: ModelKind, config: dict[str, Any]) -> nn.Module:
    """A freshly initialised model of ``kind`` from its constructor config."""
    if kind not in _CLASSES:
        raise WeightsError(f"unknown model kind {kind!r}; expected one of {', '.join(_CLASSES)}")
    config = dict(config)
    if kind == "fusion":
        return DuST(config.pop("video_feature_dim"), **config)
    if kind == "ts" and "members" in config:
        return SeriesEnsemble(**config)
    return _CLASSES[kind](**config)


def _kind_of(model: nn.Module) -> ModelKind:
    if isinstance(model, SeriesEnsemble):
        return "ts"
    for kind, cls in _CLASSES.items():
        if isinstance(model, cls):
            return kind  # type: ignore[return-value]
    raise TypeError(f"not a DuST model: {type(model).__name__}")


def save_checkpoint(path: str | Path, model: nn.Module, *, preset: str | None = None, **meta: Any) -> Path:
    """Write ``model`` with its config to ``path`` atomically (temporary file, then rename)."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dust_version": __version__,
        "kind": _kind_of(model),
        "config": dict(model.config),
        "preset": preset,
        "meta": meta,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    with atomic_output(path) as tmp, open(tmp, "wb") as stream:  # open() raises OSError, which names the path
        torch.save(payload, stream)
    return path


def _load_problem(path: Path, err: Exception) -> str:
    """Why ``torch.load`` refused ``path``, in a few words."""
    with open(path, "rb") as f:
        head = f.read(2)
    if not zipfile.is_zipfile(path):
        if head == b"PK":
            return "a damaged or truncated file"
        if head[:1] != b"\x80":  # neither torch.save's zip nor a pickle
            return "not a PyTorch checkpoint file"
    if "Weights only load failed" in str(err):
        return "it holds objects other than tensors and plain values; they are not loaded, as that could run code"
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def load_checkpoint(path: str | Path, *, expect: ModelKind | None = None) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (safely: ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such checkpoint")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise WeightsError(f"{path}: cannot read checkpoint ({_load_problem(path, err)})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise WeightsError(f"{path}: not a DuST checkpoint (a plain state dict? convert it with `dust convert-reference`)")
    if raw.get("format_version") != FORMAT_VERSION:
        raise WeightsError(
            f"{path}: checkpoint format {raw.get('format_version')} written by dust {raw.get('dust_version')}; "
            f"this dust {__version__} reads format {FORMAT_VERSION}"
        )
    missing = [key for key in ("kind", "config", "state_dict") if key not in raw]
    if missing:
        raise WeightsError(f"{path}: a damaged DuST checkpoint (no {', '.join(missing)})")
    if not isinstance(raw["config"], dict) or not isinstance(raw["state_dict"], dict):
        raise WeightsError(f"{path}: a damaged DuST checkpoint (its config or weights are not mappings)")
    if expect is not None and raw["kind"] != expect:
        raise WeightsError(f"{path}: holds a {raw['kind']} model, expected a {expect} model")
    return Checkpoint(
        kind=raw["kind"],
        config=raw["config"],
        state_dict=to_tensors(raw["state_dict"]),
        preset=raw.get("preset"),
        meta={**raw.get("meta", {}), "path": str(path)},
        dust_version=raw.get("dust_version", "?"),
    )


def check_pair(video: Checkpoint, fusion: Checkpoint) -> None:
    """Refuse a stage-1 video model and a stage-4 fused model that do not belong together: the fused model
    learned from another video model's features, or the two name their classes differently
    (:class:`~dust.errors.InputError`: the user paired the wrong files)."""
    where = fusion.meta.get("path", "the fused model")
    learned_from = fusion.meta.get("video_fingerprint")
    if learned_from is not None and learned_from != video.fingerprint:
        raise InputError(f"{where}: learned from the features of another video model than "
                           f"{video.meta.get('path', 'this one')} (pair the stage-1 and stage-4 models of one run)")
    names = video.meta.get("class_names"), fusion.meta.get("class_names")
    if None not in names and list(names[0]) != list(names[1]):
        raise InputError(f"{where}: classes {', '.join(names[1])}, but {video.meta.get('path', 'the video model')} "
                           f"has {', '.join(names[0])}")
