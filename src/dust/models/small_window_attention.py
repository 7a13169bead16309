"""Attention over many small windows, with an explicit softmax and a hand-written backward.

The 1-D Swin attends in windows of 8 tokens or fewer. On the CPU, ``torch.softmax`` over a
last dimension that short runs about six times slower than ``exp`` and a sum over the same
elements (the kernel vectorises along the row), and its backward is as slow; through
``F.scaled_dot_product_attention``'s math path, those two calls were most of the window
attention's time. :func:`small_window_attention` computes the same attention with
``exp(s - max) / sum`` and gives autograd a backward built from the saved probabilities.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["small_window_attention"]


def _probabilities(q: Tensor, k: Tensor, mask: Tensor, scale: float) -> Tensor:
    """``softmax(q kᵀ · scale + mask)`` as ``exp(s - max) / sum``, computed in place on the scores."""
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(scale).add_(mask)
    probs = scores.sub_(scores.amax(-1, keepdim=True)).exp_()
    return probs.div_(probs.sum(-1, keepdim=True))


class _SmallWindowAttention(torch.autograd.Function):
    """``softmax(q kᵀ · scale + mask) v`` over the last two dimensions; ``mask`` broadcasts against the scores."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> Tensor:
        probs = _probabilities(q, k, mask, scale)
        ctx.save_for_backward(q, k, v, probs)
        ctx.scale = scale
        ctx.mask_shape = mask.shape
        return torch.matmul(probs, v)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, probs = ctx.saved_tensors
        grad_q = grad_k = grad_v = grad_mask = None
        if ctx.needs_input_grad[2]:
            grad_v = torch.matmul(probs.transpose(-2, -1), grad_out)
        grad_scores = torch.matmul(grad_out, v.transpose(-2, -1))  # dP ...
        row_term = (grad_scores * probs).sum(-1, keepdim=True)
        grad_scores = grad_scores.sub_(row_term).mul_(probs)  # ... -> dS = P (dP - rowsum(dP P))
        if ctx.needs_input_grad[3]:
            grad_mask = grad_scores.sum_to_size(ctx.mask_shape)  # grad_scores itself when nothing broadcast
        if ctx.needs_input_grad[0]:
            grad_q = torch.matmul(grad_scores, k).mul_(ctx.scale)
        if ctx.needs_input_grad[1]:
            grad_k = torch.matmul(grad_scores.transpose(-2, -1), q).mul_(ctx.scale)
        return grad_q, grad_k, grad_v, grad_mask, None


def small_window_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> Tensor:
    """``(..., N, d)`` queries, keys and values and an additive ``mask`` broadcastable to ``(..., N, N)`` -> ``(..., N, d)``.

    The same as ``F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)``
    without dropout. Every query must keep at least one key that is not ``-inf``.
    Without autograd it runs the forward alone and keeps nothing.
    """
    if not torch.is_grad_enabled() or not any(t.requires_grad for t in (q, k, v, mask)):
        return torch.matmul(_probabilities(q, k, mask, scale), v)
    return _SmallWindowAttention.apply(q, k, v, mask, scale)
