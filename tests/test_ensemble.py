"""Series ensembles: members averaged, and test-time views shifted in time."""

from __future__ import annotations

import torch

from dust.checkpoint import load_checkpoint, save_checkpoint
from dust.models import SeriesEnsemble
from dust.models.ensemble import shift_in_time

NAN = float("nan")
TINY = dict(seq_len=20, in_chans=2, num_classes=3, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4,
            patch_size=2)


def test_shift_repeats_the_edge_and_leaves_padding_alone():
    x = torch.arange(10.0).repeat(2, 1, 1)  # (2, 1, 10)
    x[1, :, 6:] = NAN  # the second series is 6 steps long
    later = shift_in_time(x, 0.2)
    assert later[0, 0].tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]
    assert later[1, 0, :6].tolist() == [0, 0, 1, 2, 3, 4] and torch.isnan(later[1, 0, 6:]).all()
    earlier = shift_in_time(x, -0.2)
    assert earlier[0, 0].tolist() == [2, 3, 4, 5, 6, 7, 8, 9, 9, 9]
    assert earlier[1, 0, :6].tolist() == [1, 2, 3, 4, 5, 5] and torch.isnan(earlier[1, 0, 6:]).all()
    # explicit lengths act like the NaNs; every channel moves together
    y = torch.randn(3, 2, 10)
    moved = shift_in_time(y, 0.3, lengths=torch.tensor([10, 5, 7]))
    torch.testing.assert_close(moved[1, :, 5:], y[1, :, 5:])
    torch.testing.assert_close(moved[2, :, 2:7], y[2, :, :5])
    torch.testing.assert_close(shift_in_time(y, 0.0), y)


def test_test_shift_averages_the_five_shifted_views():
    torch.manual_seed(0)
    model = SeriesEnsemble(2, test_shift=0.1, **TINY).eval()
    x = torch.randn(4, 2, 20)
    with torch.no_grad():
        views = [shift_in_time(x, f) for f in (-0.1, -0.05, 0.0, 0.05, 0.1)]
        expected = torch.stack([m(v).softmax(-1) for v in views for m in model.members]).mean(0)
        torch.testing.assert_close(model(x).exp(), expected)
        plain = SeriesEnsemble.of(list(model.members)).eval()  # the same members, no views
        assert plain.config.get("test_shift") is None
        assert not torch.allclose(plain(x).exp(), expected)


def test_test_shift_survives_a_checkpoint(tmp_path):
    model = SeriesEnsemble(1, test_shift=0.2, **TINY).eval()
    loaded = load_checkpoint(save_checkpoint(tmp_path / "m.pth", model), expect="ts").build()
    assert isinstance(loaded, SeriesEnsemble) and loaded.test_shift == 0.2
    x = torch.randn(3, 2, 20)
    x[0, :, 14:] = NAN  # a shorter series: its views stay inside its own steps
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
        assert torch.isfinite(model(x)).all()
