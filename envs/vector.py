"""The batched-environment interface the sampler consumes, and its implementations.

A :class:`TaskVectorEnv` holds ``num_envs`` environments, each with its own task, and steps
them all in one call, exchanging torch tensors on ``device``. Each environment runs one
episode per ``reset``: once it terminates or is truncated it is *frozen* (its entries in later
steps are zeros and must be ignored by the caller) until the next ``reset``. Any faster
simulator can replace the default by implementing this protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from envs.registry import family, make


@dataclass(frozen=True)
class VectorStep:
    """What one batched step returns; every tensor is ``[B]`` (obs ``[B, D]``) on the device."""

    observations: Tensor
    rewards: Tensor
    terminated: Tensor
    truncated: Tensor
    unstable: Tensor


class TaskVectorEnv(Protocol):
    """``num_envs`` environments with one task each, stepped together."""

    num_envs: int
    horizon: int
    observation_space: gym.Space
    action_space: gym.Space
    device: torch.device

    def set_tasks(self, tasks: Sequence) -> None:
        """One task per environment (``len(tasks) == num_envs``)."""

    def reset(self, seed: int, offset: int = 0) -> Tensor:
        """Start one episode in every environment; returns observations ``[B, D]``.

        Environment ``i`` gets the seed ``s[offset + i]`` of ``s = env_seeds(seed, ...)``: the
        seed it would have had at that place in a larger batch. ``offset`` is needed only to
        sample in waves (:func:`meta.sampler.sample_episodes`); a simulator without it
        samples a meta-batch at once.
        """

    def step(self, actions: Tensor) -> VectorStep:
        """Apply ``actions [B, A]`` to every running environment."""

    def close(self) -> None: ...


class SyncTaskVectorEnv:
    """Reference implementation: a Python loop over ordinary Gymnasium envs of one family.

    Time limits are enforced here (``horizon`` steps, reported as truncation), so the inner
    environments are used unwrapped.
    """

    def __init__(self, family_name: str, num_envs: int, device: torch.device | str = "cpu",
                 horizon: int | None = None):
        if num_envs < 1:
            raise ValueError(f"num_envs must be positive, got {num_envs}")
        spec = family(family_name)
        self.horizon = spec.horizon if horizon is None else horizon
        self.num_envs = num_envs
        self.device = torch.device(device)
        self._envs = [make(spec.name).unwrapped for _ in range(num_envs)]
        self.observation_space = self._envs[0].observation_space
        self.action_space = self._envs[0].action_space
        self._running = np.zeros(num_envs, dtype=bool)
        self._t = 0

    def set_tasks(self, tasks: Sequence) -> None:
        if len(tasks) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} tasks, got {len(tasks)}")
        for env, task in zip(self._envs, tasks):
            env.set_task(task)

    def reset(self, seed: int, offset: int = 0) -> Tensor:
        seeds = env_seeds(seed, self.num_envs, offset)
        obs = [env.reset(seed=int(s))[0] for env, s in zip(self._envs, seeds)]
        self._running[:] = True
        self._t = 0
        return torch.as_tensor(np.stack(obs), dtype=torch.float32, device=self.device)

    def step(self, actions: Tensor) -> VectorStep:
        acts = actions.detach().cpu().numpy()
        n, dim = self.num_envs, self.observation_space.shape[0]
        obs = np.zeros((n, dim), dtype=np.float32)
        rew = np.zeros(n)
        term, trunc, unstable = (np.zeros(n, dtype=bool) for _ in range(3))
        self._t += 1
        for i in np.flatnonzero(self._running):
            o, r, te, tr, info = self._envs[i].step(acts[i])
            obs[i], rew[i], term[i] = o, r, te
            unstable[i] = bool(info.get("unstable", False))
            trunc[i] = tr or unstable[i] or (self._t >= self.horizon and not te)
        self._running &= ~(term | trunc)
        return _to_step(obs, rew, term, trunc, unstable, self.device)

    def close(self) -> None:
        for env in self._envs:
            env.close()


def env_seeds(seed: int, num_envs: int, offset: int = 0) -> np.ndarray:
    """The reset seeds of envs ``offset .. offset + num_envs - 1`` of a batch seeded ``seed``.

    ``SeedSequence.generate_state`` gives the same first words however many it makes, so an
    env's seed depends on its place in the batch, not on the batch's size.
    """
    if offset < 0:
        raise ValueError(f"offset must be non-negative, got {offset}")
    return np.random.SeedSequence(seed).generate_state(offset + num_envs)[offset:]


def _to_step(obs, rew, term, trunc, unstable, device) -> VectorStep:
    def t(x, dtype):
        return torch.as_tensor(x, dtype=dtype, device=device)

    return VectorStep(t(obs, torch.float32), t(rew, torch.float32), t(term, torch.bool),
                      t(trunc, torch.bool), t(unstable, torch.bool))


def make_vector_env(family_name: str, num_envs: int, device: torch.device | str = "cpu",
                    backend: str = "auto") -> TaskVectorEnv:
    """The fastest available batched simulator for a family (``backend``: auto|sync|torch|mujoco).

    ``auto`` picks ``torch`` for Navigation2D, and for the MuJoCo families ``mujoco`` from
    ``envs.mujoco_batch.FASTER_FROM_ENVS`` (4) environments on, ``sync`` below: both give the
    same episodes, and the batched simulator is the faster one from there on (measured with
    ``adaptbed bench`` and on small batches; at 1-2 envs its fixed per-step numpy cost makes it
    no faster).

    ``torch``: :class:`envs.navigation_torch.TorchNavigation2D`, Navigation2D on ``device``.
    ``mujoco``: :class:`envs.mujoco_batch.MujocoBatchEnv`, the MuJoCo families: persistent
    ``MjData`` per env stepped by a thread pool on all cores (by the C loop of
    :mod:`envs.native` where it can be built, else by Python threads), batched numpy rewards;
    bit-for-bit the episodes of ``sync``.
    ``sync``: :class:`SyncTaskVectorEnv`, any family (the reference).

    Raises:
        ValueError: an unknown backend, or one that does not simulate the family.
    """
    spec = family(family_name)
    backends = ("auto", "sync", "torch", "mujoco")
    if backend not in backends:
        raise ValueError(f"unknown simulator backend {backend!r}; known: {', '.join(backends)}")
    if backend == "torch" or (backend == "auto" and spec.name == "Navigation2D"):
        if spec.name != "Navigation2D":
            raise ValueError(f"the torch backend only simulates Navigation2D, not {spec.name}")
        from envs.navigation_torch import TorchNavigation2D

        return TorchNavigation2D(num_envs, device)
    from envs.mujoco_batch import FASTER_FROM_ENVS, MujocoBatchEnv, supports

    if backend == "mujoco" or (backend == "auto" and spec.mujoco
                               and num_envs >= FASTER_FROM_ENVS):
        if not supports(spec.name):
            raise ValueError(f"the mujoco backend only simulates the MuJoCo families, "
                             f"not {spec.name}")
        return MujocoBatchEnv(spec.name, num_envs, device)
    return SyncTaskVectorEnv(spec.name, num_envs, device)
