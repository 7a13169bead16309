"""A Lightning callback that keeps a stage's validation history and checkpoints."""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ..atomic import write_json, write_text
from ..checkpoint import save_checkpoint

__all__ = ["StageRecorder"]

log = logging.getLogger("dust")
HISTORY_FIELDS = ["epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1", "val_count"]


class StageRecorder(L.Callback):
    """After every validated epoch: append the history (CSV, JSON, log), save ``last.pth`` and, when the
    validation loss is the lowest so far, ``best.pth``; at the end save the final weights as ``final_name``.

    Args:
        name: the stage's name in files (``step_3d`` ...).
        outpath: folder for checkpoints.
        logpath: folder for the history and the log file.
        final_name: file name of the final checkpoint (the reference's ``final_3d.pth`` ...).
        preset: the model preset, stored in checkpoints.
        meta: anything else the checkpoints must carry (preprocessing, data sizes).
    """

    def __init__(self, name: str, outpath: Path, logpath: Path, final_name: str, preset: str | None,
                 meta: dict[str, Any]) -> None:
        self.name = name
        self.outpath = Path(outpath)
        self.logpath = Path(logpath)
        self.final_name = final_name
        self.preset = preset
        self.meta = meta
        self.history: list[dict[str, float]] = []
        self.best: dict[str, float] | None = None
        self._pending: dict[str, float] | None = None
        self._log_lines: list[str] = []

    @property
    def history_paths(self) -> tuple[Path, Path]:
        return self.logpath / f"{self.name}_history.csv", self.logpath / f"{self.name}_history.json"

    def _save(self, trainer: L.Trainer, module: L.LightningModule, filename: str, **extra: Any) -> None:
        if trainer.is_global_zero:
            save_checkpoint(self.outpath / filename, module.model, preset=self.preset, **self.meta, **extra)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        self._pending = {k: float(m[k]) for k in ("val_loss", "val_accuracy", "val_macro_f1")}
        self._pending["val_count"] = int(m["val_count"])

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._pending is None:
            return
        train_loss = trainer.callback_metrics.get("train_loss")
        row = {"epoch": trainer.current_epoch + 1,
               "train_loss": float(train_loss) if train_loss is not None else math.nan, **self._pending}
        self._pending = None
        self.history.append(row)
        is_best = self.best is None or row["val_loss"] < self.best["val_loss"]
        if is_best:
            self.best = row
            self._save(trainer, module, "best.pth", epoch=row["epoch"], metrics=row)
        self._save(trainer, module, "last.pth", epoch=row["epoch"], metrics=row)
        self._log_lines.append(
            f"epoch {row['epoch']:4d}  train_loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  "
            f"val_accuracy {row['val_accuracy']:.4f}  val_macro_f1 {row['val_macro_f1']:.4f}{'  *' if is_best else ''}"
        )
        if trainer.is_global_zero:
            self._write()

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue the history (saved in Lightning's resume checkpoint)."""
        return {"history": self.history, "best": self.best, "log_lines": self._log_lines}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history, self.best, self._log_lines = state["history"], state["best"], state["log_lines"]

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        last = self.history[-1] if self.history else {}
        checksums = _gather_checksums(trainer, module)
        if len(set(checksums)) > 1:
            log.warning("%s: processes ended with different weights: %s", self.name, checksums)
        self.rank_checksums = checksums
        self._save(trainer, module, self.final_name, epoch=trainer.current_epoch, metrics=last)
        if self.best is not None:
            self._log_lines.append(f"best epoch {self.best['epoch']} (lowest validation loss {self.best['val_loss']:.4f})")
        if trainer.is_global_zero:
            self._write()

    def _write(self) -> None:
        csv_path, json_path = self.history_paths
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        writer.writerows(self.history)
        write_text(csv_path, buffer.getvalue())
        write_json(json_path, {"stage": self.name, "best": self.best, "history": self.history,
                               "rank_weight_checksums": getattr(self, "rank_checksums", None)})
        write_text(self.logpath / f"{self.name}.log", "\n".join(self._log_lines) + "\n")


def _gather_checksums(trainer: L.Trainer, module: L.LightningModule) -> list[float]:
    """A checksum of the weights from every process (equal when distributed training stayed in sync)."""
    with torch.no_grad():
        total = sum((p.double() * (i + 1)).sum() for i, p in enumerate(module.model.parameters()))
    value = torch.as_tensor(total, dtype=torch.float64, device=module.device).reshape(1)
    if trainer.world_size > 1:
        value = trainer.strategy.all_gather(value).reshape(-1)
    return [float(v) for v in value.cpu()]
