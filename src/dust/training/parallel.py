"""Independent training runs side by side, each in a process of its own."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

import torch

__all__ = ["available_cores", "run_in_processes"]

T = TypeVar("T")


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _call_with_threads(job: Callable[[], T], threads: int) -> T:
    torch.set_num_threads(threads)
    return job()


def run_in_processes(jobs: Sequence[Callable[[], T]], workers: int, threads: int) -> list[T]:
    """Results of ``jobs`` (picklable callables), ``workers`` at a time in fresh processes.

    Each process runs ``threads`` torch threads. Processes are spawned, not forked: a fork
    of a process whose OpenMP pool is running can hang. The first job to raise stops the
    rest and its exception is raised here.
    """
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(_call_with_threads, job, threads) for job in jobs]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()  # nor wait for the running ones (Ctrl-C, SIGTERM, a failed job)
            raise
