"""The k-shot adaptation protocol on held-out tasks (Finn et al. 2017, sec. 5.3 / Fig. 5).

For every task: sample ``episodes_per_step`` episodes with the current parameters, take one
policy-gradient step at ``fast_lr``, then further steps at ``fast_lr / 2``, measuring the mean
return after 0, 1, ..., K steps with fresh episodes each time.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from envs.vector import TaskVectorEnv
from meta.adaptation import AdvantageSettings, collect_meta_batch, step_seeds
from meta.maml import InnerLoop

# two-sided 95% Student-t quantiles for small samples; 1.96 beyond the table
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042, 40: 2.021, 60: 2.000}


def step_sizes(fast_lr: float, num_steps: int) -> tuple[float, ...]:
    """The MAML paper's evaluation schedule: ``fast_lr``, then ``fast_lr / 2`` for later steps."""
    return tuple(fast_lr if k == 0 else fast_lr / 2 for k in range(num_steps))


def ci95(values: Sequence[float]) -> float:
    """Half-width of the 95% confidence interval of the mean (Student t), 0 for one value."""
    n = len(values)
    if n < 2:
        return 0.0
    dof = n - 1
    t = _T95.get(dof) or next((v for k, v in sorted(_T95.items()) if k >= dof), 1.96)
    return float(t * np.std(values, ddof=1) / math.sqrt(n))


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
                        first_order: bool = True, batching: str = "batched") -> dict:
    """Adaptation curve on ``tasks``.

    Returns:
        ``{"steps": [0..K], "mean": [K+1], "ci95": [K+1], "per_task": [[K+1] per task]}``:
        mean episode return per task after each number of inner steps, averaged over tasks
        with a 95% confidence interval over tasks.
    """
    inner = InnerLoop(step_sizes(fast_lr, num_steps), first_order=first_order, batching=batching)
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
