"""1-D Swin Transformer for time series: the kinematics branch of DuST.

Shi, Chen, Liu & Guo, "DuST: Dual Swin Transformer for Multi-modal Video and
Time-Series Modeling", CVPR 2024 Workshops. The layout follows the Swin
Transformer (Liu et al., ICCV 2021) in one dimension, with residual post-norm
blocks as in Swin V2 whose norms start at zero, so every block starts as the
identity.

Tensors inside the network are ``(B, L, D)``: batch, tokens, channels.

Variable-length series: give them NaN-padded at the end (time steps where every
channel is NaN are padding) or pass ``lengths``. Padding is zeroed, never attended
to (a per-sample key mask joins the window masks), zeroed again before each patch
merging (so a merged pair sees the same zero token a shorter series would) and left
out of the mean pooling; a series' features do not depend on how much padding
follows it. Full-length input takes the unmasked path unchanged.

``conv_stem`` (off in the paper's model) puts two convolutions before the patch
projection, as in Xiao et al., "Early Convolutions Help Transformers See Better"
(NeurIPS 2021): on small data sets it gives the tokens local, shift-robust shape
features the patch projection alone does not.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from .mlp import RecomputedGeluMLP
from .small_window_attention import small_window_attention
from .window_rows import RowGather, to_tokens, to_windows

__all__ = [
    "AttentionImpl",
    "ConvStem1d",
    "MaskMode",
    "PatchEmbed1d",
    "PatchMerging1d",
    "ShiftedWindowAttention1d",
    "SwinBlock1d",
    "SwinStage1d",
    "TimeSeriesSwin",
    "series_lengths",
    "shift_window_mask_1d",
    "window_row_gather_1d",
    "with_difference",
]

MaskMode = Literal["correct", "reference"]
"""How padding and wrapped tokens are masked in window attention.

``"correct"`` (default): padding is never attended to and tokens wrapped around
by the shift never mix with their new neighbours. ``"reference"``: the published
model's segment rule, needed to reproduce its checkpoints exactly.
"""

AttentionImpl = Literal["fused", "reference"]
"""``"fused"``: window attention as a row gather with the padding never projected. ``"reference"``:
the plain pad, roll and crop formulation (the same outputs, for checks and FLOP counts)."""

_REFERENCE_MASK_VALUE = -100.0


# --- tensor helpers -------------------------------------------------------------


def pad_right(x: Tensor, multiple: int) -> Tensor:
    """Right-pad ``(B, L, D)`` with zero tokens so that L is a multiple of ``multiple``."""
    pad = -x.shape[1] % multiple
    return F.pad(x, (0, 0, 0, pad)) if pad else x


def series_lengths(x: Tensor) -> Tensor:
    """Valid length of each NaN-padded series ``(B, C, L) -> (B,)`` int64.

    Trailing time steps where every channel is NaN are padding; NaN elsewhere (a
    missing value inside the series) does not shorten it. At least 1.
    """
    present = ~torch.isnan(x).all(dim=1)  # (B, L): a time step with any value
    trailing = present.flip(-1).int().argmax(dim=-1)  # padding steps after the last value
    lengths = x.shape[-1] - trailing
    return torch.where(present.any(dim=-1), lengths, torch.ones_like(lengths))


def valid_tokens(lengths: Tensor, size: int) -> Tensor:
    """``(B,)`` valid lengths -> ``(B, size)`` bool, True on the first ``lengths[b]`` tokens."""
    return torch.arange(size, device=lengths.device)[None] < lengths[:, None]


def with_difference(x: Tensor) -> Tensor:
    """``(B, C, L)`` -> ``(B, 2C, L)``: the series, then its first difference (0 at the first step)."""
    return torch.cat([x, F.pad(x.diff(dim=-1), (1, 0))], dim=1)


def window_row_gather_1d(batch: int, length: int, window: int, shift: int, device: torch.device) -> RowGather:
    """Right-padding to whole windows and the roll left by ``shift`` as one row gather (see :mod:`.window_rows`).

    Closed-form index arithmetic on the sizes, nothing cached and nothing data-dependent, so
    ``torch.compile`` traces it into the graph. None when there is neither padding nor shift.
    """
    padded = -(-length // window) * window
    if padded == length and shift == 0:
        return None
    start = torch.arange(batch, device=device)[:, None]
    source = (torch.arange(padded, device=device) + shift) % padded  # padded position at each rolled position
    index = (start * length + source.clamp(max=length - 1)).flatten()
    pad_positions = [r for r in range(padded) if (r + shift) % padded >= length]
    pad = (start * padded + torch.tensor(pad_positions, dtype=torch.long, device=device)).flatten()
    inverse = (start * padded + (torch.arange(length, device=device) - shift) % padded).flatten()
    return index, pad, inverse


def relative_position_index_1d(window: int) -> Tensor:
    """``(w, w)`` index into a ``(2w - 1)``-row bias table: ``i - j + w - 1``."""
    coords = torch.arange(window)
    return coords[:, None] - coords[None, :] + window - 1


def _reference_shift_labels(length: int, window: int, shift: int, device: torch.device | None = None) -> Tensor:
    """Segment label of each position of the rolled, padded sequence, as the reference does it.

    Returns ``(Lp,)`` integer labels. The rule (including its use of ``2w`` where the
    padded length belongs) is documented in DESIGN.md; it is kept only to reproduce
    reference checkpoints.
    """
    padded = math.ceil(length / window) * window
    pad = padded - length
    if pad == 0 or pad + shift == window:
        cuts = [slice(None, -window), slice(-window, -shift), slice(-shift, None)]
    else:
        k = 2 * window - length + shift
        if pad + shift > window:
            cuts = [slice(None, -k), slice(-k, -window), slice(-window, -shift), slice(-shift, None)]
        else:
            cuts = [slice(None, -window), slice(-window, -k), slice(-k, -shift), slice(-shift, None)]
    labels = torch.zeros(padded, dtype=torch.long, device=device)
    for label, cut in enumerate(cuts):
        labels[cut] = label
    return labels


def shift_window_mask_1d(length: int, window: int, shift: int, mode: MaskMode,
                         device: torch.device | None = None) -> Tensor | None:
    """Additive attention mask for each window of a (possibly shifted) padded sequence.

    Args:
        length: tokens before padding (L).
        window: window size (w).
        shift: left roll applied before partitioning (s), 0 for unshifted blocks.
        mode: ``"correct"`` or ``"reference"`` (see :data:`MaskMode`).
        device: where to build it (default: the CPU).

    Returns:
        ``(Lp / w, w, w)`` float mask to add to the attention scores (query, key),
        or ``None`` when nothing needs masking.
    """
    padded = math.ceil(length / window) * window
    num_windows = padded // window
    if mode == "reference":
        if shift == 0:
            return None
        labels = _reference_shift_labels(length, window, shift, device).view(num_windows, window)
        differ = labels[:, :, None] != labels[:, None, :]
        return differ.float() * _REFERENCE_MASK_VALUE
    if mode != "correct":
        raise ValueError(f"mask mode must be 'correct' or 'reference', got {mode!r}")
    if shift == 0 and padded == length:
        return None
    original = (torch.arange(padded, device=device) + shift) % padded  # rolled position -> original position
    valid = (original < length).view(num_windows, window)
    wrapped = (original < shift).view(num_windows, window)
    allowed = valid[:, None, :] & (wrapped[:, :, None] == wrapped[:, None, :])
    allowed |= torch.eye(window, dtype=torch.bool, device=device)  # padding queries keep one finite score
    mask = torch.zeros(allowed.shape, device=device)
    return mask.masked_fill_(~allowed, float("-inf"))


# --- modules --------------------------------------------------------------------


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm over ``(B, C, L)`` whose training statistics skip padded time steps."""

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        if valid is None or not self.training:
            return super().forward(x)
        weight = valid[:, None].to(x.dtype)  # (B, 1, L)
        count = weight.sum().clamp(min=2)
        mean = (x * weight).sum(dim=(0, 2)) / count
        var = ((x - mean[:, None]) ** 2 * weight).sum(dim=(0, 2)) / count
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * count / (count - 1), self.momentum)
        x = (x - mean[:, None]) * torch.rsqrt(var[:, None] + self.eps)
        return x * self.weight[:, None] + self.bias[:, None]


class ConvStem1d(nn.Module):
    """Two same-length convolutions (kernels 7 and 5) with BatchNorm and GELU: ``(B, C, L) -> (B, S, L)``.

    Padded time steps are zeroed before each convolution, so a series sees the same
    zeros beyond its end whatever padding follows it, and skipped by the batch statistics.
    """

    def __init__(self, in_chans: int, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(in_chans, channels, kernel_size=7, padding=3)
        self.bn1 = MaskedBatchNorm1d(channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=5, padding=2)
        self.bn2 = MaskedBatchNorm1d(channels)

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        keep = None if valid is None else valid[:, None].to(x.dtype)  # (B, 1, L)
        x = F.gelu(self.bn1(self.conv1(x), valid))
        if keep is not None:
            x = x * keep
        x = F.gelu(self.bn2(self.conv2(x), valid))
        return x if keep is None else x * keep


class PatchEmbed1d(nn.Module):
    """Split a series into patches and embed them: ``(B, C, L) -> (B, ceil(L / p), D)``.

    With ``stem_channels``, a :class:`ConvStem1d` runs first and the patches are cut from its output.
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, stem_channels: int = 0) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.stem = ConvStem1d(in_chans, stem_channels) if stem_channels else None
        self.proj = nn.Conv1d(stem_channels or in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """``valid`` ``(B, L)`` marks real time steps (None: all); padded ones must be zero in ``x``."""
        if self.stem is not None:
            x = self.stem(x, valid)
        pad = -x.shape[-1] % self.patch_size
        if pad:
            x = F.pad(x, (0, pad))
        x = self.proj(x).transpose(1, 2)  # (B, L', D)
        return self.norm(x)


class PatchMerging1d(nn.Module):
    """Halve the tokens and double the width: ``(B, L, D) -> (B, ceil(L / 2), 2D)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(2 * dim)
        self.reduction = nn.Linear(2 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = pad_right(x, 2)
        x = torch.cat([x[:, 0::2], x[:, 1::2]], dim=-1)  # (B, L/2, 2D)
        return self.reduction(self.norm(x))


class ShiftedWindowAttention1d(nn.Module):
    """Multi-head self-attention in (shifted) windows with a learned relative position bias.

    The sequence is right-padded to a multiple of the window, rolled left by the shift and
    attended window by window, with bias and masks folded into one float mask; the result
    is rolled back and cropped. Two implementations give the same outputs:

    - ``impl = "fused"`` (default), on the CPU without attention dropout: padding, roll
      and partition are one row gather of the projected tokens
      (:mod:`dust.models.window_rows`; the padding is never projected), and the attention
      is :func:`~dust.models.small_window_attention.small_window_attention`.
    - ``impl = "reference"``, and on other devices or with attention dropout: the plain
      formulation through ``scaled_dot_product_attention`` (PyTorch's fused kernels on a
      GPU). Also what the benchmark counts FLOPs on.
    """

    impl: AttentionImpl = "fused"

    def __init__(
        self,
        dim: int,
        window_size: int,
        shift_size: int,
        num_heads: int,
        qkv_bias: bool = True,
        attention_dropout: float = 0.0,
        dropout: float = 0.0,
        mask_mode: MaskMode = "correct",
        length: int | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift {shift_size} must lie in [0, window {window_size})")
        self.window_size = window_size
        self.shift_size = shift_size
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.mask_mode = mask_mode
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(2 * window_size - 1, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index_1d(window_size), persistent=False)
        self.length = length  # the sequence length this block usually sees: its shift mask is built once
        self.register_buffer("shift_mask", None if length is None else
                             shift_window_mask_1d(length, window_size, shift_size, mask_mode), persistent=False)

    def _padding_mask(self, valid: Tensor, dtype: torch.dtype) -> Tensor:
        """``(B, L)`` valid tokens -> ``(B, nW, 1, w, w)`` additive mask hiding padded keys.

        A query keeps its own key, so padding queries (whose outputs are discarded)
        never see an all-masked row.
        """
        w, s = self.window_size, self.shift_size
        keys = F.pad(valid, (0, -valid.shape[1] % w))  # (B, Lp), window padding is not valid
        if s:
            keys = torch.roll(keys, -s, dims=1)
        keys = keys.view(valid.shape[0], -1, 1, 1, w)  # (B, nW, 1, 1 query, w keys)
        allowed = keys | torch.eye(w, dtype=torch.bool, device=valid.device)
        return torch.zeros(allowed.shape, dtype=dtype, device=valid.device).masked_fill_(~allowed, float("-inf"))

    def _attention_mask(self, length: int, valid: Tensor | None, dtype: torch.dtype) -> Tensor:
        """Relative position bias, shift mask and padding mask as one additive mask.

        ``(H, w, w)``; ``(nW, H, w, w)`` with a shift mask; ``(B, nW, H, w, w)`` with padding.
        The shift mask of the usual length is a buffer; other lengths build theirs on the call
        (a few small ops, which ``torch.compile`` traces rather than guarding on a cache).
        """
        bias = self.relative_position_bias_table[self.relative_position_index]  # (w, w, H)
        attn_mask = bias.permute(2, 0, 1)  # (H, w, w)
        if length == self.length:
            window_mask = self.shift_mask
        else:
            window_mask = shift_window_mask_1d(length, self.window_size, self.shift_size, self.mask_mode, bias.device)
        if window_mask is not None:
            attn_mask = attn_mask[None] + window_mask[:, None].to(attn_mask.dtype)  # (nW, H, w, w)
        if valid is not None:
            attn_mask = attn_mask + self._padding_mask(valid, attn_mask.dtype)  # (B, nW, H, w, w)
        return attn_mask.to(dtype)

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """``(B, L, D) -> (B, L, D)``; ``valid`` ``(B, L)`` bool marks real tokens (None: all are)."""
        dropout_p = self.attention_dropout if self.training else 0.0
        if self.impl == "reference" or x.device.type != "cpu" or dropout_p:
            return self._forward_reference(x, valid)
        batch, length, dim = x.shape
        gather = window_row_gather_1d(batch, length, self.window_size, self.shift_size, x.device)
        qkv = self.qkv(x).reshape(batch * length, 3 * dim)
        fill = self.qkv.bias if self.qkv.bias is not None else qkv.new_zeros(3 * dim)
        rows = to_windows(qkv, fill, gather)  # (B * Lp, 3D): padded, rolled left by the shift, in windows
        mask = self._attention_mask(length, valid, torch.promote_types(rows.dtype, torch.float32))  # softmax dtype
        out = small_window_attention(rows, mask, batch, self.num_heads, (dim // self.num_heads) ** -0.5)
        out = to_tokens(out, gather)  # (B * L, D): back in place, padding dropped
        return self.proj_drop(self.proj(out)).view(batch, length, dim)

    def _forward_reference(self, x: Tensor, valid: Tensor | None) -> Tensor:
        """The plain formulation: pad, roll, project every position, attend through SDPA, roll back, crop."""
        batch, length, dim = x.shape
        w, s, heads = self.window_size, self.shift_size, self.num_heads
        x = pad_right(x, w)
        if s:
            x = torch.roll(x, -s, dims=1)
        num_windows = x.shape[1] // w
        qkv = self.qkv(x).view(batch, num_windows, w, 3, heads, dim // heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # each (B, nW, H, w, hd)
        dropout_p = self.attention_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self._attention_mask(length, valid, q.dtype),
                                             dropout_p=dropout_p)
        out = self.proj_drop(self.proj(out.transpose(2, 3).reshape(batch, num_windows * w, dim)))  # (B, Lp, D)
        if s:
            out = torch.roll(out, s, dims=1)
        return out[:, :length]


class SwinBlock1d(nn.Module):
    """Residual post-norm Swin block: ``x + drop_path(norm(f(x)))`` for attention, then MLP."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        shift_size: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        drop_path: float = 0.0,
        mask_mode: MaskMode = "correct",
        length: int | None = None,
    ) -> None:
        super().__init__()
        self.attn = ShiftedWindowAttention1d(
            dim, window_size, shift_size, num_heads, qkv_bias, attention_dropout, dropout, mask_mode, length
        )
        self.norm1 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = RecomputedGeluMLP(OrderedDict(
            fc1=nn.Linear(dim, hidden), act=nn.GELU(), drop1=nn.Dropout(dropout), fc2=nn.Linear(hidden, dim),
            drop2=nn.Dropout(dropout)))
        self.norm2 = nn.LayerNorm(dim)
        self.drop_path = StochasticDepth(drop_path, "row")
        for norm in (self.norm1, self.norm2):  # every block starts as the identity
            nn.init.zeros_(norm.weight)
            nn.init.zeros_(norm.bias)

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        x = x + self.drop_path(self.norm1(self.attn(x, valid)))
        return x + self.drop_path(self.norm2(self.mlp(x)))


class SwinStage1d(nn.Module):
    """A stage of Swin blocks (even ones unshifted, odd ones shifted), then optional patch merging."""

    def __init__(
        self,
        dim: int,
        resolution: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        qkv_bias: bool,
        dropout: float,
        attention_dropout: float,
        drop_paths: Sequence[float],
        downsample: bool,
        mask_mode: MaskMode,
    ) -> None:
        super().__init__()
        if resolution <= window_size:  # one window covers the stage: nothing to shift
            window_size, shift = resolution, 0
        else:
            shift = window_size // 2
        self.window_size = window_size
        self.blocks = nn.ModuleList(
            SwinBlock1d(
                dim,
                num_heads,
                window_size,
                shift if j % 2 else 0,
                mlp_ratio,
                qkv_bias,
                dropout,
                attention_dropout,
                drop_paths[j],
                mask_mode,
                resolution,
            )
            for j in range(depth)
        )
        self.downsample = PatchMerging1d(dim) if downsample else None

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``(B, L, D)`` tokens and ``(B,)`` valid token counts (None: all valid) -> the same after the stage."""
        valid = None if lengths is None else valid_tokens(lengths, x.shape[1])
        for block in self.blocks:
            x = block(x, valid)
        if self.downsample is None:
            return x, lengths
        if valid is not None:
            x = x * valid[..., None].to(x.dtype)  # padding merges as the zero token a shorter series gets
            lengths = (lengths + 1) // 2
        return self.downsample(x), lengths


class TimeSeriesSwin(nn.Module):
    """1-D Swin Transformer classifier over ``(B, C, L)`` series.

    Args:
        seq_len: series length the model is built for; it fixes each stage's window
            (a window larger than a stage's token count is clamped to it). Other
            lengths are accepted at run time.
        in_chans: channels C.
        num_classes: output classes; 0 gives a model without head (features only).
        embed_dim: width D of the first stage; stage i is ``D * 2**i`` wide.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window_size: attention window in tokens.
        patch_size: time steps per token.
        mlp_ratio: MLP hidden width over block width.
        qkv_bias: bias on the query/key/value projection.
        drop_rate: dropout after attention projection and in the MLP.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth, rising linearly to this value over the blocks.
        mask_mode: ``"correct"`` (default) or ``"reference"`` (see :data:`MaskMode`).
        conv_stem: channels of a :class:`ConvStem1d` before the patch projection; 0 (default,
            the paper's layout): none.
        derivative: also feed each channel's first difference ``x[t] - x[t-1]`` (0 at ``t = 0``),
            so the network sees ``2 * in_chans`` channels; the input stays ``in_chans`` wide.
    """

    def __init__(
        self,
        seq_len: int,
        in_chans: int = 3,
        num_classes: int = 4,
        embed_dim: int = 128,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (16, 16, 16, 16),
        window_size: int = 8,
        patch_size: int = 1,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        mask_mode: MaskMode = "correct",
        conv_stem: int = 0,
        derivative: bool = False,
    ) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {list(depths)} and num_heads {list(num_heads)} differ in length")
        for name, value in (("seq_len", seq_len), ("in_chans", in_chans), ("embed_dim", embed_dim),
                            ("window_size", window_size), ("patch_size", patch_size)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if mask_mode not in ("correct", "reference"):
            raise ValueError(f"mask_mode must be 'correct' or 'reference', got {mask_mode!r}")
        self.config = dict(
            seq_len=seq_len, in_chans=in_chans, num_classes=num_classes, embed_dim=embed_dim,
            depths=list(depths), num_heads=list(num_heads), window_size=window_size,
            patch_size=patch_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate, mask_mode=mask_mode,
        )
        if conv_stem:  # only when used, so configs of the paper's layout stay as they were
            self.config["conv_stem"] = conv_stem
        if derivative:
            self.config["derivative"] = True
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.derivative = derivative
        self.patch_embed = PatchEmbed1d(in_chans * (2 if derivative else 1), embed_dim, patch_size, conv_stem)
        self.pos_drop = nn.Dropout(drop_rate)

        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        resolution = math.ceil(seq_len / patch_size)
        stages = []
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            first = sum(depths[:i])
            stages.append(
                SwinStage1d(
                    embed_dim * 2**i, resolution, depth, heads, window_size, mlp_ratio, qkv_bias,
                    drop_rate, attn_drop_rate, rates[first:first + depth],
                    downsample=i < len(depths) - 1, mask_mode=mask_mode,
                )
            )
            resolution = math.ceil(resolution / 2)
        self.layers = nn.ModuleList(stages)
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_linear)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> TimeSeriesSwin:
        """Build from a named preset (see ``dust presets``); keyword arguments override it."""
        from .presets import get_preset

        return cls(**{**get_preset("ts", name), **overrides})

    def forward_features(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``(B, C, L)`` series -> ``(B, num_features)`` pooled features.

        Series may be NaN-padded at the end (see the module docstring), or ``lengths``
        ``(B,)`` gives each one's valid time steps; other NaN count as zero.
        """
        if x.ndim != 3 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected a (batch, {self.in_chans}, length) series, got shape {tuple(x.shape)}")
        has_nan = bool(torch.isnan(x).any())
        if lengths is None and has_nan:
            lengths = series_lengths(x)
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=x.device).long().clamp(1, x.shape[-1])
            if bool((lengths == x.shape[-1]).all()):
                lengths = None
        if has_nan or lengths is not None:
            x = torch.nan_to_num(x, nan=0.0)
        if lengths is None:  # full length: the reference path
            x = self.pos_drop(self.patch_embed(with_difference(x) if self.derivative else x))
            for stage in self.layers:
                x, _ = stage(x)
            return self.norm(x).mean(dim=1)
        steps = valid_tokens(lengths, x.shape[-1])  # (B, L)
        keep = steps[:, None].to(x.dtype)
        x = x * keep  # zero the filler
        if self.derivative:
            x = with_difference(x) * keep
        x = self.pos_drop(self.patch_embed(x, steps))
        lengths = -(-lengths // self.patch_embed.patch_size)  # ceil(len / p) tokens
        for stage in self.layers:
            x, lengths = stage(x, lengths)
        valid = valid_tokens(lengths, x.shape[1])[..., None].to(x.dtype)  # (B, L, 1)
        return (self.norm(x) * valid).sum(dim=1) / valid.sum(dim=1)

    def forward_head(self, features: Tensor) -> Tensor:
        """``(B, num_features)`` -> ``(B, num_classes)`` logits."""
        return self.head(features)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``(B, C, L)`` series (NaN-padded, or with ``lengths``) -> ``(B, num_classes)`` logits."""
        return self.forward_head(self.forward_features(x, lengths))

    def set_attention_impl(self, impl: AttentionImpl) -> TimeSeriesSwin:
        """``"fused"`` (default) or ``"reference"`` (the plain window attention, for checks and FLOP counts)."""
        if impl not in ("fused", "reference"):
            raise ValueError(f"attention impl must be 'fused' or 'reference', got {impl!r}")
        for module in self.modules():
            if isinstance(module, ShiftedWindowAttention1d):
                module.impl = impl
        return self

    def no_weight_decay(self) -> set[str]:
        """Parameter names that should not be weight-decayed (bias tables, norms, biases)."""
        return {n for n, p in self.named_parameters() if p.ndim <= 1 or "relative_position_bias_table" in n}


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
