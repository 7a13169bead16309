"""The ``dust`` subcommands; importing this package registers them with :mod:`dust.cli`."""

from . import models, predict, run, stages  # noqa: F401
