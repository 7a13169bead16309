"""The fused DuST model: a 1-D Swin over the time series and a head over [its features ‖ video features].

Shi, Chen, Liu & Guo, "DuST: Dual Swin Transformer for Multi-modal Video and
Time-Series Modeling", CVPR 2024 Workshops (stage 4 of the method). The video
features come from a trained :class:`~dust.models.VideoSwin` (stage 3), so their
width is that model's ``feature_dim``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .ts_swin import TimeSeriesSwin

__all__ = ["DuST"]


class DuST(nn.Module):
    """Time-series Swin backbone plus a linear head over ``[ts_features ‖ video_features]``.

    Args:
        video_feature_dim: width of the video features (the video model's ``feature_dim``).
        num_classes: output classes.
        **ts_kwargs: the :class:`TimeSeriesSwin` hyperparameters (``seq_len``, ``in_chans``, ...).
    """

    def __init__(self, video_feature_dim: int, num_classes: int = 4, **ts_kwargs: Any) -> None:
        super().__init__()
        if video_feature_dim < 1:
            raise ValueError(f"video_feature_dim must be at least 1, got {video_feature_dim}")
        ts_kwargs.pop("num_classes", None)
        self.backbone = TimeSeriesSwin(num_classes=0, **ts_kwargs)
        self.video_feature_dim = video_feature_dim
        self.num_classes = num_classes
        self.num_features = self.backbone.num_features + video_feature_dim
        self.head = nn.Linear(self.num_features, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.config = {**self.backbone.config, "num_classes": num_classes, "video_feature_dim": video_feature_dim}

    @classmethod
    def from_preset(cls, name: str, *, video_feature_dim: int, **overrides: Any) -> DuST:
        """Build with a time-series preset (see ``dust presets``); keyword arguments override it."""
        from .presets import get_preset

        return cls(video_feature_dim, **{**get_preset("ts", name), **overrides})

    def forward_features(self, kinematics: Tensor, video_features: Tensor) -> Tensor:
        """``(B, C, L)`` series and ``(B, video_feature_dim)`` features -> ``(B, num_features)``."""
        if video_features.ndim != 2 or video_features.shape[1] != self.video_feature_dim:
            raise ValueError(
                f"video features have shape {tuple(video_features.shape)}; this model expects "
                f"(batch, {self.video_feature_dim}), the feature width of the video model it was built for"
            )
        if video_features.shape[0] != kinematics.shape[0]:
            raise ValueError(
                f"{kinematics.shape[0]} series but {video_features.shape[0]} video feature rows"
            )
        ts_features = self.backbone.forward_features(kinematics)
        return torch.cat([ts_features, video_features.to(ts_features.dtype)], dim=1)

    def forward_head(self, features: Tensor) -> Tensor:
        """``(B, num_features)`` -> ``(B, num_classes)`` logits."""
        return self.head(features)

    def forward(self, kinematics: Tensor, video_features: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` for a batch of series and their clips' video features."""
        return self.forward_head(self.forward_features(kinematics, video_features))

    def no_weight_decay(self) -> set[str]:
        """Parameter names that should not be weight-decayed."""
        return {f"backbone.{n}" for n in self.backbone.no_weight_decay()} | {"head.bias"}
