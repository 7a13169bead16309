"""Toy driving data: shapes, determinism, balance, and cues that are really there."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dust.data import generate_toy_data, load_array, make_kinematics, render_video

SMALL = dict(n_train=48, n_val=8, num_frames=16, height=32, width=32, kine_len=51, progress=False)
NAMES = ["video_train", "video_val", "kine_train", "kine_val", "label_train", "label_val"]


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    paths = generate_toy_data(tmp_path_factory.mktemp("toy"), seed=7, **SMALL)
    return {name: np.asarray(load_array(path)) for name, path in paths.items()}


def _dark_growth(videos: np.ndarray) -> np.ndarray:
    """Per clip: dark-pixel fraction in the lower centre, last frame minus first frame."""
    grey = videos.astype(np.float32).mean(axis=1)  # (N, T, H, W)
    n, frames, height, width = grey.shape
    threshold = 0.6 * np.median(grey.reshape(n, frames, -1), axis=2)[:, :, None, None]
    region = grey[:, :, height // 2 :, width // 4 : 3 * width // 4]
    dark = (region < threshold).mean(axis=(2, 3))
    return dark[:, -1] - dark[:, 0]


def test_files_shapes_and_dtypes(tmp_path: Path) -> None:
    paths = generate_toy_data(tmp_path, n_train=5, n_val=3, num_frames=4, height=20, width=24,
                              kine_len=9, num_channels=4, progress=False)
    assert list(paths) == NAMES
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{name}.pkl" for name in NAMES] + ["classes.json"])
    assert json.loads((tmp_path / "classes.json").read_text()) == {"classes": ["baseline", "braking", "conflict",
                                                                               "near_crash"]}
    expected = {
        "video_train": ((5, 3, 4, 20, 24), np.uint8),
        "video_val": ((3, 3, 4, 20, 24), np.uint8),
        "kine_train": ((5, 4, 9), np.float32),
        "kine_val": ((3, 4, 9), np.float32),
        "label_train": ((5,), np.int64),
        "label_val": ((3,), np.int64),
    }
    for name, (shape, dtype) in expected.items():
        array = load_array(paths[name])
        assert (array.shape, array.dtype) == (shape, dtype), name


@pytest.mark.parametrize("fmt", ["pkl", "npy", "npz"])
def test_same_seed_gives_identical_files(tmp_path: Path, fmt: str) -> None:
    small = dict(n_train=4, n_val=2, num_frames=3, height=16, width=16, fmt=fmt, progress=False)
    first = generate_toy_data(tmp_path / "a", seed=3, **small)
    second = generate_toy_data(tmp_path / "b", seed=3, **small)
    assert all(first[name].read_bytes() == second[name].read_bytes() for name in NAMES)
    other = generate_toy_data(tmp_path / "c", seed=4, **small)
    for name in ("video_train", "kine_train"):
        assert not np.array_equal(load_array(first[name]), load_array(other[name]))


def test_train_and_val_differ(small_set: dict[str, np.ndarray]) -> None:
    count = len(small_set["video_val"])
    assert not np.array_equal(small_set["video_train"][:count], small_set["video_val"])
    assert not np.array_equal(small_set["kine_train"][:count], small_set["kine_val"])


def test_labels_are_balanced(small_set: dict[str, np.ndarray]) -> None:
    for split in ("train", "val"):
        counts = np.bincount(small_set[f"label_{split}"], minlength=4)
        assert counts.max() - counts.min() <= 1
    labels = small_set["label_train"]
    assert not np.array_equal(labels, np.sort(labels))  # shuffled


def test_video_shows_conflict_but_not_brake(small_set: dict[str, np.ndarray]) -> None:
    labels = small_set["label_train"]
    conflict, brake = labels // 2, labels % 2
    predicted = _dark_growth(small_set["video_train"]) > 0.2
    assert (predicted == conflict).mean() >= 0.95
    assert 0.35 <= (predicted == brake).mean() <= 0.65


def test_kinematics_show_brake_but_not_conflict(small_set: dict[str, np.ndarray]) -> None:
    labels = small_set["label_train"]
    conflict, brake = labels // 2, labels % 2
    predicted = small_set["kine_train"][:, 0].min(axis=1) < -0.26
    assert (predicted == brake).mean() >= 0.95
    assert 0.35 <= (predicted == conflict).mean() <= 0.65


def test_difficulty_weakens_the_cues() -> None:
    def accuracy(difficulty: float) -> float:
        rng = np.random.default_rng(11)
        brake = np.arange(40) % 2 == 1
        lows = np.array([make_kinematics(rng, b, 3, 51, difficulty)[0].min() for b in brake])
        return float(((lows < -0.26) == brake).mean())

    assert accuracy(0.0) > accuracy(1.0)


def test_tiny_sizes_work(tmp_path: Path) -> None:
    paths = generate_toy_data(tmp_path, n_train=4, n_val=1, num_frames=1, height=16, width=16,
                              kine_len=1, num_channels=1, fmt="npy", progress=False)
    assert load_array(paths["video_train"]).shape == (4, 3, 1, 16, 16)
    assert load_array(paths["kine_val"]).shape == (1, 1, 1)
    rng = np.random.default_rng(0)
    assert render_video(rng, True, 1, 16, 16).shape == (3, 1, 16, 16)
    assert make_kinematics(rng, True, 1, 1).shape == (1, 1)


def test_clip_functions_return_the_documented_types() -> None:
    rng = np.random.default_rng(5)
    video = render_video(rng, False, 5, 24, 40, difficulty=0.5)
    assert (video.shape, video.dtype) == ((3, 5, 24, 40), np.uint8)
    assert video.std() > 10  # a scene, not a flat image
    kine = make_kinematics(rng, False, 6, 30)
    assert (kine.shape, kine.dtype) == ((6, 30), np.float32)
    assert np.abs(kine).max() < 1.0


def test_noise_kind_with_three_classes(tmp_path: Path) -> None:
    paths = generate_toy_data(tmp_path, n_train=9, n_val=3, num_frames=2, height=16, width=16,
                              num_classes=3, kind="noise", fmt="npz", progress=False)
    assert np.array_equal(np.bincount(load_array(paths["label_train"])), [3, 3, 3])
    video = load_array(paths["video_train"])
    assert (video.shape, video.dtype) == ((9, 3, 2, 16, 16), np.uint8)
    assert load_array(paths["kine_val"]).dtype == np.float32


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (dict(num_classes=3), "exactly 4 classes"),
        (dict(kind="noise", num_classes=1), "at least 2"),
        (dict(kind="movie"), "kind"),
        (dict(fmt="csv"), "fmt"),
        (dict(difficulty=1.5), "difficulty"),
        (dict(height=0), "height"),
        (dict(n_val=0), "--n_val must be at least 1"),
    ],
)
def test_invalid_arguments(tmp_path: Path, arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_toy_data(tmp_path, progress=False, **arguments)
    assert not list(tmp_path.iterdir())


def test_progress_bar_goes_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate_toy_data(tmp_path, n_train=2, n_val=1, num_frames=1, height=16, width=16, progress=True)
    captured = capsys.readouterr()
    assert "clips" in captured.err
    assert captured.out == ""
