"""Video files to uint8 clips with PyAV: uniform frame sampling over a time window, then resizing.

A clip is read in two cheap steps.  The packets of the window are demuxed (no
decoding) to learn which frames it holds; ``num_frames`` of them are picked
uniformly, first and last included; then the window is decoded and only the
picked frames are converted to RGB and resized.  Memory holds one clip, never
the whole video.

Times are seconds from the start of the video stream.  A window ``[start, end)``
holds the frames whose timestamps fall in it; ``end=None`` reads to the end.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from fractions import Fraction
from itertools import islice

import av
import numpy as np
from av.video.reformatter import Interpolation

__all__ = ["RESIZE_MODES", "ClipInfo", "VideoError", "probe_clip", "read_clip", "sample_indices", "too_short"]

RESIZE_MODES = ("crop", "stretch")
"""``crop``: scale to cover the target, keeping the aspect, and cut the centre; ``stretch``: plain resize."""

# Seeks go this far before the time wanted: B-frames shown after it may be stored before its key frame.
_SEEK_MARGIN = 1.0
# Slack when comparing frame times with window bounds given as decimal seconds.
_EPS = 1e-4
# swscale: area averaging when shrinking; accurate rounding and full chroma interpolation, since the
# fast path darkens frames by a level or two when it converts and scales in one step.
_SCALING: Interpolation | str = (
    Interpolation.AREA | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
    if issubclass(Interpolation, enum.Flag) else "AREA"  # PyAV < 13 takes one method, no flags
)
# Errors PyAV raises on unreadable input (its FFmpegError subclasses ValueError or OSError).
_AV_ERRORS = (av.error.FFmpegError, OSError, ValueError, EOFError)


class VideoError(ValueError):
    """A video cannot give the clip asked for; the message is one line naming the problem (not the file)."""


@dataclass(frozen=True)
class ClipInfo:
    """What :func:`probe_clip` learns about a window of a video without decoding it all."""

    frames: int
    """Frames in the window."""
    fps: float
    """Nominal frame rate of the stream (0 when the file does not say)."""
    duration: float
    """Seconds from the first frame to the end of the last (the whole video, not the window)."""
    width: int
    height: int


def sample_indices(available: int, wanted: int) -> np.ndarray:
    """``wanted`` indices spread uniformly over ``range(available)``, first and last included.

    With fewer frames than wanted, some indices repeat.
    """
    if available < 1 or wanted < 1:
        raise ValueError(f"need at least one frame to sample from and to, got {available} and {wanted}")
    return np.floor(np.linspace(0, available - 1, wanted) + 0.5).astype(np.int64)


def _open(path: str | os.PathLike[str]) -> av.container.InputContainer:
    try:
        return av.open(os.fspath(path), "r")
    except FileNotFoundError:
        raise VideoError("no such file") from None
    except _AV_ERRORS as err:
        raise VideoError(f"cannot open as a video ({_av_message(err)})") from None


def _av_message(err: BaseException) -> str:
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return " ".join(str(text).split())


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise VideoError("no video stream (empty or audio-only file)")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def _origin(path: str | os.PathLike[str]) -> int:
    """The timestamp of the first frame: the smallest of the first packets' (B-frames are stored out of order).

    Not ``stream.start_time``: AVI files with B-frames start their frames at 1, not 0.
    """
    with _open(path) as container:
        stream = _video_stream(container)
        try:
            first = [p.pts if p.pts is not None else p.dts for p in islice(container.demux(stream), 16) if p.size]
        except _AV_ERRORS as err:
            raise VideoError(f"cannot read ({_av_message(err)})") from None
        first = [pts for pts in first if pts is not None]
        if first:
            return min(first)
        return stream.start_time if stream.start_time is not None else 0


def _fps(stream: av.video.stream.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def _duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


class _Window:
    """A window ``[start, end)`` in seconds, compared with frame timestamps in stream units."""

    def __init__(self, stream: av.video.stream.VideoStream, origin: int, start: float | None,
                 end: float | None) -> None:
        if start is not None and start < 0:
            raise VideoError(f"window start {start:g} s is negative")
        if end is not None and end <= (start or 0.0):
            raise VideoError(f"window end {end:g} s is not after its start {start or 0.0:g} s")
        self.time_base = stream.time_base or Fraction(1, 1)
        self.origin = origin
        self.start = start
        self.end = end

    @property
    def where(self) -> str:
        return "the video" if self.start is None and self.end is None else f"the window {self}"

    def __str__(self) -> str:
        return f"{self.start or 0:g}–{'end' if self.end is None else f'{self.end:g}'} s"

    def seconds(self, pts: int) -> float:
        return float((pts - self.origin) * self.time_base)

    def pts(self, seconds: float) -> int:
        return self.origin + int(seconds / self.time_base)

    def contains(self, pts: int) -> bool:
        t = self.seconds(pts)
        return (self.start is None or t >= self.start - _EPS) and (self.end is None or t < self.end - _EPS)

    def past(self, pts: int) -> bool:
        return self.end is not None and self.seconds(pts) >= self.end - _EPS


def _seek_before(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                 window: _Window, seconds: float) -> bool:
    """Seek to a key frame well before ``seconds`` (see ``_SEEK_MARGIN``); False when reading from the start is as good."""
    if seconds <= _SEEK_MARGIN:
        return False
    try:
        container.seek(window.pts(seconds - _SEEK_MARGIN), stream=stream, backward=True, any_frame=False)
    except _AV_ERRORS:
        return False  # unseekable: keep reading from where we are (the start)
    return True


def _frame_times(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                 window: _Window) -> tuple[list[int], int | None]:
    """Sorted timestamps of the window's frames (from packets, no decoding) and the last timestamp seen."""
    _seek_before(container, stream, window, window.start or 0.0)
    times: list[int] = []
    last: int | None = None
    for packet in container.demux(stream):
        if packet.size == 0:  # the flush packet at the end
            continue
        pts = packet.pts if packet.pts is not None else packet.dts
        if pts is None:
            raise VideoError("frames carry no timestamps")
        last = pts if last is None else max(last, pts)
        if window.contains(pts):
            times.append(pts)
        # Decode order: once a packet's dts is past the window, every later frame is too.
        dts = packet.dts if packet.dts is not None else pts
        if window.past(dts):
            break
    times.sort()
    return times, last


def _window_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                   window: _Window) -> tuple[list[int], int | None]:
    """:func:`_frame_times`, raising :class:`VideoError` when the window holds no frames or runs past the end."""
    try:
        times, last = _frame_times(container, stream, window)
    except _AV_ERRORS as err:
        raise VideoError(f"cannot read ({_av_message(err)})") from None
    if last is None:
        raise VideoError("no video frames")
    frame = 1.0 / _fps(stream) if _fps(stream) > 0 else 0.0
    video_end = window.seconds(last) + frame
    if window.end is not None and video_end < window.end - frame - _EPS:
        raise VideoError(f"too short: the video ends at {video_end:.3f} s, before the window's end {window.end:g} s")
    if not times and window.start is not None and window.start >= video_end - _EPS:
        raise VideoError(f"too short: the video ends at {video_end:.3f} s, before the window's start {window.start:g} s")
    if not times:
        raise VideoError(f"no video frames in the window {window}")
    return times, last


def _frames_from(path: str | os.PathLike[str], window: _Window, first: int) -> Iterator[av.VideoFrame]:
    """Decoded frames in presentation order, starting at or before the one at timestamp ``first``.

    Seeks near it when that is far into the video.  Some files (AVI with B-frames)
    flag frames as key frames that cannot start decoding, so a seek may land after
    the frame wanted; then the file is read again from its start.
    """
    with _open(path) as container:
        stream = _video_stream(container)
        if _seek_before(container, stream, window, window.seconds(first)):
            frames = container.decode(stream)
            head = next(frames, None)
            if head is not None and head.pts is not None and head.pts <= first:
                yield head
                yield from frames
                return
    with _open(path) as container:
        yield from container.decode(_video_stream(container))


def probe_clip(path: str | os.PathLike[str], start: float | None = None, end: float | None = None) -> ClipInfo:
    """Count the frames of a window and check that the video decodes (its first frame), cheaply.

    Raises :class:`VideoError` for a missing, unreadable or empty video, a window
    past the video's end, or a window without frames.
    """
    origin = _origin(path)
    with _open(path) as container:
        stream = _video_stream(container)
        window = _Window(stream, origin, start, end)
        times, last = _window_frames(container, stream, window)
        fps = _fps(stream)
        duration = _duration(container, stream)
        if window.end is None and last is not None:  # read to the end: measured beats metadata
            duration = window.seconds(last) + (1.0 / fps if fps > 0 else 0.0)
    try:
        with _open(path) as container:
            first = next(iter(container.decode(_video_stream(container))), None)
    except _AV_ERRORS as err:
        raise VideoError(f"cannot decode ({_av_message(err)})") from None
    if first is None:
        raise VideoError("cannot decode any frame")
    return ClipInfo(frames=len(times), fps=fps, duration=duration, width=first.width, height=first.height)


def _resize(frame: av.VideoFrame, height: int, width: int, resize: str) -> np.ndarray:
    """One frame as uint8 RGB ``(height, width, 3)``."""
    if resize == "stretch":
        return frame.reformat(width=width, height=height, format="rgb24", interpolation=_SCALING).to_ndarray()
    # Scale so that the frame covers the target, then cut the centre.
    scale = max(height / frame.height, width / frame.width)
    scaled_h = max(height, round(frame.height * scale))
    scaled_w = max(width, round(frame.width * scale))
    rgb = frame.reformat(width=scaled_w, height=scaled_h, format="rgb24", interpolation=_SCALING).to_ndarray()
    top = (scaled_h - height) // 2
    left = (scaled_w - width) // 2
    return rgb[top : top + height, left : left + width]


def read_clip(
    path: str | os.PathLike[str],
    num_frames: int,
    height: int,
    width: int,
    resize: str = "crop",
    start: float | None = None,
    end: float | None = None,
    *,
    allow_repeats: bool = False,
) -> np.ndarray:
    """Read ``num_frames`` frames sampled uniformly over ``[start, end)`` seconds, resized.

    Returns uint8 ``(3, num_frames, height, width)``.  ``resize`` is ``"crop"``
    (keep the aspect ratio, cut the centre) or ``"stretch"``.  A window with fewer
    frames than ``num_frames`` raises :class:`VideoError` unless ``allow_repeats``,
    which repeats frames to fill the clip.
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    if min(num_frames, height, width) < 1:
        raise ValueError(f"num_frames, height and width must be positive, got {num_frames}, {height}, {width}")
    origin = _origin(path)
    with _open(path) as container:
        stream = _video_stream(container)
        window = _Window(stream, origin, start, end)
        times, _ = _window_frames(container, stream, window)
    if len(times) < num_frames and not allow_repeats:
        raise VideoError(too_short(len(times), num_frames, window.where))
    picked = [times[i] for i in sample_indices(len(times), num_frames)]
    clip = np.empty((num_frames, height, width, 3), dtype=np.uint8)  # (T, H, W, 3)
    filled = 0
    try:
        with closing(_frames_from(path, window, picked[0])) as frames:
            for frame in frames:
                if frame.pts is None or frame.pts < picked[filled]:
                    continue  # decoded for the frames that depend on it, not converted
                rgb = _resize(frame, height, width, resize)
                # A frame at or after the wanted time fills that slot (and any repeats of it).
                while filled < num_frames and frame.pts >= picked[filled]:
                    clip[filled] = rgb
                    filled += 1
                if filled == num_frames:
                    break
    except _AV_ERRORS as err:
        raise VideoError(f"cannot decode ({_av_message(err)})") from None
    if filled < num_frames:
        raise VideoError(f"decoding stopped early: got {filled} of the {num_frames} frames")
    return np.ascontiguousarray(clip.transpose(3, 0, 1, 2))  # (3, T, H, W)


def too_short(available: int, wanted: int, where: str) -> str:
    """The message for a video (``where``: "the video", "the window 1–3 s") with fewer frames than a clip needs."""
    return f"too short: {where} has {available} frames, fewer than the {wanted} asked for"
