"""DuST models: the 1-D time-series Swin, the Video Swin, the fused model, presets and weight loading."""

from .convert import (
    from_reference,
    inflate_swin_2d,
    load_imagenet_2d,
    load_kinetics400,
    load_ts_backbone,
    reference_video_to_torchvision,
)
from .ensemble import SeriesEnsemble
from .fusion import DuST
from .presets import get_preset, list_presets
from .ts_swin import TimeSeriesSwin
from .video_swin import VideoSwin
from .weights import LoadReport, WeightsError, count_parameters, load_weights, read_state_dict

__all__ = [
    "DuST",
    "LoadReport",
    "SeriesEnsemble",
    "TimeSeriesSwin",
    "VideoSwin",
    "WeightsError",
    "count_parameters",
    "from_reference",
    "get_preset",
    "inflate_swin_2d",
    "list_presets",
    "load_imagenet_2d",
    "load_kinetics400",
    "load_ts_backbone",
    "load_weights",
    "read_state_dict",
    "reference_video_to_torchvision",
]
