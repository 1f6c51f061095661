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

``python -m experiments.matmuls [--rows R] [--width W]`` prints, as JSON, the two reference
speeds README's "About half of the outer step is matrix products" compares the step with:
a lone ``[R, W] @ [W, W]`` product on hot operands (GFLOP/s), and a ReLU and its backward on
``[R, W]`` tensors too many to stay in cache (microseconds each, and GB/s streamed).
"""

from __future__ import annotations

import json
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


def lone_product_gflops(rows: int, width: int, repeats: int = 2000) -> float:
    """GFLOP/s of ``[rows, width] @ [width, width]`` run ``repeats`` times on hot operands
    (the shape of a hidden layer's forward over one task's states), after 50 untimed calls.
    Each result is dropped before the next, so the allocator hands back the same memory."""
    a, b = torch.randn(rows, width), torch.randn(width, width)
    for _ in range(50):
        a @ b
    began = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * rows * width * width * repeats / (time.perf_counter() - began) / 1e9


def cold_relu_microseconds(rows: int, width: int, tensors: int = 200) -> tuple[float, float]:
    """Mean microseconds of a ReLU and of its backward (``threshold_backward``) on ``tensors``
    distinct ``[rows, width]`` float32 tensors, each touched once, so that they stream from
    memory rather than cache. Memory for the outputs is first allocated and freed, so that
    (with :func:`experiments.memory.keep_freed_memory`) no page is faulted in while timed."""
    xs = [torch.randn(rows, width) for _ in range(tensors)]
    warm = [torch.ones(rows, width) for _ in range(2 * tensors)]
    del warm
    began = time.perf_counter()
    ys = [torch.relu(x) for x in xs]
    forward = (time.perf_counter() - began) / tensors
    began = time.perf_counter()
    grads = [torch.ops.aten.threshold_backward(x, y, 0) for x, y in zip(xs, ys)]
    backward = (time.perf_counter() - began) / tensors
    del grads
    return forward * 1e6, backward * 1e6


def main(argv: list[str] | None = None) -> None:
    from experiments.cliutil import Parser
    from experiments.memory import keep_freed_memory

    p = Parser(prog="python -m experiments.matmuls", description=(
        "Reference speeds: a lone hidden-layer product and a ReLU streamed from memory."))
    p.add_argument("--rows", type=int, default=4000, help="states per task (default 4000)")
    p.add_argument("--width", type=int, default=100, help="hidden width (default 100)")
    args = p.parse_args(argv)
    if args.rows <= 0 or args.width <= 0:
        p.error("--rows and --width must be positive")
    kept = keep_freed_memory()
    forward, backward = cold_relu_microseconds(args.rows, args.width)
    megabytes = args.rows * args.width * 4 / 1e6
    print(json.dumps({
        "rows": args.rows, "width": args.width, "torch_threads": torch.get_num_threads(),
        "malloc_keeps_freed": kept,
        "lone_product_gflops": float(f"{lone_product_gflops(args.rows, args.width):.3g}"),
        "relu_forward_us": round(forward, 1), "relu_backward_us": round(backward, 1),
        # the forward reads x and writes y; the backward reads grad and y and writes grad_x
        "relu_forward_gb_per_s": round(2 * megabytes / forward * 1e3, 1),
        "relu_backward_gb_per_s": round(3 * megabytes / backward * 1e3, 1),
    }))


if __name__ == "__main__":
    main()
