"""Resuming an interrupted stage exactly: Lightning's checkpoint plus every random generator's state."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from ..errors import InputError

__all__ = ["RESUME_AUTO", "RESUME_NAME", "RandomState", "ResumeCheckpoint", "check_resumable", "resume_checkpoint"]

RESUME_NAME = "resume"
"""``OUTPATH/resume.ckpt``: written at the end of epochs (atomically), read by ``--resume``."""
RESUME_AUTO = "auto"
"""``--resume_from auto``: resume ``OUTPATH/resume.ckpt`` if there is one, else start (requeued jobs)."""


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


class ResumeCheckpoint(ModelCheckpoint):
    """Keeps ``OUTPATH/resume.ckpt`` current at the end of epochs.

    With ``min_interval`` seconds, an epoch that ends sooner than that after the last write is
    skipped (the last epoch never is): many short epochs then do not spend their time saving.
    Rank 0 decides and every rank follows, since saving is collective.
    """

    def __init__(self, outpath: Path, min_interval: float = 0.0) -> None:
        super().__init__(dirpath=outpath, filename=RESUME_NAME, save_top_k=1, every_n_epochs=1,
                         save_on_train_epoch_end=True, enable_version_counter=False)
        self.min_interval = min_interval
        self._last_write: float | None = None

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        now = time.monotonic()
        due = (self._last_write is None or now - self._last_write >= self.min_interval
               or trainer.current_epoch + 1 >= (trainer.max_epochs or 0))
        if self.min_interval > 0 and not trainer.strategy.broadcast(due):
            return
        super().on_train_epoch_end(trainer, module)
        self._last_write = now


def resume_checkpoint(outpath: Path, min_interval: float = 0.0) -> ModelCheckpoint:
    """The callback that writes ``OUTPATH/resume.ckpt``: every epoch, or at most every ``min_interval`` s."""
    return ResumeCheckpoint(outpath, min_interval)


def check_resumable(path: str | Path, module: torch.nn.Module) -> None:
    """Refuse, as :class:`InputError` naming ``path``, a file that is not a Lightning checkpoint of
    ``module``'s architecture (another stage's, another preset's, or not a checkpoint at all)."""
    try:
        try:  # memory-mapped: the tensors are not read, only their shapes
            ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError:  # a file from torch.save's legacy format cannot be mapped
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001  (any unreadable file is the user's input)
        raise InputError(f"{path}: not a checkpoint to resume from ({type(err).__name__})") from None
    if not isinstance(ckpt, dict) or "pytorch-lightning_version" not in ckpt or "state_dict" not in ckpt:
        raise InputError(f"{path}: not a checkpoint to resume from (resume needs the {RESUME_NAME}.ckpt a "
                         f"training stage writes in its --outpath, not a .pth of weights)")
    saved = ckpt["state_dict"]
    for name, tensor in module.state_dict().items():
        if name not in saved or tuple(saved[name].shape) != tuple(tensor.shape):
            there = "missing" if name not in saved else f"shaped {tuple(saved[name].shape)}"
            raise InputError(f"{path}: a checkpoint of another model ({name} is {there} there, "
                             f"{tuple(tensor.shape)} here: another stage or --model_preset?)")
