"""Navigation2D: a point robot that must walk to an unknown goal in the plane.

Description:
    The agent starts at the origin and moves by its (clipped) action each step. The goal is the
    task and is never observed: it can only be inferred from rewards, which is what adaptation
    is for. Pure numpy, no MuJoCo.

Observation:
    ``position = (x, y)``, float32, shape (2,).

Action:
    Displacement ``(dx, dy)``, clipped to [-0.1, 0.1] on each axis before it is applied.

Reward:
    ``r_t = -|| position_{t+1} - goal ||_2``, the negative Euclidean distance *after* the move.

Episode end:
    Terminates when ``|x - goal_x| < 0.01`` and ``|y - goal_y| < 0.01``; truncated after the
    horizon of 100 steps (``max_episode_steps`` of the registered id).

Tasks:
    ``GoalTask(goal=(gx, gy))``. Train: goal ~ U[-0.5, 0.5]^2. Out of distribution: goal uniform
    on the square ring 0.5 < max(|gx|, |gy|) <= 1.0. Valid range: both coordinates in [-10, 10].
    Standing still for 100 steps returns ``-100 * ||goal||``, about -38 averaged over the
    train distribution.

Provenance:
    Finn et al. 2017 (MAML), section 5.3, "2D navigation", as implemented in pytorch-maml-rl's
    ``Navigation2DEnv``: same start, clipping, reward, termination tolerance and horizon (the
    paper's text describes the reward as the negative squared distance; its code, like
    pytorch-maml-rl, uses the distance itself, and so does this env). Two
    differences: observations are float32 (there float32 too, but through gym's old API) and
    the 100-step limit is a Gymnasium truncation, not a ``done``.

Version history:
    v0: initial definition.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from envs.base import MetaEnv, check_action, in_range, real_vector
from envs.tasks import GoalTask

GOAL_TOLERANCE = 0.01
MAX_STEP = 0.1


class Navigation2D(MetaEnv[GoalTask], gym.Env):
    """A 2D point robot rewarded for approaching a hidden goal (see the module docstring)."""

    task_type: ClassVar[type] = GoalTask
    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, task: GoalTask | dict | None = None):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-MAX_STEP, MAX_STEP, shape=(2,), dtype=np.float32)
        self._position = np.zeros(2, dtype=np.float64)
        self.set_task(GoalTask(goal=(0.0, 0.0)) if task is None else task)

    # --- tasks --------------------------------------------------------------------------------
    def _sample_train_tasks(self, n: int, rng: np.random.Generator) -> list[GoalTask]:
        goals = rng.uniform(-0.5, 0.5, size=(n, 2))
        return [GoalTask(goal=(float(x), float(y))) for x, y in goals]

    def _sample_ood_tasks(self, n: int, rng: np.random.Generator) -> list[GoalTask]:
        goals: list[GoalTask] = []
        while len(goals) < n:
            x, y = rng.uniform(-1.0, 1.0, size=2)
            if max(abs(x), abs(y)) > 0.5:
                goals.append(GoalTask(goal=(float(x), float(y))))
        return goals

    def _validate_task_values(self, task: GoalTask) -> None:
        g = real_vector("GoalTask.goal", task.goal, 2)  # a tuple, so the task stays hashable
        for i in range(2):
            in_range(f"GoalTask.goal[{i}]", float(g[i]), -10.0, 10.0)

    # --- gymnasium ----------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._position = np.zeros(2, dtype=np.float64)
        return self._position.astype(np.float32), {}

    def step(self, action):
        a = np.clip(check_action(action, (2,)), -MAX_STEP, MAX_STEP)
        self._position = self._position + a
        offset = self._position - np.asarray(self._task.goal)
        reward = -float(np.sqrt(np.sum(offset**2)))
        terminated = bool(np.all(np.abs(offset) < GOAL_TOLERANCE))
        info = {"distance": -reward}
        return self._position.astype(np.float32), reward, terminated, False, info
