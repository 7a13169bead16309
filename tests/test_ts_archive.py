"""The small-data recipe for ``dust train-ts``, standardisation in its checkpoints, and the archive benchmark."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dust.checkpoint import load_checkpoint
from dust.cli import PARSERS, apply_config, build_parser, main, read_config
from dust.data.datasets import SeriesTransform, pad_series
from dust.models import SeriesEnsemble, TimeSeriesSwin
from dust.training.stages import auto_patch_size

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "ts_small_data.yaml"


def test_recipe_config_loads():
    build_parser()
    parser = PARSERS["train-ts"]
    settings = read_config(str(CONFIG), "train-ts")
    apply_config(parser, str(CONFIG), "train-ts", strict_keys=True)  # every key is a train-ts flag
    args = parser.parse_args([])
    assert args.model_preset == settings["model_preset"] and args.augment is True
    assert args.schedule == "cosine" and args.label_smoothing > 0 and args.weight_decay > 0
    assert args.num_frames is None and args.num_channels is None  # the data's own sizes
    model = TimeSeriesSwin.from_preset(args.model_preset, seq_len=251, in_chans=1, num_classes=3,
                                       patch_size=auto_patch_size(251, args.target_tokens))
    assert model(torch.randn(2, 1, 251)).shape == (2, 3)
    assert model.config.get("derivative") is True  # the stem also reads the first difference


def test_auto_patch_size():
    assert [auto_patch_size(n, 64) for n in (10, 24, 251, 1460)] == [1, 1, 4, 23]


def _series(n: int, channels: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    t = np.linspace(0, 1, length)
    x = np.stack([np.stack([np.sin((2 + 3 * y) * np.pi * t + c) for c in range(channels)]) for y in labels])
    x = x * np.array([1.0, 20.0])[:channels, None] + np.array([5.0, -100.0])[:channels, None]
    return (x + 0.1 * rng.standard_normal(x.shape)).astype(np.float32), labels


def _train(tmp_path: Path, x: np.ndarray, y: np.ndarray, *extra: str) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    out = tmp_path / "model"
    code = main(["train-ts", "--config", str(CONFIG), "--path_kine_train", str(tmp_path / "x.npy"),
                 "--path_label_train", str(tmp_path / "y.npy"), "--path_kine_val", str(tmp_path / "x.npy"),
                 "--path_label_val", str(tmp_path / "y.npy"), "--outpath", str(out),
                 "--logpath", str(tmp_path / "logs"), "--no_progress", "--steps", "2",
                 "--ensemble_workers", "1", *extra])  # in this process, unless a test asks otherwise
    assert code == 0
    return out / "final_1d.pth"


def test_standardisation_is_stored_and_reapplied(tmp_path):
    x, y = _series(12, 2, 30, seed=0)
    ckpt = load_checkpoint(_train(tmp_path, x, y), expect="ts")
    stored = ckpt.meta["series_transform"]
    np.testing.assert_allclose(stored["mean"], x.mean(axis=(0, 2)), rtol=1e-4)
    np.testing.assert_allclose(stored["std"], x.std(axis=(0, 2)), rtol=1e-4)
    transform = SeriesTransform(**stored)
    rows = torch.stack([transform(s) for s in x])
    torch.testing.assert_close(rows.mean(dim=(0, 2)), torch.zeros(2), atol=1e-4, rtol=0)
    assert ckpt.config["in_chans"] == 2 and ckpt.config["seq_len"] == 30  # the data's own sizes
    with torch.no_grad():
        assert ckpt.build()(rows).shape == (12, 2)


def test_variable_length_series_train_and_predict(tmp_path):
    x, y = _series(10, 1, 40, seed=1)
    ragged = [s[:, :length] for s, length in zip(x, [40, 25, 31, 12, 40, 18, 22, 35, 9, 40])]
    padded = pad_series(ragged)
    ckpt = load_checkpoint(_train(tmp_path, padded, y, "--variable_length", "mask"), expect="ts")
    model, transform = ckpt.build(), SeriesTransform(**ckpt.meta["series_transform"])
    rows = torch.stack([transform(s) for s in padded])
    assert torch.isnan(rows[1, :, 25:]).all()  # padding reaches the model as NaN
    wider = torch.cat([rows, torch.full((10, 1, 13), float("nan"))], dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(model(rows), model(wider), atol=1e-5, rtol=1e-5)


def test_recipe_stretches_variable_length_series(tmp_path):
    x, y = _series(10, 1, 40, seed=2)
    lengths = [40, 25, 31, 12, 40, 18, 22, 35, 9, 40]
    padded = pad_series([s[:, :length] for s, length in zip(x, lengths)])
    ckpt = load_checkpoint(_train(tmp_path, padded, y), expect="ts")
    assert ckpt.meta["series_transform"]["stretch"] is True
    transform = SeriesTransform(**ckpt.meta["series_transform"])
    rows = torch.stack([transform(s) for s in padded])
    assert rows.shape == (10, 1, 40) and torch.isfinite(rows).all()
    # row 3 (12 steps) is its standardised self, linearly resampled to 40 steps: ends kept, no filler
    body = (padded[3, 0, :12] - transform.mean[0]) / transform.std[0]
    torch.testing.assert_close(rows[3, 0, [0, -1]], torch.tensor(body[[0, -1]]), atol=1e-5, rtol=0)
    # a series padded wider at prediction time comes out the same, a full-length one too
    for row in (3, 0):
        wider = np.concatenate([padded[row], np.full((1, 9), np.nan, np.float32)], axis=-1)
        torch.testing.assert_close(transform(wider), rows[row])


def test_ensemble_members_train_apart_and_predict_together(tmp_path, capsys):
    x, y = _series(12, 2, 30, seed=3)
    path = _train(tmp_path, x, y, "--ensemble", "2")
    for index in range(2):  # each member is a run of its own
        assert (tmp_path / "model" / f"member{index}" / "final_1d.pth").is_file()
    ckpt = load_checkpoint(path, expect="ts")
    model = ckpt.build()
    assert isinstance(model, SeriesEnsemble) and ckpt.config["members"] == 2
    first, second = model.members
    assert not torch.equal(first.head.weight, second.head.weight)  # seeds differ
    rows = torch.stack([SeriesTransform(**ckpt.meta["series_transform"])(s) for s in x])
    with torch.no_grad():
        assert len(model.views(rows)) == 5  # the recipe's test_shift: five time-shifted views
        mean = torch.stack([m(view).softmax(-1) for view in model.views(rows) for m in model.members]).mean(0)
        torch.testing.assert_close(model(rows).softmax(-1), mean)
    assert 0.0 <= ckpt.meta["metrics"]["val_accuracy"] <= 1.0
    # a finished ensemble is kept unless replaced on purpose; stage 4 wants one model
    capsys.readouterr()
    assert main(["train-ts", "--config", str(CONFIG), "--path_kine_train", str(tmp_path / "x.npy"),
                 "--path_label_train", str(tmp_path / "y.npy"), "--path_kine_val", str(tmp_path / "x.npy"),
                 "--path_label_val", str(tmp_path / "y.npy"), "--outpath", str(tmp_path / "model"),
                 "--ensemble", "2", "--no_progress"]) == 2
    assert main(["train-fusion", "--ts_checkpoint", str(path), "--no_progress"]) == 2
    assert "ensemble of 2" in capsys.readouterr().err


def test_test_shift_is_saved_with_the_model(tmp_path, capsys):
    x, y = _series(12, 2, 30, seed=5)
    ckpt = load_checkpoint(_train(tmp_path, x, y, "--ensemble", "1", "--test_shift", "0.1"), expect="ts")
    model = ckpt.build()
    assert isinstance(model, SeriesEnsemble) and len(model.members) == 1 and model.test_shift == 0.1
    assert main(["train-ts", "--path_kine_train", str(tmp_path / "x.npy"), "--test_shift", "1.5",
                 "--no_progress"]) == 2
    assert "--test_shift is a fraction of the length in [0, 1), got 1.5" in capsys.readouterr().err


def test_members_trained_in_parallel_match_members_trained_in_turn(tmp_path, capsys):
    x, y = _series(12, 2, 30, seed=6)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each of the two worker processes gets below
    try:
        in_turn = load_checkpoint(_train(tmp_path / "in_turn", x, y, "--ensemble", "2"), expect="ts").state_dict
    finally:
        torch.set_num_threads(threads)
    path = _train(tmp_path / "parallel", x, y, "--ensemble", "2", "--ensemble_workers", "2")
    for index in range(2):  # each member still a run of its own
        assert (tmp_path / "parallel" / "model" / f"member{index}" / "final_1d.pth").is_file()
    parallel = load_checkpoint(path, expect="ts").state_dict
    assert parallel.keys() == in_turn.keys()
    for key in in_turn:
        torch.testing.assert_close(parallel[key], in_turn[key], msg=key)
    capsys.readouterr()
    assert main(["train-ts", "--path_kine_train", str(tmp_path / "in_turn" / "x.npy"), "--ensemble_workers", "none",
                 "--no_progress"]) == 2
    assert "--ensemble_workers must be a whole number or 'auto', got 'none'" in capsys.readouterr().err


def test_interrupted_ensemble_resumes(tmp_path):
    x, y = _series(12, 2, 30, seed=4)
    path = _train(tmp_path, x, y, "--ensemble", "2")
    before = load_checkpoint(path, expect="ts").state_dict
    path.unlink()  # as if killed while the second member trained: the first is finished
    (tmp_path / "model" / "member1" / "final_1d.pth").unlink()
    first = tmp_path / "model" / "member0" / "final_1d.pth"
    stamp = first.stat().st_mtime_ns
    assert _train(tmp_path, x, y, "--ensemble", "2", "--resume") == path
    assert first.stat().st_mtime_ns == stamp  # loaded, not trained again
    after = load_checkpoint(path, expect="ts").state_dict
    assert after.keys() == before.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key], msg=key)


@pytest.mark.skipif(importlib.util.find_spec("aeon") is None, reason="aeon (the [bench] extra) is not installed")
def test_benchmark_runs_end_to_end(tmp_path):
    spec = importlib.util.spec_from_file_location("ts_archive", ROOT / "benchmarks" / "ts_archive.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "result.json"
    assert bench.main(["--datasets", "ItalyPowerDemand", "--json", str(out), "--", "--steps", "5"]) == 0
    row = json.loads(out.read_text())["ItalyPowerDemand"]
    for key in ("dust_accuracy", "minirocket_accuracy", "dtw_accuracy"):
        assert 0.0 <= row[key] <= 1.0
    assert row["dust_seconds"] > 0 and row["minirocket_seconds"] > 0
    assert row["minirocket_accuracy"] > 0.8  # the peer is a real classifier on real data
