"""Evaluate a finished run on a labelled split: video-only, time-series-only and fused, side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..atomic import write_json
from ..checkpoint import check_pair, load_checkpoint
from ..data.arrays import load_array
from ..data.datasets import ArrayRows, SeriesTransform, VideoTransform, as_float32, check_finite, check_labels
from ..errors import InputError
from .metrics import ClassificationReport, classification_report

__all__ = ["comparison_table", "evaluate_run", "split_files"]

_CHECKPOINTS = {  # report name: (final checkpoint under saved_models/, its kind)
    "video": ("step_3d/final_3d.pth", "video"),
    "timeseries": ("step_1d/final_1d.pth", "ts"),
    "fusion": ("step_fusion/final_fusion.pth", "fusion"),
}
_HISTORY_KEYS = {"epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1"}


def split_files(run_dir: Path, split: str) -> dict[str, Path]:
    """The video, kinematics and label files of ``split`` used by the run in ``run_dir``.

    Read from the run's ``run.json``; a folder laid out by hand (the seed's ``data/``) works too.
    """
    record = run_dir / "run.json"
    if record.is_file():
        try:
            content = json.loads(record.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise InputError(f"{record}: not a JSON file") from None
        if not isinstance(content, dict) or not isinstance(content.get("data", {}), dict):
            raise InputError(f"{record}: not a run record (expected a mapping with a 'data' mapping)")
        files = content.get("data", {}).get(split)
        if not files:
            raise InputError(f"{record}: the run has no {split} split")
        if not isinstance(files, dict) or not all(isinstance(files.get(k), str) for k in ("video", "kine", "label")):
            raise InputError(f"{record}: the {split} split must name its video, kine and label files")
        return {k: Path(files[k]) for k in ("video", "kine", "label")}
    for suffix in (".npy", ".pkl", ".npz"):
        files = {k: run_dir / "data" / f"{k}_{split}{suffix}" for k in ("video", "kine", "label")}
        if all(p.is_file() for p in files.values()):
            return files
    raise InputError(f"{run_dir}: no run.json and no data/{{video,kine,label}}_{split} files")


@torch.inference_mode()
def _batched(model_fn, dataset: ArrayRows, batch_size: int, desc: str, progress: bool) -> np.ndarray:
    rows = []
    for batch in tqdm(DataLoader(dataset, batch_size=batch_size), desc=desc, disable=not progress, leave=False):
        rows.append(model_fn(*batch).float().cpu().numpy())
    return np.concatenate(rows)


def evaluate_run(run_dir: str | Path, split: str = "val", out: str | Path | None = None, batch_size: int = 16,
                 progress: bool = True) -> dict[str, ClassificationReport]:
    """Metrics of the run's video-only, time-series-only and fused models on ``split``.

    With ``out``, writes ``report.json`` and PNGs (confusion matrices, training curves) there.
    """
    run_dir = Path(run_dir)
    models_dir = run_dir / "saved_models"
    ckpts = {}
    for name, (rel, kind) in _CHECKPOINTS.items():
        try:
            ckpts[name] = load_checkpoint(models_dir / rel, expect=kind)
        except Exception as err:
            raise InputError(str(err)) from None
    check_pair(ckpts["video"], ckpts["fusion"])
    files = split_files(run_dir, split)
    video, kine = load_array(files["video"]), load_array(files["kine"])
    for path, array, ndim, channels in ((files["video"], video, 5, ckpts["video"].config["in_chans"]),
                                        (files["kine"], kine, 3, ckpts["timeseries"].config["in_chans"])):
        if array.ndim != ndim or array.shape[1] != channels:
            raise InputError(f"{path}: shape {array.shape}, the run's models take "
                             f"{'clips (N, 3, T, H, W)' if ndim == 5 else f'series (N, {channels}, L)'}")
        check_finite(str(path), array, "video" if ndim == 5 else "kinematics", nan_allowed=ndim == 3)
    histories = _histories(run_dir)  # read before anything is written
    class_names = ckpts["fusion"].meta.get("class_names") or [str(i) for i in range(ckpts["fusion"].config["num_classes"])]
    raw_labels = np.asarray(load_array(files["label"]))
    if not len(video) == len(kine) == len(raw_labels):
        raise InputError(f"{split} split: {len(video)} clips, {len(kine)} series and {len(raw_labels)} labels")
    labelled = raw_labels != -1  # dust prepare marks unlabelled clips -1; any other value is checked
    if not labelled.any():
        raise InputError(f"{files['label']}: no labelled clips to evaluate")
    labels = check_labels(str(files["label"]), raw_labels[labelled], len(class_names))

    video_model = ckpts["video"].build()
    video_transform = VideoTransform(**ckpts["video"].meta["video_transform"])
    features = _batched(video_model.forward_features, ArrayRows([video], [video_transform]), batch_size,
                        "video", progress)
    with torch.inference_mode():
        video_logits = video_model.forward_head(torch.from_numpy(features)).numpy()
    ts_model = ckpts["timeseries"].build()
    ts_logits = _batched(ts_model, ArrayRows([kine], [SeriesTransform(**ckpts["timeseries"].meta["series_transform"])]),
                         batch_size, "time series", progress)
    fusion_model = ckpts["fusion"].build()
    fusion_transform = SeriesTransform(**ckpts["fusion"].meta["series_transform"])
    fused_logits = _batched(fusion_model, ArrayRows([kine, features], [fusion_transform, as_float32]),
                            batch_size, "fusion", progress)

    reports = {name: classification_report(labels, logits[labelled].argmax(axis=1), class_names)
               for name, logits in (("video", video_logits), ("timeseries", ts_logits), ("fusion", fused_logits))}
    if out is not None:
        _write(Path(out), run_dir, split, files, reports, histories)
    return reports


def comparison_table(reports: dict[str, ClassificationReport]) -> str:
    """Modalities side by side: accuracy and macro-F1."""
    lines = [f"{'model':12} {'accuracy':>8} {'macro-F1':>9}"]
    for name, report in reports.items():
        lines.append(f"{name:12} {report.accuracy:>8.3f} {report.macro_f1:>9.3f}")
    return "\n".join(lines)


def _histories(run_dir: Path) -> dict[str, dict]:
    """Each stage's training history (``logs/step_*_history.json``), by stage."""
    histories = {}
    for path in sorted((run_dir / "logs").glob("step_*_history.json")):
        try:
            content = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise InputError(f"{path}: not a JSON file") from None
        rows = content.get("history") if isinstance(content, dict) else None
        if not isinstance(rows, list) or not all(isinstance(r, dict) and _HISTORY_KEYS <= r.keys() for r in rows):
            raise InputError(f"{path}: not a training history (expected {{\"history\": [rows with "
                             f"{', '.join(sorted(_HISTORY_KEYS))}]}})")
        histories[path.stem.removesuffix("_history")] = content
    return histories


def _write(out: Path, run_dir: Path, split: str, files: dict[str, Path], reports: dict[str, ClassificationReport],
           histories: dict[str, dict]) -> None:
    from .plots import plot_confusion, plot_history

    out.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"run": str(run_dir), "split": split, "files": {k: str(v) for k, v in files.items()},
                               "models": {k: r.to_dict() for k, r in reports.items()}}
    write_json(out / "report.json", payload)
    for name, report in reports.items():
        plot_confusion(report, out / f"confusion_{name}.png", title=f"{name} ({split})")
    for stage, history in histories.items():
        plot_history(history, out / f"curves_{stage}.png")
