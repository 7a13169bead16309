"""Predictions of a trained DuST (stage-1 video model + stage-4 fused model) for new clips."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .checkpoint import Checkpoint, check_pair, load_checkpoint
from .data.datasets import SeriesTransform, VideoTransform, check_finite
from .errors import InputError
from .models import DuST, VideoSwin

if TYPE_CHECKING:
    from .data.ingest import PrepareSettings

__all__ = ["Predictor", "run_checkpoints"]


def run_checkpoints(run_dir: str | Path) -> tuple[Path, Path]:
    """The stage-1 and stage-4 checkpoints of a ``dust run`` folder."""
    run_dir = Path(run_dir)
    video = run_dir / "saved_models" / "step_3d" / "final_3d.pth"
    fusion = run_dir / "saved_models" / "step_fusion" / "final_fusion.pth"
    for path in (video, fusion):
        if not path.is_file():
            raise InputError(f"{run_dir}: not a finished DuST run ({path.relative_to(run_dir)} is missing)")
    return video, fusion


class Predictor:
    """Class probabilities for clips: video through the stage-1 model's features, then the fused model.

    Preprocessing (clip size, normalisation, series standardisation, and, for files,
    decoding settings) is read from the checkpoints, never from defaults.
    """

    def __init__(self, video_ckpt: Checkpoint, fusion_ckpt: Checkpoint, device: str | torch.device | None = None) -> None:
        if video_ckpt.kind != "video" or fusion_ckpt.kind != "fusion":
            raise InputError("a Predictor needs a video checkpoint (stage 1) and a fusion checkpoint (stage 4)")
        self.device = _device(device)
        self.video_model: VideoSwin = video_ckpt.build().to(self.device)  # type: ignore[assignment]
        self.fusion_model: DuST = fusion_ckpt.build().to(self.device)  # type: ignore[assignment]
        if self.fusion_model.video_feature_dim != self.video_model.feature_dim:
            raise InputError(
                f"{fusion_ckpt.meta.get('path')}: expects {self.fusion_model.video_feature_dim}-wide video features, "
                f"{video_ckpt.meta.get('path')} gives {self.video_model.feature_dim}"
            )
        check_pair(video_ckpt, fusion_ckpt)
        self.video_transform = VideoTransform(**video_ckpt.meta.get("video_transform", {}))
        self.series_transform = SeriesTransform(**fusion_ckpt.meta.get("series_transform", {}))
        self.class_names: list[str] = list(
            fusion_ckpt.meta.get("class_names") or [str(i) for i in range(self.fusion_model.num_classes)]
        )
        self.video_ingest: dict[str, Any] = video_ckpt.meta.get("ingest") or {}
        self.series_ingest: dict[str, Any] = fusion_ckpt.meta.get("ingest") or {}

    @classmethod
    def from_checkpoints(cls, video_checkpoint: str | Path, fusion_checkpoint: str | Path,
                         device: str | torch.device | None = None) -> Predictor:
        """From a stage-1 video checkpoint and a stage-4 fusion checkpoint."""
        try:
            video = load_checkpoint(video_checkpoint, expect="video")
            fusion = load_checkpoint(fusion_checkpoint, expect="fusion")
        except Exception as err:
            raise InputError(str(err)) from None
        return cls(video, fusion, device)

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str | torch.device | None = None) -> Predictor:
        """From the folder of a finished ``dust run``."""
        return cls.from_checkpoints(*run_checkpoints(run_dir), device=device)

    # --- inputs ------------------------------------------------------------------

    def _decoding(self) -> tuple[PrepareSettings, list[str] | None]:
        """How training data were decoded: ``dust prepare``'s settings, else the models' input sizes."""
        from .data.ingest import PrepareSettings

        fields = set(PrepareSettings.__dataclass_fields__) - {"channels", "classes"}
        ingest = {k: v for k, v in {**self.video_ingest, **self.series_ingest}.items() if k in fields}
        t, h, w = self.video_transform.size or (None, None, None)
        if "num_frames" not in ingest and t is None:
            raise InputError("the video checkpoint records no clip size; pass decoded arrays instead of files")
        defaults = {"num_frames": t, "height": h, "width": w,
                    "kine_len": self.series_transform.length or self.fusion_model.backbone.config["seq_len"]}
        return PrepareSettings(**{**defaults, **ingest}), self.series_ingest.get("channels")

    def read_files(self, video: str | Path, kinematics: str | Path, start: float | None = None,
                   end: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Decode a video file and read its kinematics CSV exactly as training data were prepared:
        ``(3, T, H, W)`` uint8 and ``(C, L)`` float32."""
        from .data.ingest import read_pair

        settings, channels = self._decoding()
        return read_pair(video, kinematics, settings, channels, start, end)

    # --- prediction ----------------------------------------------------------------

    @torch.inference_mode()
    def predict_proba(self, video: np.ndarray | str | Path, kinematics: np.ndarray | str | Path) -> np.ndarray:
        """Probabilities ``(N, K)`` for clips ``(N, 3, T, H, W)`` (or one clip) and their series ``(N, C, L)``
        (or one series) — or for a video file and its kinematics CSV."""
        sources = ("clips", "series")
        if isinstance(video, (str, Path)) or isinstance(kinematics, (str, Path)):
            sources = (str(video), str(kinematics))
            video, kinematics = self.read_files(video, kinematics)  # type: ignore[arg-type]
        video, kinematics = np.asarray(video), np.asarray(kinematics)
        if video.ndim == 4:
            video = video[None]
        if kinematics.ndim == 2:
            kinematics = kinematics[None]
        if video.ndim != 5 or kinematics.ndim != 3 or len(video) != len(kinematics):
            raise InputError(f"expected clips (N, 3, T, H, W) and series (N, C, L) of equal N, "
                             f"got {video.shape} and {kinematics.shape}")
        self._check_inputs(video, kinematics, *sources)
        clips = self.video_transform.normalize(torch.stack([self.video_transform.read(c) for c in video]).to(self.device))
        series = torch.stack([self.series_transform(s) for s in kinematics]).to(self.device)
        features = self.video_model.forward_features(clips)
        logits = self.fusion_model(series, features)
        return logits.softmax(dim=-1).float().cpu().numpy()

    def _check_inputs(self, video: np.ndarray, kinematics: np.ndarray, video_source: str, series_source: str) -> None:
        """Channels the models take, finite clips, series with at least one step (NaN pads unequal lengths)."""
        takes = self.video_model.in_chans, self.fusion_model.backbone.config["in_chans"]
        for source, array, what, channels in ((video_source, video, "colour channels", takes[0]),
                                              (series_source, kinematics, "channels", takes[1])):
            if array.shape[1] != channels:
                raise InputError(f"{source}: {array.shape[1]} {what}, the model takes {channels}")
        check_finite(video_source, video, "clip")
        check_finite(series_source, kinematics, "series", nan_allowed=True)
        if np.issubdtype(kinematics.dtype, np.floating) and np.isnan(kinematics).all(axis=(1, 2)).any():
            raise InputError(f"{series_source}: a series with no values (all NaN)")

    def predict(self, video: np.ndarray | str | Path, kinematics: np.ndarray | str | Path) -> list[str]:
        """Predicted class names (see :meth:`predict_proba` for the inputs)."""
        return [self.class_names[i] for i in self.predict_proba(video, kinematics).argmax(axis=1)]

    def predict_rows(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """One output row per input row (``id``, ``video``, ``kinematics``, optional ``start``/``end``):
        ``id``, ``prediction`` and one probability per class."""
        out = []
        for row in rows:
            video, series = self.read_files(row["video"], row["kinematics"], row.get("start"), row.get("end"))
            proba = self.predict_proba(video, series)[0]
            out.append({"id": row["id"], "prediction": self.class_names[int(proba.argmax())],
                        **{f"p_{name}": float(p) for name, p in zip(self.class_names, proba)}})
        return out


def _device(spec: str | torch.device | None) -> torch.device:
    """``spec`` as a device this machine has (default: CUDA when available, else the CPU)."""
    if spec is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise InputError(f"--device {spec}: not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {spec}: this machine has no CUDA GPU")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"--device {spec}: only cpu and cuda are supported")
    return device
