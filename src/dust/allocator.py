"""glibc's malloc settings for training processes: keep large buffers instead of remapping them."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_large_allocations"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit systems
_TRIM_THRESHOLD = 1 << 30


def keep_large_allocations() -> bool:
    """Serve allocations of up to 32 MiB from glibc's heap and keep freed memory there for reuse.

    By default glibc maps each allocation above a threshold fresh from the kernel and unmaps it
    when freed. A training step allocates and frees the same multi-megabyte activations every
    time, so each step then pays a page fault (and the kernel's zeroing) for every 4 KiB of them:
    a tenth of a Video Swin training step on CPU. Process-wide; the CLI calls it once at start.
    ``DUST_MALLOC=default`` leaves glibc's settings alone. Returns whether the settings took
    (False off Linux, on other C libraries, or when opted out).
    """
    if sys.platform != "linux" or os.environ.get("DUST_MALLOC", "") == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
