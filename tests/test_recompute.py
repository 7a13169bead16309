"""Recipes in place of saved tensors: the same gradients, less kept for backward, and never a wrong tensor."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from dust.models import VideoSwin, video_attention
from dust.models import recompute as recompute_module
from dust.models.mlp import RecomputedGeluMLP
from dust.models.recompute import RecomputedLayerNorm, remember, saved_recipes

IN_PLACE = "modified by an inplace operation"


@pytest.fixture(autouse=True)
def recipes_for_small_tensors(monkeypatch):
    """Tiny test clips make tensors far below the size from which recipes pay."""
    monkeypatch.setattr(recompute_module, "MIN_BYTES", 0)


def _doubled_then_sine(x: torch.Tensor, calls: list[int], modify: bool = False) -> tuple[torch.Tensor, weakref.ref]:
    with saved_recipes():
        doubled = x * 2
        source = x.detach()
        remember(doubled, lambda: calls.append(1) or source * 2, (source,))
        if modify:
            doubled.add_(1)
        out = doubled.sin()  # saves `doubled`
    return out, weakref.ref(doubled)


def test_a_remembered_tensor_is_not_kept_and_its_recipe_gives_the_gradient():
    x = torch.randn(5, 7, requires_grad=True)
    calls: list[int] = []
    out, doubled = _doubled_then_sine(x, calls)
    gc.collect()
    assert doubled() is None  # sin's backward holds the recipe, not the tensor
    out.sum().backward()
    assert calls == [1]
    torch.testing.assert_close(x.grad, 2 * torch.cos(2 * x.detach()), rtol=0, atol=0)


def test_a_tensor_changed_in_place_after_it_was_remembered_is_kept_as_it_is():
    x = torch.randn(5, 7, requires_grad=True)
    calls: list[int] = []
    out, _ = _doubled_then_sine(x, calls, modify=True)
    out.sum().backward()
    assert calls == []
    torch.testing.assert_close(x.grad, 2 * torch.cos(2 * x.detach() + 1), rtol=0, atol=0)


def test_a_recipe_whose_source_changed_in_place_raises_as_autograd_does():
    x = torch.randn(5, 7, requires_grad=True)
    out, _ = _doubled_then_sine(x, [])
    with torch.no_grad():
        x.mul_(2)
    with pytest.raises(RuntimeError, match=IN_PLACE):
        out.sum().backward()


def test_other_saved_tensor_hooks_are_never_shadowed():
    x = torch.randn(5, 7, requires_grad=True)
    calls: list[int] = []
    checkpoint(lambda t: _doubled_then_sine(t, calls)[0], x, use_reentrant=False).sum().backward()
    with torch.autograd.graph.save_on_cpu():
        _doubled_then_sine(x, calls)[0].sum().backward()
    assert calls == []


def test_outside_a_recipes_block_remember_does_nothing():
    norm = RecomputedLayerNorm(6)
    x = torch.randn(3, 6, requires_grad=True)
    out = norm(x)
    remember(out, lambda: pytest.fail("a recipe ran outside saved_recipes"), ())
    out.square().sum().backward()
    assert x.grad is not None


def _model() -> VideoSwin:
    torch.manual_seed(0)
    return VideoSwin.from_preset("nano", num_classes=3, window_size=[4, 3, 3]).train()


CLIP = (2, 3, 8, 40, 44)  # windows with padding and shift cuts: the attention gathers token rows


def _grads(model: VideoSwin, clip: torch.Tensor, params: dict | None = None) -> tuple[torch.Tensor, list]:
    inputs = dict(model.named_parameters()) if params is None else params
    out = model(clip) if params is None else functional_call(model, params, (clip,))
    grads = torch.autograd.grad((out * torch.arange(3.0)).sum(), list(inputs.values()))
    return out.detach(), list(grads)


def test_the_video_model_computes_the_same_with_recipes(monkeypatch):
    model, clip = _model(), torch.randn(*CLIP)
    # Other weights than the module's, for the forward only (the recipes must use the forward's).
    swapped = {n: (p * 1.5 if "norm" in n else p).detach().requires_grad_() for n, p in model.named_parameters()}
    runs = [(_grads(model, clip), _grads(model, clip, swapped))]
    monkeypatch.setattr(recompute_module, "_other_hooks_active", lambda: True)  # recipes step aside
    runs.append((_grads(model, clip), _grads(model, clip, swapped)))
    for (out, grads), (plain_out, plain_grads) in zip(*runs):
        assert torch.equal(out, plain_out)
        assert all(torch.equal(a, b) for a, b in zip(grads, plain_grads))


def test_the_video_model_still_refuses_weights_changed_between_forward_and_backward():
    model = _model()
    out = model(torch.randn(*CLIP))
    with torch.no_grad():
        model.features[0][0].attn.qkv.weight.mul_(2)  # e.g. an optimizer step before a second backward
    with pytest.raises(RuntimeError, match=IN_PLACE):
        out.sum().backward()


def test_the_video_model_keeps_less(monkeypatch):
    model, clip = _model(), torch.randn(*CLIP)
    kept: dict[int, int] = {}
    recipes = [0]
    pack = recompute_module._Recipes.pack

    def counting(self, saved):
        packed = pack(self, saved)
        if isinstance(packed, recompute_module._Kept):
            kept[saved.untyped_storage().data_ptr()] = saved.untyped_storage().nbytes()
        else:
            recipes[0] += 1
        return packed

    with monkeypatch.context() as patch:
        patch.setattr(recompute_module._Recipes, "pack", counting)
        model(clip)
    # Per block: both norm outputs (the first block's first norm: its input, the patch embedding's
    # normalized output), the attention's token rows and GELU's output; each patch merging's norm.
    assert recipes[0] == 4 * sum(model.config["depths"]) + 3
    plain: dict[int, int] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        plain[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):  # recipes step aside
        model(clip)
    # Stage 1 alone: three (2 x 4 x 14 x 11 tokens x 24) float tensors and GELU's 4 x 24 channels.
    assert sum(plain.values()) - sum(kept.values()) >= 7 * 2 * 4 * 14 * 11 * 24 * 4


def test_what_recipes_replace_is_freed_after_the_forward(monkeypatch):
    model = _model()
    made: list[weakref.ref] = []
    for name, module in model.named_modules():
        if (name.endswith(("norm1", "norm2")) and name != "features.0.0.norm1" or name == "patch_embed.norm"
                or isinstance(module, RecomputedGeluMLP)):
            target = module[1] if isinstance(module, RecomputedGeluMLP) else module  # GELU's output
            target.register_forward_hook(lambda m, a, out: made.append(weakref.ref(out)))
    to_tokens = video_attention.to_tokens

    def watched(rows, gather):
        out = to_tokens(rows, gather)
        made.append(weakref.ref(out))
        return out

    monkeypatch.setattr(video_attention, "to_tokens", watched)
    loss = model(torch.randn(1, 3, 8, 40, 44)).sum()
    gc.collect()
    assert len(made) == 4 * sum(model.config["depths"])
    assert all(ref() is None for ref in made)
    loss.backward()


def test_grad_checkpointing_keeps_its_own_hooks_and_gradients():
    torch.manual_seed(0)
    plain = VideoSwin.from_preset("nano", num_classes=3)
    checkpointed = VideoSwin.from_preset("nano", num_classes=3, grad_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    clip = torch.randn(1, 3, 8, 32, 32)
    for model in (plain, checkpointed):
        model(clip).square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.equal(a.grad, b.grad), name


def test_small_tensors_are_kept_as_they_are(monkeypatch):
    monkeypatch.setattr(recompute_module, "MIN_BYTES", 5 * 7 * 4 + 1)
    x = torch.randn(5, 7, requires_grad=True)
    calls: list[int] = []
    out, _ = _doubled_then_sine(x, calls)
    out.sum().backward()
    assert calls == []
    torch.testing.assert_close(x.grad, 2 * torch.cos(2 * x.detach()), rtol=0, atol=0)


def test_a_graph_dropped_without_backward_is_freed():
    x = torch.randn(5, 7, requires_grad=True)
    with saved_recipes():
        out = x.exp()  # exp saves its own output
    freed = weakref.ref(out)
    del out
    gc.collect()
    assert freed() is None


def test_gelu_is_recomputed_under_bf16_autocast_too(monkeypatch):
    torch.manual_seed(0)
    mlp = RecomputedGeluMLP.from_sequential(torch.nn.Sequential(
        torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Dropout(0.0), torch.nn.Linear(32, 8), torch.nn.Dropout(0.0)))
    x = torch.randn(64, 8, requires_grad=True)
    calls = []
    recompute = recompute_module.remember

    def counted(output, again, reads):
        recompute(output, lambda: calls.append(1) or again(), reads)

    def grads() -> list[torch.Tensor]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = mlp(x)
        return list(torch.autograd.grad(out.float().square().sum(), [x, *mlp.parameters()]))

    monkeypatch.setattr("dust.models.mlp.remember", counted)
    with_recipe = grads()
    assert calls == [1]
    monkeypatch.setattr(recompute_module, "_other_hooks_active", lambda: True)
    assert all(torch.equal(a, b) for a, b in zip(with_recipe, grads()))
