"""``dust predict`` and ``dust evaluate``."""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

from ..atomic import ensure_writable_folder, write_text
from ..cli import add_flag, register
from ..errors import InputError


def predict_args(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "run", default=None, help="folder of a finished `dust run` (its stage-1 and stage-4 checkpoints)")
    add_flag(parser, "video_checkpoint", default=None, help="stage-1 video checkpoint (instead of --run)")
    add_flag(parser, "fusion_checkpoint", default=None, help="stage-4 fusion checkpoint (instead of --run)")
    add_flag(parser, "video", default=None, help="one video file")
    add_flag(parser, "kinematics", default=None, help="its kinematics CSV")
    add_flag(parser, "manifest", default=None,
             help="CSV with columns video, kinematics and optional id, start, end (paths relative to it)")
    add_flag(parser, "out", default="-", help="output file (default: standard output)")
    add_flag(parser, "format", choices=["csv", "json"], default="csv", help="output format (default: %(default)s)")
    add_flag(parser, "device", default=None, help="cpu, cuda, ... (default: cuda when available)")


def _manifest_rows(path: Path) -> list[dict]:
    """The clips of a prediction manifest, read as `dust prepare` reads one (labels and splits ignored)."""
    from ..data.ingest import read_manifest

    rows, problems, _ = read_manifest(path, need_labels=False)
    if problems:
        raise InputError(f"{path}: {problems[0]}")
    return [{"id": row.id, "video": row.video_path, "kinematics": row.kine_path, "start": row.start, "end": row.end}
            for row in rows]


def _check_output_file(out: str) -> None:
    """``--out`` can be written: a file name, not a folder, in a folder that exists or can be made."""
    target = Path(out)
    if not out.strip() or target.name in ("", ".", ".."):
        raise InputError(f"--out {out!r}: not a file name")
    if target.is_dir():
        raise InputError(f"{target}: --out is a folder, not a file")
    ensure_writable_folder(target.parent, create=False)


def _format(rows: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["id", "prediction"])
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


@register("predict", "Predict the class of new clips (video file + kinematics CSV) with a trained run")(predict_args)
def predict(args: argparse.Namespace) -> None:
    from ..predict import Predictor

    if args.out != "-":  # before any model is loaded, not after every clip is predicted
        _check_output_file(args.out)
    if args.manifest and (args.video or args.kinematics):
        raise InputError("give --manifest, or --video and --kinematics, not both")
    if args.run:
        predictor = Predictor.from_run(args.run, device=args.device)
    elif args.video_checkpoint and args.fusion_checkpoint:
        predictor = Predictor.from_checkpoints(args.video_checkpoint, args.fusion_checkpoint, device=args.device)
    else:
        raise InputError("give --run RUN_DIR, or both --video_checkpoint and --fusion_checkpoint")
    if args.manifest:
        rows = _manifest_rows(Path(args.manifest))
    elif args.video and args.kinematics:
        rows = [{"id": Path(args.video).stem, "video": Path(args.video), "kinematics": Path(args.kinematics)}]
    else:
        raise InputError("give --video and --kinematics, or --manifest")
    for row in rows:
        for key in ("video", "kinematics"):
            if not Path(row[key]).is_file():
                raise InputError(f"{row[key]}: no such file (clip {row['id']})")
    text = _format(predictor.predict_rows(rows), args.format)
    if args.out == "-":
        print(text, end="")
    else:
        write_text(args.out, text)
        print(f"wrote {len(rows)} prediction(s) to {args.out}")


def evaluate_args(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "run", required=True, help="folder of a finished `dust run`")
    add_flag(parser, "split", choices=["val", "test"], default="val", help="labelled split (default: %(default)s)")
    add_flag(parser, "out", default=None, help="report folder (default: RUN/report_SPLIT)")
    add_flag(parser, "batch_size", type=int, default=16, help="clips per batch (default: %(default)s)")
    add_flag(parser, "no_progress", action="store_true", help="no progress bars")


@register("evaluate", "Metrics of a run's video-only, time-series-only and fused models on a split")(evaluate_args)
def evaluate(args: argparse.Namespace) -> None:
    from ..evaluation.evaluate import comparison_table, evaluate_run

    out = Path(args.out) if args.out else Path(args.run) / f"report_{args.split}"
    if args.batch_size < 1:
        raise InputError(f"--batch_size must be at least 1, got {args.batch_size}")
    ensure_writable_folder(out, create=False)  # before the models run, not after
    reports = evaluate_run(args.run, args.split, out, batch_size=args.batch_size, progress=not args.no_progress)
    for name, report in reports.items():
        print(f"\n{name}\n{report.table()}")
    print(f"\n{comparison_table(reports)}\n\nreport: {out / 'report.json'} and PNGs in {out}")
