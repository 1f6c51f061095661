"""Tests of meta/evaluation.py pieces not covered through ``adaptbed evaluate``
(tests/experiments/test_evaluate.py): the stand-still reference."""

from __future__ import annotations

import pytest

from envs.tasks import VelocityTask
from envs.vector import make_vector_env
from meta.evaluation import stand_still_returns


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
