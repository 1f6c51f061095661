"""Tests of meta/sampler.py on Navigation2D, and of the batched Navigation2D it usually runs on
(envs/navigation_torch.py) against the single Gymnasium env and the reference vector env."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from agents.policies import CategoricalMLPPolicy, GaussianMLPPolicy, dist_params
from envs.navigation import GOAL_TOLERANCE, MAX_STEP, Navigation2D
from envs.navigation_torch import TorchNavigation2D
from envs.tasks import GoalTask
from envs.vector import SyncTaskVectorEnv, make_vector_env
from meta.episodes import Episodes
from meta.sampler import sample_episodes, tasks_per_wave

# Task 0's goal is reached in 3 clipped steps of (0.1, 0.1) (early termination for most
# episodes); the others are far away (truncated at the horizon).
TASKS = [GoalTask(goal=(0.3, 0.3)), GoalTask(goal=(-0.4, 0.2)), GoalTask(goal=(0.5, -0.5))]
E = 4


def make_policy(bias: tuple[float, float] = (0.3, 0.3), std: float = 0.1, seed: int = 0):
    """A policy whose mean is close to ``bias`` everywhere (tiny weights)."""
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(2, 2, hidden_sizes=(8,), activation="tanh", init_std=std)
    with torch.no_grad():
        for p in policy.mean.parameters():
            p.mul_(0.01)
        policy.mean[-1].bias.copy_(torch.tensor(bias))
    return policy


def params_of(policy) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in policy.named_parameters()}


def torch_env(num_envs: int, horizon: int | None = None) -> TorchNavigation2D:
    env = TorchNavigation2D(num_envs)
    if horizon is not None:
        env.horizon = horizon
    return env


def sample(venv, policy=None, seed: int = 0, tasks=TASKS, params=None, per_task=False) -> Episodes:
    policy = policy or make_policy()
    params = params_of(policy) if params is None else params
    return sample_episodes(venv, policy, params, tasks, E, seed=seed, per_task_params=per_task)


def assert_same_episodes(a: Episodes, b: Episodes) -> None:
    for name in ("observations", "actions", "rewards", "mask", "log_probs", "last_observations",
                 "truncated", "unstable"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape and x.dtype == y.dtype, name
        assert torch.equal(x, y), name


# --- sampler ----------------------------------------------------------------------------------------
def test_torch_and_sync_simulators_give_identical_episodes():
    policy = make_policy()
    a = sample(torch_env(len(TASKS) * E), policy, seed=3)
    b = sample(SyncTaskVectorEnv("navigation-2d", len(TASKS) * E), policy, seed=3)
    assert_same_episodes(a, b)
    # the batch is not trivial: early terminations and truncations, clipped actions
    lengths = a.mask.sum(1)
    assert (lengths < a.horizon).any() and (lengths == 100).any()
    assert (a.actions.abs() > MAX_STEP).any()


def test_same_seed_same_episodes_other_seed_other_episodes():
    venv = torch_env(len(TASKS) * E)
    policy = make_policy()
    a, b = sample(venv, policy, seed=11), sample(venv, policy, seed=11)
    assert_same_episodes(a, b)
    c = sample(venv, policy, seed=12)
    assert not torch.equal(a.actions[:, :5], c.actions[:, :5])


def test_episode_shapes_and_mask_invariants():
    venv = torch_env(len(TASKS) * E, horizon=30)
    ep = sample(venv, seed=5)
    n, t = len(TASKS), ep.horizon
    assert t == 30  # task 1 and 2 run to the horizon
    assert ep.observations.shape == (n, t, E, 2) and ep.actions.shape == (n, t, E, 2)
    for name in ("rewards", "mask", "log_probs"):
        assert getattr(ep, name).shape == (n, t, E), name
    assert ep.last_observations.shape == (n, E, 2)
    assert ep.truncated.shape == ep.unstable.shape == (n, E)
    assert ep.truncated.dtype == torch.bool and not ep.unstable.any()
    assert ep.advantages is None
    assert ep.num_tasks == n and ep.episodes_per_task == E
    mask = ep.mask
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert (mask[:, 0] == 1).all()
    assert (mask[:, 1:] <= mask[:, :-1]).all()  # a prefix: once 0, always 0
    assert ep.env_steps == int(mask.sum())
    pad = mask == 0
    assert pad.any()
    assert torch.equal(ep.rewards[pad], torch.zeros_like(ep.rewards[pad]))
    assert (ep.rewards[~pad] < 0).all()


def test_episode_contents_follow_the_dynamics_and_the_policy():
    policy = make_policy()
    venv = torch_env(len(TASKS) * E, horizon=30)
    ep = sample(venv, policy, seed=6)
    lengths = ep.mask.sum(1).long()  # [N, E]
    goals = torch.tensor([t.goal for t in TASKS], dtype=torch.float64)
    for i in range(len(TASKS)):
        for e in range(E):
            n_steps = int(lengths[i, e])
            pos = np.zeros(2)
            for t in range(n_steps):
                np.testing.assert_allclose(ep.observations[i, t, e].numpy(), pos, atol=1e-6)
                pos = pos + np.clip(ep.actions[i, t, e].double().numpy(), -MAX_STEP, MAX_STEP)
                dist = np.linalg.norm(pos - goals[i].numpy())
                assert float(ep.rewards[i, t, e]) == pytest.approx(-dist, rel=1e-5, abs=1e-6)
            np.testing.assert_allclose(ep.last_observations[i, e].numpy(), pos, atol=1e-6)
            reached = bool(np.all(np.abs(pos - goals[i].numpy()) < GOAL_TOLERANCE))
            assert bool(ep.truncated[i, e]) == (not reached)
            assert reached or n_steps == 30
    # the goal-reaching task ends early, the far ones never do
    assert (lengths[0] < 30).any() and (lengths[1:] == 30).all()
    # the stored log-probs are those of the stored actions under the acting policy
    dist = dist_params(policy, params_of(policy), ep.observations)
    torch.testing.assert_close(ep.log_probs * ep.mask, policy.log_prob(dist, ep.actions) * ep.mask,
                               rtol=1e-5, atol=1e-5)


def test_per_task_parameters_are_used_per_task():
    tasks = [GoalTask(goal=(0.8, 0.8))] * 3
    toward, away, still = make_policy((1.0, 1.0)), make_policy((-1.0, -1.0)), make_policy((0.0, 0.0))
    stack = lambda ps: {k: torch.stack([params_of(p)[k] for p in ps]) for k in params_of(ps[0])}  # noqa: E731
    venv = torch_env(len(tasks) * E, horizon=20)
    ep = sample(venv, toward, seed=1, tasks=tasks, params=stack([away, toward, still]), per_task=True)
    returns = ep.episode_returns().mean(1)
    assert returns[1] > returns[2] > returns[0]
    # reordering the parameters reorders the outcome
    swapped = sample(venv, toward, seed=1, tasks=tasks, params=stack([toward, away, still]),
                     per_task=True)
    assert swapped.episode_returns().mean(1)[0] > swapped.episode_returns().mean(1)[1]
    # the actions of task i follow policy i's mean
    assert (ep.actions[1].mean((0, 1)) > 0.5).all() and (ep.actions[0].mean((0, 1)) < -0.5).all()
    # shared parameters: every task acts alike (same goal, so same return distribution)
    shared = sample(venv, toward, seed=1, tasks=tasks)
    torch.testing.assert_close(shared.episode_returns().mean(1),
                               torch.full((3,), float(returns[1])), rtol=0.05, atol=0.0)


def test_waves_give_the_episodes_of_one_wave():
    """8 tasks in 2 waves of 4 (16 envs each): the first wave's goals are reached in a few
    steps, the second's never, so the first wave is padded with frozen steps to the second's
    length, as one wave runs them."""
    near, far = [GoalTask(goal=(0.3, 0.3))] * 4, [GoalTask(goal=(-0.4, 0.2))] * 4
    tasks = near + far
    policy = make_policy()
    per_task = {k: torch.stack([v * (1 + 0.1 * i) for i in range(8)])
                for k, v in params_of(policy).items()}
    for params, per in ((None, False), (per_task, True)):
        a = sample(torch_env(8 * E, horizon=30), policy, seed=5, tasks=tasks, params=params,
                   per_task=per)
        b = sample(torch_env(4 * E, horizon=30), policy, seed=5, tasks=tasks, params=params,
                   per_task=per)
        assert_same_episodes(a, b)
        lengths = a.mask.sum(1)
        assert lengths[:4].max() < 30 and (lengths[4:] == 30).all()


class _Diverging(TorchNavigation2D):
    """Navigation2D whose envs with goal x 0.5 "diverge" once x passes 0.35: truncated and
    unstable, reward 0, then frozen, as a simulator reports a diverged state."""

    def step(self, actions):
        running = self._running.clone()
        out = super().step(actions)
        bad = (running & (self._goals[:, 0] == 0.5) & (out.observations[:, 0] > 0.35)
               & ~out.terminated)
        self._running &= ~bad
        rewards = torch.where(bad, torch.zeros_like(out.rewards), out.rewards)
        return type(out)(out.observations, rewards, out.terminated, out.truncated | bad,
                         out.unstable | bad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_two_and_four_waves_with_diverged_envs_in_either_order(dtype):
    """16 tasks in 1, 2 and 4 waves: waves that end early, late or diverge, in both orders."""
    near, far, diverging = (GoalTask(goal=(0.3, 0.3)), GoalTask(goal=(-0.4, 0.2)),
                            GoalTask(goal=(0.5, 0.0)))
    policy = make_policy(bias=(0.1, 0.0), std=0.3).to(dtype)
    shared = params_of(policy)
    per_task = {k: torch.stack([v * (1 + 0.05 * i) for i in range(16)]) for k, v in shared.items()}
    for tasks in ([far] * 4 + [near] * 4 + [diverging] * 4 + [near] * 4,
                  [near] * 4 + [diverging] * 4 + [far] * 8):
        for params, per in ((shared, False), (per_task, True)):
            runs = []
            for wave in (16, 8, 4):
                venv = _Diverging(wave * E)
                venv.horizon = 40
                runs.append(sample(venv, policy, seed=7, tasks=tasks, params=params,
                                   per_task=per))
            for other in runs[1:]:
                assert_same_episodes(runs[0], other)
            assert runs[0].unstable.any() and runs[0].observations.dtype == dtype


def test_a_policy_of_the_wrong_size_is_refused_in_waves_too():
    policy = GaussianMLPPolicy(2, 1, hidden_sizes=(8,))  # 1 action dim, the env takes 2
    with pytest.raises(ValueError, match="noise of shape"):
        sample(torch_env(E), policy, tasks=TASKS)


def test_tasks_per_wave():
    assert tasks_per_wave(40, 20, 512) == 20  # the presets: 2 waves of 400 envs
    assert tasks_per_wave(40, 20, 800) == 40
    assert tasks_per_wave(40, 20, 0) == 40  # 0: one wave
    assert tasks_per_wave(40, 20, 399) == 10  # the largest divisor of 40 that fits
    assert tasks_per_wave(30, 20, 512) == 15  # 2 waves of 300
    assert tasks_per_wave(37, 20, 512) == 37  # waves of 1 task (20 envs) would be too small
    assert tasks_per_wave(4, 100, 50) == 1  # at least one task, however many episodes
    assert tasks_per_wave(6, 1, 2) == 6  # waves under MIN_WAVE_ENVS: all at once
    assert tasks_per_wave(8, 16, 64) == 4  # MIN_WAVE_ENVS itself is allowed
    with pytest.raises(ValueError, match="at least one"):
        tasks_per_wave(0, 20, 512)


def test_simulator_size_mismatch_raises():
    venv = torch_env(len(TASKS) * E + 1)
    with pytest.raises(ValueError, match="envs"):
        sample(venv)
    with pytest.raises(ValueError, match="equal waves"):  # 2 tasks per wave do not divide 3
        sample(torch_env(2 * E))
    categorical = CategoricalMLPPolicy(2, 4, hidden_sizes=(8,))  # samples by multinomial
    with pytest.raises(ValueError, match="drawn beforehand"):
        sample(torch_env(E), categorical)
    with pytest.raises(ValueError):
        SyncTaskVectorEnv("navigation-2d", 2).set_tasks(TASKS)


# --- TorchNavigation2D vs Navigation2D ----------------------------------------------------------------
def test_torch_navigation_matches_the_gymnasium_env_step_by_step():
    goals = [(0.2, 0.2), (-0.05, 0.08), (0.3, -0.1), (-0.7, 0.4), (0.0, 0.0)]
    n = len(goals)
    venv = TorchNavigation2D(n)
    venv.set_tasks([GoalTask(goal=g) for g in goals])
    singles = [Navigation2D(GoalTask(goal=g)) for g in goals]
    obs = venv.reset(seed=0)
    for env in singles:
        o, _ = env.reset(seed=0)
        assert np.array_equal(o, obs[0].numpy())
    rng = np.random.default_rng(0)
    running = np.ones(n, dtype=bool)
    ended_at = np.full(n, -1)
    for t in range(venv.horizon):
        actions = rng.uniform(-0.25, 0.25, size=(n, 2)).astype(np.float32)
        actions[0] = (1.0, 1.0)  # env 0 walks straight onto its goal in 2 clipped steps
        if t < 1:
            actions[1] = (-0.05, 0.08)  # env 1 is on its goal after one unclipped step
        out = venv.step(torch.as_tensor(actions))
        assert out.observations.dtype == torch.float32 and out.rewards.shape == (n,)
        for i, env in enumerate(singles):
            if not running[i]:  # frozen after the end of its episode
                assert not out.terminated[i] and not out.truncated[i]
                assert out.rewards[i] == 0 and (out.observations[i] == 0).all()
                continue
            o, r, term, trunc, info = env.step(actions[i])
            assert np.array_equal(out.observations[i].numpy(), o), (t, i)
            assert float(out.rewards[i]) == pytest.approx(r, rel=1e-6, abs=1e-7)
            assert bool(out.terminated[i]) == term, (t, i)
            assert not trunc
            assert bool(out.truncated[i]) == (t + 1 == venv.horizon and not term)
            assert not out.unstable[i]
            if term or out.truncated[i]:
                running[i] = False
                ended_at[i] = t
    assert ended_at[0] == 1 and ended_at[1] == 0  # the goal-reached terminations happened
    assert ended_at[3] == venv.horizon - 1  # far from its goal: truncated at the horizon
    assert (ended_at >= 0).all()


def test_torch_navigation_start_on_goal_terminates_only_after_a_step():
    venv = TorchNavigation2D(1)
    venv.set_tasks([GoalTask(goal=(0.0, 0.0))])
    venv.reset(seed=0)
    out = venv.step(torch.tensor([[0.005, -0.005]]))
    assert bool(out.terminated[0]) and float(out.rewards[0]) == pytest.approx(-math.hypot(0.005, 0.005))


def test_torch_navigation_rejects_bad_actions_and_tasks():
    venv = TorchNavigation2D(2)
    venv.set_tasks([GoalTask(goal=(0.1, 0.1))] * 2)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        venv.step(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="finite"):
        venv.step(torch.tensor([[0.0, float("nan")], [0.0, 0.0]]))
    with pytest.raises(ValueError):
        venv.set_tasks([GoalTask(goal=(0.1, 0.1))])
    with pytest.raises(ValueError):
        venv.set_tasks([GoalTask(goal=(0.1, 20.0))] * 2)
    with pytest.raises(ValueError):
        TorchNavigation2D(0)


def test_make_vector_env_backends():
    assert isinstance(make_vector_env("navigation-2d", 3), TorchNavigation2D)
    assert isinstance(make_vector_env("Navigation2D", 3, backend="torch"), TorchNavigation2D)
    sync = make_vector_env("navigation-2d", 3, backend="sync")
    assert isinstance(sync, SyncTaskVectorEnv) and sync.horizon == 100 and sync.num_envs == 3
    with pytest.raises(ValueError, match="backend"):
        make_vector_env("navigation-2d", 3, backend="jax")
    with pytest.raises(ValueError, match="torch backend"):
        make_vector_env("halfcheetah-vel", 3, backend="torch")
