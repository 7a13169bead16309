"""``dust run``: every stage in order, each one's outputs feeding the next, and a summary at the end."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..atomic import ensure_writable_folder, write_json
from ..cli import PARSERS, add_flag, apply_config, config_section, read_config, register
from ..errors import InputError
from ..training.stages import FINAL_NAMES, StageResult, check_outpath, check_settings
from .stages import train_settings

STAGES = ["gen-data", "train-video", "train-ts", "extract-features", "train-fusion"]
SUMMARY_KEYS = {"train-video": "video", "train-ts": "timeseries", "train-fusion": "fusion"}
TRAINED_KINDS = {"train-video": "video", "train-ts": "ts", "train-fusion": "fusion"}
PATH_FLAGS = {"outdir", "outpath", "logpath", "checkpoint", "ts_checkpoint"}


def run_args(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "workdir", default=".",
             help="folder holding data/ logs/ saved_models/ video_features/ and run_summary.json (default: .)")
    add_flag(parser, "stages", default=",".join(STAGES),
             help="comma-separated stages to run, in order (default: all)")
    add_flag(parser, "prepared", default=None,
             help="train on the output of `dust prepare` in this folder instead of generating toy data, "
                  "at its clip size and series length unless flags or the config say otherwise")
    parser.epilog = ("Any other flag is passed to every stage that has it, e.g. --seed 1 or --num_epochs 2. "
                     "A --config file may hold top-level settings and one section per stage (train_video: ...). "
                     "--num_frames (frames per clip) goes to gen-data and train-video; the series length "
                     "of train-ts and train-fusion (their --num_frames) is set in their own sections.")


SERIES_STAGES = ("train-ts", "train-fusion")
"""Stages whose ``--num_frames`` is the series length (the seed's name), not frames per clip."""


DATA_FLAGS = {f"path_{kind}_{split}": (split, kind) for split in ("train", "val") for kind in ("video", "kine", "label")}
"""A stage's data flag: (split, kind), as ``run.json`` records the files."""


SIZE_FLAGS = ("num_frames", "height", "width", "num_channels")
"""The sizes a stage trains at; on ``dust prepare`` output they default to the arrays' own."""


def _stage_args(name: str, config: str | None, extra: list[str], workdir: Path,
                prepared: bool = False) -> tuple[argparse.Namespace, set[str]]:
    """The stage's settings: its defaults, then the config file, then the flags; relative paths under workdir.

    ``num_frames`` given to the whole run (a flag or a top-level setting) is frames per clip:
    the series stages take their length from their own config section only. On ``prepared``
    data the sizes default to the data's own (the seed's 77x224x224 clips and 3x51 series otherwise).
    """
    parser = PARSERS[name]
    if prepared:
        parser.set_defaults(**{dest: None for dest in SIZE_FLAGS if parser.get_default(dest) is not None})
    builtin_length = parser.get_default("num_frames")
    default_data = {dest: str(workdir / parser.get_default(dest)) for dest in DATA_FLAGS if parser.get_default(dest)}
    if config:
        apply_config(parser, config, name, strict_keys=False)
    args, unknown = parser.parse_known_args(extra)
    if name in SERIES_STAGES:
        in_section = config is not None and "num_frames" in config_section(config, name)
        args.num_frames = parser.get_default("num_frames") if in_section else builtin_length  # the checked value
    for dest, value in vars(args).items():
        if isinstance(value, str) and (dest.startswith("path_") or dest in PATH_FLAGS) and not Path(value).is_absolute():
            setattr(args, dest, str(workdir / value))
    args._default_data = default_data
    return args, {u.split("=", 1)[0] for u in unknown if u.startswith("--")}


def _link(name: str, args: argparse.Namespace, done: dict[str, Any], ran: dict[str, argparse.Namespace]) -> None:
    """Point a stage at the files the stages before it wrote in this run."""
    files = done.get("gen-data")
    if files:
        for key, path in files.items():  # video_train -> path_video_train ...
            if hasattr(args, f"path_{key}"):
                setattr(args, f"path_{key}", str(path))
    if name == "extract-features" and "train-video" in ran:
        video = ran["train-video"]
        args.checkpoint = str(Path(video.outpath) / "final_3d.pth")
        args.path_video_train, args.path_video_val = video.path_video_train, video.path_video_val
    if name == "train-fusion":
        if "train-ts" in ran:
            ts = ran["train-ts"]
            args.ts_checkpoint = str(Path(ts.outpath) / "final_1d.pth")
            for dest in ("path_kine_train", "path_kine_val", "path_label_train", "path_label_val"):
                setattr(args, dest, getattr(ts, dest))
        if "extract-features" in ran:
            feats = ran["extract-features"]
            args.path_feature_train, args.path_feature_val = feats.path_feature_train, feats.path_feature_val


def _earlier_run(workdir: Path) -> dict[str, dict[str, Any]]:
    """What an earlier ``dust run`` in ``workdir`` wrote: ``{"record": run.json, "summary": run_summary.json}``."""
    earlier = {}
    for key, path in (("record", workdir / "run.json"), ("summary", workdir / "run_summary.json")):
        if not path.is_file():
            continue
        try:
            content = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise InputError(f"{path}: not a JSON file; remove it or choose another --workdir") from None
        if not isinstance(content, dict) or not all(isinstance(v, dict) for k, v in content.items() if k != "prepared"):
            raise InputError(f"{path}: not what `dust run` writes (a mapping of mappings); remove it or choose "
                             f"another --workdir")
        earlier[key] = content
    return earlier


def _use_earlier_data(args: argparse.Namespace, data: Mapping[str, Any]) -> None:
    """Point data flags left at their defaults at the files the earlier run in the workdir used."""
    for dest, (split, kind) in DATA_FLAGS.items():
        value, recorded = getattr(args, dest, None), data.get(split, {}).get(kind)
        if value is None or not isinstance(recorded, str):
            continue
        if value == args._default_data.get(dest):
            setattr(args, dest, recorded)


def _use_prepared(args: argparse.Namespace, prepared: Path) -> None:
    """Point a stage's data flags at the arrays of a ``dust prepare`` folder."""
    for dest, (split, kind) in DATA_FLAGS.items():
        if hasattr(args, dest):
            setattr(args, dest, str(prepared / f"{kind}_{split}.npy"))


def _data_record(stages: Mapping[str, Mapping[str, Any]], prepared: Path | None,
                 earlier: Mapping[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """Which files each split used, for ``dust evaluate``: those of the stages run now, over the earlier record's."""
    data: dict[str, dict[str, str]] = {}
    for split in ("train", "val"):
        files = {}
        for stage in ("train-video", "train-ts", "train-fusion"):  # the last stage naming a kind of file wins
            for kind in ("video", "kine", "label"):
                path = stages.get(stage, {}).get(f"path_{kind}_{split}")
                if isinstance(path, str):
                    files[kind] = path
        data[split] = {**earlier.get(split, {}), **{k: str(Path(v).resolve()) for k, v in files.items()}}
    if prepared is not None and (prepared / "video_test.npy").is_file():
        data["test"] = {k: str((prepared / f"{k}_test.npy").resolve()) for k in ("video", "kine", "label")}
    elif "test" in earlier:
        data["test"] = earlier["test"]
    return data


def _check_config(path: str) -> None:
    """Every top-level setting of a run config must mean something to some stage, every stage
    section's setting to its stage."""
    known = {a.dest for p in PARSERS.values() for a in p._actions}
    unknown = sorted(set(read_config(path, "run")) - known)
    if unknown:
        raise InputError(f"{path}: unknown setting(s): {', '.join(unknown)}")
    for stage in STAGES:
        unknown = sorted(set(config_section(path, stage)) - {a.dest for a in PARSERS[stage]._actions})
        if unknown:
            raise InputError(f"{path}: unknown setting(s) for {stage}: {', '.join(unknown)}")


def print_summary(summary: dict[str, dict[str, float]]) -> None:
    """One screen: per trained stage, its best epoch, validation accuracy, macro-F1 and time."""
    print()
    print(f"{'stage':12} {'best epoch':>10} {'val acc':>8} {'macro-F1':>9} {'seconds':>8}")
    for key, row in summary.items():
        print(f"{key:12} {row['best_epoch']:>10} {row['val_accuracy']:>8.3f} {row['val_macro_f1']:>9.3f} "
              f"{row['seconds']:>8.1f}")


@register("run", "Run the whole pipeline: gen-data, train-video, train-ts, extract-features, train-fusion")(run_args)
def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if not stages:
        raise InputError(f"--stages: no stage given; choose from {', '.join(STAGES)}")
    if bad:
        raise InputError(f"--stages: unknown stage(s) {', '.join(bad)}; choose from {', '.join(STAGES)}")
    if args.config:
        _check_config(args.config)
    workdir = Path(args.workdir)
    ensure_writable_folder(workdir, create=False)  # the stages make it as they write: a run failing first leaves nothing
    # Without gen-data the run goes on from an earlier one in the workdir, on the same data: its
    # record keeps the stages not run again, and data flags left at their defaults read its files.
    earlier = {} if "gen-data" in stages else _earlier_run(workdir)
    earlier_record, earlier_summary = earlier.get("record", {}), earlier.get("summary", {})
    prepared_from = args.prepared or earlier_record.get("prepared")
    prepared = Path(prepared_from) if isinstance(prepared_from, str) else None
    if prepared is not None:
        if not (prepared / "video_train.npy").is_file():
            raise InputError(f"{prepared}: not a `dust prepare` output (video_train.npy is missing)")
        if not (prepared / "video_val.npy").is_file():
            raise InputError(f"{prepared}: no validation split (video_val.npy), which the training stages need; "
                             f"prepare it again with rows split=val or more clips per class")
        stages = [s for s in stages if s != "gen-data"]
    parsed = {name: _stage_args(name, args.config, args.extra, workdir, prepared is not None) for name in stages}
    unknown = set.intersection(*(u for _, u in parsed.values())) if parsed else set()
    if unknown:
        raise InputError(f"no stage takes {', '.join(sorted(unknown))}")
    for name, (stage_args, _) in parsed.items():
        if str(getattr(stage_args, "devices", "1")) != "1" or getattr(stage_args, "num_nodes", 1) != 1:
            raise InputError(f"`dust run` is one process; run `dust {name}` on its own for several devices "
                             f"(see README: Scaling out)")
    ts_args = parsed.get("train-ts", (None,))[0]
    if "train-fusion" in parsed and ts_args is not None and getattr(ts_args, "ensemble", 1) != 1:
        raise InputError("--ensemble: stage 4 starts from one time-series model; run `dust train-ts --ensemble` "
                         "on its own for an ensemble")

    for name, kind in TRAINED_KINDS.items():  # before any stage runs (gen-data would rewrite the data of a
        if name in parsed:                      # finished run in the workdir)
            shared = train_settings(parsed[name][0])
            check_settings(shared)
            check_outpath(shared, FINAL_NAMES[kind])
    start = time.perf_counter()
    done: dict[str, Any] = {}
    ran: dict[str, argparse.Namespace] = {}
    summary: dict[str, dict[str, float]] = {}
    for name in stages:
        stage_args = parsed[name][0]
        if prepared is not None:
            _use_prepared(stage_args, prepared)
        elif earlier_record:
            _use_earlier_data(stage_args, earlier_record.get("data", {}))
        _link(name, stage_args, done, ran)
        print(f"\n== {name} ==", flush=True)
        done[name] = stage_args._run(stage_args)
        ran[name] = stage_args
        if isinstance(done[name], StageResult):
            summary[SUMMARY_KEYS[name]] = done[name].summary()
    summary = {**earlier_summary, **summary}
    settings = {name: {k: v for k, v in vars(a).items() if not k.startswith("_") and k != "extra"}
                for name, a in ran.items()}
    print_summary(summary)
    print(f"total {time.perf_counter() - start:.1f} s; summary in {workdir / 'run_summary.json'}")
    write_json(workdir / "run_summary.json", summary)
    write_json(workdir / "run.json", {
        "stages": {**earlier_record.get("stages", {}), **settings},
        "data": _data_record(settings, prepared, earlier_record.get("data", {})),
        "prepared": None if prepared is None else str(prepared.resolve()),
    })
    return summary
