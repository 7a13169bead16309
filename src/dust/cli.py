"""The ``dust`` command line: a thin layer over the package's functions.

Every subcommand registers its flags with :func:`add_flag` (so ``--batch_size`` and
``--batch-size`` both work) and may read defaults from ``--config FILE.yaml``;
explicit flags override the file.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .allocator import configure_malloc
from .errors import InputError
from .models.weights import WeightsError

__all__ = ["add_flag", "main", "register"]

PARSERS: dict[str, argparse.ArgumentParser] = {}
"""Each subcommand's parser, filled by :func:`build_parser`."""

Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int | None]]
_COMMANDS: list[Command] = []


def register(name: str, help: str) -> Callable:
    """Decorator pairing a subcommand's ``add_arguments(parser)`` with its ``run(args)``."""

    def wrap(add_arguments: Callable[[argparse.ArgumentParser], None]) -> Callable:
        def with_run(run: Callable[[argparse.Namespace], int | None]) -> Callable:
            _COMMANDS.append((name, help, add_arguments, run))
            return run

        return with_run

    return wrap


def add_flag(parser: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    """Add ``--name`` under both spellings, ``--snake_case`` and ``--kebab-case``."""
    dest = name.replace("-", "_")
    spellings = dict.fromkeys([f"--{dest}", f"--{dest.replace('_', '-')}"])
    parser.add_argument(*spellings, dest=dest, **kwargs)


def _load_config(path: str) -> dict[str, Any]:
    """A YAML config file as a mapping; :class:`InputError` naming the file otherwise."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as err:
        raise InputError(f"{path}: cannot read config ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file (a config is UTF-8 YAML)") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a config must be a mapping of settings")
    return data


def config_section(path: str, command: str) -> dict[str, Any]:
    """The settings of ``command``'s own section of a YAML config (``train_video:`` ...), or {}."""
    data = _load_config(path)
    own = data.get(command) or data.get(command.replace("-", "_")) or {}
    if not isinstance(own, dict):
        raise InputError(f"{path}: section {command!r} must be a mapping")
    return {k.replace("-", "_"): v for k, v in own.items()}


def read_config(path: str, command: str) -> dict[str, Any]:
    """Flat settings for ``command`` from a YAML file: top-level values, then its own section."""
    sections = {name.replace("-", "_") for name, *_ in _COMMANDS}
    flat = {k.replace("-", "_"): v for k, v in _load_config(path).items() if k.replace("-", "_") not in sections}
    flat.update(config_section(path, command))
    return flat


def apply_config(parser: argparse.ArgumentParser, path: str, command: str, strict_keys: bool) -> None:
    known = {a.dest for a in parser._actions}
    settings = read_config(path, command)
    unknown = sorted(set(settings) - known)
    if unknown and strict_keys:
        raise InputError(f"{path}: unknown setting(s) for `dust {command}`: {', '.join(unknown)}")
    actions = {a.dest: a for a in parser._actions}
    parser.set_defaults(**{k: _config_value(path, actions[k], v) for k, v in settings.items() if k in known})


def _config_value(path: str, action: argparse.Action, value: Any) -> Any:
    """A config file's value checked and converted as the flag's command-line value would be."""
    where = f"{path}: {action.dest}"
    if value is None:
        return None
    if isinstance(value, (list, dict)):
        raise InputError(f"{where} must be a single value, got {value!r}")
    if action.nargs == 0:  # an on/off switch
        if not isinstance(value, bool):
            raise InputError(f"{where} is a switch: true or false, got {value!r}")
        return value
    if action.type is not None:
        if isinstance(value, bool) or (action.type is int and isinstance(value, float)):
            raise InputError(f"{where}: expected {action.type.__name__}, got {value!r}")
        try:
            value = action.type(str(value))
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            raise InputError(f"{where}: expected {getattr(action.type, '__name__', 'a valid value')}, "
                             f"got {value!r}") from None
    elif not isinstance(value, str):  # a text flag (a path, a device list, ...) given a YAML number
        if isinstance(value, bool):
            raise InputError(f"{where}: expected text, got {value!r}")
        value = str(value)
    if action.choices is not None and value not in action.choices:
        raise InputError(f"{where}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, its usage errors one line like every other input error (``dust: error: ...``, exit 2)."""

    def error(self, message: str):  # type: ignore[override]
        raise InputError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    """The ``dust`` argument parser with every registered subcommand."""
    from . import commands  # noqa: F401  (registers the subcommands)

    parser = _Parser(
        prog="dust", description="DuST: Dual Swin Transformer for video + time series.",
        epilog="environment: DUST_MALLOC=fast (default: glibc keeps freed buffers for reuse, faster steps), "
               "lean (large buffers go back to the system, less memory) or default (glibc's own settings)")
    parser.add_argument("--version", action="version", version=f"dust {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help, add_arguments, run in _COMMANDS:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--config", metavar="FILE.yaml", help="read defaults from a YAML file; flags override it")
        add_arguments(p)
        p.set_defaults(_run=run, _parser=p)
        PARSERS[name] = p
    return parser


class Terminated(BaseException):
    """SIGTERM arrived (a cluster's time limit, ``kill``): unwinds like Ctrl-C, so no temporary file stays."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dust`` with ``argv`` (default: the process arguments); returns the exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main_thread else None
    try:
        return _main(argv)
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        configure_malloc()
        args = _parse(parser, argv)
        if args.config:
            apply_config(args._parser, args.config, args.command, strict_keys=args.command != "run")
            args = _parse(parser, argv)
        code = args._run(args)
        _end_distributed()
    except (InputError, WeightsError) as err:
        print(f"dust: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, permissions, ...: the environment, not a bug
        where = f"{err.filename}: " if err.filename else ""
        print(f"dust: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dust: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("dust: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    return code if isinstance(code, int) else 0


def _end_distributed() -> None:
    """Destroy the process group a multi-process stage left behind, after a run that succeeded.

    A process that exits with gloo's worker threads still running can abort at interpreter
    shutdown (SIGABRT, "terminate called without an active exception"). After a failure it is
    left alone: destroying it while another rank waits in a collective can hang.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; only ``dust run`` takes flags it does not know (it hands them to its stages)."""
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "run":
        args._parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    return args


def print_json(obj: Any) -> None:
    """Print ``obj`` as indented JSON."""
    print(json.dumps(obj, indent=2))
