"""The ceiling a training step's own arithmetic puts on it: its FLOP-bearing operations, timed alone.

The matmul yardstick is a 2048² product. A model's products have their own shapes (128 wide,
256 rows, batches of 392×32 windows) and reach less. :func:`product_ceiling` records every
operation of a step that ``torch.utils.flop_counter`` counts (matrix products, attention
kernels, convolutions) with its arguments' shapes and strides, replays each on random data
laid out the same way, and adds up their times. The step's FLOPs over that time is the
fraction of the peak it would reach if its arithmetic ran as fast as it does alone and
everything else it does (normalisation, activations, copies, the optimizer) were free.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from .measure import count_flops, device_sync, extra_flop_formulas, time_call

__all__ = ["Ceiling", "product_ceiling", "record_counted_ops"]


@dataclass(frozen=True)
class _TensorSpec:
    """Enough of a tensor argument to rebuild one laid out the same way."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device

    def build(self) -> torch.Tensor:
        extent = 0 if 0 in self.shape else 1 + sum((size - 1) * step for size, step in zip(self.shape, self.stride))
        base = torch.empty(extent, dtype=self.dtype, device=self.device)
        if self.dtype.is_floating_point:
            base.normal_()
        else:
            base.zero_()
        return base.as_strided(self.shape, self.stride)


def _spec(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return _TensorSpec(tuple(value.shape), tuple(value.stride()), value.dtype, value.device)
    if isinstance(value, (list, tuple)):
        return tuple(_spec(item) for item in value)  # hashable; aten takes tuples where it takes lists
    return value


def _build(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(_build(item) for item in value)
    return value.build() if isinstance(value, _TensorSpec) else value


_Call = tuple[Any, tuple, tuple]  # (op, argument specs, sorted keyword-argument specs)


class _Recorder(TorchDispatchMode):
    """Counts the calls of the ops in ``ops``, by their arguments' specs."""

    def __init__(self, ops: set) -> None:
        super().__init__()
        self.ops = ops
        self.calls: Counter[_Call] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in self.ops:
            key = (func, _spec(args), tuple(sorted((k, _spec(v)) for k, v in kwargs.items())))
            self.calls[key] += 1
        return func(*args, **kwargs)


def _counted_ops() -> set:
    """The ops FLOPs are counted for (``torch.utils.flop_counter``'s table and ours), as overload packets."""
    table = FlopCounterMode(display=False, custom_mapping=extra_flop_formulas()).flop_registry
    return {getattr(op, "overloadpacket", op) for op in table}


def record_counted_ops(fn: Callable[[], object]) -> Counter[_Call]:
    """Run ``fn()`` once; each FLOP-counted call it made, keyed by op and argument layout, with its count."""
    recorder = _Recorder(_counted_ops())
    with recorder:
        fn()
    return recorder.calls


def _replay(call: _Call) -> Callable[[], object]:
    func, args, kwargs = call
    built_args = _build(args)
    built_kwargs = {k: _build(v) for k, v in kwargs}

    def run() -> object:
        with torch.no_grad():
            return func(*built_args, **built_kwargs)

    return run


@dataclass
class Ceiling:
    """A step's FLOP-counted operations, timed alone.

    Attributes:
        seconds: the sum over calls of each call's best time, replayed alone.
        flops: the FLOPs of those calls (as the step ran them).
        calls: how many calls the step made.
        distinct: how many distinct (op, shapes, strides) among them, each timed once.
    """

    seconds: float
    flops: int
    calls: int
    distinct: int

    @property
    def gflops(self) -> float:
        """The rate of the operations themselves."""
        return self.flops / self.seconds / 1e9


def product_ceiling(step: Callable[[], object], device: torch.device, *, repeats: int = 3) -> Ceiling:
    """Record the FLOP-counted operations of one ``step()`` and time each distinct one alone.

    Each distinct call (op, shapes, strides) is replayed on fresh random tensors, once untimed
    and then ``repeats`` times; its best time counts once per call the step made.
    """
    calls = record_counted_ops(step)
    seconds = 0.0
    flops = 0
    for call, count in calls.items():
        run = _replay(call)
        seconds += count * time_call(run, device, warmup=1, repeats=repeats).best
        flops += count * count_flops(run)
        del run
    device_sync(device)
    return Ceiling(seconds, flops, sum(calls.values()), len(calls))
