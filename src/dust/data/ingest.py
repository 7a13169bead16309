"""``dust prepare``: a manifest of video files and sensor CSVs to the array files the stages read.

The manifest is a CSV with one row per clip (column names in any case):

=============  ==================================================================
``video``      path to the video (.mp4, .avi, .mov, ... anything FFmpeg reads)
``kinematics`` path to a sensor CSV (see :mod:`dust.data.kinematics_io`)
``label``      class name or index; empty or absent for unlabelled clips
``split``      ``train`` / ``val`` / ``test``; empty or absent: decided here
``id``         a name for the clip; default: the video path as written
``start``      seconds into the video where the clip starts (default 0)
``end``        seconds into the video where it ends (default: the video's end)
=============  ==================================================================

Paths are relative to the manifest's folder.  Clips are read in two passes:

1. *check* every row cheaply (files exist, the video opens and decodes, its
   window holds enough frames, the CSV is numeric, finite, long enough and has
   the same channels as the other rows, the label is a known class);
2. *decode* the good rows clip by clip (``workers`` processes) straight into the
   output arrays, so memory stays flat in the number of clips.

Everything is written into a hidden folder beside ``out`` that is renamed into
place at the end: a failure leaves nothing under ``out``.  A bad row stops the run
(:class:`BadRowsError`, one line per row) unless ``skip_bad``, which leaves such
rows out and lists them in ``skipped.csv``.

Splits: rows with a ``split`` keep it; labelled rows without one are split into
train and val, stratified by class (``val_fraction``, ``seed``; every class with at
least two rows lands in both); unlabelled rows without one go to test.  Train and
val rows need a label.  A split's label file holds -1 for its unlabelled rows and
is not written when none of its rows has a label.

Output files in ``out``: ``{video,kine,label}_{train,val,test}.npy`` (video uint8
``(N, 3, T, H, W)``, kinematics float32 ``(N, C, L)``, labels int64 ``(N,)``; a
split's files only if it has rows), ``classes.json``, ``index.csv``,
``prepare.json`` and, with ``skip_bad``, ``skipped.csv``.
"""

from __future__ import annotations

import csv
import io
import math
import multiprocessing
import os
import re
import shutil
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import ExitStack, closing
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from .. import __version__
from ..atomic import ensure_writable_folder, temp_sibling, write_json, write_text
from ..errors import InputError
from .arrays import ArrayWriter, save_array
from .kinematics_io import KinematicsError, load_table, read_kinematics, resample
from .video_io import RESIZE_MODES, ClipInfo, VideoError, probe_clip, read_clip, too_short

__all__ = [
    "SPLITS",
    "BadRowsError",
    "ManifestRow",
    "PrepareResult",
    "PrepareSettings",
    "RowProblem",
    "prepare",
    "read_manifest",
    "read_pair",
    "stratified_split",
]

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ("video", "kinematics", "label", "split", "id", "start", "end")
REQUIRED_COLUMNS = ("video", "kinematics")
SHORT_VIDEO = ("error", "repeat")
INDEX_COLUMNS = ("split", "row", "manifest_row", "id", "video", "kinematics", "label")
SKIPPED_COLUMNS = ("manifest_row", "id", "video", "kinematics", "problem")
_SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                "dev": "val", "test": "test", "testing": "test"}
_INDEX_LABEL = re.compile(r"\d+")
MAX_INDEX_CLASSES = 10_000
"""Beyond this many classes, numeric labels (class indices) are taken for a mistake in the manifest."""

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class PrepareSettings:
    """How clips are sampled and stored (see ``dust prepare --help``)."""

    num_frames: int = 77
    height: int = 224
    width: int = 224
    resize: str = "crop"
    """``crop`` keeps the aspect ratio and cuts the centre; ``stretch`` resizes plainly."""
    kine_len: int = 51
    channels: tuple[str, ...] | None = None
    """Kinematics columns by name, in this order; None: every numeric column but ``time``."""
    classes: tuple[str, ...] | None = None
    """Class names in index order; None: the sorted distinct labels (0 … max for numeric labels)."""
    val_fraction: float = 0.2
    seed: int = 0
    short_video: str = "error"
    """A window with fewer frames than ``num_frames``: ``error`` (a bad row) or ``repeat`` frames."""
    time_scale: float = 1.0
    """Seconds per unit of the CSVs' ``time`` column (0.001 for milliseconds)."""

    def check(self) -> None:
        """Raise :class:`InputError` for a value out of range."""
        for name in ("num_frames", "height", "width", "kine_len"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.resize not in RESIZE_MODES:
            raise InputError(f"--resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")
        if self.short_video not in SHORT_VIDEO:
            raise InputError(f"--short_video must be one of {', '.join(SHORT_VIDEO)}, got {self.short_video!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"--val_fraction must lie in [0, 1), got {self.val_fraction}")
        if not 0 <= self.seed < 2**32:
            raise InputError(f"--seed must be between 0 and {2**32 - 1}, got {self.seed}")
        if not self.time_scale > 0:
            raise InputError(f"--time_scale must be positive, got {self.time_scale}")
        for name in ("channels", "classes"):
            values = getattr(self, name)
            if values is None:
                continue
            if not values or any(not v for v in values):
                raise InputError(f"--{name} must be a comma-separated list of names, got {','.join(values)!r}")
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                raise InputError(f"--{name} repeats {', '.join(repeated)}")


@dataclass(frozen=True)
class ManifestRow:
    """One data row of the manifest, parsed but not yet checked against its files."""

    number: int
    """1-based data row number (the header is not counted)."""
    video: str
    """Paths as written in the manifest ..."""
    kinematics: str
    video_path: Path
    """... and resolved against the manifest's folder."""
    kine_path: Path
    id: str
    label: str | None = None
    split: str | None = None
    start: float | None = None
    end: float | None = None

    @property
    def whole(self) -> bool:
        """Whether the clip is the whole video (no ``start`` or ``end``)."""
        return self.start is None and self.end is None

    @property
    def where(self) -> str:
        """"the video", or "the window 1.5–4 s"."""
        if self.whole:
            return "the video"
        return f"the window {self.start or 0:g}–{'end' if self.end is None else f'{self.end:g}'} s"

    def __str__(self) -> str:
        return f"manifest row {self.number}" + (f" (id {self.id})" if self.id else "")


@dataclass(frozen=True)
class RowProblem:
    """Why a manifest row cannot be used."""

    row: ManifestRow
    problem: str

    def __str__(self) -> str:
        return f"{self.row}: {self.problem}"


class BadRowsError(InputError):
    """Some manifest rows are bad; ``problems`` holds one :class:`RowProblem` each, in manifest order."""

    def __init__(self, problems: list[RowProblem]) -> None:
        self.problems = problems
        if len(problems) == 1:
            message = str(problems[0])
        else:
            message = f"{len(problems)} bad manifest rows, the first: {problems[0]}"
        super().__init__(f"{message} (nothing written; --skip_bad skips bad rows)")


@dataclass
class PrepareResult:
    """What :func:`prepare` wrote."""

    out: Path
    rows: dict[str, int]
    """Rows per split written."""
    classes: list[str]
    channels: list[str]
    skipped: list[RowProblem] = field(default_factory=list)


# --------------------------------------------------------------------------- manifest


def _seconds(name: str, cell: str) -> tuple[float | None, str | None]:
    """A ``start``/``end`` cell: its value (None when empty), or the problem with it."""
    if not cell:
        return None, None
    try:
        value = float(cell)
    except ValueError:
        return None, f"{name} {cell!r} is not a number of seconds"
    if not math.isfinite(value) or value < 0:
        return None, f"{name} {cell!r} must be a finite number of seconds, at least 0"
    return value, None


def read_manifest(path: str | os.PathLike[str], *, need_labels: bool = True
                  ) -> tuple[list[ManifestRow], list[RowProblem], list[str]]:
    """Parse a manifest: its rows, the rows' problems found without opening their files, and ignored columns.

    ``need_labels``: train and val rows without a label are problems (for training; not for prediction).

    Raises :class:`InputError` when the manifest itself is unreadable, lacks a
    required column or has no rows.
    """
    manifest = Path(path)
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path}: no such manifest file") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text CSV file") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read the manifest ({err.strerror})") from None
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header or not any(cell.strip() for cell in header):
        raise InputError(f"{path}: empty manifest (expected a header row with columns {', '.join(MANIFEST_COLUMNS)})")
    names = [cell.strip().lower() for cell in header]
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        raise InputError(f"{path}: manifest has no column(s) {', '.join(missing)} (its columns: {', '.join(header)})")
    repeated = sorted({n for n in names if n in MANIFEST_COLUMNS and names.count(n) > 1})
    if repeated:
        raise InputError(f"{path}: manifest repeats column(s) {', '.join(repeated)}")
    ignored = [cell for cell, name in zip(header, names) if name not in MANIFEST_COLUMNS]
    at = {name: names.index(name) for name in MANIFEST_COLUMNS if name in names}
    base = manifest.parent
    rows: list[ManifestRow] = []
    problems: list[RowProblem] = []
    first_of_id: dict[str, int] = {}
    for cells in reader:
        if not any(cell.strip() for cell in cells):
            continue  # blank line
        number = len(rows) + 1
        get = {name: (cells[i].strip() if i < len(cells) else "") for name, i in at.items()}
        video, kine, label = get["video"], get["kinematics"], get.get("label") or None
        issues = [f"no {name} path" for name, path in (("video", video), ("kinematics", kine)) if not path]
        split = _SPLIT_NAMES.get(get.get("split", "").lower())
        if get.get("split") and split is None:
            issues.append(f"split {get['split']!r} is not one of train, val, test")
        start, start_problem = _seconds("start", get.get("start", ""))
        end, end_problem = _seconds("end", get.get("end", ""))
        issues += [problem for problem in (start_problem, end_problem) if problem]
        if end is not None and end <= (start or 0.0):
            issues.append(f"end {end:g} s is not after start {start or 0:g} s")
        if need_labels and split in ("train", "val") and label is None:
            issues.append(f"no label, but {split} rows need one")
        clip_id = get.get("id") or video
        if get.get("id"):
            if clip_id in first_of_id:
                issues.append(f"id {clip_id!r} repeats manifest row {first_of_id[clip_id]}")
            first_of_id.setdefault(clip_id, number)
        row = ManifestRow(number=number, video=video, kinematics=kine, video_path=base / video,
                          kine_path=base / kine, id=clip_id, label=label, split=split, start=start, end=end)
        rows.append(row)
        if issues:
            problems.append(RowProblem(row, "; ".join(issues)))
    if not rows:
        raise InputError(f"{path}: the manifest has no data rows")
    return rows, problems, ignored


def _class_list(rows: list[ManifestRow], classes: tuple[str, ...] | None) -> tuple[list[str], dict[str, int]]:
    """The class names in index order, and each label's index.

    Labels that are class names map to their position; without ``classes``,
    all-numeric labels are indices themselves (classes "0" … max).
    """
    labels = sorted({row.label for row in rows if row.label is not None})
    if classes is not None:
        names = list(classes)
        index = {name: i for i, name in enumerate(names)}
        for label in labels:
            if label not in index and _INDEX_LABEL.fullmatch(label) and int(label) < len(names):
                index[label] = int(label)
        return names, index
    if labels and all(_INDEX_LABEL.fullmatch(label) for label in labels):
        top = max(int(label) for label in labels)
        if top >= MAX_INDEX_CLASSES:
            raise InputError(f"label {top} would make {top + 1} classes; give --classes (names in index order) "
                             f"if that is meant")
        return [str(i) for i in range(top + 1)], {label: int(label) for label in labels}
    return labels, {label: i for i, label in enumerate(labels)}


def stratified_split(labels: list[int], val_fraction: float, seed: int) -> list[str]:
    """``train`` / ``val`` for each row (labels in row order), stratified by class and reproducible per seed.

    Each class gives ``round(n * val_fraction)`` rows to val, but at least one and
    at most ``n - 1`` when it has two or more rows (so it appears in both splits)
    and ``val_fraction > 0``.
    """
    rng = np.random.default_rng(seed)
    out = ["train"] * len(labels)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    for label in sorted(by_class):
        members = by_class[label]
        n = len(members)
        n_val = math.floor(n * val_fraction + 0.5)
        if val_fraction > 0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        elif n < 2:
            n_val = 0
        for i in rng.permutation(n)[:n_val]:
            out[members[i]] = "val"
    return out


# --------------------------------------------------------------------------- per-row work (worker processes)


@dataclass(frozen=True)
class _Task:
    row: ManifestRow
    settings: PrepareSettings
    channels: tuple[str, ...] | None  # the channels to read; None: every numeric column (check pass)
    duration: float | None = None  # the video's, from the check pass


@dataclass(frozen=True)
class _Checked:
    row: ManifestRow
    problem: str | None = None
    channels: tuple[str, ...] = ()
    info: ClipInfo | None = None
    text_columns: dict[str, str] = field(default_factory=dict)


def _check_row(task: _Task) -> _Checked:
    """Pass 1: everything that can go wrong with a row, short of decoding the whole clip."""
    row, s = task.row, task.settings
    problems: list[str] = []
    info: ClipInfo | None = None
    try:
        info = probe_clip(row.video_path, row.start, row.end)
        if info.frames < s.num_frames and s.short_video == "error":
            raise VideoError(too_short(info.frames, s.num_frames, row.where))
    except VideoError as err:
        problems.append(f"video {row.video}: {err}")
    channels: tuple[str, ...] = ()
    text_columns: dict[str, str] = {}
    try:
        table = load_table(row.kine_path, list(s.channels) if s.channels else None, s.time_scale)
        channels, text_columns = tuple(table.names), table.text_columns
        if info is not None:  # do the rows cover the window (or, timed, the whole video)?
            resample(table.values, table.time, 2, row.start, row.end, info.duration)
    except KinematicsError as err:
        problems.append(f"kinematics {row.kinematics}: {err}")
    return _Checked(row, "; ".join(problems) or None, channels, info, text_columns)


@dataclass(frozen=True)
class _Loaded:
    row: ManifestRow
    problem: str | None = None
    video: np.ndarray | None = None
    kine: np.ndarray | None = None


def read_pair(video: str | os.PathLike[str], kinematics: str | os.PathLike[str], settings: PrepareSettings,
              channels: list[str] | None = None, start: float | None = None, end: float | None = None,
              ) -> tuple[np.ndarray, np.ndarray]:
    """One clip ``(3, T, H, W)`` uint8 and its series ``(C, L)`` float32, exactly as ``dust prepare`` stores them.

    Raises :class:`InputError` naming the file for anything unreadable.
    """
    try:
        info = probe_clip(video, start, end)
        clip = read_clip(video, settings.num_frames, settings.height, settings.width, settings.resize, start, end,
                         allow_repeats=settings.short_video == "repeat")
    except VideoError as err:
        raise InputError(f"{video}: {err}") from None
    try:
        series, _ = read_kinematics(kinematics, settings.kine_len, channels, start, end, duration=info.duration,
                                    time_scale=settings.time_scale)
    except KinematicsError as err:
        raise InputError(f"{kinematics}: {err}") from None
    return clip, series


def _load_row(task: _Task) -> _Loaded:
    """Pass 2: the row's clip ``(3, T, H, W)`` uint8 and series ``(C, L)`` float32."""
    row, s = task.row, task.settings
    try:
        video = read_clip(row.video_path, s.num_frames, s.height, s.width, s.resize, row.start, row.end,
                          allow_repeats=s.short_video == "repeat")
    except VideoError as err:
        return _Loaded(row, f"video {row.video}: {err}")
    try:
        kine, _ = read_kinematics(row.kine_path, s.kine_len, list(task.channels or ()) or None, row.start, row.end,
                                  duration=task.duration, time_scale=s.time_scale)
    except KinematicsError as err:
        return _Loaded(row, f"kinematics {row.kinematics}: {err}")
    return _Loaded(row, video=video, kine=kine)


class _Workers:
    """Processes shared by both passes; with one worker, everything runs in this process.

    Forked where possible: a spawned worker would import the whole ``dust`` command
    line again (torch included), seconds each, to decode clips that take milliseconds.
    """

    def __init__(self, workers: int) -> None:
        self.in_flight = 2 * workers
        self.pool: ProcessPoolExecutor | None = None
        if workers > 1:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method))

    def close(self) -> None:
        """Cancel what has not started, wait for the rest."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """``map(fn, items)``, in order, with at most two items per process in flight."""
        if self.pool is None:
            yield from map(fn, items)
            return
        pending: deque[Future[R]] = deque()
        todo = iter(items)
        try:
            for item in islice(todo, self.in_flight):
                pending.append(self.pool.submit(fn, item))
            while pending:
                result = pending.popleft().result()
                for item in islice(todo, 1):
                    pending.append(self.pool.submit(fn, item))
                yield result
        finally:
            for future in pending:
                future.cancel()


# --------------------------------------------------------------------------- the pipeline


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise InputError(f"{out}: folder exists and is not empty (--overwrite replaces it)")
        if not (out / "prepare.json").is_file():
            raise InputError(f"{out}: refusing to replace a folder that `dust prepare` did not write (no prepare.json)")
    ensure_writable_folder(out, create=False)  # a failed run must leave no folder behind


def _majority_channels(checked: list[_Checked]) -> tuple[str, ...]:
    """The channel set most rows share (ties: the earliest), in the order of its first row."""
    counts = Counter(frozenset(c.channels) for c in checked)
    best = max(counts.values())
    return next(c.channels for c in checked if counts[frozenset(c.channels)] == best)


def _channel_problem(checked: _Checked, reference: tuple[str, ...]) -> str:
    def listed(names: tuple[str, ...]) -> str:
        return f"{len(names)} channel{'s' * (len(names) != 1)} ({', '.join(names)})"

    channels = checked.channels
    text = [name for name in reference if name in checked.text_columns]
    if text:
        return "; ".join(f"column {name!r} holds no numbers (e.g. {checked.text_columns[name]!r})" for name in text)
    if len(channels) != len(reference):
        return f"{listed(channels)}, the other rows {len(reference)} ({', '.join(reference)})"
    return f"channels ({', '.join(channels)}) differ from the other rows' ({', '.join(reference)})"


def _move_into_place(temp: Path, out: Path) -> None:
    if out.is_dir():
        trash = temp_sibling(out, "old")
        os.replace(out, trash)
        try:
            os.replace(temp, out)
        except BaseException:
            os.replace(trash, out)
            raise
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(temp, out)


def _drop_rows(path: Path, drop: list[int]) -> int:
    """Rewrite the .npy at ``path`` without rows ``drop``; returns the rows left (the file is removed if none)."""
    source = np.load(path, mmap_mode="r")
    keep = np.setdiff1d(np.arange(len(source)), drop)
    if not len(keep):
        del source
        path.unlink()
        return 0
    with ArrayWriter(path, (len(keep), *source.shape[1:]), source.dtype) as out:
        for i, row in enumerate(keep):
            out.write(i, source[row : row + 1])
    del source
    return len(keep)


def _write_csv(path: Path, columns: tuple[str, ...], rows: Iterable[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": round(min(values), 4), "median": round(float(np.median(values)), 4), "max": round(max(values), 4)}


@dataclass
class _Plan:
    """What pass 1 decided: the good rows by split (manifest order), their channels and classes, the bad rows."""

    splits: dict[str, list[_Checked]]
    channels: tuple[str, ...]
    classes: list[str]
    class_index: dict[str, int]
    problems: list[RowProblem]

    def label(self, row: ManifestRow) -> int:
        return self.class_index[row.label] if row.label is not None else -1


def _check_rows(manifest: str | os.PathLike[str], settings: PrepareSettings, workers: _Workers,
                progress: bool,
                warn: Callable[[str], None]) -> _Plan:
    """Pass 1: parse the manifest, check every row's files, agree on channels and classes, split."""
    rows, problems, ignored = read_manifest(manifest)
    if ignored:
        warn(f"{manifest}: ignoring column(s) {', '.join(ignored)} (known: {', '.join(MANIFEST_COLUMNS)})")
    try:
        classes, class_index = _class_list(rows, settings.classes)
    except InputError as err:
        raise InputError(f"{manifest}: {err}") from None
    bad = {p.row.number for p in problems}
    for row in rows:
        if row.label is not None and row.label not in class_index and row.number not in bad:
            problems.append(RowProblem(row, f"label {row.label!r} is not one of the classes ({', '.join(classes)})"))
            bad.add(row.number)
    tasks = (_Task(row, settings, None) for row in rows if row.number not in bad)
    checked: list[_Checked] = []
    bar = tqdm(total=len(rows) - len(bad), desc="checking clips", unit="clip", disable=not progress, file=sys.stderr)
    with bar, closing(workers.map(_check_row, tasks)) as results:
        for result in results:
            bar.update()
            if result.problem:
                problems.append(RowProblem(result.row, result.problem))
            else:
                checked.append(result)
    channels = tuple(settings.channels) if settings.channels else (_majority_channels(checked) if checked else ())
    good: list[_Checked] = []
    for result in checked:
        if set(result.channels) == set(channels):
            good.append(result)
        else:
            problems.append(RowProblem(result.row, f"kinematics {result.row.kinematics}: "
                                                   f"{_channel_problem(result, channels)}"))
    problems.sort(key=lambda p: p.row.number)
    splits = _assign_splits(good, class_index, settings)
    return _Plan(splits, channels, classes, class_index, problems)


def _assign_splits(good: list[_Checked], class_index: dict[str, int],
                   settings: PrepareSettings) -> dict[str, list[_Checked]]:
    """Given splits kept; labelled rows without one split into train/val by class; unlabelled ones to test."""
    auto = [c for c in good if c.row.split is None and c.row.label is not None]
    drawn = stratified_split([class_index[c.row.label] for c in auto], settings.val_fraction, settings.seed)
    split_of = {c.row.number: split for c, split in zip(auto, drawn)}
    return {split: [c for c in good if split_of.get(c.row.number, c.row.split or "test") == split] for split in SPLITS}


def _decode_into(folder: Path, plan: _Plan, settings: PrepareSettings, workers: _Workers,
                 skip_bad: bool,
                 progress: bool, warn: Callable[[str], None]) -> list[RowProblem]:
    """Pass 2: decode every planned row into ``folder``'s video and kinematics arrays; returns rows that failed.

    A failed row (only with ``skip_bad``) is written as zeros, then cut out of
    its split's arrays and of ``plan.splits``.
    """
    writers: dict[tuple[str, str], ArrayWriter] = {}
    place: dict[int, tuple[str, int]] = {}
    failed: list[RowProblem] = []
    with ExitStack() as stack:
        for split, members in plan.splits.items():
            if not members:
                continue
            n = len(members)
            writers["video", split] = stack.enter_context(ArrayWriter(
                folder / f"video_{split}.npy", (n, 3, settings.num_frames, settings.height, settings.width), np.uint8))
            writers["kine", split] = stack.enter_context(ArrayWriter(
                folder / f"kine_{split}.npy", (n, len(plan.channels), settings.kine_len), np.float32))
            place.update((c.row.number, (split, i)) for i, c in enumerate(members))
        good = sorted((c for members in plan.splits.values() for c in members), key=lambda c: c.row.number)
        tasks = (_Task(c.row, settings, plan.channels, c.info.duration if c.info else None) for c in good)
        bar = stack.enter_context(tqdm(total=len(good), desc="decoding clips", unit="clip", disable=not progress,
                                       file=sys.stderr))
        for loaded in stack.enter_context(closing(workers.map(_load_row, tasks))):
            bar.update()
            split, i = place[loaded.row.number]
            video, kine = writers["video", split], writers["kine", split]
            if loaded.problem:
                problem = RowProblem(loaded.row, loaded.problem)
                if not skip_bad:
                    raise BadRowsError([problem])
                warn(f"skipping {problem}")
                failed.append(problem)
                loaded = replace(loaded, video=np.zeros(video.shape[1:], np.uint8),
                                 kine=np.zeros(kine.shape[1:], np.float32))
            video.write(i, loaded.video[None])
            kine.write(i, loaded.kine[None])
    gone = {p.row.number for p in failed}
    for split, members in plan.splits.items():
        drop = [i for i, c in enumerate(members) if c.row.number in gone]
        if drop:
            for kind in ("video", "kine"):
                _drop_rows(folder / f"{kind}_{split}.npy", drop)
            plan.splits[split] = [c for c in members if c.row.number not in gone]
    return failed


def _write_tables(folder: Path, plan: _Plan, settings: PrepareSettings, manifest: str | os.PathLike[str],
                  skipped: list[RowProblem] | None) -> None:
    """Labels, ``classes.json``, ``index.csv``, ``prepare.json`` and (when not None) ``skipped.csv``."""
    for split, members in plan.splits.items():
        labels = np.asarray([plan.label(c.row) for c in members], dtype=np.int64)
        if (labels >= 0).any():
            save_array(folder / f"label_{split}.npy", labels)
    write_json(folder / "classes.json", {"classes": plan.classes})
    index = [{"split": split, "row": i, "manifest_row": c.row.number, "id": c.row.id, "video": c.row.video,
              "kinematics": c.row.kinematics, "label": plan.classes[plan.label(c.row)] if c.row.label else ""}
             for split, members in plan.splits.items() for i, c in enumerate(members)]
    _write_csv(folder / "index.csv", INDEX_COLUMNS, sorted(index, key=lambda entry: entry["manifest_row"]))
    if skipped is not None:
        _write_csv(folder / "skipped.csv", SKIPPED_COLUMNS, (
            {"manifest_row": p.row.number, "id": p.row.id, "video": p.row.video, "kinematics": p.row.kinematics,
             "problem": p.problem} for p in skipped))
    infos = [c.info for members in plan.splits.values() for c in members if c.info is not None]
    write_json(folder / "prepare.json", {
        "dust_version": __version__,
        "manifest": str(Path(manifest).resolve()),
        **{k: v for k, v in asdict(settings).items() if k not in ("channels", "classes")},
        "channels": list(plan.channels),
        "classes": plan.classes,
        "splits": {
            split: {
                "rows": len(members),
                "labelled": sum(c.row.label is not None for c in members),
                "files": {kind: f"{kind}_{split}.npy" for kind in ("video", "kine", "label")
                          if (folder / f"{kind}_{split}.npy").exists()},
            }
            for split, members in plan.splits.items() if members
        },
        "skipped": len(skipped or ()),
        "source_fps": _stats([i.fps for i in infos if i.fps > 0]),
        "source_sizes": [size for size, _ in Counter(f"{i.width}x{i.height}" for i in infos).most_common(5)],
        "clip_frames": _stats([float(i.frames) for i in infos]),
        "clip_seconds": _stats([i.frames / i.fps for i in infos if i.fps > 0]),
    })


def prepare(
    manifest: str | os.PathLike[str],
    out: str | os.PathLike[str],
    settings: PrepareSettings = PrepareSettings(),
    *,
    workers: int = 1,
    skip_bad: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    warn: Callable[[str], None] = lambda line: print(f"dust: warning: {line}", file=sys.stderr),
) -> PrepareResult:
    """Read every clip of ``manifest`` and write the stages' array files into the folder ``out``.

    Raises :class:`BadRowsError` (nothing written) when a row is bad and not
    ``skip_bad``, :class:`InputError` for other bad input.  ``warn`` receives one
    line per skipped row and per ignored manifest column.
    """
    settings.check()
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    out = Path(out)
    _check_out(out, overwrite)
    with closing(_Workers(workers)) as processes:
        plan = _check_rows(manifest, settings, processes, progress, warn)
        if plan.problems and not skip_bad:
            raise BadRowsError(plan.problems)
        for problem in plan.problems:
            warn(f"skipping {problem}")
        if not any(plan.splits.values()):
            raise InputError(f"{manifest}: no usable rows ({len(plan.problems)} bad)")
        if plan.splits["train"] and not plan.splits["val"]:
            warn("no validation rows: the training stages need some (give rows split=val, or at least two "
                 "clips per class with --val_fraction above 0)")

        temp = temp_sibling(out)  # hidden, beside `out`: renamed into place once complete
        try:
            temp.mkdir(parents=True)
        except OSError as err:
            raise InputError(f"{out}: cannot write there ({err.strerror})") from None
        try:
            failed = _decode_into(temp, plan, settings, processes, skip_bad, progress, warn)
            skipped = sorted(plan.problems + failed, key=lambda p: p.row.number)
            _write_tables(temp, plan, settings, manifest, skipped if skip_bad else None)
            _check_out(out, overwrite)  # still free?
            _move_into_place(temp, out)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
    return PrepareResult(out=out, rows={split: len(members) for split, members in plan.splits.items()},
                         classes=plan.classes, channels=list(plan.channels), skipped=skipped)
