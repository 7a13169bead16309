"""The four stages on tiny data, through the CLI and the seed's scripts."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_in

from dust.checkpoint import load_checkpoint
from dust.cli import main
from dust.data.arrays import load_array
from dust.data.datasets import VideoTransform

ROOT = Path(__file__).resolve().parents[1]
TINY_DATA = ["--n_train", "8", "--n_val", "4", "--num_frames", "4", "--height", "32", "--width", "32",
             "--kine_len", "19", "--format", "npy", "--no_progress"]
VIDEO = ["--model_preset", "nano", "--num_frames", "4", "--height", "32", "--width", "32", "--batch_size", "4",
         "--no_progress"]
TS = ["--model_preset", "nano", "--num_frames", "19", "--batch_size", "4", "--no_progress"]


def _data_flags(kind: str) -> list[str]:
    flags = ["--path_label_train", "data/label_train.npy", "--path_label_val", "data/label_val.npy"]
    if kind == "video":
        return flags + ["--path_video_train", "data/video_train.npy", "--path_video_val", "data/video_val.npy"]
    return flags + ["--path_kine_train", "data/kine_train.npy", "--path_kine_val", "data/kine_val.npy"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A folder in which all four stages ran once, through the CLI."""
    work = tmp_path_factory.mktemp("run")
    old = os.getcwd()
    os.chdir(work)
    try:
        assert main(["gen-data", *TINY_DATA]) == 0
        assert main(["train-video", *VIDEO, *_data_flags("video"), "--num_epochs", "2", "--print_every", "1"]) == 0
        assert main(["train-ts", *TS, *_data_flags("ts"), "--num_epochs", "3"]) == 0
        assert main(["extract-features", "--path_video_train", "data/video_train.npy", "--path_video_val",
                     "data/video_val.npy", "--no_progress"]) == 0
        assert main(["train-fusion", *_data_flags("ts"), "--num_epochs", "2", "--batch_size", "4", "--no_progress"]) == 0
    finally:
        os.chdir(old)
    return work


def test_every_stage_writes_its_artefacts(trained):
    for folder, final in (("step_3d", "final_3d.pth"), ("step_1d", "final_1d.pth"), ("step_fusion", "final_fusion.pth")):
        for name in ("best.pth", "last.pth", final):
            assert (trained / "saved_models" / folder / name).is_file(), (folder, name)
        history = json.loads((trained / "logs" / f"{folder}_history.json").read_text())
        assert history["history"] and history["best"]["epoch"] >= 1
        assert set(history["history"][0]) == {"epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1",
                                              "val_count"}
        assert all(row["val_count"] == 4 for row in history["history"])  # every validation clip, once
        assert (trained / "logs" / f"{folder}_history.csv").read_text().startswith("epoch,train_loss")
    assert len(json.loads((trained / "logs" / "step_1d_history.json").read_text())["history"]) == 3
    ckpt = load_checkpoint(trained / "saved_models" / "step_3d" / "final_3d.pth", expect="video")
    assert ckpt.preset == "nano" and ckpt.meta["video_transform"]["size"] == [4, 32, 32]


def test_features_keep_input_order(trained):
    features = load_array(trained / "video_features" / "train_3d_features.pkl")
    ckpt = load_checkpoint(trained / "saved_models" / "step_3d" / "final_3d.pth")
    model = ckpt.build()
    video = np.load(trained / "data" / "video_train.npy")
    transform = VideoTransform(**ckpt.meta["video_transform"])
    with torch.no_grad():
        direct = model.forward_features(torch.stack([transform(clip) for clip in video])).numpy()
    assert features.dtype == np.float32 and features.shape == (8, model.feature_dim)
    np.testing.assert_allclose(features, direct, atol=1e-5)
    sidecar = json.loads((trained / "video_features" / "train_3d_features.json").read_text())
    assert sidecar["preset"] == "nano" and sidecar["rows"] == 8 and sidecar["feature_dim"] == model.feature_dim


def test_fusion_backbone_starts_from_stage2(trained):
    fused = load_checkpoint(trained / "saved_models" / "step_fusion" / "final_fusion.pth", expect="fusion")
    assert fused.config["video_feature_dim"] == 192
    assert fused.meta["ts_checkpoint"].endswith("final_1d.pth")



def test_fusion_starts_from_a_model_saved_with_test_time_views(trained, tmp_path):
    ts_out = tmp_path / "ts"
    assert run_in(trained, ["train-ts", *TS, *_data_flags("ts"), "--num_epochs", "1", "--test_shift", "0.1",
                            "--outpath", str(ts_out), "--logpath", str(tmp_path / "logs")]) == 0
    assert load_checkpoint(ts_out / "final_1d.pth", expect="ts").config["test_shift"] == 0.1
    assert run_in(trained, ["train-fusion", *_data_flags("ts"), "--ts_checkpoint", str(ts_out / "final_1d.pth"),
                            "--num_epochs", "1", "--batch_size", "4", "--outpath", str(tmp_path / "fused"),
                            "--logpath", str(tmp_path / "logs"), "--no_progress"]) == 0
    assert (tmp_path / "fused" / "final_fusion.pth").is_file()


def test_fusion_refuses_misaligned_features(trained, capsys, tmp_path):
    short = tmp_path / "short.npy"
    np.save(short, load_array(trained / "video_features" / "train_3d_features.pkl")[:-1])
    code = run_in(trained, ["train-fusion", *_data_flags("ts"), "--path_feature_train", str(short),
                         "--num_epochs", "1", "--outpath", str(tmp_path / "out"), "--no_progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "short.npy: 7 feature rows but data/kine_train.npy has 8 clips" in err
    assert not (tmp_path / "out").exists()


def test_fusion_refuses_wrong_width_features(trained, capsys, tmp_path):
    wide = tmp_path / "wide.npy"
    np.save(wide, np.zeros((4, 1024), np.float32))
    code = run_in(trained, ["train-fusion", *_data_flags("ts"), "--path_feature_val", str(wide),
                         "--num_epochs", "1", "--outpath", str(tmp_path / "out"), "--no_progress"])
    assert code == 2
    assert "wide.npy: 1024 wide" in capsys.readouterr().err


def test_preset_must_agree_with_checkpoint(trained, capsys, tmp_path):
    code = run_in(trained, ["extract-features", "--model_preset", "paper", "--path_video_train", "data/video_train.npy",
                         "--path_video_val", "data/video_val.npy", "--path_feature_train", str(tmp_path / "f.npy"),
                         "--path_feature_val", str(tmp_path / "g.npy"), "--no_progress"])
    assert code == 2
    assert "holds preset 'nano', --model_preset says 'paper'" in capsys.readouterr().err
    assert not (tmp_path / "f.npy").exists()


def test_unsafe_pickle_is_refused_by_a_stage(trained, tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "labels.pkl"
    bad.write_bytes(pickle.dumps(Exploit()))
    code = run_in(trained, ["train-ts", *TS, *_data_flags("ts"), "--path_label_train", str(bad), "--num_epochs", "1",
                         "--outpath", str(tmp_path / "out")])
    assert code == 2
    assert "labels.pkl" in capsys.readouterr().err
    assert not marker.exists()


def test_config_file_and_flag_override(trained, tmp_path):
    config = tmp_path / "ts.yaml"
    config.write_text("num_epochs: 1\nprint_every: 1\nseed: 5\nmodel_preset: nano\n")
    out, logs = tmp_path / "out", tmp_path / "logs"
    argv = ["train-ts", "--config", str(config), *_data_flags("ts"), "--num-frames", "19", "--batch-size", "4",
            "--outpath", str(out), "--logpath", str(logs), "--no-progress"]
    assert run_in(trained, argv) == 0
    assert len(json.loads((logs / "step_1d_history.json").read_text())["history"]) == 1
    assert run_in(trained, [*argv, "--num_epochs", "2"]) == 2  # a finished run is never silently replaced
    assert run_in(trained, [*argv, "--num_epochs", "2", "--overwrite"]) == 0
    assert len(json.loads((logs / "step_1d_history.json").read_text())["history"]) == 2


def test_unknown_config_setting_is_refused(trained, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("num_epoch: 1\n")
    assert run_in(trained, ["train-ts", "--config", str(config)]) == 2
    assert "bad.yaml: unknown setting(s) for `dust train-ts`: num_epoch" in capsys.readouterr().err


def test_run_refuses_a_misspelled_setting_in_a_stage_section(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("num_epochs: 1\ntrain_video:\n  batch_size: 2\n  bach_size: 4\n")
    assert main(["run", "--workdir", str(tmp_path / "w"), "--config", str(config)]) == 2
    assert "run.yaml: unknown setting(s) for train-video: bach_size" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()  # refused before any stage ran


def test_same_seed_same_history(trained, tmp_path):
    histories = []
    for i in range(2):
        logs = tmp_path / f"logs{i}"
        assert run_in(trained, ["train-ts", *TS, *_data_flags("ts"), "--num_epochs", "2", "--seed", "7",
                             "--outpath", str(tmp_path / f"out{i}"), "--logpath", str(logs)]) == 0
        histories.append(json.loads((logs / "step_1d_history.json").read_text())["history"])
    assert histories[0] == histories[1]


def test_seed_scripts_run_with_seed_flags(tmp_path):
    """The five root scripts, as the original README runs them (small sizes)."""
    def script(name: str, *args: str) -> None:
        done = subprocess.run([sys.executable, str(ROOT / name), *args], cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]

    script("gen_data.py", "--n_train", "4", "--n_val", "2", "--num_frames", "4", "--height", "32", "--width", "32",
           "--no_progress")
    assert (tmp_path / "data" / "video_train.pkl").is_file()
    script("step_fusion_3d.py", "--batch_size", "2", "--num_epochs", "1", "--lr", "0.00001", "--seed", "93728645",
           "--print_every", "1", "--num_frames", "4", "--height", "32", "--width", "32", "--model_preset", "nano",
           "--path_video_train", "./data/video_train.pkl", "--path_video_val", "./data/video_val.pkl",
           "--path_label_train", "./data/label_train.pkl", "--path_label_val", "./data/label_val.pkl",
           "--outpath", "./saved_models/step_3d/", "--logpath", "./logs/", "--no_progress")
    script("step_fusion_1d.py", "--batch_size", "2000", "--num_epochs", "1", "--lr", "0.0003", "--seed", "93728645",
           "--print_every", "1", "--num_frames", "51", "--num_channels", "3", "--model_preset", "nano",
           "--path_kine_train", "./data/kine_train.pkl", "--path_kine_val", "./data/kine_val.pkl",
           "--outpath", "./saved_models/step_1d/", "--logpath", "./logs/", "--no_progress")
    script("step_fusion_3d_get_feature.py", "--no_progress")
    script("step_fusion.py", "--num_epochs", "1", "--no_progress")
    assert (tmp_path / "saved_models" / "step_fusion" / "final_fusion.pth").is_file()
    assert (tmp_path / "video_features" / "val_3d_features.pkl").is_file()


def test_run_all_stages_with_config(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "seed: 3\nno_progress: true\n"
        "gen_data: {n_train: 8, n_val: 4, num_frames: 4, height: 32, width: 32, kine_len: 19, format: npy}\n"
        "train_video: {model_preset: nano, num_frames: 4, height: 32, width: 32, batch_size: 4, num_epochs: 1,"
        " print_every: 1}\n"
        "train_ts: {model_preset: nano, num_frames: 19, batch_size: 4, num_epochs: 2}\n"
        "train_fusion: {batch_size: 4, num_epochs: 2}\n"
    )
    work = tmp_path / "work"
    assert main(["run", "--config", str(config), "--workdir", str(work), "--num-epochs", "1"]) == 0
    summary = json.loads((work / "run_summary.json").read_text())
    assert set(summary) == {"video", "timeseries", "fusion"}
    for row in summary.values():
        assert set(row) == {"best_epoch", "val_accuracy", "val_macro_f1", "seconds"}
        assert row["best_epoch"] == 1 and 0 <= row["val_accuracy"] <= 1
    assert (work / "data" / "video_train.npy").is_file()
    assert (work / "video_features" / "train_3d_features.pkl").is_file()
    assert "fusion" in capsys.readouterr().out
    record = json.loads((work / "run.json").read_text())

    # The same run again is refused before gen-data rewrites the data the models learned from
    data = {f.name: f.read_bytes() for f in (work / "data").iterdir()}
    assert main(["run", "--config", str(config), "--workdir", str(work), "--num-epochs", "1"]) == 2
    assert "holds a finished run (final_3d.pth)" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in (work / "data").iterdir()} == data

    # Later stages again, on what the first run wrote (its .npy data, not the stages' .pkl defaults)
    assert main(["run", "--config", str(config), "--workdir", str(work), "--stages", "extract-features,train-fusion",
                 "--overwrite", "--num_epochs", "1"]) == 0
    again = json.loads((work / "run.json").read_text())
    assert again["data"] == record["data"]  # what `dust evaluate` reads: still every file of both splits
    assert again["stages"]["train-video"] == record["stages"]["train-video"]
    assert set(json.loads((work / "run_summary.json").read_text())) == {"video", "timeseries", "fusion"}
    assert main(["evaluate", "--run", str(work), "--no_progress"]) == 0


def test_run_rejects_flags_no_stage_takes(tmp_path, capsys):
    assert main(["run", "--workdir", str(tmp_path), "--no_such_flag", "1"]) == 2
    assert "no stage takes --no_such_flag" in capsys.readouterr().err


def test_evaluate_compares_modalities(trained, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["evaluate", "--run", str(trained), "--out", str(out), "--no_progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["models"]) == {"video", "timeseries", "fusion"}
    fusion = report["models"]["fusion"]
    assert fusion["class_names"] == ["baseline", "braking", "conflict", "near_crash"]
    assert sum(fusion["support"]) == 4 and np.asarray(fusion["confusion"]).sum() == 4
    for name in ("confusion_video", "confusion_fusion", "curves_step_3d", "curves_step_fusion"):
        assert (out / f"{name}.png").read_bytes().startswith(b"\x89PNG"), name
    assert "macro-F1" in capsys.readouterr().out


def test_predictor_on_arrays_matches_evaluation(trained):
    from dust import Predictor

    predictor = Predictor.from_run(trained)
    video = load_array(trained / "data" / "video_val.npy")
    kine = load_array(trained / "data" / "kine_val.npy")
    proba = predictor.predict_proba(video, kine)
    assert proba.shape == (4, 4) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    single = predictor.predict_proba(video[0], kine[0])
    np.testing.assert_allclose(single[0], proba[0], atol=1e-5)
    assert predictor.predict(video, kine)[0] in predictor.class_names


def test_predictor_refuses_unfinished_run(tmp_path, capsys):
    assert main(["predict", "--run", str(tmp_path), "--video", "a.mp4", "--kinematics", "a.csv"]) == 2
    assert "not a finished DuST run" in capsys.readouterr().err


def test_feature_extraction_is_repeatable(trained, tmp_path):
    args = ["extract-features", "--path_video_train", "data/video_train.npy", "--path_video_val",
            "data/video_val.npy", "--no_progress"]
    for i in (1, 2):
        assert run_in(trained, [*args, "--path_feature_train", str(tmp_path / f"t{i}.npy"), "--path_feature_val",
                             str(tmp_path / f"v{i}.npy")]) == 0
    assert (tmp_path / "t1.npy").read_bytes() == (tmp_path / "t2.npy").read_bytes()


def test_run_is_one_process(tmp_path, capsys):
    assert main(["run", "--workdir", str(tmp_path), "--devices", "2"]) == 2
    assert "one process" in capsys.readouterr().err


def test_run_refuses_an_ensemble_that_stage_4_cannot_start_from(tmp_path, capsys):
    assert main(["run", "--workdir", str(tmp_path), "--ensemble", "3"]) == 2
    assert "stage 4 starts from one" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before any stage ran


def test_run_num_frames_is_frames_per_clip_not_the_series_length(tmp_path):
    from dust.cli import build_parser
    from dust.commands.run import _stage_args

    config = tmp_path / "run.yaml"
    config.write_text("num_frames: 8\ntrain_fusion:\n  num_frames: 40\n")
    for flags in ([], ["--num_frames", "12"]):
        build_parser()  # fresh parsers, as each `dust` command starts with
        frames = 12 if flags else 8
        length = {name: _stage_args(name, str(config), flags, tmp_path)[0].num_frames
                  for name in ("gen-data", "train-video", "train-ts", "train-fusion")}
        assert length == {"gen-data": frames, "train-video": frames, "train-ts": 51, "train-fusion": 40}


def test_extract_features_checks_every_input_and_output_before_writing(trained, capsys, tmp_path):
    ckpt = str(trained / "saved_models" / "step_3d" / "final_3d.pth")
    channels_last = tmp_path / "last.npy"
    np.save(channels_last, np.load(trained / "data" / "video_val.npy").transpose(0, 2, 3, 4, 1))
    cases = [(["--path_video_val", str(channels_last)], "last.npy: clips must be (N, 3, T, H, W)"),
             (["--path_feature_val", str(tmp_path / "out" / "val.csv")], "val.csv: unknown feature file type '.csv'"),
             (["--path_feature_val", str(tmp_path)], "is a folder, not a feature file")]
    for flags, message in cases:
        argv = ["extract-features", "--checkpoint", ckpt, "--path_video_train", "data/video_train.npy",
                "--path_video_val", "data/video_val.npy", "--path_feature_train", str(tmp_path / "out" / "train.npy"),
                "--path_feature_val", str(tmp_path / "out" / "val.npy"), "--no_progress", *flags]
        assert run_in(trained, argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
        assert not (tmp_path / "out" / "train.npy").exists()  # nothing written when any part is bad


def test_text_labels_and_unknown_presets_are_one_line_errors(trained, capsys, tmp_path):
    text = tmp_path / "labels.npy"
    np.save(text, np.load(trained / "data" / "label_train.npy").astype(str))
    base = ["train-ts", *TS, *_data_flags("ts"), "--num_epochs", "1", "--outpath", str(tmp_path / "o"),
            "--logpath", str(tmp_path / "l")]
    assert run_in(trained, [*base, "--path_label_train", str(text)]) == 2
    assert "labels.npy: labels must be class indices (numbers)" in capsys.readouterr().err
    assert run_in(trained, [*base, "--model_preset", "bogus"]) == 2
    assert "unknown ts preset 'bogus'" in capsys.readouterr().err


def test_evaluate_refuses_a_corrupt_run_record(tmp_path):
    from dust.errors import InputError
    from dust.evaluation.evaluate import split_files

    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(InputError, match="run.json: not a JSON file"):
        split_files(tmp_path, "val")
    (tmp_path / "run.json").write_text("[]")
    with pytest.raises(InputError, match="run.json: not a run record"):
        split_files(tmp_path, "val")


def test_an_empty_split_is_refused(trained, capsys, tmp_path):
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((0, 3, 19), np.float32))
    assert run_in(trained, ["train-ts", *TS, *_data_flags("ts"), "--path_kine_val", str(empty), "--num_epochs", "1",
                            "--outpath", str(tmp_path / "o"), "--logpath", str(tmp_path / "l")]) == 2
    assert "empty.npy: no kinematics rows (an empty split)" in capsys.readouterr().err
    assert not (tmp_path / "o" / "final_1d.pth").exists()


def test_predictor_refuses_a_video_model_other_than_the_fused_models_features(trained, tmp_path):
    from dust import Predictor
    from dust.checkpoint import save_checkpoint
    from dust.errors import InputError

    video = trained / "saved_models" / "step_3d"
    fusion = trained / "saved_models" / "step_fusion" / "final_fusion.pth"
    assert load_checkpoint(fusion).meta["video_fingerprint"] == load_checkpoint(video / "final_3d.pth").fingerprint
    Predictor.from_checkpoints(video / "final_3d.pth", fusion)  # the pair of one run
    other = load_checkpoint(video / "final_3d.pth")
    model = other.build()
    with torch.no_grad():
        model.head.bias.add_(1.0)  # any change to the weights is another model
    save_checkpoint(tmp_path / "other.pth", model, preset=other.preset,
                    **{k: v for k, v in other.meta.items() if k != "path"})
    with pytest.raises(InputError, match="learned from the features of another video model than .*other.pth"):
        Predictor.from_checkpoints(tmp_path / "other.pth", fusion)


def test_fusion_refuses_features_of_two_video_models(trained, tmp_path, capsys):
    sidecar = json.loads((trained / "video_features" / "val_3d_features.json").read_text())
    np.save(tmp_path / "val.npy", load_array(trained / "video_features" / "val_3d_features.pkl"))
    (tmp_path / "val.json").write_text(json.dumps({**sidecar, "video_fingerprint": "0" * 32}))
    code = run_in(trained, ["train-fusion", *_data_flags("ts"), "--num_epochs", "1", "--no_progress",
                            "--path_feature_val", str(tmp_path / "val.npy"), "--outpath", str(tmp_path / "m"),
                            "--logpath", str(tmp_path / "l")])
    assert code == 2
    assert "val.npy: extracted by another video model than" in capsys.readouterr().err


def test_evaluate_refuses_models_of_two_runs_and_a_corrupt_history(trained, tmp_path, capsys):
    import shutil

    from dust.checkpoint import save_checkpoint

    run = tmp_path / "run"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("report_*"))
    assert main(["evaluate", "--run", str(run), "--no_progress"]) == 0
    (run / "logs" / "step_1d_history.json").write_text("garbage")
    out = tmp_path / "report"
    assert main(["evaluate", "--run", str(run), "--no_progress", "--out", str(out)]) == 2
    assert "step_1d_history.json: not a JSON file" in capsys.readouterr().err and not out.exists()
    video = load_checkpoint(run / "saved_models" / "step_3d" / "final_3d.pth")
    model = video.build()
    with torch.no_grad():
        model.head.bias.add_(1.0)
    save_checkpoint(run / "saved_models" / "step_3d" / "final_3d.pth", model, preset=video.preset,
                    **{k: v for k, v in video.meta.items() if k != "path"})
    assert main(["evaluate", "--run", str(run), "--no_progress"]) == 2
    assert "learned from the features of another video model" in capsys.readouterr().err


def test_predictor_refuses_inputs_its_models_cannot_take(trained):
    from dust import Predictor
    from dust.errors import InputError

    predictor = Predictor.from_run(trained)
    video = np.asarray(load_array(trained / "data" / "video_val.npy"))[:2]
    kine = np.asarray(load_array(trained / "data" / "kine_val.npy"))[:2]
    cases = [(video[:, :2], kine, "clips: 2 colour channels, the model takes 3"),
             (video, kine[:, :2], "series: 2 channels, the model takes 3"),
             (video.astype(np.float32) * np.inf, kine, "clips: clip row 0 holds infinite values"),
             (video, kine * np.inf, "series: series row 0 holds infinite values"),
             (video, np.full_like(kine, np.nan), "series: a series with no values")]
    for clips, series, message in cases:
        with pytest.raises(InputError, match=message):
            predictor.predict(clips, series)
    with pytest.raises(InputError, match="--device bogus: not a device"):
        Predictor.from_run(trained, device="bogus")


def test_extract_features_never_overwrites_an_input_or_another_output(trained, capsys):
    base = ["extract-features", "--path_video_train", "data/video_train.npy", "--path_video_val",
            "data/video_val.npy", "--no_progress"]
    before = (trained / "data" / "video_train.npy").read_bytes()
    for outputs, message in [(["data/video_train.npy", "f/v.npy"], "would overwrite input data/video_train.npy"),
                             (["f/a.npy", "f/a.npy"], "would overwrite output f/a.npy"),
                             (["f/a.pkl", "f/a.npy"], "f/a.json: would overwrite output f/a.json")]:
        assert run_in(trained, [*base, "--path_feature_train", outputs[0], "--path_feature_val", outputs[1]]) == 2
        assert message in capsys.readouterr().err
    assert (trained / "data" / "video_train.npy").read_bytes() == before and not (trained / "f").exists()


def test_predict_checks_its_output_and_device_before_any_work(trained, capsys):
    args = ["predict", "--run", str(trained), "--video", "a.mp4", "--kinematics", "a.csv"]
    cases = [(["--out", ""], "--out '': not a file name"), (["--out", str(trained)], "--out is a folder"),
             (["--device", "bogus"], "--device bogus: not a device"),
             (["--manifest", "m.csv"], "give --manifest, or --video and --kinematics, not both")]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "--device cuda: this machine has no CUDA GPU"))
    for flags, message in cases:
        assert main([*args, *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and err.count("\n") == 0, err


def test_refused_settings_leave_no_empty_output_folder(trained, tmp_path, capsys):
    features = tmp_path / "features"
    assert main(["extract-features", "--checkpoint", str(trained / "saved_models" / "step_3d" / "final_3d.pth"),
                 "--path_video_train", str(trained / "data" / "video_train.npy"),
                 "--path_video_val", str(trained / "data" / "video_val.npy"),
                 "--path_feature_train", str(features / "train.pkl"), "--path_feature_val", str(features / "val.pkl"),
                 "--precision", "bogus", "--no_progress"]) == 2
    assert "--precision bogus" in capsys.readouterr().err and not features.exists()
    assert main(["gen-data", "--outdir", str(tmp_path / "toy"), "--seed", "-1"]) == 2
    assert "--seed must be between 0 and 4294967295, got -1" in capsys.readouterr().err
    assert not (tmp_path / "toy").exists()


def test_evaluate_checks_its_data_as_training_does(trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("report_*"))
    labels = np.load(run / "data" / "label_val.npy").astype(np.float64)
    labels[1] = np.nan  # was dropped as if unlabelled
    np.save(run / "data" / "label_val.npy", labels)
    assert main(["evaluate", "--run", str(run), "--no_progress"]) == 2
    assert "label_val.npy: labels must be whole numbers" in capsys.readouterr().err
    np.save(run / "data" / "label_val.npy", np.zeros(len(labels), np.int64))
    video = np.load(run / "data" / "video_val.npy").astype(np.float32)
    video[2, 0, 0, 0, 0] = np.nan
    np.save(run / "data" / "video_val.npy", video)
    assert main(["evaluate", "--run", str(run), "--no_progress"]) == 2
    assert "video_val.npy: video row 2 holds NaN values" in capsys.readouterr().err


def test_float64_values_float32_cannot_hold_are_refused():
    from dust.data.datasets import check_finite
    from dust.errors import InputError

    series = np.zeros((3, 2, 5))
    check_finite("s.npy", series, "kinematics")
    series[1, 0, 2] = 1e39
    with pytest.raises(InputError, match="s.npy: kinematics row 1 holds float32-overflowing"):
        check_finite("s.npy", series, "kinematics", nan_allowed=True)


def test_a_stage_refuses_an_outpath_holding_another_stages_run(trained, tmp_path, capsys):
    import shutil

    video_run = tmp_path / "step_3d"
    shutil.copytree(trained / "saved_models" / "step_3d", video_run)
    before = (video_run / "best.pth").read_bytes()
    flags = [str(trained / f) if f.startswith("data/") else f for f in _data_flags("ts")]
    assert main(["train-ts", *TS, *flags, "--outpath", str(video_run), "--logpath", str(tmp_path / "logs")]) == 2
    assert "holds another stage's run (final_3d.pth)" in capsys.readouterr().err
    assert (video_run / "best.pth").read_bytes() == before


def test_run_checks_every_stages_settings_before_the_first_runs(tmp_path, capsys):
    config = tmp_path / "late.yaml"
    config.write_text("train_fusion: {lr: -1}\n")
    work = tmp_path / "work"
    assert main(["run", "--config", str(config), "--workdir", str(work)]) == 2
    assert "--lr must be a positive finite number, got -1.0" in capsys.readouterr().err
    assert not work.exists()  # refused before gen-data wrote anything
