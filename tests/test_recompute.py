"""Recipes in place of saved tensors: the same gradients, less kept for backward, and never a wrong tensor."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from dust.models import VideoSwin
from dust.models import recompute as recompute_module
from dust.models import video_attention
from dust.models.recompute import RecomputedLayerNorm, remember, saved_recipes


def _doubled_then_sine(x: torch.Tensor, calls: list[int], modify: bool = False) -> tuple[torch.Tensor, weakref.ref]:
    with saved_recipes():
        doubled = x * 2
        kept = x.detach()
        remember(doubled, lambda: calls.append(1) or kept * 2)
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
    remember(out, lambda: pytest.fail("a recipe ran outside saved_recipes"))
    out.square().sum().backward()
    assert x.grad is not None


def _kept_bytes(model: VideoSwin, clip: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """Bytes of the distinct storages autograd keeps over one forward, and how many recipes it keeps instead."""
    storages: dict[int, int] = {}
    recipes = [0]
    pack = recompute_module._Recipes.pack

    def counting(self, saved):
        packed = pack(self, saved)
        if isinstance(packed, torch.Tensor):
            storages[packed.untyped_storage().data_ptr()] = packed.untyped_storage().nbytes()
        else:
            recipes[0] += 1
        return packed

    monkeypatch.setattr(recompute_module._Recipes, "pack", counting)
    model(clip)
    monkeypatch.undo()
    return sum(storages.values()), recipes[0]


def test_the_video_model_keeps_less_and_computes_the_same(monkeypatch):
    torch.manual_seed(0)
    model = VideoSwin.from_preset("nano", num_classes=3, window_size=[4, 3, 3]).train()
    clip = torch.randn(2, 3, 8, 40, 44)  # windows with padding and shift cuts: token rows are gathered
    weights = torch.arange(3.0)

    def run(outer_hooks: bool):
        model.zero_grad()
        if outer_hooks:  # recipes step aside: autograd keeps every tensor itself
            with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
                out = model(clip)
        else:
            out = model(clip)
        (out * weights).sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    out, grads = run(outer_hooks=False)
    plain_out, plain_grads = run(outer_hooks=True)
    assert torch.equal(out, plain_out)
    assert all(torch.equal(a, b) for a, b in zip(grads, plain_grads))

    # Per block: both norm outputs (the first block's first norm: its input, the patch embedding's
    # normalized output) and the attention's token rows; the norm of each patch merging.
    kept, recipes = _kept_bytes(model, clip, monkeypatch)
    assert recipes == 3 * sum(model.config["depths"]) + 3
    plain: dict[int, int] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        plain[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model(clip)
    # Stage 1 alone: three (2 x 4 x 14 x 11 tokens x 24) float tensors no longer kept.
    assert sum(plain.values()) - kept >= 3 * 2 * 4 * 14 * 11 * 24 * 4


def test_norm_outputs_and_token_rows_are_freed_after_the_forward(monkeypatch):
    torch.manual_seed(0)
    model = VideoSwin.from_preset("nano", num_classes=3, window_size=[4, 3, 3]).train()
    made: list[weakref.ref] = []
    for name, module in model.named_modules():
        if name.endswith(("norm1", "norm2")) and name != "features.0.0.norm1" or name == "patch_embed.norm":
            module.register_forward_hook(lambda m, a, out: made.append(weakref.ref(out)))
    to_tokens = video_attention.to_tokens

    def watched(rows, gather):
        out = to_tokens(rows, gather)
        made.append(weakref.ref(out))
        return out

    monkeypatch.setattr(video_attention, "to_tokens", watched)
    loss = model(torch.randn(1, 3, 8, 40, 44)).sum()
    gc.collect()
    assert len(made) == 3 * sum(model.config["depths"])
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
