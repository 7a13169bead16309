"""Named model presets, read from the package's ``presets.yaml``."""

from __future__ import annotations

import copy
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

import yaml

from ..errors import InputError

__all__ = ["Branch", "get_preset", "list_presets"]

Branch = Literal["video", "ts"]


@lru_cache(maxsize=1)
def _load() -> dict[str, dict[str, dict[str, Any]]]:
    text = resources.files("dust").joinpath("presets.yaml").read_text()
    return yaml.safe_load(text)


def list_presets() -> dict[str, dict[str, dict[str, Any]]]:
    """All presets, ``{branch: {name: hyperparameters}}`` (a copy)."""
    return copy.deepcopy(_load())


def get_preset(branch: Branch, name: str) -> dict[str, Any]:
    """The hyperparameters of preset ``name`` of ``branch`` (``"video"`` or ``"ts"``), a copy.

    An unknown branch or name raises :class:`~dust.errors.InputError` (a ``ValueError``).
    """
    presets = _load()
    if branch not in presets:
        raise InputError(f"unknown model branch {branch!r}; expected one of {sorted(presets)}")
    if name not in presets[branch]:
        raise InputError(f"unknown {branch} preset {name!r}; available: {', '.join(presets[branch])}")
    return copy.deepcopy(presets[branch][name])
