"""Reading weight files and loading state dicts with a full report of what did not match."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "LoadReport",
    "WeightsError",
    "count_parameters",
    "load_weights",
    "read_state_dict",
    "to_tensors",
    "unwrap_state_dict",
]

log = logging.getLogger("dust")

REBUILT_BUFFERS = ("relative_position_index", "attn_mask")
"""Buffers every model rebuilds from its hyperparameters: never taken from a checkpoint."""


class WeightsError(RuntimeError):
    """Weights that cannot be read, or do not fit the model they are loaded into."""


@dataclass
class LoadReport:
    """What a :func:`load_weights` call did not load one-to-one."""

    missing: list[str] = field(default_factory=list)
    """Model entries the checkpoint did not provide (they keep their current values)."""
    unexpected: list[str] = field(default_factory=list)
    """Checkpoint entries the model has no place for."""
    dropped: list[str] = field(default_factory=list)
    """Checkpoint entries left out on purpose (e.g. a head for other classes)."""

    def __str__(self) -> str:
        parts = [f"{len(v)} {k}: {', '.join(v[:6])}{' …' if len(v) > 6 else ''}"
                 for k, v in (("missing", self.missing), ("unexpected", self.unexpected), ("dropped", self.dropped))
                 if v]
        return "; ".join(parts) if parts else "all weights loaded"


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def to_tensors(state: Mapping[str, Any]) -> dict[str, Tensor]:
    """A state dict of tensors from one of tensors or numpy arrays."""
    return {k: v if isinstance(v, Tensor) else torch.from_numpy(np.asarray(v)) for k, v in state.items()}


def unwrap_state_dict(obj: Any) -> dict[str, Any]:
    """The state dict inside a checkpoint: unwraps ``state_dict`` / ``model`` nesting and ``module.`` prefixes."""
    while isinstance(obj, Mapping) and not any(isinstance(v, (Tensor, np.ndarray)) for v in obj.values()):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj:
                obj = obj[key]
                break
        else:
            raise WeightsError(f"no state dict found (top-level keys: {', '.join(map(str, list(obj)[:8]))})")
    if not isinstance(obj, Mapping):
        raise WeightsError(f"expected a state dict, found {type(obj).__name__}")
    state = {k: v for k, v in obj.items() if isinstance(v, (Tensor, np.ndarray))}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a ``.pth``/``.pt``/``.ckpt`` (``torch.load(weights_only=True)``) or ``.npz`` weight file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                raw: Any = {k: npz[k] for k in npz.files}
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch and numpy raise many types for truncated or foreign files
        problem = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise WeightsError(f"{path}: cannot read weights ({problem})") from None
    try:
        return to_tensors(unwrap_state_dict(raw))
    except WeightsError as err:
        raise WeightsError(f"{path}: {err}") from None


def _is_rebuilt(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in REBUILT_BUFFERS


def load_weights(
    model: nn.Module,
    state: Mapping[str, Tensor],
    *,
    source: str,
    strict: bool = True,
    allow_missing: Iterable[str] = (),
    dropped: Iterable[str] = (),
) -> LoadReport:
    """Load ``state`` into ``model``, checking every shape and reporting every mismatch.

    Buffers the model rebuilds itself (relative position indices, shift masks) are
    ignored on both sides. Missing keys whose names start with a prefix in
    ``allow_missing`` are allowed; any other missing or unexpected key raises
    :class:`WeightsError` when ``strict``, else it is reported and logged. Any
    shape mismatch always raises.

    Args:
        source: what the weights are (a file name, say), for messages.
        dropped: keys the caller removed on purpose, listed in the report.
    """
    own = {k: v for k, v in model.state_dict().items() if not _is_rebuilt(k)}
    state = {k: v for k, v in state.items() if not _is_rebuilt(k)}
    shapes = [f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if shapes:
        more = f" (and {len(shapes) - 5} more)" if len(shapes) > 5 else ""
        raise WeightsError(f"{source}: {len(shapes)} tensors do not fit the model: {'; '.join(shapes[:5])}{more}")
    prefixes = tuple(allow_missing)
    report = LoadReport(
        missing=[k for k in own if k not in state and not (prefixes and k.startswith(prefixes))],
        unexpected=[k for k in state if k not in own],
        dropped=sorted(dropped),
    )
    if strict and (report.missing or report.unexpected):
        raise WeightsError(f"{source}: weights do not match the model: {report}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    if report.missing or report.unexpected:
        log.warning("%s: %s", source, report)
    elif report.dropped:
        log.info("%s: %s", source, report)
    return report
