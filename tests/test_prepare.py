"""``dust prepare``: videos and sensor CSVs listed in a manifest to the stages' array files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import numpy as np
import pytest

from dust.cli import main
from dust.data import ingest
from dust.data.ingest import stratified_split
from dust.data.kinematics_io import KinematicsError, read_kinematics
from dust.data.video_io import VideoError, read_clip, sample_indices

CODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"
FPS = 10


def level(i: int) -> int:
    """The grey level of frame ``i`` in the test videos (frame index coded in intensity)."""
    return 20 + 4 * i


def frame_indices(clip: np.ndarray) -> list[int]:
    """The source frame index of each frame of a ``(3, T, H, W)`` clip, from its grey level (lower half: no square)."""
    lower = clip[:, :, clip.shape[2] // 2 :]
    return [round((float(np.median(lower[:, t])) - 20) / 4) for t in range(clip.shape[1])]


def make_video(path: Path, frames: int = 41, *, codec: str = CODEC, height: int = 48, width: int = 64,
               stripes: bool = False, fps: int = FPS, options: dict[str, str] | None = None) -> Path:
    """``frames`` frames at ``fps``: grey at level(i) with a square moving along the top rows.

    ``stripes``: no square, and 8-pixel white bands on the left and right instead.
    """
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # Near-lossless, so that a frame's grey level tells its index.
        quality = {"libx264": {"crf": "0"}, "mpeg4": {"qmin": "1", "qmax": "2"}}.get(codec, {})
        stream.options = {**quality, **(options or {})}
        for i in range(frames):
            image = np.full((height, width, 3), level(i), np.uint8)
            if stripes:
                image[:, :8] = image[:, -8:] = 255
            else:
                x = (3 * i) % (width - 6)
                image[:6, x : x + 6] = 250
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def make_csv(path: Path, rows: int = 50, *, header: str = "time,ax,ay,az", cells=None) -> Path:
    """A sensor CSV at 10 Hz: ax = t, ay = 2t + 1, az = -t (t in seconds)."""
    lines = [header]
    for i in range(rows):
        t = i / 10
        lines.append(",".join(cells(i, t) if cells else [f"{t:.1f}", f"{t:g}", f"{2 * t + 1:g}", f"{-t:g}"]))
    path.write_text("\n".join(lines) + "\n")
    return path


def write_manifest(folder: Path, rows: list[dict[str, object]]) -> Path:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    path = folder / "manifest.csv"
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def dataset(folder: Path, labels: list[str], **extra: object) -> list[dict[str, object]]:
    """One good row per label: clip_k.mp4 (41 + k frames) and clip_k.csv."""
    rows = []
    for k, label in enumerate(labels):
        make_video(folder / f"clip_{k}.mp4", 41 + k)
        make_csv(folder / f"clip_{k}.csv")
        rows.append({"id": f"c{k}", "video": f"clip_{k}.mp4", "kinematics": f"clip_{k}.csv", "label": label, **extra})
    return rows


SMALL = ["--num_frames", "5", "--height", "24", "--width", "32", "--kine_len", "7", "--no_progress"]


def prepare(manifest: Path, out: Path, *flags: str) -> int:
    return main(["prepare", str(manifest), "--out", str(out), *SMALL, *flags])


def read_index(out: Path) -> list[dict[str, str]]:
    with open(out / "index.csv", newline="") as stream:
        return list(csv.DictReader(stream))


# --------------------------------------------------------------------------- outputs


def test_outputs_have_the_stages_shapes_dtypes_and_names(tmp_path, capsys):
    manifest = write_manifest(tmp_path, dataset(tmp_path, ["crash", "normal"] * 4 + ["near"] * 2))
    out = tmp_path / "prepared"
    assert prepare(manifest, out, "--val_fraction", "0.25") == 0
    assert "train" in capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir())
    assert names == ["classes.json", "index.csv", "kine_train.npy", "kine_val.npy", "label_train.npy",
                     "label_val.npy", "prepare.json", "video_train.npy", "video_val.npy"]
    classes = json.loads((out / "classes.json").read_text())["classes"]
    assert classes == ["crash", "near", "normal"]
    n = {split: len(np.load(out / f"label_{split}.npy")) for split in ("train", "val")}
    assert n["train"] + n["val"] == 10
    for split in ("train", "val"):
        video, kine, label = (np.load(out / f"{kind}_{split}.npy") for kind in ("video", "kine", "label"))
        assert video.shape == (n[split], 3, 5, 24, 32) and video.dtype == np.uint8
        assert kine.shape == (n[split], 3, 7) and kine.dtype == np.float32
        assert label.dtype == np.int64 and set(label) <= {0, 1, 2}
    index = read_index(out)
    assert list(index[0]) == ["split", "row", "manifest_row", "id", "video", "kinematics", "label"]
    assert [int(r["manifest_row"]) for r in index] == list(range(1, 11))
    for r in index:  # each index row points at its clip and label
        k = int(r["manifest_row"]) - 1
        assert r["id"] == f"c{k}" and r["video"] == f"clip_{k}.mp4" and r["kinematics"] == f"clip_{k}.csv"
        assert classes[np.load(out / f"label_{r['split']}.npy")[int(r["row"])]] == r["label"]
        clip = np.load(out / f"video_{r['split']}.npy")[int(r["row"])]
        assert frame_indices(clip) == list(sample_indices(41 + k, 5))
    settings = json.loads((out / "prepare.json").read_text())
    assert {k: settings[k] for k in ("num_frames", "height", "width", "resize", "kine_len", "channels")} == {
        "num_frames": 5, "height": 24, "width": 32, "resize": "crop", "kine_len": 7, "channels": ["ax", "ay", "az"]}
    assert settings["source_fps"]["min"] == FPS
    assert not list(tmp_path.glob(".prepared*"))  # no temporary folder left


@pytest.mark.parametrize("suffix, codec", [(".mp4", CODEC), (".avi", "mpeg4"), (".mov", "mpeg4"), (".mkv", "ffv1")])
def test_frames_are_sampled_uniformly_first_and_last_included(tmp_path, suffix, codec):
    path = make_video(tmp_path / f"v{suffix}", 41, codec=codec)
    clip = read_clip(path, 9, 48, 64)
    assert clip.shape == (3, 9, 48, 64) and clip.dtype == np.uint8
    picked = frame_indices(clip)
    assert picked == [0, 5, 10, 15, 20, 25, 30, 35, 40]
    assert list(sample_indices(41, 9)) == picked
    # Not a multiple: still spread evenly, from the first frame to the last.
    picked = frame_indices(read_clip(path, 4, 48, 64))
    assert picked == [0, 13, 27, 40]


def test_start_end_window_picks_frames_and_series_of_that_span(tmp_path):
    path = make_video(tmp_path / "v.mp4", 41)
    clip = read_clip(path, 5, 48, 64, start=1.0, end=3.1)  # frames 10 … 30
    assert frame_indices(clip) == [10, 15, 20, 25, 30]
    make_csv(tmp_path / "k.csv")
    manifest = write_manifest(tmp_path, [
        {"video": "v.mp4", "kinematics": "k.csv", "label": "a", "split": "train", "start": 1.0, "end": 3.1}])
    assert prepare(manifest, tmp_path / "out") == 0
    video = np.load(tmp_path / "out" / "video_train.npy")
    assert frame_indices(video[0]) == [10, 15, 20, 25, 30]
    kine = np.load(tmp_path / "out" / "kine_train.npy")[0]
    t = np.linspace(1.0, 3.1, 7)
    np.testing.assert_allclose(kine, np.stack([t, 2 * t + 1, -t]), atol=1e-5)


@pytest.mark.parametrize("suffix, codec, options", [
    (".mp4", CODEC, {"crf": "4"} if CODEC == "libx264" else {}),  # x264 makes no B-frames when lossless
    (".avi", "mpeg4", {}),
])
def test_windows_deep_in_a_video_with_b_frames_pick_the_right_frames(tmp_path, suffix, codec, options):
    # Key frames every 12 frames and B-frames: reading from 1.2 s on seeks, and AVI starts its frames at 1.
    path = make_video(tmp_path / f"v{suffix}", 55, codec=codec, fps=25, options={"g": "12", "bf": "2", **options})
    with av.open(str(path)) as container:
        assert any(p.pts != p.dts for p in container.demux(video=0) if p.size)  # frames stored out of order
    clip = read_clip(path, 5, 48, 64, start=1.2, end=2.0)  # frames 30 … 49
    assert frame_indices(clip) == [30, 35, 40, 44, 49]


def test_window_past_the_end_or_too_few_frames_is_too_short(tmp_path):
    path = make_video(tmp_path / "v.mp4", 20)
    with pytest.raises(VideoError, match="too short"):
        read_clip(path, 5, 48, 64, start=1.0, end=4.0)
    with pytest.raises(VideoError, match="too short: the video has 20 frames"):
        read_clip(path, 32, 48, 64)
    repeated = read_clip(path, 39, 48, 64, allow_repeats=True)  # the policy that fills in instead
    assert frame_indices(repeated)[:4] == [0, 1, 1, 2]


def test_centre_crop_keeps_the_aspect_and_stretch_keeps_everything(tmp_path):
    path = make_video(tmp_path / "v.mp4", 3, stripes=True)  # 48 x 64, 8-pixel white bands left and right
    cropped = read_clip(path, 1, 32, 24, "crop")[:, 0]
    stretched = read_clip(path, 1, 32, 24, "stretch")[:, 0]
    assert cropped.shape == stretched.shape == (3, 32, 24)
    # Crop: 48 x 64 scales to 32 x 43 (aspect kept) and loses 9 + 10 columns: source columns 13.5 - 50.5, all grey.
    assert np.abs(cropped.astype(int) - level(0)).max() <= 3
    # Stretch: 64 columns squeezed into 24, the bands (3 columns each) stay.
    assert stretched[:, :, :2].min() > 240 and stretched[:, :, -2:].min() > 240
    assert np.abs(stretched[:, :, 5:-5].astype(int) - level(0)).max() <= 3


# --------------------------------------------------------------------------- kinematics


def test_kinematics_are_linearly_interpolated_over_their_span(tmp_path):
    # Uneven sampling: a linear signal must come back exact at the evenly spaced output times.
    times = np.array([0.0, 0.05, 0.3, 0.35, 0.9, 1.2, 2.0])
    path = tmp_path / "k.csv"
    path.write_text("Time,speed\n" + "".join(f"{t},{3 * t - 1}\n" for t in times))
    series, names = read_kinematics(path, 9)
    assert names == ["speed"] and series.dtype == np.float32 and series.shape == (1, 9)
    np.testing.assert_allclose(series[0], 3 * np.linspace(0, 2, 9) - 1, atol=1e-6)
    # Milliseconds and a window.
    path.write_text("time,speed\n" + "".join(f"{1000 * t},{3 * t - 1}\n" for t in times))
    series, _ = read_kinematics(path, 5, start=0.5, end=1.5, time_scale=0.001)
    np.testing.assert_allclose(series[0], 3 * np.linspace(0.5, 1.5, 5) - 1, atol=1e-6)
    # No time column: rows evenly spaced, over the whole video when a window needs times.
    path.write_text("a\n" + "".join(f"{2 * i}\n" for i in range(11)))
    np.testing.assert_allclose(read_kinematics(path, 6)[0][0], np.linspace(0, 20, 6), atol=1e-6)
    np.testing.assert_allclose(read_kinematics(path, 3, start=1.0, end=3.0, duration=5.5)[0][0], [4, 8, 12],
                               atol=1e-5)


def test_timed_rows_are_resampled_over_the_video_not_over_the_csv(tmp_path):
    # A logger that starts 2 s before the camera and stops 3 s after it.
    path = tmp_path / "k.csv"
    path.write_text("time,speed\n" + "".join(f"{t},{t}\n" for t in np.arange(-2.0, 13.5, 0.5)))
    np.testing.assert_allclose(read_kinematics(path, 6, duration=10.0)[0][0], [0, 2, 4, 6, 8, 10], atol=1e-6)
    np.testing.assert_allclose(read_kinematics(path, 3)[0][0], [-2, 5.5, 13], atol=1e-6)  # duration unknown
    with pytest.raises(KinematicsError, match="not the video's 0–20 s"):
        read_kinematics(path, 6, duration=20.0)


def test_channels_are_chosen_by_name_and_text_columns_are_not_channels(tmp_path):
    path = make_csv(tmp_path / "k.csv", 41, header="time,ax,note,ay,az",
                    cells=lambda i, t: [f"{t:.1f}", f"{t:g}", "ok", f"{2 * t + 1:g}", f"{-t:g}"])
    series, names = read_kinematics(path, 4)
    assert names == ["ax", "ay", "az"]
    series, names = read_kinematics(path, 4, channels=["az", "ax"])
    t = np.linspace(0, 4.0, 4)
    assert names == ["az", "ax"]
    np.testing.assert_allclose(series, np.stack([-t, t]), atol=1e-6)
    make_video(tmp_path / "v.mp4")
    manifest = write_manifest(tmp_path, [{"video": "v.mp4", "kinematics": "k.csv", "split": "test"}])
    assert prepare(manifest, tmp_path / "out", "--channels", "az,ax") == 0
    assert json.loads((tmp_path / "out" / "prepare.json").read_text())["channels"] == ["az", "ax"]
    t = np.minimum(np.linspace(0, 4.1, 7), 4.0)  # over the 4.1 s video; the last row is at 4.0 s
    np.testing.assert_allclose(np.load(tmp_path / "out" / "kine_test.npy")[0], np.stack([-t, t]), atol=1e-6)


# --------------------------------------------------------------------------- splits and labels


def test_stratified_split_is_reproducible_per_seed_and_puts_every_class_in_both():
    labels = [0] * 10 + [1] * 5 + [2] * 2 + [3]
    first = stratified_split(labels, 0.2, seed=7)
    assert first == stratified_split(labels, 0.2, seed=7)
    assert any(stratified_split(labels, 0.2, seed=s) != first for s in range(8, 12))
    for c in (0, 1, 2):
        assert {split for split, label in zip(first, labels) if label == c} == {"train", "val"}
    assert first[-1] == "train"  # a class with one row cannot be in both
    assert sum(s == "val" for s, label in zip(first, labels) if label == 0) == 2
    assert stratified_split(labels, 0.0, seed=7) == ["train"] * len(labels)


def test_given_splits_numeric_labels_and_unlabelled_rows(tmp_path):
    rows = dataset(tmp_path, ["2", "0", "2", "0", "", ""])
    for row, split in zip(rows, ["train", "val", "val", "train", "", "test"]):
        row["split"] = split
    rows[5]["label"] = "0"  # test: one labelled, one not
    out = tmp_path / "out"
    assert prepare(write_manifest(tmp_path, rows), out) == 0
    assert json.loads((out / "classes.json").read_text())["classes"] == ["0", "1", "2"]  # numeric: indices
    assert list(np.load(out / "label_train.npy")) == [2, 0]
    assert list(np.load(out / "label_val.npy")) == [0, 2]
    assert list(np.load(out / "label_test.npy")) == [-1, 0]  # the unlabelled row without a split goes to test
    # No labels at all: everything without a split is test, and no label file.
    rows = dataset(tmp_path, [""] * 3)
    for row in rows:
        del row["label"]
    assert prepare(write_manifest(tmp_path, rows), tmp_path / "unlabelled") == 0
    assert sorted(p.name for p in (tmp_path / "unlabelled").glob("*.npy")) == ["kine_test.npy", "video_test.npy"]
    assert json.loads((tmp_path / "unlabelled" / "classes.json").read_text())["classes"] == []


def test_a_numeric_label_implying_too_many_classes_is_refused(tmp_path, capsys):
    manifest = write_manifest(tmp_path, dataset(tmp_path, ["0", "100000"], split="train"))
    assert prepare(manifest, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"dust: error: {manifest}: label 100000 would make 100001 classes; give --classes (names in index "
                   f"order) if that is meant")
    assert not (tmp_path / "out").exists()


def test_classes_flag_fixes_the_order_and_maps_numbers(tmp_path):
    rows = dataset(tmp_path, ["b", "a", "2"], split="train")
    out = tmp_path / "out"
    assert prepare(write_manifest(tmp_path, rows), out, "--classes", "c,b,a") == 0
    assert json.loads((out / "classes.json").read_text())["classes"] == ["c", "b", "a"]
    assert list(np.load(out / "label_train.npy")) == [1, 2, 2]


# --------------------------------------------------------------------------- bad inputs


def _bad_video(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4000))


BAD_ROWS = {
    "missing video": (lambda d: (d / "clip_2.mp4").unlink(), "video clip_2.mp4: no such file"),
    "missing csv": (lambda d: (d / "clip_2.csv").unlink(), "kinematics clip_2.csv: no such file"),
    "garbage video": (lambda d: _bad_video(d / "clip_2.mp4"), "cannot open as a video"),
    "empty video": (lambda d: (d / "clip_2.mp4").write_bytes(b""), "video clip_2.mp4"),
    "too short": (lambda d: make_video(d / "clip_2.mp4", 3), "too short"),
    "non-numeric": (lambda d: make_csv(d / "clip_2.csv", cells=lambda i, t: [f"{t}", "x" if i == 4 else "1", "1", "1"]),
                    "non-numeric cell 'x' in column 'ax', line 6"),
    "nan": (lambda d: make_csv(d / "clip_2.csv", cells=lambda i, t: [f"{t}", "1", "nan" if i == 3 else "1", "1"]),
            "non-finite value 'nan' in column 'ay'"),
    "inf": (lambda d: make_csv(d / "clip_2.csv", cells=lambda i, t: [f"{t}", "1", "1", "-inf"]), "non-finite"),
    "too few rows": (lambda d: make_csv(d / "clip_2.csv", 1), "too few rows"),
    "channel count": (lambda d: make_csv(d / "clip_2.csv", header="time,ax,ay,az,speed",
                                         cells=lambda i, t: [f"{t}", "1", "1", "1", "9"]), "4 channels"),
    "unknown label": (None, "label 'nope' is not one of the classes"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_each_bad_row_stops_with_one_line_and_writes_nothing(tmp_path, capsys, case):
    spoil, expected = BAD_ROWS[case]
    rows = dataset(tmp_path, ["a", "b", "a", "b"], split="train")
    if spoil is None:
        rows[2]["label"] = "nope"
    else:
        spoil(tmp_path)
    out = tmp_path / "out"
    flags = ["--classes", "a,b"] if case == "unknown label" else []
    assert prepare(write_manifest(tmp_path, rows), out, *flags) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("dust: error: manifest row 3 (id c2): ") and expected in err, err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_several_bad_rows_each_get_a_line(tmp_path, capsys):
    rows = dataset(tmp_path, ["a", "b", "a", "b"])
    (tmp_path / "clip_0.mp4").unlink()
    make_csv(tmp_path / "clip_3.csv", 1)
    assert prepare(write_manifest(tmp_path, rows), tmp_path / "out") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(": ")[2] for line in lines[:2]] == ["manifest row 1 (id c0)", "manifest row 4 (id c3)"]
    assert "2 bad manifest rows" in lines[2] and len(lines) == 3


def test_skip_bad_lists_the_skipped_rows_and_goes_on(tmp_path, capsys):
    rows = dataset(tmp_path, ["a", "b"] * 3)
    (tmp_path / "clip_1.mp4").unlink()
    make_csv(tmp_path / "clip_4.csv", cells=lambda i, t: [f"{t}", "1", "1", "oops"])
    out = tmp_path / "out"
    assert prepare(write_manifest(tmp_path, rows), out, "--skip_bad") == 0
    assert capsys.readouterr().err.count("skipping manifest row") == 2
    with open(out / "skipped.csv", newline="") as stream:
        skipped = list(csv.DictReader(stream))
    assert [(s["manifest_row"], s["id"]) for s in skipped] == [("2", "c1"), ("5", "c4")]
    assert skipped[0]["problem"] == "video clip_1.mp4: no such file"
    assert skipped[1]["problem"] == "kinematics clip_4.csv: column 'az' holds no numbers (e.g. 'oops')"
    assert sorted(int(r["manifest_row"]) for r in read_index(out)) == [1, 3, 4, 6]
    assert json.loads((out / "prepare.json").read_text())["skipped"] == 2


def test_a_row_failing_only_while_decoding_is_dropped_from_its_arrays(tmp_path, monkeypatch, capsys):
    rows = dataset(tmp_path, ["a"] * 4, split="train")
    real = ingest.read_clip

    def flaky(path, *args, **kwargs):
        if Path(path).name == "clip_1.mp4":
            raise VideoError("decoding stopped early: got 2 of the 5 frames")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ingest, "read_clip", flaky)
    manifest = write_manifest(tmp_path, rows)
    assert prepare(manifest, tmp_path / "strict") == 2
    assert "manifest row 2 (id c1): video clip_1.mp4: decoding stopped early" in capsys.readouterr().err
    assert not (tmp_path / "strict").exists()
    out = tmp_path / "out"
    assert prepare(manifest, out, "--skip_bad") == 0
    video = np.load(out / "video_train.npy")
    assert video.shape[0] == 3 and len(np.load(out / "kine_train.npy")) == 3
    assert [(r["row"], r["manifest_row"]) for r in read_index(out)] == [("0", "1"), ("1", "3"), ("2", "4")]
    assert [frame_indices(clip)[-1] for clip in video] == [40, 42, 43]  # last frame of clips 0, 2, 3


def test_out_folder_must_be_new_unless_overwriting_an_earlier_prepare(tmp_path, capsys):
    manifest = write_manifest(tmp_path, dataset(tmp_path, ["a", "b"], split="train"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert prepare(manifest, other) == 2 and prepare(manifest, other, "--overwrite") == 2
    assert (other / "keep.txt").read_text() == "mine"
    out = tmp_path / "out"
    assert prepare(manifest, out) == 0
    assert prepare(manifest, out) == 2 and "--overwrite" in capsys.readouterr().err
    assert prepare(manifest, out, "--overwrite", "--kine_len", "4") == 0
    assert np.load(out / "kine_train.npy").shape == (2, 3, 4)


def test_two_workers_write_the_same_files_as_one(tmp_path):
    rows = dataset(tmp_path, ["a", "b", "c"] * 3)
    (tmp_path / "clip_4.csv").unlink()
    manifest = write_manifest(tmp_path, rows)
    prepare(manifest, tmp_path / "one", "--workers", "1", "--skip_bad")
    prepare(manifest, tmp_path / "two", "--workers", "2", "--skip_bad")
    one = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert one == sorted(p.name for p in (tmp_path / "two").iterdir()) and "skipped.csv" in one
    for name in one:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_a_split_without_validation_rows_is_warned_about_and_refused_by_run(tmp_path, capsys):
    rows = dataset(tmp_path, ["a", "b", "c"])  # one clip per class: none can go to val
    out = tmp_path / "out"
    assert prepare(write_manifest(tmp_path, rows), out) == 0
    assert "no validation rows" in capsys.readouterr().err
    assert not (out / "video_val.npy").exists()
    assert main(["run", "--prepared", str(out), "--workdir", str(tmp_path / "run")]) == 2
    assert f"{out}: no validation split (video_val.npy)" in capsys.readouterr().err
