"""``dust prepare``: video files and sensor CSVs listed in a manifest to the stages' array files."""

from __future__ import annotations

import argparse
import sys

from ..cli import add_flag, register

EPILOG = """\
The manifest is a CSV with one row per clip and the columns video, kinematics (paths relative to the
manifest), and optionally label, split (train/val/test), id, start and end (seconds into the video).
Labelled rows without a split are divided into train and val by class (--val_fraction, --seed);
unlabelled rows without one go to test. A split's label file holds -1 for unlabelled rows and is not
written when none has a label. A bad row (missing or undecodable file, too short a video, a CSV with
non-numeric, NaN or too few rows, an unknown label, other channels than the other rows) stops the run
with nothing written, or with --skip_bad is left out and listed in OUT/skipped.csv.
Writes OUT/{video,kine,label}_{train,val,test}.npy, classes.json, index.csv and prepare.json."""


def _split_names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(","))


def _names(value: str | list | tuple | None) -> tuple[str, ...] | None:
    """A flag's names: parsed already, or a list from a --config file."""
    if value is None or isinstance(value, tuple):
        return value
    return _split_names(value) if isinstance(value, str) else tuple(str(v) for v in value)


def prepare_args(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("manifest", metavar="MANIFEST.csv", help="one row per clip: video, kinematics, label, ...")
    add_flag(parser, "out", required=True, metavar="DIR", help="output folder (must be new or empty)")
    add_flag(parser, "num_frames", type=int, default=77, help="frames per clip, sampled uniformly (default: %(default)s)")
    add_flag(parser, "height", type=int, default=224, help="frame height (default: %(default)s)")
    add_flag(parser, "width", type=int, default=224, help="frame width (default: %(default)s)")
    add_flag(parser, "resize", choices=["crop", "stretch"], default="crop",
             help="crop: keep the aspect ratio and cut the centre; stretch: plain resize (default: %(default)s)")
    add_flag(parser, "kine_len", type=int, default=51, help="time steps per series (default: %(default)s)")
    add_flag(parser, "channels", type=_split_names, default=None, metavar="A,B,C",
             help="kinematics columns to keep, in order (default: every numeric column but time)")
    add_flag(parser, "classes", type=_split_names, default=None, metavar="A,B,C",
             help="class names in index order (default: the sorted distinct labels; numeric labels are indices)")
    add_flag(parser, "val_fraction", type=float, default=0.2,
             help="share of each class's rows without a split that goes to val (default: %(default)s)")
    add_flag(parser, "seed", type=int, default=0, help="seed of the train/val split (default: %(default)s)")
    add_flag(parser, "short_video", choices=["error", "repeat"], default="error",
             help="a clip with fewer frames than --num_frames: a bad row, or repeat frames (default: %(default)s)")
    add_flag(parser, "time_scale", type=float, default=1.0,
             help="seconds per unit of the CSVs' time column, e.g. 0.001 for ms (default: %(default)s)")
    add_flag(parser, "workers", type=int, default=1, help="processes decoding clips (default: %(default)s)")
    add_flag(parser, "skip_bad", action="store_true", help="skip bad rows (listed in OUT/skipped.csv) instead of stopping")
    add_flag(parser, "overwrite", action="store_true", help="replace OUT if an earlier `dust prepare` wrote it")
    add_flag(parser, "no_progress", action="store_true", help="no progress bars")


@register("prepare", "Turn a manifest of videos and sensor CSVs into the array files the stages read")(prepare_args)
def prepare_command(args: argparse.Namespace) -> int:
    from ..data.ingest import BadRowsError, PrepareSettings, prepare

    settings = PrepareSettings(
        num_frames=args.num_frames, height=args.height, width=args.width, resize=args.resize,
        kine_len=args.kine_len, channels=_names(args.channels), classes=_names(args.classes),
        val_fraction=args.val_fraction,
        seed=args.seed, short_video=args.short_video, time_scale=args.time_scale,
    )
    try:
        result = prepare(args.manifest, args.out, settings, workers=args.workers, skip_bad=args.skip_bad,
                         overwrite=args.overwrite, progress=not args.no_progress)
    except BadRowsError as err:
        if len(err.problems) == 1:
            print(f"dust: error: {err}", file=sys.stderr)
        else:
            for problem in err.problems:
                print(f"dust: error: {problem}", file=sys.stderr)
            print(f"dust: error: {len(err.problems)} bad manifest rows; nothing written (--skip_bad skips them)",
                  file=sys.stderr)
        return 2
    splits = ", ".join(f"{split} {n}" for split, n in result.rows.items() if n)
    classes = f"{len(result.classes)} classes ({', '.join(result.classes)})" if result.classes else "no labels"
    print(f"wrote {result.out}: {splits} clips; {classes}; "
          f"{len(result.channels)} channels ({', '.join(result.channels)})")
    if result.skipped:
        print(f"skipped {len(result.skipped)} bad rows, listed in {result.out / 'skipped.csv'}")
    return 0
