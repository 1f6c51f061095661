"""Tests of experiments/bench_inner.py: it times the preset's own inner loop, and refuses
meaningless arguments."""

from __future__ import annotations

import json
import math

import pytest
import torch

from agents.policies import GaussianMLPPolicy
from experiments import bench_inner
from meta.maml import InnerLoop


def test_time_form_runs_every_inner_step_in_both_forms():
    g = torch.Generator().manual_seed(0)
    make = lambda: bench_inner.synthetic_episodes(3, 5, 2, 4, 2, "cpu", g)  # noqa: E731
    policy = GaussianMLPPolicy(4, 2, hidden_sizes=(8,))
    for form in ("batched", "loop"):
        inner = InnerLoop((0.1, 0.05), False, form)
        seconds = bench_inner.time_form(policy, [make(), make()], make(), inner, 2, "cpu")
        assert math.isfinite(seconds) and seconds > 0
    with pytest.raises(ValueError, match="2 inner steps need as many batches"):
        bench_inner.time_form(policy, [make()], make(), InnerLoop((0.1, 0.05)), 1, "cpu")


def test_reports_the_presets_inner_steps(capsys):
    assert bench_inner.main(["--preset", "navigation-2d", "--repeats", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["inner_steps"] == 1 and out["preset"] == "navigation-2d"
    assert out["faster"] in ("batched", "loop") and out["batched_seconds"] > 0


def test_rejects_zero_repeats(capsys):
    with pytest.raises(SystemExit) as err:
        bench_inner.main(["--repeats", "0"])
    assert err.value.code == 2
    assert "--repeats must be at least 1" in capsys.readouterr().err
