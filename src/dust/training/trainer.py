"""Lightning trainers built from the user's device flags, their configuration errors as one line."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException

from ..errors import InputError

__all__ = ["build_trainer"]

_FLAGS = ("accelerator", "devices", "num_nodes", "strategy", "precision")
"""The trainer arguments that come straight from the command line, in the order the error names them."""


def _spelled(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def build_trainer(**kwargs: Any) -> L.Trainer:
    """``lightning.Trainer(**kwargs)``; a value Lightning refuses (``--precision foo``, ``--devices 0``,
    ``--accelerator gpu`` without a GPU) raises :class:`InputError` naming the flags and Lightning's reason."""
    try:
        return L.Trainer(**kwargs)
    except (ValueError, TypeError, MisconfigurationException) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        given = " ".join(f"--{name} {_spelled(kwargs[name])}" for name in _FLAGS if name in kwargs)
        raise InputError(f"{given}: {reason}") from None
