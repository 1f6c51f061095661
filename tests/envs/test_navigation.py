"""Navigation2D against hand computation."""

import numpy as np
import pytest

from envs.navigation import Navigation2D
from envs.tasks import GoalTask, TaskError


def test_reward_is_minus_distance_after_the_clipped_move():
    env = Navigation2D(GoalTask(goal=(0.3, -0.2)))
    obs, _ = env.reset(seed=0)
    assert obs.tolist() == [0.0, 0.0]
    obs, reward, terminated, truncated, _ = env.step(np.array([0.5, -0.05]))  # x clipped to 0.1
    np.testing.assert_allclose(obs, [0.1, -0.05], atol=1e-7)
    assert reward == pytest.approx(-np.hypot(0.3 - 0.1, -0.2 + 0.05))
    assert not terminated and not truncated


def test_terminates_within_tolerance_on_both_axes():
    env = Navigation2D(GoalTask(goal=(0.1, 0.005)))
    env.reset()
    _, _, terminated, _, _ = env.step(np.array([0.1, 0.0]))
    assert terminated
    env.set_task(GoalTask(goal=(0.1, 0.02)))
    env.reset()
    _, _, terminated, _, _ = env.step(np.array([0.1, 0.0]))
    assert not terminated


def test_set_task_changes_the_reward_as_the_formula_says():
    action = np.array([0.05, 0.05])
    rewards = []
    for goal in [(0.5, 0.5), (-0.5, 0.5)]:
        env = Navigation2D(GoalTask(goal=goal))
        env.reset()
        rewards.append(env.step(action)[1])
    assert rewards[0] == pytest.approx(-np.hypot(0.45, 0.45))
    assert rewards[1] == pytest.approx(-np.hypot(0.55, 0.45))


def test_standing_still_returns_about_minus_38_on_the_train_distribution():
    env = Navigation2D()
    goals = env.sample_tasks(2000, np.random.default_rng(0))
    mean = np.mean([-100 * np.hypot(*t.goal) for t in goals])
    assert -40 < mean < -36  # E||U[-0.5,0.5]^2|| ~ 0.3826


@pytest.mark.parametrize("goal", [[0.1, 0.2], np.array([0.1, 0.2]), ("a", 0.1), 5, (0.1,),
                                  (0.1, float("nan")), (0.1, 11.0), (True, 0.1)])
def test_a_malformed_goal_is_a_task_error_as_in_every_family(goal):
    env = Navigation2D()
    with pytest.raises(TaskError, match="GoalTask.goal"):
        env.set_task(GoalTask(goal=goal))
    env.set_task(GoalTask(goal=(0.1, 0.2)))  # a tuple of numbers: valid, hashable
    assert hash(env.get_task()) == hash(GoalTask(goal=(0.1, 0.2)))
