"""The fast window attention of the video model against torchvision's own, tensor for tensor."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torchvision.models.video.swin_transformer import ShiftedWindowAttention3d, SwinTransformer3d

from dust.models import VideoSwin, count_parameters, video_attention
from dust.models.video_attention import WindowAttention3d, plan_windows

MICRO = dict(embed_dim=8, depths=(2, 2), num_heads=(1, 2), window_size=(2, 4, 4), drop_path_rate=0.0)

# (input T, H, W), window, shift: shifted and not, padded, windows larger than the input.
CASES = [
    ((4, 8, 8), [2, 4, 4], [0, 0, 0]),
    ((4, 8, 8), [2, 4, 4], [1, 2, 2]),
    ((5, 9, 11), [2, 4, 4], [1, 2, 2]),  # padded in every dimension
    ((3, 6, 13), [2, 4, 4], [0, 0, 0]),  # padded, unshifted
    ((1, 3, 3), [2, 4, 4], [1, 2, 2]),  # window larger than the input: clamped, no shift
    ((8, 5, 12), [8, 7, 7], [4, 3, 3]),  # the paper's window, clamped in T and H only
]


@pytest.fixture
def nan_for_unset_memory():
    """New tensors start as NaN (deterministic mode fills ``torch.empty``), so a row never written shows."""
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


def _pair(size, window, shift, dim=16, heads=2):
    stock = ShiftedWindowAttention3d(dim, list(window), list(shift), heads)
    fast = WindowAttention3d(dim, list(window), list(shift), heads)
    fast.load_state_dict(stock.state_dict())
    with torch.no_grad():  # a bias table far from zero, so a wrong index shows
        stock.relative_position_bias_table.normal_(0, 1)
        fast.relative_position_bias_table.copy_(stock.relative_position_bias_table)
    return stock, fast


@pytest.mark.parametrize("size, window, shift", CASES)
@pytest.mark.parametrize("train", [True, False])
def test_matches_torchvision_attention(size, window, shift, train):
    stock, fast = _pair(size, window, shift)
    stock.train(train)
    fast.train(train)
    x = torch.randn(2, *size, 16)
    x_stock, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_stock, y_fast = stock(x_stock), fast(x_fast)
    torch.testing.assert_close(y_fast, y_stock, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(y_stock)
    y_stock.backward(grad)
    y_fast.backward(grad)
    torch.testing.assert_close(x_fast.grad, x_stock.grad, atol=1e-5, rtol=1e-5)
    for (name, p_fast), p_stock in zip(fast.named_parameters(), stock.parameters()):
        torch.testing.assert_close(p_fast.grad, p_stock.grad, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("size, window, shift", CASES)
@pytest.mark.parametrize("scores_per_call", [1, 5000])
def test_backward_in_chunks_of_clips_matches_torchvision(size, window, shift, scores_per_call, monkeypatch,
                                                         nan_for_unset_memory):
    """Backward recomputes the scores in chunks (one window at a time with a budget of 1; with 5000,
    two clips of three where a group's windows are small, part of a clip's windows where they are
    many): every split gives torchvision's gradients, and no gradient row is left unwritten."""
    monkeypatch.setattr(video_attention, "_SCORES_PER_CALL", scores_per_call)
    stock, fast = _pair(size, window, shift)
    x = torch.randn(3, *size, 16)
    x_stock, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad = torch.randn(3, *size, 16)
    stock(x_stock).backward(grad)
    fast(x_fast).backward(grad)
    torch.testing.assert_close(x_fast.grad, x_stock.grad, atol=1e-5, rtol=1e-5)
    for (name, p_fast), p_stock in zip(fast.named_parameters(), stock.parameters()):
        torch.testing.assert_close(p_fast.grad, p_stock.grad, atol=1e-5, rtol=1e-5, msg=name)


def _bf16_run(module, x, grad, autocast):
    """Output (in its own dtype), input gradient and parameter gradients of one forward and backward."""
    module = copy.deepcopy(module)
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = module(x)
    y.float().backward(grad)
    return [y.detach(), x.grad, *(p.grad for p in module.parameters())]


@pytest.mark.parametrize("size, window, shift", [CASES[1], CASES[2], CASES[5]])
def test_bfloat16_training_is_as_close_as_torchvision(size, window, shift, monkeypatch):
    """Under CPU bf16 autocast (``--precision bf16-mixed``) the fast path still trains, and its
    outputs and gradients are about as close to float32 as torchvision's own attention in bf16."""
    torch.manual_seed(0)
    stock, fast = _pair(size, window, shift, dim=32, heads=2)
    x, grad = 3 * torch.randn(2, *size, 32), torch.randn(2, *size, 32)  # scores of several units: rounding shows
    truth = _bf16_run(stock, x, grad, autocast=False)
    stock_bf16 = _bf16_run(stock, x, grad, autocast=True)

    def refuse(*args, **kwargs):
        raise AssertionError("bf16 training left the CPU training path")

    monkeypatch.setattr(video_attention, "_attend_sdpa", refuse)
    fast_bf16 = _bf16_run(fast, x, grad, autocast=True)
    assert fast_bf16[0].dtype == torch.bfloat16  # the autocast output ...
    assert all(g.dtype == torch.float32 for g in fast_bf16[1:])  # ... float32 gradients for float32 leaves
    for name, ours, theirs, exact in zip(["output", "input", *dict(fast.named_parameters())], fast_bf16, stock_bf16,
                                         truth):
        ours_err = ((ours.float() - exact).norm() / exact.norm()).item()
        their_err = ((theirs.float() - exact).norm() / exact.norm()).item()
        assert ours_err <= 1.25 * their_err + 1e-4 and ours_err < 0.02, (name, ours_err, their_err)


@pytest.mark.parametrize("size, window, shift", CASES[:3])
def test_inference_matches_torchvision_attention(size, window, shift):
    stock, fast = _pair(size, window, shift)
    x = torch.randn(3, *size, 16)
    with torch.inference_mode():
        torch.testing.assert_close(fast.eval()(x), stock.eval()(x), atol=1e-5, rtol=1e-5)


def test_windows_are_grouped_by_shift_cut():
    plan = plan_windows((16, 21, 21), [8, 7, 7], [4, 3, 3])  # 2 x 3 x 3 windows, no padding
    assert plan.window == (8, 7, 7) and plan.shift == (4, 3, 3)
    assert len(plan.groups) == 8  # cut by the shift or not, in each of t, h and w
    first, *cut = plan.groups
    assert (first.count, first.real, first.shift_mask) == (4, 392, None)  # not cut by the shift: no mask
    assert sum(group.count for group in cut) == 14 and all(group.real == 392 for group in cut)
    for group in cut:  # -inf, not torchvision's -100: e^-100 is below float32
        assert group.shift_mask.shape == (392, 392)
        assert set(group.shift_mask.unique().tolist()) == {0.0, float("-inf")}
    clamped = plan_windows((2, 3, 3), [8, 7, 7], [4, 3, 3])
    assert clamped.window == (2, 3, 3) and clamped.shift == (0, 0, 0)
    assert [(g.count, g.real, g.shift_mask) for g in clamped.groups] == [(1, 18, None)]


def test_padding_rows_come_last_in_each_window():
    plan = plan_windows((8, 16, 16), [8, 7, 7], [0, 0, 0])  # padded to 8 x 21 x 21: 16 = 7 + 7 + 2
    assert sorted((g.count, g.real) for g in plan.groups) == [(1, 8 * 2 * 2), (2, 8 * 7 * 2), (2, 8 * 7 * 2),
                                                              (4, 8 * 7 * 7)]
    for group, index in zip(plan.groups, plan.group_indices()):
        windows = index.view(group.count, -1)
        assert (windows[:, : group.real] >= 0).all() and (windows[:, group.real :] == -1).all()
        assert sorted(group.order.tolist()) == list(range(392))


def test_window_index_covers_every_token_once():
    plan = plan_windows((5, 9, 11), [2, 4, 4], [1, 2, 2])
    real = plan.index[plan.index >= 0]
    assert sorted(real.tolist()) == list(range(5 * 9 * 11))


def test_a_plan_built_for_inference_serves_training():
    """A validation or prediction pass first (inference mode) must not leave a plan training cannot use."""
    stock, fast = _pair((4, 9, 11), [2, 4, 4], [1, 2, 2])
    x = torch.randn(2, 4, 9, 11, 16)
    with torch.inference_mode():
        fast.eval()(x)
    fast.train()(x).sum().backward()
    stock(x).sum().backward()
    torch.testing.assert_close(fast.relative_position_bias_table.grad, stock.relative_position_bias_table.grad,
                               atol=1e-5, rtol=1e-5)


def test_plan_and_mask_are_built_once_per_shape():
    _, fast = _pair((4, 8, 8), [2, 4, 4], [1, 2, 2])
    first = fast.plan(2, (4, 8, 8), torch.device("cpu"))
    assert fast.plan(2, (4, 8, 8), torch.device("cpu")) is first
    assert fast.plan(3, (4, 8, 8), torch.device("cpu")) is not first


def test_video_swin_keeps_torchvision_layout():
    model = VideoSwin(num_classes=5, **MICRO)
    stock = SwinTransformer3d(patch_size=[2, 4, 4], embed_dim=8, depths=[2, 2], num_heads=[1, 2],
                              window_size=[2, 4, 4], stochastic_depth_prob=0.0, num_classes=5)
    assert model.state_dict().keys() == stock.state_dict().keys()
    assert count_parameters(model) == count_parameters(stock)
    assert all(isinstance(block.attn, WindowAttention3d) for block in model.features[0])


@pytest.mark.parametrize("clip", [(2, 3, 4, 32, 32), (1, 3, 5, 36, 44)])
def test_model_matches_reference_attention(clip):
    model = VideoSwin(num_classes=3, **MICRO)
    reference = copy.deepcopy(model).set_attention_impl("reference")
    x = torch.randn(*clip)
    y, y_ref = model(x), reference(x)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    y.sum().backward()
    y_ref.sum().backward()
    for (name, p), p_ref in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, atol=1e-5, rtol=1e-4, msg=name)
    with pytest.raises(ValueError, match="fused"):
        model.set_attention_impl("fast")


def test_gradient_checkpointing_gives_the_same_gradients():
    model = VideoSwin(num_classes=3, **MICRO)
    checkpointed = copy.deepcopy(model)
    checkpointed.grad_checkpointing = True
    x = torch.randn(2, 3, 4, 32, 32)
    model(x).sum().backward()
    checkpointed(x).sum().backward()
    for (name, p), p_ckpt in zip(model.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(p_ckpt.grad, p.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_attention_dropout_trains():
    model = VideoSwin(num_classes=3, attn_drop_rate=0.5, **MICRO)
    model(torch.randn(1, 3, 4, 32, 32)).sum().backward()
    assert model.features[0][0].attn.relative_position_bias_table.grad is not None


def _compiled_matches_eager(backend: str) -> None:
    model = VideoSwin(num_classes=3, embed_dim=8, depths=(2,), num_heads=(2,), window_size=(2, 4, 4),
                      drop_path_rate=0.0)
    x = torch.randn(2, 3, 4, 20, 20)
    eager = model(x)
    eager.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, backend=backend, dynamic=False)
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
    for (name, p), g in zip(model.named_parameters(), grads):
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-4, msg=name)


def test_torch_compile_matches_eager():
    """Graph capture of the fused attention (custom autograd functions, cached plans); fast on CPU."""
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile is not available")
    _compiled_matches_eager("aot_eager")


@pytest.mark.skipif(not os.environ.get("DUST_TEST_INDUCTOR"), reason="set DUST_TEST_INDUCTOR=1 (about a minute on CPU)")
def test_torch_compile_inductor_matches_eager():
    _compiled_matches_eager("inductor")
