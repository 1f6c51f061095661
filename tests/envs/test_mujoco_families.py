"""MuJoCo families: rewards, observations and terminations against hand computation from the
MuJoCo state; RandParams dynamics; diverged simulations."""

from __future__ import annotations

import math
import pickle

import mujoco
import numpy as np
import pytest

from envs.registry import FAMILIES, make
from envs.tasks import (
    Direction2DTask,
    DirectionTask,
    DynamicsTask,
    GoalTask,
    VelocityTask,
)

MUJOCO_FAMILIES = [s.name for s in FAMILIES if s.mujoco]
CHEETAH = ["HalfCheetahVel", "HalfCheetahDir"]
ANT = ["AntVel", "AntDir", "AntDir2D", "AntGoal"]
RAND_PARAMS = ["HopperRandParams", "Walker2dRandParams"]
TOL = 1e-9

OBS_DIM = {"HalfCheetahVel": 17, "HalfCheetahDir": 17, "AntVel": 105, "AntDir": 105,
           "AntDir2D": 105, "AntGoal": 105, "HopperRandParams": 11, "Walker2dRandParams": 17}
DT = {"HalfCheetah": 0.05, "Ant": 0.05, "Hopper": 0.008, "Walker2d": 0.008}

#: Two tasks per reward family, for "same state, same action, two tasks".
TWO_TASKS = {
    "HalfCheetahVel": (VelocityTask(velocity=0.3), VelocityTask(velocity=1.9)),
    "HalfCheetahDir": (DirectionTask(direction=1), DirectionTask(direction=-1)),
    "AntVel": (VelocityTask(velocity=0.5), VelocityTask(velocity=2.5)),
    "AntDir": (DirectionTask(direction=1), DirectionTask(direction=-1)),
    "AntDir2D": (Direction2DTask(direction=(0.6, 0.8)),
                 Direction2DTask(direction=(math.cos(4.0), math.sin(4.0)))),
    "AntGoal": (GoalTask(goal=(2.0, -1.0)), GoalTask(goal=(-2.5, 2.5))),
}


def _dt(name: str) -> float:
    return next(v for k, v in DT.items() if name.startswith(k))


def _task_term(name: str, task, v_xy: np.ndarray, xy_after: np.ndarray) -> float:
    """The task-dependent reward term, written from the definitions."""
    if name == "HalfCheetahVel":
        return -abs(v_xy[0] - task.velocity)
    if name in ("HalfCheetahDir", "AntDir"):
        return task.direction * v_xy[0]
    if name == "AntVel":
        return -abs(v_xy[0] - task.velocity) + 1.0
    if name == "AntDir2D":
        return task.direction[0] * v_xy[0] + task.direction[1] * v_xy[1]
    if name == "AntGoal":
        return -(abs(xy_after[0] - task.goal[0]) + abs(xy_after[1] - task.goal[1])) + 4.0
    if name in RAND_PARAMS:
        return v_xy[0] + 1.0
    raise AssertionError(name)


def _position(name: str, data) -> np.ndarray:
    """What the family measures velocity on: root x joint (planar robots) or torso frame (ant)."""
    if name.startswith("Ant"):
        return data.body("torso").xpos[:2].copy()
    return np.array([data.qpos[0], 0.0])


def _hand_reward(name: str, task, before: np.ndarray, data, action: np.ndarray) -> tuple:
    after = _position(name, data)
    v_xy = (after - before) / _dt(name)
    c = float(np.sum(np.square(action)))
    if name in CHEETAH:
        return _task_term(name, task, v_xy, after) - 0.05 * c, 0.0
    if name in ANT:
        k = float(np.sum(np.square(np.clip(data.cfrc_ext, -1.0, 1.0))))
        return _task_term(name, task, v_xy, after) - 0.005 * c - 0.0005 * k + 0.05, k
    return _task_term(name, task, v_xy, after) - 1e-3 * c, 0.0


def _hand_obs(name: str, data) -> np.ndarray:
    if name in CHEETAH:
        return np.concatenate([data.qpos[1:], data.qvel])
    if name in ANT:
        return np.concatenate([data.qpos[2:], data.qvel,
                               np.clip(data.cfrc_ext[1:], -1.0, 1.0).ravel()])
    return np.concatenate([data.qpos[1:], np.clip(data.qvel, -10.0, 10.0)])


def _hand_healthy(name: str, data) -> bool:
    if name in CHEETAH:
        return True
    if name in ANT:
        return 0.2 <= data.qpos[2] <= 1.0
    z, angle = data.qpos[1], data.qpos[2]
    if name == "HopperRandParams":
        state = np.concatenate([data.qpos, data.qvel])[2:]
        return bool(np.all(np.abs(state) < 100.0) and z > 0.7 and abs(angle) < 0.2)
    return 0.8 < z < 2.0 and -1.0 < angle < 1.0


def _check_rollout(name: str, env, task, actions) -> tuple[list, list, int]:
    """Step ``actions`` (resetting on episode end) and compare every step to hand computation."""
    u = env.unwrapped
    env.reset(seed=0)
    rewards, observations, terminations, contact_seen = [], [], 0, 0.0
    for a in actions:
        before = _position(name, u.data)
        obs, reward, terminated, truncated, info = env.step(a)
        expected, k = _hand_reward(name, task, before, u.data, a)
        contact_seen = max(contact_seen, k)
        assert abs(reward - expected) < TOL, (reward, expected)
        assert isinstance(reward, float)
        assert obs.shape == (OBS_DIM[name],)
        np.testing.assert_array_equal(obs, _hand_obs(name, u.data))
        assert terminated == (not _hand_healthy(name, u.data))
        assert truncated is False and info["unstable"] is False
        rewards.append(reward)
        observations.append(obs)
        if terminated:
            terminations += 1
            env.reset()
    if name in ANT:
        assert contact_seen > 0.0  # the contact term was exercised
    return rewards, observations, terminations


def _actions(n: int, dim: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1.0, 1.0, size=dim) for _ in range(n)]


# --- rewards, observations, terminations ------------------------------------------------------
@pytest.mark.parametrize("name", MUJOCO_FAMILIES)
def test_reward_obs_termination_match_hand_computation(name):
    env = make(name)
    u = env.unwrapped
    assert math.isclose(u.dt, _dt(name), rel_tol=1e-12)
    task = u.sample_tasks(1, np.random.default_rng(1))[0]
    u.set_task(task)
    n = 120 if name in RAND_PARAMS else 30
    _, _, terminations = _check_rollout(name, env, task, _actions(n, env.action_space.shape[0]))
    if name in RAND_PARAMS:
        assert terminations > 0  # random actions make the robots fall: both branches checked


@pytest.mark.parametrize("name", list(TWO_TASKS))
def test_set_task_changes_reward_exactly_as_the_formula(name):
    env = make(name)
    actions = _actions(25, env.action_space.shape[0], seed=3)
    results = []
    for task in TWO_TASKS[name]:
        env.unwrapped.set_task(task)
        results.append(_check_rollout(name, env, task, actions))
    (r1, o1, _), (r2, o2, _) = results
    for a, b in zip(o1, o2):  # same states: the task does not touch the dynamics
        np.testing.assert_array_equal(a, b)
    assert max(abs(x - y) for x, y in zip(r1, r2)) > 0.1


def test_cheetah_reward_difference_between_tasks_is_the_task_term():
    env = make("HalfCheetahVel")
    u = env.unwrapped
    a = np.full(6, 0.5)
    out = []
    for v in (0.0, 2.0):
        u.set_task(VelocityTask(velocity=v))
        env.reset(seed=4)
        x0 = u.data.qpos[0]
        _, reward, *_ = env.step(a)
        out.append((reward, (u.data.qpos[0] - x0) / 0.05))
    (r0, vx), (r2, vx2) = out
    assert vx == vx2
    assert abs((r2 - r0) - (-abs(vx - 2.0) + abs(vx))) < TOL


def test_ant_terminates_when_torso_leaves_height_range():
    env = make("AntVel", task=VelocityTask(velocity=1.0))
    u = env.unwrapped
    env.reset(seed=0)
    assert u._healthy_z_range == (0.2, 1.0)
    qpos, qvel = u.init_qpos.copy(), np.zeros(u.model.nv)
    qpos[2] = 1.6  # above the range: still above 1.0 after one 0.05 s step of falling
    u.set_state(qpos, qvel)
    before = _position("AntVel", u.data)
    a = np.full(8, 0.3)
    _, reward, terminated, truncated, _ = env.step(a)
    assert u.data.qpos[2] > 1.0 and terminated and not truncated
    expected, _ = _hand_reward("AntVel", u.get_task(), before, u.data, a)
    assert abs(reward - expected) < TOL  # the leaving step still pays the full reward
    env.reset(seed=0)
    _, _, terminated, _, _ = env.step(np.zeros(8))
    assert 0.2 <= u.data.qpos[2] <= 1.0 and not terminated


def test_cheetah_never_terminates_and_truncates_at_horizon():
    env = make("HalfCheetahDir")
    env.reset(seed=0)
    for t in range(1, 201):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        assert not terminated
        assert truncated == (t == 200)


@pytest.mark.parametrize("name", MUJOCO_FAMILIES)
def test_default_task(name):
    u = make(name).unwrapped
    expected = {
        "HalfCheetahVel": VelocityTask(velocity=1.0),
        "HalfCheetahDir": DirectionTask(direction=1),
        "AntVel": VelocityTask(velocity=1.5),
        "AntDir": DirectionTask(direction=1),
        "AntDir2D": Direction2DTask(direction=(1.0, 0.0)),
        "AntGoal": GoalTask(goal=(0.0, 0.0)),
    }.get(name)
    if expected is None:  # RandParams: all ones with the model's lengths
        m = u.model
        expected = DynamicsTask(body_mass=(1.0,) * m.nbody, body_inertia=(1.0,) * (3 * m.nbody),
                                geom_friction=(1.0,) * (3 * m.ngeom), dof_damping=(1.0,) * m.nv)
    assert u.get_task() == expected


@pytest.mark.parametrize("name", MUJOCO_FAMILIES)
def test_constructor_accepts_only_task_and_render_options(name):
    with pytest.raises(TypeError):
        make(name, ctrl_cost_weight=1.0)
    with pytest.raises(TypeError):
        make(name, frame_skip=1)
    env = make(name, render_mode="rgb_array", width=64, height=64)
    assert env.unwrapped.render_mode == "rgb_array"
    clone = pickle.loads(pickle.dumps(env.unwrapped))
    assert clone.render_mode == "rgb_array"


# --- RandParams -------------------------------------------------------------------------------
PARAMS = ("body_mass", "body_inertia", "geom_friction", "dof_damping")
DERIVED = ("body_subtreemass", "body_invweight0", "dof_invweight0")


def _model_arrays(model, names=PARAMS) -> dict[str, np.ndarray]:
    return {n: getattr(model, n).copy() for n in names}


@pytest.mark.parametrize("name", RAND_PARAMS)
def test_rand_params_scale_original_values_without_compounding(name):
    original = _model_arrays(make(name).unwrapped.model, PARAMS + DERIVED)
    env = make(name)
    u = env.unwrapped
    t1, t2 = u.sample_tasks(2, np.random.default_rng(0))

    def expect(task):
        for p in PARAMS:
            mult = np.asarray(getattr(task, p)).reshape(original[p].shape)
            np.testing.assert_array_equal(getattr(u.model, p), original[p] * mult)

    for _ in range(2):  # setting the same task twice does not compound
        u.set_task(t1)
        expect(t1)
    u.set_task(t2)
    expect(t2)
    # derived constants are recomputed (mj_setConst): the world's subtree mass is the total mass
    assert u.model.body_subtreemass[0] == pytest.approx(u.model.body_mass.sum(), rel=1e-12)
    assert not np.allclose(u.model.body_subtreemass, original["body_subtreemass"])
    assert not np.allclose(u.model.dof_invweight0, original["dof_invweight0"])
    # back to the default task: the original model, derived constants included
    u.set_task(u.default_task())
    for p in PARAMS:
        np.testing.assert_array_equal(getattr(u.model, p), original[p])
    for p in DERIVED:
        np.testing.assert_allclose(getattr(u.model, p), original[p], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", RAND_PARAMS)
def test_rand_params_task_survives_reset_pickle_and_keeps_state(name):
    env = make(name)
    u = env.unwrapped
    task = u.sample_tasks(1, np.random.default_rng(2))[0]
    env.reset(seed=0)
    env.step(np.full(env.action_space.shape, 0.2))
    qpos, qvel = u.data.qpos.copy(), u.data.qvel.copy()
    u.set_task(task)  # mid-episode: the simulation state is kept
    np.testing.assert_array_equal(u.data.qpos, qpos)
    np.testing.assert_array_equal(u.data.qvel, qvel)
    arrays = _model_arrays(u.model)
    env.reset(seed=5)
    for p in PARAMS:
        np.testing.assert_array_equal(getattr(u.model, p), arrays[p])
    for obj in (env, u):
        clone = pickle.loads(pickle.dumps(obj)).unwrapped
        for p in PARAMS:
            np.testing.assert_array_equal(getattr(clone.model, p), arrays[p])


@pytest.mark.parametrize("name", RAND_PARAMS)
def test_rand_params_different_tasks_give_different_dynamics(name):
    env = make(name)
    u = env.unwrapped
    actions = _actions(10, env.action_space.shape[0], seed=1)
    trajectories = []
    for task in [u.default_task()] + u.sample_tasks(2, np.random.default_rng(4)):
        u.set_task(task)
        env.reset(seed=0)
        trajectories.append(np.array([env.step(a)[0] for a in actions]))
    # same start state (the reset does not depend on the task) ...
    env.reset(seed=0)
    start = u.state_vector().copy()
    u.set_task(u.default_task())
    env.reset(seed=0)
    np.testing.assert_array_equal(u.state_vector(), start)
    # ... but different dynamics
    assert not np.allclose(trajectories[0], trajectories[1])
    assert not np.allclose(trajectories[1], trajectories[2])
    # and the same task twice gives the same trajectory
    u.set_task(u.sample_tasks(2, np.random.default_rng(4))[0])
    env.reset(seed=0)
    np.testing.assert_array_equal(np.array([env.step(a)[0] for a in actions]), trajectories[1])


@pytest.mark.parametrize("name", RAND_PARAMS)
def test_rand_params_extreme_valid_task_runs(name):
    env = make(name)
    u = env.unwrapped
    lengths = {p: len(getattr(u.default_task(), p)) for p in PARAMS}
    lightest = DynamicsTask(**{p: ((1.3 if p == "dof_damping" else 1.5) ** -6,) * n
                               for p, n in lengths.items()})
    u.set_task(lightest)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(100):
        action = rng.choice([-5.0, 5.0], size=env.action_space.shape)
        obs, reward, terminated, truncated, info = env.step(action)
        assert np.all(np.isfinite(obs)) and np.isfinite(reward)
        if terminated or truncated:
            env.reset()


# --- diverged simulation ----------------------------------------------------------------------
def _assert_unstable_step(result):
    obs, reward, terminated, truncated, info = result
    assert info["unstable"] is True
    assert reward == 0.0 and terminated is False and truncated is True
    assert np.all(np.isfinite(obs))
    for key, value in info.items():
        if isinstance(value, (float, np.floating, np.ndarray)):
            assert np.all(np.isfinite(value)), key


@pytest.mark.parametrize("name", MUJOCO_FAMILIES)
def test_diverged_simulation_is_flagged_not_raised(name):
    env = make(name)
    u = env.unwrapped
    zero = np.zeros(env.action_space.shape)
    env.reset(seed=0)
    bad_acc = mujoco.mjtWarning.mjWARN_BADQACC
    # huge velocities: MuJoCo detects a bad acceleration and silently resets the state
    u.set_state(u.data.qpos.copy(), np.full(u.model.nv, 1e9))
    _assert_unstable_step(env.step(zero))
    assert u.data.warning[bad_acc].number > 0
    # MuJoCo left a finite (reset) state: stepping on from it is a normal step again
    obs, reward, terminated, truncated, info = env.step(zero)
    assert info["unstable"] is False and not truncated and np.isfinite(reward)
    # a second blow-up without reset (the counter already non-zero) is still detected
    u.set_state(u.data.qpos.copy(), np.full(u.model.nv, 1e9))
    _assert_unstable_step(env.step(zero))
    # a NaN state
    qvel = u.data.qvel.copy()
    qvel[0] = np.nan
    u.data.qvel[:] = qvel
    _assert_unstable_step(env.step(zero))
    # then everything is normal again after a reset
    env.reset(seed=1)
    obs, reward, terminated, truncated, info = env.step(zero)
    assert info["unstable"] is False and np.isfinite(reward) and not truncated
