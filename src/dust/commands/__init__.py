"""The ``dust`` subcommands; importing this package registers them with :mod:`dust.cli`."""

from . import bench, models, predict, prepare, run, stages  # noqa: F401
