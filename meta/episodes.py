"""Episodes of a meta-batch: time-major tensors with a mask, one slice per task."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Episodes:
    """``E`` episodes of horizon ``T`` for each of ``N`` tasks, on one device.

    Every tensor has the task dimension first, then time, then the episode:

    Attributes:
        observations: ``[N, T, E, D]`` observation *before* each action.
        actions: ``[N, T, E, A]`` (continuous) or ``[N, T, E]`` (discrete).
        rewards: ``[N, T, E]``, zero on padding.
        mask: ``[N, T, E]`` float, 1 on valid steps; the valid steps of an episode are a prefix.
        log_probs: ``[N, T, E]`` log-probabilities of the actions under the policy that sampled
            them (the "old" policy of importance ratios).
        last_observations: ``[N, E, D]`` observation after the final valid step.
        truncated: ``[N, E]`` bool, the episode hit the horizon without terminating.
        unstable: ``[N, E]`` bool, the simulation diverged and the episode was cut short.
        advantages: ``[N, T, E]`` advantage estimates, filled in by
            :func:`meta.maml.with_advantages` (``None`` until then).
    """

    observations: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    log_probs: Tensor
    last_observations: Tensor
    truncated: Tensor
    unstable: Tensor
    advantages: Tensor | None = None

    @property
    def num_tasks(self) -> int:
        return self.mask.shape[0]

    @property
    def horizon(self) -> int:
        return self.mask.shape[1]

    @property
    def episodes_per_task(self) -> int:
        return self.mask.shape[2]

    @property
    def env_steps(self) -> int:
        """Number of valid environment steps in the batch."""
        return int(self.mask.sum().item())

    def episode_returns(self) -> Tensor:
        """Undiscounted return of every episode, ``[N, E]``."""
        return (self.rewards * self.mask).sum(dim=1)

    def mean_return(self) -> float:
        """Mean undiscounted episode return over all tasks and episodes."""
        return float(self.episode_returns().mean().item())

    def task(self, i: int) -> "Episodes":
        """The episodes of task ``i`` alone, as a batch of one task (``N = 1``)."""
        return self.map(lambda x: x[i : i + 1])

    def map(self, fn) -> "Episodes":
        """A new ``Episodes`` with ``fn`` applied to every tensor."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return Episodes(**{k: None if v is None else fn(v) for k, v in values.items()})

    def to(self, device: torch.device | str) -> "Episodes":
        return self.map(lambda x: x.to(device))
