"""Foreign checkpoints in: the published DuST code, torchvision's Kinetics-400 weights, 2-D ImageNet Swins.

Every foreign state dict passes through one pure renaming/resizing function here,
then through :func:`~dust.models.weights.load_weights`, which checks shapes and
reports what did not match.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from .fusion import DuST
from .ts_swin import TimeSeriesSwin
from .video_swin import VideoSwin
from .weights import LoadReport, WeightsError, load_weights, read_state_dict, to_tensors, unwrap_state_dict

__all__ = [
    "ReferenceKind",
    "from_reference",
    "inflate_swin_2d",
    "load_imagenet_2d",
    "load_kinetics400",
    "load_ts_backbone",
    "reference_video_to_torchvision",
    "swin_2d_to_torchvision_3d_names",
]

ReferenceKind = Literal["ts", "ts_fusion", "video"]

_VIDEO_RENAMES = [
    (re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\."), lambda m: f"features.{2 * int(m[1])}.{m[2]}."),
    (re.compile(r"^layers\.(\d+)\.downsample\."), lambda m: f"features.{2 * int(m[1]) + 1}."),
    (re.compile(r"\.mlp\.fc1\."), lambda m: ".mlp.0."),
    (re.compile(r"\.mlp\.fc2\."), lambda m: ".mlp.3."),
]


def _rename(key: str, rules: list) -> str:
    for pattern, repl in rules:
        key = pattern.sub(repl, key)
    return key


def reference_video_to_torchvision(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a reference video checkpoint's keys to torchvision's ``SwinTransformer3d`` layout."""
    return {_rename(k, _VIDEO_RENAMES): v for k, v in state.items()}


def from_reference(kind: ReferenceKind, config: Mapping[str, Any], state_dict: Mapping[str, Any]) -> nn.Module:
    """Build this project's model from a reference constructor config and state dict.

    Args:
        kind: ``"ts"`` (1-D Swin classifier), ``"ts_fusion"`` (fused model) or ``"video"``.
        config: the reference constructor's keyword arguments (as in ``reference/*.json``).
        state_dict: reference key names; tensors or numpy arrays.

    Returns:
        The model in eval mode; the 1-D models use the reference masking rule, so
        ``model(x)`` (``model(x, video_features)`` for ``"ts_fusion"``) reproduces
        the reference outputs.
    """
    state = to_tensors(unwrap_state_dict(dict(state_dict)))
    config = dict(config)
    if kind == "ts":
        model: nn.Module = TimeSeriesSwin(**config, mask_mode="reference")
    elif kind == "ts_fusion":
        model = DuST(mask_mode="reference", **config)
        state = {k if k.startswith("head.") else f"backbone.{k}": v for k, v in state.items()}
    elif kind == "video":
        model = VideoSwin(**config)
        state = reference_video_to_torchvision(state)
    else:
        raise ValueError(f"unknown reference kind {kind!r}; expected 'ts', 'ts_fusion' or 'video'")
    load_weights(model, state, source=f"reference {kind} checkpoint")
    return model.eval()


def load_kinetics400(model: VideoSwin, weights: str | Path | Mapping[str, Tensor]) -> LoadReport:
    """Load a torchvision Kinetics-400 ``swin3d_*`` checkpoint (a local file or state dict).

    The 400-class head is dropped (and reported) unless the model also has 400 classes.
    """
    source = str(weights) if isinstance(weights, (str, Path)) else "Kinetics-400 weights"
    state = read_state_dict(weights) if isinstance(weights, (str, Path)) else to_tensors(unwrap_state_dict(weights))
    head = [k for k in state if k.startswith("head.")]
    if model.num_classes == 0 or ("head.weight" in state and state["head.weight"].shape[0] != model.num_classes):
        state = {k: v for k, v in state.items() if k not in head}
        return load_weights(model, state, source=source, allow_missing=("head.",), dropped=head)
    return load_weights(model, state, source=source)


# --- 2-D ImageNet Swin -> 3-D ----------------------------------------------------

_MS_2D_RENAMES = [  # the original Swin release (and timm before 0.9)
    (re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\."), lambda m: f"features.{2 * int(m[1])}.{m[2]}."),
    (re.compile(r"^layers\.(\d+)\.downsample\."), lambda m: f"features.{2 * int(m[1]) + 1}."),
    (re.compile(r"\.mlp\.fc1\."), lambda m: ".mlp.0."),
    (re.compile(r"\.mlp\.fc2\."), lambda m: ".mlp.3."),
]
_TV_2D_RENAMES = [  # torchvision's swin_t / swin_s / swin_b
    (re.compile(r"^features\.0\.0\."), lambda m: "patch_embed.proj."),
    (re.compile(r"^features\.0\.2\."), lambda m: "patch_embed.norm."),
    (re.compile(r"^features\.(\d+)\."), lambda m: f"features.{int(m[1]) - 1}."),
]


def swin_2d_to_torchvision_3d_names(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a 2-D Swin state dict (original release or torchvision layout) to the 3-D model's names.

    Shapes are left as they are; :func:`inflate_swin_2d` resizes them.
    """
    torchvision_layout = "features.0.0.weight" in state
    rules = _TV_2D_RENAMES if torchvision_layout else _MS_2D_RENAMES
    return {_rename(k, rules): v for k, v in state.items()}


def _inflate_bias_table(table: Tensor, window: list[int]) -> Tensor:
    """``((2w-1)^2, H)`` 2-D table -> ``((2Wt-1)(2Wh-1)(2Ww-1), H)``: resized, then tiled over time."""
    side = round(table.shape[0] ** 0.5)
    if side * side != table.shape[0]:
        raise WeightsError(f"2-D relative position bias table has {table.shape[0]} rows, not a square")
    heads = table.shape[1]
    target = (2 * window[1] - 1, 2 * window[2] - 1)
    grid = table.T.reshape(1, heads, side, side)
    if (side, side) != target:
        grid = F.interpolate(grid, size=target, mode="bicubic", align_corners=False)
    spatial = grid.reshape(heads, -1).T  # (Sh * Sw, H), row = dh * Sw + dw
    return spatial.repeat(2 * window[0] - 1, 1)  # temporal offset is the outermost index


def inflate_swin_2d(state: Mapping[str, Tensor], model: VideoSwin) -> dict[str, Tensor]:
    """Inflate a 2-D ImageNet Swin state dict to ``model``'s 3-D layout (a pure function).

    The patch kernel is repeated over the temporal patch size and divided by it (so a
    static clip gives the 2-D embedding); each relative position bias table is
    resized to the 3-D window's spatial extent and tiled over the ``2 Wt - 1``
    temporal offsets. The classification head and rebuilt buffers are left out.
    """
    state = swin_2d_to_torchvision_3d_names(to_tensors(unwrap_state_dict(dict(state))))
    t_patch = model.patch_embed.tuple_patch_size[0]
    window = list(model.features[0][0].attn.window_size)
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith("head.") or key.rsplit(".", 1)[-1] in ("relative_position_index", "attn_mask"):
            continue
        if key == "patch_embed.proj.weight" and value.ndim == 4:
            value = value.unsqueeze(2).repeat(1, 1, t_patch, 1, 1) / t_patch
        elif key.endswith("relative_position_bias_table"):
            value = _inflate_bias_table(value, window)
        out[key] = value
    return out


def load_imagenet_2d(model: VideoSwin, weights: str | Path | Mapping[str, Tensor]) -> LoadReport:
    """Initialise ``model`` from a 2-D ImageNet Swin checkpoint inflated to 3-D (see :func:`inflate_swin_2d`).

    The model's head keeps its initialisation; every other tensor must fit.
    """
    source = str(weights) if isinstance(weights, (str, Path)) else "2-D Swin weights"
    state = read_state_dict(weights) if isinstance(weights, (str, Path)) else weights
    head = [k for k in state if k.startswith("head.")]
    inflated = inflate_swin_2d(state, model)
    return load_weights(model, inflated, source=source, allow_missing=("head.",), dropped=head)


def load_ts_backbone(model: DuST, weights: str | Path | Mapping[str, Tensor]) -> LoadReport:
    """Initialise the fused model's backbone from a stage-2 :class:`TimeSeriesSwin` state dict.

    The stage-2 head is dropped; every other tensor must match the backbone exactly
    (same preset and sizes), else :class:`WeightsError` names what differs.
    """
    source = str(weights) if isinstance(weights, (str, Path)) else "stage-2 time-series weights"
    state = read_state_dict(weights) if isinstance(weights, (str, Path)) else to_tensors(unwrap_state_dict(weights))
    head = [k for k in state if k.startswith("head.")]
    backbone = {k: v for k, v in state.items() if k not in head}
    return load_weights(model.backbone, backbone, source=source, dropped=head)
