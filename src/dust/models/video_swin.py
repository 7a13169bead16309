"""Video Swin Transformer: the video branch of DuST, a thin layer over torchvision's ``SwinTransformer3d``.

Liu et al., "Video Swin Transformer", CVPR 2022; used as DuST's video branch in
Shi, Chen, Liu & Guo, CVPR 2024 Workshops. The parameter layout is torchvision's,
so its Kinetics-400 checkpoints load as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torchvision.models.swin_transformer import SwinTransformerBlock
from torchvision.models.video.swin_transformer import PatchEmbed3d, SwinTransformer3d

from .mlp import RecomputedGeluMLP
from .recompute import RecomputedLayerNorm, saved_recipes
from .video_attention import AttentionImpl, WindowAttention3d

__all__ = ["VideoSwin"]


def _patch_embed_builder(in_chans: int, patch_norm: bool) -> Callable[..., nn.Module]:
    def build(patch_size: list[int], embed_dim: int, norm_layer: Callable[..., nn.Module] | None) -> nn.Module:
        return PatchEmbed3d(patch_size, in_chans, embed_dim, norm_layer if patch_norm else None)

    return build


def _block(*args, attn_layer: Callable[..., nn.Module] | None = None, **kwargs) -> nn.Module:
    """torchvision's Swin block with :class:`WindowAttention3d` (``SwinTransformer3d`` always passes its own)
    and :class:`RecomputedGeluMLP` (same parameters)."""
    block = SwinTransformerBlock(*args, attn_layer=WindowAttention3d, **kwargs)
    block.mlp = RecomputedGeluMLP.from_sequential(block.mlp)
    return block


class VideoSwin(SwinTransformer3d):
    """Video Swin classifier over ``(B, C, T, H, W)`` clips.

    Args:
        num_classes: output classes; 0 gives a model without head (features only).
        embed_dim: width of the first stage; the pooled feature is ``embed_dim * 2**(stages - 1)`` wide.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        patch_size: (t, h, w) voxels per token.
        window_size: (t, h, w) attention window in tokens.
        mlp_ratio: MLP hidden width over block width.
        drop_path_rate: stochastic depth, rising linearly to this value over the blocks.
        patch_norm: LayerNorm after the patch embedding.
        in_chans: input channels.
        drop_rate: dropout after the embedding and in the blocks.
        attn_drop_rate: dropout on attention weights.
        grad_checkpointing: in training, recompute each block in backward instead of keeping its
            activations (less memory, about a third more compute).

    Window attention is :class:`~dust.models.video_attention.WindowAttention3d`: torchvision's
    parameters and outputs, a faster forward (see :meth:`set_attention_impl`).

    With autograd on, it keeps the blocks' norm outputs and the attention's token rows of 4 MiB
    or more as recipes that backward recomputes (:mod:`~dust.models.recompute`): a fifth less
    activation memory for the paper preset at 77x224x224, the same gradients bit for bit.
    """

    def __init__(
        self,
        num_classes: int = 4,
        embed_dim: int = 128,
        depths: Sequence[int] = (2, 2, 18, 2),
        num_heads: Sequence[int] = (4, 8, 16, 32),
        patch_size: Sequence[int] = (2, 4, 4),
        window_size: Sequence[int] = (8, 7, 7),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        patch_norm: bool = True,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        grad_checkpointing: bool = False,
    ) -> None:
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {list(depths)} and num_heads {list(num_heads)} differ in length")
        if len(patch_size) != 3 or len(window_size) != 3:
            raise ValueError("patch_size and window_size must each have three entries (t, h, w)")
        super().__init__(
            patch_size=list(patch_size),
            embed_dim=embed_dim,
            depths=list(depths),
            num_heads=list(num_heads),
            window_size=list(window_size),
            mlp_ratio=mlp_ratio,
            dropout=drop_rate,
            attention_dropout=attn_drop_rate,
            stochastic_depth_prob=drop_path_rate,
            num_classes=max(num_classes, 1),
            norm_layer=partial(RecomputedLayerNorm, eps=1e-5),
            block=_block,
            patch_embed=_patch_embed_builder(in_chans, patch_norm),
        )
        if num_classes == 0:
            self.head = nn.Identity()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.grad_checkpointing = grad_checkpointing
        self.config = dict(
            num_classes=num_classes, embed_dim=embed_dim, depths=list(depths), num_heads=list(num_heads),
            patch_size=list(patch_size), window_size=list(window_size), mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate, patch_norm=patch_norm, in_chans=in_chans,
            drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
        )

    @property
    def feature_dim(self) -> int:
        """Width of the pooled feature that :meth:`forward_features` returns."""
        return self.num_features

    def set_attention_impl(self, impl: AttentionImpl) -> VideoSwin:
        """``"fused"`` (default) or ``"reference"`` (torchvision's own attention forward, for checks)."""
        if impl not in ("fused", "reference"):
            raise ValueError(f"attention impl must be 'fused' or 'reference', got {impl!r}")
        for module in self.modules():
            if isinstance(module, WindowAttention3d):
                module.impl = impl
        return self

    @classmethod
    def from_preset(cls, name: str, **overrides) -> VideoSwin:
        """Build from a named preset (see ``dust presets``); keyword arguments override it."""
        from .presets import get_preset

        return cls(**{**get_preset("video", name), **overrides})

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, C, T, H, W)`` clip -> ``(B, feature_dim)`` pooled pre-head feature."""
        if x.ndim != 5 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected a (batch, {self.in_chans}, frames, height, width) clip, got shape {tuple(x.shape)}")
        checkpointing = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        with saved_recipes(enabled=not checkpointing):  # norm outputs and token rows recomputed in backward
            x = self.patch_embed(x)  # (B, T', H', W', D)
            x = self.pos_drop(x)
            if checkpointing:
                for layer in self.features:  # stages (Sequential of blocks) and patch merging, alternating
                    blocks = layer if isinstance(layer, nn.Sequential) else [layer]
                    for block in blocks:
                        x = checkpoint(block, x, use_reentrant=False) if blocks is layer else block(x)
            else:
                x = self.features(x)  # (B, T', H', W', feature_dim)
            x = self.norm(x)
        return x.mean(dim=(1, 2, 3))

    def forward_head(self, features: Tensor) -> Tensor:
        """``(B, feature_dim)`` -> ``(B, num_classes)`` logits."""
        return self.head(features)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, T, H, W)`` clip -> ``(B, num_classes)`` logits."""
        return self.forward_head(self.forward_features(x))

    def no_weight_decay(self) -> set[str]:
        """Parameter names that should not be weight-decayed (bias tables, norms, biases)."""
        return {n for n, p in self.named_parameters() if p.ndim <= 1 or "relative_position_bias_table" in n}

