"""The ``dust`` subcommands; importing this package registers them with :mod:`dust.cli`."""

from . import models  # noqa: F401
