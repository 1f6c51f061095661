"""HalfCheetahVel and HalfCheetahDir: the planar cheetah must run at a hidden velocity or direction.

Description:
    Gymnasium's ``HalfCheetah-v5`` (MuJoCo, planar 6-actuator cheetah) with the reward replaced
    by a task-dependent one. The task (goal velocity or direction) is never observed; it can
    only be inferred from rewards. Dynamics are identical for all tasks. Built by subclassing
    ``gymnasium.envs.mujoco.half_cheetah_v5.HalfCheetahEnv`` and overriding its reward hook
    ``_get_rew``; the shared action checks, task pickling and divergence handling are in
    :mod:`envs.mujoco_base`.

Observation:
    HalfCheetah-v5's default, float64, shape (17,): ``qpos[1:]`` (8: rootz, rooty and the six
    joint angles; the x position ``qpos[0]`` is excluded) followed by ``qvel`` (9).

Action:
    Joint torques, shape (6,), box [-1, 1]^6 (float32). A wrong shape or a non-finite entry
    raises ``ValueError``; MuJoCo clamps out-of-box actions to the ctrlrange, while the control
    cost uses the action as given.

Reward:
    ``v_x = (x_after - x_before) / dt`` with ``x = qpos[0]`` (the root slide joint), measured
    over one environment step exactly as HalfCheetah-v5 does; ``dt = timestep 0.01 s *
    frame_skip 5 = 0.05 s``. With ``|a|^2 = sum_i a_i^2``:

    * HalfCheetahVel: ``r = -|v_x - v_goal| - 0.05 * |a|^2``.
    * HalfCheetahDir: ``r = direction * v_x - 0.05 * |a|^2``.

    ``info`` holds ``reward_forward`` (the first term), ``reward_ctrl`` (``-0.05 |a|^2``),
    ``x_position``, ``x_velocity`` and ``unstable``.

Episode end:
    Never terminates; truncated after the horizon of 200 steps (``max_episode_steps`` of the
    registered id). A diverged simulation truncates the episode with reward 0 and
    ``info["unstable"] = True`` (see :mod:`envs.mujoco_base`).

Tasks:
    * HalfCheetahVel: ``VelocityTask(velocity)``. Train: velocity ~ U[0, 2]. Out of
      distribution: U[2, 3]. Valid range: [-10, 10] m/s (far beyond what the cheetah reaches, so
      the family still accepts backward and stress-test goals). Default (``task=None``):
      velocity 1.0, the centre of the train range.
    * HalfCheetahDir: ``DirectionTask(direction)`` with direction -1 (run backward) or +1 (run
      forward), each with probability 1/2. No out-of-distribution split: the two directions are
      exhaustive (``sample_ood_tasks`` raises ``TaskError``). Valid: exactly -1 or +1. Default:
      +1.

Provenance:
    Finn et al. 2017 (MAML), section 5.3, "half-cheetah goal velocity / forward-backward", as
    implemented in pytorch-maml-rl's ``HalfCheetahVelEnv`` / ``HalfCheetahDirEnv`` (the same
    velocity measure on ``qpos[0]``, control cost ``0.5 * 1e-1 * |a|^2 = 0.05 |a|^2``, goal
    velocities U[0, 2], horizon 200, no termination). ProMP (Rothfuss et al. 2019) has the same
    rewards in ``HalfCheetahRandVelEnv`` / ``HalfCheetahRandDirecEnv`` and the 17-dim
    observation used here, but samples goal velocities from U[0, 3] (global RNG). Differences:

    * Simulator: MuJoCo 3.3 through Gymnasium's ``HalfCheetah-v5`` (same ``half_cheetah.xml``
      and the same dt = 0.05 s as gym's ``HalfCheetah-v2`` on mujoco-py), not mujoco-py.
    * Observation: 17-dim (qpos[1:], qvel) as v5 and ProMP; pytorch-maml-rl appended the
      torso's position ``get_body_com("torso")`` (20 dims, float32), which leaks the x position.
    * API: Gymnasium 1.x ``(obs, r, terminated, truncated, info)``; the 200-step limit is a
      truncation. pytorch-maml-rl sampled tasks from the env's own/global RNG; here tasks come
      only from an explicit ``numpy.random.Generator``.
    * The ood split (U[2, 3]) and the divergence handling are additions of adaptbed.

Version history:
    v0: initial definition.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

from envs.mujoco_base import (
    MujocoMetaEnv,
    check_render_kwargs,
    direction_value,
    in_range,
    real,
    sample_directions,
)
from envs.tasks import DirectionTask, VelocityTask

CTRL_COST_WEIGHT = 0.05
VELOCITY_RANGE = (-10.0, 10.0)
TRAIN_VELOCITY = (0.0, 2.0)
OOD_VELOCITY = (2.0, 3.0)


class _HalfCheetahTaskEnv(MujocoMetaEnv, HalfCheetahEnv):
    """HalfCheetah-v5 with a task-dependent reward (see the module docstring)."""

    def __init__(self, task: Any = None, default_task: Any = None, **render_kwargs: Any):
        check_render_kwargs(type(self).__name__, render_kwargs)
        HalfCheetahEnv.__init__(self, **render_kwargs)
        self._init_task(task, default_task, render_kwargs)

    def _forward_reward(self, x_velocity: float) -> float:
        raise NotImplementedError

    def _get_rew(self, x_velocity: float, action):
        forward_reward = self._forward_reward(float(x_velocity))
        ctrl_cost = CTRL_COST_WEIGHT * float(np.sum(np.square(action)))
        reward = forward_reward - ctrl_cost
        return reward, {"reward_forward": forward_reward, "reward_ctrl": -ctrl_cost}


class HalfCheetahVel(_HalfCheetahTaskEnv):
    """Run at the goal velocity: ``r = -|v_x - v_goal| - 0.05 |a|^2`` (see the module docstring).

    Args:
        task: a ``VelocityTask`` or its dict; ``None`` gives ``VelocityTask(1.0)``.
        **render_kwargs: rendering options of Gymnasium's ``MujocoEnv`` (``render_mode``, ...).
    """

    task_type: ClassVar[type] = VelocityTask

    def __init__(self, task: VelocityTask | dict | None = None, **render_kwargs: Any):
        super().__init__(task, VelocityTask(velocity=1.0), **render_kwargs)

    def _sample_train_tasks(self, n: int, rng: np.random.Generator) -> list[VelocityTask]:
        return [VelocityTask(velocity=float(v)) for v in rng.uniform(*TRAIN_VELOCITY, size=n)]

    def _sample_ood_tasks(self, n: int, rng: np.random.Generator) -> list[VelocityTask]:
        return [VelocityTask(velocity=float(v)) for v in rng.uniform(*OOD_VELOCITY, size=n)]

    def _validate_task_values(self, task: VelocityTask) -> None:
        in_range("VelocityTask.velocity", real("VelocityTask.velocity", task.velocity),
                 *VELOCITY_RANGE)

    def _forward_reward(self, x_velocity: float) -> float:
        return -abs(x_velocity - float(self._task.velocity))


class HalfCheetahDir(_HalfCheetahTaskEnv):
    """Run forward (+1) or backward (-1): ``r = direction * v_x - 0.05 |a|^2``.

    No out-of-distribution split (the two directions are exhaustive). See the module docstring.

    Args:
        task: a ``DirectionTask`` or its dict; ``None`` gives ``DirectionTask(+1)``.
        **render_kwargs: rendering options of Gymnasium's ``MujocoEnv`` (``render_mode``, ...).
    """

    task_type: ClassVar[type] = DirectionTask

    def __init__(self, task: DirectionTask | dict | None = None, **render_kwargs: Any):
        super().__init__(task, DirectionTask(direction=1), **render_kwargs)

    def _sample_train_tasks(self, n: int, rng: np.random.Generator) -> list[DirectionTask]:
        return [DirectionTask(direction=d) for d in sample_directions(n, rng)]

    def _validate_task_values(self, task: DirectionTask) -> None:
        direction_value("DirectionTask.direction", task.direction)

    def _forward_reward(self, x_velocity: float) -> float:
        return float(self._task.direction) * x_velocity
