"""Navigation2D batched in torch, on the sampler's device (same dynamics as
:class:`envs.navigation.Navigation2D`, see its docstring)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from envs.navigation import GOAL_TOLERANCE, MAX_STEP, Navigation2D
from envs.vector import VectorStep


class TorchNavigation2D:
    """``num_envs`` Navigation2D environments as ``[B, 2]`` tensors; no per-env Python work."""

    horizon = 100

    def __init__(self, num_envs: int, device: torch.device | str = "cpu"):
        if num_envs < 1:
            raise ValueError(f"num_envs must be positive, got {num_envs}")
        self.num_envs = num_envs
        self.device = torch.device(device)
        self._checker = Navigation2D()  # validates tasks with the single env's rules
        self.observation_space = self._checker.observation_space
        self.action_space = self._checker.action_space
        self._goals = torch.zeros(num_envs, 2, dtype=torch.float64, device=self.device)
        self._pos = torch.zeros_like(self._goals)
        self._running = torch.zeros(num_envs, dtype=torch.bool, device=self.device)
        self._t = 0

    def set_tasks(self, tasks: Sequence) -> None:
        if len(tasks) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} tasks, got {len(tasks)}")
        goals = [self._checker.coerce_task(t).goal for t in tasks]
        self._goals = torch.tensor(np.asarray(goals), dtype=torch.float64, device=self.device)

    def reset(self, seed: int, offset: int = 0) -> Tensor:
        """Every env starts at the origin: ``seed`` and ``offset`` change nothing."""
        self._pos = torch.zeros_like(self._goals)
        self._running = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        self._t = 0
        return self._pos.float()

    def step(self, actions: Tensor) -> VectorStep:
        if actions.shape != (self.num_envs, 2):
            raise ValueError(f"actions must have shape {(self.num_envs, 2)}, got {tuple(actions.shape)}")
        running = self._running
        a = actions.to(self.device, torch.float64)
        if not torch.isfinite(a[running]).all():
            raise ValueError("actions must be finite")
        a = torch.where(running[:, None], a.clamp(-MAX_STEP, MAX_STEP), torch.zeros_like(a))
        self._pos = self._pos + a
        offset = self._pos - self._goals
        reward = torch.where(running, -offset.norm(dim=1), 0.0)
        self._t += 1
        terminated = running & (offset.abs() < GOAL_TOLERANCE).all(dim=1)
        truncated = running & ~terminated & (self._t >= self.horizon)
        self._running = running & ~(terminated | truncated)
        obs = torch.where(running[:, None], self._pos, torch.zeros_like(self._pos)).float()
        return VectorStep(obs, reward.float(), terminated, truncated,
                          torch.zeros_like(terminated))

    def close(self) -> None:
        pass
