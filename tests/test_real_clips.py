"""Video files and CSVs in, predictions and reports out: prepare -> run --prepared -> evaluate / predict."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from test_prepare import make_csv, make_video, write_manifest

from dust.cli import main
from dust.data.arrays import load_array

PREPARE = ["--num_frames", "4", "--height", "32", "--width", "32", "--kine_len", "19", "--no_progress"]
RUN = ["--no_progress", "--num_epochs", "1", "--print_every", "1", "--batch_size", "4"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A manifest of 10 clips (8 train/val, 2 test), prepared and trained on."""
    root = tmp_path_factory.mktemp("clips")
    rows = []
    for k in range(10):
        make_video(root / f"clip_{k}.mp4", 30 + k)
        make_csv(root / f"clip_{k}.csv", 40)
        row = {"id": f"c{k}", "video": f"clip_{k}.mp4", "kinematics": f"clip_{k}.csv",
               "label": "crash" if k % 2 else "baseline", "split": "test" if k >= 8 else ""}
        rows.append(row)
    manifest = write_manifest(root, rows)
    assert main(["prepare", str(manifest), "--out", str(root / "prepared"), "--val_fraction", "0.5", *PREPARE]) == 0
    config = root / "tiny.yaml"
    config.write_text("train_video: {model_preset: nano}\ntrain_ts: {model_preset: nano}\n")
    assert main(["run", "--prepared", str(root / "prepared"), "--workdir", str(root / "run"), "--config", str(config),
                 *RUN]) == 0
    return root


def test_run_on_prepared_clips_keeps_class_names(finished):
    run = json.loads((finished / "run" / "run.json").read_text())
    assert set(run["data"]) == {"train", "val", "test"}
    from dust.checkpoint import load_checkpoint

    fused = load_checkpoint(finished / "run" / "saved_models" / "step_fusion" / "final_fusion.pth")
    assert fused.meta["class_names"] == ["baseline", "crash"]
    assert fused.meta["ingest"]["num_frames"] == 4 and fused.meta["ingest"]["channels"] == ["ax", "ay", "az"]


def test_run_on_prepared_clips_trains_at_their_size(finished):
    from dust.checkpoint import load_checkpoint

    video = load_checkpoint(finished / "run" / "saved_models" / "step_3d" / "final_3d.pth")
    series = load_checkpoint(finished / "run" / "saved_models" / "step_1d" / "final_1d.pth")
    assert video.meta["video_transform"]["size"] == [4, 32, 32]  # not the seed's 77x224x224
    assert series.config["seq_len"] == 19 and series.config["in_chans"] == 3  # not the seed's 51


def test_a_run_going_on_without_prepared_keeps_its_data_and_sizes(finished, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished / "run", run)
    config = finished / "tiny.yaml"
    assert main(["run", "--workdir", str(run), "--config", str(config), "--stages", "train-ts", "--overwrite",
                 *RUN]) == 0
    from dust.checkpoint import load_checkpoint

    assert load_checkpoint(run / "saved_models" / "step_1d" / "final_1d.pth").config["seq_len"] == 19
    record = json.loads((run / "run.json").read_text())
    assert record["prepared"] == str((finished / "prepared").resolve()) and set(record["data"]) == {"train", "val",
                                                                                                      "test"}
    assert record["data"]["train"]["kine"] == str((finished / "prepared" / "kine_train.npy").resolve())


def test_evaluate_on_the_test_split(finished, capsys):
    out = finished / "report"
    assert main(["evaluate", "--run", str(finished / "run"), "--split", "test", "--out", str(out),
                 "--no_progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert sum(report["models"]["fusion"]["support"]) == 2
    assert "fusion" in capsys.readouterr().out


def test_predict_files_like_training_data(finished):
    from dust import Predictor

    predictor = Predictor.from_run(finished / "run")
    prepared = finished / "prepared"
    video, kine = load_array(prepared / "video_test.npy"), load_array(prepared / "kine_test.npy")
    with open(prepared / "index.csv", newline="") as f:
        first_test = next(r for r in csv.DictReader(f) if r["split"] == "test" and r["row"] == "0")
    from_files = predictor.predict_proba(finished / first_test["video"], finished / first_test["kinematics"])
    from_arrays = predictor.predict_proba(video[0], kine[0])
    np.testing.assert_allclose(from_files, from_arrays, atol=1e-6)


def test_predict_manifest_to_csv_and_json(finished):
    manifest = write_manifest(finished, [{"id": "new", "video": "clip_9.mp4", "kinematics": "clip_9.csv"}])
    out = finished / "preds.csv"
    assert main(["predict", "--run", str(finished / "run"), "--manifest", str(manifest), "--out", str(out)]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "prediction", "p_baseline", "p_crash"]
    assert rows[0]["id"] == "new" and rows[0]["prediction"] in ("baseline", "crash")
    assert abs(float(rows[0]["p_baseline"]) + float(rows[0]["p_crash"]) - 1) < 1e-5
    out_json = finished / "preds.json"
    assert main(["predict", "--run", str(finished / "run"), "--video", str(finished / "clip_9.mp4"),
                 "--kinematics", str(finished / "clip_9.csv"), "--format", "json", "--out", str(out_json)]) == 0
    assert json.loads(out_json.read_text())[0]["prediction"] in ("baseline", "crash")


def test_predict_reads_a_manifest_as_prepare_does(finished, capsys):
    # Excel's "CSV UTF-8" starts with a byte-order mark; headers in any case, no id column.
    manifest = finished / "excel.csv"
    manifest.write_text("Video,Kinematics\nclip_9.mp4,clip_9.csv\n", encoding="utf-8-sig")
    out = finished / "excel_preds.csv"
    assert main(["predict", "--run", str(finished / "run"), "--manifest", str(manifest), "--out", str(out)]) == 0
    with open(out, newline="") as f:
        assert next(csv.DictReader(f))["id"] == "clip_9.mp4"  # the video path, as in `dust prepare`'s index
    manifest.write_text("video,kinematics,end\nclip_9.mp4,clip_9.csv,soon\n")
    assert main(["predict", "--run", str(finished / "run"), "--manifest", str(manifest)]) == 2
    assert "excel.csv: manifest row 1 (id clip_9.mp4): end 'soon'" in capsys.readouterr().err
    # a training manifest's val rows may lack labels; any other problem of such a row still stops
    manifest.write_text("id,video,kinematics,split\na,clip_9.mp4,clip_9.csv,val\na,clip_9.mp4,clip_9.csv,val\n")
    assert main(["predict", "--run", str(finished / "run"), "--manifest", str(manifest)]) == 2
    assert "manifest row 2 (id a): id 'a' repeats manifest row 1" in capsys.readouterr().err
    manifest.write_text("id,video,kinematics,split\na,clip_9.mp4,clip_9.csv,val\n")
    assert main(["predict", "--run", str(finished / "run"), "--manifest", str(manifest), "--out", str(out)]) == 0


def test_predict_reports_a_broken_video_in_one_line(finished, capsys):
    (finished / "broken.mp4").write_bytes(b"not a video")
    code = main(["predict", "--run", str(finished / "run"), "--video", str(finished / "broken.mp4"),
                 "--kinematics", str(finished / "clip_0.csv")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "broken.mp4" in err
