"""``dust bench``: the benchmark suite (see :mod:`dust.benchmarking`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..atomic import ensure_writable_folder
from ..cli import add_flag, register
from ..errors import InputError


def _bench_args(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "quick", action="store_true", help="smaller sizes and fewer repeats (a few minutes on 2 cores)")
    add_flag(parser, "json", default=None, metavar="OUT.json", help="also write the figures to this file")
    compile_group = parser.add_mutually_exclusive_group()
    compile_group.add_argument("--compile", dest="compile", action="store_true", default=None,
                               help="also time torch.compile'd training steps and keep the faster "
                                    "(default: none in --quick; the time-series and nano video rows in the full suite)")
    compile_group.add_argument("--no-compile", "--no_compile", dest="compile", action="store_false",
                               help="eager only")
    add_flag(parser, "threads", type=int, default=None,
             help="CPU threads for every row, the yardstick included (default: torch's, one per core)")
    add_flag(parser, "workdir", default=None, help="folder for temporary data files (default: the system's)")


def _check_paths(args: argparse.Namespace) -> None:
    """``--workdir`` must be a folder; ``--json`` must be creatable (its folder exists or can be made)."""
    if args.workdir is not None and not Path(args.workdir).is_dir():
        raise InputError(f"{args.workdir}: --workdir is not an existing folder")
    if args.json is not None:
        target = Path(args.json)
        if target.is_dir():
            raise InputError(f"{target}: --json is a folder, not a file")
        ensure_writable_folder(target.parent, create=False)


@register("bench", "Benchmark suite: throughput, FLOP rate vs. the matmul peak and the models' own ceiling, "
                  "loader rate, stage-1 memory")(_bench_args)
def bench(args: argparse.Namespace) -> dict:
    from ..benchmarking import SuiteConfig, format_table, run_suite, write_json

    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    _check_paths(args)  # before minutes of measuring, not after
    config = SuiteConfig.quick_config(args.compile) if args.quick else SuiteConfig.full_config(args.compile)
    result = run_suite(config, progress=lambda message: print(f"... {message}", file=sys.stderr, flush=True),
                       workdir=args.workdir)
    print(format_table(result))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    return result
