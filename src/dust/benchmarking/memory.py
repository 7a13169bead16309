"""Peak resident memory of a stage-1 epoch (``dust train-video``) on seed-size toy data.

The epoch runs in a child process (``python -m dust.benchmarking.memory``), so the figure is
that of a training run alone; the parent samples the child's ``/proc/PID/status`` and reads
its peak resident set from the kernel when it ends. Reported: the peak resident set (which
counts the pages of memory-mapped clip files the epoch has read: clean page cache the
kernel can drop at will), the peak anonymous memory (what the process itself holds), and
the resident set right after the imports, for scale, with the part of it in GPU runtime
libraries (which a CUDA build of PyTorch loads even on a machine without a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..allocator import configure_malloc
from .measure import gpu_library_rss, proc_status

__all__ = ["MemoryRun", "stage1_epoch_memory"]


def _child(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one stage-1 epoch, for the memory benchmark")
    parser.add_argument("data", type=Path)
    parser.add_argument("work", type=Path)
    parser.add_argument("--preset", default="nano")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--limit-batches", type=int, default=0, help="stop the epoch after this many batches")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--grad-checkpointing", action="store_true", help="recompute Swin blocks in backward")
    parser.add_argument("--precision", default="32-true", help="Lightning's precision, as --precision")
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args(argv)
    configure_malloc()  # as the `dust` command does (the parent sets DUST_MALLOC)

    import lightning
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from ..training.stages import TrainSettings, train_video

    after_imports, gpu_libraries = proc_status(), gpu_library_rss()
    if args.limit_batches:  # a shortened epoch: the same code path, fewer batches
        trainer = lightning.Trainer

        def limited(*a, **kw):
            return trainer(*a, limit_train_batches=args.limit_batches, limit_val_batches=args.limit_batches, **kw)

        lightning.Trainer = limited  # type: ignore[misc]
    settings = TrainSettings(outpath=args.work / "ckpt", logpath=args.work / "logs", batch_size=args.batch_size,
                             num_epochs=1, print_every=1, progress=False, precision=args.precision)
    start = time.perf_counter()
    train_video(settings, path_video_train=args.data / "video_train.npy", path_video_val=args.data / "video_val.npy",
                path_label_train=args.data / "label_train.npy", path_label_val=args.data / "label_val.npy",
                model_preset=args.preset, grad_checkpointing=args.grad_checkpointing)
    args.report.write_text(json.dumps({"after_imports": after_imports, "status": proc_status(),
                                       "gpu_library_rss": gpu_libraries, "seconds": time.perf_counter() - start}))


@dataclass(frozen=True)
class MemoryRun:
    """One stage-1 epoch's settings: the child's ``DUST_MALLOC``, ``--grad_checkpointing`` and ``--precision``."""

    malloc: str = "fast"
    grad_checkpointing: bool = False
    precision: str = "32-true"

    def label(self) -> str:
        return f"{self.malloc} malloc" + (", grad ckpt" if self.grad_checkpointing else "") + (
            f", {self.precision}" if self.precision != "32-true" else "")


def stage1_epoch_memory(runs: Sequence[MemoryRun] = (MemoryRun(),), *, preset: str = "nano", batch_size: int = 1,
                        limit_batches: int = 0, n_train: int = 30, n_val: int = 10,
                        clip: tuple[int, int, int] = (77, 224, 224), workdir: Path | None = None,
                        progress: Callable[[MemoryRun], None] | None = None) -> Iterator[dict[str, Any]]:
    """One stage-1 epoch per run, each in a child process, on toy ``.npy`` data generated once.

    Yields each run's peak memory in bytes and its time as it ends; ``progress`` is called as
    each starts. See :func:`dust.allocator.configure_malloc` for ``DUST_MALLOC``.
    """
    import torch

    from ..data.toy import generate_toy_data

    threads = torch.get_num_threads()  # the child runs with the parent's setting

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        generate_toy_data(root / "data", n_train=n_train, n_val=n_val, num_frames=clip[0], height=clip[1],
                          width=clip[2], fmt="npy", progress=False)
        generate_s = time.perf_counter() - t0
        for i, run in enumerate(runs):
            if progress is not None:
                progress(run)
            result, peak_rss, peak_anon = _run_child(root, i, run, preset=preset, batch_size=batch_size,
                                                     limit_batches=limit_batches, threads=threads)
            status = result["status"]
            yield {
                "peak_rss": max(peak_rss, status.get("VmHWM", 0)),
                "peak_anon": peak_anon,
                "rss_after_imports": result["after_imports"].get("VmRSS", 0),
                "gpu_library_rss": result["gpu_library_rss"],
                "dataset_uint8": n_train * 3 * clip[0] * clip[1] * clip[2],
                "epoch_seconds": result["seconds"],
                "generate_seconds": generate_s,
                "batches": limit_batches or -(-n_train // batch_size),
                "batch_size": batch_size,
                "n_train": n_train,
                "grad_checkpointing": run.grad_checkpointing,
                "malloc": run.malloc,
                "precision": run.precision,
            }


def _run_child(root: Path, index: int, run: MemoryRun, *, preset: str, batch_size: int, limit_batches: int,
               threads: int) -> tuple[dict[str, Any], int, int]:
    """One epoch in a child process, its resident set sampled while it runs: (its report, peak RSS, peak anonymous)."""
    report, work, log = root / f"report{index}.json", root / f"work{index}", root / f"child{index}.log"
    cmd = [sys.executable, "-m", "dust.benchmarking.memory", str(root / "data"), str(work),
           "--preset", preset, "--batch-size", str(batch_size), "--limit-batches", str(limit_batches),
           "--threads", str(threads), "--report", str(report), "--precision", run.precision,
           *(["--grad-checkpointing"] if run.grad_checkpointing else [])]
    with open(log, "wb") as sink:  # a file, not a pipe: a chatty child must not block on a full pipe
        child = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT,
                                 env={**os.environ, "DUST_MALLOC": run.malloc})
        peak_rss = peak_anon = 0
        while child.poll() is None:
            status = proc_status(child.pid)
            peak_rss = max(peak_rss, status.get("VmRSS", 0))
            peak_anon = max(peak_anon, status.get("RssAnon", 0))
            time.sleep(0.02)
    output = log.read_text(errors="replace")
    if child.returncode != 0 or not report.is_file():
        raise RuntimeError(f"stage-1 memory run failed ({child.returncode}):\n{output[-2000:]}")
    return json.loads(report.read_text()), peak_rss, peak_anon


if __name__ == "__main__":
    _child()
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: the figures are written
