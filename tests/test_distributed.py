"""Two processes on CPU (DDP over gloo), and resuming a killed run: the same results as one clean run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_in

from dust.data.arrays import load_array

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process control")


def _dust(folder: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "dust", *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done



TS = ["--model_preset", "nano", "--num_frames", "19", "--no_progress", "--path_kine_train", "data/kine_train.npy",
      "--path_kine_val", "data/kine_val.npy", "--path_label_train", "data/label_train.npy",
      "--path_label_val", "data/label_val.npy"]


def test_two_processes_stage2_and_stage3(tmp_path):
    # 7 validation clips: an uneven split across 2 ranks, which padding would double-count
    assert run_in(tmp_path, ["gen-data", "--n_train", "12", "--n_val", "7", "--num_frames", "4", "--height", "32",
                          "--width", "32", "--kine_len", "19", "--format", "npy", "--no_progress"]) == 0
    _dust(tmp_path, "train-ts", *TS, "--batch_size", "3", "--num_epochs", "2", "--accelerator", "cpu",
          "--devices", "2", "--strategy", "ddp")
    history = json.loads((tmp_path / "logs" / "step_1d_history.json").read_text())
    assert [row["val_count"] for row in history["history"]] == [7, 7]
    checksums = history["rank_weight_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]

    video = ["--path_video_train", "data/video_train.npy", "--path_video_val", "data/video_val.npy"]
    assert run_in(tmp_path, ["train-video", "--model_preset", "nano", "--num_frames", "4", "--height", "32",
                          "--width", "32", "--batch_size", "4", "--num_epochs", "1", "--print_every", "1",
                          "--path_label_train", "data/label_train.npy", "--path_label_val", "data/label_val.npy",
                          *video, "--no_progress"]) == 0
    _dust(tmp_path, "extract-features", *video, "--path_feature_train", "f2/train.npy", "--path_feature_val",
          "f2/val.npy", "--batch_size", "2", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp",
          "--no_progress")
    assert run_in(tmp_path, ["extract-features", *video, "--path_feature_train", "f1/train.npy",
                          "--path_feature_val", "f1/val.npy", "--batch_size", "2", "--no_progress"]) == 0
    for split, rows in (("train", 12), ("val", 7)):
        one, two = load_array(tmp_path / "f1" / f"{split}.npy"), load_array(tmp_path / "f2" / f"{split}.npy")
        assert one.shape == two.shape == (rows, 192)
        np.testing.assert_allclose(two, one, atol=1e-5)


def _history(logs: Path) -> list[dict]:
    try:
        return json.loads((logs / "step_1d_history.json").read_text())["history"]
    except (OSError, ValueError):
        return []


def test_killed_run_resumes_to_the_same_history(tmp_path):
    assert run_in(tmp_path, ["gen-data", "--n_train", "480", "--n_val", "16", "--num_frames", "1", "--height", "16",
                          "--width", "16", "--kine_len", "19", "--format", "npy", "--no_progress"]) == 0
    args = [*TS, "--batch_size", "4", "--num_epochs", "5", "--augment", "--schedule", "cosine",
            "--warmup_epochs", "1"]
    _dust(tmp_path, "train-ts", *args, "--outpath", "clean/models", "--logpath", "clean/logs",
          "--resume_from", "auto")  # nothing to resume: starts
    clean = _history(tmp_path / "clean" / "logs")
    assert len(clean) == 5

    command = [sys.executable, "-m", "dust", "train-ts", *args, "--outpath", "killed/models", "--logpath",
               "killed/logs"]
    process = subprocess.Popen(command, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while len(_history(tmp_path / "killed" / "logs")) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    interrupted = _history(tmp_path / "killed" / "logs")
    assert 2 <= len(interrupted) < 5, "the run was not interrupted mid-way; make epochs longer"
    assert not (tmp_path / "killed" / "models" / "final_1d.pth").exists()

    repeated = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)  # without --resume
    assert repeated.returncode == 2 and "holds an interrupted run (resume.ckpt)" in repeated.stderr
    _dust(tmp_path, "train-ts", *args, "--outpath", "killed/models", "--logpath", "killed/logs", "--resume_from", "auto")
    assert _history(tmp_path / "killed" / "logs") == clean


def test_steps_count_the_optimizer_steps_of_several_processes_and_accumulation(tmp_path):
    from dust.training.stages import TrainSettings, _optimizer_steps_per_epoch

    def steps(**kw) -> int:
        settings = TrainSettings(outpath=tmp_path / "o", logpath=tmp_path / "l", batch_size=8, **kw)
        return _optimizer_steps_per_epoch(settings, 100)

    assert steps() == 13  # ceil(100 / 8)
    assert steps(devices="4") == 4  # each of 4 processes takes ceil(100 / 32) batches
    assert steps(devices="0,1", num_nodes=2) == 4
    assert steps(accumulate_grad_batches=2) == 7  # 13 batches, a step every 2 (the last one short)
    assert steps(devices="auto") == 13
