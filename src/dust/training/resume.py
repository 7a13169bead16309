"""Resuming an interrupted stage exactly: Lightning's checkpoint plus every random generator's state."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["RESUME_NAME", "RandomState", "resume_checkpoint"]

RESUME_NAME = "resume"
"""``OUTPATH/resume.ckpt``: written at the end of every epoch (atomically), read by ``--resume``."""


class RandomState(L.Callback):
    """Stores the Python, NumPy and torch generators in each checkpoint and restores them on resume,
    so a resumed run draws the same dropout masks and augmentations as an uninterrupted one."""

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["random_state"] = {
            "python": random.getstate(),
            "numpy": _numpy_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("random_state")
        if state is None:
            return
        random.setstate(state["python"])
        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state() -> tuple:
    """NumPy's global generator state with its key array as a tensor (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)


def resume_checkpoint(outpath: Path) -> ModelCheckpoint:
    """The callback that keeps ``OUTPATH/resume.ckpt`` current at the end of every epoch."""
    return ModelCheckpoint(dirpath=outpath, filename=RESUME_NAME, save_top_k=1, every_n_epochs=1,
                           save_on_train_epoch_end=True, enable_version_counter=False)
