"""Learnable toy driving clips: a dash-camera video and three acceleration channels.

Every clip has two hidden, independent, balanced binary factors:

- ``conflict``: a lead vehicle closes in on the camera.  Only the video shows it.
- ``brake``: the driver brakes hard.  Only the kinematics show it.

The label is ``brake + 2 * conflict``: 0 baseline, 1 braking without conflict,
2 conflict without braking (crash), 3 conflict with evasive braking (near-crash).
A video-only or kinematics-only classifier can reach about 50 % accuracy; only
the fused model can approach 100 %.

``kind="noise"`` instead reproduces the published toy data: pure noise with
labels that carry no information.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..atomic import ensure_writable_folder, write_json
from ..errors import InputError
from .arrays import ArrayWriter, save_array

__all__ = ["generate_toy_data", "make_kinematics", "render_video"]

KINDS = ("scenario", "noise")
FORMATS = ("pkl", "npy", "npz")
CLASS_NAMES = ["baseline", "braking", "conflict", "near_crash"]
"""Names of the scenario classes by index: ``brake + 2 * conflict``."""
SPLITS = ("train", "val")
SCENARIO_CLASSES = 4

# Road geometry, in units of rows below the horizon: a lane at depth rho
# (rho = rows below the horizon / image height) is LANE * rho * height pixels
# wide; a vehicle is VEHICLE_WIDTH * rho * height pixels wide.
LANE = 1.9
VEHICLE_WIDTH = 0.5 * LANE


def _lerp(easy: float, hard: float, difficulty: float) -> float:
    return easy + (hard - easy) * difficulty


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _clip_times(n: int) -> np.ndarray:
    """Times in [0, 1] of n frames; a single frame shows the end of the clip."""
    return np.linspace(0.0, 1.0, n) if n > 1 else np.ones(1)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled uniform noise in [-1, 1], about `cells` blobs across."""
    coarse = rng.uniform(-1.0, 1.0, (cells + 1, cells + 1))
    rows = _interp_axis(coarse, height, axis=0)
    return _interp_axis(rows, width, axis=1).astype(np.float32)


def _interp_axis(grid: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Linearly resample axis 0 or 1 of a 2-D grid to `size` points."""
    pos = np.linspace(0.0, grid.shape[axis] - 1, size)
    low = np.minimum(pos.astype(int), grid.shape[axis] - 2)
    frac = pos - low
    shape = [1, 1]
    shape[axis] = size
    frac = frac.reshape(shape)
    return np.take(grid, low, axis=axis) * (1 - frac) + np.take(grid, low + 1, axis=axis) * frac


# --------------------------------------------------------------------------- video


@dataclass(frozen=True)
class _Road:
    """A clip's static road scene on a canvas `pad` pixels larger than the image on each side."""

    canvas: np.ndarray  # (3, H + 2 pad, W + 2 pad) float32 background
    dashes: np.ndarray  # (H + 2 pad, W + 2 pad) coverage of the dashed lane lines
    distance: np.ndarray  # (H + 2 pad,) ground distance per canvas row, inf above the horizon
    horizon: float  # horizon row, image pixels
    vanish: float  # vanishing point column, image pixels
    pad: int


@dataclass(frozen=True)
class _Vehicle:
    """The lead vehicle's look; its track is separate."""

    body: np.ndarray  # (3,) colours
    glass: np.ndarray
    lights: np.ndarray
    aspect: float  # height / width


def _line_cover(offset_px: np.ndarray, half_width_px: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a line whose centre is `offset_px` away."""
    return np.clip(half_width_px + 0.5 - np.abs(offset_px), 0.0, 1.0)


def _sky(rng: np.random.Generator, rows: np.ndarray, horizon: float, width: int) -> np.ndarray:
    """A (3, rows, width) sky: blue above, paler towards the horizon, with soft clouds."""
    top = rng.uniform([0.30, 0.50, 0.75], [0.55, 0.70, 0.95])
    low = rng.uniform([0.70, 0.75, 0.80], [0.90, 0.90, 0.95])
    mix = np.clip(rows / max(horizon, 1.0), 0.0, 1.0)[:, None, None]
    sky = (1 - mix) * top + mix * low
    clouds = np.clip(_smooth_noise(rng, len(rows), width, 5), 0.0, 1.0)[..., None] * 0.25
    return (sky + clouds * (1.0 - sky)).transpose(2, 0, 1)


def _road_scene(rng: np.random.Generator, height: int, width: int, difficulty: float) -> _Road:
    """Sky, tree line, grass and a three-lane road seen from its middle lane."""
    pad = max(1, round(0.03 * max(height, width)))
    rows = np.arange(height + 2 * pad, dtype=np.float64)[:, None] + 0.5 - pad
    cols = np.arange(width + 2 * pad, dtype=np.float64)[None, :] + 0.5 - pad
    horizon = rng.uniform(0.38, 0.50) * height
    vanish = rng.uniform(0.42, 0.58) * width
    below = rows - horizon  # pixels below the horizon
    lane_px = np.maximum(LANE * below, 1e-6)
    lateral = (cols - vanish) / lane_px  # lane units, 0 at the ego lane's centre
    on_ground = below > 0
    line_half = np.maximum(0.025 * lane_px, 0.3)

    grass = rng.uniform([0.18, 0.32, 0.10], [0.32, 0.48, 0.22])[:, None, None]
    asphalt = rng.uniform(0.36, 0.54) + rng.uniform(-0.02, 0.02, 3)
    texture = rng.normal(0.0, 1.0, (height + 2 * pad, width + 2 * pad)).astype(np.float32)
    blotches = _smooth_noise(rng, height + 2 * pad, width + 2 * pad, 8)
    ground = np.where(np.abs(lateral) < 1.6, asphalt[:, None, None], grass)
    ground = ground * (1 + 0.08 * blotches + _lerp(0.04, 0.08, difficulty) * texture)
    edges = _line_cover((np.abs(lateral) - 1.5) * lane_px, line_half) * on_ground
    ground = ground + edges * (0.9 - ground)

    canvas = np.where(on_ground, ground, _sky(rng, rows[:, 0], horizon, width + 2 * pad))
    canvas = _add_treeline(rng, canvas, rows[:, 0], horizon)
    dashes = _line_cover((np.abs(lateral) - 0.5) * lane_px, line_half) * on_ground
    distance = np.where(below[:, 0] > 0, height / np.maximum(below[:, 0], 1e-6), np.inf)
    return _Road(canvas.astype(np.float32), dashes.astype(np.float32), distance, horizon, vanish, pad)


def _add_treeline(
    rng: np.random.Generator, canvas: np.ndarray, rows: np.ndarray, horizon: float
) -> np.ndarray:
    """Paint a dark, ragged band of trees and hills just above the horizon."""
    width = canvas.shape[2]
    height = len(rows) * rng.uniform(0.01, 0.05)
    top = horizon - height * (1.0 + 0.6 * _smooth_noise(rng, 1, width, 12)[0])
    cover = np.clip(rows[:, None] - top[None, :], 0.0, 1.0) * (rows[:, None] < horizon)
    trees = rng.uniform([0.08, 0.14, 0.08], [0.18, 0.26, 0.16])[:, None, None]
    return canvas + cover * (trees - canvas)


def _dash_rows(rng: np.random.Generator, road: _Road, num_frames: int) -> np.ndarray:
    """Which canvas rows show a lane dash in each frame: (T, rows) in {0, 1}."""
    period = rng.uniform(1.0, 1.6)
    travelled = rng.uniform(2.0, 5.0) * period * _clip_times(num_frames)
    visible = np.isfinite(road.distance)
    distance = np.where(visible, road.distance, 0.0)
    phase = (distance[None, :] + travelled[:, None]) / period  # fixed on the road as the camera moves
    return ((phase % 1.0 < 0.45) & visible[None, :]).astype(np.float32)


def _vehicle_track(
    rng: np.random.Generator, conflict: bool, num_frames: int, difficulty: float
) -> tuple[np.ndarray, np.ndarray]:
    """Depth rho (rows below the horizon / height) and lateral lane offset per frame."""
    t = _clip_times(num_frames)
    rho0 = rng.uniform(0.08, 0.16)
    u0 = rng.uniform(-1.3, 1.3)
    if conflict:
        onset = rng.uniform(0.05, 0.30)
        progress = _smoothstep((t - onset) / rng.uniform(0.25, 0.40))
        growth = rng.uniform(_lerp(5.0, 1.4, difficulty), _lerp(7.0, 2.0, difficulty))
        rho = rho0 * growth**progress
        lateral = u0 + (rng.uniform(-0.1, 0.1) - u0) * progress
    else:
        rho = rho0 * (1.0 + rng.uniform(-0.35, _lerp(0.10, 0.50, difficulty)) * t)
        lateral = u0 + rng.uniform(-0.3, 0.3) * t
    return rho, lateral


def _random_vehicle(rng: np.random.Generator, difficulty: float) -> _Vehicle:
    """A dark vehicle of random hue (lighter when harder, closer to the road's grey)."""
    hue = rng.uniform(0.2, 1.0, 3)
    body = hue * rng.uniform(0.04, _lerp(0.22, 0.45, difficulty)) / hue.mean()
    glass = rng.uniform([0.05, 0.07, 0.09], [0.15, 0.18, 0.24])
    lights = np.array([rng.uniform(0.75, 1.0), rng.uniform(0.05, 0.2), rng.uniform(0.03, 0.12)])
    return _Vehicle(np.clip(body, 0, 1), glass, lights, rng.uniform(0.75, 1.05))


def _paint_box(
    canvas: np.ndarray,
    top: float,
    bottom: float,
    left: float,
    right: float,
    colour: np.ndarray,
    alpha: float = 1.0,
) -> None:
    """Blend an anti-aliased axis-aligned box (canvas pixel coordinates) into `canvas`."""
    r0, r1 = max(int(np.floor(top)), 0), min(int(np.ceil(bottom)), canvas.shape[1])
    c0, c1 = max(int(np.floor(left)), 0), min(int(np.ceil(right)), canvas.shape[2])
    if r0 >= r1 or c0 >= c1:
        return
    rows = np.arange(r0, r1)
    cols = np.arange(c0, c1)
    cover_r = np.clip(np.minimum(rows + 1, bottom) - np.maximum(rows, top), 0, 1)
    cover_c = np.clip(np.minimum(cols + 1, right) - np.maximum(cols, left), 0, 1)
    weight = (alpha * cover_r[:, None] * cover_c[None, :]).astype(np.float32)
    patch = canvas[:, r0:r1, c0:c1]
    patch += weight * (colour[:, None, None].astype(np.float32) - patch)


def _draw_vehicle(canvas: np.ndarray, road: _Road, car: _Vehicle, rho: float, lateral: float) -> None:
    """Paint the vehicle's rear, standing on the road at depth `rho` and lane offset `lateral`."""
    height = canvas.shape[1] - 2 * road.pad
    width = VEHICLE_WIDTH * rho * height
    tall = car.aspect * width
    bottom = road.pad + road.horizon + rho * height
    centre = road.pad + road.vanish + lateral * LANE * rho * height
    left, top = centre - width / 2, bottom - tall

    def box(y0: float, y1: float, x0: float, x1: float, colour: np.ndarray, alpha: float = 1.0) -> None:
        """A part of the vehicle, in fractions of its bounding box."""
        y0, y1, x0, x1 = top + y0 * tall, top + y1 * tall, left + x0 * width, left + x1 * width
        _paint_box(canvas, y0, y1, x0, x1, colour, alpha)

    black = np.zeros(3)
    box(0.92, 1.06, -0.06, 1.06, black, 0.55)  # shadow
    box(0.82, 1.00, 0.04, 0.22, black)  # tyres
    box(0.82, 1.00, 0.78, 0.96, black)
    box(0.00, 0.45, 0.08, 0.92, car.body * 0.9)  # cabin
    box(0.40, 0.86, 0.00, 1.00, car.body)  # body
    box(0.07, 0.38, 0.15, 0.85, car.glass)  # rear window
    box(0.50, 0.62, 0.04, 0.20, car.lights)  # rear lights
    box(0.50, 0.62, 0.80, 0.96, car.lights)
    box(0.68, 0.78, 0.38, 0.62, np.array([0.85, 0.85, 0.78]))  # number plate


def _camera_jitter(rng: np.random.Generator, num_frames: int, pad: int, scale: float) -> np.ndarray:
    """Integer (row, column) crop offsets per frame, within [0, 2 pad]."""
    shake = rng.normal(0.0, scale, (num_frames, 2)) + rng.normal(0.0, scale, 2)
    return np.clip(np.rint(shake) + pad, 0, 2 * pad).astype(int)


def _expose(rng: np.random.Generator, frames: np.ndarray, difficulty: float) -> np.ndarray:
    """Apply global lighting, flicker and sensor noise; quantise to uint8."""
    gain = rng.uniform(_lerp(0.80, 0.55, difficulty), _lerp(1.20, 1.40, difficulty))
    tint = 1.0 + rng.uniform(-0.05, 0.05, 3)
    flicker = 1.0 + rng.normal(0.0, 0.01, frames.shape[1])
    scale = (gain * tint[:, None] * flicker[None, :]).astype(np.float32)[:, :, None, None]
    frames *= scale
    noise = rng.standard_normal(frames.shape, dtype=np.float32)
    frames += noise * np.float32(_lerp(0.015, 0.08, difficulty))
    np.clip(frames, 0.0, 1.0, out=frames)
    frames *= 255.0
    return np.rint(frames, out=frames).astype(np.uint8)


def render_video(
    rng: np.random.Generator,
    conflict: bool,
    num_frames: int,
    height: int,
    width: int,
    difficulty: float = 0.0,
) -> np.ndarray:
    """Render one dash-camera clip, uint8 of shape (3, num_frames, height, width).

    A lead vehicle is always in view; with `conflict` it closes in over the
    frames after a random onset (its apparent size grows several times and it
    moves into the ego lane), otherwise it keeps its size or recedes.
    """
    road = _road_scene(rng, height, width, difficulty)
    car = _random_vehicle(rng, difficulty)
    rho, lateral = _vehicle_track(rng, conflict, num_frames, difficulty)
    dash_rows = _dash_rows(rng, road, num_frames)
    crops = _camera_jitter(rng, num_frames, road.pad, 0.006 * max(height, width))
    frames = np.empty((3, num_frames, height, width), dtype=np.float32)
    white = np.float32(0.88)
    for t in range(num_frames):
        canvas = road.canvas.copy()
        dashes = road.dashes * dash_rows[t][:, None]
        canvas += dashes * (white - canvas)
        _draw_vehicle(canvas, road, car, rho[t], lateral[t])
        (dy, dx) = crops[t]
        frames[:, t] = canvas[:, dy : dy + height, dx : dx + width]
    return _expose(rng, frames, difficulty)


# --------------------------------------------------------------------------- kinematics


def _plateau(t: np.ndarray, onset: float, duration: float) -> np.ndarray:
    """A pulse of height 1 over [onset, onset + duration] with smooth ramps."""
    tau = (t - onset) / duration
    return _smoothstep(tau / 0.25) * _smoothstep((1.0 - tau) / 0.35)


def _slow_motion(rng: np.random.Generator, t: np.ndarray, amplitude: float) -> np.ndarray:
    """A sum of three slow sinusoids plus an offset, peak magnitude at most `amplitude`."""
    weights = rng.dirichlet(np.ones(4)) * amplitude
    freqs = rng.uniform(0.3, 2.0, 3)
    phases = rng.uniform(0.0, 2 * np.pi, 3)
    waves = np.sin(2 * np.pi * freqs[:, None] * t[None, :] + phases[:, None])
    return weights[:3] @ waves + weights[3] * rng.choice([-1.0, 1.0])


def _road_vibration(rng: np.random.Generator, length: int) -> np.ndarray:
    """Rough-road vertical noise, now and then with a single bump."""
    rough = rng.normal(0.0, rng.uniform(0.02, 0.05), length + 1)
    vibration = 0.5 * (rough[1:] + rough[:-1])
    if rng.random() < 0.3:
        vibration[rng.integers(length)] += rng.choice([-1.0, 1.0]) * rng.uniform(0.08, 0.2)
    return vibration


def make_kinematics(
    rng: np.random.Generator,
    brake: bool,
    num_channels: int = 3,
    length: int = 51,
    difficulty: float = 0.0,
) -> np.ndarray:
    """Accelerations in g, float32 of shape (num_channels, length).

    Channels: longitudinal, lateral, vertical (gravity removed); any further
    channels carry slow motion and noise only.  With `brake` the longitudinal
    channel has a hard deceleration pulse; otherwise decelerations stay gentle.
    """
    t = (np.arange(length) + 0.5) / length
    motion = _lerp(0.05, 0.08, difficulty)
    series = np.stack([_slow_motion(rng, t, motion) for _ in range(num_channels)])
    if num_channels > 2:
        series[2] = 0.3 * series[2] + _road_vibration(rng, length)
    if rng.random() < 0.6:  # a gentle slowdown, with or without braking
        gentle = rng.uniform(0.03, _lerp(0.12, 0.25, difficulty))
        series[0] -= gentle * _plateau(t, rng.uniform(0.0, 0.6), rng.uniform(0.2, 0.5))
    if brake:
        _add_hard_brake(rng, series, t, difficulty)
    series += rng.normal(0.0, _lerp(0.01, 0.04, difficulty), series.shape)
    return series.astype(np.float32)


def _add_hard_brake(rng: np.random.Generator, series: np.ndarray, t: np.ndarray, difficulty: float) -> None:
    """A deep longitudinal deceleration pulse, sometimes with a lateral swerve."""
    onset, duration = rng.uniform(0.1, 0.6), rng.uniform(0.15, 0.35)
    pulse = _plateau(t, onset, duration)
    depth = rng.uniform(_lerp(0.40, 0.15, difficulty), _lerp(0.80, 0.35, difficulty))
    series[0] -= depth * pulse
    if len(series) > 1 and rng.random() < 0.5:  # an evasive swerve
        swerve = np.sin(2 * np.pi * np.clip((t - onset) / duration, 0.0, 1.0))
        series[1] += rng.choice([-1.0, 1.0]) * rng.uniform(0.05, 0.2) * swerve


# --------------------------------------------------------------------------- data sets


@dataclass(frozen=True)
class _Spec:
    kind: str
    num_frames: int
    height: int
    width: int
    kine_len: int
    num_channels: int
    num_classes: int
    difficulty: float


def _balanced_labels(rng: np.random.Generator, n: int, num_classes: int) -> np.ndarray:
    """Classes as evenly as possible (which ones get one more is random), shuffled."""
    labels = np.resize(rng.permutation(num_classes), n).astype(np.int64)
    rng.shuffle(labels)
    return labels


def _clip(spec: _Spec, label: int, seed: np.random.SeedSequence) -> tuple[np.ndarray, np.ndarray]:
    """One clip's video and kinematics, each from its own random stream."""
    video_rng, kine_rng = (np.random.default_rng(s) for s in seed.spawn(2))
    if spec.kind == "noise":
        video_shape = (3, spec.num_frames, spec.height, spec.width)
        video = video_rng.integers(0, 256, video_shape, dtype=np.uint8)
        kine = kine_rng.standard_normal((spec.num_channels, spec.kine_len)).astype(np.float32)
        return video, kine
    conflict, brake = divmod(int(label), 2)
    video = render_video(video_rng, bool(conflict), spec.num_frames, spec.height, spec.width, spec.difficulty)
    kine = make_kinematics(kine_rng, bool(brake), spec.num_channels, spec.kine_len, spec.difficulty)
    return video, kine


def _split_clips(
    spec: _Spec, n: int, seed: np.random.SeedSequence
) -> tuple[np.ndarray, Iterator[tuple[np.ndarray, np.ndarray]]]:
    label_seed, clip_seed = seed.spawn(2)
    labels = _balanced_labels(np.random.default_rng(label_seed), n, spec.num_classes)
    clips = (_clip(spec, label, s) for label, s in zip(labels, clip_seed.spawn(n)))
    return labels, clips


def _write_split(
    out: Path, split: str, n: int, spec: _Spec, fmt: str, seed: np.random.SeedSequence, progress: bool
) -> dict[str, Path]:
    paths = {name: out / f"{name}_{split}.{fmt}" for name in ("video", "kine", "label")}
    labels, clips = _split_clips(spec, n, seed)
    kine = np.empty((n, spec.num_channels, spec.kine_len), dtype=np.float32)
    video_shape = (n, 3, spec.num_frames, spec.height, spec.width)
    bar = tqdm(total=n, desc=f"toy {split} clips", unit="clip", disable=not progress, file=sys.stderr)
    with bar, ArrayWriter(paths["video"], video_shape, np.uint8) as video:
        for i, (clip_video, clip_kine) in enumerate(clips):
            video.write(i, clip_video[None])
            kine[i] = clip_kine
            bar.update()
    save_array(paths["kine"], kine)
    save_array(paths["label"], labels)
    return {f"{name}_{split}": path for name, path in paths.items()}


def _validate(kind: str, fmt: str, num_classes: int, difficulty: float, sizes: dict[str, int]) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if kind == "scenario" and num_classes != SCENARIO_CLASSES:
        raise ValueError(
            f"kind='scenario' has exactly {SCENARIO_CLASSES} classes (brake + 2 * conflict), "
            f"got num_classes={num_classes}; use kind='noise' for other class counts"
        )
    if num_classes < 2:
        raise ValueError(f"--num_classes must be at least 2, got {num_classes}")
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"--difficulty must lie in [0, 1], got {difficulty}")
    for name, value in sizes.items():  # every split must hold a clip: the stages refuse empty ones
        if value < 1:
            raise ValueError(f"--{name} must be at least 1, got {value}")


def generate_toy_data(
    out_dir: str | Path,
    *,
    n_train: int = 30,
    n_val: int = 10,
    num_frames: int = 77,
    height: int = 224,
    width: int = 224,
    kine_len: int = 51,
    num_channels: int = 3,
    num_classes: int = 4,
    kind: str = "scenario",
    difficulty: float = 0.0,
    seed: int = 0,
    fmt: str = "pkl",
    progress: bool = True,
) -> dict[str, Path]:
    """Write a toy data set and return its files by name.

    Files: ``video_{split}`` (uint8, (N, 3, T, H, W)), ``kine_{split}``
    (float32, (N, C, L)) and ``label_{split}`` (int64, (N,)) for the splits
    train and val, with suffix `fmt`, and ``classes.json`` naming the classes.  Videos are generated and written clip
    by clip.  The same arguments always give byte-identical files.
    """
    sizes = dict(
        n_train=n_train, n_val=n_val, num_frames=num_frames, height=height, width=width,
        kine_len=kine_len, num_channels=num_channels,
    )
    _validate(kind, fmt, num_classes, difficulty, sizes)
    spec = _Spec(kind, num_frames, height, width, kine_len, num_channels, num_classes, float(difficulty))
    if not 0 <= seed < 2**32:
        raise InputError(f"--seed must be between 0 and {2**32 - 1}, got {seed}")
    split_seeds = np.random.SeedSequence(seed).spawn(len(SPLITS))
    out = Path(out_dir)
    ensure_writable_folder(out)  # before minutes of generating, not after
    written: dict[str, Path] = {}
    for split, n, split_seed in zip(SPLITS, (n_train, n_val), split_seeds):
        written.update(_write_split(out, split, n, spec, fmt, split_seed, progress))
    order = [f"{name}_{split}" for name in ("video", "kine", "label") for split in SPLITS]
    names = CLASS_NAMES if kind == "scenario" else [str(i) for i in range(num_classes)]
    write_json(out / "classes.json", {"classes": names})
    return {name: written[name] for name in order}
