"""The 1-D Swin: shapes and gradients for awkward sizes, and the correct masking semantics."""

from __future__ import annotations

import copy

import pytest
import torch

from dust.models import TimeSeriesSwin, ts_swin
from dust.models.small_window_attention import small_window_attention
from dust.models.ts_swin import ShiftedWindowAttention1d, with_difference

TINY = dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4)


@pytest.mark.parametrize("length", [1, 3, 7, 13, 51])
@pytest.mark.parametrize("patch_size", [1, 2, 4])
@pytest.mark.parametrize("mask_mode", ["correct", "reference"])
def test_shapes_and_gradients(length, patch_size, mask_mode):
    model = TimeSeriesSwin(seq_len=length, in_chans=2, num_classes=3, patch_size=patch_size, mask_mode=mask_mode, **TINY)
    x = torch.randn(1, 2, length)
    features = model.forward_features(x)
    logits = model(x)
    assert features.shape == (1, model.num_features) == (1, 64)
    assert logits.shape == (1, 3)
    logits.square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # the zero-initialised block norms are what training moves first
    assert model.layers[0].blocks[0].norm1.weight.grad.abs().sum() > 0


def test_window_larger_than_sequence_is_clamped():
    model = TimeSeriesSwin(seq_len=5, in_chans=1, num_classes=2, embed_dim=8, depths=(2,), num_heads=(2,), window_size=8)
    attn = model.layers[0].blocks[1].attn
    assert (attn.window_size, attn.shift_size) == (5, 0)
    assert model(torch.randn(2, 1, 5)).shape == (2, 2)


def test_blocks_start_as_identity():
    model = TimeSeriesSwin(seq_len=20, in_chans=3, num_classes=2, **TINY)
    block = model.layers[0].blocks[1]
    x = torch.randn(3, 20, 8)
    torch.testing.assert_close(block(x), x)


def test_rejects_wrong_channel_count():
    model = TimeSeriesSwin(seq_len=20, in_chans=3, num_classes=2, **TINY)
    with pytest.raises(ValueError, match=r"\(batch, 3, length\)"):
        model(torch.randn(2, 4, 20))


def _windows(length: int, window: int, shift: int) -> list[list[int]]:
    """The ideal shifted-window partition of positions 0..length-1 (partial windows at both ends)."""
    starts = [0] + list(range(shift, length, window)) if shift else list(range(0, length, window))
    bounds = sorted(set(starts)) + [length]
    return [list(range(a, min(b, length))) for a, b in zip(bounds, bounds[1:]) if a < length]


def _ideal_attention(attn: ShiftedWindowAttention1d, x: torch.Tensor) -> torch.Tensor:
    """Window attention computed window by window, touching no padding."""
    batch, length, dim = x.shape
    heads, w = attn.num_heads, attn.window_size
    qkv = attn.qkv(x).view(batch, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, H, L, hd)
    out = torch.zeros(batch, heads, length, dim // heads)
    for idx in _windows(length, w, attn.shift_size):
        i = torch.tensor(idx)
        rel = i[:, None] - i[None, :] + w - 1
        bias = attn.relative_position_bias_table[rel].permute(2, 0, 1)  # (H, n, n)
        scores = q[:, :, i] @ k[:, :, i].transpose(-1, -2) * (dim // heads) ** -0.5 + bias
        out[:, :, i] = scores.softmax(-1) @ v[:, :, i]
    return attn.proj(out.transpose(1, 2).reshape(batch, length, dim))


@pytest.mark.parametrize("length", [5, 8, 13, 16, 17, 23, 51])
@pytest.mark.parametrize("shift", [0, 1, 2, 3])
def test_correct_mask_is_ideal_window_attention(length, shift):
    """Padding is never attended to and wrapped tokens stay in their own window."""
    attn = ShiftedWindowAttention1d(dim=8, window_size=4, shift_size=shift, num_heads=2, mask_mode="correct")
    torch.nn.init.normal_(attn.relative_position_bias_table)
    x = torch.randn(2, length, 8)
    torch.testing.assert_close(attn(x), _ideal_attention(attn, x), atol=1e-5, rtol=1e-5)


def test_reference_mask_differs_from_ideal_when_padding():
    attn = ShiftedWindowAttention1d(dim=8, window_size=4, shift_size=2, num_heads=2, mask_mode="reference")
    x = torch.randn(1, 13, 8)
    assert not torch.allclose(attn(x), _ideal_attention(attn, x), atol=1e-4)


@pytest.mark.parametrize("mask_mode,ignores_padding", [("correct", True), ("reference", False)])
def test_padding_content_never_reaches_the_output(monkeypatch, mask_mode, ignores_padding):
    """Fill the window padding with garbage instead of zeros: correct masking must not notice."""
    from dust.models import ts_swin
    from dust.models.window_rows import to_windows

    # length 24 with window 5: every stage pads its windows, no stage merges an odd length
    model = TimeSeriesSwin(seq_len=24, in_chans=3, num_classes=0, mask_mode=mask_mode, **{**TINY, "window_size": 5})
    model.eval()
    for p in model.parameters():  # leave the identity start so attention matters
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 3, 24)
    with torch.no_grad():
        clean = model(x)

        def garbage_padding(rows, fill, gather):  # window padding rows hold noise, not the projected zero token
            out = to_windows(rows, fill, gather)
            if gather is None:  # no padding in this stage
                return out
            pad = gather[1]
            return out.index_copy(0, pad, 5 * torch.randn(len(pad), out.shape[1]))

        monkeypatch.setattr(ts_swin, "to_windows", garbage_padding)
        noisy = model(x)
    assert torch.allclose(clean, noisy, atol=1e-5) == ignores_padding


def test_derivative_channels_are_the_first_difference():
    x = torch.tensor([[[1.0, 4.0, 2.0, 2.0]]])
    torch.testing.assert_close(with_difference(x), torch.tensor([[[1.0, 4.0, 2.0, 2.0], [0.0, 3.0, -2.0, 0.0]]]))
    model = TimeSeriesSwin(seq_len=16, in_chans=3, num_classes=2, embed_dim=8, depths=(1,), num_heads=(1,),
                           window_size=4, derivative=True)
    assert model.patch_embed.proj.in_channels == 6 and model.config["derivative"] is True
    assert model(torch.randn(2, 3, 16)).shape == (2, 2)
    assert "derivative" not in TimeSeriesSwin(seq_len=16, embed_dim=8, depths=(1,), num_heads=(1,)).config


def _grads(model, x, run=None):
    """Features of ``x`` (``run(x)``, default ``model(x)``: the models here have no head) and the parameters' gradients."""
    model.zero_grad(set_to_none=True)
    out = (model if run is None else run)(x)
    out.pow(2).sum().backward()
    return out.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mask_mode", ["correct", "reference"])
@pytest.mark.parametrize("length,ragged", [(13, False), (24, False), (23, True)])
def test_fused_attention_matches_the_plain_formulation(mask_mode, length, ragged):
    """The row gather and the explicit softmax give the pad-roll-crop model's outputs and gradients."""
    torch.manual_seed(0)
    model = TimeSeriesSwin(seq_len=length, in_chans=3, num_classes=0, mask_mode=mask_mode, **{**TINY, "window_size": 5})
    model.eval()  # no stochastic depth: both passes see the same network
    for p in model.parameters():  # leave the identity start so attention matters
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(3, 3, length)
    if ragged:
        x[0, :, 17:] = float("nan")  # NaN padding: the key mask joins the window masks
    fused_out, fused_grads = _grads(model, x)
    plain_out, plain_grads = _grads(model.set_attention_impl("reference"), x)
    torch.testing.assert_close(fused_out, plain_out, atol=1e-5, rtol=1e-5)
    assert fused_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, atol=1e-4, rtol=1e-4, msg=name)


def _bf16_grads(model, x, autocast):
    model = copy.deepcopy(model)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = model(x)
    y.float().pow(2).sum().backward()
    return torch.cat([y.detach().float().flatten(), *(p.grad.flatten() for p in model.parameters())])


@pytest.mark.parametrize("length", [23, 51])
def test_bfloat16_training_is_as_close_as_plain_attention(length, monkeypatch):
    """Under CPU bf16 autocast (``--precision bf16-mixed``) the fused path trains as close to
    float32 as the plain attention does in bf16."""
    torch.manual_seed(0)
    model = TimeSeriesSwin(seq_len=length, in_chans=3, num_classes=4, **{**TINY, "embed_dim": 32})
    x = torch.randn(32, 3, length)
    exact = _bf16_grads(copy.deepcopy(model).set_attention_impl("reference"), x, autocast=False)
    plain = _bf16_grads(copy.deepcopy(model).set_attention_impl("reference"), x, autocast=True)
    calls = []
    monkeypatch.setattr(ts_swin, "small_window_attention",
                        lambda rows, mask, *args: calls.append(rows.dtype) or small_window_attention(rows, mask, *args))
    fused = _bf16_grads(model, x, autocast=True)
    assert calls and set(calls) == {torch.bfloat16}
    ours, theirs = ((g - exact).norm() / exact.norm() for g in (fused, plain))
    assert ours <= 1.25 * theirs + 1e-4 and ours < 0.15, (ours, theirs)


def test_unknown_attention_impl_is_refused():
    with pytest.raises(ValueError, match="fused"):
        TimeSeriesSwin(seq_len=8, **TINY).set_attention_impl("fast")


def test_torch_compile_matches_eager():
    """Graph capture of the fused window attention (row gathers, the hand-written backward)."""
    torch.manual_seed(0)
    model = TimeSeriesSwin(seq_len=23, in_chans=3, num_classes=0, **{**TINY, "window_size": 5}).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(3, 3, 23)
    eager_out, eager_grads = _grads(model, x)
    compiled_out, compiled_grads = _grads(model, x, torch.compile(model, backend="aot_eager", dynamic=False))
    torch.testing.assert_close(compiled_out, eager_out, atol=1e-5, rtol=1e-5)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("mask_mode", ["correct", "reference"])
def test_shift_mask_kept_for_the_usual_length_matches_one_built_per_call(mask_mode):
    kept = ShiftedWindowAttention1d(dim=8, window_size=4, shift_size=2, num_heads=2, mask_mode=mask_mode, length=13)
    built = ShiftedWindowAttention1d(dim=8, window_size=4, shift_size=2, num_heads=2, mask_mode=mask_mode)
    built.load_state_dict(kept.state_dict())  # the kept mask is not part of the state
    torch.nn.init.normal_(kept.relative_position_bias_table)
    built.relative_position_bias_table.data.copy_(kept.relative_position_bias_table)
    for length in (13, 11):  # the usual length, and another one
        x = torch.randn(2, length, 8)
        torch.testing.assert_close(kept(x), built(x))


def test_block_mlps_recompute_gelu_with_the_same_gradients():
    from dust.models.mlp import RecomputedGeluMLP

    torch.manual_seed(0)
    lean = TimeSeriesSwin.from_preset("small", seq_len=19, in_chans=3, num_classes=4)
    plain = TimeSeriesSwin.from_preset("small", seq_len=19, in_chans=3, num_classes=4)
    plain.load_state_dict(lean.state_dict())
    mlps = [m for m in plain.modules() if isinstance(m, RecomputedGeluMLP)]
    assert mlps and all(m.recompute for m in mlps)
    for module in mlps:
        module.recompute = False
    x = torch.randn(5, 3, 19)
    for model in (plain, lean):
        model.train()
        torch.manual_seed(1)  # the same stochastic-depth draws
        model(x).square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), lean.parameters()):
        assert torch.equal(a.grad, b.grad), name
