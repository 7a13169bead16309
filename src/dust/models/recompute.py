"""Autograd keeping a recipe instead of a tensor it saves for backward, where recomputing is cheap.

In a Swin block the ``qkv`` projection saves the first norm's output for its weight gradient,
the MLP's first layer the second norm's output, and the output projection the attention's
rows put back in token order. Each is one elementwise pass or one gather away from a tensor
autograd keeps anyway (the norm's input, the attention's output). Inside
:func:`saved_recipes`, a module that made such a tensor names it with :func:`remember`, and
any op saving it keeps the recipe instead; backward runs the recipe when it needs the tensor.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RecomputedLayerNorm", "remember", "saved_recipes"]


class _Recipe(NamedTuple):
    recompute: Callable[[], Tensor]
    size: torch.Size
    stride: tuple[int, ...]
    offset: int


class _Entry(NamedTuple):
    tensor: weakref.ref
    version: int
    dtype: torch.dtype
    recompute: Callable[[], Tensor]


class _Recipes:
    """The tensors :func:`remember` named in one :func:`saved_recipes` block, by storage address."""

    def __init__(self) -> None:
        self.entries: dict[int, _Entry] = {}

    def find(self, tensor: Tensor) -> _Entry | None:
        """The entry of ``tensor`` or a view of it: alive (else its memory may belong to another tensor now),
        unmodified since and of the same type."""
        entry = self.entries.get(tensor.untyped_storage().data_ptr())
        if entry is None or entry.tensor() is None or tensor._version != entry.version or tensor.dtype != entry.dtype:
            return None
        return entry

    def pack(self, saved: Tensor) -> Tensor | _Recipe:
        entry = self.find(saved)
        return saved if entry is None else _Recipe(entry.recompute, saved.size(), saved.stride(), saved.storage_offset())

    @staticmethod
    def unpack(packed: Tensor | _Recipe) -> Tensor:
        if isinstance(packed, Tensor):
            return packed
        with torch.no_grad():
            return packed.recompute().as_strided(packed.size, packed.stride, packed.offset)


_ACTIVE: ContextVar[_Recipes | None] = ContextVar("dust_saved_recipes", default=None)


def _active() -> _Recipes | None:
    return None if torch.compiler.is_compiling() else _ACTIVE.get()


def _other_hooks_active() -> bool:
    """Whether saved-tensor hooks are already set (activation checkpointing, offloading): never shadow them."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    try:
        return top is not None and top(False) is not None
    except TypeError:  # another signature in another release: assume there are
        return True


@contextmanager
def saved_recipes(enabled: bool = True) -> Iterator[None]:
    """Inside the block, tensors named with :func:`remember` are saved for backward as their recipes.

    Does nothing without autograd, under ``torch.compile`` (which plans its own recomputation),
    under autocast (the next layer saves a cast copy, not the tensor) and where other
    saved-tensor hooks are active.
    """
    if (not enabled or not torch.is_grad_enabled() or torch.compiler.is_compiling()
            or torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda") or _other_hooks_active()):
        yield
        return
    recipes = _Recipes()
    token = _ACTIVE.set(recipes)
    try:
        with torch.autograd.graph.saved_tensors_hooks(recipes.pack, _Recipes.unpack):
            yield
    finally:
        _ACTIVE.reset(token)


def remember(output: Tensor, recompute: Callable[[], Tensor]) -> None:
    """Inside :func:`saved_recipes`: an op saving ``output`` (or a view of it) keeps ``recompute`` instead.

    ``recompute()`` runs in backward, without autograd, and must return ``output``'s values in
    its layout from tensors autograd keeps anyway (it holds what it refers to until backward).
    Elsewhere this does nothing.
    """
    recipes = _active()
    if recipes is not None and output.requires_grad:
        recipes.entries[output.untyped_storage().data_ptr()] = _Entry(
            weakref.ref(output), output._version, output.dtype, recompute)


class RecomputedLayerNorm(nn.LayerNorm):
    """:class:`torch.nn.LayerNorm` (same parameters and outputs) whose output, inside :func:`saved_recipes`,
    autograd keeps as a recipe: the norm of its input, which the norm's own backward keeps."""

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        recipes = _active()
        # Not from an input that is a recipe itself (the norm after the patch embedding's): holding it for
        # this recipe would keep its memory, and the norm's backward would recompute it for nothing.
        if recipes is not None and recipes.find(x) is None:
            source = x.detach()
            remember(out, lambda: F.layer_norm(source, self.normalized_shape, self.weight, self.bias, self.eps))
        return out
