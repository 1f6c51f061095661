"""Collecting one meta-batch: pre-adaptation episodes, adaptation, post-adaptation episodes.

This is the sampling half of MAML's Algorithm 3 (lines 4-8): for each task, sample episodes
with the current parameters, take an inner step, sample again with the adapted parameters,
and so on for ``num_inner_steps`` steps. The result feeds any outer optimizer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from envs.vector import TaskVectorEnv
from meta.episodes import Episodes
from meta.maml import InnerLoop, adapt, detached, with_advantages
from meta.outer import MetaBatch
from meta.sampler import sample_episodes


class NumericalFault(FloatingPointError):
    """Sampled episodes hold non-finite rewards or advantages (the batch is unusable).

    Attributes:
        metrics: what was measured before the fault (env steps sampled, timings, ...).
    """

    def __init__(self, message: str, metrics: dict[str, float] | None = None):
        super().__init__(message)
        self.metrics = dict(metrics or {})


def check_finite(episodes: Episodes, what: str) -> None:
    """Raise :class:`NumericalFault` if a valid step has a non-finite reward or advantage."""
    valid = episodes.mask > 0
    for name in ("rewards", "advantages"):
        values = getattr(episodes, name)
        if values is not None and not bool(torch.isfinite(values[valid]).all()):
            raise NumericalFault(f"non-finite {name} in the {what} episodes")


@dataclass(frozen=True)
class AdvantageSettings:
    """How advantages are estimated (see :func:`meta.maml.with_advantages`)."""

    gamma: float = 0.99
    gae_lambda: float = 1.0
    bootstrap_truncated: bool = False


def device_clock(device: torch.device | str) -> float:
    """``time.perf_counter()`` after the device's queued work is done: CUDA kernels run
    asynchronously, so without the wait a timer would stop at their launch."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def step_seeds(seed: int, iteration: int, count: int) -> list[int]:
    """``count`` sampling seeds for one meta-iteration, a pure function of (seed, iteration),
    so a resumed run samples exactly what an uninterrupted one would."""
    state = np.random.SeedSequence([seed, iteration]).generate_state(count, dtype=np.uint32)
    return [int(s) for s in state]


def collect_meta_batch(venv: TaskVectorEnv, policy: nn.Module, params: Mapping[str, Tensor],
                       tasks: Sequence, inner: InnerLoop, episodes_per_task: int,
                       advantages: AdvantageSettings, seeds: Sequence[int],
                       sampler: str = "stepwise") -> tuple[MetaBatch, dict[str, float]]:
    """Sample ``inner.num_steps + 1`` batches of episodes for ``tasks``, adapting in between.

    Args:
        params: the base parameters ``theta`` (not modified).
        seeds: ``inner.num_steps + 1`` seeds, one per sampling round.
        sampler: how to sample (:data:`meta.sampler.SAMPLERS`, ``run.sampler``).
    Raises:
        NumericalFault: some episodes hold non-finite rewards or advantages.
    Returns:
        the :class:`MetaBatch` (every batch with advantages) and metrics:
        ``return_step_k`` (mean episode return after ``k`` inner steps), ``env_steps``,
        ``unstable_episodes``, ``seconds_sampling``, ``seconds_adapting``.
    """
    if len(seeds) != inner.num_steps + 1:
        raise ValueError(f"need {inner.num_steps + 1} seeds, got {len(seeds)}")
    base = detached(params)
    current, per_task = base, False
    batches: list[Episodes] = []
    metrics = {"env_steps": 0.0, "unstable_episodes": 0.0,
               "seconds_sampling": 0.0, "seconds_adapting": 0.0}
    for k, seed in enumerate(seeds):
        start = device_clock(venv.device)
        episodes = sample_episodes(venv, policy, current, tasks, episodes_per_task, seed,
                                   per_task_params=per_task, sampler=sampler)
        episodes = with_advantages(episodes, advantages.gamma, advantages.gae_lambda,
                                   advantages.bootstrap_truncated)
        metrics["seconds_sampling"] += device_clock(venv.device) - start
        metrics["env_steps"] += episodes.env_steps
        metrics["unstable_episodes"] += float(episodes.unstable.sum())
        try:
            check_finite(episodes, f"step-{k}")
        except NumericalFault as err:
            raise NumericalFault(str(err), metrics) from None
        metrics[f"return_step_{k}"] = episodes.mean_return()
        batches.append(episodes)
        if k < inner.num_steps:
            start = device_clock(venv.device)
            prefix = replace(inner, step_sizes=inner.step_sizes[: k + 1])
            current = detached(adapt(policy, base, batches, prefix, create_graph=False))
            per_task = True
            metrics["seconds_adapting"] += device_clock(venv.device) - start
    return MetaBatch(train=batches[:-1], valid=batches[-1]), metrics
