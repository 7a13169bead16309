"""One LightningModule for every training stage: a classifier over whatever inputs a batch carries."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

__all__ = ["ClassifierTask", "parameter_groups", "warmup_cosine"]


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on weight matrices, none on the model's ``no_weight_decay`` names."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name in skip or p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor: linear warm-up over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _fused_supported(model: nn.Module) -> bool:
    """Whether AdamW's fused kernel takes these parameters: floating point, all on CPU or all on CUDA.

    The fused step updates every tensor in one kernel; the default loops over them one at a time,
    which costs a tenth or more of a training step on CPU.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    devices = {p.device.type for p in params}
    return bool(params) and len(devices) == 1 and devices <= {"cpu", "cuda"} and all(
        p.is_floating_point() for p in params)


class ClassifierTask(L.LightningModule):
    """Train ``model`` with cross-entropy on batches ``(*inputs, labels)``; validate loss, accuracy, macro-F1.

    Args:
        model: any of the DuST models; called as ``model(*inputs)``.
        num_classes: classes, for the metrics.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay (never on biases, norms or bias tables).
        label_smoothing: cross-entropy label smoothing.
        class_weights: optional per-class loss weights (the validation loss stays unweighted).
        schedule: ``"constant"`` or ``"cosine"`` (per-step cosine decay after a linear warm-up).
        warmup_epochs: warm-up length for ``"cosine"``, in epochs (fractions allowed).
        on_device: per input, what to apply to it on the device before the model (None: nothing),
            e.g. :meth:`~dust.data.datasets.VideoTransform.normalize` for uint8 clips.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        lr: float,
        weight_decay: float = 0.05,
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
        schedule: str = "constant",
        warmup_epochs: float = 0.0,
        on_device: Sequence[Callable[[Tensor], Tensor] | None] = (),
    ) -> None:
        super().__init__()
        self.model = model
        self.on_device = tuple(on_device)
        self.save_hyperparameters(ignore=["model", "on_device"])
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)
        self.val_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.val_f1 = MulticlassF1Score(num_classes, average="macro")
        self._val_loss_sum = 0.0
        self._val_count = 0

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.model(*inputs)

    def _prepared(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        """The batch's inputs with :attr:`on_device` applied (inside the step: no reference outlives it)."""
        steps = self.on_device + (None,) * (len(inputs) - len(self.on_device))
        return [x if step is None else step(x) for x, step in zip(inputs, steps)]

    def _loss(self, logits: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
        return F.cross_entropy(logits, labels, weight=self.class_weights,
                               label_smoothing=self.hparams.label_smoothing, reduction=reduction)

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        *inputs, labels = batch
        loss = self._loss(self(*self._prepared(inputs)), labels)
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(labels))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_loss_sum, self._val_count = 0.0, 0

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        *inputs, labels = batch
        logits = self(*self._prepared(inputs))
        self._val_loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        self._val_count += len(labels)
        self.val_accuracy.update(logits, labels)
        self.val_f1.update(logits, labels)

    def on_validation_epoch_end(self) -> None:
        totals = torch.tensor([self._val_loss_sum, float(self._val_count)], device=self.device)
        totals = self.all_gather(totals).reshape(-1, 2).sum(0) if self.trainer.world_size > 1 else totals
        self.log("val_loss", totals[0] / totals[1].clamp(min=1), prog_bar=True)
        self.log("val_accuracy", self.val_accuracy.compute(), prog_bar=True)
        self.log("val_macro_f1", self.val_f1.compute())
        self.log("val_count", totals[1])
        self.val_accuracy.reset()
        self.val_f1.reset()

    def configure_optimizers(self):
        groups = parameter_groups(self.model, self.hparams.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=self.hparams.lr, fused=_fused_supported(self.model))
        if self.hparams.schedule == "constant":
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = total / max(self.trainer.max_epochs or 1, 1)
        warmup = int(round(self.hparams.warmup_epochs * per_epoch))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
