"""Gathers between token rows and window rows, shared by the 1-D and 3-D window attentions.

Padding, the cyclic shift and the window partition of a Swin block are together one row
gather: window row ``i`` holds token row ``index[i]``, or padding. Padding tokens are zero
vectors, so after the ``qkv`` projection they are the projection's bias; gathering the
projected rows (with the bias put in the padding rows) gives exactly what projecting the
padded, shifted sequence gives, without projecting the padding. Undoing it is the
inverse gather, which drops the padding rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["RowGather", "batch_row_gather", "to_tokens", "to_windows"]

RowGather = tuple[Tensor, Tensor, Tensor] | None
"""``(index, pad, inverse)``: the token row of each window row (0 for padding), the window
rows that are padding, and the window row of each token row; None when window rows are token
rows as they are (no padding, no shift, one window or windows already in token order)."""


def batch_row_gather(parts: Sequence[Tensor], batch: int, tokens: int) -> RowGather:
    """The :data:`RowGather` of ``batch`` clips of ``tokens`` tokens each, on the CPU.

    ``parts`` are per-clip maps (window position -> token, ``-1`` for padding); window rows
    are ordered by part, then clip, then position (every clip's rows of the first part, then
    every clip's rows of the next).
    """
    offsets = torch.arange(batch)[:, None] * tokens
    index = torch.cat([torch.where(part[None] >= 0, part[None] + offsets, -1).flatten() for part in parts])
    pad = torch.nonzero(index < 0).flatten()
    real = torch.nonzero(index >= 0).flatten()
    inverse = torch.empty(batch * tokens, dtype=torch.long)
    inverse[index[real]] = real
    return index.clamp(min=0), pad, inverse


class _ToWindows(torch.autograd.Function):
    """``(M, D)`` token rows -> ``(P, D)`` window rows ``rows[index]``; the ``pad`` rows are ``fill`` (a ``(D,)`` row)."""

    @staticmethod
    def forward(ctx, rows: Tensor, fill: Tensor, index: Tensor, pad: Tensor, inverse: Tensor) -> Tensor:
        out = rows.index_select(0, index)
        if len(pad):
            out.index_copy_(0, pad, fill.to(out.dtype).expand(len(pad), -1))
        ctx.save_for_backward(pad, inverse)
        ctx.fill_needs_grad = ctx.needs_input_grad[1]
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        pad, inverse = ctx.saved_tensors
        grad_rows = grad.index_select(0, inverse)
        grad_fill = (grad.index_select(0, pad).sum(0, dtype=torch.promote_types(grad.dtype, torch.float32))
                     if ctx.fill_needs_grad else None)
        return grad_rows, grad_fill, None, None, None


class _ToTokens(torch.autograd.Function):
    """``(P, D)`` window rows -> ``(M, D)`` token rows (padding rows dropped)."""

    @staticmethod
    def forward(ctx, rows: Tensor, index: Tensor, pad: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(index, pad)
        return rows.index_select(0, inverse)

    @staticmethod
    def backward(ctx, grad: Tensor):
        index, pad = ctx.saved_tensors
        grad_rows = grad.index_select(0, index)
        if len(pad):
            grad_rows.index_fill_(0, pad, 0.0)
        return grad_rows, None, None, None


def to_windows(rows: Tensor, fill: Tensor, gather: RowGather) -> Tensor:
    """``(M, D)`` token rows -> ``(P, D)`` window rows, the padding rows set to ``fill`` ``(D,)``."""
    if gather is None:
        return rows
    index, pad, inverse = gather
    return _ToWindows.apply(rows, fill, index, pad, inverse)


def to_tokens(rows: Tensor, gather: RowGather) -> Tensor:
    """``(P, D)`` window rows -> ``(M, D)`` token rows, padding rows dropped."""
    if gather is None:
        return rows
    index, pad, inverse = gather
    return _ToTokens.apply(rows, index, pad, inverse)
