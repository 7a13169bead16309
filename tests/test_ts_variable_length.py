"""Variable-length series: NaN padding is masked in the 1-D Swin and kept by the series transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dust.data.datasets import SeriesAugment, SeriesTransform, pad_series, series_length
from dust.models import TimeSeriesSwin
from dust.models.ts_swin import series_lengths

TINY = dict(embed_dim=8, depths=(2, 2, 2), num_heads=(1, 2, 2), window_size=4)


def _model(length: int, patch_size: int, mask_mode: str = "correct", conv_stem: int = 0,
           derivative: bool = False) -> TimeSeriesSwin:
    torch.manual_seed(0)
    model = TimeSeriesSwin(seq_len=length, in_chans=2, num_classes=3, patch_size=patch_size, mask_mode=mask_mode,
                           conv_stem=conv_stem, derivative=derivative, **TINY).eval()
    for module in model.modules():  # non-zero norms, so every block does something
        if isinstance(module, (torch.nn.LayerNorm, torch.nn.BatchNorm1d)):
            torch.nn.init.normal_(module.weight)
            torch.nn.init.normal_(module.bias)
    return model


def _nan_pad(x: torch.Tensor, width: int) -> torch.Tensor:
    return torch.cat([x, torch.full((*x.shape[:-1], width - x.shape[-1]), float("nan"))], dim=-1)


def test_series_lengths_reads_trailing_nan():
    x = torch.randn(3, 2, 10)
    x[0, :, 7:] = float("nan")
    x[1, 0, 4:] = float("nan")  # one channel ends early: not padding while the other goes on
    x[2, :, 3] = float("nan")  # a missing step inside the series
    assert series_lengths(x).tolist() == [7, 10, 10]
    assert series_length(x[0]) == 7 and series_length(x[0].numpy()) == 7


@pytest.mark.parametrize(("patch_size", "mask_mode", "conv_stem", "derivative"),
                         [(1, "correct", 0, False), (3, "correct", 0, False), (3, "reference", 0, False),
                          (2, "correct", 6, False), (3, "correct", 0, True), (2, "correct", 6, True)])
def test_features_do_not_depend_on_padding(patch_size, mask_mode, conv_stem, derivative):
    """A series' features are the same alone, NaN-padded to any width, or beside longer series."""
    model = _model(40, patch_size, mask_mode, conv_stem, derivative)
    for length in (1, 5, 22, 39):
        x = torch.randn(1, 2, length)
        padded = [_nan_pad(x, width) for width in (40, 47)]
        with torch.no_grad():
            got = [model.forward_features(torch.cat([p, torch.randn(1, 2, p.shape[-1])]))[0] for p in padded]
            by_lengths = model.forward_features(torch.cat([x, torch.randn(1, 2, 40 - length)], -1),
                                                lengths=torch.tensor([length]))[0]
            if mask_mode == "correct":  # the reference's quirky mask depends on the padded width
                torch.testing.assert_close(got[0], model.forward_features(x)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[0], got[1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[0], by_lengths, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("derivative", [False, True])
def test_filler_values_never_reach_the_output(derivative):
    model = _model(30, 2, conv_stem=4, derivative=derivative)
    x = _nan_pad(torch.randn(2, 2, 17), 30)
    lengths = series_lengths(x)
    garbage = torch.randn(2, 2, 30) * 100  # anything beyond the lengths must be ignored
    filled = torch.where(torch.isnan(x), garbage, x)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(filled, lengths=lengths), atol=1e-5, rtol=1e-5)


def test_full_length_input_is_the_unmasked_path():
    model = _model(24, 2)
    x = torch.randn(3, 2, 24)
    with torch.no_grad():
        plain = model(x)
        assert torch.equal(plain, model(x, lengths=torch.tensor([24, 24, 24])))


def test_padded_batch_trains():
    model = _model(20, 2, conv_stem=4).train()
    x = _nan_pad(torch.randn(4, 2, 9), 20)
    x[0] = torch.randn(2, 20)
    logits = model(x)
    assert torch.isfinite(logits).all()
    logits.square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_stem_batch_statistics_skip_padding():
    """In training, BatchNorm in the stem counts only real time steps."""
    stem = _model(20, 2, conv_stem=4).train().patch_embed.stem
    x = torch.randn(3, 2, 20)
    valid = torch.arange(20)[None] < torch.tensor([[20], [9], [14]])
    x = x * valid[:, None]
    out = stem.bn1(stem.conv1(x), valid)
    kept = out.transpose(0, 1)[:, valid]  # (S, real steps)
    torch.testing.assert_close(kept.mean(1), stem.bn1.bias, atol=1e-4, rtol=0)


def test_pad_series_and_transform_keep_padding():
    series = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((2, 5), np.float32)]
    padded = pad_series(series)
    assert padded.shape == (2, 2, 5) and np.isnan(padded[0, :, 3:]).all()
    transform = SeriesTransform.fit(padded)
    flat = np.concatenate([s.reshape(2, -1) for s in series], axis=1)
    np.testing.assert_allclose(transform.mean, flat.mean(axis=1), rtol=1e-6)
    out = transform(padded[0])
    assert torch.isnan(out[:, 3:]).all() and torch.isfinite(out[:, :3]).all()
    # resampling stretches the valid part by the same factor as a full series, padding stays NaN
    resampled = SeriesTransform(transform.mean, transform.std, length=10)(padded[0])
    assert resampled.shape == (2, 10) and series_length(resampled) == 6
    torch.manual_seed(0)
    augmented = SeriesAugment(jitter=0.1, scale=0.1, shift=0.2, crop=0.3)(out)
    assert torch.isnan(augmented[:, 3:]).all() and torch.isfinite(augmented[:, :3]).all()


def test_augment_unchanged_for_complete_series_without_crop():
    """Adding ``crop`` (off by default) leaves the random stream of the other changes as it was."""
    x = torch.randn(3, 50)
    torch.manual_seed(1)
    a = SeriesAugment()(x)
    torch.manual_seed(1)
    scaled = x * (1 + 0.1 * torch.randn(3, 1))
    offset = int(torch.randint(-5, 6, ()))
    index = (torch.arange(50) - offset).clamp(0, 49)
    expected = scaled[:, index]
    expected = expected + 0.03 * torch.randn_like(expected)
    torch.testing.assert_close(a, expected)


@pytest.mark.parametrize("stretch", [False, True])
def test_transform_does_not_depend_on_how_much_padding_follows(stretch):
    series = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((2, 5), np.float32)]
    padded = pad_series(series)  # (2, 2, 5): the training arrays
    transform = SeriesTransform.fit(padded, length=10, stretch=stretch)
    for row in padded:
        wider = np.concatenate([row, np.full((2, 4), np.nan, np.float32)], axis=-1)
        torch.testing.assert_close(transform(wider), transform(row), equal_nan=True)
    assert series_length(transform(padded[0])) == (10 if stretch else 6)  # 3 of 5 steps -> 6 of 10
    longer = np.arange(14, dtype=np.float32).reshape(2, 7)  # longer than any training series
    assert transform(longer).shape == (2, 10) and torch.isfinite(transform(longer)).all()
