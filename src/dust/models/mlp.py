"""Swin's block MLP (Linear, GELU, Dropout, Linear, Dropout) keeping one hidden-sized tensor for backward, not two."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .recompute import remember, saved_recipes

__all__ = ["RecomputedGeluMLP"]


class RecomputedGeluMLP(nn.Sequential):
    """A Swin MLP with the same parameters (and names) and outputs, that stores less for backward.

    Autograd keeps the hidden pre-activation (for GELU's gradient) and GELU's output (for the
    second layer's weight gradient), each ``mlp_ratio`` times the block's width. Here the
    second is recomputed from the first in backward, one elementwise pass, where it is 4 MiB or
    more (:mod:`~dust.models.recompute`); gradients are bit-identical. The plain forward runs
    instead where there is nothing to gain: without autograd, with dropout active, under
    ``torch.compile`` (which plans its own recomputation), with ``recompute = False`` and where
    :func:`~dust.models.recompute.saved_recipes` steps aside (inside activation checkpointing,
    which stores nothing anyway).
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
        with saved_recipes():
            hidden = fc1(x)
            activated = act(hidden)
            pre = hidden.detach()
            remember(activated, lambda: F.gelu(pre, approximate=act.approximate), (pre,))
            return drop2(fc2(activated))
