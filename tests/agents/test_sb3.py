"""Tests of agents/sb3.py: task vectors of every task type, the task-in-observation wrapper
(contents, resampling only from the given generator), action rescaling, the rollout budget rule,
and tiny oracle / PPO-from-scratch runs (finite per-task numbers, determinism under a seed).

Budgets are a few hundred env steps; torch runs on one thread (faster for SB3's small MLP and
comparable between runs)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.sb3 import (MAX_ROLLOUT, TaskInObservation, derived_seed, make_env, new_ppo,
                        normalized_actions, oracle_returns, ppo_from_scratch_returns,
                        rollout_plan, task_vector, train_oracle)
from envs.registry import FAMILIES, make
from envs.splits import get_split
from envs.tasks import (Direction2DTask, DirectionTask, DynamicsTask, GoalTask, TaskError,
                        VelocityTask)

NAV = "navigation-2d"




@pytest.fixture(scope="module")
def nav_tasks() -> list:
    return get_split(NAV, "test")[:3]


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.policy.state_dict().items()}


def same_params(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- task_vector -------------------------------------------------------------------------------
@pytest.mark.parametrize("task, expected", [
    (GoalTask(goal=(0.25, -0.5)), [0.25, -0.5]),
    (VelocityTask(velocity=1.7), [1.7]),
    (DirectionTask(direction=-1), [-1.0]),
    (Direction2DTask(direction=(0.6, 0.8)), [0.6, 0.8]),
    (DynamicsTask(body_mass=(1.0, 2.0), body_inertia=(0.5,), geom_friction=(1.5, 1.0),
                  dof_damping=(1.3,)),
     [0.0, math.log(2.0), math.log(0.5), math.log(1.5), 0.0, math.log(1.3)]),
])
def test_task_vector_of_every_task_type(task, expected):
    vec = task_vector(task)
    assert vec.dtype == np.float64 and vec.ndim == 1
    np.testing.assert_allclose(vec, expected, rtol=1e-12)


@pytest.mark.parametrize("bad", [None, 1.0, (0.1, 0.2), {"goal": [0, 0]}])
def test_task_vector_rejects_non_tasks(bad):
    with pytest.raises(TaskError):
        task_vector(bad)


@pytest.mark.parametrize("spec", FAMILIES, ids=lambda s: s.name)
def test_wrapper_space_matches_every_family(spec):
    env = make(spec.name)
    tasks = env.unwrapped.sample_tasks(2, np.random.default_rng(0))
    wrapped = TaskInObservation(env, np.random.default_rng(0))
    try:
        obs, _ = wrapped.reset(seed=0)
        base = env.observation_space.shape[0]
        assert wrapped.observation_space.shape == (base + len(task_vector(tasks[0])),)
        assert obs.shape == wrapped.observation_space.shape
        assert obs.dtype == env.observation_space.dtype
        assert wrapped.observation_space.contains(obs)
        np.testing.assert_allclose(obs[base:], task_vector(tasks[0]), rtol=1e-6)
        assert np.all(np.isfinite(task_vector(tasks[1])))
    finally:
        wrapped.close()


# --- TaskInObservation --------------------------------------------------------------------------
def test_wrapper_appends_the_fixed_task():
    task = GoalTask(goal=(0.3, -0.2))
    env = TaskInObservation(make(NAV, task=task))
    obs, _ = env.reset(seed=0)
    assert env.observation_space.shape == (4,) and obs.dtype == np.float32
    np.testing.assert_allclose(obs, [0.0, 0.0, 0.3, -0.2], rtol=1e-6)
    obs, reward, *_ = env.step(np.array([0.1, 0.05], dtype=np.float32))
    np.testing.assert_allclose(obs, [0.1, 0.05, 0.3, -0.2], rtol=1e-6)
    assert reward == pytest.approx(-math.hypot(0.2, -0.25))
    for seed in (1, 2, None):  # without a sampler the task never changes
        obs, _ = env.reset(seed=seed)
        assert env.unwrapped.get_task() == task
        np.testing.assert_allclose(obs[2:], [0.3, -0.2], rtol=1e-6)


def test_wrapper_follows_set_task():
    env = TaskInObservation(make(NAV, task=GoalTask(goal=(0.1, 0.1))))
    env.unwrapped.set_task(GoalTask(goal=(-0.4, 0.2)))
    obs, _ = env.reset()
    np.testing.assert_allclose(obs[2:], [-0.4, 0.2], rtol=1e-6)


def test_resampling_draws_only_from_the_given_generator():
    np.random.seed(123)
    global_state = np.random.get_state()[1].copy()
    expected = make(NAV).unwrapped
    rng_ref = np.random.default_rng(7)
    reference = [expected.sample_tasks(1, rng_ref)[0] for _ in range(5)]
    for reset_seeds in ([0, 0, 0, 0, 0], [9, None, 3, 4, 5]):  # reset seeds do not matter
        env = TaskInObservation(make(NAV), task_sampler=np.random.default_rng(7))
        seen = []
        for s in reset_seeds:
            obs, _ = env.reset(seed=s)
            task = env.unwrapped.get_task()
            seen.append(task)
            np.testing.assert_allclose(obs[2:], task.goal, rtol=1e-6)
            env.step(np.zeros(2, dtype=np.float32))
            assert env.unwrapped.get_task() == task  # not resampled by step
        assert seen == reference
        assert all(abs(g) <= 0.5 for t in seen for g in t.goal)  # the train distribution
    assert np.array_equal(np.random.get_state()[1], global_state)


def test_wrapper_rejects_a_non_generator_sampler():
    with pytest.raises(TypeError, match="Generator"):
        TaskInObservation(make(NAV), task_sampler=0)


# --- action rescaling ---------------------------------------------------------------------------
def test_navigation_actions_are_rescaled_to_unit_box():
    env = normalized_actions(make(NAV, task=GoalTask(goal=(0.5, 0.5))))
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    env.reset(seed=0)
    obs, *_ = env.step(np.array([1.0, -0.5], dtype=np.float32))
    np.testing.assert_allclose(obs, [0.1, -0.05], rtol=1e-5)


def test_unit_action_boxes_are_left_alone():
    env = make("HalfCheetahDir")
    try:
        assert normalized_actions(env) is env
    finally:
        env.close()


def test_make_env_observes_the_task_only_when_asked():
    task = GoalTask(goal=(0.2, 0.1))
    assert make_env(NAV, task=task).observation_space.shape == (2,)
    assert make_env(NAV, task=task, observe_task=True).observation_space.shape == (4,)
    assert make_env(NAV, task_sampler=np.random.default_rng(0)).observation_space.shape == (4,)


# --- budgets --------------------------------------------------------------------------------------
@pytest.mark.parametrize("timesteps, n_envs, n_steps, n_updates, used", [
    (2000, 1, 2000, 1, 2000),
    (6000, 1, 2000, 3, 6000),
    (2048, 1, 2048, 1, 2048),
    (2049, 1, 1024, 2, 2048),
    (200_000, 4, 2000, 25, 200_000),
    (64, 1, 64, 1, 64),
    (256, 2, 128, 1, 256),
])
def test_rollout_plan_examples(timesteps, n_envs, n_steps, n_updates, used):
    plan = rollout_plan(timesteps, n_envs)
    assert (plan.n_steps, plan.n_updates, plan.total_timesteps) == (n_steps, n_updates, used)


def test_rollout_plan_never_overshoots_and_always_updates():
    for n_envs in (1, 3, 4):
        for timesteps in [*range(64, 5000, 37), 59_999, 600_000]:
            plan = rollout_plan(timesteps, n_envs)
            assert plan.n_updates >= 1 and 1 <= plan.n_steps <= MAX_ROLLOUT
            assert timesteps - plan.n_updates * n_envs < plan.total_timesteps <= timesteps
            assert plan.batch_size == min(64, plan.n_steps * n_envs) > 1


@pytest.mark.parametrize("timesteps, n_envs", [(63, 1), (0, 1), (-5, 1), (2.5, 1), (100, 0)])
def test_rollout_plan_rejects_bad_sizes(timesteps, n_envs):
    with pytest.raises(ValueError):
        rollout_plan(timesteps, n_envs)


def test_rollout_plan_says_when_the_budget_is_below_one_step_per_environment():
    with pytest.raises(ValueError, match="100 timesteps cannot give each of 128 environments"):
        rollout_plan(100, 128)
    assert rollout_plan(128, 128).n_steps == 1


def test_ppo_uses_exactly_the_planned_steps():
    plan = rollout_plan(200, 1)
    venv = DummyVecEnv([lambda: make_env(NAV, task=GoalTask(goal=(0.2, 0.2)))])
    model = new_ppo(venv, plan, seed=0)
    model.learn(plan.total_timesteps)
    assert model.num_timesteps == plan.total_timesteps == 200
    assert model._n_updates == model.n_epochs  # one PPO update (of n_epochs epochs)


def test_derived_seeds_are_32_bit_and_distinct():
    seeds = {derived_seed(s, k, i) for s in (0, 1) for k in (1, 2) for i in range(5)}
    assert len(seeds) == 20 and all(0 <= s < 2**32 for s in seeds)


# --- oracle -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def oracle():
    torch.set_num_threads(1)
    return train_oracle(NAV, 256, seed=0, n_envs=2)


def test_oracle_trains_and_returns_finite_per_task_numbers(oracle, nav_tasks):
    assert oracle.num_timesteps == 256
    assert oracle.observation_space.shape == (4,)  # position + goal
    returns = oracle_returns(oracle, NAV, nav_tasks, 2, seed=0)
    assert len(returns) == len(nav_tasks)
    assert all(isinstance(r, float) and math.isfinite(r) for r in returns)
    # at most 100 steps, each at most about 2 units from the goal
    assert all(-250 < r <= 0 for r in returns)


def test_oracle_is_deterministic_under_its_seed(oracle, nav_tasks):
    again = train_oracle(NAV, 256, seed=0, n_envs=2)
    assert same_params(params(oracle), params(again))
    assert oracle_returns(again, NAV, nav_tasks, 1, 0) == oracle_returns(oracle, NAV, nav_tasks,
                                                                          1, 0)
    other = train_oracle(NAV, 256, seed=1, n_envs=2)
    assert not same_params(params(oracle), params(other))


def test_oracle_acts_on_the_task_part_of_its_observation(oracle):
    position = [0.0, 0.0]
    a, _ = oracle.predict(np.array([*position, 0.5, 0.5], dtype=np.float32), deterministic=True)
    b, _ = oracle.predict(np.array([*position, -0.5, -0.5], dtype=np.float32), deterministic=True)
    assert a.shape == (2,) and not np.allclose(a, b)


# --- PPO from scratch -----------------------------------------------------------------------------
def test_ppo_from_scratch_tiny_budget_is_finite_and_deterministic(nav_tasks):
    calls = []
    first = ppo_from_scratch_returns(NAV, nav_tasks[:2], 128, 1, seed=3,
                                     on_task=lambda i, r: calls.append((i, r)))
    assert len(first) == 2 and all(math.isfinite(r) and r <= 0 for r in first)
    assert calls == list(enumerate(first))
    assert ppo_from_scratch_returns(NAV, nav_tasks[:2], 128, 1, seed=3) == first
    assert ppo_from_scratch_returns(NAV, nav_tasks[:2], 128, 1, seed=4) != first


def test_ppo_from_scratch_rejects_bad_sizes(nav_tasks):
    with pytest.raises(ValueError):
        ppo_from_scratch_returns(NAV, nav_tasks, 10, 1, 0)
    with pytest.raises(ValueError):
        ppo_from_scratch_returns(NAV, nav_tasks, 128, 0, 0)
