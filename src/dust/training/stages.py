"""The four stages of DuST: train video, train time series, extract video features, train fused.

Each function takes plain typed settings (the command line maps its flags onto them)
and writes its artefacts: checkpoints under ``outpath``, history and log under ``logpath``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from ..atomic import ensure_writable_folder
from ..checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ..data.arrays import SUFFIXES, load_array
from ..data.datasets import (
    ArrayRows,
    Compose,
    SeriesAugment,
    SeriesTransform,
    VideoTransform,
    as_float32,
    check_finite,
    check_labels,
    check_rows,
    inverse_frequency_weights,
)
from ..errors import InputError
from ..evaluation.metrics import classification_report
from ..models import (
    DuST,
    SeriesEnsemble,
    TimeSeriesSwin,
    VideoSwin,
    load_imagenet_2d,
    load_kinetics400,
    load_ts_backbone,
)
from .datamodule import ArrayDataModule
from .features import feature_sidecar, write_features
from .parallel import available_cores, run_in_processes
from .recorder import StageRecorder
from .resume import RESUME_AUTO, RESUME_NAME, RandomState, check_resumable, resume_checkpoint
from .task import ClassifierTask
from .trainer import build_trainer

__all__ = ["StageResult", "TrainSettings", "check_outpath", "check_settings", "extract_features", "train_fusion",
           "train_ts", "train_video"]

log = logging.getLogger("dust")


@dataclass
class TrainSettings:
    """What every training stage shares."""

    outpath: Path
    logpath: Path
    batch_size: int = 9
    num_epochs: int = 100
    lr: float = 1e-5
    seed: int = 93728645
    print_every: int = 3
    weight_decay: float = 0.05
    label_smoothing: float = 0.0
    num_classes: int | None = None
    """Classes; None: as many as ``classes.json`` beside the training labels names, else the largest label + 1."""
    class_names: list[str] | None = None
    """Names by class index; None: from ``classes.json`` beside the training labels, else "0", "1", ..."""
    num_workers: int = 0
    progress: bool = True
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    class_weights: str | None = None
    """``"auto"`` (inverse class frequency in the training labels), comma-separated weights, or None."""
    accelerator: str = "auto"
    devices: str = "1"
    """Lightning's ``devices``: a count, ``auto``, or a comma-separated list of device indices."""
    num_nodes: int = 1
    strategy: str = "auto"
    """Lightning's strategy: ``auto``, ``ddp``, ``fsdp``, ..."""
    precision: str = "32-true"
    """``32``, ``bf16-mixed`` or ``16-mixed``."""
    accumulate_grad_batches: int = 1
    deterministic: bool = False
    """PyTorch's deterministic algorithms (for GPU runs; CPU runs are repeatable anyway)."""
    resume: bool = False
    """Continue from ``OUTPATH/resume.ckpt``."""
    resume_from: Path | None = None
    """Continue from this Lightning checkpoint."""
    overwrite: bool = False
    """Replace a finished run in ``outpath``."""
    resume_interval: float = 0.0
    """Seconds at least between writes of ``OUTPATH/resume.ckpt`` (0: at the end of every epoch)."""
    compile: bool = False
    """``torch.compile`` the model for training (``nn.Module.compile``: same weights and checkpoint keys)."""


@dataclass
class StageResult:
    """How a training stage ended: its best validated epoch (lowest validation loss) and timing."""

    best_epoch: int
    val_accuracy: float
    val_macro_f1: float
    val_loss: float
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """The figures ``run_summary.json`` keeps."""
        return {"best_epoch": self.best_epoch, "val_accuracy": self.val_accuracy,
                "val_macro_f1": self.val_macro_f1, "seconds": round(self.seconds, 2)}


def _quiet_lightning() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", message=r".*predict returned None.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def _read(path: str | Path, ndim: int, what: str, *, nan_allowed: bool = False) -> np.ndarray:
    """A ``ndim``-D array of at least one row and, if floating point, finite (NaN too if ``nan_allowed``)."""
    array = load_array(path)  # ArrayFileError is an InputError
    if array.ndim != ndim:
        raise InputError(f"{path}: {what} must be a {ndim}-D array, got shape {array.shape}")
    if len(array) == 0:
        raise InputError(f"{path}: no {what} rows (an empty split)")
    check_finite(str(path), array, what, nan_allowed=nan_allowed)
    return array


def _read_video(path: str | Path) -> np.ndarray:
    """Clips ``(N, 3, T, H, W)``, or :class:`InputError` naming ``path``."""
    video = _read(path, 5, "video")
    if video.shape[1] != 3:
        raise InputError(f"{path}: clips must be (N, 3, T, H, W) with 3 colour channels, got shape {video.shape}")
    return video


def _read_labels(path: str | Path) -> np.ndarray:
    return check_labels(str(path), load_array(path, mmap=False), num_classes=None)


def _ingest_settings(data_path: Path) -> dict[str, Any] | None:
    """How ``dust prepare`` made the arrays beside ``data_path`` (its ``prepare.json``), if it did."""
    record = Path(data_path).parent / "prepare.json"
    if not record.is_file():
        return None
    try:
        return json.loads(record.read_text())
    except ValueError:
        raise InputError(f"{record}: not valid JSON") from None


MAX_INFERRED_CLASSES = 10_000
"""Beyond this many classes, a count read off the largest label is taken for a mistake in the labels."""


def _classes_from_labels(label_paths: Sequence[Path], labels: Sequence[np.ndarray]) -> int:
    """The class count the labels imply: their largest value plus one."""
    top, path = max((int(a.max()), str(p)) for p, a in zip(label_paths, labels) if a.size)
    if top >= MAX_INFERRED_CLASSES:
        raise InputError(f"{path}: label {top} would make {top + 1} classes; give --num_classes or a classes.json "
                         f"beside the labels if that is meant")
    return top + 1


def _resolve_classes(settings: TrainSettings, label_paths: Sequence[Path], labels: Sequence[np.ndarray]) -> TrainSettings:
    """Settle the class count and names (see :class:`TrainSettings`) and check every label against them."""
    names = settings.class_names
    classes_file = Path(label_paths[0]).parent / "classes.json"
    if names is None and classes_file.is_file():
        try:
            names = [str(n) for n in json.loads(classes_file.read_text())["classes"]]
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{classes_file}: expected {{\"classes\": [names in index order]}}") from None
    count = settings.num_classes or (len(names) if names else _classes_from_labels(label_paths, labels))
    if names is None:
        names = [str(i) for i in range(count)]
    if len(names) != count:
        raise InputError(f"{classes_file if classes_file.is_file() else '--class_names'}: {len(names)} class names "
                         f"but --num_classes is {count}")
    for path, array in zip(label_paths, labels):
        check_labels(str(path), array, count)
    return replace(settings, num_classes=count, class_names=names)


def _prepare(settings: TrainSettings) -> None:
    """Check the shared settings and seed every generator (before any model is built)."""
    check_settings(settings)
    _quiet_lightning()
    L.seed_everything(settings.seed, workers=True, verbose=False)


def check_settings(settings: TrainSettings) -> None:
    """Refuse, as a stage does when it starts, shared settings out of range (:class:`InputError`)."""
    for name in ("batch_size", "num_epochs", "print_every", "num_classes", "num_nodes", "accumulate_grad_batches"):
        if getattr(settings, name) is not None and getattr(settings, name) < 1:
            raise InputError(f"--{name} must be at least 1, got {getattr(settings, name)}")
    for name in ("num_workers", "weight_decay", "warmup_epochs", "resume_interval"):
        value = getattr(settings, name)
        if not value >= 0 or (value == math.inf and name != "resume_interval"):  # NaN fails `>= 0`
            kind = "a non-negative number" if name == "resume_interval" else "a finite non-negative number"
            raise InputError(f"--{name} must be {kind}, got {value}")
    if not 0 < settings.lr < math.inf:
        raise InputError(f"--lr must be a positive finite number, got {settings.lr}")
    if not 0 <= settings.label_smoothing <= 1:
        raise InputError(f"--label_smoothing must be between 0 and 1, got {settings.label_smoothing}")
    if not 0 <= settings.seed < 2**32:
        raise InputError(f"--seed must be between 0 and {2**32 - 1}, got {settings.seed}")
    if settings.schedule not in ("constant", "cosine"):
        raise InputError(f"--schedule must be 'constant' or 'cosine', got {settings.schedule!r}")


def _check_sizes(**sizes: int | None) -> None:
    """Sizes given as flags (None: the data's own) must be at least 1."""
    for name, value in sizes.items():
        if value is not None and value < 1:
            raise InputError(f"--{name} must be at least 1, got {value}")


def _class_weights(settings: TrainSettings, labels: torch.Tensor) -> list[float] | None:
    spec = settings.class_weights
    if spec in (None, "", "none"):
        return None
    if spec == "auto":
        return inverse_frequency_weights(labels.numpy(), settings.num_classes)
    try:
        weights = [float(w) for w in str(spec).split(",")]
    except ValueError:
        raise InputError(f"--class_weights must be 'auto', 'none' or {settings.num_classes} numbers, got {spec!r}") from None
    if len(weights) != settings.num_classes or not all(0 <= w < math.inf for w in weights) or not sum(weights):
        raise InputError(f"--class_weights needs {settings.num_classes} finite non-negative numbers, not all 0; "
                         f"got {spec!r}")
    return weights


def _devices(spec: str) -> int | str | list[int]:
    spec = str(spec).strip()
    if spec == "auto" or spec == "-1":
        return spec if spec == "auto" else -1
    try:
        return [int(d) for d in spec.split(",") if d.strip()] if "," in spec else int(spec)
    except ValueError:
        raise InputError(f"--devices must be a count, 'auto' or a list like 0,1; got {spec!r}") from None


def _optimizer_steps_per_epoch(settings: TrainSettings, samples: int) -> int:
    """Optimizer steps in one epoch over ``samples``: each process takes its share of the batches, and
    ``accumulate_grad_batches`` of them make a step. ``--devices auto`` and ``-1`` count as one device."""
    devices = _devices(settings.devices)
    per_node = len(devices) if isinstance(devices, list) else devices if isinstance(devices, int) and devices > 0 else 1
    processes = per_node * settings.num_nodes
    batches = -(-samples // (settings.batch_size * processes))
    return max(1, -(-batches // settings.accumulate_grad_batches))


def _resumes_if_any(settings: TrainSettings) -> bool:
    """``--resume_from auto``: resume the run in ``--outpath`` if there is one, else start."""
    return settings.resume_from is not None and str(settings.resume_from) == RESUME_AUTO


FINAL_NAMES = {"video": "final_3d.pth", "ts": "final_1d.pth", "fusion": "final_fusion.pth"}
"""What stages 1, 2 and 4 save their final model as, in their ``--outpath`` (the reference's names), by model kind."""


def _resume_path(settings: TrainSettings, final_name: str) -> str | None:
    """The checkpoint to resume from, if any.

    ``--resume_from auto`` resumes the run in ``--outpath`` if there is one and starts
    otherwise (for requeued cluster jobs). Without ``--resume``, ``--resume_from`` or
    ``--overwrite``, an ``--outpath`` holding a finished or an interrupted run is refused.
    """
    resume = Path(settings.outpath) / f"{RESUME_NAME}.ckpt"
    auto = _resumes_if_any(settings)
    if auto and resume.is_file():
        return str(resume)
    if settings.resume_from is not None and not auto:
        if not Path(settings.resume_from).is_file():
            raise InputError(f"{settings.resume_from}: no such checkpoint to resume from")
        return str(settings.resume_from)
    if settings.resume:
        if not resume.is_file():
            raise InputError(f"{resume}: nothing to resume (no interrupted run in {settings.outpath})")
        return str(resume)
    if settings.overwrite:
        return None
    others = (name for name in FINAL_NAMES.values() if name != final_name)
    other = next((name for name in others if (Path(settings.outpath) / name).exists()), None)
    if other is not None:
        raise InputError(f"{settings.outpath}: holds another stage's run ({other}); choose another --outpath "
                         f"or give --overwrite")
    finished = Path(settings.outpath) / final_name
    if finished.exists():
        raise InputError(f"{settings.outpath}: holds a finished run ({final_name}); "
                         f"give --overwrite to replace it or --resume to continue an interrupted one")
    if resume.is_file():
        raise InputError(f"{settings.outpath}: holds an interrupted run ({resume.name}); "
                         f"give --resume to continue it or --overwrite to start over")
    return None


def check_outpath(settings: TrainSettings, final_name: str) -> None:
    """Refuse, as the stage does when it starts, an ``--outpath`` it may not train in: one holding a
    finished or an interrupted run without ``--overwrite`` or ``--resume``, or nothing to resume with them."""
    _resume_path(settings, final_name)


def _fit(name: str, final_name: str, model: torch.nn.Module, train: ArrayRows, val: ArrayRows,
         settings: TrainSettings, preset: str | None, meta: dict[str, Any],
         callbacks: Sequence[L.Callback] = (), on_device: Sequence[Callable | None] = ()) -> StageResult:
    """Train ``model`` on ``train``, validating on ``val`` every ``print_every`` epochs.

    ``on_device``: per input, what the training step applies to it on the device (see :class:`ClassifierTask`).
    """
    start = time.perf_counter()
    resume_from = _resume_path(settings, final_name)
    folders = (Path(settings.outpath), Path(settings.logpath))
    for folder in folders:  # made only once every setting has passed (a refused run leaves no empty folder)
        ensure_writable_folder(folder, create=False)
    if settings.compile:
        model.compile(dynamic=False)
    task = ClassifierTask(model, settings.num_classes, settings.lr, settings.weight_decay, settings.label_smoothing,
                          _class_weights(settings, train.labels), settings.schedule, settings.warmup_epochs,
                          on_device)
    if resume_from is not None:
        check_resumable(resume_from, task)
    recorder = StageRecorder(name, settings.outpath, settings.logpath, final_name, preset,
                             {**meta, "num_classes": settings.num_classes, "class_names": settings.class_names,
                              "stage": name})
    if settings.print_every > settings.num_epochs:
        log.warning("--print_every %d is more than --num_epochs %d: validating after the last epoch instead",
                    settings.print_every, settings.num_epochs)
    trainer = build_trainer(
        max_epochs=settings.num_epochs,
        check_val_every_n_epoch=min(settings.print_every, settings.num_epochs),
        accelerator=settings.accelerator,
        devices=_devices(settings.devices),
        num_nodes=settings.num_nodes,
        strategy=settings.strategy,
        precision=settings.precision,
        accumulate_grad_batches=settings.accumulate_grad_batches,
        deterministic=settings.deterministic,
        logger=False,
        enable_checkpointing=True,
        enable_model_summary=False,
        enable_progress_bar=settings.progress,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        callbacks=[recorder, RandomState(), resume_checkpoint(Path(settings.outpath), settings.resume_interval),
                   *callbacks],
    )  # Lightning has checked --accelerator, --devices, --strategy and --precision
    for folder in folders:
        ensure_writable_folder(folder)
    data = ArrayDataModule(train, val, settings.batch_size, settings.num_workers, settings.seed)
    trainer.fit(task, datamodule=data, ckpt_path=resume_from)
    seconds = time.perf_counter() - start
    best = recorder.best or {"epoch": 0, "val_accuracy": float("nan"), "val_macro_f1": float("nan"),
                             "val_loss": float("nan")}
    return StageResult(int(best["epoch"]), best["val_accuracy"], best["val_macro_f1"], best["val_loss"],
                       seconds, recorder.history)


def train_video(
    settings: TrainSettings,
    *,
    path_video_train: Path,
    path_video_val: Path,
    path_label_train: Path,
    path_label_val: Path,
    model_preset: str = "paper",
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    init_weights: Path | None = None,
    init_kind: str = "kinetics400",
    grad_checkpointing: bool = False,
) -> StageResult:
    """Stage 1: train a :class:`VideoSwin` classifier on ``(N, C, T, H, W)`` clips."""
    _prepare(settings)
    video_train = _read_video(path_video_train)
    video_val = _read_video(path_video_val)
    labels_train = _read_labels(path_label_train)
    labels_val = _read_labels(path_label_val)
    settings = _resolve_classes(settings, [path_label_train, path_label_val], [labels_train, labels_val])
    check_rows({str(path_video_train): video_train, str(path_label_train): labels_train})
    check_rows({str(path_video_val): video_val, str(path_label_val): labels_val})
    if video_train.shape[1:] != video_val.shape[1:]:
        raise InputError(f"{path_video_val}: clips are {video_val.shape[1:]}, training clips are {video_train.shape[1:]}")
    data_size = tuple(video_train.shape[2:])
    _check_sizes(num_frames=num_frames, height=height, width=width)
    size = tuple(data if given is None else given for given, data in zip((num_frames, height, width), data_size))
    if size != data_size:
        log.warning("resampling clips from %s to %s (--num_frames/--height/--width)",
                    "x".join(map(str, data_size)), "x".join(map(str, size)))
    transform = VideoTransform(size=size)
    model = VideoSwin.from_preset(model_preset, num_classes=settings.num_classes, in_chans=video_train.shape[1],
                                  grad_checkpointing=grad_checkpointing)
    if init_weights is not None:
        loader = load_kinetics400 if init_kind == "kinetics400" else load_imagenet_2d
        log.warning("initialised from %s: %s", init_weights, loader(model, init_weights))
    meta = {"video_transform": transform.to_dict(), "input_dtype": str(video_train.dtype),
            "ingest": _ingest_settings(path_video_train)}
    return _fit("step_3d", FINAL_NAMES["video"], model, ArrayRows([video_train], [transform.read], labels_train),
                ArrayRows([video_val], [transform.read], labels_val), settings, model_preset, meta,
                on_device=[transform.normalize])  # clips stay uint8 up to the device


def _series_pair(settings: TrainSettings, paths: Sequence[Path], labels: Sequence[Path], num_channels: int | None
                 ) -> tuple[list[np.ndarray], list[np.ndarray], TrainSettings]:
    """Training and validation series with their labels, checked; and the settings with classes settled."""
    arrays = [_read(p, 3, "kinematics", nan_allowed=True) for p in paths]  # NaN pads unequal lengths
    label_arrays = [_read_labels(p) for p in labels]
    for path, array, lpath, larray in zip(paths, arrays, labels, label_arrays):
        check_rows({str(path): array, str(lpath): larray})
        if num_channels is not None and array.shape[1] != num_channels:
            raise InputError(f"{path}: series have {array.shape[1]} channels, --num_channels says {num_channels}")
    if arrays[0].shape[1] != arrays[1].shape[1]:
        raise InputError(f"{paths[1]}: {arrays[1].shape[1]} channels, training series have {arrays[0].shape[1]}")
    return arrays, label_arrays, _resolve_classes(settings, labels, label_arrays)


def auto_patch_size(length: int, target_tokens: int = 32) -> int:
    """Time steps per token giving a series of ``length`` steps about ``target_tokens`` tokens."""
    if target_tokens < 1:
        raise InputError(f"--target_tokens must be at least 1, got {target_tokens}")
    return max(1, round(length / target_tokens))


def train_ts(
    settings: TrainSettings,
    *,
    path_kine_train: Path,
    path_kine_val: Path,
    path_label_train: Path,
    path_label_val: Path,
    model_preset: str = "paper",
    num_frames: int | None = None,
    num_channels: int | None = None,
    augment: bool | SeriesAugment = False,
    patch_size: int | str | None = None,
    window_size: int | None = None,
    target_tokens: int = 32,
    steps: int | None = None,
    variable_length: str = "mask",
    ensemble: int = 1,
    test_shift: float = 0.0,
    ensemble_workers: int | str = 1,
) -> StageResult:
    """Stage 2: train a :class:`TimeSeriesSwin` classifier on ``(N, C, L)`` series.

    Series may be NaN-padded at the end (variable length; the model masks the padding).
    ``augment`` adds random scaling, time shift and jitter to training series (:class:`SeriesAugment`;
    pass one to set its strengths). ``patch_size`` and ``window_size`` override the preset's;
    ``patch_size="auto"`` takes about ``target_tokens`` tokens per series (:func:`auto_patch_size`).
    ``steps`` sets the epochs from the training set's size: as many as give about ``steps`` optimizer
    steps, so that small data sets are not under-trained and larger ones not over-run.
    ``variable_length="stretch"`` resamples each series' valid part to the full length instead of
    masking its padding (the transform, stored in the checkpoint, does the same at prediction).
    ``ensemble`` > 1 trains that many models one after another (seeds ``seed``, ``seed + 1``, ...;
    each in ``OUTPATH/memberI``) and saves them as one :class:`SeriesEnsemble` in ``final_1d.pth``.
    ``test_shift`` > 0 makes that ensemble (of one model, too) predict from time-shifted views of
    each series as well (test-time augmentation; see :class:`SeriesEnsemble`).
    ``ensemble_workers`` members train at a time, each in a process of its own (``"auto"``: as
    many as there are CPU cores, on the CPU; one on a GPU).
    """
    _prepare(settings)
    _flush_denormals()
    if ensemble < 1:
        raise InputError(f"--ensemble must be at least 1, got {ensemble}")
    if not 0.0 <= test_shift < 1.0:
        raise InputError(f"--test_shift is a fraction of the length in [0, 1), got {test_shift}")
    workers = _ensemble_workers(ensemble_workers, ensemble, settings)
    (train, val), (labels_train, labels_val), settings = _series_pair(
        settings, [path_kine_train, path_kine_val], [path_label_train, path_label_val], num_channels)
    _check_sizes(num_frames=num_frames)
    length = train.shape[2] if num_frames is None else num_frames
    if steps is not None:
        if steps < 1:
            raise InputError(f"--steps must be at least 1, got {steps}")
        settings = replace(settings, num_epochs=max(1, round(steps / _optimizer_steps_per_epoch(settings, len(train)))))
    if variable_length not in ("mask", "stretch"):
        raise InputError(f"--variable_length must be 'mask' or 'stretch', got {variable_length!r}")
    transform = SeriesTransform.fit(train, length=length, stretch=variable_length == "stretch")
    shape = {}
    if patch_size is not None:
        shape["patch_size"] = auto_patch_size(length, target_tokens) if patch_size == "auto" else int(patch_size)
    if window_size is not None:
        shape["window_size"] = int(window_size)
    _check_sizes(**shape)

    build = functools.partial(TimeSeriesSwin.from_preset, model_preset, seq_len=length, in_chans=train.shape[1],
                              num_classes=settings.num_classes, **shape)  # picklable, for member processes

    meta = {"series_transform": transform.to_dict(), "ingest": _ingest_settings(path_kine_train)}
    if augment is True:
        augment = SeriesAugment()
    train_transform = Compose(transform, augment) if augment else transform
    train_rows = ArrayRows([train], [train_transform], labels_train)
    val_rows = ArrayRows([val], [transform], labels_val)
    if ensemble == 1 and not test_shift:
        return _fit("step_1d", FINAL_NAMES["ts"], build(), train_rows, val_rows, settings, model_preset, meta)
    return _fit_ensemble(ensemble, build, train_rows, val_rows, settings, model_preset, meta, test_shift, workers)


def _flush_denormals() -> None:
    """Flush subnormal floats to zero in this process.

    Once a small model fits its data, Adam's second moments decay into subnormal floats, which
    CPUs handle 10-100x slower: a run stalls. Flushing them to zero changes nothing else.
    """
    torch.set_flush_denormal(True)
    warnings.filterwarnings("ignore", message=r"The value of the smallest subnormal")  # numpy notices the flush


def _ensemble_workers(value: int | str, members: int, settings: TrainSettings) -> int:
    """How many ensemble members to train at a time: ``--ensemble_workers`` checked and resolved."""
    single_device = str(settings.devices) == "1" and settings.num_nodes == 1
    on_cpu = settings.accelerator == "cpu" or (settings.accelerator == "auto" and not torch.cuda.is_available())
    if value == "auto":
        return min(members, available_cores()) if on_cpu and single_device else 1
    try:
        workers = int(value)
    except (TypeError, ValueError):
        raise InputError(f"--ensemble_workers must be a whole number or 'auto', got {value!r}") from None
    if workers < 1:
        raise InputError(f"--ensemble_workers must be at least 1, got {workers}")
    if workers > 1 and not single_device:
        raise InputError("--ensemble_workers > 1 trains members in processes of their own; it does not "
                         "combine with --devices or --num_nodes")
    return workers


def _fit_ensemble(count: int, build: Callable[[], TimeSeriesSwin], train: ArrayRows, val: ArrayRows,
                  settings: TrainSettings, preset: str | None, meta: dict[str, Any],
                  test_shift: float = 0.0, workers: int = 1) -> StageResult:
    """``count`` models, each trained by :func:`_fit` in ``OUTPATH/memberI`` with seed ``seed + I``;
    saved together as a :class:`SeriesEnsemble` (predicting with ``test_shift``) in
    ``OUTPATH/final_1d.pth``.

    ``workers`` > 1 trains that many members at a time, each in a process of its own with an
    equal share of the torch threads (``build`` must then be picklable). With ``--resume``
    finished members are loaded, an interrupted one continues, the rest start.
    The result's figures are the ensemble's on the validation rows.
    """
    start = time.perf_counter()
    final = Path(settings.outpath) / "final_1d.pth"
    auto = _resumes_if_any(settings)
    if settings.resume_from is not None and not auto:
        raise InputError("--resume_from takes one run; resume an ensemble with --resume or --resume_from auto")
    resuming = settings.resume or auto
    if final.exists() and not (settings.overwrite or resuming):
        raise InputError(f"{settings.outpath}: holds a finished run (final_1d.pth); give --overwrite to replace it")
    members = [replace(settings, seed=settings.seed + index, outpath=Path(settings.outpath) / f"member{index}",
                       logpath=Path(settings.logpath) / f"member{index}") for index in range(count)]
    models = {i: _checkpoint(m.outpath / "final_1d.pth", "ts", preset).build() for i, m in enumerate(members)
              if resuming and (m.outpath / "final_1d.pth").is_file()}  # finished before
    todo = {i: replace(m, resume=resuming and (m.outpath / f"{RESUME_NAME}.ckpt").is_file(), resume_from=None)
            for i, m in enumerate(members) if i not in models}
    workers = min(workers, len(todo))
    if workers > 1:  # progress bars of several processes would garble each other
        states = run_in_processes([functools.partial(_fit_member, replace(m, progress=False), build, train, val,
                                                     preset, meta) for m in todo.values()],
                                  workers, threads=max(1, torch.get_num_threads() // workers))
    else:
        states = [_fit_member(m, build, train, val, preset, meta) for m in todo.values()]
    for i, state in zip(todo, states):
        models[i] = build()
        models[i].load_state_dict(state)
    ensemble = SeriesEnsemble.of([models[i] for i in range(count)], test_shift).eval()
    metrics = _evaluate_rows(ensemble, val, settings.num_classes)
    save_checkpoint(final, ensemble, preset=preset, **meta, num_classes=settings.num_classes,
                    class_names=settings.class_names, stage="step_1d", epoch=settings.num_epochs, metrics=metrics)
    return StageResult(settings.num_epochs, metrics["val_accuracy"], metrics["val_macro_f1"], metrics["val_loss"],
                       time.perf_counter() - start, [])


def _fit_member(settings: TrainSettings, build: Callable[[], TimeSeriesSwin], train: ArrayRows, val: ArrayRows,
                preset: str | None, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """One member of an ensemble (its own seed, initial weights and run folder); its trained weights."""
    _flush_denormals()  # again: a worker process starts without it
    _quiet_lightning()
    L.seed_everything(settings.seed, workers=True, verbose=False)
    model = build()
    _fit("step_1d", FINAL_NAMES["ts"], model, train, val, settings, preset, meta)
    return model.state_dict()


def _evaluate_rows(model: torch.nn.Module, rows: ArrayRows, num_classes: int) -> dict[str, float]:
    """Validation loss, accuracy and macro-F1 of ``model`` (which returns log-probabilities or logits)."""
    batches = torch.utils.data.DataLoader(rows, batch_size=256)
    logits, labels = [], []
    with torch.inference_mode():
        for x, y in batches:
            logits.append(model(x))
            labels.append(y)
    logits, labels = torch.cat(logits), torch.cat(labels)
    report = classification_report(labels.numpy(), logits.argmax(1).numpy(), [str(i) for i in range(num_classes)])
    return {"val_loss": float(torch.nn.functional.cross_entropy(logits, labels)), "val_accuracy": report.accuracy,
            "val_macro_f1": report.macro_f1, "val_count": len(labels)}


def _checkpoint(path: Path, kind: str, model_preset: str | None) -> Checkpoint:
    try:
        ckpt = load_checkpoint(path, expect=kind)  # type: ignore[arg-type]
    except Exception as err:
        raise InputError(str(err)) from None
    if model_preset is not None and ckpt.preset != model_preset:
        raise InputError(f"{path}: the checkpoint holds preset {ckpt.preset!r}, --model_preset says {model_preset!r}")
    return ckpt


def extract_features(
    *,
    checkpoint: Path,
    inputs: Sequence[Path],
    outputs: Sequence[Path],
    batch_size: int = 9,
    model_preset: str | None = None,
    num_workers: int = 0,
    progress: bool = True,
    accelerator: str = "auto",
    devices: str = "1",
    num_nodes: int = 1,
    strategy: str = "auto",
    precision: str = "32-true",
) -> list[Path]:
    """Stage 3: one pooled feature row per clip, in input order, for each video file.

    Writes each ``outputs[i]`` as a float32 ``(N, feature_dim)`` array with a JSON sidecar
    naming the checkpoint and preset it came from. With several devices each process
    extracts every n-th clip and rank 0 writes the rows back in input order.
    """
    if batch_size < 1:
        raise InputError(f"--batch_size must be at least 1, got {batch_size}")
    if num_workers < 0:
        raise InputError(f"--num_workers must not be negative, got {num_workers}")
    _quiet_lightning()
    ckpt = _checkpoint(Path(checkpoint), "video", model_preset)
    model: VideoSwin = ckpt.build()  # type: ignore[assignment]
    transform = VideoTransform(**ckpt.meta.get("video_transform", {}))
    trainer_kwargs = {"accelerator": accelerator, "devices": _devices(devices), "num_nodes": num_nodes,
                      "strategy": strategy, "precision": precision, "enable_progress_bar": progress}
    videos = [_read_video(source) for source in inputs]  # every input and output checked before any is written
    _check_distinct_outputs(inputs, outputs)
    for target in map(Path, outputs):
        if target.is_dir():
            raise InputError(f"{target}: is a folder, not a feature file")
        if target.suffix.lower() not in SUFFIXES:
            raise InputError(f"{target}: unknown feature file type {target.suffix or '(none)'!r} "
                             f"(expected one of {', '.join(SUFFIXES)})")
        ensure_writable_folder(target.parent, create=False)  # made as the file is written
    for source, target, video in zip(inputs, outputs, videos, strict=True):
        write_features(model, transform, video, Path(target),
                       {"checkpoint": str(checkpoint), "preset": ckpt.preset, "video": str(source),
                        "video_fingerprint": ckpt.fingerprint},
                       batch_size=batch_size, num_workers=num_workers, trainer_kwargs=trainer_kwargs)
    return [Path(t) for t in outputs]


def _check_distinct_outputs(inputs: Sequence[Path], outputs: Sequence[Path]) -> None:
    """No feature file (or its JSON sidecar) may overwrite an input or another output."""
    taken: dict[Path, str] = {Path(p).resolve(): f"input {p}" for p in inputs}
    for target in map(Path, outputs):
        for path in (target, feature_sidecar(target)):
            if path.resolve() in taken:
                raise InputError(f"{path}: would overwrite {taken[path.resolve()]}")
            taken[path.resolve()] = f"output {path}"


def _read_features(path: Path, rows_like: Path, expected_rows: int) -> tuple[np.ndarray, str | None]:
    """Stage-3 features, checked against their sidecar; and the fingerprint of the video model that made them."""
    features = _read(path, 2, "video features")
    if len(features) != expected_rows:
        raise InputError(f"{path}: {len(features)} feature rows but {rows_like} has {expected_rows} clips")
    sidecar = feature_sidecar(path)
    if not sidecar.is_file():
        return features, None
    try:
        meta = json.loads(sidecar.read_text())
    except ValueError:
        raise InputError(f"{sidecar}: not valid JSON") from None
    if not isinstance(meta, dict):
        raise InputError(f"{sidecar}: not a feature sidecar (expected a JSON object)")
    if meta.get("feature_dim") not in (None, features.shape[1]):
        raise InputError(f"{path}: {features.shape[1]} wide, but {sidecar} records {meta['feature_dim']}")
    return features, meta.get("video_fingerprint")


def train_fusion(
    settings: TrainSettings,
    *,
    path_kine_train: Path,
    path_kine_val: Path,
    path_feature_train: Path,
    path_feature_val: Path,
    path_label_train: Path,
    path_label_val: Path,
    ts_checkpoint: Path,
    model_preset: str | None = None,
    num_frames: int | None = None,
    num_channels: int | None = None,
) -> StageResult:
    """Stage 4: train :class:`DuST` on series and video features, its backbone from stage 2."""
    _prepare(settings)
    ckpt = _checkpoint(Path(ts_checkpoint), "ts", model_preset)
    config, state = ckpt.config, ckpt.state_dict
    if config.get("members", 1) > 1:
        raise InputError(f"{ts_checkpoint}: holds an ensemble of {config['members']} time-series models; "
                         f"stage 4 starts from one (train stage 2 with --ensemble 1)")
    if "members" in config:  # one model saved with its test-time views: its weights are what stage 4 needs
        config = {k: v for k, v in config.items() if k not in ("members", "test_shift")}
        state = {k.removeprefix("members.0."): v for k, v in state.items()}
    if num_frames is not None and num_frames != config["seq_len"]:
        raise InputError(f"{ts_checkpoint}: trained on series of length {config['seq_len']}, "
                         f"--num_frames says {num_frames}")
    (train, val), (labels_train, labels_val), settings = _series_pair(
        settings, [path_kine_train, path_kine_val], [path_label_train, path_label_val], num_channels)
    if train.shape[1] != config["in_chans"]:
        raise InputError(f"{path_kine_train}: {train.shape[1]} channels, {ts_checkpoint} was trained on "
                         f"{config['in_chans']}")
    feats_train, made_by = _read_features(Path(path_feature_train), Path(path_kine_train), len(train))
    feats_val, val_made_by = _read_features(Path(path_feature_val), Path(path_kine_val), len(val))
    if None not in (made_by, val_made_by) and made_by != val_made_by:
        raise InputError(f"{path_feature_val}: extracted by another video model than {path_feature_train} "
                         f"(see their .json sidecars)")
    if made_by is None:
        log.warning("%s: no sidecar names the video model that made these features; `dust predict` will not "
                    "be able to check that it is given that model", path_feature_train)
    if feats_train.shape[1] != feats_val.shape[1]:
        raise InputError(f"{path_feature_val}: {feats_val.shape[1]} wide, {path_feature_train} is {feats_train.shape[1]}")
    transform = SeriesTransform(**ckpt.meta.get("series_transform", {}))
    config = {k: v for k, v in config.items() if k != "num_classes"}
    model = DuST(feats_train.shape[1], num_classes=settings.num_classes, **config)
    try:
        load_ts_backbone(model, state)
    except Exception as err:
        raise InputError(f"{ts_checkpoint}: {err}") from None
    meta = {"series_transform": transform.to_dict(), "ts_checkpoint": str(ts_checkpoint),
            "ingest": _ingest_settings(path_kine_train), "video_fingerprint": made_by}
    return _fit("step_fusion", FINAL_NAMES["fusion"], model,
                ArrayRows([train, feats_train], [transform, as_float32], labels_train),
                ArrayRows([val, feats_val], [transform, as_float32], labels_val), settings, ckpt.preset, meta)
