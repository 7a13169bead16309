"""Autograd keeping a recipe instead of a tensor it saves for backward, where recomputing is cheap.

In a Swin block the ``qkv`` projection saves the first norm's output for its weight gradient,
the MLP's first layer the second norm's output, and the output projection the attention's
rows put back in token order. Each is one elementwise pass or one gather away from tensors
autograd keeps anyway (the norm's input and parameters, the attention's output), so keeping
the recipe instead saves its memory for a pass in backward. Inside :func:`saved_recipes`, a
module that made such a tensor names it with :func:`remember`, and any op saving it keeps the
recipe instead; backward runs the recipe when it needs the tensor.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RecomputedLayerNorm", "remember", "saved_recipes"]


class _Entry(NamedTuple):
    tensor: weakref.ref
    version: int
    dtype: torch.dtype
    recompute: Callable[[], Tensor]
    reads: tuple[Tensor, ...]
    read_versions: tuple[int, ...]


class _Recipe(NamedTuple):
    entry: _Entry
    size: torch.Size
    stride: tuple[int, ...]
    offset: int


class _Kept(NamedTuple):
    tensor: Tensor
    version: int


def _check_version(tensor: Tensor, expected: int) -> None:
    """Raise as autograd does where a tensor backward needs was changed in place after the forward."""
    if tensor._version != expected:
        raise RuntimeError(
            "one of the variables needed for gradient computation has been modified by an inplace operation: "
            f"[{tensor.dtype} {list(tensor.shape)}] is at version {tensor._version}; expected version {expected} "
            "instead")


class _Recipes:
    """The tensors :func:`remember` named in one :func:`saved_recipes` block, by storage address."""

    def __init__(self) -> None:
        self.entries: dict[int, _Entry] = {}

    def find(self, tensor: Tensor) -> _Entry | None:
        """The entry of ``tensor`` or a view of it: the named tensor still alive and still owning that memory
        (else the memory may belong to another tensor now), unmodified since and of the same type."""
        address = tensor.untyped_storage().data_ptr()
        entry = self.entries.get(address)
        if entry is None or tensor._version != entry.version or tensor.dtype != entry.dtype:
            return None
        named = entry.tensor()
        if named is None or named.untyped_storage().data_ptr() != address:
            return None
        return entry

    def pack(self, saved: Tensor) -> _Kept | _Recipe:
        entry = self.find(saved)
        if entry is None:  # kept with its version (the hooks replace autograd's own in-place check), detached:
            return _Kept(saved.detach(), saved._version)  # an op saving its own output would otherwise hold its graph
        return _Recipe(entry, saved.size(), saved.stride(), saved.storage_offset())

    @staticmethod
    def unpack(packed: _Kept | _Recipe) -> Tensor:
        if isinstance(packed, _Kept):
            _check_version(packed.tensor, packed.version)
            return packed.tensor
        entry = packed.entry
        for tensor, version in zip(entry.reads, entry.read_versions):
            _check_version(tensor, version)
        with torch.no_grad():
            return entry.recompute().as_strided(packed.size, packed.stride, packed.offset)


_ACTIVE: ContextVar[_Recipes | None] = ContextVar("dust_saved_recipes", default=None)

MIN_BYTES = 4 << 20
"""Smaller tensors are kept as they are: the memory is little and a recipe's fixed cost shows (the paper video
model's step on two 16x64x64 clips, whose tensors are 0.5-2 MB, took 3 % longer recomputing them all)."""


def _active() -> _Recipes | None:
    return None if torch.compiler.is_compiling() else _ACTIVE.get()


def _other_hooks_active() -> bool:
    """Whether saved-tensor hooks are already set (activation checkpointing, offloading): never shadow them.
    Where PyTorch cannot tell (a release without the query), assume they are."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    try:
        return top is None or top(False) is not None
    except TypeError:
        return True


@contextmanager
def saved_recipes(enabled: bool = True) -> Iterator[None]:
    """Inside the block, tensors named with :func:`remember` are saved for backward as their recipes.

    Every other tensor autograd saves in the block is kept as it is, and backward still raises
    if one was changed in place in between, as without the block. Inside another such block it
    adds to that one. Does nothing without autograd, under ``torch.compile`` (which plans its
    own recomputation) and where other saved-tensor hooks are active.
    """
    if (not enabled or _active() is not None or not torch.is_grad_enabled() or torch.compiler.is_compiling()
            or _other_hooks_active()):
        yield
        return
    recipes = _Recipes()
    token = _ACTIVE.set(recipes)
    try:
        with torch.autograd.graph.saved_tensors_hooks(recipes.pack, _Recipes.unpack):
            yield
    finally:
        _ACTIVE.reset(token)
        recipes.entries.clear()  # the saved recipes hold what they need; the graph holds `pack`


def remember(output: Tensor, recompute: Callable[[], Tensor], reads: Sequence[Tensor | None]) -> None:
    """Inside :func:`saved_recipes`: an op saving ``output`` (or a view of it) keeps ``recompute`` instead.

    ``output`` must be a fresh contiguous tensor owning its memory, of :data:`MIN_BYTES` or more
    (others are left alone), and ``recompute()`` must return its values in its layout, without
    autocast, from ``reads``: tensors autograd keeps anyway, which it holds until backward has
    used it. If one of them is changed in place before then, backward raises. Elsewhere this
    does nothing.
    """
    recipes = _active()
    if recipes is None or not output.requires_grad or not output.is_contiguous() or output.storage_offset() != 0:
        return
    size = output.numel() * output.element_size()
    if size < MIN_BYTES or output.untyped_storage().nbytes() != size:
        return
    kept = tuple(t for t in reads if t is not None)
    recipes.entries[output.untyped_storage().data_ptr()] = _Entry(
        weakref.ref(output), output._version, output.dtype, recompute, kept, tuple(t._version for t in kept))


class RecomputedLayerNorm(nn.LayerNorm):
    """:class:`torch.nn.LayerNorm` (same parameters and outputs) whose output, inside :func:`saved_recipes`,
    autograd keeps as a recipe: the norm of its input with the parameters this forward used, all of
    which the norm's own backward keeps. Not under autocast: there the norm's output is float32 and
    the next layer saves a cast copy of it, never the output itself."""

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        recipes = _active()
        # Not from an input that is a recipe itself (the norm after the patch embedding's): holding it for
        # this recipe would keep its memory, and the norm's backward would recompute it for nothing.
        if recipes is not None and not torch.is_autocast_enabled(x.device.type) and recipes.find(x) is None:
            source, shape, weight, bias, eps = x.detach(), self.normalized_shape, self.weight, self.bias, self.eps
            remember(out, lambda: F.layer_norm(source, shape, weight, bias, eps), (source, weight, bias))
        return out
