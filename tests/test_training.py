"""Training pieces: schedule, class weights, series augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dust.data.datasets import SeriesAugment, inverse_frequency_weights
from dust.training.resume import ResumeCheckpoint
from dust.training.task import ClassifierTask, warmup_cosine


def test_warmup_then_cosine():
    factors = [warmup_cosine(step, 4, 20) for step in range(21)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == pytest.approx(1.0)
    assert factors[12] == pytest.approx(0.5)
    assert factors[20] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))


def test_inverse_frequency_weights():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    weights = inverse_frequency_weights(labels, 4)
    assert weights[:3] == pytest.approx([10 / 24, 10 / 12, 10 / 4])
    assert weights[3] == 1.0  # absent class


def test_series_augment_changes_series_repeatably():
    x = torch.randn(3, 40)
    torch.manual_seed(1)
    a = SeriesAugment()(x)
    torch.manual_seed(1)
    b = SeriesAugment()(x)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    assert torch.equal(SeriesAugment(jitter=0, scale=0, shift=0)(x), x)


def _resume_epochs_seen(folder, interval: float) -> tuple[list, int]:
    """The epoch held by ``resume.ckpt`` at the start of each of 4 epochs, and at the end."""
    import lightning as L

    path = folder / "resume.ckpt"

    def held():
        return torch.load(path, weights_only=False)["epoch"] if path.exists() else None

    class Seen(L.Callback):
        def __init__(self):
            self.epochs = []

        def on_train_epoch_start(self, trainer, module):
            self.epochs.append(held())

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(8, 3), torch.arange(8) % 2)
    seen = Seen()
    trainer = L.Trainer(max_epochs=4, callbacks=[seen, ResumeCheckpoint(folder, interval)], logger=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(ClassifierTask(torch.nn.Linear(3, 2), 2, lr=0.01), torch.utils.data.DataLoader(data, batch_size=4))
    return seen.epochs, held()


def test_resume_checkpoint_every_epoch_or_after_its_interval(tmp_path):
    assert _resume_epochs_seen(tmp_path / "every", 0.0) == ([None, 0, 1, 2], 3)
    # with a long interval only the first epoch and the last are written
    assert _resume_epochs_seen(tmp_path / "interval", 3600.0) == ([None, 0, 0, 0], 3)


@pytest.mark.parametrize("size", [None, (3, 12, 10)])
def test_clips_read_as_uint8_and_normalised_on_the_device_equal_the_whole_transform(size):
    from dust.data.datasets import ArrayRows, VideoTransform

    clips = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 16, 16), dtype=np.uint8)
    transform = VideoTransform(size=size)
    read = ArrayRows([clips], [transform.read])
    batch = torch.stack([read[i][0] for i in range(2)])
    assert batch.dtype == (torch.uint8 if size is None else torch.float32)  # resampling needs float
    whole = torch.stack([transform(c) for c in clips])
    assert torch.equal(transform.normalize(batch), whole)
    if size is None:  # ImageNet's normalisation of [0, 1] pixels
        mean, std = np.array(transform.mean)[:, None, None, None], np.array(transform.std)[:, None, None, None]
        np.testing.assert_allclose(whole.numpy(), (clips / 255 - mean) / std, atol=1e-5)


def test_the_training_step_applies_on_device_steps_to_its_inputs():
    seen = []

    class Probe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Linear(2, 3)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            seen.append((a.dtype, b.dtype))
            return self.head(a + b)

    task = ClassifierTask(Probe(), 3, 1e-3, on_device=[lambda x: x.float() / 2])
    batch = (torch.full((4, 2), 8, dtype=torch.uint8), torch.ones(4, 2), torch.tensor([0, 1, 2, 0]))
    expected = torch.nn.functional.cross_entropy(task.model.head(torch.full((4, 2), 5.0)), batch[2])
    task.log = lambda *a, **k: None  # no trainer attached
    assert torch.allclose(task.training_step(batch, 0), expected)
    assert seen == [(torch.float32, torch.float32)]
