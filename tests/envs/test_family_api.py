"""The task-family API, checked for every family of envs.registry.FAMILIES."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import random
import warnings

import gymnasium as gym
import numpy as np
import pytest

from envs.registry import FAMILIES, FamilySpec, make
from envs.splits import SPLIT_SIZE, get_split
from envs.tasks import (
    Direction2DTask,
    DirectionTask,
    DynamicsTask,
    GoalTask,
    TaskError,
    VelocityTask,
    task_from_dict,
    task_to_dict,
)

FAMILY_IDS = [s.name for s in FAMILIES]
families = pytest.mark.parametrize("spec", FAMILIES, ids=FAMILY_IDS)

#: One task of each type; a family must refuse those of another type.
ONE_OF_EACH_TYPE = [
    GoalTask(goal=(0.1, 0.1)),
    VelocityTask(velocity=1.0),
    DirectionTask(direction=1),
    Direction2DTask(direction=(0.0, 1.0)),
    DynamicsTask(body_mass=(1.0,), body_inertia=(1.0,) * 3, geom_friction=(1.0,) * 3,
                 dof_damping=(1.0,)),
]

#: Warnings the checkers may emit for every family (unbounded observations; Navigation2D's
#: action box is [-0.1, 0.1], which SB3 recommends against but accepts). Anything else fails.
ALLOWED_CHECKER_WARNINGS = ("infinity", "symmetric and normalized Box action space")


def _ood_free(spec: FamilySpec) -> bool:
    return spec.ood.startswith("none")


def _continuous(spec: FamilySpec) -> bool:
    env = make(spec.name)
    try:
        return env.unwrapped.task_type is not DirectionTask
    finally:
        env.close()


def _in_train_range(spec: FamilySpec, task) -> bool:
    """Whether ``task`` lies in the family's training range (as the registry states it)."""
    name = spec.name
    if name == "Navigation2D":
        return max(abs(g) for g in task.goal) <= 0.5
    if name == "AntGoal":
        return max(abs(g) for g in task.goal) <= 3.0
    if name == "HalfCheetahVel":
        return 0.0 <= task.velocity <= 2.0
    if name == "AntVel":
        return 0.0 <= task.velocity <= 3.0
    if name.endswith("RandParams"):
        for field in dataclasses.fields(task):
            base = 1.3 if field.name == "dof_damping" else 1.5
            u = np.log(np.asarray(getattr(task, field.name))) / np.log(base)
            if np.any(np.abs(u) > 3.0 + 1e-9):
                return False
        return True
    raise AssertionError(f"no training range known for {name}")


def _out_of_range_tasks(env) -> list:
    """Tasks of the right type outside the family's valid range."""
    name = type(env).__name__
    if name in ("Navigation2D", "AntGoal"):
        return [GoalTask(goal=(10.5, 0.0)), GoalTask(goal=(0.0, -11.0)),
                GoalTask(goal=(math.nan, 0.0))]
    if name in ("HalfCheetahVel", "AntVel"):
        return [VelocityTask(velocity=10.5), VelocityTask(velocity=-12.0),
                VelocityTask(velocity=math.inf)]
    if name in ("HalfCheetahDir", "AntDir"):
        return [DirectionTask(direction=0), DirectionTask(direction=2),
                DirectionTask(direction=-3)]
    if name == "AntDir2D":
        return [Direction2DTask(direction=(1.0, 0.01)), Direction2DTask(direction=(0.0, 0.0)),
                Direction2DTask(direction=(1.0, 0.0, 0.0))]
    if name.endswith("RandParams"):
        default = env.default_task()
        n = len(default.body_mass)
        return [
            dataclasses.replace(default, body_mass=(1.5**6.01,) + (1.0,) * (n - 1)),
            dataclasses.replace(default, body_mass=(1.5**-6.01,) + (1.0,) * (n - 1)),
            dataclasses.replace(default, body_mass=(0.0,) + (1.0,) * (n - 1)),
            dataclasses.replace(default, body_mass=(-1.0,) + (1.0,) * (n - 1)),
            dataclasses.replace(default, body_mass=(math.nan,) + (1.0,) * (n - 1)),
            dataclasses.replace(default, dof_damping=(1.3**6.5,) * len(default.dof_damping)),
            dataclasses.replace(default, body_mass=(1.0,) * (n + 1)),
            dataclasses.replace(default, geom_friction=(1.0,) * (len(default.geom_friction) - 1)),
        ]
    raise AssertionError(f"no out-of-range tasks known for {name}")


@pytest.fixture(scope="module")
def splits() -> dict[str, list]:
    return {s.name: get_split(s.name, "test") for s in FAMILIES}


# --- environment checkers ---------------------------------------------------------------------
@families
def test_gymnasium_and_sb3_env_checkers_pass(spec):
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = make(spec.name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # No display in CI: rendering (which would open GLFW windows) is not checked.
        gym_check_env(env.unwrapped, skip_render_check=True)
        sb3_check_env(env.unwrapped)
    unexpected = [str(w.message) for w in caught
                  if not any(a in str(w.message) for a in ALLOWED_CHECKER_WARNINGS)]
    assert unexpected == []


@families
def test_registered_horizon_matches_spec(spec):
    assert gym.spec(spec.env_id).max_episode_steps == spec.horizon
    env = make(spec.name)
    assert env.spec.max_episode_steps == spec.horizon


@families
def test_ppo_learns_a_few_steps(spec):
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", gym.make(spec.env_id), n_steps=64, batch_size=32, n_epochs=2,
                device="cpu", seed=0)
    model.learn(total_timesteps=64)
    assert model.num_timesteps == 64


# --- task sampling ----------------------------------------------------------------------------
@families
def test_sample_tasks_reproducible_and_valid(spec):
    env = make(spec.name).unwrapped
    a = env.sample_tasks(20, np.random.default_rng(7))
    b = env.sample_tasks(20, np.random.default_rng(7))
    assert a == b and len(a) == 20
    assert all(type(t) is env.task_type for t in a)
    for t in a:
        assert env.coerce_task(t) == t
        if spec.name not in ("HalfCheetahDir", "AntDir", "AntDir2D"):
            assert _in_train_range(spec, t)
    assert len({json.dumps(task_to_dict(t)) for t in a}) > 1  # not a constant


@families
def test_sample_tasks_use_only_the_given_generator(spec):
    env = make(spec.name)
    u = env.unwrapped
    np.random.seed(123)
    random.seed(123)
    np_state, py_state = np.random.get_state(), random.getstate()
    env.reset(seed=1)
    a = u.sample_tasks(10, np.random.default_rng(3))
    if not _ood_free(spec):
        u.sample_ood_tasks(10, np.random.default_rng(3))
    after_np = np.random.get_state()
    assert after_np[0] == np_state[0] and np.array_equal(after_np[1], np_state[1])
    assert after_np[2:] == np_state[2:]
    assert random.getstate() == py_state
    # neither the global RNG nor the env's own np_random changes the draw
    np.random.seed(999)
    env.reset(seed=2)
    assert u.sample_tasks(10, np.random.default_rng(3)) == a


@families
def test_sample_tasks_argument_checks(spec):
    env = make(spec.name).unwrapped
    with pytest.raises(TypeError):
        env.sample_tasks(3, 0)
    with pytest.raises(ValueError):
        env.sample_tasks(0, np.random.default_rng(0))


# --- set_task / get_task ----------------------------------------------------------------------
@families
def test_set_task_rejects_other_family_types(spec):
    env = make(spec.name).unwrapped
    others = [t for t in ONE_OF_EACH_TYPE if type(t) is not env.task_type]
    assert len(others) == len(ONE_OF_EACH_TYPE) - 1
    before = env.get_task()
    for task in others:
        with pytest.raises(TaskError):
            env.set_task(task)
    assert env.get_task() == before


@families
def test_set_task_rejects_out_of_range(spec):
    env = make(spec.name).unwrapped
    before = env.get_task()
    for task in _out_of_range_tasks(env):
        with pytest.raises(TaskError):
            env.set_task(task)
        with pytest.raises(TaskError):
            make(spec.name, task=task)
    assert env.get_task() == before


@families
def test_set_task_accepts_dict_form(spec):
    env = make(spec.name).unwrapped
    task = env.sample_tasks(1, np.random.default_rng(11))[0]
    env.set_task(task_to_dict(task))
    assert env.get_task() == task and type(env.get_task()) is env.task_type
    with pytest.raises(TaskError):
        env.set_task({"no_such_field": 1.0})
    made = make(spec.name, task=task_to_dict(task))
    assert made.unwrapped.get_task() == task
    assert gym.make(spec.env_id, task=task_to_dict(task)).unwrapped.get_task() == task


@families
def test_task_json_round_trip(spec, splits):
    env = make(spec.name).unwrapped
    for task in splits[spec.name][:10]:
        text = json.dumps(task_to_dict(task))
        back = task_from_dict(env.task_type, json.loads(text))
        assert back == task and hash(back) == hash(task)
        assert env.coerce_task(back) == task


@families
def test_pickling_keeps_the_task(spec):
    env = make(spec.name)
    task = env.unwrapped.sample_tasks(1, np.random.default_rng(5))[0]
    env.unwrapped.set_task(task)
    env.reset(seed=0)
    for obj in (env, env.unwrapped):
        clone = pickle.loads(pickle.dumps(obj))
        assert clone.unwrapped.get_task() == task
        clone.reset(seed=0)
        assert clone.unwrapped.get_task() == task
        clone.step(clone.action_space.sample())
    # and the task given at construction survives as well
    clone = pickle.loads(pickle.dumps(make(spec.name, task=task)))
    assert clone.unwrapped.get_task() == task


@families
def test_reset_keeps_the_task(spec):
    env = make(spec.name)
    task = env.unwrapped.sample_tasks(1, np.random.default_rng(9))[0]
    env.unwrapped.set_task(task)
    for seed in (0, 1, None):
        env.reset(seed=seed)
        assert env.unwrapped.get_task() == task
        env.step(env.action_space.sample())
        assert env.unwrapped.get_task() == task


# --- splits -----------------------------------------------------------------------------------
@families
def test_test_split_is_fixed_valid_and_disjoint_from_training(spec, splits):
    env = make(spec.name).unwrapped
    tasks = splits[spec.name]
    assert len(tasks) == SPLIT_SIZE == 40
    assert get_split(spec.name, "test") == tasks
    assert all(env.coerce_task(t) == t for t in tasks)
    if _continuous(spec):
        train = set()
        for seed in range(21):
            train.update(env.sample_tasks(40, np.random.default_rng(seed)))
        assert train.isdisjoint(tasks)
        assert len(set(tasks)) == len(tasks)


@families
def test_ood_split_lies_outside_the_training_range(spec):
    if _ood_free(spec):
        with pytest.raises(TaskError):
            get_split(spec.name, "ood")
        with pytest.raises(TaskError):
            make(spec.name).unwrapped.sample_ood_tasks(3, np.random.default_rng(0))
        return
    env = make(spec.name).unwrapped
    tasks = get_split(spec.name, "ood")
    assert len(tasks) == 40 and get_split(spec.name, "ood") == tasks
    for t in tasks:
        assert env.coerce_task(t) == t
        assert not _in_train_range(spec, t), t
    # the predicate is meaningful: training tasks satisfy it
    assert all(_in_train_range(spec, t) for t in env.sample_tasks(100, np.random.default_rng(0)))


# --- actions ----------------------------------------------------------------------------------
@families
def test_bad_actions_raise_value_error(spec):
    env = make(spec.name)
    env.reset(seed=0)
    shape = env.action_space.shape
    bad = [
        np.zeros(shape[0] + 1),
        np.zeros((1,) + shape),
        np.zeros(()),
        np.full(shape, np.nan),
        np.where(np.arange(shape[0]) == 0, np.inf, 0.0),
        np.where(np.arange(shape[0]) == 0, -np.inf, 0.0),
    ]
    for action in bad:
        with pytest.raises(ValueError):
            env.step(action)
        with pytest.raises(ValueError):
            env.unwrapped.step(action)
    obs, reward, terminated, truncated, info = env.step(np.zeros(shape))
    assert np.all(np.isfinite(obs)) and np.isfinite(reward)
