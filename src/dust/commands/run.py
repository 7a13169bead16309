"""``dust run``: every stage in order, each one's outputs feeding the next, and a summary at the end."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..atomic import ensure_writable_folder, write_json
from ..cli import PARSERS, add_flag, apply_config, config_section, read_config, register
from ..errors import InputError
from ..training.stages import StageResult

STAGES = ["gen-data", "train-video", "train-ts", "extract-features", "train-fusion"]
SUMMARY_KEYS = {"train-video": "video", "train-ts": "timeseries", "train-fusion": "fusion"}
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
    if config:
        apply_config(parser, config, name, strict_keys=False)
    args, unknown = parser.parse_known_args(extra)
    if name in SERIES_STAGES:
        in_section = config is not None and "num_frames" in config_section(config, name)
        args.num_frames = parser.get_default("num_frames") if in_section else builtin_length  # the checked value
    for dest, value in vars(args).items():
        if isinstance(value, str) and (dest.startswith("path_") or dest in PATH_FLAGS) and not Path(value).is_absolute():
            setattr(args, dest, str(workdir / value))
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


PREPARED_FLAGS = {"path_video_train": "video_train", "path_video_val": "video_val", "path_kine_train": "kine_train",
                  "path_kine_val": "kine_val", "path_label_train": "label_train", "path_label_val": "label_val"}


def _use_prepared(args: argparse.Namespace, prepared: Path) -> None:
    """Point a stage's data flags at the arrays of a ``dust prepare`` folder."""
    for dest, stem in PREPARED_FLAGS.items():
        if hasattr(args, dest):
            setattr(args, dest, str(prepared / f"{stem}.npy"))


def _data_record(ran: dict[str, argparse.Namespace], prepared: Path | None) -> dict[str, dict[str, str]]:
    """Which files each split used, for ``dust evaluate``."""
    data: dict[str, dict[str, str]] = {}
    for split in ("train", "val"):
        files = {}
        if "train-video" in ran:
            files["video"] = getattr(ran["train-video"], f"path_video_{split}")
        for stage in ("train-ts", "train-fusion"):
            if stage in ran:
                files["kine"] = getattr(ran[stage], f"path_kine_{split}")
                files["label"] = getattr(ran[stage], f"path_label_{split}")
        data[split] = {k: str(Path(v).resolve()) for k, v in files.items()}
    if prepared is not None and (prepared / "video_test.npy").is_file():
        data["test"] = {k: str((prepared / f"{k}_test.npy").resolve()) for k in ("video", "kine", "label")}
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
    prepared = Path(args.prepared) if args.prepared else None
    if prepared is not None:
        if not (prepared / "video_train.npy").is_file():
            raise InputError(f"{prepared}: not a `dust prepare` output (video_train.npy is missing)")
        if not (prepared / "video_val.npy").is_file():
            raise InputError(f"{prepared}: no validation split (video_val.npy), which the training stages need; "
                             f"prepare it again with rows split=val or more clips per class")
        stages = [s for s in stages if s != "gen-data"]
    workdir = Path(args.workdir)
    ensure_writable_folder(workdir, create=False)  # the stages make it as they write: a run failing first leaves nothing
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

    start = time.perf_counter()
    done: dict[str, Any] = {}
    ran: dict[str, argparse.Namespace] = {}
    summary: dict[str, dict[str, float]] = {}
    for name in stages:
        stage_args = parsed[name][0]
        if prepared is not None:
            _use_prepared(stage_args, prepared)
        _link(name, stage_args, done, ran)
        print(f"\n== {name} ==", flush=True)
        done[name] = stage_args._run(stage_args)
        ran[name] = stage_args
        if isinstance(done[name], StageResult):
            summary[SUMMARY_KEYS[name]] = done[name].summary()
    print_summary(summary)
    print(f"total {time.perf_counter() - start:.1f} s; summary in {workdir / 'run_summary.json'}")
    write_json(workdir / "run_summary.json", summary)
    write_json(workdir / "run.json", {
        "stages": {name: {k: v for k, v in vars(a).items() if not k.startswith("_") and k != "extra"}
                   for name, a in ran.items()},
        "data": _data_record(ran, prepared),
    })
    return summary
