"""The fused model: video feature width from the video model, stage-2 backbone loading."""

from __future__ import annotations

import pytest
import torch

from dust.models import DuST, TimeSeriesSwin, VideoSwin, WeightsError, load_ts_backbone

TS = dict(seq_len=19, in_chans=3, embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=4)


def test_video_feature_width_comes_from_the_video_model():
    video = VideoSwin.from_preset("nano", num_classes=4)
    model = DuST(video.feature_dim, num_classes=4, **TS)
    assert model.head.in_features == model.backbone.num_features + video.feature_dim
    out = model(torch.randn(2, 3, 19), torch.randn(2, video.feature_dim))
    assert out.shape == (2, 4)


def test_rejects_video_features_of_the_wrong_width():
    model = DuST(192, num_classes=4, **TS)
    with pytest.raises(ValueError, match=r"expects \(batch, 192\)"):
        model(torch.randn(2, 3, 19), torch.randn(2, 1024))
    with pytest.raises(ValueError, match="2 series but 3 video feature rows"):
        model(torch.randn(2, 3, 19), torch.randn(3, 192))


def test_loads_stage2_backbone_without_its_head():
    stage2 = TimeSeriesSwin(num_classes=4, **TS)
    fused = DuST(32, num_classes=4, **TS)
    report = load_ts_backbone(fused, stage2.state_dict())
    assert report.dropped == ["head.bias", "head.weight"] and not report.missing
    x = torch.randn(2, 3, 19)
    torch.testing.assert_close(fused.backbone.forward_features(x), stage2.forward_features(x))


def test_backbone_of_another_architecture_is_refused():
    stage2 = TimeSeriesSwin(num_classes=4, **{**TS, "embed_dim": 16, "num_heads": (2, 2, 2, 2)})
    with pytest.raises(WeightsError, match="do not fit"):
        load_ts_backbone(DuST(32, num_classes=4, **TS), stage2.state_dict())
    deeper = TimeSeriesSwin(num_classes=4, **{**TS, "depths": (2, 1, 1, 1)})
    with pytest.raises(WeightsError, match="unexpected"):
        load_ts_backbone(DuST(32, num_classes=4, **TS), deeper.state_dict())


def test_from_preset_and_grads():
    model = DuST.from_preset("nano", video_feature_dim=24, seq_len=51, in_chans=3, num_classes=4)
    model(torch.randn(1, 3, 51), torch.randn(1, 24)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
