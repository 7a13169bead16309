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
- **Scaled-dot-product attention with one float mask per window group.** The
  relative-position bias and the shift mask are folded into one additive mask for
  ``F.scaled_dot_product_attention`` (fused kernels: flash attention on the CPU,
  memory-efficient attention on a GPU, where a float mask rules out flash). Windows are
  grouped by where their padding lies and how the shift cuts them (:class:`WindowGroup`):
  a group's windows share one mask, so each group is one call for the whole batch.
- **Only real queries.** Inside a window, rows are reordered real tokens first. Padding
  tokens are keys (as in torchvision) but never queries: their outputs are cropped
  away, so they are not computed (on 16x64x64 clips, with the paper's 8x7x7 window,
  42 % and 67 % of the first two stages' window rows are padding).
- **Training on CPU.** PyTorch's CPU flash kernel cannot give the gradient of the
  mask, and the bias table must learn; :class:`_WindowAttentionCPU` runs the fused kernel
  forward (nothing of size ``N x N`` per clip is kept) and recomputes the scores in backward. It
  trains in float32 and in bfloat16 autocast (products in bfloat16, softmax in float32).

Shapes: ``B`` batch, ``(T, H, W)`` tokens, ``C`` channels, ``N`` tokens per window,
``h`` heads, ``d = C / h``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.video.swin_transformer import ShiftedWindowAttention3d, _get_window_and_shift_size

from .recompute import remember
from .window_rows import RowGather, batch_row_gather, to_tokens, to_windows

__all__ = ["AttentionImpl", "BatchPlan", "WindowAttention3d", "WindowGroup", "WindowPlan", "plan_windows"]

AttentionImpl = Literal["fused", "reference"]
"""``"fused"``: this module's fast path. ``"reference"``: torchvision's own forward (for checks and FLOP counts)."""

# Pairs from different regions of a shifted window. torchvision adds -100, which leaves them
# weights of about e^-100: far below what float32 outputs can show, but subnormal floats, which
# x86 computes with about a hundred times slower (the fused kernel ran 1.6x slower on border
# windows). -inf gives them weight exactly zero: the same outputs to float32 precision.
_SHIFT_MASK_VALUE = -math.inf


@dataclass(frozen=True)
class WindowGroup:
    """Windows of a clip that attend alike: the same real (non-padding) positions, the same shift mask.

    Inside each window of the group, rows are reordered so that the ``real`` real positions
    come first: their queries are the only ones whose outputs are kept, so attention runs on
    ``real`` query rows against all ``N`` keys (padding tokens are keys, as in torchvision).

    Attributes:
        count: windows per clip in this group.
        real: real positions per window.
        order: ``(N,)`` window position (torchvision's (t, h, w) row-major order) of each row.
        shift_mask: ``(real, N)`` additive shift mask in that row order, or None where the
            windows need none.
    """

    count: int
    real: int
    order: Tensor
    shift_mask: Tensor | None


@dataclass(frozen=True)
class WindowPlan:
    """How one clip's tokens map onto attention windows, for one input shape.

    Attributes:
        window: window size actually used (clamped to the input where it is smaller).
        shift: shift actually used (0 where the window was clamped).
        groups: the windows, grouped by :class:`WindowGroup`; the largest group first.
        index: ``(windows * N,)`` token index (into the clip's ``T * H * W`` tokens) of each
            window row, group by group, ``-1`` for padding.
    """

    window: tuple[int, int, int]
    shift: tuple[int, int, int]
    groups: tuple[WindowGroup, ...]
    index: Tensor

    @property
    def window_volume(self) -> int:
        return self.window[0] * self.window[1] * self.window[2]

    def group_indices(self) -> list[Tensor]:
        """Each group's part of :attr:`index`."""
        return list(self.index.split([group.count * self.window_volume for group in self.groups]))


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


def _first_seen(labels: list[int]) -> tuple[int, ...]:
    """Region labels renumbered in order of first appearance: equal for windows cut alike."""
    seen: dict[int, int] = {}
    return tuple(seen.setdefault(label, len(seen)) for label in labels)


def plan_windows(size: tuple[int, int, int], window_size: list[int], shift_size: list[int]) -> WindowPlan:
    """The :class:`WindowPlan` for a ``(T, H, W)`` token grid (on the CPU; see :meth:`WindowAttention3d.plan`)."""
    window, shift = _get_window_and_shift_size(list(shift_size), list(size), list(window_size))
    window, shift = tuple(window), tuple(shift)
    padded = tuple(-(-size[i] // window[i]) * window[i] for i in range(3))
    # Rolled position p holds padded position (p + shift) mod padded; real if inside the clip.
    coords = [(torch.arange(padded[i]) + shift[i]) % padded[i] for i in range(3)]
    t, h, w = torch.meshgrid(*coords, indexing="ij")
    real = (t < size[0]) & (h < size[1]) & (w < size[2])
    token = _partition(torch.where(real, (t * size[1] + h) * size[2] + w, -1), window)  # (windows, N)
    shifted = sum(shift) > 0
    labels = _partition(_region_labels(padded, window, shift), window) if shifted else torch.zeros_like(token)
    members: dict[tuple, list[int]] = {}
    for i, (row, label) in enumerate(zip(token.tolist(), labels.tolist())):
        key = (tuple(position >= 0 for position in row), _first_seen(label))
        members.setdefault(key, []).append(i)
    groups, parts = [], []
    for (is_real, regions), windows in sorted(members.items(), key=lambda item: -len(item[1])):
        is_real = torch.tensor(is_real)
        order = torch.cat([torch.nonzero(is_real).flatten(), torch.nonzero(~is_real).flatten()])
        num_real = int(is_real.sum())
        mask = None
        if max(regions) > 0:  # the window spans regions of the shifted grid
            regions = torch.tensor(regions)[order]
            differ = regions[:num_real, None] != regions[None, :]
            mask = torch.zeros(differ.shape).masked_fill_(differ, _SHIFT_MASK_VALUE)
        groups.append(WindowGroup(len(windows), num_real, order, mask))
        parts.append(token[windows][:, order].flatten())
    return WindowPlan(window, shift, tuple(groups), torch.cat(parts))


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


# Backward recomputes the scores in chunks of about this many elements (16 MiB in float32; two such
# buffers are alive at once, three in bfloat16, and one window with many heads may exceed it): a few
# clips at a time where a clip's windows are small, a part of a clip's windows where they are many.
_SCORES_PER_CALL = 1 << 22


def _score_chunks(batch: int, windows: int, per_window: int) -> list[tuple[slice, slice]]:
    """(clips, windows) index pairs covering ``(batch, windows)``, each within :data:`_SCORES_PER_CALL` elements
    (or one window, where a single window exceeds it)."""
    per_clip = windows * per_window
    if per_clip <= _SCORES_PER_CALL:
        clips = _SCORES_PER_CALL // per_clip
        return [(slice(c, c + clips), slice(None)) for c in range(0, batch, clips)]
    step = max(1, _SCORES_PER_CALL // per_window)
    return [(slice(c, c + 1), slice(w, w + step)) for c in range(batch) for w in range(0, windows, step)]


GroupLayout = tuple[tuple[int, int], ...]
"""``(windows per clip, real positions per window)`` of each :class:`WindowGroup`, in row order."""


def _groups(rows: Tensor, batch: int, layout: GroupLayout, n_tok: int, heads: int
            ) -> list[tuple[slice, Tensor, Tensor, Tensor]]:
    """Split ``(P, 3C)`` window rows by group into (row span, q, k, v), each ``(B, n, h, N, d)``."""
    out, start = [], 0
    for count, _ in layout:
        span = slice(start, start + batch * count * n_tok)
        part = rows[span].view(batch, count, n_tok, 3, heads, -1)  # (B, n, N, 3, h, d)
        q, k, v = part.permute(3, 0, 1, 4, 2, 5).unbind(0)
        out.append((span, q, k, v))
        start = span.stop
    return out


def _real_rows(rows: Tensor, span: slice, batch: int, count: int, real: int, heads: int) -> Tensor:
    """``(B, n, h, real, d)`` view of the real rows of ``(P, C)`` window rows ``rows[span]``."""
    return rows[span].view(batch, count, -1, heads, rows.shape[1] // heads)[:, :, :real].transpose(2, 3)


def _flash_cpu(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """PyTorch's CPU flash kernel: ``(b, h, Nq, d)`` output laid out ``(b, Nq, h, d)``, ``(b, h, Nq)`` log-sum-exp."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=mask,
                                                                      scale=scale)


class _WindowAttentionCPU(torch.autograd.Function):
    """Window attention over ``(P, 3C)`` window rows -> ``(P, C)``, with a learned additive mask per group, on the CPU.

    PyTorch's CPU flash kernel cannot return the gradient of its mask, and the masks hold the
    learned relative-position bias. Forward runs the flash kernel, one call per window group
    (the real query rows of every window of every clip against all ``N`` keys, one shared
    ``(h, real, N)`` mask), and keeps the rows, the output and the row log-sum-exp: nothing of
    size ``N x N`` per clip. Backward goes a chunk of windows at a time, recomputes the
    probabilities from the log-sum-exp and writes the gradients of q, k, v straight into the
    rows' layout. Output rows of padding queries are left unset (nothing reads them) and their
    query gradients are zero.
    """

    @staticmethod
    def forward(ctx, rows: Tensor, batch: int, layout: GroupLayout, heads: int, scale: float, *masks: Tensor) -> Tensor:
        n_tok = masks[0].shape[-1]
        out = rows.new_empty(rows.shape[0], rows.shape[1] // 3)
        lses = []
        for (count, real), mask, (span, q, k, v) in zip(layout, masks, _groups(rows, batch, layout, n_tok, heads)):
            o, lse = _flash_cpu(q[..., :real, :].flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), mask[None], scale)
            _real_rows(out, span, batch, count, real, heads).copy_(o.view(batch, count, heads, real, -1))
            lses.append(lse.view(batch, count, heads, real, 1))
        ctx.save_for_backward(rows, out, *lses, *masks)
        ctx.setup = (batch, layout, heads, scale)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        batch, layout, heads, scale = ctx.setup
        rows, out, *saved = ctx.saved_tensors
        lses, masks = saved[: len(layout)], saved[len(layout) :]
        n_tok = masks[0].shape[-1]
        grad_rows = torch.empty_like(rows)
        grad_masks = []
        # Recomputing P: scores and dP in float32, whatever the rows' dtype (in bfloat16 their rounding
        # would not match the forward's log-sum-exp); the products that take P or dS run in the
        # rows' dtype (bfloat16 under autocast). For float32 rows every conversion is a no-op.
        product_dtype = rows.dtype
        for (count, real), mask, lse, (span, q, k, v), (_, grad_q, grad_k, grad_v) in zip(
                layout, masks, lses, _groups(rows, batch, layout, n_tok, heads),
                _groups(grad_rows, batch, layout, n_tok, heads)):
            grad_q[..., real:, :] = 0.0  # padding queries: no output, no gradient
            q, grad_q = q[..., :real, :], grad_q[..., :real, :]
            o = _real_rows(out, span, batch, count, real, heads)  # (B, n, h, real, d)
            go = _real_rows(grad_out, span, batch, count, real, heads)
            # D, the softmax backward's row term: rowsum(dO * O) from small tensors in float32; in
            # bfloat16, O is rounded and dP - D cancels, so there D = rowsum(dP * P) from the N x N ones.
            row_term = (go * o).sum(-1, keepdim=True) if product_dtype == torch.float32 else None
            grad_mask = torch.zeros_like(mask, dtype=torch.promote_types(mask.dtype, torch.float32))
            for i in _score_chunks(batch, count, heads * real * n_tok):  # (c, n, h, real, ...) pieces
                q_scaled = q[i].float() * scale  # scale the small operands, not the scores
                scores = torch.matmul(q_scaled, k[i].float().transpose(-2, -1))
                q_scaled, k_scaled = q_scaled.to(product_dtype), k[i] * scale
                probs = F.threshold_(scores.add_(mask).sub_(lse[i]), _EXP_FLOOR, -math.inf).exp_()  # -> P
                grad_v[i].copy_(torch.matmul(probs.to(product_dtype).transpose(-2, -1), go[i]))
                grad_scores = torch.matmul(go[i].float(), v[i].float().transpose(-2, -1))  # dP ...
                row = row_term[i] if row_term is not None else (grad_scores * probs).sum(-1, keepdim=True)
                grad_scores = grad_scores.sub_(row).mul_(probs)  # ... -> dS = P (dP - D)
                del probs
                grad_mask += grad_scores.sum((0, 1))
                grad_scores = grad_scores.to(product_dtype)
                grad_q[i].copy_(torch.matmul(grad_scores, k_scaled))
                grad_k[i].copy_(torch.matmul(grad_scores.transpose(-2, -1), q_scaled))
            grad_masks.append(grad_mask.to(mask.dtype))
        return grad_rows, None, None, None, None, *grad_masks


def _attend_sdpa(rows: Tensor, masks: Sequence[Tensor], batch: int, layout: GroupLayout, heads: int, scale: float,
                 dropout: float) -> Tensor:
    """Window attention through ``F.scaled_dot_product_attention`` (any device; GPU, inference, dropout).

    One call per window group, on its real query rows; output rows of padding queries are zero.
    """
    n_tok = masks[0].shape[-1]
    out = rows.new_zeros(rows.shape[0], rows.shape[1] // 3)
    for (count, real), mask, (span, q, k, v) in zip(layout, masks, _groups(rows, batch, layout, n_tok, heads)):
        o = F.scaled_dot_product_attention(q[..., :real, :].flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1),
                                           attn_mask=mask[None].to(q.dtype), dropout_p=dropout, scale=scale)
        _real_rows(out, span, batch, count, real, heads).copy_(o.view(batch, count, heads, real, -1))
    return out


# --- the module -------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchPlan:
    """A :class:`WindowPlan` made ready for ``batch`` clips on one device.

    Attributes:
        plan: the clip's windows.
        gather: token rows <-> window rows of the whole batch: every clip's windows of the first
            group, then of the next (see :func:`~dust.models.window_rows.batch_row_gather`).
        bias_index: per group, the ``(real * N,)`` entries of the relative-position table
            that make its ``(h, real, N)`` bias.
        shift_masks: per group, its shift mask on the device, or None.
    """

    plan: WindowPlan
    gather: RowGather
    bias_index: tuple[Tensor, ...]
    shift_masks: tuple[Tensor | None, ...]

    @property
    def layout(self) -> GroupLayout:
        return tuple((group.count, group.real) for group in self.plan.groups)


class WindowAttention3d(ShiftedWindowAttention3d):
    """torchvision's ``ShiftedWindowAttention3d`` with a fast forward (see the module docstring).

    Takes and returns ``(B, T, H, W, C)``. Parameters, buffers and outputs are torchvision's;
    set ``impl = "reference"`` to run torchvision's own forward instead.
    """

    impl: AttentionImpl = "fused"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._plans: dict[tuple, BatchPlan] = {}

    def plan(self, batch: int, size: tuple[int, int, int], device: torch.device) -> BatchPlan:
        """The :class:`BatchPlan` for ``batch`` clips of ``size`` tokens on ``device``; built once and cached."""
        key = (batch, size, device)
        found = self._plans.get(key)  # a plain lookup, which torch.compile traces
        return found if found is not None else self._build_plan(key)

    @torch.compiler.disable
    @torch.inference_mode(False)  # a plan first built for inference must serve training too
    def _build_plan(self, key: tuple) -> BatchPlan:
        batch, size, device = key
        if len(self._plans) >= 16:
            self._plans.clear()
        plan = plan_windows(size, self.window_size, self.shift_size)
        gather = batch_row_gather(plan.group_indices(), batch, size[0] * size[1] * size[2])
        volume = plan.window_volume
        relative = self.relative_position_index[:volume, :volume].to(device)  # type: ignore[index]
        bias_index = tuple(relative[group.order[: group.real].to(device)][:, group.order.to(device)].reshape(-1)
                           for group in plan.groups)
        shift_masks = tuple(None if group.shift_mask is None else group.shift_mask.to(device) for group in plan.groups)
        self._plans[key] = BatchPlan(plan, None if gather is None else tuple(t.to(device) for t in gather),
                                     bias_index, shift_masks)
        return self._plans[key]

    def _masks(self, batch_plan: BatchPlan) -> list[Tensor]:
        """Each group's ``(h, real, N)`` additive mask: relative-position bias, plus the shift mask where it has one."""
        table = self.relative_position_bias_table.t()  # (h, relative positions)
        n_tok = batch_plan.plan.window_volume
        masks = []
        for group, index, shift_mask in zip(batch_plan.plan.groups, batch_plan.bias_index, batch_plan.shift_masks):
            bias = table.index_select(1, index).view(-1, group.real, n_tok)
            masks.append(bias if shift_mask is None else bias + shift_mask.to(bias.dtype))
        return masks

    def forward(self, x: Tensor) -> Tensor:
        if self.impl == "reference":
            return super().forward(x)
        b, t, h, w, c = x.shape
        heads = self.num_heads
        batch_plan = self.plan(b, (t, h, w), x.device)
        qkv = F.linear(x, self.qkv.weight, self.qkv.bias).view(-1, 3 * c)  # (B*T*H*W, 3C)
        fill = self.qkv.bias if self.qkv.bias is not None else qkv.new_zeros(3 * c)
        rows = to_windows(qkv, fill, batch_plan.gather)  # (B*windows*N, 3C)
        masks = self._masks(batch_plan)
        scale = (c // heads) ** -0.5
        dropout = self.attention_dropout if self.training else 0.0
        on_cpu_kernel = (x.device.type == "cpu" and rows.dtype in _CPU_TRAINING_DTYPES and masks[0].requires_grad
                         and torch.is_grad_enabled() and not dropout)
        if on_cpu_kernel:
            out = _WindowAttentionCPU.apply(rows, b, batch_plan.layout, heads, scale, *masks)
        else:
            out = _attend_sdpa(rows, masks, b, batch_plan.layout, heads, scale, dropout)  # (B*windows*N, C)
        tokens = to_tokens(out, batch_plan.gather)  # (B*T*H*W, C)
        if on_cpu_kernel and tokens is not out:  # the output projection saves a gather of what backward keeps
            kept, inverse = out.detach(), batch_plan.gather[2]
            remember(tokens, lambda: kept.index_select(0, inverse), (kept,))
        out = F.linear(tokens, self.proj.weight, self.proj.bias)
        out = F.dropout(out, p=self.dropout, training=self.training)
        return out.view(b, t, h, w, c)
