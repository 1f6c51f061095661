"""Synchronous, deterministic episode sampler for a meta-batch of tasks.

All environments of all tasks advance together: one batched policy forward per time step
(``vmap`` over the tasks' own parameters), one batched simulator step. No processes, no threads
of our own, nothing that can hang.
"""

from __future__ import annotations

import contextlib

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from agents.policies import batched_dist_params, dist_params
from envs.vector import TaskVectorEnv
from meta.episodes import Episodes


@contextlib.contextmanager
def _one_intra_op_thread(device: torch.device):
    """Run the per-step policy forwards on one CPU thread, then restore the setting.

    The forwards are tiny (a few hundred rows); with torch's default threads they only add
    synchronisation and fight the simulator's threads for the cores. Measured on the 2-core
    machine: HalfCheetahVel sampling at 26,064 env steps/s with one torch thread against 4,843
    with two (``adaptbed bench``). The outer update, which has large matrices, keeps the default.
    """
    previous = torch.get_num_threads()
    if device.type == "cpu" and previous != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


@torch.no_grad()
def sample_episodes(
    venv: TaskVectorEnv,
    policy: nn.Module,
    params: Mapping[str, Tensor],
    tasks: Sequence,
    episodes_per_task: int,
    seed: int,
    per_task_params: bool = False,
) -> Episodes:
    """Run ``episodes_per_task`` episodes of every task, up to ``venv.horizon`` steps.

    Args:
        venv: a batched simulator with ``num_envs == len(tasks) * episodes_per_task``.
        policy: the policy module (its own parameters are not used).
        params: the parameters to act with; with ``per_task_params`` every tensor has a leading
            task dim ``[N, ...]`` (adapted parameters), else they are shared by all tasks.
        tasks: the ``N`` tasks; environment ``n * E + e`` runs task ``n``.
        seed: seeds both the simulators' resets and the action noise.
    Returns:
        :class:`Episodes` with tensors ``[N, T, E, ...]`` on ``venv.device``, where ``T`` is
        the length of the longest episode.
    """
    n, e = len(tasks), episodes_per_task
    if venv.num_envs != n * e:
        raise ValueError(f"the simulator holds {venv.num_envs} envs, need {n} tasks x {e} episodes")
    with _one_intra_op_thread(torch.device(venv.device)):
        return _run_episodes(venv, policy, params, tasks, episodes_per_task, seed,
                             per_task_params)


def _run_episodes(venv, policy, params, tasks, episodes_per_task, seed, per_task_params):
    n, e = len(tasks), episodes_per_task
    device = venv.device
    generator = torch.Generator(device=device).manual_seed(seed)
    venv.set_tasks([task for task in tasks for _ in range(e)])
    obs = venv.reset(seed=seed)
    running = torch.ones(n * e, dtype=torch.bool, device=device)
    last_obs = obs.clone()
    truncated = torch.zeros_like(running)
    unstable = torch.zeros_like(running)
    steps: list[tuple[Tensor, ...]] = []
    dtype = next(iter(params.values())).dtype  # act in the policy's precision
    for _ in range(venv.horizon):
        obs_ne = obs.reshape(n, e, -1).to(dtype)
        if per_task_params:
            dist = batched_dist_params(policy, params, obs_ne)
        else:
            dist = dist_params(policy, params, obs_ne)
        actions = policy.sample(dist, generator)
        out = venv.step(actions.reshape(n * e, *actions.shape[2:]))
        steps.append((obs_ne, actions, out.rewards.reshape(n, e), running.reshape(n, e), dist))
        done = out.terminated | out.truncated
        last_obs = torch.where((running & done)[:, None], out.observations, last_obs)
        truncated |= running & out.truncated & ~out.unstable  # diverged: cut, not timed out
        unstable |= running & out.unstable
        running = running & ~done
        obs = out.observations
        if not running.any():
            break
    stack = lambda i: torch.stack([s[i] for s in steps], dim=1)  # noqa: E731  [N, T, E, ...]
    actions, mask = stack(1), stack(3).float()
    # one log-probability computation for the whole batch: the same numbers as step by step
    dist = tuple(torch.stack([s[4][j] for s in steps], dim=1) for j in range(len(steps[0][4])))
    return Episodes(
        observations=stack(0), actions=actions, rewards=stack(2) * mask, mask=mask,
        log_probs=policy.log_prob(dist, actions), last_observations=last_obs.reshape(n, e, -1),
        truncated=truncated.reshape(n, e), unstable=unstable.reshape(n, e),
    )
