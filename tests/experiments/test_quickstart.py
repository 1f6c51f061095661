"""``adaptbed quickstart``: the README's main command, end to end (2 meta-iterations), and the
"stand still" reference return it prints."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from envs.splits import get_split
from envs.tasks import GoalTask
from experiments.quickstart import stand_still_returns

ROOT = Path(__file__).resolve().parents[2]
# one torch thread: on a loaded 2-core machine the default pool slows the TRPO update 10-100x
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TOLERANCE = 0.01  # envs.navigation.GOAL_TOLERANCE: the episode ends inside this box


def far_from_origin(goal) -> bool:
    return max(abs(g) for g in goal) >= TOLERANCE


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path):
    run_dir = tmp_path / "quick"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.cli", "quickstart", "--iterations", "2",
         "--run-dir", str(run_dir), "--quiet"],
        cwd=ROOT, env=CHILD_ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr

    doc = json.loads((run_dir / "eval" / "quickstart.json").read_text())
    tasks = get_split("navigation-2d", "test")
    assert doc["split"] == "test" and doc["num_tasks"] == len(tasks)
    assert set(doc["agents"]) == {"maml", "random init"}
    assert (run_dir / "eval" / "quickstart.png").read_bytes()[:4] == b"\x89PNG"
    for name, res in doc["agents"].items():
        assert res["steps"] == [0, 1, 2, 3], name
        assert len(res["mean"]) == len(res["ci95"]) == 4, name
        assert all(math.isfinite(m) and -1000 < m < 0 for m in res["mean"]), name
        assert all(math.isfinite(c) and c >= 0 for c in res["ci95"]), name
    assert all(far_from_origin(t.goal) for t in tasks)
    expected_still = float(np.mean([-100 * math.hypot(*t.goal) for t in tasks]))
    assert doc["stand_still"] == pytest.approx(expected_still, rel=1e-9)

    # the table: a header with the step counts, one row per agent, then "stand still"
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("agent"))
    assert [f"after {k} step" in header for k in range(4)] == [True] * 4
    rows = {}
    for name in ("maml", "random init", "stand still"):
        matching = [line for line in lines if line.startswith(name)]
        assert len(matching) == 1, (name, proc.stdout)
        rows[name] = matching[0][len(name):].split()
    for name in ("maml", "random init"):
        cells = rows[name]
        assert len(cells) == 4 * 3 and cells[1::3] == ["±"] * 4, cells
        assert [float(c) for c in cells[0::3]] == pytest.approx(
            doc["agents"][name]["mean"], abs=0.051)
    assert float(rows["stand still"][0]) == pytest.approx(expected_still, abs=0.051)

    # the training run behind it is a complete run directory
    assert (run_dir / "config.json").exists() and (run_dir / "checkpoints" / "latest.pt").exists()
    assert (run_dir / "progress.csv").read_text().count("\n") == 1 + 2


@pytest.mark.parametrize("goal", [(0.3, -0.4), (0.5, 0.5), (-0.02, 0.0), (0.0, 0.011),
                                  (0.012, -0.012), (-3.0, 4.0)])
def test_stand_still_return_is_minus_100_times_the_distance(goal):
    (ret,) = stand_still_returns([GoalTask(goal=goal)])
    assert ret == pytest.approx(-100 * math.hypot(*goal), rel=1e-12)


def test_stand_still_on_the_goal_ends_after_one_step():
    # inside the 0.01 box around the start the first step terminates the episode
    (ret,) = stand_still_returns([GoalTask(goal=(0.005, -0.003))])
    assert ret == pytest.approx(-math.hypot(0.005, -0.003), rel=1e-12)


def test_stand_still_returns_one_per_task_in_order():
    tasks = [t for t in get_split("navigation-2d", "test") if far_from_origin(t.goal)][:5]
    returns = stand_still_returns(tasks)
    assert returns == pytest.approx([-100 * math.hypot(*t.goal) for t in tasks], rel=1e-12)
