"""Measuring tools: wall-clock timing, the matmul yardstick, FLOP counting, resident memory."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

__all__ = ["Timing", "count_flops", "device_sync", "extra_flop_formulas", "load_average", "matmul_peak", "proc_status",
           "time_call"]


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
