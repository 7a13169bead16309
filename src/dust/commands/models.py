"""``dust presets`` and ``dust convert-reference``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from ..checkpoint import save_checkpoint
from ..cli import add_flag, register
from ..errors import InputError
from ..models import count_parameters, from_reference, list_presets, read_state_dict
from ..models.convert import ReferenceKind


def _presets_args(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "format", choices=["table", "yaml"], default="table", help="output format")
    add_flag(parser, "num_classes", type=int, default=4, help="classes, for the parameter counts")


@register("presets", "List the model presets of both branches")(_presets_args)
def presets(args: argparse.Namespace) -> None:
    from ..models import TimeSeriesSwin, VideoSwin

    if args.num_classes < 1:
        raise InputError(f"--num_classes must be at least 1, got {args.num_classes}")
    table = list_presets()
    if args.format == "yaml":
        print(yaml.safe_dump(table, sort_keys=False), end="")
        return
    print(f"{'branch':7} {'preset':7} {'embed':>5} {'depths':14} {'heads':16} {'window':10} {'feature':>7} {'params':>12}")
    for branch, entries in table.items():
        for name, hp in entries.items():
            if branch == "video":
                model = VideoSwin(num_classes=args.num_classes, **hp)
                feature = model.feature_dim
            else:
                model = TimeSeriesSwin(seq_len=51, in_chans=3, num_classes=args.num_classes, **hp)
                feature = model.num_features
            print(f"{branch:7} {name:7} {hp['embed_dim']:>5} {hp['depths']!s:14} {hp['num_heads']!s:16} "
                  f"{hp['window_size']!s:10} {feature:>7} {count_parameters(model):>12,}")
    print(f"(parameter counts for {args.num_classes} classes; time-series models for 3 channels of length 51)")


def _convert_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=["ts", "ts_fusion", "video"], help="which reference model")
    parser.add_argument("config_json", metavar="CONFIG.json", help="the reference constructor's arguments")
    parser.add_argument("weights", metavar="IN", help="reference state dict: .pth (read with weights_only=True) or .npz")
    parser.add_argument("out", metavar="OUT", help="DuST checkpoint to write (.pth)")


@register("convert-reference", "Convert a checkpoint of the published DuST code to a DuST checkpoint")(_convert_args)
def convert_reference(args: argparse.Namespace) -> None:
    if Path(args.out).resolve() == Path(args.weights).resolve():
        raise InputError(f"{args.out}: is the input file; write the DuST checkpoint elsewhere")
    try:
        config = json.loads(Path(args.config_json).read_text())
    except OSError as err:
        raise InputError(f"{args.config_json}: cannot read ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{args.config_json}: not valid JSON ({err.msg}, line {err.lineno})") from None
    except UnicodeDecodeError:
        raise InputError(f"{args.config_json}: not a text file (expected JSON)") from None
    if not isinstance(config, dict):
        raise InputError(f"{args.config_json}: expected a JSON object of constructor arguments")
    kind: ReferenceKind = args.kind
    try:
        model = from_reference(kind, config, read_state_dict(args.weights))
    except InputError:
        raise
    except (TypeError, ValueError) as err:  # a missing or unknown key; a value of the wrong kind
        raise InputError(f"{args.config_json}: not a {kind} reference config ({err})") from None
    save_checkpoint(args.out, model, source="reference", reference_config=config)
    print(f"wrote {args.out}: {kind} model, {count_parameters(model):,} parameters")
