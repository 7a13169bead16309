"""Stage 3: pooled video features, one row per clip in input order — also across several processes."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from ..atomic import write_json
from ..data.arrays import save_array
from ..data.datasets import ArrayRows, VideoTransform
from ..models import VideoSwin
from .datamodule import StridedSampler
from .trainer import build_trainer

__all__ = ["FeatureExtractor", "feature_sidecar", "write_features"]


def feature_sidecar(path: Path) -> Path:
    """The JSON file describing a feature array: ``train_3d_features.pkl`` -> ``train_3d_features.json``."""
    return Path(path).with_suffix(".json")


def _index(i: np.ndarray) -> Tensor:
    return torch.as_tensor(int(i))


class FeatureExtractor(L.LightningModule):
    """Runs ``model.forward_features`` over (clip, index) batches, the clips as ``transform.read`` gives them
    (normalised here, on the device); at the end, rank 0 holds every row in input order (gathered from all
    processes)."""

    def __init__(self, model: VideoSwin, transform: VideoTransform) -> None:
        super().__init__()
        self.model = model
        self.normalize = transform.normalize
        self.features: np.ndarray | None = None
        self._rows: list[tuple[Tensor, Tensor]] = []

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        clips, index = batch
        self._rows.append((index, self.model.forward_features(self.normalize(clips)).float()))

    def on_predict_epoch_end(self) -> None:
        width = self.model.feature_dim
        index = torch.cat([i for i, _ in self._rows]) if self._rows else torch.zeros(0, dtype=torch.long)
        rows = torch.cat([f for _, f in self._rows]) if self._rows else torch.zeros(0, width)
        index, rows = index.to(self.device), rows.to(self.device)
        total = self.trainer.world_size
        if total > 1:  # ranks hold different counts: pad to the longest, gather, drop the padding
            size = torch.tensor([len(index)], device=self.device)
            longest = int(self.all_gather(size).max())
            pad = longest - len(index)
            index = torch.cat([index, torch.full((pad,), -1, device=self.device, dtype=index.dtype)])
            rows = torch.cat([rows, torch.zeros(pad, width, device=self.device)])
            index, rows = self.all_gather(index).reshape(-1), self.all_gather(rows).reshape(-1, width)
            keep = index >= 0
            index, rows = index[keep], rows[keep]
        order = torch.argsort(index)
        self.features = rows[order].cpu().numpy().astype(np.float32)
        self._rows = []


def write_features(
    model: VideoSwin,
    transform: VideoTransform,
    video: np.ndarray,
    target: Path,
    sidecar: dict,
    *,
    batch_size: int,
    num_workers: int = 0,
    trainer_kwargs: dict | None = None,
) -> np.ndarray | None:
    """Extract ``video``'s features and write them to ``target`` (and its JSON sidecar) from rank 0.

    Returns the features on rank 0, None on other ranks.
    """
    kwargs = {"accelerator": "auto", "devices": 1, "logger": False, "enable_checkpointing": False,
              "enable_model_summary": False, "enable_progress_bar": True, "use_distributed_sampler": False,
              **(trainer_kwargs or {})}
    trainer = build_trainer(**kwargs)
    dataset = ArrayRows([video, np.arange(len(video))], [transform.read, _index])  # uint8 up to the device
    module = FeatureExtractor(model, transform)
    world, rank = trainer.world_size, trainer.global_rank
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                        sampler=StridedSampler(len(dataset), rank, world))
    trainer.predict(module, loader, return_predictions=False)
    if not trainer.is_global_zero:
        return None
    features = module.features if module.features is not None else np.zeros((0, model.feature_dim), np.float32)
    if len(features) != len(video):
        raise RuntimeError(f"feature extraction returned {len(features)} rows for {len(video)} clips")
    save_array(target, features)
    write_json(feature_sidecar(Path(target)), {**sidecar, "rows": len(features), "feature_dim": model.feature_dim})
    return features

