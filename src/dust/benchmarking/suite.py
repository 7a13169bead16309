"""The benchmark suite behind ``dust bench``: one table, measured in one run on this machine.

Rows, in order: the matrix-multiply yardstick; the time-series model (training step, its
ceiling, inference); the video model, paper and nano presets at a few clip sizes (the first
with its training step's ceiling); on a CPU with native bfloat16 products, a bfloat16
yardstick and the time-series model and first video row again under bf16 autocast; the nano
model's training step at the seed's clip size next to the data loader alone and stage-3
feature extraction; the peak memory of a stage-1 epoch on seed-size toy data. ``--quick``
trims sizes and repeats so the whole run stays within a few minutes on a 2-core CPU.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from .measure import load_average, matmul_peak
from .memory import MemoryRun, stage1_epoch_memory
from .workloads import Env, Row, bench_features, bench_loader, bench_ts, bench_video

__all__ = ["SuiteConfig", "format_table", "run_suite"]

SEED_CLIP = (77, 224, 224)


@dataclass
class SuiteConfig:
    """What to run; :meth:`quick` and :meth:`full` are the two recipes."""

    quick: bool
    ts_batch: int = 256
    ts_plain: bool = True
    """Also time the time-series model with its plain window attention (the before figure)."""
    video: tuple[tuple[str, tuple[int, int, int], int], ...] = ()  # (preset, clip, batch)
    compared: tuple[int, ...] = (0,)
    """Indices into ``video`` that also get a ceiling row and the before figure (torchvision's attention)."""
    seed_batch: int = 1  # nano at the seed's clip size: training step, loader and features
    loader_clips: int = 8
    feature_clips: int = 4
    memory_limit_batches: int = 0  # 0: the whole epoch
    memory_runs: tuple[MemoryRun, ...] = (MemoryRun("fast"), MemoryRun("lean"),
                                          MemoryRun("lean", grad_checkpointing=True))
    """Stage-1 memory epochs, on one set of toy data."""
    repeats: int = 3
    compile: frozenset[str] = frozenset()
    """Rows whose training step is also timed under ``torch.compile`` (the faster is kept): ``"ts"``, ``"nano"``."""
    cpu_bf16: bool = True
    """On a CPU that multiplies bfloat16 natively, also time the time-series model and the first video
    row under bf16 autocast (``--precision bf16-mixed``), judged by a bfloat16 yardstick."""

    @classmethod
    def quick_config(cls, compile: bool | None = None) -> SuiteConfig:
        """Under 3 minutes: one size per row group, two repeats, no before figure for the time series
        (half a minute); eager unless ``compile`` (compiling the time-series step takes 25 s cold and
        no longer makes it faster)."""
        return cls(quick=True, video=(("paper", (16, 64, 64), 2), ("paper", (16, 112, 112), 1),
                                      ("nano", (16, 64, 64), 8), ("nano", (16, 112, 112), 4)),
                   ts_plain=False, loader_clips=6, feature_clips=3, memory_limit_batches=4, repeats=2,
                   compile=_compiled_rows(compile, default=set()))

    @classmethod
    def full_config(cls, compile: bool | None = None) -> SuiteConfig:
        """The quick recipe's rows at larger batches and more repeats, the whole memory epoch, and the
        paper preset also at batch 9 (``dust train-video``'s default), where larger products pay better."""
        return cls(quick=False, video=(("paper", (16, 64, 64), 2), ("paper", (16, 64, 64), 9),
                                       ("paper", (16, 112, 112), 2), ("nano", (16, 64, 64), 8),
                                       ("nano", (16, 112, 112), 8)), compared=(0, 1),
                   loader_clips=30, feature_clips=10, memory_limit_batches=0, repeats=5,
                   memory_runs=(*cls.memory_runs, MemoryRun("fast", precision="bf16-mixed")),
                   compile=_compiled_rows(compile, default={"ts", "nano"}))


def _compiled_rows(compile: bool | None, default: set[str]) -> frozenset[str]:
    """``--compile``: every row that can be; ``--no-compile``: none; neither: ``default``."""
    if compile is None:
        return frozenset(default)
    return frozenset({"ts", "nano"} if compile else ())


def _device() -> tuple[torch.device, torch.dtype | None, torch.dtype]:
    """(device, autocast dtype, matmul yardstick dtype): fp32 on the CPU, bf16 autocast on a GPU."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16, torch.bfloat16
    return torch.device("cpu"), None, torch.float32


def run_suite(config: SuiteConfig, *, out: TextIO | None = None, progress: Callable[[str], None] | None = None,
              workdir: Path | None = None) -> dict[str, Any]:
    """Run every workload of ``config``; returns the figures (also what ``--json`` writes)."""
    say = progress or (lambda message: None)
    start = time.perf_counter()
    device, autocast, peak_dtype = _device()
    env = Env(device, autocast, repeats=config.repeats)
    load_before = load_average()
    say("matmul peak")
    peaks = [matmul_peak(device, peak_dtype)]
    peak = peaks[0]
    rows: list[Row] = [Row("matmul peak", "torch.mm", "2048x2048", None, str(peak_dtype).replace("torch.", ""),
                           gflops=peak, peak_fraction=1.0)]

    say(f"time-series model, batch {config.ts_batch}")
    rows += bench_ts(env, peak, batch=config.ts_batch, compile_mode="ts" in config.compile, ceiling=True)
    if config.ts_plain:
        say(f"time-series model, batch {config.ts_batch}, plain attention")
        rows += bench_ts(env, peak, batch=config.ts_batch, attention="reference")  # the before figure
    for i, (preset, clip, batch) in enumerate(config.video):
        peaks.append(matmul_peak(device, peak_dtype))  # the yardstick again: the CPU may be shared
        say(f"video {preset} {clip} x{batch}")
        rows += bench_video(env, peak, preset=preset, clip=clip, batch=batch,
                            compile_mode=preset in config.compile, ceiling=i in config.compared)
        if i in config.compared:  # the same with torchvision's own window attention: the before figure
            say(f"video {preset} {clip} x{batch}, torchvision attention")
            rows += bench_video(env, peak, preset=preset, clip=clip, batch=batch, attention="reference")
    bf16_peaks: list[float] = []
    memory_runs = config.memory_runs
    if device.type == "cpu" and config.cpu_bf16:
        say("bf16 autocast on the CPU")
        bf16_rows, bf16_peaks = _cpu_bf16_rows(config, env, max(peaks), rows, say)
        rows += bf16_rows
        if not bf16_rows[0].extra["native"]:  # no native bfloat16 products: no bf16 epoch either
            memory_runs = tuple(run for run in memory_runs if run.precision == "32-true")

    peaks.append(matmul_peak(device, peak_dtype))
    say("nano at the seed clip size, loader, features")
    seed = bench_video(env, peak, preset="nano", clip=SEED_CLIP, batch=config.seed_batch, infer=False)
    train_rate = seed[0].samples_per_s or 0.0
    loader = bench_loader(env, clip=SEED_CLIP, count=config.loader_clips, batch=config.seed_batch, workdir=workdir)
    loader.note = f"{(loader.samples_per_s or 0) / train_rate:.0f}x the training step" if train_rate else ""
    features = bench_features(env, preset="nano", clip=SEED_CLIP, count=config.feature_clips, batch=9,
                              workdir=workdir)
    rows += seed + [loader, features]

    epochs = stage1_epoch_memory(memory_runs, limit_batches=config.memory_limit_batches, workdir=workdir,
                                 progress=lambda run: say(f"stage-1 epoch memory, {run.label()}"))
    for run, memory in zip(memory_runs, epochs):
        scope = f"{memory['batches']} batches" if config.memory_limit_batches else "whole epoch"
        rows.append(Row("stage-1 epoch peak RSS", "nano", "x".join(map(str, SEED_CLIP)), memory["batch_size"],
                        run.label(),
                        note=f"{memory['peak_rss'] / 2**30:.2f} GiB peak RSS, {memory['peak_anon'] / 2**30:.2f} GiB "
                             f"anonymous; {memory['rss_after_imports'] / 2**30:.2f} GiB after imports, "
                             f"{memory['gpu_library_rss'] / 2**30:.2f} of it GPU libraries; "
                             f"{memory['n_train']} clips = {memory['dataset_uint8'] / 2**30:.2f} GiB uint8 ({scope})",
                        extra=memory))

    say("matmul peak, again")
    peaks.append(matmul_peak(device, peak_dtype))
    if max(peaks) > peak:  # judge every row by the best yardstick of the run
        peak = max(peaks)
        rows[0].gflops = peak
        for row in rows[1:]:
            if row.gflops is not None and "peak_dtype" not in row.extra:
                row.peak_fraction = row.gflops / peak
        for row in rows:
            if row.workload == "matmul peak" and row.extra.get("peak_dtype") == "bfloat16":
                row.note = _bf16_yardstick_note(row.gflops, peak, native=row.extra["native"])
    return {
        "rows": [row.as_dict() for row in rows],
        "peak_gflops": peak,
        "peak_gflops_samples": peaks,
        "bf16_peak_gflops_samples": bf16_peaks,
        "device": str(device),
        "autocast": str(autocast) if autocast else None,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "quick": config.quick,
        "compile": sorted(config.compile),
        "seconds": time.perf_counter() - start,
    }


def _cpu_bf16_rows(config: SuiteConfig, env: Env, fp32_peak: float, fp32_rows: list[Row],
                   say: Callable[[str], None]) -> tuple[list[Row], list[float]]:
    """The time-series model and the first video row again under bf16 autocast, after a bfloat16 yardstick.

    Skipped, with a row saying so, where bfloat16 products are not at least 1.5x faster than
    float32 ones (no native bfloat16 units: PyTorch then converts and gains nothing). Each row's
    ``% peak`` is against the bfloat16 yardstick; its note gives the speed-up over the float32 eager step.
    """
    device = env.device
    peaks = [matmul_peak(device, torch.bfloat16)]
    yardstick = Row("matmul peak", "torch.mm", "2048x2048", None, "bfloat16", gflops=peaks[0], peak_fraction=1.0,
                    extra={"peak_dtype": "bfloat16", "native": peaks[0] >= 1.5 * fp32_peak})
    if not yardstick.extra["native"]:
        yardstick.note = _bf16_yardstick_note(peaks[0], fp32_peak, native=False)
        return [yardstick], peaks
    bf16 = Env(device, torch.bfloat16, repeats=env.repeats, warmup=env.warmup)
    say(f"time-series model, batch {config.ts_batch}, bf16 autocast")
    rows = bench_ts(bf16, max(peaks), batch=config.ts_batch)
    if config.video:
        peaks.append(matmul_peak(device, torch.bfloat16))
        preset, clip, batch = config.video[0]
        say(f"video {preset} {clip} x{batch}, bf16 autocast")
        rows += bench_video(bf16, max(peaks), preset=preset, clip=clip, batch=batch)
    best = max(peaks)
    yardstick.gflops = best
    yardstick.note = _bf16_yardstick_note(best, fp32_peak, native=True)
    same: dict[tuple, Row] = {}
    for r in fp32_rows:  # the first row of a kind: the fast path's (the before figures follow it)
        same.setdefault((r.workload, r.model, r.input, r.batch), r)
    for row in rows:
        row.peak_fraction = row.gflops / best if row.gflops is not None else None
        row.mode = f"{row.mode}, bf16"
        row.extra["peak_dtype"] = "bfloat16"
        fp32 = same.get((row.workload, row.model, row.input, row.batch))
        fp32_s = fp32 and fp32.extra.get("eager_s", fp32.seconds_per_step)  # bf16 rows run eager
        if fp32_s and row.seconds_per_step:
            speedup = f"{fp32_s / row.seconds_per_step:.1f}x the float32 eager row"
            row.note = f"{speedup}; {row.note}" if row.note else speedup
    return [yardstick, *rows], peaks


def _bf16_yardstick_note(bf16_peak: float, fp32_peak: float, *, native: bool) -> str:
    ratio = f"{bf16_peak / fp32_peak:.1f}x the float32 yardstick"
    return ratio if native else f"{ratio}: no native bfloat16 products, bf16 rows skipped"


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def format_table(result: dict[str, Any]) -> str:
    """The figures as one plain-text table with a footer."""
    header = ["workload", "model", "input", "batch", "mode", "samples/s", "GFLOP/sample", "GFLOP/s", "% peak", "note"]
    lines = []
    for r in result["rows"]:
        lines.append([r["workload"], r["model"], r["input"], "" if r["batch"] is None else str(r["batch"]), r["mode"],
                      _fmt(r["samples_per_s"], ".2f"), _fmt(r["gflop_per_sample"], ".2f"), _fmt(r["gflops"], ".1f"),
                      "" if r["peak_fraction"] is None else f"{100 * r['peak_fraction']:.0f} %", r["note"]])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header[:-1])]
    right = {3, 5, 6, 7, 8}

    def render(cells: list[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts + [cells[-1]]).rstrip()

    rule = "-" * (sum(widths) + 2 * len(widths) + 10)
    load = result.get("load_average_before"), result.get("load_average_after")
    samples = ", ".join(f"{p:.0f}" for p in result["peak_gflops_samples"])
    precision = f"autocast {result['autocast']}" if result["autocast"] else "fp32"
    footer = [
        (f"device {result['device']}, {result['threads']} threads, torch {result['torch']}, {precision}; "
         f"peak = best torch.mm of the run (samples: {samples} GFLOP/s)"),
    ]
    if any(r["mode"].endswith(", bf16") for r in result["rows"]):
        samples = ", ".join(f"{p:.0f}" for p in result["bf16_peak_gflops_samples"])
        footer.append(f"rows with mode '..., bf16': bf16 autocast, % of the best bfloat16 torch.mm "
                      f"(samples: {samples} GFLOP/s)")
    footer += [
        ("FLOPs: torch.utils.flop_counter on the model with its plain window attention (padding projected: work the "
         "fused paths skip counts as done), forward + backward for train (optimizer step not counted), forward for infer"),
    ]
    if all(load):
        footer.append(f"load average {load[0][0]:.1f} before, {load[1][0]:.1f} after "
                      f"(other processes share the CPU when it is above 0); {result['seconds']:.0f} s in all")
    return "\n".join([render(header), rule, *(render(line) for line in lines), rule, *footer])


def write_json(result: dict[str, Any], path: str | Path) -> None:
    """The figures as JSON (what ``dust bench --json`` writes), atomically."""
    from ..atomic import write_json as atomic_write_json

    atomic_write_json(path, result)
