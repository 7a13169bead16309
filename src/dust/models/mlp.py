"""Swin's block MLP (Linear, GELU, Dropout, Linear, Dropout) keeping one hidden-sized tensor for backward, not two."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

__all__ = ["RecomputedGeluMLP"]


class RecomputedGeluMLP(nn.Sequential):
    """A Swin MLP with the same parameters (and names) and outputs, that stores less for backward.

    Autograd keeps the hidden pre-activation (for GELU's gradient) and GELU's output (for the
    second layer's weight gradient), each ``mlp_ratio`` times the block's width. Here the
    second is recomputed from the first in backward, one elementwise pass; gradients are
    bit-identical. The plain forward runs instead where there is nothing to gain: without
    autograd, with dropout active, under ``torch.compile`` (which plans its own recomputation)
    and inside activation checkpointing (``recompute = False``; nothing is stored there anyway).
    """

    recompute: bool = True

    @classmethod
    def from_sequential(cls, mlp: nn.Sequential) -> RecomputedGeluMLP:
        """Wrap the five modules of ``mlp``, keeping their names (so checkpoints load unchanged)."""
        modules = OrderedDict(mlp.named_children())
        if len(modules) != 5 or not isinstance(list(modules.values())[1], nn.GELU):
            raise ValueError(f"expected Linear, GELU, Dropout, Linear, Dropout; got {list(modules.values())}")
        return cls(modules)

    def forward(self, x: Tensor) -> Tensor:
        fc1, act, drop1, fc2, drop2 = self
        dropping = self.training and (drop1.p > 0 or drop2.p > 0)
        if not self.recompute or dropping or not torch.is_grad_enabled() or torch.compiler.is_compiling():
            return super().forward(x)
        hidden = fc1(x)
        activated = act(hidden)
        storage = activated.untyped_storage().data_ptr()

        def pack(saved: Tensor) -> Tensor | tuple:
            if saved.untyped_storage().data_ptr() != storage:
                return saved
            return hidden, saved.size(), saved.stride(), saved.storage_offset()  # fc2 saves (a view of) GELU's output

        def unpack(packed: Tensor | tuple) -> Tensor:
            if isinstance(packed, Tensor):
                return packed
            pre, size, stride, offset = packed
            return act(pre).as_strided(size, stride, offset)

        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            out = fc2(activated)
        return drop2(out)
