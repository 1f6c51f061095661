"""Tests of meta/evaluation.py pieces not covered through ``adaptbed evaluate``
(tests/experiments/test_evaluate.py): the stand-still reference and the confidence interval."""

from __future__ import annotations

import math

import numpy as np
import pytest

from envs.tasks import VelocityTask
from envs.vector import make_vector_env
from meta.evaluation import ci95, stand_still_returns, t_quantile_975


def test_stand_still_returns_on_halfcheetah_vel_is_minus_the_goal_speed_per_step():
    """HalfCheetahVel's reward is -|v - v_goal| - 0.05 |a|^2: a cheetah that does nothing
    barely moves, so 200 steps of it return about -200 v_goal."""
    tasks = [VelocityTask(0.5), VelocityTask(1.5)]
    venv = make_vector_env("halfcheetah-vel", 4)
    try:
        returns = stand_still_returns(venv, tasks, 2, seed=0)
    finally:
        venv.close()
    assert returns.shape == (2,)
    assert returns.tolist() == pytest.approx([-100.0, -300.0], abs=5.0)


def test_stand_still_needs_one_env_per_episode():
    venv = make_vector_env("halfcheetah-vel", 3)
    try:
        with pytest.raises(ValueError, match="3 envs"):
            stand_still_returns(venv, [VelocityTask(1.0)], 2, seed=0)
    finally:
        venv.close()


# t_{0.975} from printed tables (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2), 3 decimals
@pytest.mark.parametrize("dof, t", [(1, 12.706), (2, 4.303), (5, 2.571), (10, 2.228),
                                    (11, 2.201), (19, 2.093), (24, 2.064), (39, 2.023),
                                    (40, 2.021), (100, 1.984), (10**6, 1.960)])
def test_t_quantile_matches_the_tables_at_every_degree_of_freedom(dof, t):
    assert t_quantile_975(dof) == pytest.approx(t, abs=6e-4)


def test_ci95_is_the_student_t_half_width_of_the_mean():
    values = [1.0, 2.0, 4.0, 7.0, 11.0, 16.0, 22.0, 29.0, 37.0, 46.0, 56.0, 67.0]  # 11 dof
    expected = 2.201 * np.std(values, ddof=1) / math.sqrt(len(values))
    assert ci95(values) == pytest.approx(expected, rel=3e-4)
    assert math.isnan(ci95([5.0])) and math.isnan(ci95([]))  # undefined, not exact
    with pytest.raises(ValueError):
        t_quantile_975(0)
