"""Whole episodes in the native loop (MujocoBatchEnv.run_episodes, mjb_episodes in
envs/mjbatch.c): the environment is the one `step` simulates, bit for bit, and the actions are
the policy's, to float32 rounding. The sampler built on it: tests/meta/test_native_sampler.py."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest
import torch

from agents.policies import GaussianMLPPolicy
from envs import native as envs_native
from envs.mujoco_batch import MujocoBatchEnv, _check_native_ends, _warning_stats
from envs.registry import FAMILIES, make
from meta.sampler import native_mlp

pytestmark = pytest.mark.skipif(envs_native.library() is None,
                                reason=f"native loop unavailable: "
                                       f"{envs_native.unavailable_reason()}")

MUJOCO_FAMILIES = [s.name for s in FAMILIES if s.mujoco]


def policy_for(venv: MujocoBatchEnv, activation: str, seed: int = 0) -> GaussianMLPPolicy:
    torch.manual_seed(seed)
    return GaussianMLPPolicy(venv.observation_space.shape[0], venv.action_space.shape[0],
                             hidden_sizes=(32, 16), activation=activation, init_std=0.7)


def per_task(policy: GaussianMLPPolicy, k: int) -> dict[str, torch.Tensor]:
    """``k`` different parameter sets ``[k, ...]`` around the policy's own."""
    gen = torch.Generator().manual_seed(1)
    return {name: p.detach() + 0.1 * torch.randn((k, *p.shape), generator=gen)
            for name, p in policy.named_parameters()}


def replay(name: str, tasks: list, seed: int, actions: torch.Tensor, running: torch.Tensor,
           corrupt=None) -> list:
    """Step a Python-loop simulator with the given actions ``[T, B, A]`` while it runs."""
    venv = MujocoBatchEnv(name, len(tasks), horizon=actions.shape[0], native=False)
    try:
        venv.set_tasks(tasks)
        venv.reset(seed=seed)
        if corrupt:
            corrupt(venv)
        steps = []
        for t in range(actions.shape[0]):
            acts = torch.where(running[t][:, None], actions[t], torch.zeros_like(actions[t]))
            steps.append(venv.step(acts))
        return steps
    finally:
        venv.close()


@pytest.mark.parametrize("name", MUJOCO_FAMILIES)
def test_run_episodes_is_the_stepped_environment_with_the_policys_actions(name):
    """Six envs, three parameter sets, the policy in the native loop for 80 steps; then a
    Python-loop simulator stepped with the actions it took gives every step's observation,
    reward, termination, truncation and divergence flag bit for bit (so the environment is
    the same), and every action is the torch policy's mean + std * noise on the observation
    it was taken at, within float32 rounding (so the policy is the same)."""
    horizon, k, e = 80, 3, 2
    tasks = [task for task in make(name).unwrapped.sample_tasks(k, np.random.default_rng(2))
             for _ in range(e)]
    venv = MujocoBatchEnv(name, k * e, horizon=horizon, num_threads=2, min_envs_per_thread=1)
    try:
        policy = policy_for(venv, "tanh" if "Ant" in name else "relu")
        params = per_task(policy, k)
        task_of = np.repeat(np.arange(k), e)
        noise = torch.randn((horizon, k * e, venv.action_space.shape[0]),
                            generator=torch.Generator().manual_seed(3))
        venv.set_tasks(tasks)
        obs0 = venv.reset(seed=11)
        out = venv.run_episodes(native_mlp(policy, params, True), task_of, noise.numpy())
    finally:
        venv.close()
    steps = replay(name, tasks, 11, out.actions, out.running)
    for t, step in enumerate(steps):
        for field in ("observations", "rewards", "terminated", "truncated", "unstable"):
            assert torch.equal(getattr(out.steps, field)[t], getattr(step, field)), (t, field)
    assert out.running[0].all()
    for t in range(1, horizon):  # an env runs until its episode's end, then stays frozen
        ended = out.steps.terminated[t - 1] | out.steps.truncated[t - 1]
        assert torch.equal(out.running[t], out.running[t - 1] & ~ended)
    assert out.steps.truncated[-1][out.running[-1]].all()  # the horizon ends the others
    # the loop's own checks (divergence, finite state, health) end each episode at the step
    # its outcomes do: none stepped on past its end
    assert torch.equal(out.native_steps, out.running.sum(0))
    obs = torch.cat((obs0[None], out.steps.observations[:-1]))  # what each action saw
    with torch.no_grad():
        mean = torch.func.vmap(lambda p, o: torch.func.functional_call(policy, p, (o,))[0],
                               in_dims=(0, 1), out_dims=1)(params, obs.reshape(
                                   horizon, k, e, -1)).reshape(horizon, k * e, -1)
    std = torch.exp(params["log_std"]).repeat_interleave(e, dim=0)
    expected = mean + std * noise
    run = out.running
    torch.testing.assert_close(out.actions[run], expected[run], rtol=1e-5, atol=1e-5)
    assert run.sum() > k * e * 5  # the episodes went on for a while


@pytest.mark.parametrize("name", ["HalfCheetahVel", "AntDir", "Walker2dRandParams"])
def test_a_diverged_env_ends_unstable_and_the_others_go_on(name):
    horizon, n = 20, 3

    def corrupt(venv):
        venv._datas[1].qvel[:] = 1e12

    venv = MujocoBatchEnv(name, n, horizon=horizon, num_threads=2, min_envs_per_thread=1)
    try:
        policy = policy_for(venv, "relu")
        params = {k: v.detach() for k, v in policy.named_parameters()}
        noise = np.zeros((horizon, n, venv.action_space.shape[0]), dtype=np.float32)
        venv.reset(seed=4)
        corrupt(venv)
        out = venv.run_episodes(native_mlp(policy, params, False), np.zeros(n, np.int64), noise)
    finally:
        venv.close()
    assert out.steps.unstable[0].tolist() == [False, True, False]
    assert out.steps.truncated[0].tolist() == [False, True, False]
    assert out.steps.rewards[0, 1] == 0 and torch.isfinite(out.steps.observations).all()
    assert not out.running[1:, 1].any() and out.running[1:5, [0, 2]].all()
    steps = replay(name, venv.get_tasks(), 4, out.actions, out.running, corrupt)
    for t, step in enumerate(steps):
        assert torch.equal(out.steps.observations[t], step.observations), t
        assert torch.equal(out.steps.rewards[t], step.rewards), t


def test_run_episodes_needs_a_reset_the_native_loop_and_finite_actions():
    venv = MujocoBatchEnv("HalfCheetahVel", 4, horizon=10, num_threads=2, min_envs_per_thread=1)
    python_loop = MujocoBatchEnv("HalfCheetahVel", 4, horizon=10, native=False)
    try:
        policy = policy_for(venv, "relu")
        params = {k: v.detach().clone() for k, v in policy.named_parameters()}
        mlp, zeros = native_mlp(policy, params, False), np.zeros(4, np.int64)
        noise = np.zeros((10, 4, 6), dtype=np.float32)
        with pytest.raises(RuntimeError, match="call reset"):
            venv.run_episodes(mlp, zeros, noise)
        python_loop.reset(seed=0)
        with pytest.raises(RuntimeError, match="native stepping loop"):
            python_loop.run_episodes(mlp, zeros, noise)
        venv.reset(seed=0)
        with pytest.raises(ValueError, match="expected noise"):
            venv.run_episodes(mlp, zeros, noise[:, :3])
        with pytest.raises(ValueError, match="index the 1 parameter sets"):
            venv.run_episodes(mlp, zeros + 1, noise)
        with pytest.raises(ValueError, match="task_of must hold integers"):
            venv.run_episodes(mlp, zeros + 0.7, noise)
        for layer in ("mean.0.bias", "mean.4.bias"):  # a NaN in a hidden or the last layer
            venv.reset(seed=0)
            broken = {k: v.clone() for k, v in params.items()}
            broken[layer][2] = float("nan")
            with pytest.raises(ValueError, match=r"action of env 0 must be finite"):
                venv.run_episodes(native_mlp(policy, broken, False), zeros, noise)
        venv.reset(seed=0)  # only the second parameter set's envs (2 and 3) act NaN
        sets = {k: torch.stack([v, v.clone()]) for k, v in params.items()}
        sets["mean.2.weight"][1, 0, 0] = float("inf")
        with pytest.raises(ValueError, match=r"action of env 2 must be finite"):
            venv.run_episodes(native_mlp(policy, sets, True), np.array([0, 0, 1, 1]), noise)
        with pytest.raises(RuntimeError, match="call reset"):  # a failed call needs a reset
            venv.run_episodes(mlp, zeros, noise)
        venv.reset(seed=0)
        out = venv.run_episodes(mlp, zeros, noise)  # then it runs again
        assert out.running.all() and out.steps.truncated[-1].all()
        assert not venv.step(torch.zeros(4, 6)).observations.any()  # all frozen afterwards
    finally:
        venv.close()
        python_loop.close()


def test_a_mujoco_fatal_error_in_an_episode_raises_naming_the_env(overflow_model):
    model = overflow_model
    datas = [mujoco.MjData(model) for _ in range(3)]
    fields = {"qpos": [d.qpos for d in datas], "qvel": [d.qvel for d in datas],
              "warning": [_warning_stats(d) for d in datas]}
    stepper = envs_native.Stepper(envs_native.library(), 2, [model] * 3, datas,
                                  [d.ctrl for d in datas], fields, nstep=1, contacts=False)
    mlp = envs_native.NativeMLP([np.zeros((1, 4, 0), np.float32)],
                                [np.zeros((1, 0), np.float32)], False, np.ones((1, 0), np.float32))
    end = envs_native.EpisodeEnd(("warning", []), ("qpos",), [])
    try:
        with pytest.raises(RuntimeError, match=r"MuJoCo error stepping env \d: .*stack overflow"):
            stepper.episodes(2, 1, 500, [envs_native.Segment("qpos", 0, 4)], end, mlp,
                             np.zeros(3, np.int64), np.zeros((500, 3, 0), np.float32))
    finally:
        stepper.close()


def test_a_non_finite_action_counts_only_in_a_running_episode():
    """The loop stops an env before applying a non-finite action; that is an error only if the
    env's episode was still running then (an episode that its outcomes ended earlier, and the
    loop's checks did not, may meet one harmlessly)."""
    steps, length = np.array([5, 3, 7]), np.array([5, 4, 7])
    _check_native_ends(steps, length, np.array([1, 1, 0], np.uint8))  # env 0: after its end
    with pytest.raises(ValueError, match="action of env 1 must be finite"):
        _check_native_ends(np.array([5, 5, 7]), length, np.array([0, 1, 0], np.uint8))
    with pytest.raises(RuntimeError, match="ended env 2's episode after 7 steps"):
        _check_native_ends(np.array([5, 4, 9]), length, np.zeros(3, np.uint8))


def test_the_loop_refuses_what_it_would_read_out_of_bounds():
    venv = MujocoBatchEnv("AntVel", 2, horizon=5, num_threads=1)
    try:
        policy = policy_for(venv, "relu")
        mlp = native_mlp(policy, {k: v.detach() for k, v in policy.named_parameters()}, False)
        stepper, segments = venv._stepper, venv._robot.segments()
        end = envs_native.EpisodeEnd(("warning", venv._views.warning_ids), ("qpos",), [])
        args = (np.zeros(2, np.int64), np.zeros((5, 2, 8), np.float32))
        bad_segment = [*segments[:-1], segments[-1]._replace(count=segments[-1].count + 6)]
        cases = [
            (bad_segment, end, "exceeds field 'cfrc'"),
            (segments, end._replace(checks=[envs_native.Check("qpos", 15, 0, 1)]),
             "exceeds field 'qpos'"),
            (segments, end._replace(finite=("warning",)), "'warning' is int32"),
            (segments, end._replace(warning=("warning", [0] * 17)), "at most 16"),
            (segments, end._replace(warning=("warning", [99])), "must be int32"),
            ([*segments, envs_native.Segment("nothing", 0, 1)], end, "no gathered field"),
        ]
        for observation, what_ends, message in cases:
            with pytest.raises(ValueError, match=message):
                stepper.episodes(1, 1, 5, observation, what_ends, mlp, *args)
        with pytest.raises(ValueError, match="the envs need 27 -> 8"):
            stepper.episodes(1, 1, 5, segments[:2], end, mlp, *args)
        venv.reset(seed=0)  # none of those touched the envs
        assert venv.run_episodes(mlp, *args).running[0].all()
    finally:
        venv.close()
