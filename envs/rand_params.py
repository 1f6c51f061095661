"""HopperRandParams and Walker2dRandParams: hop or walk forward under hidden physical parameters.

Description:
    Gymnasium's ``Hopper-v5`` / ``Walker2d-v5`` (MuJoCo, planar one- and two-legged robots)
    whose physical parameters are the task: every body's mass and principal inertias, every
    geom's three friction coefficients and every degree of freedom's joint damping are the
    model's original values times per-element multipliers. The reward is the same for all
    tasks; the dynamics differ and can only be inferred from experience. Built by subclassing
    ``gymnasium.envs.mujoco.hopper_v5.HopperEnv`` / ``walker2d_v5.Walker2dEnv`` and overriding
    the reward hook ``_get_rew``; the shared action checks, task pickling and divergence
    handling are in :mod:`envs.mujoco_base`.

Observation:
    The v5 default, float64: ``qpos[1:]`` (the x position is excluded) followed by
    ``clip(qvel, -10, 10)``. HopperRandParams: shape (11,) = 5 + 6. Walker2dRandParams: shape
    (17,) = 8 + 9.

Action:
    Joint torques in [-1, 1]: shape (3,) for the hopper, (6,) for the walker (float32). A wrong
    shape or a non-finite entry raises ``ValueError``; MuJoCo clamps out-of-box actions to the
    ctrlrange, while the control cost uses the action as given.

Reward:
    ``r = v_x + 1.0 - 1e-3 * |a|^2`` with ``v_x = (x_after - x_before) / dt`` of the root slide
    joint ``qpos[0]`` over one environment step (as v5 measures it), ``dt = timestep 0.002 s *
    frame_skip 4 = 0.008 s``, ``|a|^2 = sum_i a_i^2``. The alive bonus 1.0 is paid on every
    step, the terminating one included (v5 pays it only while healthy, so the two differ on the
    last step of a terminated episode only). ``info`` holds ``reward_forward`` (``v_x``),
    ``reward_ctrl``, ``reward_survive`` (1.0), v5's ``x_position``, ``z_distance_from_origin``,
    ``x_velocity``, and ``unstable``.

Episode end:
    The standard v5 health termination. Hopper: terminates unless every entry of
    ``state_vector()[2:]`` lies in (-100, 100), the height ``qpos[1] > 0.7`` and the torso angle
    ``qpos[2]`` lies in (-0.2, 0.2). Walker2d: terminates unless ``0.8 < qpos[1] < 2.0`` and
    ``-1 < qpos[2] < 1``. Truncated after the horizon of 200 steps (``max_episode_steps`` of the
    registered id). A diverged simulation (likelier at extreme multipliers) truncates the episode
    with reward 0 and ``info["unstable"] = True`` (see :mod:`envs.mujoco_base`).

Tasks:
    ``DynamicsTask(body_mass, body_inertia, geom_friction, dof_damping)``: flat tuples of
    multipliers, one per element of ``model.body_mass`` (nbody), ``model.body_inertia``
    (nbody * 3, row-major), ``model.geom_friction`` (ngeom * 3, row-major: sliding, torsional,
    rolling) and ``model.dof_damping`` (nv). Hopper: nbody 5, ngeom 5, nv 6 (lengths 5, 15, 15,
    6). Walker2d: nbody 8, ngeom 8, nv 9 (lengths 8, 24, 24, 9). The world body (mass and
    inertia 0, so its multipliers have no effect) and the floor geom (its friction does matter:
    MuJoCo takes the larger friction of the two geoms in contact) are included, as in ProMP.

    * Train: every mass, inertia and friction multiplier is ``1.5 ** u`` and every damping
      multiplier ``1.3 ** u``, with an independent ``u ~ U[-3, 3)`` per element.
    * Out of distribution: the same with ``|u| ~ U[3, 4)`` and an independent random sign per
      element, so every element is beyond the training range.
    * Valid range: the right lengths, and every multiplier a finite number in
      [1.5**-6, 1.5**6] (about [0.088, 11.4]) for masses, inertias and frictions and in
      [1.3**-6, 1.3**6] (about [0.21, 4.83]) for damping, i.e. up to twice the training
      exponent range.
    * Default (``task=None``): all multipliers 1, the unmodified v5 model.

    ``set_task`` writes ``original * multiplier`` into the model, always from a copy of the
    original arrays taken at construction, so setting a task twice (or several tasks in turn)
    never compounds. The inertias are scaled independently per axis (as in ProMP), which may
    break the triangle inequality of principal inertias that MuJoCo's compiler would check; the
    simulator accepts such values at run time. After writing the arrays ``set_task`` calls
    ``mujoco.mj_setConst(model, data)`` so that the constants MuJoCo derives from them at
    compile time (subtree masses, the inverse weights ``body_invweight0`` / ``dof_invweight0``
    used by the constraint solver, ``actuator_acc0``, the model statistics such as mean inertia)
    match the new parameters, exactly as if the scaled model had been compiled; the simulation
    state (``mjSTATE_INTEGRATION``) is saved around that call and restored, then ``mj_forward``
    refreshes the derived quantities. ProMP (mujoco-py) wrote the arrays only and kept the
    stale constants.

Provenance:
    Rothfuss et al. 2019 (ProMP), "HopperRandParams" / "Walker2DRandParams", from the
    ``rand_param_envs`` package: same four parameter groups, bases 1.5 and 1.3, exponent range
    3, reward ``v_x + 1 - 1e-3 |a|^2`` and health termination. Differences:

    * Simulator: MuJoCo 3.3 through Gymnasium's ``Hopper-v5`` / ``Walker2d-v5``; ProMP used the
      old mujoco-py 0.5 / MuJoCo 1.31 bundled in ``rand_param_envs``. Gymnasium's models differ
      in details; in particular ``walker2d_v5.xml`` gives both feet friction 1.9 (gym v2's
      model had 0.9 and 1.9).
    * Time step: both use dt = 0.008 s (frame_skip 4) here; ProMP's walker used frame_skip 5
      (dt = 0.01 s), its hopper 4.
    * Observation: the same layout as ProMP (``qpos[1:]``, clipped ``qvel``): 11 and 17 dims.
    * ``mj_setConst`` after every task change (see Tasks); ProMP did not recompute constants.
    * Horizon 200 (ProMP's experiments used 200 as well; Gymnasium's default is 1000).
    * API: Gymnasium 1.x ``(obs, r, terminated, truncated, info)``; tasks are frozen
      dataclasses drawn only from an explicit ``numpy.random.Generator`` (ProMP used the
      global RNG); the ood split, the validity range and the divergence handling are additions
      of adaptbed.

Version history:
    v0: initial definition.
"""

from __future__ import annotations

from typing import Any, ClassVar

import mujoco
import numpy as np
from gymnasium.envs.mujoco.hopper_v5 import HopperEnv
from gymnasium.envs.mujoco.walker2d_v5 import Walker2dEnv

from envs.mujoco_base import MujocoMetaEnv, check_render_kwargs, in_range, real_vector
from envs.tasks import DynamicsTask

#: Task fields in order, with the base of their multipliers.
PARAM_BASES: dict[str, float] = {
    "body_mass": 1.5,
    "body_inertia": 1.5,
    "geom_friction": 1.5,
    "dof_damping": 1.3,
}
TRAIN_EXPONENT = 3.0  # u ~ U[-3, 3)
OOD_EXPONENT = (3.0, 4.0)  # |u| ~ U[3, 4)
VALID_EXPONENT = 6.0  # multipliers within base ** [-6, 6]
ALIVE_BONUS = 1.0
CTRL_COST_WEIGHT = 1e-3


class _RandParamsEnv(MujocoMetaEnv):
    """A v5 locomotion env whose physical parameters are the task (see the module docstring)."""

    task_type: ClassVar[type] = DynamicsTask

    def _init_params(self, task: Any, render_kwargs: dict) -> None:
        self._original_params = {
            name: getattr(self.model, name).copy() for name in PARAM_BASES
        }
        self._init_task(task, self.default_task(), render_kwargs)

    # --- tasks --------------------------------------------------------------------------------
    def param_lengths(self) -> dict[str, int]:
        """The length of each ``DynamicsTask`` field for this model."""
        return {name: int(self._original_params[name].size) for name in PARAM_BASES}

    def default_task(self) -> DynamicsTask:
        """All multipliers 1: the unmodified model."""
        return DynamicsTask(**{name: (1.0,) * n for name, n in self.param_lengths().items()})

    def _sample_train_tasks(self, n: int, rng: np.random.Generator) -> list[DynamicsTask]:
        lengths = self.param_lengths()
        tasks = []
        for _ in range(n):
            fields = {}
            for name, base in PARAM_BASES.items():
                u = rng.uniform(-TRAIN_EXPONENT, TRAIN_EXPONENT, size=lengths[name])
                fields[name] = tuple(float(m) for m in base**u)
            tasks.append(DynamicsTask(**fields))
        return tasks

    def _sample_ood_tasks(self, n: int, rng: np.random.Generator) -> list[DynamicsTask]:
        lengths = self.param_lengths()
        tasks = []
        for _ in range(n):
            fields = {}
            for name, base in PARAM_BASES.items():
                size = lengths[name]
                sign = 2.0 * rng.integers(0, 2, size=size) - 1.0
                u = sign * rng.uniform(*OOD_EXPONENT, size=size)
                fields[name] = tuple(float(m) for m in base**u)
            tasks.append(DynamicsTask(**fields))
        return tasks

    def _validate_task_values(self, task: DynamicsTask) -> None:
        for name, n in self.param_lengths().items():
            base = PARAM_BASES[name]
            values = real_vector(f"DynamicsTask.{name}", getattr(task, name), n)
            low, high = base**-VALID_EXPONENT, base**VALID_EXPONENT
            for i, v in enumerate(values):
                in_range(f"DynamicsTask.{name}[{i}]", float(v), low, high)

    def _apply_task(self, task: DynamicsTask) -> None:
        model, data = self.model, self.data
        for name in PARAM_BASES:
            original = self._original_params[name]
            multipliers = np.asarray(getattr(task, name), dtype=np.float64).reshape(original.shape)
            getattr(model, name)[...] = original * multipliers
        # Recompute the constants MuJoCo derives from these arrays; mj_setConst works on `data`
        # at the reference configuration, so keep the current state around it.
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        state = np.empty(mujoco.mj_stateSize(model, spec))
        mujoco.mj_getState(model, data, state, spec)
        mujoco.mj_setConst(model, data)
        mujoco.mj_setState(model, data, state, spec)
        mujoco.mj_forward(model, data)

    # --- reward -------------------------------------------------------------------------------
    def _get_rew(self, x_velocity: float, action):
        forward_reward = float(x_velocity)
        ctrl_cost = CTRL_COST_WEIGHT * float(np.sum(np.square(action)))
        reward = forward_reward + ALIVE_BONUS - ctrl_cost
        return reward, {
            "reward_forward": forward_reward,
            "reward_ctrl": -ctrl_cost,
            "reward_survive": ALIVE_BONUS,
        }


class HopperRandParams(_RandParamsEnv, HopperEnv):
    """Hopper-v5 with randomized masses, inertias, frictions and damping (see the module docstring).

    Args:
        task: a ``DynamicsTask`` (lengths 5, 15, 15, 6) or its dict; ``None`` gives all ones.
        **render_kwargs: rendering options of Gymnasium's ``MujocoEnv`` (``render_mode``, ...).
    """

    def __init__(self, task: DynamicsTask | dict | None = None, **render_kwargs: Any):
        check_render_kwargs(type(self).__name__, render_kwargs)
        HopperEnv.__init__(self, **render_kwargs)
        self._init_params(task, render_kwargs)


class Walker2dRandParams(_RandParamsEnv, Walker2dEnv):
    """Walker2d-v5 with randomized masses, inertias, frictions and damping (see the module
    docstring).

    Args:
        task: a ``DynamicsTask`` (lengths 8, 24, 24, 9) or its dict; ``None`` gives all ones.
        **render_kwargs: rendering options of Gymnasium's ``MujocoEnv`` (``render_mode``, ...).
    """

    def __init__(self, task: DynamicsTask | dict | None = None, **render_kwargs: Any):
        check_render_kwargs(type(self).__name__, render_kwargs)
        Walker2dEnv.__init__(self, **render_kwargs)
        self._init_params(task, render_kwargs)
