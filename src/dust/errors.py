"""Errors the command line turns into one clear line and exit code 2."""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """Bad input from the user: a file, a flag or a config value. The message names it."""
