"""The Video Swin: presets, shapes and gradients, and every way weights come in."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.swin_transformer import SwinTransformer

from dust.models import (
    VideoSwin,
    WeightsError,
    count_parameters,
    get_preset,
    inflate_swin_2d,
    load_imagenet_2d,
    load_kinetics400,
)
from dust.models.mlp import RecomputedGeluMLP

MICRO = dict(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=(2, 4, 4))


def test_paper_preset_has_reference_parameter_count():
    model = VideoSwin.from_preset("paper", num_classes=4)
    assert count_parameters(model) == 87_643_084
    assert model.feature_dim == 1024


@pytest.mark.parametrize("preset", ["paper", "small", "tiny", "nano"])
def test_presets_build_with_their_numbers(preset):
    model = VideoSwin.from_preset(preset, num_classes=3)
    hp = get_preset("video", preset)
    assert model.feature_dim == hp["embed_dim"] * 8
    assert model.head.out_features == 3


@pytest.mark.parametrize("clip", [(1, 3, 4, 32, 32), (2, 3, 3, 30, 34)])
def test_nano_shapes_and_gradients(clip):
    model = VideoSwin.from_preset("nano", num_classes=5)
    x = torch.randn(*clip)
    assert model.forward_features(x).shape == (clip[0], model.feature_dim)
    logits = model(x)
    assert logits.shape == (clip[0], 5)
    logits.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_features_only_model():
    model = VideoSwin(num_classes=0, **MICRO)
    assert model(torch.randn(1, 3, 2, 16, 16)).shape == (1, 64)


def test_rejects_wrong_input_shape():
    with pytest.raises(ValueError, match="frames, height, width"):
        VideoSwin(num_classes=2, **MICRO)(torch.randn(1, 4, 2, 16, 16))


def test_kinetics400_checkpoint_loads_and_drops_the_head(tmp_path):
    k400 = VideoSwin(num_classes=400, **MICRO)
    path = tmp_path / "swin3d_k400.pth"
    torch.save(k400.state_dict(), path)
    model = VideoSwin(num_classes=4, **MICRO)
    report = load_kinetics400(model, path)
    assert report.dropped == ["head.bias", "head.weight"] and not report.unexpected and not report.missing
    for key, value in k400.state_dict().items():
        if not key.startswith("head."):
            torch.testing.assert_close(model.state_dict()[key], value)
    same = VideoSwin(num_classes=400, **MICRO)
    assert not load_kinetics400(same, path).dropped
    torch.testing.assert_close(same.head.weight, k400.head.weight)


def test_kinetics400_of_another_preset_is_refused(tmp_path):
    path = tmp_path / "k400.pth"
    torch.save(VideoSwin(num_classes=400, **{**MICRO, "embed_dim": 16}).state_dict(), path)
    with pytest.raises(WeightsError, match="do not fit"):
        load_kinetics400(VideoSwin(num_classes=4, **MICRO), path)


def test_kinetics400_with_missing_tensors_is_refused():
    state = VideoSwin(num_classes=400, **MICRO).state_dict()
    del state["norm.weight"]
    with pytest.raises(WeightsError, match="norm.weight"):
        load_kinetics400(VideoSwin(num_classes=4, **MICRO), state)


def _swin_2d(embed_dim=8, window=4) -> SwinTransformer:
    return SwinTransformer(patch_size=[4, 4], embed_dim=embed_dim, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                           window_size=[window, window], num_classes=1000)


def _original_layout(state: dict) -> dict:
    """torchvision 2-D names -> the original Swin release's names."""
    import re

    out = {}
    for key, value in state.items():
        key = key.replace("features.0.0.", "patch_embed.proj.").replace("features.0.2.", "patch_embed.norm.")
        m = re.match(r"features\.(\d+)\.(.*)", key)
        if m:
            n, rest = int(m[1]), m[2]
            key = f"layers.{(n - 1) // 2}.blocks.{rest}" if n % 2 else f"layers.{n // 2 - 1}.downsample.{rest}"
        out[key.replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2.")] = value
    return out


@pytest.mark.parametrize("layout", ["torchvision", "original"])
def test_imagenet_2d_inflation(layout):
    swin2d = _swin_2d()
    state = swin2d.state_dict()
    if layout == "original":
        state = _original_layout(state)
    model = VideoSwin(num_classes=4, **{**MICRO, "window_size": (3, 4, 4)})
    inflated = inflate_swin_2d(state, model)
    kernel3d = inflated["patch_embed.proj.weight"]
    assert kernel3d.shape == model.patch_embed.proj.weight.shape == (8, 3, 2, 4, 4)
    torch.testing.assert_close(kernel3d.sum(dim=2), swin2d.features[0][0].weight)
    table2d = swin2d.features[1][0].attn.relative_position_bias_table  # (7*7, 1)
    table3d = inflated["features.0.0.attn.relative_position_bias_table"]
    assert table3d.shape == (5 * 7 * 7, 1)
    for dt in range(5):  # tiled over every temporal offset
        torch.testing.assert_close(table3d[dt * 49:(dt + 1) * 49], table2d)
    report = load_imagenet_2d(model, state)
    assert report.dropped == ["head.bias", "head.weight"] and not report.unexpected
    torch.testing.assert_close(model.norm.weight, swin2d.norm.weight)


def test_inflated_model_sees_a_static_clip_like_the_2d_model():
    swin2d = _swin_2d().eval()
    model = VideoSwin(num_classes=4, **MICRO).eval()
    load_imagenet_2d(model, swin2d.state_dict())
    image = torch.randn(1, 3, 32, 32)
    clip = image[:, :, None].expand(1, 3, 2, 32, 32)
    with torch.no_grad():
        emb2d = swin2d.features[0](image)  # (1, 8, 8, C)
        emb3d = model.patch_embed(clip)  # (1, 1, 8, 8, C)
    torch.testing.assert_close(emb3d[:, 0], emb2d, atol=1e-5, rtol=1e-5)


def test_inflation_resizes_bias_tables_to_other_windows():
    swin2d = _swin_2d(window=7)
    model = VideoSwin(num_classes=4, **{**MICRO, "window_size": (2, 4, 4)})
    report = load_imagenet_2d(model, swin2d.state_dict())
    assert not report.unexpected
    assert model.features[0][0].attn.relative_position_bias_table.shape == (3 * 7 * 7, 1)


def test_imagenet_2d_of_another_width_is_refused():
    with pytest.raises(WeightsError, match="do not fit"):
        load_imagenet_2d(VideoSwin(num_classes=4, **MICRO), _swin_2d(embed_dim=16).state_dict())


@pytest.mark.parametrize("checkpointing", [False, True])
def test_block_mlps_give_the_same_gradients_recomputing_gelu_or_not(checkpointing, monkeypatch):
    monkeypatch.setattr("dust.models.recompute.MIN_BYTES", 0)  # tiny clips: recipes for every size
    torch.manual_seed(0)
    plain = VideoSwin.from_preset("nano", num_classes=3)
    lean = VideoSwin.from_preset("nano", num_classes=3, grad_checkpointing=checkpointing)
    lean.load_state_dict(plain.state_dict())
    for module in plain.modules():
        if isinstance(module, RecomputedGeluMLP):
            module.recompute = False  # autograd's own bookkeeping: both hidden tensors kept
    clip = torch.randn(2, 3, 8, 32, 32)
    for model in (plain, lean):
        model(clip).square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), lean.parameters()):
        assert torch.equal(a.grad, b.grad), name  # what they keep: tests/test_recompute.py
