"""How much of a piece of torch code's time its matrix products need.

:class:`MatmulRecorder` records every matrix product the code runs (``mm``, ``addmm``,
``bmm``, ``baddbmm``; autograd's backward products included, since the mode sits below
autograd) with the shapes and strides of its operands. :func:`gflop` adds up their
floating-point operations (``2 m k n`` per product), and :func:`isolated_seconds` replays each
distinct product on fresh tensors of the same shapes and strides and times it alone: what the
code's matrix products cost at the BLAS's own speed on this machine, with their operands hot in
cache. The code's measured time minus that is what everything else costs (element-wise ops,
memory traffic, autograd's bookkeeping).

Used by ``python -m experiments.bench_fisher`` on the TRPO outer step.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_PRODUCTS = {"aten.mm": (0, 1), "aten.addmm": (1, 2), "aten.bmm": (0, 1), "aten.baddbmm": (1, 2)}


@dataclass(frozen=True)
class Matmul:
    """One matrix product as the dispatcher saw it: the op, its tensor operands' shapes and
    strides (``addmm``/``baddbmm`` first take the tensor added), their dtype and device."""

    op: str
    shapes: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]
    dtype: torch.dtype = torch.float32
    device: str = "cpu"

    @property
    def flop(self) -> int:
        """``2 [b] m k n``: one multiply and one add per term of the product."""
        i, j = _PRODUCTS[self.op]
        a, b = self.shapes[i], self.shapes[j]
        batch = a[0] if len(a) == 3 else 1
        return 2 * batch * a[-2] * a[-1] * b[-1]


class MatmulRecorder(TorchDispatchMode):
    """Counts the matrix products run inside ``with MatmulRecorder() as rec:`` in
    ``rec.counts`` (a ``Counter`` of :class:`Matmul`). The products still run: the code's results
    do not change."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[Matmul] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
                           ) -> Any:
        name = str(func.overloadpacket)
        if name in _PRODUCTS:
            operands = [a for a in args if isinstance(a, torch.Tensor)]
            self.counts[Matmul(name, tuple(tuple(t.shape) for t in operands),
                               tuple(t.stride() for t in operands), operands[0].dtype,
                               str(operands[0].device))] += 1
        return func(*args, **(kwargs or {}))


def gflop(counts: Counter[Matmul]) -> float:
    """The recorded products' floating-point operations, in units of 1e9."""
    return sum(m.flop * n for m, n in counts.items()) / 1e9


def _operand(m: Matmul, shape: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
    """A random tensor of ``m``'s dtype and device with exactly this shape and stride (e.g. a
    transposed view, or a broadcast bias with stride 0)."""
    if 0 in shape:
        return torch.empty(shape, dtype=m.dtype, device=m.device)
    size = 1 + sum((s - 1) * st for s, st in zip(shape, stride))
    return torch.randn(size, dtype=m.dtype, device=m.device).as_strided(shape, stride)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def isolated_seconds(counts: Counter[Matmul], max_repeats: int = 20) -> float:
    """The recorded products' time when each runs alone: every distinct product is replayed on
    operands of its shapes and strides (one untimed call, then ``min(count, max_repeats)``
    timed ones) and its mean time multiplied by its count."""
    total = 0.0
    for m, n in counts.items():
        op = getattr(torch.ops.aten, m.op.removeprefix("aten.")).default
        operands = [_operand(m, s, st) for s, st in zip(m.shapes, m.strides)]
        op(*operands)
        repeats = max(1, min(n, max_repeats))
        _sync(m.device)
        began = time.perf_counter()
        for _ in range(repeats):
            op(*operands)
        _sync(m.device)
        total += (time.perf_counter() - began) / repeats * n
    return total
