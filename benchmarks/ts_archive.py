"""DuST's time-series branch against MiniRocket and 1-NN DTW on the UCR/UEA archive.

Each data set is one that ships inside the ``aeon`` package (no download), on its
official train/test split. DuST trains with ``dust train-ts`` and the recipe in
``configs/ts_small_data.yaml`` (read here, never copied), on the training split
alone: the model it reports is the last epoch's, so the test split chooses nothing.

    pip install -e ".[bench]"
    python benchmarks/ts_archive.py --datasets ArrowHead,ItalyPowerDemand --json out.json

Prints one table row per data set (test accuracy, and fit + predict seconds); the
JSON holds, per data set, ``dust_accuracy``, ``minirocket_accuracy``, ``dtw_accuracy``,
``dust_seconds``, ``minirocket_seconds``, ``dtw_seconds`` and the sizes.

Variable-length series (e.g. PickupGestureWiimoteZ) reach DuST NaN-padded; the recipe's
``variable_length: stretch`` resamples each to the training width (``mask`` would keep
them and mask the padding). 1-NN DTW takes them as they are; MiniRocket, which needs
equal lengths, gets each series linearly resampled to the longest training length.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASETS = ["ArrowHead", "ItalyPowerDemand", "PickupGestureWiimoteZ", "OSULeaf", "ACSF1"]
DEFAULT_CONFIG = ROOT / "configs" / "ts_small_data.yaml"


def load(name: str) -> tuple[list[np.ndarray] | np.ndarray, np.ndarray, list[np.ndarray] | np.ndarray, np.ndarray]:
    """The official train and test splits: series (an array, or a list of ``(C, L_i)`` arrays) and labels 0..K-1."""
    from aeon.datasets import load_classification

    x_train, y_train = load_classification(name, split="train")
    x_test, y_test = load_classification(name, split="test")
    classes = np.unique(y_train)
    return x_train, np.searchsorted(classes, y_train), x_test, np.searchsorted(classes, y_test)


def equal_length(series: list[np.ndarray] | np.ndarray) -> bool:
    return isinstance(series, np.ndarray) and series.ndim == 3


def resample_to(series: list[np.ndarray] | np.ndarray, length: int) -> np.ndarray:
    """Each ``(C, L_i)`` series linearly resampled to ``length`` steps: ``(N, C, length)``."""
    out = []
    for s in series:
        s = np.asarray(s, dtype=np.float64)
        old = np.linspace(0.0, 1.0, s.shape[1])
        new = np.linspace(0.0, 1.0, length)
        out.append(np.stack([np.interp(new, old, channel) for channel in s]))
    return np.stack(out)


def run_dust(x_train, y_train, x_test, config: Path, workdir: Path, overrides: list[str],
             threads: int | None) -> np.ndarray:
    """Train with ``dust train-ts --config CONFIG`` on the training split; predicted test labels."""
    if threads:  # again for every fit: the peers' thread-pool limits reset torch's on their way out
        torch.set_num_threads(threads)
    from dust.checkpoint import load_checkpoint
    from dust.cli import main as dust_main
    from dust.data.datasets import SeriesTransform, pad_series

    train = np.asarray(x_train, np.float32) if equal_length(x_train) else pad_series(x_train)
    test = np.asarray(x_test, np.float32) if equal_length(x_test) else pad_series(x_test)
    np.save(workdir / "x_train.npy", train)
    np.save(workdir / "y_train.npy", y_train.astype(np.int64))
    # No validation split to choose a model on: the run keeps its last epoch. The training
    # split stands in where `dust train-ts` wants validation files (its figures are ignored).
    argv = ["train-ts", "--config", str(config),
            "--path_kine_train", str(workdir / "x_train.npy"), "--path_label_train", str(workdir / "y_train.npy"),
            "--path_kine_val", str(workdir / "x_train.npy"), "--path_label_val", str(workdir / "y_train.npy"),
            "--num_classes", str(int(y_train.max()) + 1), "--num_frames", str(train.shape[2]),
            "--num_channels", str(train.shape[1]), "--outpath", str(workdir / "model"),
            "--logpath", str(workdir / "logs"), "--no_progress", *overrides]
    with contextlib.redirect_stdout(io.StringIO()):
        code = dust_main(argv)
    if code:
        raise RuntimeError(f"dust {' '.join(argv)} failed with exit code {code}")
    ckpt = load_checkpoint(workdir / "model" / "final_1d.pth", expect="ts")
    model = ckpt.build()
    transform = SeriesTransform(**ckpt.meta["series_transform"])
    if test.shape[2] < train.shape[2]:  # the model's inputs are padded to the training width
        test = pad_series(list(test), length=train.shape[2])
    rows = torch.stack([transform(s) for s in test])
    with torch.inference_mode():
        logits = torch.cat([model(rows[i:i + 256]) for i in range(0, len(rows), 256)])
    return logits.argmax(1).numpy()


def run_minirocket(x_train, y_train, x_test, seed: int) -> np.ndarray:
    from aeon.classification.convolution_based import MiniRocketClassifier

    if not (equal_length(x_train) and equal_length(x_test)):
        length = max(np.asarray(s).shape[-1] for s in x_train)
        x_train, x_test = resample_to(x_train, length), resample_to(x_test, length)
    clf = MiniRocketClassifier(random_state=seed)
    clf.fit(x_train, y_train)
    return np.asarray(clf.predict(x_test))


def run_dtw(x_train, y_train, x_test) -> np.ndarray:
    from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier

    clf = KNeighborsTimeSeriesClassifier(distance="dtw", n_neighbors=1)
    clf.fit(x_train, y_train)
    return np.asarray(clf.predict(x_test))


def timed(fn, *args) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def benchmark(name: str, config: Path, overrides: list[str], seed: int, skip_dtw: bool,
              threads: int | None = None) -> dict:
    x_train, y_train, x_test, y_test = load(name)
    lengths = [np.asarray(s).shape[-1] for s in x_train]
    row = {"dataset": name, "train_size": len(y_train), "test_size": len(y_test),
           "channels": int(np.asarray(x_train[0]).shape[0]), "length": max(lengths),
           "variable_length": not equal_length(x_train), "classes": int(y_train.max()) + 1}
    with tempfile.TemporaryDirectory(prefix=f"dust-{name}-") as tmp:
        pred, seconds = timed(run_dust, x_train, y_train, x_test, Path(config), Path(tmp), overrides,
                              threads)
    row.update(dust_accuracy=float(np.mean(pred == y_test)), dust_seconds=round(seconds, 1))
    pred, seconds = timed(run_minirocket, x_train, y_train, x_test, seed)
    row.update(minirocket_accuracy=float(np.mean(pred.astype(np.int64) == y_test)), minirocket_seconds=round(seconds, 1))
    if skip_dtw:
        row.update(dtw_accuracy=None, dtw_seconds=None)
    else:
        pred, seconds = timed(run_dtw, x_train, y_train, x_test)
        row.update(dtw_accuracy=float(np.mean(pred.astype(np.int64) == y_test)), dtw_seconds=round(seconds, 1))
    return row


def table(rows: list[dict]) -> str:
    def acc(v):
        return "—" if v is None else f"{v:.3f}"

    def sec(v):
        return "—" if v is None else f"{v:.1f}" if v < 10 else f"{v:.0f}"

    lines = ["| data set | train / test | DuST acc | MiniRocket acc | 1-NN DTW acc | gap to MiniRocket "
             "| DuST s | MiniRocket s | DTW s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        gap = r["dust_accuracy"] - r["minirocket_accuracy"]
        lines.append(f"| {r['dataset']} | {r['train_size']} / {r['test_size']} | {acc(r['dust_accuracy'])} "
                     f"| {acc(r['minirocket_accuracy'])} | {acc(r['dtw_accuracy'])} | {gap:+.3f} "
                     f"| {sec(r['dust_seconds'])} | {sec(r['minirocket_seconds'])} | {sec(r['dtw_seconds'])} |")
    if len(rows) > 1:
        mean = lambda key: float(np.mean([r[key] for r in rows]))  # noqa: E731
        dtw = [r["dtw_accuracy"] for r in rows]
        lines.append(f"| mean | | {mean('dust_accuracy'):.3f} | {mean('minirocket_accuracy'):.3f} "
                     f"| {acc(None if None in dtw else float(np.mean(dtw)))} "
                     f"| {mean('dust_accuracy') - mean('minirocket_accuracy'):+.3f} | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DEFAULT_DATASETS),
                        help="comma-separated archive names shipped with aeon (default: %(default)s)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="DuST's recipe (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="MiniRocket's random state (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads for DuST; 0: torch's default, every core. Give 1 when other "
                             "work shares the CPU (default: %(default)s)")
    parser.add_argument("--skip_dtw", action="store_true", help="leave 1-NN DTW out (it is slow on long series)")
    parser.add_argument("dust_flags", nargs=argparse.REMAINDER,
                        help="after --: extra `dust train-ts` flags overriding the recipe (e.g. -- --num_epochs 2)")
    args = parser.parse_args(argv)
    threads = args.threads or torch.get_num_threads()  # set again before every fit (see run_dust)
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # as `dust train-ts` does: subnormal floats stall CPU arithmetic
    warnings.filterwarnings("ignore", message=r"The value of the smallest subnormal")  # numpy notices the flush
    overrides = [f for f in args.dust_flags if f != "--"]
    rows = []
    for name in [n.strip() for n in args.datasets.split(",") if n.strip()]:
        row = benchmark(name, args.config, overrides, args.seed, args.skip_dtw, threads)
        print(f"{name}: DuST {row['dust_accuracy']:.3f} ({row['dust_seconds']:.0f} s), "
              f"MiniRocket {row['minirocket_accuracy']:.3f}, 1-NN DTW "
              f"{'—' if row['dtw_accuracy'] is None else format(row['dtw_accuracy'], '.3f')}", file=sys.stderr,
              flush=True)
        rows.append(row)
        if args.json is not None:  # kept current, so an interrupted run leaves what it measured
            args.json.write_text(json.dumps({r["dataset"]: r for r in rows}, indent=2) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
