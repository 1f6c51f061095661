"""Smoke test of ``experiments/bench_baseline.py``: both fits agree, numbers are reported."""

from __future__ import annotations

import json
import math

import torch

from agents import baseline
from experiments import bench_baseline


def test_navigation_preset_reports_both_fits_agreeing(capsys):
    assert bench_baseline.main(["--preset", "navigation-2d", "--repeats", "1"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["preset"] == "navigation-2d" and 0 < row["valid_fraction"] <= 1
    for key in ("normal_seconds", "lstsq_seconds", "advantages_seconds"):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert row["max_weight_difference"] < 1e-4 and row["max_value_difference"] < 1e-4


def test_reference_fit_is_the_ridge_solution():
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(2, 30, 4, 3, generator=g, dtype=torch.float64)
    mask = (torch.arange(30)[:, None] < torch.tensor([30, 12, 25, 7])).double().expand(2, 30, 4)
    returns = torch.randn(2, 30, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(bench_baseline.lstsq_fit(obs, returns, mask, reg=1e-3),
                               baseline.fit(obs, returns, mask, reg=1e-3), rtol=1e-6, atol=1e-8)


def test_bad_arguments_exit_2_with_one_line(capsys):
    for argv, message in ((["--preset", "nope"], "unknown preset"), (["--repeats", "0"], "--repeats")):
        assert bench_baseline.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
