"""AntVel, AntDir, AntDir2D and AntGoal: the quadruped ant must reach a hidden velocity,
direction or goal position.

Description:
    Gymnasium's ``Ant-v5`` (MuJoCo, 8-actuator quadruped, free-floating torso) with the reward
    replaced by a task-dependent one. The task is never observed; it can only be inferred from
    rewards. Dynamics are identical for all tasks. Built by subclassing
    ``gymnasium.envs.mujoco.ant_v5.AntEnv`` and overriding its reward hook ``_get_rew``; the
    shared action checks, task pickling and divergence handling are in :mod:`envs.mujoco_base`.

Observation:
    Ant-v5's default, float64, shape (105,): ``qpos[2:]`` (13: torso z, torso quaternion, eight
    joint angles; the torso x, y are excluded), ``qvel`` (14), and the external contact forces
    ``clip(cfrc_ext[1:], -1, 1)`` flattened (13 bodies x 6 = 78; the world body, always 0, is
    left out). The contact forces are kept, as in the MAML and ProMP observations.

Action:
    Joint torques, shape (8,), box [-1, 1]^8 (float32). A wrong shape or a non-finite entry
    raises ``ValueError``; MuJoCo clamps out-of-box actions to the ctrlrange, while the control
    cost uses the action as given.

Reward:
    Common terms, following the MAML paper: control cost ``c(a) = |a|^2 = sum_i a_i^2``;
    contact cost ``k = |clip(cfrc_ext, -1, 1)|^2``, the sum of squares of the clipped external
    contact forces of all 14 bodies (Ant-v5's ``contact_forces``; computed after the step by
    ``mj_rnePostConstraint``); survive term ``+0.05`` on every step. Velocities are measured as
    Ant-v5 does: ``v_xy = (xy_after - xy_before) / dt`` of the torso (``main_body`` 1) frame,
    over one environment step, ``dt = timestep 0.01 s * frame_skip 5 = 0.05 s``.

    * AntVel: ``r = -|v_x - v_goal| + 1.0 - 0.005 c(a) - 0.0005 k + 0.05``.
    * AntDir: ``r = direction * v_x - 0.005 c(a) - 0.0005 k + 0.05``.
    * AntDir2D: ``r = d . v_xy - 0.005 c(a) - 0.0005 k + 0.05``.
    * AntGoal: ``r = -(|x - g_x| + |y - g_y|) + 4.0 - 0.005 c(a) - 0.0005 k + 0.05``, with
      ``(x, y)`` the torso position after the step.

    ``info`` holds ``reward_forward`` (the task term, constants included: ``+1.0`` for AntVel,
    ``+4.0`` for AntGoal), ``reward_ctrl``, ``reward_contact``, ``reward_survive`` (0.05),
    Ant-v5's ``x_position``, ``y_position``, ``distance_from_origin``, ``x_velocity``,
    ``y_velocity``, and ``unstable``.

Episode end:
    Terminates when the torso height ``qpos[2]`` leaves [0.2, 1.0] (Ant-v5's
    ``healthy_z_range``; the step that leaves still pays the full reward, survive term
    included); truncated after the horizon of 200 steps (``max_episode_steps`` of the
    registered id). A diverged simulation truncates the episode with reward 0 and
    ``info["unstable"] = True`` (see :mod:`envs.mujoco_base`).

Tasks:
    See each class. Valid ranges: velocities in [-10, 10] m/s; directions exactly -1 or +1;
    2D directions of unit norm within 1e-6; goal coordinates in [-10, 10] m.

Provenance:
    Finn et al. 2017 (MAML), section 5.3 (ant goal velocity, ant forward/backward), as
    implemented in pytorch-maml-rl's ``AntVelEnv`` / ``AntDirEnv``: same velocity measure (torso
    x over dt = 0.05 s), same costs ``0.5 * 1e-2 |a|^2`` and ``0.5 * 1e-3 |clip(cfrc_ext)|^2``,
    survive 0.05, the ``+1.0`` of AntVel, same termination and horizon 200. AntGoal follows the
    original MAML code's (rllab) ant goal-position task: goals U[-3, 3]^2, reward ``-L1 + 4.0``
    with the same costs. AntDir2D is ProMP's (Rothfuss et al. 2019) ``AntRandDirec2DEnv``.
    (ProMP's 1D ``AntRandDirecEnv`` uses ProMP's own costs, listed under AntDir2D below; AntDir
    follows MAML.) Differences:

    * Simulator: MuJoCo 3.3 through Gymnasium's ``Ant-v5`` (the same ``ant.xml`` and
      dt = 0.05 s as gym's ``Ant-v2``), not mujoco-py. Gymnasium calls
      ``mj_rnePostConstraint`` after each step, so ``cfrc_ext`` holds the real contact forces;
      under mujoco-py with MuJoCo 2.0 they were all zero (gym issue #1541), so the contact cost
      and the contact observations of many reproductions were zero.
    * Observation: 105-dim (v5 default). pytorch-maml-rl used 13 + 14 + 84 (cfrc_ext of all 14
      bodies) + the torso rotation matrix (9) + torso position (3) = 123 dims, float32 (the
      torso x, y leak in); ProMP used 111 dims (qpos[2:], qvel, all 14 bodies' cfrc_ext), 113
      for ``AntRandGoalEnv`` (which keeps the torso x, y).
    * AntDir2D: ProMP samples directions as normalised Gaussians (the same uniform law on the
      circle) from the global RNG, and uses control cost ``0.5 |a|^2``, survive ``1.0`` and
      termination outside z in [0, 1]. Here the costs, survive term (0.05) and health range of
      the MAML ant families are used so that the four ant families share one reward scale.
    * AntGoal: ProMP's ``AntRandGoalEnv`` samples goals in the disc of radius 3, uses no ``+4``,
      control cost ``0.1 |a|^2``, no survive term and no termination; here the MAML/rllab
      definition is used, with the ant's standard health termination.
    * API: Gymnasium 1.x ``(obs, r, terminated, truncated, info)``; tasks come only from an
      explicit ``numpy.random.Generator``. The ood splits and the divergence handling are
      additions of adaptbed.

Version history:
    v0: initial definition.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
from gymnasium.envs.mujoco.ant_v5 import AntEnv

from envs.mujoco_base import (
    MujocoMetaEnv,
    check_render_kwargs,
    direction_value,
    in_range,
    real,
    real_vector,
    sample_directions,
)
from envs.tasks import Direction2DTask, DirectionTask, GoalTask, TaskError, VelocityTask

CTRL_COST_WEIGHT = 0.005
CONTACT_COST_WEIGHT = 0.0005
SURVIVE_REWARD = 0.05
VELOCITY_RANGE = (-10.0, 10.0)
GOAL_RANGE = (-10.0, 10.0)
UNIT_NORM_TOLERANCE = 1e-6


class _AntTaskEnv(MujocoMetaEnv, AntEnv):
    """Ant-v5 with a task-dependent reward (see the module docstring)."""

    def __init__(self, task: Any = None, default_task: Any = None, **render_kwargs: Any):
        check_render_kwargs(type(self).__name__, render_kwargs)
        AntEnv.__init__(self, **render_kwargs)
        self._xy_before = np.zeros(2)
        self._init_task(task, default_task, render_kwargs)

    def _before_step(self) -> None:
        self._xy_before = self.data.body(self._main_body).xpos[:2].copy()

    def _task_reward(self, xy_velocity: np.ndarray, xy_position: np.ndarray) -> float:
        raise NotImplementedError

    def _get_rew(self, x_velocity: float, action):
        # Same arithmetic as AntEnv.step, so xy_velocity[0] == x_velocity exactly.
        xy_position = self.data.body(self._main_body).xpos[:2].copy()
        xy_velocity = (xy_position - self._xy_before) / self.dt
        forward_reward = float(self._task_reward(xy_velocity, xy_position))
        ctrl_cost = CTRL_COST_WEIGHT * float(np.sum(np.square(action)))
        contact_cost = CONTACT_COST_WEIGHT * float(np.sum(np.square(self.contact_forces)))
        reward = forward_reward - ctrl_cost - contact_cost + SURVIVE_REWARD
        return reward, {
            "reward_forward": forward_reward,
            "reward_ctrl": -ctrl_cost,
            "reward_contact": -contact_cost,
            "reward_survive": SURVIVE_REWARD,
        }


class AntVel(_AntTaskEnv):
    """Run forward at the goal velocity: ``r = -|v_x - v_goal| + 1.0 - costs + 0.05``.

    Tasks: ``VelocityTask(velocity)``; train velocity ~ U[0, 3]; ood U[3, 4]; valid [-10, 10];
    default (``task=None``) velocity 1.5, the centre of the train range. See the module
    docstring for the observation, costs and provenance.
    """

    task_type: ClassVar[type] = VelocityTask

    def __init__(self, task: VelocityTask | dict | None = None, **render_kwargs: Any):
        super().__init__(task, VelocityTask(velocity=1.5), **render_kwargs)

    def _sample_train_tasks(self, n: int, rng: np.random.Generator) -> list[VelocityTask]:
        return [VelocityTask(velocity=float(v)) for v in rng.uniform(0.0, 3.0, size=n)]

    def _sample_ood_tasks(self, n: int, rng: np.random.Generator) -> list[VelocityTask]:
        return [VelocityTask(velocity=float(v)) for v in rng.uniform(3.0, 4.0, size=n)]

    def _validate_task_values(self, task: VelocityTask) -> None:
        in_range("VelocityTask.velocity", real("VelocityTask.velocity", task.velocity),
                 *VELOCITY_RANGE)

    def _task_reward(self, xy_velocity: np.ndarray, xy_position: np.ndarray) -> float:
        return -abs(float(xy_velocity[0]) - float(self._task.velocity)) + 1.0


class AntDir(_AntTaskEnv):
    """Run forward (+1) or backward (-1) along x: ``r = direction * v_x - costs + 0.05``.

    Tasks: ``DirectionTask(direction)``, -1 or +1 with probability 1/2; no ood split (the two
    directions are exhaustive); valid: exactly -1 or +1; default +1. See the module docstring.
    """

    task_type: ClassVar[type] = DirectionTask

    def __init__(self, task: DirectionTask | dict | None = None, **render_kwargs: Any):
        super().__init__(task, DirectionTask(direction=1), **render_kwargs)

    def _sample_train_tasks(self, n: int, rng: np.random.Generator) -> list[DirectionTask]:
        return [DirectionTask(direction=d) for d in sample_directions(n, rng)]

    def _validate_task_values(self, task: DirectionTask) -> None:
        direction_value("DirectionTask.direction", task.direction)

    def _task_reward(self, xy_velocity: np.ndarray, xy_position: np.ndarray) -> float:
        return float(self._task.direction) * float(xy_velocity[0])


class AntDir2D(_AntTaskEnv):
    """Run along a unit direction in the plane: ``r = d . v_xy - costs + 0.05`` (ProMP).

    Tasks: ``Direction2DTask(direction=(cos t, sin t))`` with the angle t ~ U[0, 2 pi); no ood
    split (the circle of directions is the whole task set); valid: two finite numbers of unit
    norm within 1e-6; default (1, 0) (forward). See the module docstring.
    """

    task_type: ClassVar[type] = Direction2DTask

    def __init__(self, task: Direction2DTask | dict | None = None, **render_kwargs: Any):
        super().__init__(task, Direction2DTask(direction=(1.0, 0.0)), **render_kwargs)

    def _sample_train_tasks(self, n: int, rng: np.random.Generator) -> list[Direction2DTask]:
        angles = rng.uniform(0.0, 2.0 * math.pi, size=n)
        return [Direction2DTask(direction=(math.cos(t), math.sin(t))) for t in angles]

    def _validate_task_values(self, task: Direction2DTask) -> None:
        d = real_vector("Direction2DTask.direction", task.direction, 2)
        norm = math.hypot(d[0], d[1])
        if abs(norm - 1.0) > UNIT_NORM_TOLERANCE:
            raise TaskError(f"Direction2DTask.direction must have unit norm (within "
                            f"{UNIT_NORM_TOLERANCE}), got norm {norm}")

    def _task_reward(self, xy_velocity: np.ndarray, xy_position: np.ndarray) -> float:
        dx, dy = self._task.direction
        return float(dx) * float(xy_velocity[0]) + float(dy) * float(xy_velocity[1])


class AntGoal(_AntTaskEnv):
    """Walk to a goal position: ``r = -|xy - goal|_1 + 4.0 - costs + 0.05``.

    Tasks: ``GoalTask(goal=(gx, gy))``; train goal ~ U[-3, 3]^2; ood uniform on the square ring
    3 < max(|gx|, |gy|) <= 5; valid: both coordinates in [-10, 10]; default (0, 0), the centre of
    the train range (the ant's start). See the module docstring.
    """

    task_type: ClassVar[type] = GoalTask

    def __init__(self, task: GoalTask | dict | None = None, **render_kwargs: Any):
        super().__init__(task, GoalTask(goal=(0.0, 0.0)), **render_kwargs)

    def _sample_train_tasks(self, n: int, rng: np.random.Generator) -> list[GoalTask]:
        return [GoalTask(goal=(float(x), float(y))) for x, y in rng.uniform(-3.0, 3.0, size=(n, 2))]

    def _sample_ood_tasks(self, n: int, rng: np.random.Generator) -> list[GoalTask]:
        goals: list[GoalTask] = []
        while len(goals) < n:  # rejection from U[-5, 5]^2; accepts 64%
            x, y = rng.uniform(-5.0, 5.0, size=2)
            if max(abs(x), abs(y)) > 3.0:
                goals.append(GoalTask(goal=(float(x), float(y))))
        return goals

    def _validate_task_values(self, task: GoalTask) -> None:
        g = real_vector("GoalTask.goal", task.goal, 2)
        for i in range(2):
            in_range(f"GoalTask.goal[{i}]", float(g[i]), *GOAL_RANGE)

    def _task_reward(self, xy_velocity: np.ndarray, xy_position: np.ndarray) -> float:
        gx, gy = self._task.goal
        distance = abs(float(xy_position[0]) - float(gx)) + abs(float(xy_position[1]) - float(gy))
        return -distance + 4.0
