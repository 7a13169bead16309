"""Fast shifted-window attention for torchvision's 3-D Swin, with torchvision's parameters and outputs.

:class:`WindowAttention3d` subclasses torchvision's ``ShiftedWindowAttention3d``: same
parameters and buffers (so state-dict keys and parameter counts do not change), same
outputs, less work. What it does differently:

- **One gather in, one gather out.** Padding, the cyclic shift and the window
  partition are a single row gather of the ``qkv`` projection (a precomputed index per
  input shape, :mod:`dust.models.window_rows`); undoing them is a single gather back. Zero padding tokens are never
  projected: their ``qkv`` is the projection's bias, exactly what ``Linear(0)`` gives.
  The output projection runs on real tokens only (torchvision projects the padding
  and then crops it away).
- **Scaled-dot-product attention with one float mask.** The relative-position bias
  and the shift mask are folded into one additive mask for
  ``F.scaled_dot_product_attention`` (fused kernels: flash attention on CPU and on
  GPU). Only windows on the wrapped border of a shifted block need the shift mask;
  the windows are ordered interior first, so interior windows share the plain
  ``(heads, N, N)`` bias and the border windows get a ``(border windows, heads, N, N)``
  mask, built once per (shape, device) and cached.
- **Training on CPU.** PyTorch's CPU flash kernel cannot give the gradient of the
  mask, and the bias table must learn; :class:`_WindowAttentionCPU` runs the fused kernel
  forward (nothing of size ``N x N`` is kept) and recomputes the scores in backward. It
  trains in float32 and in bfloat16 autocast (products in bfloat16, softmax in float32).

Shapes: ``B`` batch, ``(T, H, W)`` tokens, ``C`` channels, ``N`` tokens per window,
``h`` heads, ``d = C / h``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.video.swin_transformer import ShiftedWindowAttention3d, _get_window_and_shift_size

from .window_rows import RowGather, batch_row_gather, to_tokens, to_windows

__all__ = ["AttentionImpl", "WindowAttention3d", "WindowPlan", "plan_windows"]

AttentionImpl = Literal["fused", "reference"]
"""``"fused"``: this module's fast path. ``"reference"``: torchvision's own forward (for checks and FLOP counts)."""

# Pairs from different regions of a shifted window. torchvision adds -100, which leaves them
# weights of about e^-100: far below what float32 outputs can show, but subnormal floats, which
# x86 computes with about a hundred times slower (the fused kernel ran 1.6x slower on border
# windows). -inf gives them weight exactly zero: the same outputs to float32 precision.
_SHIFT_MASK_VALUE = -math.inf


@dataclass(frozen=True)
class WindowPlan:
    """How one clip's tokens map onto attention windows, for one input shape.

    Windows are ordered interior first (no shift mask), then border windows; inside a
    window, tokens are in (t, h, w) row-major order, as torchvision partitions them.

    Attributes:
        window: window size actually used (clamped to the input where it is smaller).
        shift: shift actually used (0 where the window was clamped).
        num_interior: windows per clip that need no shift mask.
        num_border: windows per clip that need the shift mask.
        index: ``(windows * N,)`` token index (into the clip's ``T * H * W`` tokens) of each
            window position, ``-1`` for padding.
        border_mask: ``(num_border, 1, N, N)`` additive shift mask of the border windows, or None.
    """

    window: tuple[int, int, int]
    shift: tuple[int, int, int]
    num_interior: int
    num_border: int
    index: Tensor
    border_mask: Tensor | None

    @property
    def window_volume(self) -> int:
        return self.window[0] * self.window[1] * self.window[2]


def _region_labels(padded: tuple[int, int, int], window: tuple[int, int, int], shift: tuple[int, int, int]) -> Tensor:
    """``(Tp, Hp, Wp)`` region id of each rolled position, as torchvision's ``_compute_attention_mask_3d`` labels it."""
    labels = torch.zeros(padded, dtype=torch.long)
    count = 0
    cuts = [((0, -window[i]), (-window[i], -shift[i]), (-shift[i], None)) for i in range(3)]
    for d in cuts[0]:
        for h in cuts[1]:
            for w in cuts[2]:
                labels[d[0] : d[1], h[0] : h[1], w[0] : w[1]] = count
                count += 1
    return labels


def _partition(grid: Tensor, window: tuple[int, int, int]) -> Tensor:
    """``(Tp, Hp, Wp)`` grid -> ``(windows, N)`` in torchvision's window order."""
    tp, hp, wp = grid.shape
    nt, nh, nw = tp // window[0], hp // window[1], wp // window[2]
    grid = grid.view(nt, window[0], nh, window[1], nw, window[2])
    return grid.permute(0, 2, 4, 1, 3, 5).reshape(nt * nh * nw, -1)


def plan_windows(size: tuple[int, int, int], window_size: list[int], shift_size: list[int]) -> WindowPlan:
    """The :class:`WindowPlan` for a ``(T, H, W)`` token grid (on the CPU; see :meth:`WindowAttention3d.plan`)."""
    window, shift = _get_window_and_shift_size(list(shift_size), list(size), list(window_size))
    window, shift = tuple(window), tuple(shift)
    padded = tuple(-(-size[i] // window[i]) * window[i] for i in range(3))
    # Rolled position p holds padded position (p + shift) mod padded; real if inside the clip.
    coords = [(torch.arange(padded[i]) + shift[i]) % padded[i] for i in range(3)]
    t, h, w = torch.meshgrid(*coords, indexing="ij")
    real = (t < size[0]) & (h < size[1]) & (w < size[2])
    token = torch.where(real, (t * size[1] + h) * size[2] + w, -1)
    token = _partition(token, window)  # (windows, N)
    if sum(shift) > 0:
        labels = _partition(_region_labels(padded, window, shift), window)  # (windows, N)
        border = (labels != labels[:, :1]).any(dim=1)
    else:
        labels, border = None, torch.zeros(len(token), dtype=torch.bool)
    order = torch.cat([torch.nonzero(~border).flatten(), torch.nonzero(border).flatten()])
    border_mask = None
    if labels is not None and bool(border.any()):
        lab = labels[border]
        differ = lab[:, :, None] != lab[:, None, :]
        border_mask = torch.zeros(differ.shape).masked_fill_(differ, _SHIFT_MASK_VALUE)[:, None]  # (border, 1, N, N)
    num_border = int(border.sum())
    return WindowPlan(window, shift, len(token) - num_border, num_border, token[order].flatten(), border_mask)


# --- attention over the window rows ----------------------------------------------------

# Recomputed probabilities below e^-30 (about 1e-13) are set to exactly zero. Tiny probabilities
# times small gradients give subnormal floats in the matrix products that follow, which x86
# computes about a hundred times slower: with torchvision's -100 shift mask (e^-100 weights, kept
# at e^-60), the shifted blocks' backward products ran 5x slower on 16x64x64 clips. The mask is
# -inf now, and this guards against the same from unmasked pairs with very low scores. Dropped,
# such probabilities change a row by at most N * e^-30 (4e-11 for N = 392), far below float32
# resolution.
_EXP_FLOOR = -30.0

# Row dtypes :class:`_WindowAttentionCPU` trains in: float32, and bfloat16 under CPU autocast
# (``--precision bf16-mixed``), whose products run on the CPU's bfloat16 units where it has them.
_CPU_TRAINING_DTYPES = (torch.float32, torch.bfloat16)


def _groups(rows: Tensor, batch: int, counts: tuple[int, int], n_tok: int, heads: int
            ) -> list[tuple[int, Tensor, Tensor, Tensor]]:
    """Split ``(P, 3C)`` window rows into (group, q, k, v), each ``(B, n, h, N, d)``; groups: interior, border."""
    sizes = [batch * count * n_tok for count in counts]
    out = []
    for group, (count, part) in enumerate(zip(counts, rows.split(sizes))):
        if count:
            part = part.view(batch, count, n_tok, 3, heads, -1)  # (B, n, N, 3, h, d)
            q, k, v = part.permute(3, 0, 1, 4, 2, 5).unbind(0)
            out.append((group, q, k, v))
    return out


def _group_masks(bias: Tensor, shift_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Additive masks: ``(1, h, N, N)`` bias for interior windows, ``(n, h, N, N)`` bias + shift for border windows."""
    return bias[None], None if shift_mask is None else bias[None] + shift_mask.to(bias.dtype)


def _flash_cpu(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """PyTorch's CPU flash kernel: ``(b, h, N, d)`` output over ``(b, N, h, d)`` memory, and ``(b, h, N)`` log-sum-exp."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=mask,
                                                                      scale=scale)


class _WindowAttentionCPU(torch.autograd.Function):
    """Window attention over ``(P, 3C)`` window rows -> ``(P, C)``, with a learned ``(h, N, N)`` bias, on the CPU.

    PyTorch's CPU flash kernel cannot return the gradient of its mask, and the bias must
    learn. Forward runs the flash kernel (interior windows in one call with the shared bias,
    border windows clip by clip with bias + shift mask) and keeps the rows, the output and
    the row log-sum-exp: nothing of size ``N x N``. Backward goes clip by clip, recomputes
    the probabilities from the log-sum-exp and writes the gradients of q, k, v straight into
    the rows' layout.
    """

    @staticmethod
    def forward(ctx, rows: Tensor, bias: Tensor, shift_mask: Tensor | None, batch: int, counts: tuple[int, int],
                heads: int, scale: float) -> Tensor:
        n_tok = bias.shape[-1]
        c = rows.shape[1] // 3
        out = rows.new_empty(rows.shape[0], c)
        masks = _group_masks(bias, shift_mask)
        lses = []
        start = 0
        for group, q, k, v in _groups(rows, batch, counts, n_tok, heads):
            count = q.shape[1]
            target = out[start : start + batch * count * n_tok].view(batch, count, n_tok, heads, -1)
            mask = masks[group]
            if mask.shape[0] == 1:  # one mask for every window: one call
                o, lse = _flash_cpu(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), mask, scale)
                target.copy_(o.view(batch, count, heads, n_tok, -1).transpose(2, 3))
                lses.append(lse.view(batch, count, heads, n_tok, 1))
            else:  # one mask per window: one call per clip
                group_lse = []
                for i in range(batch):
                    o, lse = _flash_cpu(q[i], k[i], v[i], mask, scale)
                    target[i].copy_(o.transpose(1, 2))
                    group_lse.append(lse[..., None])
                lses.append(torch.stack(group_lse))
            start += batch * count * n_tok
        ctx.save_for_backward(rows, bias, shift_mask, out, *lses)
        ctx.setup = (batch, counts, heads, scale)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        rows, bias, shift_mask, out, *lses = ctx.saved_tensors
        batch, counts, heads, scale = ctx.setup
        n_tok = bias.shape[-1]
        masks = _group_masks(bias, shift_mask)
        grad_rows = torch.empty_like(rows)
        grad_bias = torch.zeros_like(bias)
        grad_groups = _groups(grad_rows, batch, counts, n_tok, heads)
        # Recomputing P: scores and dP in float32, whatever the rows' dtype (in bfloat16 their rounding
        # would not match the forward's log-sum-exp); the products that take P or dS run in the
        # rows' dtype (bfloat16 under autocast). For float32 rows every conversion is a no-op.
        product_dtype = rows.dtype
        start = 0
        for (group, q, k, v), (_, grad_q, grad_k, grad_v), lse in zip(_groups(rows, batch, counts, n_tok, heads),
                                                                   grad_groups, lses):
            count = q.shape[1]
            span = slice(start, start + batch * count * n_tok)
            o = out[span].view(batch, count, n_tok, heads, -1).transpose(2, 3)  # (B, n, h, N, d)
            go = grad_out[span].view(batch, count, n_tok, heads, -1).transpose(2, 3)
            start += batch * count * n_tok
            # D, the softmax backward's row term: rowsum(dO * O) from small tensors in float32; in
            # bfloat16, O is rounded and dP - D cancels, so there D = rowsum(dP * P) from the N x N ones.
            row_term = (go * o).sum(-1, keepdim=True) if product_dtype == torch.float32 else None
            mask = masks[group]
            for i in range(batch):
                q_scaled, k_scaled = q[i] * scale, k[i] * scale  # (n, h, N, d): scale the small operands
                scores = torch.matmul(q[i].float() * scale, k[i].float().transpose(-2, -1))  # (n, h, N, N)
                probs = F.threshold_(scores.add_(mask).sub_(lse[i]), _EXP_FLOOR, -math.inf).exp_()  # -> P
                grad_v[i].copy_(torch.matmul(probs.to(product_dtype).transpose(-2, -1), go[i]))
                grad_scores = torch.matmul(go[i].float(), v[i].float().transpose(-2, -1))  # dP ...
                row = row_term[i] if row_term is not None else (grad_scores * probs).sum(-1, keepdim=True)
                grad_scores = grad_scores.sub_(row).mul_(probs)  # ... -> dS = P (dP - D)
                del probs
                grad_bias += grad_scores.sum(0)
                grad_scores = grad_scores.to(product_dtype)
                grad_q[i].copy_(torch.matmul(grad_scores, k_scaled))
                grad_k[i].copy_(torch.matmul(grad_scores.transpose(-2, -1), q_scaled))
        return grad_rows, grad_bias, None, None, None, None, None


def _attend_sdpa(rows: Tensor, bias: Tensor, shift_mask: Tensor | None, batch: int, counts: tuple[int, int],
                 heads: int, scale: float, dropout: float) -> Tensor:
    """Window attention through ``F.scaled_dot_product_attention`` (any device; GPU, inference, dropout)."""
    n_tok = bias.shape[-1]
    masks = _group_masks(bias, shift_mask)
    outs = []
    for group, q, k, v in _groups(rows, batch, counts, n_tok, heads):
        count = q.shape[1]
        mask = masks[group].to(q.dtype)
        if mask.shape[0] == 1:  # one mask for every window: one call
            o = F.scaled_dot_product_attention(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), attn_mask=mask,
                                               dropout_p=dropout, scale=scale)
            o = o.view(batch, count, heads, n_tok, -1).transpose(2, 3)  # (B, n, N, h, d)
        else:  # one mask per window: one call per clip
            o = torch.stack([F.scaled_dot_product_attention(q[i], k[i], v[i], attn_mask=mask, dropout_p=dropout,
                                                            scale=scale).transpose(1, 2) for i in range(batch)])
        outs.append(o.reshape(-1, heads * o.shape[-1]))  # (B*n*N, C)
    return outs[0] if len(outs) == 1 else torch.cat(outs)


# --- the module -------------------------------------------------------------------------


class WindowAttention3d(ShiftedWindowAttention3d):
    """torchvision's ``ShiftedWindowAttention3d`` with a fast forward (see the module docstring).

    Takes and returns ``(B, T, H, W, C)``. Parameters, buffers and outputs are torchvision's;
    set ``impl = "reference"`` to run torchvision's own forward instead.
    """

    impl: AttentionImpl = "fused"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._plans: dict[tuple, tuple[WindowPlan, RowGather]] = {}

    def plan(self, batch: int, size: tuple[int, int, int], device: torch.device) -> tuple[WindowPlan, RowGather]:
        """The window plan for ``batch`` clips of ``size`` tokens, with its batch-wide row gather on ``device``.

        Window rows are ordered interior windows of every clip, then border windows of every
        clip (see :func:`~dust.models.window_rows.batch_row_gather`). Built once per
        (batch, size, device) and cached.
        """
        key = (batch, size, device)
        found = self._plans.get(key)  # a plain lookup, which torch.compile traces
        return found if found is not None else self._build_plan(key)

    @torch.compiler.disable
    def _build_plan(self, key: tuple) -> tuple[WindowPlan, RowGather]:
        batch, size, device = key
        if len(self._plans) >= 16:
            self._plans.clear()
        plan = plan_windows(size, self.window_size, self.shift_size)
        cut = plan.num_interior * plan.window_volume
        gather = batch_row_gather((plan.index[:cut], plan.index[cut:]), batch, size[0] * size[1] * size[2])
        mask = None if plan.border_mask is None else plan.border_mask.to(device)
        plan = WindowPlan(plan.window, plan.shift, plan.num_interior, plan.num_border, plan.index, mask)
        self._plans[key] = (plan, None if gather is None else tuple(t.to(device) for t in gather))
        return self._plans[key]

    def _relative_position_bias(self, volume: int) -> Tensor:
        """``(h, N, N)`` bias of the (possibly clamped) window, as torchvision indexes it."""
        index = self.relative_position_index[:volume, :volume].reshape(-1)  # type: ignore[index]
        table = self.relative_position_bias_table.t()  # (h, relative positions)
        return table.index_select(1, index).view(-1, volume, volume)

    def forward(self, x: Tensor) -> Tensor:
        if self.impl == "reference":
            return super().forward(x)
        b, t, h, w, c = x.shape
        heads = self.num_heads
        plan, gather = self.plan(b, (t, h, w), x.device)
        n_tok = plan.window_volume
        qkv = F.linear(x, self.qkv.weight, self.qkv.bias).view(-1, 3 * c)  # (B*T*H*W, 3C)
        fill = self.qkv.bias if self.qkv.bias is not None else qkv.new_zeros(3 * c)
        rows = to_windows(qkv, fill, gather)  # (B*windows*N, 3C)

        bias = self._relative_position_bias(n_tok)  # (h, N, N)
        shift_mask = None if plan.border_mask is None else plan.border_mask.to(bias.dtype)  # (border windows, 1, N, N)
        counts = (plan.num_interior, plan.num_border)
        scale = (c // heads) ** -0.5
        dropout = self.attention_dropout if self.training else 0.0
        if (x.device.type == "cpu" and rows.dtype in _CPU_TRAINING_DTYPES and bias.requires_grad
                and torch.is_grad_enabled() and not dropout):
            out = _WindowAttentionCPU.apply(rows, bias, shift_mask, b, counts, heads, scale)
        else:
            out = _attend_sdpa(rows, bias, shift_mask, b, counts, heads, scale, dropout)  # (B*windows*N, C)
        out = to_tokens(out, gather)  # (B*T*H*W, C)
        out = F.linear(out, self.proj.weight, self.proj.bias)
        out = F.dropout(out, p=self.dropout, training=self.training)
        return out.view(b, t, h, w, c)
