"""The data side of a training stage: loaders over array datasets, correct under distributed training."""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

__all__ = ["ArrayDataModule", "StridedSampler"]


class StridedSampler(Sampler[int]):
    """Rank r of w gets indices r, r + w, r + 2w, ...: every sample exactly once across ranks, no padding.

    (PyTorch's ``DistributedSampler`` pads with repeated samples, which would count
    them twice in validation metrics.)
    """

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = range(rank, length, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class ArrayDataModule(L.LightningDataModule):
    """Training loader shuffled by (seed, epoch) — so a resumed run sees the same order — and an
    unpadded validation loader; both split across processes when training is distributed."""

    def __init__(self, train: Dataset, val: Dataset, batch_size: int, num_workers: int, seed: int) -> None:
        super().__init__()
        self.train, self.val = train, val
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, dataset: Dataset, sampler: Sampler) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._world()
        sampler = DistributedSampler(self.train, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
        return self._loader(self.train, sampler)

    def val_dataloader(self) -> DataLoader:
        rank, world = self._world()
        return self._loader(self.val, StridedSampler(len(self.val), rank, world))

