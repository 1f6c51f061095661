"""The k-shot adaptation protocol on held-out tasks (Finn et al. 2017, sec. 5.3 / Fig. 5).

For every task: sample ``episodes_per_step`` episodes with the current parameters, take one
policy-gradient step at ``fast_lr``, then further steps at ``fast_lr / 2``, measuring the mean
return after 0, 1, ..., K steps with fresh episodes each time. A policy meta-trained with
several inner steps takes those at ``fast_lr``, as in training, and only later ones at half.
"""

from __future__ import annotations

import functools
import math
from typing import Mapping, Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from envs.vector import TaskVectorEnv
from meta.adaptation import AdvantageSettings, collect_meta_batch, step_seeds
from meta.maml import InnerLoop

def step_sizes(fast_lr: float, num_steps: int, trained_steps: int = 1) -> tuple[float, ...]:
    """The MAML paper's evaluation schedule: ``fast_lr``, then ``fast_lr / 2`` for later steps.

    The first ``trained_steps`` steps (at least one) take ``fast_lr``: a policy meta-trained
    with several inner steps is evaluated on the schedule it was trained for, and halved only
    beyond it (e.g. ``(0.1, 0.1, 0.05)`` for 3 steps after training with 2).
    """
    full = max(1, trained_steps)
    return tuple(fast_lr if k < full else fast_lr / 2 for k in range(num_steps))


def ci95(values: Sequence[float]) -> float:
    """Half-width of the 95% confidence interval of the mean (Student t); NaN for fewer than two
    values, where it is undefined (a 0 would read as an exact result)."""
    n = len(values)
    if n < 2:
        return math.nan
    return float(t_quantile_975(n - 1) * np.std(values, ddof=1) / math.sqrt(n))


@functools.lru_cache(maxsize=None)
def t_quantile_975(dof: int) -> float:
    """The 0.975 quantile of Student's t with ``dof`` degrees of freedom (``t_{0.975, dof}``).

    Solves ``integral_0^x f(u) du = 0.475`` by bisection, ``f`` the t density, the integral by
    Simpson's rule on 4,096 intervals, far more precise than the printed tables' 3 decimals
    (12.706 at 1 degree of freedom, 2.021 at 40, 1.960 in the limit; tested).
    """
    if dof < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {dof}")
    log_norm = (math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2)
                - 0.5 * math.log(dof * math.pi))

    def mass(x: float) -> float:  # P(0 <= T <= x)
        u = np.linspace(0.0, x, 4097)
        f = np.exp(log_norm - (dof + 1) / 2 * np.log1p(u * u / dof))
        return float((x / 4096 / 3) * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum()))

    low, high = 1.9, 13.0  # the quantile lies in [1.96, 12.71]
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if mass(mid) < 0.475 else (low, mid)
    return (low + high) / 2


@torch.no_grad()
def stand_still_returns(venv: TaskVectorEnv, tasks: Sequence, episodes_per_task: int,
                        seed: int) -> Tensor:
    """Mean return of the all-zero action on each task over ``episodes_per_task`` episodes:
    ``[N]``. The "do nothing" reference a learning agent must beat."""
    n, e = len(tasks), episodes_per_task
    if venv.num_envs != n * e:
        raise ValueError(f"the simulator holds {venv.num_envs} envs, need {n} tasks x {e} episodes")
    if not isinstance(venv.action_space, gym.spaces.Box):
        raise ValueError(f"standing still needs a continuous (Box) action space whose zero "
                         f"means no force; got {venv.action_space}")
    venv.set_tasks([task for task in tasks for _ in range(e)])
    obs = venv.reset(seed=seed)
    zeros = torch.zeros((n * e, *venv.action_space.shape), device=obs.device)
    running = torch.ones(n * e, dtype=torch.bool, device=obs.device)
    total = torch.zeros(n * e, dtype=torch.float64, device=obs.device)
    for _ in range(venv.horizon):
        out = venv.step(zeros)
        total += torch.where(running, out.rewards.double(), 0.0)
        running &= ~(out.terminated | out.truncated)
        if not running.any():
            break
    return total.reshape(n, e).mean(dim=1)


def evaluate_adaptation(venv: TaskVectorEnv, policy: nn.Module, params: Mapping[str, Tensor],
                        tasks: Sequence, fast_lr: float, num_steps: int, episodes_per_step: int,
                        advantages: AdvantageSettings, seed: int,
                        first_order: bool = True, batching: str = "batched",
                        trained_steps: int = 1) -> dict:
    """Adaptation curve on ``tasks``, with the schedule :func:`step_sizes`
    ``(fast_lr, num_steps, trained_steps)``.

    Returns:
        ``{"steps": [0..K], "mean": [K+1], "ci95": [K+1], "per_task": [[K+1] per task]}``:
        mean episode return per task after each number of inner steps, averaged over tasks
        with a 95% confidence interval over tasks.
    """
    inner = InnerLoop(step_sizes(fast_lr, num_steps, trained_steps), first_order=first_order,
                      batching=batching)
    seeds = step_seeds(seed, 0, num_steps + 1)
    batch, _ = collect_meta_batch(venv, policy, params, tasks, inner, episodes_per_step,
                                  advantages, seeds)
    rounds = [*batch.train, batch.valid]
    per_task = torch.stack([ep.episode_returns().mean(dim=1) for ep in rounds], dim=1)  # [N, K+1]
    per_task_list = per_task.cpu().double().tolist()
    columns = list(zip(*per_task_list))
    return {
        "steps": list(range(num_steps + 1)),
        "mean": [float(np.mean(c)) for c in columns],
        "ci95": [ci95(c) for c in columns],
        "per_task": per_task_list,
    }
