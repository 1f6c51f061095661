"""Shared machinery of the MuJoCo task families (HalfCheetah*, Ant*, *RandParams).

Every MuJoCo family is a Gymnasium v5 MuJoCo environment with :class:`MujocoMetaEnv` mixed in
*before* the Gymnasium class, e.g. ``class HalfCheetahVel(MujocoMetaEnv, HalfCheetahEnv)``.
The mixin adds, on top of :class:`envs.base.MetaEnv`:

* **Pickling keeps the task.** Gymnasium MuJoCo envs are ``EzPickle``: unpickling rebuilds the
  env from its constructor arguments. Each family's constructor takes ``task=None`` (plus
  rendering options only) and :meth:`MujocoMetaEnv._init_task` re-records exactly those
  arguments, so the rebuilt env is constructed with the current task (``MetaEnv.set_task``
  writes ``self._ezpickle_kwargs["task"]``). The simulator state (qpos, qvel) is not pickled,
  as in Gymnasium: call ``reset()`` after unpickling.
* **Action checks.** ``step`` passes the action through :func:`envs.base.check_action`: a wrong
  shape or a NaN/infinite entry raises ``ValueError`` before anything is simulated. Actions
  outside the action box are not rejected: MuJoCo clamps the control to the actuators'
  ``ctrlrange`` and the control cost uses the action as given (as in Gymnasium v5).
* **Diverged simulation.** When the MuJoCo state blows up during a step, MuJoCo prints a warning,
  bumps ``data.warning[mjWARN_BADQPOS | mjWARN_BADQVEL | mjWARN_BADQACC].number`` and silently
  resets the state to the model's reference configuration (``mj_resetData``), which would make
  the reward of that step meaningless. ``step`` zeroes those three counters before simulating and
  flags the step *unstable* when any of them is non-zero afterwards, or when the state,
  observation or reward is not finite. An unstable step returns the observation with non-finite
  entries replaced by 0 (after MuJoCo's reset it is already finite), ``reward = 0.0``,
  ``terminated = False``, ``truncated = True`` (the episode must be reset; it did not end for a
  reason the agent caused) and ``info["unstable"] = True`` (``False`` on every other step); every
  float in ``info`` is made finite too. Nothing raises and nothing NaN is returned.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import mujoco
import numpy as np
from gymnasium.utils import EzPickle

from envs.base import MetaEnv, TaskT, check_action, in_range, real, real_vector  # noqa: F401
from envs.tasks import TaskError

#: Constructor keywords forwarded to Gymnasium's ``MujocoEnv`` (rendering only). Everything that
#: defines the task family (xml file, frame skip, reward weights, health ranges, observation
#: layout, reset noise) is fixed by the family's version and cannot be overridden.
RENDER_KWARGS = frozenset(
    {"render_mode", "width", "height", "camera_id", "camera_name", "default_camera_config",
     "max_geom", "visual_options"}
)

#: MuJoCo warnings raised when it detects a diverged state and resets the simulation.
DIVERGENCE_WARNINGS = (
    mujoco.mjtWarning.mjWARN_BADQPOS,
    mujoco.mjtWarning.mjWARN_BADQVEL,
    mujoco.mjtWarning.mjWARN_BADQACC,
)


def check_render_kwargs(cls_name: str, kwargs: Mapping[str, Any]) -> None:
    """Raise ``TypeError`` for constructor keywords other than ``task`` and rendering options."""
    unknown = sorted(set(kwargs) - RENDER_KWARGS)
    if unknown:
        raise TypeError(
            f"{cls_name} takes task=... and rendering options {sorted(RENDER_KWARGS)}; "
            f"got {unknown} (reward, dynamics and observation settings are fixed by the version)"
        )


class MujocoMetaEnv(MetaEnv[TaskT]):
    """Mixin for Gymnasium v5 MuJoCo envs: task pickling, action checks, divergence handling.

    Place it before the Gymnasium class in the bases. Subclass constructors call the Gymnasium
    constructor first and then :meth:`_init_task`. Subclasses may override :meth:`_before_step`
    to record state needed by their reward (it runs after the action check, before simulating).
    """

    # --- construction -------------------------------------------------------------------------
    def _init_task(self, task: Any, default_task: Any, render_kwargs: Mapping[str, Any]) -> None:
        """Record the constructor arguments for pickling, then set ``task`` (or the default)."""
        # The Gymnasium constructor recorded its own positional arguments; replace them with ours
        # so that unpickling calls ``type(self)(task=..., **render_kwargs)``.
        EzPickle.__init__(self, task=task, **dict(render_kwargs))
        self.set_task(default_task if task is None else task)

    # --- gymnasium ----------------------------------------------------------------------------
    def step(self, action):
        a = check_action(action, self.action_space.shape)
        for w in DIVERGENCE_WARNINGS:
            self.data.warning[w].number = 0
        self._before_step()
        obs, reward, terminated, truncated, info = super().step(a)
        if self._diverged(obs, reward):
            return self._unstable_result(obs, info)
        info["unstable"] = False
        return obs, float(reward), bool(terminated), bool(truncated), info

    def _before_step(self) -> None:
        """Hook run before the simulation of each step (after the action check)."""

    # --- divergence ---------------------------------------------------------------------------
    def _diverged(self, obs: np.ndarray, reward: float) -> bool:
        warned = any(self.data.warning[w].number > 0 for w in DIVERGENCE_WARNINGS)
        return bool(
            warned
            or not np.all(np.isfinite(self.state_vector()))
            or not np.all(np.isfinite(obs))
            or not np.isfinite(reward)
        )

    def _unstable_result(self, obs: np.ndarray, info: dict) -> tuple:
        safe_obs = np.nan_to_num(np.asarray(obs), nan=0.0, posinf=0.0, neginf=0.0)
        safe_info = {k: _finite(v) for k, v in info.items()}
        safe_info["unstable"] = True
        return safe_obs.astype(self.observation_space.dtype), 0.0, False, True, safe_info


def _finite(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else 0.0
    if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
        return np.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0)
    return value


# --- task-value checks shared by the families ---------------------------------------------------
def direction_value(name: str, value: Any) -> None:
    """:class:`TaskError` unless ``value`` is exactly -1 or +1."""
    v = real(name, value)
    if v not in (-1.0, 1.0):
        raise TaskError(f"{name} must be -1 or +1, got {value!r}")


def sample_directions(n: int, rng: np.random.Generator) -> Sequence[int]:
    """``n`` fair draws from {-1, +1}."""
    return [int(2 * b - 1) for b in rng.integers(0, 2, size=n)]
