"""The batched MuJoCo simulator (envs/mujoco_batch.py) against the single registered env and
the reference SyncTaskVectorEnv: identical steps along real trajectories, identical sampled
episodes, per-env RandParams models, divergence, threads, argument checks."""

from __future__ import annotations

import threading

import mujoco
import numpy as np
import pytest
import torch

from agents.policies import GaussianMLPPolicy
from envs import native as envs_native
from envs.mujoco_batch import FASTER_FROM_ENVS, THREAD_PREFIX, MujocoBatchEnv
from envs.registry import FAMILIES, make
from envs.tasks import TaskError, VelocityTask
from envs.vector import SyncTaskVectorEnv, make_vector_env
from meta.sampler import sample_episodes

MUJOCO_FAMILIES = [s.name for s in FAMILIES if s.mujoco]
RAND_PARAMS = ["HopperRandParams", "Walker2dRandParams"]
#: Both stepping loops: Python (``native=False``) and C (``envs/mjbatch.c``, ``native=True``;
#: skipped only where no C compiler could build it: ``make install`` builds it, so CI runs it).
LOOPS = [pytest.param(False, id="python"),
         pytest.param(True, id="native", marks=pytest.mark.skipif(
             envs_native.library() is None,
             reason=f"native loop unavailable: {envs_native.unavailable_reason()}"))]


def tasks_of(name: str, n: int, seed: int = 0) -> list:
    return make(name).unwrapped.sample_tasks(n, np.random.default_rng(seed))


def env_seeds(seed: int, n: int) -> list[int]:
    """The per-env reset seeds of SyncTaskVectorEnv.reset / MujocoBatchEnv.reset."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(n)]


def f32(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=torch.float32)


# --- one step from the same state, along real trajectories ----------------------------------------
@pytest.mark.parametrize("native", LOOPS)
@pytest.mark.parametrize("name", MUJOCO_FAMILIES)
def test_every_step_matches_the_registered_single_env(name, native):
    """Three envs (different tasks; big, moderate and tiny random actions) step in lockstep with
    three registered single envs (gym.make, TimeLimit included) until every episode ended: at
    every step the MuJoCo states are equal and the step gives the same observation, reward,
    termination and truncation (float32 of the single env's float64, i.e. within 1e-6)."""
    n, scales = 3, (1.3, 0.4, 0.02)  # scale > 1 checks actions beyond the box (clamped ctrl)
    tasks = tasks_of(name, n, seed=5)
    singles = [make(name, task=task) for task in tasks]
    venv = MujocoBatchEnv(name, n, num_threads=2, min_envs_per_thread=1, native=native)
    assert venv.native == native
    rng = np.random.default_rng(1)
    try:
        venv.set_tasks(tasks)
        obs = venv.reset(seed=9)
        for i, (env, s) in enumerate(zip(singles, env_seeds(9, n))):
            assert torch.equal(obs[i], f32(env.reset(seed=s)[0]))
        running = np.ones(n, dtype=bool)
        ended = {"terminated": 0, "truncated": 0}
        for t in range(venv.horizon):
            dim = venv.action_space.shape[0]
            actions = (rng.uniform(-1, 1, (n, dim)) * np.array(scales)[:, None]).astype(np.float32)
            out = venv.step(torch.as_tensor(actions))
            for i in np.flatnonzero(running):
                o, r, te, tr, info = singles[i].step(actions[i])
                data = venv._datas[i]
                single_data = singles[i].unwrapped.data
                np.testing.assert_array_equal(data.qpos, single_data.qpos)
                np.testing.assert_array_equal(data.qvel, single_data.qvel)
                assert torch.equal(out.observations[i], f32(o)), (t, i)
                assert abs(out.rewards[i].item() - r) <= 1e-6 * max(1.0, abs(r)), (t, i)
                assert out.rewards[i].item() == np.float32(r), (t, i)
                assert bool(out.terminated[i]) == te and bool(out.truncated[i]) == tr, (t, i)
                assert not out.unstable[i] and not info["unstable"]
                if te or tr:
                    running[i] = False
                    ended["terminated" if te else "truncated"] += 1
            frozen = ~running & ~(out.terminated | out.truncated).numpy()
            assert not out.observations[frozen].any() and not out.rewards[frozen].any()
            if not running.any():
                break
        assert not running.any()
        if name.startswith("HalfCheetah"):  # never terminates: all three reach the horizon
            assert ended["truncated"] == n and t + 1 == venv.horizon
        else:  # the big random actions make the robot fall
            assert ended["terminated"] >= 1
    finally:
        venv.close()
        for env in singles:
            env.close()


# --- whole episodes against SyncTaskVectorEnv -----------------------------------------------------
def small_policy(obs_dim: int, act_dim: int) -> GaussianMLPPolicy:
    torch.manual_seed(0)
    return GaussianMLPPolicy(obs_dim, act_dim, hidden_sizes=(16,), activation="tanh",
                             init_std=0.8)


@pytest.mark.parametrize("native", LOOPS)
@pytest.mark.parametrize("name", MUJOCO_FAMILIES)
def test_sampled_episodes_are_identical_to_sync(name, native):
    tasks, e = tasks_of(name, 2, seed=3), 3
    batch = MujocoBatchEnv(name, len(tasks) * e, num_threads=2, min_envs_per_thread=1,
                           native=native)
    sync = SyncTaskVectorEnv(name, len(tasks) * e)
    policy = small_policy(batch.observation_space.shape[0], batch.action_space.shape[0])
    params = {k: v.detach() for k, v in policy.named_parameters()}
    try:
        a = sample_episodes(batch, policy, params, tasks, e, seed=21)
        b = sample_episodes(sync, policy, params, tasks, e, seed=21)
    finally:
        batch.close()
        sync.close()
    for field in ("observations", "actions", "rewards", "mask", "log_probs",
                  "last_observations", "truncated", "unstable"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.shape == y.shape and x.dtype == y.dtype, field
        assert torch.equal(x, y), field
    assert a.env_steps > 0


@pytest.mark.parametrize("name", ["HalfCheetahVel", "HopperRandParams"])
def test_sampling_in_waves_gives_the_episodes_of_one_wave(name):
    """4 tasks x 8 episodes in 2 waves of 16 envs: the same tensors, bit for bit, with shared
    and with per-task parameters. Hopper terminates early and has a model per task, so its
    waves end at different steps and load other models; HalfCheetah runs to the horizon.
    (16 rows: fewer can change the policy's matrix products in the last bits, see
    meta/sampler.py's docstring.)"""
    tasks, e = tasks_of(name, 4, seed=5), 8
    horizon = 200
    one = MujocoBatchEnv(name, len(tasks) * e, horizon=horizon, num_threads=2,
                         min_envs_per_thread=1)
    wave = MujocoBatchEnv(name, 2 * e, horizon=horizon, num_threads=2, min_envs_per_thread=1)
    policy = small_policy(one.observation_space.shape[0], one.action_space.shape[0])
    shared = {k: v.detach() for k, v in policy.named_parameters()}
    per_task = {k: torch.stack([v + 0.05 * i for i in range(len(tasks))])
                for k, v in shared.items()}
    try:
        for params, per in ((shared, False), (per_task, True)):
            a = sample_episodes(one, policy, params, tasks, e, seed=9, per_task_params=per)
            b = sample_episodes(wave, policy, params, tasks, e, seed=9, per_task_params=per)
            for field in ("observations", "actions", "rewards", "mask", "log_probs",
                          "last_observations", "truncated", "unstable"):
                x, y = getattr(a, field), getattr(b, field)
                assert x.shape == y.shape and torch.equal(x, y), (field, per)
            lengths = a.mask.sum(1)  # [N, E]
            if name == "HopperRandParams":  # the two waves end at different steps
                assert lengths[:2].max() != lengths[2:].max()
            else:
                assert (lengths == horizon).all()
    finally:
        one.close()
        wave.close()


@pytest.mark.parametrize("simulator", [MujocoBatchEnv, SyncTaskVectorEnv])
def test_reset_with_an_offset_gives_the_envs_their_place_in_a_larger_batch(simulator):
    big, small = simulator("AntGoal", 6), simulator("AntGoal", 2)
    try:
        assert torch.equal(big.reset(seed=4)[4:], small.reset(seed=4, offset=4))
        assert not torch.equal(big.reset(seed=4)[:2], small.reset(seed=4, offset=4))
        with pytest.raises(ValueError, match="offset"):
            small.reset(seed=4, offset=-1)
    finally:
        big.close()
        small.close()


def test_reset_with_the_same_seed_repeats_the_episode():
    venv = MujocoBatchEnv("AntGoal", 4, num_threads=2, min_envs_per_thread=1)
    venv.set_tasks(tasks_of("AntGoal", 4))
    actions = torch.rand(5, 4, 8) * 2 - 1

    def run(seed):
        out = [venv.reset(seed=seed)]
        out += [venv.step(a).observations for a in actions]
        return torch.stack(out)

    try:
        first, again, other = run(1), run(1), run(2)
    finally:
        venv.close()
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first[1:, :, 27:].abs().sum() > 0  # the contact forces are observed, not dropped


# --- RandParams: one model per task ---------------------------------------------------------------
@pytest.mark.parametrize("name", RAND_PARAMS)
def test_rand_params_tasks_differ_per_env(name):
    a, b, c = tasks_of(name, 3, seed=8)
    venv = MujocoBatchEnv(name, 4, num_threads=2)
    try:
        venv.set_tasks([a, a, b, c])
        models = venv._models
        assert models[0] is models[1]  # one model per distinct task
        assert len({id(m) for m in models}) == 3
        for model, task in zip(models, [a, a, b, c]):
            single = make(name, task=task).unwrapped
            for field in ("body_mass", "body_inertia", "geom_friction", "dof_damping",
                          "body_subtreemass", "dof_invweight0", "body_invweight0"):
                np.testing.assert_array_equal(getattr(model, field), getattr(single.model, field))
        # same initial state and actions, different dynamics
        venv.reset(seed=0)
        for i in range(1, 4):
            mujoco.mj_resetData(models[i], venv._datas[i])
            venv._datas[i].qpos[:] = venv._datas[0].qpos
            venv._datas[i].qvel[:] = venv._datas[0].qvel
        actions = torch.full((4, venv.action_space.shape[0]), 0.5)
        obs = [venv.step(actions).observations for _ in range(3)][-1]
        assert torch.equal(obs[0], obs[1])
        assert not torch.equal(obs[1], obs[2]) and not torch.equal(obs[2], obs[3])
    finally:
        venv.close()


# --- divergence -----------------------------------------------------------------------------------
@pytest.mark.parametrize("native", LOOPS)
@pytest.mark.parametrize("name", ["HalfCheetahVel", "AntDir", "Walker2dRandParams"])
def test_a_diverged_env_ends_truncated_unstable_while_the_others_continue(name, native):
    n = 3
    venv = MujocoBatchEnv(name, n, num_threads=2, min_envs_per_thread=1, native=native)
    single = make(name).unwrapped
    try:
        venv.reset(seed=4)
        single.reset(seed=env_seeds(4, n)[1])
        venv._datas[1].qvel[:] = 1e12
        single.data.qvel[:] = 1e12
        actions = torch.zeros(n, venv.action_space.shape[0])
        out = venv.step(actions)
        o, r, te, tr, info = single.step(actions[1].numpy())
        assert out.unstable.tolist() == [False, True, False]
        assert out.truncated.tolist() == [False, True, False]
        assert not out.terminated.any()
        assert out.rewards[1].item() == r == 0.0 and info["unstable"] and tr and not te
        assert torch.equal(out.observations[1], f32(o))
        assert torch.isfinite(out.observations).all()
        later = venv.step(actions)
        assert not later.observations[1].any() and not later.unstable[1]  # frozen
        assert later.observations[[0, 2]].abs().sum(1).gt(0).all()  # the others go on
        assert not later.unstable.any()
    finally:
        venv.close()


@pytest.mark.parametrize("native", LOOPS)
def test_a_divergence_is_flagged_even_when_the_reset_raised_a_warning(native, monkeypatch):
    # MuJoCo's auto-reset of a diverged state leaves its counter at exactly 1: were the
    # counters compared with a value of 1 left by the reset, that divergence would pass unseen
    real_forward = mujoco.mj_forward

    def warning_forward(model, data):
        real_forward(model, data)
        data.warning[mujoco.mjtWarning.mjWARN_BADQVEL].number = 1

    venv = MujocoBatchEnv("HalfCheetahVel", 3, num_threads=2, min_envs_per_thread=1,
                          native=native)
    try:
        monkeypatch.setattr(mujoco, "mj_forward", warning_forward)
        venv.reset(seed=4)
        monkeypatch.undo()
        venv._datas[1].qvel[:] = 1e12
        out = venv.step(torch.zeros(3, venv.action_space.shape[0]))
        assert out.unstable.tolist() == [False, True, False]
        assert out.rewards[1].item() == 0.0
    finally:
        venv.close()


# --- threads, protocol, arguments -----------------------------------------------------------------
def batch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]


def test_threads_never_outlive_close():
    assert not batch_threads()
    venv = MujocoBatchEnv("HalfCheetahDir", 48, num_threads=3)
    venv.reset(seed=0)
    venv.step(torch.zeros(48, 6))
    assert 1 <= len(batch_threads()) <= 2  # the calling thread steps too
    venv.close()
    assert not batch_threads()
    venv.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        venv.step(torch.zeros(48, 6))
    with MujocoBatchEnv("HopperRandParams", 32, num_threads=2) as other:
        other.reset(seed=0)
        other.step(torch.zeros(32, 3))
        assert len(batch_threads()) == 1
    assert not batch_threads()


def test_wrong_actions_raise_value_error_before_simulating():
    venv = MujocoBatchEnv("HalfCheetahVel", 3, num_threads=2)
    try:
        obs = venv.reset(seed=0)
        for shape in [(3, 7), (2, 6), (6,), (3, 6, 1)]:
            with pytest.raises(ValueError, match="shape"):
                venv.step(torch.zeros(shape))
        bad = torch.zeros(3, 6)
        bad[1, 2] = float("nan")
        with pytest.raises(ValueError, match="finite"):
            venv.step(bad)
        assert venv._t == 0 and torch.equal(venv.reset(seed=0), obs)
    finally:
        venv.close()


def test_tasks_are_checked_by_the_single_env():
    venv = MujocoBatchEnv("HalfCheetahVel", 2, num_threads=1)
    try:
        with pytest.raises(ValueError, match="expected 2 tasks"):
            venv.set_tasks([VelocityTask(velocity=1.0)])
        with pytest.raises(TaskError):
            venv.set_tasks([VelocityTask(velocity=1.0), VelocityTask(velocity=99.0)])
        venv.set_tasks([{"velocity": 0.5}, VelocityTask(velocity=1.5)])
        assert venv.get_tasks() == [VelocityTask(velocity=0.5), VelocityTask(velocity=1.5)]
    finally:
        venv.close()


def test_horizon_truncates_and_freezes():
    venv = MujocoBatchEnv("HalfCheetahDir", 2, horizon=3, num_threads=1)
    try:
        venv.reset(seed=0)
        flags = [venv.step(torch.zeros(2, 6)).truncated.tolist() for _ in range(4)]
    finally:
        venv.close()
    assert flags == [[False, False], [False, False], [True, True], [False, False]]


def test_make_vector_env_picks_the_batched_simulator_for_mujoco_families():
    venv = make_vector_env("halfcheetah-vel", FASTER_FROM_ENVS)
    assert isinstance(venv, MujocoBatchEnv)
    venv.close()
    assert isinstance(make_vector_env("halfcheetah-vel", FASTER_FROM_ENVS - 1),
                      SyncTaskVectorEnv)  # tiny batches: no faster batched
    assert isinstance(make_vector_env("AntGoal", 2, backend="mujoco"), MujocoBatchEnv)
    assert isinstance(make_vector_env("AntGoal", 2, backend="sync"), SyncTaskVectorEnv)
    with pytest.raises(ValueError, match="mujoco backend"):
        make_vector_env("navigation-2d", 2, backend="mujoco")
    with pytest.raises(ValueError):
        MujocoBatchEnv("HalfCheetahVel", 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_episodes_on_cuda_are_identical_to_sync_on_cuda():
    tasks, e = tasks_of("AntDir2D", 2, seed=3), 8
    batch = MujocoBatchEnv("AntDir2D", len(tasks) * e, "cuda")
    sync = SyncTaskVectorEnv("AntDir2D", len(tasks) * e, "cuda")
    policy = small_policy(105, 8).to("cuda")
    params = {k: v.detach() for k, v in policy.named_parameters()}
    try:
        a = sample_episodes(batch, policy, params, tasks, e, seed=5)
        b = sample_episodes(sync, policy, params, tasks, e, seed=5)
    finally:
        batch.close()
        sync.close()
    assert a.observations.device.type == "cuda"
    assert torch.equal(a.observations, b.observations) and torch.equal(a.rewards, b.rewards)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.actions, b.actions)


def test_a_mujoco_error_in_the_python_loop_names_the_env_and_asks_for_a_reset(monkeypatch):
    """The Python loop raises the native loop's error (``RuntimeError`` naming the env, not
    ``mujoco.FatalError``); the batch, now partly stepped, refuses to step again until reset."""
    real_step = mujoco.mj_step
    with MujocoBatchEnv("HalfCheetahVel", 4, num_threads=1, native=False) as venv:
        venv.reset(seed=0)
        failing = venv._datas[2]

        def step(model, data, nstep=1):
            if data is failing:
                raise mujoco.FatalError("simulated stack overflow")
            real_step(model, data, nstep)

        monkeypatch.setattr(mujoco, "mj_step", step)
        with pytest.raises(RuntimeError, match="env 2: simulated stack overflow"):
            venv.step(torch.zeros(4, 6))
        monkeypatch.setattr(mujoco, "mj_step", real_step)
        with pytest.raises(RuntimeError, match=r"call reset\(\) first"):
            venv.step(torch.zeros(4, 6))
        venv.reset(seed=0)
        assert torch.isfinite(venv.step(torch.zeros(4, 6)).observations).all()
