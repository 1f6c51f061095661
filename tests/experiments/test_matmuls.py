"""Tests of experiments/matmuls.py: counting and replaying a computation's matrix products."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from experiments import matmuls
from experiments.matmuls import Matmul, MatmulRecorder, gflop, isolated_seconds


def test_a_linear_layer_forward_and_backward_is_three_products_of_2_b_in_out_flop():
    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 3)
    x = torch.randn(7, 5, requires_grad=True)
    with MatmulRecorder() as rec:
        y = layer(x)
        y.sum().backward()
    # forward addmm, then the input's and the weight's gradients: 2 * 7 * 5 * 3 FLOP each
    assert sum(rec.counts.values()) == 3
    assert {m.op for m in rec.counts} == {"aten.addmm", "aten.mm"}
    assert gflop(rec.counts) * 1e9 == 3 * 2 * 7 * 5 * 3
    # the products still ran: the gradient is the usual one
    assert torch.allclose(x.grad, layer.weight.sum(0).expand(7, 5))


def test_batched_products_count_their_batch_and_operands_keep_their_strides():
    a, b = torch.randn(4, 6, 2), torch.randn(4, 3, 2).transpose(1, 2)
    with MatmulRecorder() as rec:
        out = torch.bmm(a, b)
    assert torch.allclose(out, a @ b)
    [(m, n)] = rec.counts.items()
    assert (m.op, n, m.flop) == ("aten.bmm", 1, 2 * 4 * 6 * 2 * 3)
    assert m.shapes == ((4, 6, 2), (4, 2, 3)) and m.strides == (a.stride(), b.stride())
    assert m.dtype == torch.float32 and m.device == "cpu"


def test_nothing_outside_the_block_is_recorded_and_other_ops_are_not_products():
    x = torch.randn(8, 8)
    with MatmulRecorder() as rec:
        (x * 2 + 1).relu().sum()
    x @ x
    assert not rec.counts and gflop(rec.counts) == 0


def test_isolated_seconds_replays_each_product_and_scales_its_mean_time_by_its_count(monkeypatch):
    wide = Matmul("aten.mm", ((64, 32), (32, 16)), ((1, 64), (16, 1)))  # a transposed operand
    bias = Matmul("aten.addmm", ((16,), (64, 32), (32, 16)), ((1,), (32, 1), (16, 1)))
    assert isolated_seconds(Counter({wide: 3, bias: 1})) > 0  # real clock: the products ran
    ticks = iter(range(1000))  # a clock on which every timed batch of calls takes 1 s
    monkeypatch.setattr(matmuls.time, "perf_counter", lambda: float(next(ticks)))
    # mean time per call = 1 / repeats, repeats = min(count, max_repeats)
    assert isolated_seconds(Counter({wide: 1000}), max_repeats=20) == 1000 / 20
    assert isolated_seconds(Counter({wide: 5, bias: 1}), max_repeats=20) == 5 / 5 + 1 / 1


def test_reference_speeds_are_positive_and_the_script_prints_them_as_json(capsys):
    assert matmuls.lone_product_gflops(64, 8, repeats=20) > 0
    forward, backward = matmuls.cold_relu_microseconds(64, 8, tensors=4)
    assert forward > 0 and backward > 0
    matmuls.main(["--rows", "64", "--width", "8"])
    out = json.loads(capsys.readouterr().out)
    assert (out["rows"], out["width"]) == (64, 8)
    assert out["lone_product_gflops"] > 0 and out["relu_backward_gb_per_s"] > 0


def test_the_script_rejects_a_non_positive_size():
    with pytest.raises(SystemExit) as exc:
        matmuls.main(["--rows", "0"])
    assert exc.value.code == 2
