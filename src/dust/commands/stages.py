"""``dust gen-data``, ``train-video``, ``train-ts``, ``extract-features``, ``train-fusion``.

Flags and defaults are the seed scripts' (see DESIGN.md); paths are relative to the
current folder. ``dust run`` (in :mod:`dust.commands.run`) chains them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import add_flag, register
from ..errors import InputError
from ..training.stages import StageResult, TrainSettings, extract_features, train_fusion, train_ts, train_video

SEED = 93728645


def _devices_group(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("scale (Lightning)")
    add_flag(group, "accelerator", default="auto", help="cpu, gpu, ... (default: %(default)s)")
    add_flag(group, "devices", default="1", help="devices per node: a count, auto, or a list like 0,1 (default: 1)")
    add_flag(group, "num_nodes", type=int, default=1, help="machines (default: %(default)s)")
    add_flag(group, "strategy", default="auto", help="auto, ddp, fsdp, ... (default: %(default)s)")
    add_flag(group, "precision", default="32-true",
             help="32-true, bf16-mixed (GPUs; CPUs with bf16 units) or 16-mixed (default: %(default)s)")
    return group


def _common(parser: argparse.ArgumentParser, *, batch_size: int, num_epochs: int, lr: float, print_every: int,
            outpath: str) -> None:
    add_flag(parser, "batch_size", type=int, default=batch_size, help="clips per batch (default: %(default)s)")
    add_flag(parser, "num_epochs", type=int, default=num_epochs, help="training epochs (default: %(default)s)")
    add_flag(parser, "lr", type=float, default=lr, help="AdamW learning rate (default: %(default)s)")
    add_flag(parser, "seed", type=int, default=SEED, help="random seed (default: %(default)s)")
    add_flag(parser, "print_every", type=int, default=print_every,
             help="validate and save a checkpoint every N epochs (default: %(default)s)")
    add_flag(parser, "weight_decay", type=float, default=0.05, help="AdamW weight decay (default: %(default)s)")
    add_flag(parser, "label_smoothing", type=float, default=0.0, help="cross-entropy label smoothing")
    add_flag(parser, "num_classes", type=int, default=None,
             help="classes (default: as many as classes.json beside the training labels names, else largest label + 1)")
    add_flag(parser, "num_workers", type=int, default=0, help="data-loading processes (default: %(default)s)")
    add_flag(parser, "outpath", default=outpath, help="checkpoint folder (default: %(default)s)")
    add_flag(parser, "logpath", default="./logs/", help="history and log folder (default: %(default)s)")
    add_flag(parser, "schedule", choices=["constant", "cosine"], default="constant",
             help="learning-rate schedule: constant, or cosine decay after a linear warm-up (default: %(default)s)")
    add_flag(parser, "warmup_epochs", type=float, default=0.0, help="warm-up epochs for --schedule cosine")
    add_flag(parser, "class_weights", default=None,
             help="loss weights per class: 'auto' (inverse frequency), 'none', or comma-separated numbers")
    add_flag(parser, "compile", action="store_true", help="torch.compile the model for training")
    add_flag(parser, "no_progress", action="store_true", help="no progress bars")
    group = _devices_group(parser)
    add_flag(group, "accumulate_grad_batches", type=int, default=1, help="batches per optimizer step")
    add_flag(group, "deterministic", action="store_true", help="PyTorch's deterministic algorithms (GPU runs)")
    add_flag(group, "resume", action="store_true", help="continue the interrupted run in --outpath")
    add_flag(group, "resume_from", default=None,
             help="continue from this Lightning checkpoint (.ckpt); 'auto': continue the run in --outpath "
                  "if there is one, else start (for requeued cluster jobs)")
    add_flag(group, "resume_interval", type=float, default=0.0,
             help="write OUTPATH/resume.ckpt at an epoch's end only when this many seconds passed since the "
                  "last write (default: %(default)s, every epoch; raise it for many short epochs)")
    add_flag(group, "overwrite", action="store_true", help="replace a finished or interrupted run in --outpath")


def _labels(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "path_label_train", default="./data/label_train.pkl", help="training labels (N,)")
    add_flag(parser, "path_label_val", default="./data/label_val.pkl", help="validation labels (N,)")


def train_settings(args: argparse.Namespace) -> TrainSettings:
    """The settings every training stage shares, from its parsed flags."""
    return TrainSettings(
        outpath=Path(args.outpath), logpath=Path(args.logpath), batch_size=args.batch_size,
        num_epochs=args.num_epochs, lr=args.lr, seed=args.seed, print_every=args.print_every,
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing, num_classes=args.num_classes,
        num_workers=args.num_workers, progress=not args.no_progress, schedule=args.schedule,
        warmup_epochs=args.warmup_epochs, class_weights=args.class_weights, accelerator=args.accelerator,
        devices=args.devices, num_nodes=args.num_nodes, strategy=args.strategy, precision=args.precision,
        accumulate_grad_batches=args.accumulate_grad_batches, deterministic=args.deterministic, resume=args.resume,
        resume_from=Path(args.resume_from) if args.resume_from else None, overwrite=args.overwrite,
        compile=args.compile, resume_interval=args.resume_interval,
    )


def report(name: str, result: StageResult) -> None:
    """Print the stage's best epoch, as the seed's scripts report it."""
    print(f"{name}: best epoch {result.best_epoch} (lowest validation loss {result.val_loss:.4f}): "
          f"val accuracy {result.val_accuracy:.4f}, macro-F1 {result.val_macro_f1:.4f}, {result.seconds:.1f} s")


# --- gen-data ----------------------------------------------------------------------


def gen_data_args(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "n_train", type=int, default=30, help="training clips (default: %(default)s)")
    add_flag(parser, "n_val", type=int, default=10, help="validation clips (default: %(default)s)")
    add_flag(parser, "num_frames", type=int, default=77, help="frames per clip (default: %(default)s)")
    add_flag(parser, "height", type=int, default=224, help="frame height (default: %(default)s)")
    add_flag(parser, "width", type=int, default=224, help="frame width (default: %(default)s)")
    add_flag(parser, "kine_len", type=int, default=51, help="time steps per series (default: %(default)s)")
    add_flag(parser, "num_channels", type=int, default=3, help="series channels (default: %(default)s)")
    add_flag(parser, "num_classes", type=int, default=4, help="classes (4 for scenarios) (default: %(default)s)")
    add_flag(parser, "kind", choices=["scenario", "noise"], default="scenario",
             help="learnable driving scenarios, or the seed's pure noise (default: %(default)s)")
    add_flag(parser, "difficulty", type=float, default=0.0, help="0 clear … 1 hard (default: %(default)s)")
    add_flag(parser, "seed", type=int, default=SEED, help="random seed (default: %(default)s)")
    add_flag(parser, "outdir", default="./data", help="output folder (default: %(default)s)")
    add_flag(parser, "format", choices=["pkl", "npy", "npz"], default="pkl",
             help="array file format (default: %(default)s, as the seed)")
    add_flag(parser, "no_progress", action="store_true", help="no progress bar")


@register("gen-data", "Generate toy driving data (video, kinematics, labels) at the seed's paths")(gen_data_args)
def gen_data(args: argparse.Namespace) -> dict[str, Path]:
    from ..data.toy import generate_toy_data

    try:
        files = generate_toy_data(
            args.outdir, n_train=args.n_train, n_val=args.n_val, num_frames=args.num_frames, height=args.height,
            width=args.width, kine_len=args.kine_len, num_channels=args.num_channels,
            num_classes=args.num_classes, kind=args.kind, difficulty=args.difficulty, seed=args.seed,
            fmt=args.format, progress=not args.no_progress,
        )
    except ValueError as err:
        raise InputError(str(err)) from None
    print(f"wrote {len(files) + 1} files to {args.outdir} (arrays and classes.json): {args.n_train} training and "
          f"{args.n_val} validation clips")
    return files


# --- stage 1 -----------------------------------------------------------------------


def train_video_args(parser: argparse.ArgumentParser) -> None:
    _common(parser, batch_size=9, num_epochs=100, lr=1e-5, print_every=3, outpath="./saved_models/step_3d/")
    add_flag(parser, "num_frames", type=int, default=77, help="frames the model sees (default: %(default)s)")
    add_flag(parser, "height", type=int, default=224, help="frame height the model sees (default: %(default)s)")
    add_flag(parser, "width", type=int, default=224, help="frame width the model sees (default: %(default)s)")
    add_flag(parser, "path_video_train", default="./data/video_train.pkl", help="training clips (N, 3, T, H, W)")
    add_flag(parser, "path_video_val", default="./data/video_val.pkl", help="validation clips (N, 3, T, H, W)")
    _labels(parser)
    add_flag(parser, "model_preset", default="paper", help="video preset, see `dust presets` (default: %(default)s)")
    add_flag(parser, "init_weights", default=None, help="start from these weights (a local file)")
    add_flag(parser, "init_kind", choices=["kinetics400", "imagenet2d"], default="kinetics400",
             help="what --init_weights holds: torchvision Kinetics-400 3-D weights or a 2-D ImageNet Swin")
    add_flag(parser, "grad_checkpointing", action="store_true",
             help="recompute each Swin block in the backward pass instead of storing it (less memory)")


@register("train-video", "Stage 1: train the Video Swin classifier")(train_video_args)
def train_video_command(args: argparse.Namespace) -> StageResult:
    result = train_video(
        train_settings(args), path_video_train=Path(args.path_video_train), path_video_val=Path(args.path_video_val),
        path_label_train=Path(args.path_label_train), path_label_val=Path(args.path_label_val),
        model_preset=args.model_preset, num_frames=args.num_frames, height=args.height, width=args.width,
        init_weights=args.init_weights, init_kind=args.init_kind, grad_checkpointing=args.grad_checkpointing,
    )
    report("video (stage 1)", result)
    return result


# --- stage 2 -----------------------------------------------------------------------


def _kinematics(parser: argparse.ArgumentParser, length: int | None, channels: int | None,
                unset: str = "the data's own") -> None:
    """Series flags; ``unset`` says what a size left at None means."""
    add_flag(parser, "num_frames", type=int, default=length,
             help=f"series length the model sees (default: {unset if length is None else '%(default)s'})")
    add_flag(parser, "num_channels", type=int, default=channels,
             help=f"series channels (default: {unset if channels is None else '%(default)s'})")
    add_flag(parser, "path_kine_train", default="./data/kine_train.pkl", help="training series (N, C, L)")
    add_flag(parser, "path_kine_val", default="./data/kine_val.pkl", help="validation series (N, C, L)")
    _labels(parser)


def train_ts_args(parser: argparse.ArgumentParser) -> None:
    _common(parser, batch_size=2000, num_epochs=200, lr=3e-4, print_every=1, outpath="./saved_models/step_1d/")
    _kinematics(parser, 51, 3)
    add_flag(parser, "model_preset", default="paper", help="time-series preset (default: %(default)s)")
    add_flag(parser, "augment", action="store_true", help="random scaling, time shift and jitter of training series")
    add_flag(parser, "jitter", type=float, default=0.03, help="--augment: Gaussian noise std (default: %(default)s)")
    add_flag(parser, "scale", type=float, default=0.1, help="--augment: per-channel scale std (default: %(default)s)")
    add_flag(parser, "shift", type=float, default=0.1,
             help="--augment: time shift, up to this fraction of the length (default: %(default)s)")
    add_flag(parser, "crop", type=float, default=0.0,
             help="--augment: crop up to this fraction and stretch back (default: %(default)s)")
    add_flag(parser, "patch_size", default=None,
             help="time steps per token, or 'auto' for about --target_tokens tokens (default: the preset's)")
    add_flag(parser, "target_tokens", type=int, default=32, help="tokens per series for --patch_size auto")
    add_flag(parser, "window_size", type=int, default=None, help="attention window in tokens (default: the preset's)")
    add_flag(parser, "steps", type=int, default=None,
             help="train for about this many optimizer steps: sets --num_epochs from the training set's size, "
                  "--batch_size, --devices, --num_nodes and --accumulate_grad_batches")
    add_flag(parser, "variable_length", choices=["mask", "stretch"], default="mask",
             help="NaN-padded series: mask the padding, or stretch each series to the full length (default: mask)")
    add_flag(parser, "ensemble", type=int, default=1,
             help="train this many models (seeds seed, seed+1, ...) and predict with their mean probability "
                  "(default: %(default)s)")
    add_flag(parser, "ensemble_workers", default="1",
             help="ensemble members trained at a time, each in a process of its own with a share of the "
                  "threads; 'auto': one per CPU core (default: %(default)s)")
    add_flag(parser, "test_shift", type=float, default=0.0,
             help="also predict from each series shifted by this and half this fraction of its length either "
                  "way, averaging the five views (default: %(default)s, off)")


def _patch_size(value: object) -> int | str | None:
    if value is None or value == "auto":
        return value
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise InputError(f"--patch_size must be a whole number or 'auto', got {value!r}") from None


@register("train-ts", "Stage 2: train the time-series (1-D Swin) classifier")(train_ts_args)
def train_ts_command(args: argparse.Namespace) -> StageResult:
    from ..data.datasets import SeriesAugment

    augment = SeriesAugment(args.jitter, args.scale, args.shift, args.crop) if args.augment else False
    result = train_ts(
        train_settings(args), path_kine_train=Path(args.path_kine_train), path_kine_val=Path(args.path_kine_val),
        path_label_train=Path(args.path_label_train), path_label_val=Path(args.path_label_val),
        model_preset=args.model_preset, num_frames=args.num_frames, num_channels=args.num_channels,
        augment=augment, patch_size=_patch_size(args.patch_size), window_size=args.window_size,
        target_tokens=args.target_tokens, steps=args.steps, variable_length=args.variable_length,
        ensemble=args.ensemble, test_shift=args.test_shift, ensemble_workers=args.ensemble_workers,
    )
    report("time series (stage 2)", result)
    return result


# --- stage 3 -----------------------------------------------------------------------


def extract_features_args(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "checkpoint", default="./saved_models/step_3d/final_3d.pth", help="stage-1 checkpoint")
    add_flag(parser, "path_video_train", default="./data/video_train.pkl", help="training clips")
    add_flag(parser, "path_video_val", default="./data/video_val.pkl", help="validation clips")
    add_flag(parser, "path_feature_train", default="./video_features/train_3d_features.pkl",
             help="training features to write (.pkl, .npy or .npz)")
    add_flag(parser, "path_feature_val", default="./video_features/val_3d_features.pkl",
             help="validation features to write")
    add_flag(parser, "batch_size", type=int, default=9, help="clips per batch (default: %(default)s)")
    add_flag(parser, "model_preset", default=None, help="must agree with the checkpoint's preset if given")
    add_flag(parser, "num_workers", type=int, default=0, help="data-loading processes")
    add_flag(parser, "no_progress", action="store_true", help="no progress bars")
    _devices_group(parser)


@register("extract-features", "Stage 3: one pooled video feature row per clip, in input order")(extract_features_args)
def extract_features_command(args: argparse.Namespace) -> list[Path]:
    outputs = extract_features(
        checkpoint=Path(args.checkpoint), inputs=[Path(args.path_video_train), Path(args.path_video_val)],
        outputs=[Path(args.path_feature_train), Path(args.path_feature_val)], batch_size=args.batch_size,
        model_preset=args.model_preset, num_workers=args.num_workers, progress=not args.no_progress,
        accelerator=args.accelerator, devices=args.devices, num_nodes=args.num_nodes, strategy=args.strategy,
        precision=args.precision,
    )
    print(f"wrote {', '.join(map(str, outputs))}")
    return outputs


# --- stage 4 -----------------------------------------------------------------------


def train_fusion_args(parser: argparse.ArgumentParser) -> None:
    _common(parser, batch_size=2000, num_epochs=200, lr=3e-4, print_every=1, outpath="./saved_models/step_fusion/")
    _kinematics(parser, None, None, unset="the stage-2 checkpoint's")
    add_flag(parser, "path_feature_train", default="./video_features/train_3d_features.pkl", help="stage-3 features")
    add_flag(parser, "path_feature_val", default="./video_features/val_3d_features.pkl", help="stage-3 features")
    add_flag(parser, "ts_checkpoint", default="./saved_models/step_1d/final_1d.pth",
             help="stage-2 checkpoint whose backbone starts the fused model")
    add_flag(parser, "model_preset", default=None, help="must agree with the stage-2 checkpoint's preset if given")


@register("train-fusion", "Stage 4: train the fused model on series and video features")(train_fusion_args)
def train_fusion_command(args: argparse.Namespace) -> StageResult:
    result = train_fusion(
        train_settings(args), path_kine_train=Path(args.path_kine_train), path_kine_val=Path(args.path_kine_val),
        path_feature_train=Path(args.path_feature_train), path_feature_val=Path(args.path_feature_val),
        path_label_train=Path(args.path_label_train), path_label_val=Path(args.path_label_val),
        ts_checkpoint=Path(args.ts_checkpoint), model_preset=args.model_preset, num_frames=args.num_frames,
        num_channels=args.num_channels,
    )
    report("fusion (stage 4)", result)
    return result
