"""sample_episodes(..., sampler="native"): whole episodes in the simulator's native loop, the
policy evaluated there. With a policy whose mean C and torch compute alike (constant) it gives
the stepwise sampler's episodes bit for bit, waves and per-task parameters included; with a
real MLP the same distribution of returns. The loop itself: tests/envs/test_native_episodes.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.policies import CategoricalMLPPolicy, GaussianMLPPolicy
from envs import native as envs_native
from envs.mujoco_batch import MujocoBatchEnv
from envs.registry import FAMILIES, make
from envs.vector import SyncTaskVectorEnv
from meta.sampler import native_mlp, sample_episodes

pytestmark = pytest.mark.skipif(envs_native.library() is None,
                                reason=f"native loop unavailable: "
                                       f"{envs_native.unavailable_reason()}")

MUJOCO_FAMILIES = [s.name for s in FAMILIES if s.mujoco]
FIELDS = ("observations", "actions", "rewards", "mask", "log_probs", "last_observations",
          "truncated", "unstable")


def tasks_of(name: str, n: int, seed: int = 0) -> list:
    return make(name).unwrapped.sample_tasks(n, np.random.default_rng(seed))


def constant_mean(policy: GaussianMLPPolicy, k: int | None = None) -> dict[str, torch.Tensor]:
    """Zero weights, random output bias: the mean is the bias, exactly, in C as in torch (the
    hidden layers then compute the same zeros), so only the noise moves the actions."""
    gen = torch.Generator().manual_seed(7)
    shape = lambda p: p.shape if k is None else (k, *p.shape)  # noqa: E731
    params = {name: torch.zeros(shape(p)) for name, p in policy.named_parameters()}
    last = max(name for name in params if name.endswith(".bias"))
    params[last] = torch.empty(params[last].shape).uniform_(-0.5, 0.5, generator=gen)
    params["log_std"] = torch.empty(params["log_std"].shape).uniform_(-1, 0, generator=gen)
    return params


def both(name: str, tasks: list, e: int, params, policy, sim_envs: int | None = None,
         per_task: bool = False, seed: int = 21):
    venv = MujocoBatchEnv(name, sim_envs or len(tasks) * e, horizon=120, num_threads=2,
                          min_envs_per_thread=1)
    try:
        a = sample_episodes(venv, policy, params, tasks, e, seed, per_task_params=per_task)
        b = sample_episodes(venv, policy, params, tasks, e, seed, per_task_params=per_task,
                            sampler="native")
    finally:
        venv.close()
    return a, b


def assert_same(a, b) -> None:
    for field in FIELDS:
        x, y = getattr(a, field), getattr(b, field)
        assert x.shape == y.shape and x.dtype == y.dtype, field
        assert torch.equal(x, y), field


@pytest.mark.parametrize("name", MUJOCO_FAMILIES)
def test_with_a_constant_mean_the_native_episodes_are_the_stepwise_ones(name):
    """Everything but the MLP's arithmetic is shared: resets, noise, the environment, the
    recorded steps and their conventions after an episode's end (Ant, Hopper and Walker end
    early here), the log-probabilities."""
    tasks, e = tasks_of(name, 3, seed=3), 3
    venv = MujocoBatchEnv(name, 1)
    policy = GaussianMLPPolicy(venv.observation_space.shape[0], venv.action_space.shape[0],
                               (16, 8))
    venv.close()
    a, b = both(name, tasks, e, constant_mean(policy), policy)
    assert_same(a, b)
    lengths = a.mask.sum(1)  # [N, E] steps of every episode, of the horizon's 120
    assert (lengths > 5).all()
    assert (lengths < 120).any() == ("HalfCheetah" not in name)  # the others fall here


@pytest.mark.parametrize("name", ["HalfCheetahVel", "HopperRandParams"])
def test_with_a_constant_mean_waves_and_per_task_parameters_too(name):
    tasks, e = tasks_of(name, 4, seed=1), 16
    venv = MujocoBatchEnv(name, 1)
    policy = GaussianMLPPolicy(venv.observation_space.shape[0], venv.action_space.shape[0],
                               (16,), activation="tanh")
    venv.close()
    params = constant_mean(policy, k=4)
    one_wave = both(name, tasks, e, params, policy, per_task=True)
    two_waves = both(name, tasks, e, params, policy, sim_envs=2 * e, per_task=True)
    assert_same(*one_wave)
    assert_same(*two_waves)
    assert_same(one_wave[1], two_waves[1])
    assert (one_wave[0].mask.sum(1) < 120).any() == (name == "HopperRandParams")  # early ends
    returns = (one_wave[1].rewards.sum(1) / e).sum(-1)  # per task: the parameters differ
    assert len(set(returns.tolist())) == 4


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_with_a_real_mlp_the_returns_are_the_stepwise_ones_within_their_standard_error(
        activation):
    """HalfCheetahVel, 4 tasks x 16 episodes of 120 steps, a random 2 x 64 MLP. The first
    actions (same observations) agree to float32 rounding; the trajectories then part (chaotic
    dynamics, once a mean differs in its last bits), but the mean returns agree within three
    standard errors of their difference."""
    name, tasks, e = "HalfCheetahVel", tasks_of("HalfCheetahVel", 4, seed=2), 16
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(17, 6, (64, 64), activation=activation, init_std=0.5)
    params = {k: v.detach() for k, v in policy.named_parameters()}
    a, b = both(name, tasks, e, params, policy)
    torch.testing.assert_close(a.actions[:, 0], b.actions[:, 0], rtol=1e-5, atol=1e-5)
    ra, rb = a.rewards.sum(1).flatten(), b.rewards.sum(1).flatten()  # [64] episode returns
    se = torch.sqrt(ra.var() / len(ra) + rb.var() / len(rb))
    assert abs(ra.mean() - rb.mean()) < 3 * se, (ra.mean(), rb.mean(), se)
    torch.testing.assert_close(b.log_probs, policy.log_prob(policy(b.observations), b.actions))


def test_what_the_native_sampler_cannot_run_is_refused_with_a_reason():
    name, tasks = "HalfCheetahVel", tasks_of("HalfCheetahVel", 2)
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(17, 6, (8,))
    params = {k: v.detach() for k, v in policy.named_parameters()}
    venv = MujocoBatchEnv(name, 4, horizon=5)
    python_loop = MujocoBatchEnv(name, 4, horizon=5, native=False)
    sync = SyncTaskVectorEnv(name, 4)
    try:
        with pytest.raises(ValueError, match="unknown sampler"):
            sample_episodes(venv, policy, params, tasks, 2, 0, sampler="c")
        for other in (python_loop, sync):
            with pytest.raises(ValueError, match="MujocoBatchEnv with the native loop"):
                sample_episodes(other, policy, params, tasks, 2, 0, sampler="native")
        with pytest.raises(ValueError, match="float32 parameters on the CPU"):
            sample_episodes(venv, policy.double(), {k: v.double() for k, v in params.items()},
                            tasks, 2, 0, sampler="native")
        categorical = CategoricalMLPPolicy(17, 3, (8,))
        with pytest.raises(ValueError, match="runs a GaussianMLPPolicy"):
            native_mlp(categorical, dict(categorical.named_parameters()), False)
        policy.float().mean.append(torch.nn.Softplus())
        with pytest.raises(ValueError, match="Linear layers with ReLU or Tanh"):
            native_mlp(policy, params, False)
    finally:
        venv.close()
        python_loop.close()
        sync.close()
