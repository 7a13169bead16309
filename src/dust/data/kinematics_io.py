"""Sensor CSVs to fixed-length series: columns are channels, rows time steps, linearly resampled.

A CSV has a header row naming its columns (a file whose first line is all numbers
has none: its columns are named ``0``, ``1``, ...).  A column named ``time``
(any case) gives each row's time; every other column holding numbers is a
channel.  Columns without a single number (notes, status strings) are not
channels unless asked for by name, and then they are an error.

Times: with a ``time`` column its values (seconds, or ``time_scale`` units) are on
the video's clock, 0 being the first frame; without one the rows are taken to be
evenly spaced over the whole video (row ``i`` at ``i * duration / rows``).  With
no window the series spans its rows, first to last; with a window it spans
``[start, end]`` seconds, which the rows must cover (to within one sample).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["MIN_ROWS", "KinematicsError", "KinematicsTable", "load_table", "read_kinematics", "resample"]

MIN_ROWS = 2
"""Fewest data rows a series can be interpolated from."""

TIME_COLUMN = "time"


class KinematicsError(ValueError):
    """A sensor CSV cannot give the series asked for; the message is one line naming the problem (not the file)."""


@dataclass(frozen=True)
class KinematicsTable:
    """The numeric content of a sensor CSV, checked: every value finite, times increasing."""

    names: list[str]
    """Channel names, in file order (``time`` excluded)."""
    values: np.ndarray
    """``(rows, channels)`` float64."""
    time: np.ndarray | None
    """``(rows,)`` seconds, or None without a ``time`` column."""
    text_columns: dict[str, str] = field(default_factory=dict)
    """Columns left out for holding no numbers, each with its first non-empty cell."""

    def select(self, channels: list[str] | None) -> tuple[np.ndarray, list[str]]:
        """The ``(rows, C)`` values of ``channels`` (all when None) and their names."""
        if channels is None:
            return self.values, list(self.names)
        columns = [self.names.index(name) for name in channels]
        return self.values[:, columns], list(channels)


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _read_rows(path: Path) -> tuple[list[str], list[list[str]], int]:
    """Header names, data rows (as strings) and the line number of the first data row."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise KinematicsError("no such file") from None
    except IsADirectoryError:
        raise KinematicsError("is a folder, not a CSV file") from None
    except UnicodeDecodeError:
        raise KinematicsError("not a text CSV file (undecodable bytes)") from None
    except OSError as err:
        raise KinematicsError(f"cannot read ({err.strerror})") from None
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), "")
    delimiter = "," if "," in first or not any(d in first for d in ";\t") else (";" if ";" in first else "\t")
    rows = [[cell.strip() for cell in row] for row in csv.reader(lines, delimiter=delimiter)]
    rows = [row for row in rows if any(row)]  # blank lines
    if not rows:
        raise KinematicsError("empty file")
    if all(_number(cell) is not None for cell in rows[0]):  # no header: columns by position
        return [str(i) for i in range(len(rows[0]))], rows, 1
    header, data = rows[0], rows[1:]
    if any(not name for name in header):
        raise KinematicsError(f"header has an unnamed column (column {header.index('') + 1})")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise KinematicsError(f"header repeats column name(s) {', '.join(map(repr, repeated))}")
    return header, data, 2


def load_table(path: str | os.PathLike[str], channels: list[str] | None = None, time_scale: float = 1.0) -> KinematicsTable:
    """Read and check a sensor CSV: the ``channels`` named (default: every numeric column) and ``time``.

    Raises :class:`KinematicsError` for a missing or empty file, ragged rows, a
    non-numeric, empty, NaN or infinite value, fewer than :data:`MIN_ROWS` rows,
    a missing channel, or times that do not increase.
    """
    header, rows, first_line = _read_rows(Path(path))
    for n, row in enumerate(rows):
        if len(row) != len(header):
            raise KinematicsError(f"data row {n + 1} has {len(row)} cells, the header {len(header)}")
    if len(rows) < MIN_ROWS:
        raise KinematicsError(f"too few rows: {len(rows)} data row{'s' * (len(rows) != 1)}, need at least {MIN_ROWS}")
    time_at = next((i for i, name in enumerate(header) if name.lower() == TIME_COLUMN), None)
    text: dict[str, str] = {}
    if channels is None:
        numeric = [i for i in range(len(header)) if i != time_at and any(_number(row[i]) is not None for row in rows)]
        text = {header[i]: next((row[i] for row in rows if row[i]), "") for i in range(len(header))
                if i != time_at and i not in numeric}
        if not numeric:
            raise KinematicsError("no numeric columns")
    else:
        missing = [name for name in channels if name not in header]
        if missing:
            raise KinematicsError(f"no column(s) {', '.join(map(repr, missing))} (has {', '.join(header)})")
        numeric = [header.index(name) for name in channels]
    columns = numeric + ([time_at] if time_at is not None else [])
    values = np.empty((len(rows), len(columns)), dtype=np.float64)
    for n, row in enumerate(rows):
        for j, i in enumerate(columns):
            value = _number(row[i])
            if value is None or not math.isfinite(value):
                what = "an empty cell" if not row[i] else (f"a non-numeric cell {row[i]!r}" if value is None
                                                           else f"a non-finite value {row[i]!r}")
                raise KinematicsError(f"{what} in column {header[i]!r}, line {first_line + n}")
            values[n, j] = value
    time = None
    if time_at is not None:
        time = values[:, -1] * time_scale
        values = values[:, :-1]
        steps = np.diff(time)
        if (steps <= 0).any():
            bad = int(np.flatnonzero(steps <= 0)[0]) + 1
            raise KinematicsError(f"column {header[time_at]!r} does not increase at line {first_line + bad}")
    return KinematicsTable(names=[header[i] for i in numeric], values=values, time=time, text_columns=text)


def resample(
    values: np.ndarray,
    time: np.ndarray | None,
    kine_len: int,
    start: float | None = None,
    end: float | None = None,
    duration: float | None = None,
) -> np.ndarray:
    """Linearly interpolate ``(rows, C)`` values at ``kine_len`` evenly spaced times; returns ``(C, kine_len)``.

    With a window the times run from ``start`` (default 0) to ``end`` (default
    ``duration``). Without one they span the video, ``0`` to ``duration``, when the rows
    have a ``time`` column (on the video's clock) and the duration is known; otherwise
    from the first row to the last. Rows without ``time`` sit evenly over ``[0, duration)``.
    A window or video the timed rows do not cover raises :class:`KinematicsError`.
    """
    if kine_len < 1:
        raise ValueError(f"kine_len must be positive, got {kine_len}")
    rows = len(values)
    spans_video = time is not None and bool(duration and duration > 0)
    if start is None and end is None and not spans_video:
        t = time if time is not None else np.arange(rows, dtype=np.float64)
        grid = np.linspace(t[0], t[-1], kine_len)
    else:
        if (time is None or end is None) and not (duration and duration > 0):
            raise KinematicsError("a time window needs a 'time' column or the video's duration")
        t = time if time is not None else np.arange(rows) * (duration / rows)
        lo = 0.0 if start is None else start
        hi = duration if end is None else end
        step = float(np.median(np.diff(t))) if time is not None else duration / rows
        if lo < t[0] - step - 1e-9 or hi > t[-1] + step + 1e-9:
            span = "the window" if start is not None or end is not None else "the video's"
            raise KinematicsError(f"the rows cover {t[0]:g}–{t[-1]:g} s, not {span} {lo:g}–{hi:g} s")
        grid = np.linspace(lo, hi, kine_len)
    out = np.empty((values.shape[1], kine_len), dtype=np.float32)
    for c in range(values.shape[1]):
        out[c] = np.interp(grid, t, values[:, c])
    return out


def read_kinematics(
    path: str | os.PathLike[str],
    kine_len: int,
    channels: list[str] | None = None,
    start: float | None = None,
    end: float | None = None,
    *,
    duration: float | None = None,
    time_scale: float = 1.0,
) -> tuple[np.ndarray, list[str]]:
    """Read a sensor CSV resampled to ``kine_len`` points: float32 ``(C, kine_len)`` and the channel names.

    ``channels`` picks columns by name (default: every numeric column but ``time``);
    ``start``/``end`` (seconds) pick a window, ``duration`` is the video's length
    (needed for a window when the CSV has no ``time`` column); ``time_scale``
    converts the ``time`` column to seconds (0.001 for milliseconds).
    """
    table = load_table(path, channels, time_scale)
    values, names = table.select(channels)
    return resample(values, table.time, kine_len, start, end, duration), names
