"""Attention over many small windows, from window rows to window rows, with a hand-written backward.

The 1-D Swin attends in windows of 8 tokens or fewer. Two things make the obvious code slow
on the CPU there:

- ``torch.softmax`` over a last dimension that short runs about six times slower than
  ``exp`` and a sum over the same elements (the kernel vectorises along the row), and its
  backward is as slow. Here the softmax is ``exp(s - max) / sum`` and the backward is
  written out from the saved probabilities.
- Queries, keys and values are strided views of the ``qkv`` rows; every batched matrix
  product copies them again, forward and backward, and autograd assembles their gradients
  in a further copy. Here the rows are laid out once as contiguous ``(3, windows, heads,
  N, d)`` and the gradients are written straight into that layout.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["small_window_attention"]


def _split_heads(rows: Tensor, windows: int, heads: int) -> Tensor:
    """``(windows * N, 3C)`` rows -> contiguous ``(3, windows, heads, N, d)`` queries, keys and values."""
    return rows.view(windows, -1, 3, heads, rows.shape[1] // (3 * heads)).permute(2, 0, 3, 1, 4).contiguous()


def _probabilities(q: Tensor, k: Tensor, mask: Tensor, scale: float, batch: int) -> Tensor:
    """``softmax(q kᵀ · scale + mask)`` as ``exp(s - max) / sum``, computed in place on the scores, in float32
    whatever the dtype of ``q`` and ``k`` (bfloat16 under autocast)."""
    scores = torch.matmul(q, k.transpose(-2, -1)).float().mul_(scale)
    scores.view(batch, -1, *scores.shape[1:]).add_(mask)  # (B, nW, h, N, N) + mask
    probs = scores.sub_(scores.amax(-1, keepdim=True)).exp_()
    return probs.div_(probs.sum(-1, keepdim=True))


def _merge_heads(out: Tensor) -> Tensor:
    """``(windows, heads, N, d)`` -> ``(windows * N, heads * d)`` rows."""
    windows, heads, n, d = out.shape
    return out.transpose(1, 2).reshape(windows * n, heads * d)


class _SmallWindowAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows: Tensor, mask: Tensor, batch: int, windows: int, heads: int, scale: float) -> Tensor:
        qkv = _split_heads(rows, windows, heads)
        probs = _probabilities(qkv[0], qkv[1], mask, scale, batch)
        ctx.save_for_backward(qkv, probs)
        ctx.setup = (batch, windows, heads, scale, mask.shape)
        return _merge_heads(torch.matmul(probs.to(qkv.dtype), qkv[2]))

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        qkv, probs = ctx.saved_tensors
        batch, windows, heads, scale, mask_shape = ctx.setup
        q, k, v = qkv
        grad_out = grad_out.view(windows, -1, heads, q.shape[-1]).transpose(1, 2).contiguous()  # (W, h, N, d)
        grad_qkv = torch.empty_like(qkv)
        # Products in the rows' dtype, the softmax backward in float32 (no-op conversions for float32 rows).
        torch.matmul(probs.to(qkv.dtype).transpose(-2, -1), grad_out, out=grad_qkv[2])
        grad_scores = torch.matmul(grad_out, v.transpose(-2, -1)).float()  # dP ...
        row_term = (grad_scores * probs).sum(-1, keepdim=True)
        grad_scores = grad_scores.sub_(row_term).mul_(probs)  # ... -> dS = P (dP - rowsum(dP P))
        grad_mask = None
        if ctx.needs_input_grad[1]:  # grad_scores itself when nothing broadcast: copy before scaling it
            grad_mask = grad_scores.view(batch, -1, *grad_scores.shape[1:]).sum_to_size(mask_shape).clone()
        grad_scores = grad_scores.mul_(scale).to(qkv.dtype)
        torch.matmul(grad_scores, k, out=grad_qkv[0])
        torch.matmul(grad_scores.transpose(-2, -1), q, out=grad_qkv[1])
        grad_rows = grad_qkv.permute(1, 3, 0, 2, 4).reshape(-1, 3 * heads * q.shape[-1])
        return grad_rows, grad_mask, None, None, None, None


def small_window_attention(rows: Tensor, mask: Tensor, batch: int, heads: int, scale: float) -> Tensor:
    """Multi-head attention inside windows of ``N`` consecutive rows: ``(B * nW * N, 3C)`` -> ``(B * nW * N, C)``.

    ``rows`` hold each token's query, key and value (``[q | k | v]``, heads side by side in
    each), windows one after another, ``nW`` windows per sample. ``mask`` is additive and
    broadcasts against the ``(B, nW, heads, N, N)`` scores. The same as
    ``F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)`` over the
    ``(B, nW, heads, N, d)`` views, without dropout. Every query must keep a key that is not
    ``-inf``. Without autograd it runs the forward alone and keeps nothing.
    """
    windows = rows.shape[0] // mask.shape[-1]  # B * nW
    if not torch.is_grad_enabled() or not (rows.requires_grad or mask.requires_grad):
        qkv = _split_heads(rows, windows, heads)
        return _merge_heads(torch.matmul(_probabilities(qkv[0], qkv[1], mask, scale, batch).to(qkv.dtype), qkv[2]))
    return _SmallWindowAttention.apply(rows, mask, batch, windows, heads, scale)
