"""What the suite measures: training steps, inference, stage-3 feature extraction, the data loader.

Every workload returns :class:`Row` records. FLOPs are the model's: counted once per
configuration with ``torch.utils.flop_counter`` on one sample, over the forward (inference)
or forward + backward (training; the optimizer step is not counted), and scaled by the
batch. Both models are counted in the plain formulation of window attention
(``set_attention_impl("reference")``: torchvision's for the video model, pad-roll-crop for the
time-series one), so implementations are compared on the same work; shortcuts that skip work
(the fused paths do not project window padding) show up as speed, not as fewer FLOPs.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models import TimeSeriesSwin, VideoSwin
from .ceiling import product_ceiling
from .measure import count_flops, device_sync, time_call

__all__ = ["Env", "Row", "bench_features", "bench_loader", "bench_ts", "bench_video"]


@dataclass
class Env:
    """Where and how to run: device, autocast dtype (None: full precision), timing repeats.

    ``warmup`` untimed calls come first: a training run's steps are timed in its steady state,
    once the heap has grown to what a step needs (the first few steps of a process page-fault
    through fresh memory) and oneDNN has built its kernels for the shapes.
    """

    device: torch.device
    autocast: torch.dtype | None = None
    repeats: int = 3
    warmup: int = 3

    def autocast_context(self) -> contextlib.AbstractContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)


@dataclass
class Row:
    """One line of the table."""

    workload: str
    model: str = ""
    input: str = ""
    batch: int | None = None
    mode: str = ""
    samples_per_s: float | None = None
    gflop_per_sample: float | None = None
    gflops: float | None = None
    peak_fraction: float | None = None
    seconds_per_step: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                env: Env) -> Callable[[], None]:
    """Forward, cross-entropy, backward, optimizer step: what a training stage does per batch."""

    def step() -> None:
        with env.autocast_context():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _forward_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, env: Env) -> Callable[[], None]:
    def run() -> None:
        with env.autocast_context():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    return run


def _inference(model: nn.Module, x: torch.Tensor, env: Env) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode(), env.autocast_context():
            model(x)

    return run


def _model_flops(build: Callable[[], nn.Module], sample_shape: tuple[int, ...], num_classes: int,
                 env: Env) -> tuple[int, int]:
    """(training, inference) FLOPs of one sample: forward + backward, and forward alone.

    Counted on the meta device (shapes only, no arithmetic) when the model runs there, else on ``env.device``.
    """

    def count(device: torch.device) -> tuple[int, int]:
        with device:
            model = build()
        sample = torch.randn(1, *sample_shape, device=device)
        y = torch.zeros(1, dtype=torch.long, device=device)
        model.train()
        train = count_flops(_forward_backward(model, sample, y, env))
        model.eval()
        return train, count_flops(_inference(model, sample, env))

    try:
        return count(torch.device("meta"))
    except (RuntimeError, NotImplementedError):  # data-dependent code (e.g. .item()) cannot run on meta
        return count(env.device)


def _rows(workload: str, model_name: str, shape: str, batch: int, flops: tuple[int, int], peak: float,
          train: float | None, infer: float | None, mode: str, note: str = "") -> list[Row]:
    rows = []
    for what, seconds, per_sample in (("train", train, flops[0]), ("infer", infer, flops[1])):
        if seconds is None:
            continue
        rate = per_sample * batch / seconds / 1e9
        rows.append(Row(f"{workload} {what}", model_name, shape, batch, mode if what == "train" else "eager",
                        batch / seconds, per_sample / 1e9, rate, rate / peak, seconds, note))
    return rows


def _optimizer(model: nn.Module, num_classes: int, lr: float) -> torch.optim.Optimizer:
    """The optimizer the training stages build (``ClassifierTask``, constant schedule)."""
    from ..training.task import ClassifierTask

    return ClassifierTask(model, num_classes, lr).configure_optimizers()


def _optimizer_seconds(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                       env: Env) -> float:
    """Seconds of ``optimizer.step()`` alone (part of every training step)."""
    _forward_backward(model, x, y, env)()  # leaves no gradients: make some
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    seconds = time_call(optimizer.step, env.device, warmup=1, repeats=env.repeats).best
    optimizer.zero_grad(set_to_none=True)
    return seconds


def _add_training_info(row: Row, info: dict[str, Any]) -> None:
    row.extra.update(info)
    if row.seconds_per_step and "optimizer_s" in info:
        share = f"optimizer step {info['optimizer_s'] / row.seconds_per_step:.0%} of it"
        row.note = f"{row.note}; {share}" if row.note else share


def _ceiling_row(train: Row, step: Callable[[], None], env: Env, peak: float) -> Row:
    """The training step's FLOP-counted operations timed alone (:mod:`~dust.benchmarking.ceiling`): the most
    ``train`` could reach were everything else free."""
    batch = train.batch or 1
    try:
        ceiling = product_ceiling(step, env.device, repeats=env.repeats)
    except Exception as err:  # noqa: BLE001  (an op that cannot be replayed alone: say so, keep the suite going)
        return Row(f"{train.workload} ceiling", train.model, train.input, batch, "ops alone",
                   note=f"not measured: {type(err).__name__}: {err}"[:200])
    rate = (train.gflop_per_sample or 0.0) * batch / ceiling.seconds
    note = (f"{ceiling.calls} matmul/attention/conv calls ({ceiling.distinct} layouts) timed alone, "
            f"the rest free; they run at {ceiling.gflops:.0f} GFLOP/s")
    return Row(f"{train.workload} ceiling", train.model, train.input, batch, "ops alone", batch / ceiling.seconds,
               train.gflop_per_sample, rate, rate / peak, ceiling.seconds, note,
               {"ops_seconds": ceiling.seconds, "ops_gflop": ceiling.flops / 1e9, "calls": ceiling.calls,
                "layouts": ceiling.distinct})


def _compiled_if_faster(model: nn.Module, step_for: Callable[[nn.Module], Callable[[], None]], env: Env,
                        compile_mode: bool) -> tuple[float, str, dict[str, Any]]:
    """Best training-step seconds eager, and compiled too when asked; which won."""
    eager = time_call(step_for(model), env.device, warmup=env.warmup, repeats=env.repeats).best
    if not compile_mode:
        return eager, "eager", {"eager_s": eager}
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)  # graph-break notes are not results
    compiled_model = torch.compile(model, dynamic=False)
    start = time.perf_counter()
    step = step_for(compiled_model)
    try:
        step()  # compiles
        device_sync(env.device)
        compile_s = time.perf_counter() - start
        compiled = time_call(step, env.device, warmup=1, repeats=env.repeats).best
    except Exception as err:  # noqa: BLE001  (any compiler failure: say so, keep eager)
        return eager, "eager", {"eager_s": eager, "compile_error": f"{type(err).__name__}: {err}"[:300]}
    info = {"eager_s": eager, "compiled_s": compiled, "compile_s": compile_s}
    return (compiled, "compiled", info) if compiled < eager else (eager, "eager", info)


def bench_ts(env: Env, peak: float, *, preset: str = "paper", batch: int = 256, length: int = 51,
             channels: int = 3, num_classes: int = 4, compile_mode: bool = False,
             attention: str = "fused", ceiling: bool = False) -> list[Row]:
    """Time-series model: training step and inference at ``batch`` series of ``channels x length``.

    ``attention="reference"`` times the plain pad-roll-crop window attention through SDPA instead
    (the before figure). ``ceiling`` adds the training step's ceiling row (:func:`_ceiling_row`).
    """
    torch.manual_seed(0)

    def build() -> TimeSeriesSwin:
        return TimeSeriesSwin.from_preset(preset, seq_len=length, in_chans=channels, num_classes=num_classes)

    flops = _model_flops(lambda: build().set_attention_impl("reference"), (channels, length), num_classes, env)
    model = build().to(env.device).set_attention_impl(attention)
    x = torch.randn(batch, channels, length, device=env.device)
    y = torch.randint(0, num_classes, (batch,), device=env.device)
    model.train()
    optimizer = _optimizer(model, num_classes, 3e-4)
    train, mode, info = _compiled_if_faster(model, lambda m: _train_step(m, optimizer, x, y, env), env, compile_mode)
    info["optimizer_s"] = _optimizer_seconds(model, optimizer, x, y, env)
    model.eval()
    infer = time_call(_inference(model, x, env), env.device, warmup=env.warmup, repeats=env.repeats).best
    note = "plain attention (SDPA)" if attention == "reference" else ""
    rows = _rows("ts", preset, f"{channels}x{length}", batch, flops, peak, train, infer, mode, note)
    _add_training_info(rows[0], info)
    if ceiling:
        model.train()
        rows.insert(1, _ceiling_row(rows[0], _train_step(model, optimizer, x, y, env), env, peak))
    return rows


def bench_video(env: Env, peak: float, *, preset: str, clip: tuple[int, int, int], batch: int,
                num_classes: int = 4, train: bool = True, infer: bool = True, compile_mode: bool = False,
                attention: str = "fused", ceiling: bool = False) -> list[Row]:
    """Video model: training step and inference on ``batch`` random clips of ``3 x T x H x W``.

    ``attention="reference"`` times torchvision's own window attention instead (the before figure).
    ``ceiling`` adds the training step's ceiling row (:func:`_ceiling_row`).
    """
    torch.manual_seed(0)
    flops = _model_flops(lambda: VideoSwin.from_preset(preset, num_classes=num_classes).set_attention_impl("reference"),
                         (3, *clip), num_classes, env)
    torch.manual_seed(0)
    model = VideoSwin.from_preset(preset, num_classes=num_classes).to(env.device).set_attention_impl(attention)
    x = torch.randn(batch, 3, *clip, device=env.device)
    y = torch.randint(0, num_classes, (batch,), device=env.device)
    train_s = infer_s = None
    mode, info = "eager", {}
    if train:
        model.train()
        optimizer = _optimizer(model, num_classes, 1e-5)
        train_s, mode, info = _compiled_if_faster(model, lambda m: _train_step(m, optimizer, x, y, env), env,
                                                  compile_mode)
        info["optimizer_s"] = _optimizer_seconds(model, optimizer, x, y, env)
    if infer:
        model.eval()
        infer_s = time_call(_inference(model, x, env), env.device, warmup=env.warmup, repeats=env.repeats).best
    note = "torchvision attention" if attention == "reference" else ""
    rows = _rows("video", preset, "x".join(map(str, clip)), batch, flops, peak, train_s, infer_s, mode, note)
    if train:
        _add_training_info(rows[0], info)
        if ceiling:
            model.train()
            rows.insert(1, _ceiling_row(rows[0], _train_step(model, optimizer, x, y, env), env, peak))
    return rows


def _uint8_clips(path: Path, count: int, clip: tuple[int, int, int]) -> Path:
    """A ``(count, 3, T, H, W)`` uint8 ``.npy`` of random clips, written clip by clip."""
    rng = np.random.default_rng(0)
    video = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(count, 3, *clip))
    for i in range(count):
        video[i] = rng.integers(0, 256, (3, *clip), dtype=np.uint8)
    video.flush()
    del video
    return path


def bench_loader(env: Env, *, clip: tuple[int, int, int], count: int, batch: int,
                 workdir: Path | None = None) -> Row:
    """The stage-1 data path alone (clips/s): memory-mapped uint8 ``.npy`` -> uint8 batches on the device ->
    normalised float, as a training step gets them."""
    from torch.utils.data import DataLoader

    from ..data.arrays import load_array
    from ..data.datasets import ArrayRows, VideoTransform

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = _uint8_clips(Path(tmp) / "video.npy", count, clip)
        labels = np.zeros(count, dtype=np.int64)

        def epoch() -> None:
            transform = VideoTransform()
            dataset = ArrayRows([load_array(path)], [transform.read], labels)
            for clips, _ in DataLoader(dataset, batch_size=batch, shuffle=True):
                transform.normalize(clips.to(env.device))

        seconds = time_call(epoch, env.device, warmup=1, repeats=env.repeats).best
    return Row("loader (uint8 .npy)", "", "x".join(map(str, clip)), batch, "eager", count / seconds,
               seconds_per_step=seconds / -(-count // batch))


def bench_features(env: Env, *, preset: str, clip: tuple[int, int, int], count: int, batch: int,
                   workdir: Path | None = None) -> Row:
    """Stage 3 as run by ``dust extract-features``: checkpoint + uint8 ``.npy`` -> feature file (clips/s)."""
    from ..checkpoint import save_checkpoint
    from ..training.stages import extract_features

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        video = _uint8_clips(root / "video.npy", count, clip)
        torch.manual_seed(0)
        checkpoint = save_checkpoint(root / "video.pth", VideoSwin.from_preset(preset, num_classes=4), preset=preset)

        def run() -> None:
            extract_features(checkpoint=checkpoint, inputs=[video], outputs=[root / "features.npy"],
                             batch_size=batch, progress=False)

        seconds = time_call(run, env.device, warmup=1, repeats=max(1, env.repeats - 1)).best
    return Row("features (stage 3)", preset, "x".join(map(str, clip)), batch, "eager", count / seconds,
               seconds_per_step=seconds / -(-count // batch))
