"""Measuring tools: wall-clock timing, the matmul yardstick, FLOP counting, resident memory."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

__all__ = ["Timing", "count_flops", "device_sync", "extra_flop_formulas", "gpu_library_rss", "load_average",
           "matmul_peak", "proc_status", "time_call"]


@dataclass
class Timing:
    """Seconds per call: the best and the median of the timed repeats."""

    best: float
    median: float
    repeats: int


def device_sync(device: torch.device) -> None:
    """Wait for queued GPU work (timing is meaningless without it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, *, warmup: int = 1, repeats: int = 3,
              min_seconds: float = 0.0) -> Timing:
    """Time ``fn()`` after ``warmup`` untimed calls: at least ``repeats`` calls and ``min_seconds`` in all."""
    for _ in range(warmup):
        fn()
    device_sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        device_sync(device)
        times.append(time.perf_counter() - t0)
    return Timing(min(times), statistics.median(times), len(times))


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 8) -> float:
    """The machine's matrix-multiply yardstick: best GFLOP/s of ``torch.mm`` on ``n x n`` squares."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    timing = time_call(lambda: torch.mm(a, b, out=out), device, warmup=2, repeats=repeats)
    return 2 * n**3 / timing.best / 1e9


# The CPU flash-attention kernels are not in torch's FLOP table; count them as SDPA is counted.
def _cpu_flash_flop(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def extra_flop_formulas() -> dict:
    """FLOP formulas for ops ``torch.utils.flop_counter`` has none for (PyTorch's CPU flash attention)."""
    aten = torch.ops.aten
    table = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        table[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_flash_flop
        table[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_flash_backward_flop
    return table


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matrix products and convolutions that ``fn()`` runs (``torch.utils.flop_counter``)."""
    with FlopCounterMode(display=False, custom_mapping=extra_flop_formulas()) as counter:
        fn()
    return int(counter.get_total_flops())


def load_average() -> tuple[float, float, float] | None:
    """The system load average (1, 5, 15 minutes), where the platform has one."""
    try:
        return os.getloadavg()
    except OSError:
        return None


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """Memory fields of ``/proc/PID/status`` in bytes (VmRSS, VmHWM, RssAnon, RssFile); empty off Linux."""
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    fields[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return fields


_GPU_PACKAGES = ("nvidia", "triton", "cuda")
_GPU_LIBRARY_NAMES = ("cuda", "cublas", "cudnn", "cufft", "curand", "cusparse", "cusolver", "cupti", "cufile", "nvrtc",
                      "nvjitlink", "nvtoolsext", "nccl", "nvshmem")


def _is_gpu_library(path: str) -> bool:
    """Whether a mapped file belongs to a GPU runtime: NVIDIA's and Triton's wheels, CUDA's libraries, PyTorch's own."""
    package = path.partition("site-packages/")[2].split("/", 1)[0]
    name = os.path.basename(path).lower()
    return package in _GPU_PACKAGES or any(part in name for part in _GPU_LIBRARY_NAMES)


def _mapped_rss(smaps: Iterable[str], keep: Callable[[str], bool]) -> int:
    """Bytes resident in the mappings of ``smaps`` lines whose file ``keep`` accepts."""
    total, counting = 0, False
    for line in smaps:
        fields = line.split(maxsplit=5)
        if not fields:
            continue
        if fields[0].endswith(":"):  # a field of the current mapping
            if counting and fields[0] == "Rss:":
                total += int(fields[1]) * 1024
        else:  # a mapping's header: address range, permissions, offset, device, inode[, path]
            counting = len(fields) == 6 and keep(fields[5].strip())
    return total


def gpu_library_rss(pid: int | str = "self") -> int:
    """Bytes of the resident set in mappings of GPU runtime libraries (``/proc/PID/smaps``; 0 off Linux).

    A CUDA build of PyTorch loads them at import even where there is no GPU, and the pages its
    start-up touched count in the resident set; a CPU build loads none of them.
    """
    try:
        with open(f"/proc/{pid}/smaps") as smaps:
            return _mapped_rss(smaps, _is_gpu_library)
    except OSError:
        return 0
