"""A batched simulator for the MuJoCo task families: one object steps a whole meta-batch.

:class:`MujocoBatchEnv` implements the :class:`envs.vector.TaskVectorEnv` protocol for every
MuJoCo family (HalfCheetahVel/Dir, AntVel/Dir/Dir2D/Goal, HopperRandParams,
Walker2dRandParams) and simulates *the same* environment as the registered single Gymnasium
env, step for step, so that it gives bit-for-bit the episodes of
:class:`envs.vector.SyncTaskVectorEnv` for the same seed, tasks and actions.

How it steps:
    Every environment keeps its own persistent ``MjData``, so MuJoCo's solver warm start
    (``qacc_warmstart``) and the kinematics left by the last substep (the torso ``xpos`` the Ant
    measures its velocity on) carry over between steps exactly as in the single env. One
    ``step`` advances each running env with ``frame_skip`` calls of ``mj_step``, plus
    ``mj_rnePostConstraint`` for the Ant, whose observation and reward use the contact forces
    ``cfrc_ext`` (the other robots skip it: it only fills ``cacc``/``cfrc_int``/``cfrc_ext``,
    which nothing they use reads), then gathers the state (``qpos``, ``qvel``, torso position,
    contact forces, warning counters) into batch arrays; observations, rewards, terminations
    and divergence flags are computed for the whole batch with numpy. Two loops do this, with
    the same results bit for bit:

    * native (the default where ``pip install`` could compile it): ``envs/mjbatch.c`` through
      :mod:`envs.native`, on its own pool of ``num_threads - 1`` threads plus the calling one,
      with the GIL released for the whole step, so no per-environment Python work is left
      (measured on 2 cores: a halfcheetah-vel meta-iteration's sampling took 6.35-6.78 s
      against 7.73-7.84 s with the Python loop, 0.66-0.72 of the physics limit as then measured,
      by Python threads; README,
      "Fast sampling");
    * Python (``native=False``, ``ADAPTBED_NATIVE=0``, or not built): the running envs are cut
      into blocks; the calling thread and up to ``num_threads - 1`` pool threads take the next
      block until none is left. MuJoCo releases the GIL inside ``mj_step``, but the control
      write, the calls and the copies of every env hold it.

    The native loop also runs whole episodes with the policy inside (:meth:`run_episodes`,
    ``run.sampler=native``): each env from its first step to its last on one thread; the
    outcomes are then computed from the gathered states by the same code as :meth:`step`.

    Both cut only the running envs into blocks, taken in turn by the threads; batches with
    fewer than ``min_envs_per_thread`` running envs per thread use fewer threads. Envs whose
    episodes ended are skipped, so the families that terminate (Ant, Hopper, Walker) spend much
    of a batch's time with few envs running: there a second thread pays from 2 running envs per
    thread, so from 4 running envs on (``python -m experiments.bench_threads --family AntVel
    HopperRandParams HalfCheetahVel --threads 2 --sizes 8x8,1x8 --min-envs-per-thread 8,2``, three runs, README "Fast
    sampling"; AntVel, 64 envs: 5,314-5,583 env steps/s with at least 8 envs per thread,
    5,782-6,303 with 2).

    ``mujoco.rollout`` (the C++ thread pool stepping a batch from given states) was measured as
    the alternative: it is at most about 10-15% faster on HalfCheetah and Ant (2 threads, no
    policy), but it restarts every call from ``mjSTATE_FULLPHYSICS`` without the warm start
    (it takes one in, gives none back), so its trajectories leave the single env's from the
    first step on (HalfCheetah: 2e-15 after one step, 1e-2 after 100), and it returns neither
    ``cfrc_ext`` nor MuJoCo's warnings.

One definition of the environment:
    Task validation is the single env's ``coerce_task``; the reset noise is drawn by the single
    env's own ``reset(seed)`` (a prototype env, whose initial ``qpos``/``qvel`` are copied into
    the environment's ``MjData`` before ``mj_forward``, as ``MujocoEnv.set_state`` does); the
    RandParams models are copies of the prototype's model after its own ``set_task`` (one
    model per distinct task, shared by the environments running that task); reward weights,
    health ranges and frame skips are read from the single envs' modules and instances. The
    vectorised reward and observation formulas below repeat the single envs' arithmetic in the
    same order, which ``tests/envs/test_mujoco_batch.py`` checks bit for bit.

Divergence:
    As in :mod:`envs.mujoco_base`: a step is *unstable* when MuJoCo raised one of its
    bad-qpos/qvel/qacc warnings during it (the counters are compared with their values before
    the step) or the state, observation or reward is not finite; the step then returns the
    observation with non-finite entries replaced by 0, reward 0, ``terminated = False``,
    ``truncated = True`` and ``unstable = True``, and the environment is frozen.
"""

from __future__ import annotations

import copy
import ctypes
import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import gymnasium as gym
import mujoco
import numpy as np
import torch
from gymnasium.envs.mujoco.ant_v5 import AntEnv
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
from gymnasium.envs.mujoco.hopper_v5 import HopperEnv
from gymnasium.envs.mujoco.walker2d_v5 import Walker2dEnv
from torch import Tensor

from envs import ant, half_cheetah, rand_params
from envs import native as envs_native
from envs.mujoco_base import DIVERGENCE_WARNINGS
from envs.registry import family, make
from envs.vector import VectorStep, env_seeds

#: Thread names of the stepping pool (``threading.enumerate()`` shows them while it runs).
THREAD_PREFIX = "mujoco-batch"
#: Blocks per thread of one step, taken in turn by whichever thread is free: small enough to
#: balance uneven envs (contacts), large enough that taking one costs nothing.
BLOCKS_PER_THREAD = 4
#: Blocks of whole episodes per thread in ``run_episodes`` (more than for a step: episodes end
#: at different steps), of at least ``EPISODE_BLOCK`` envs: two threads that run neighbouring
#: envs at the same steps write neighbouring rows of the gathered arrays (shared cache lines).
EPISODE_BLOCKS_PER_THREAD = 16
EPISODE_BLOCK = 4
#: Fewest running envs per thread worth waking a thread for (see the class docstring); smaller
#: batches are stepped on the calling thread.
MIN_ENVS_PER_THREAD = 2

#: From this many environments on, this simulator steps faster than ``SyncTaskVectorEnv``
#: (measured on 2 cores, random actions: about equal at 1 env, 1.1-1.6x at 4, 2-3x from 16 on;
#: the fixed numpy cost of a batched step only pays off over a few envs).
FASTER_FROM_ENVS = 4

#: ``(velocity [B, 2], position [B, 2], task values [B, K]) -> task reward term [B]``.
TaskTerm = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


# --- the task terms of the rewards, as in the single envs (same operations, same order) ---------
def _cheetah_vel(vel: np.ndarray, pos: np.ndarray, task: np.ndarray) -> np.ndarray:
    """``-|v_x - v_goal|`` (``HalfCheetahVel._forward_reward``)."""
    return -np.abs(vel[:, 0] - task[:, 0])


def _direction_x(vel: np.ndarray, pos: np.ndarray, task: np.ndarray) -> np.ndarray:
    """``direction * v_x`` (``HalfCheetahDir._forward_reward``, ``AntDir._task_reward``)."""
    return task[:, 0] * vel[:, 0]


def _ant_vel(vel: np.ndarray, pos: np.ndarray, task: np.ndarray) -> np.ndarray:
    """``-|v_x - v_goal| + 1`` (``AntVel._task_reward``)."""
    return -np.abs(vel[:, 0] - task[:, 0]) + 1.0


def _ant_dir_2d(vel: np.ndarray, pos: np.ndarray, task: np.ndarray) -> np.ndarray:
    """``d . v_xy`` (``AntDir2D._task_reward``)."""
    return task[:, 0] * vel[:, 0] + task[:, 1] * vel[:, 1]


def _ant_goal(vel: np.ndarray, pos: np.ndarray, task: np.ndarray) -> np.ndarray:
    """``-|xy - goal|_1 + 4`` (``AntGoal._task_reward``)."""
    return -(np.abs(pos[:, 0] - task[:, 0]) + np.abs(pos[:, 1] - task[:, 1])) + 4.0


def _forward_x(vel: np.ndarray, pos: np.ndarray, task: np.ndarray) -> np.ndarray:
    """``v_x`` (``_RandParamsEnv._get_rew``)."""
    return vel[:, 0]


#: family class -> (task term, the task's values as a tuple of floats).
TASK_TERMS: dict[type, tuple[TaskTerm, Callable[[Any], tuple[float, ...]]]] = {
    half_cheetah.HalfCheetahVel: (_cheetah_vel, lambda t: (float(t.velocity),)),
    half_cheetah.HalfCheetahDir: (_direction_x, lambda t: (float(t.direction),)),
    ant.AntVel: (_ant_vel, lambda t: (float(t.velocity),)),
    ant.AntDir: (_direction_x, lambda t: (float(t.direction),)),
    ant.AntDir2D: (_ant_dir_2d, lambda t: tuple(float(d) for d in t.direction)),
    ant.AntGoal: (_ant_goal, lambda t: tuple(float(g) for g in t.goal)),
    rand_params.HopperRandParams: (_forward_x, lambda t: ()),
    rand_params.Walker2dRandParams: (_forward_x, lambda t: ()),
}


def supports(family_name: str) -> bool:
    """Whether :class:`MujocoBatchEnv` simulates the family given by name, id or preset."""
    spec = family(family_name)
    module, cls = spec.entry_point.split(":")
    return any(t.__module__ == module and t.__name__ == cls for t in TASK_TERMS)


def default_threads() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --- the robots: observation, reward assembly, health --------------------------------------------
class _Robot:
    """What one Gymnasium v5 robot contributes: observation, costs, health (batched).

    Args:
        proto: an unwrapped single env of the family, for its configured constants.
    """

    contacts = False  # whether cfrc_ext is needed (mj_rnePostConstraint after each step)
    position_body: int | None = None  # body whose xpos[:2] measures the velocity; None: qpos[0]

    def __init__(self, proto: Any):
        self.proto = proto

    def observe(self, qpos: np.ndarray, qvel: np.ndarray, cfrc: np.ndarray | None) -> np.ndarray:
        """Observations ``[B, D]`` (float64) from ``qpos [B, nq]``, ``qvel [B, nv]``."""
        raise NotImplementedError

    def reward(self, task_term: np.ndarray, actions: np.ndarray,
               cfrc: np.ndarray | None) -> np.ndarray:
        """Rewards ``[B]`` from the task term ``[B]`` and the actions ``[B, A]`` (float64)."""
        raise NotImplementedError

    def healthy(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """``[B]`` bool: the v5 health condition (always true for robots that never fall)."""
        return np.ones(len(qpos), dtype=bool)

    def terminated(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        """``[B]`` bool: unhealthy and the env terminates when unhealthy."""
        if not self.terminates:
            return np.zeros(len(qpos), dtype=bool)
        return ~self.healthy(qpos, qvel)

    @property
    def terminates(self) -> bool:
        return bool(getattr(self.proto, "_terminate_when_unhealthy", False))

    @property
    def nq(self) -> int:
        return int(self.proto.model.nq)

    @property
    def nv(self) -> int:
        return int(self.proto.model.nv)

    def segments(self) -> list[envs_native.Segment]:
        """:meth:`observe` for the native loop: the same parts, in the same order."""
        raise NotImplementedError

    def checks(self) -> list[envs_native.Check]:
        """:meth:`terminated` for the native loop, whose finite checks cover the rest (none
        where the env does not terminate)."""
        return []


def _ctrl_sq(actions: np.ndarray) -> np.ndarray:
    """``sum_i a_i^2`` per row ``[B]`` (the same pairwise sum as on one action)."""
    return np.sum(np.square(actions), axis=1)


class _Cheetah(_Robot):
    def observe(self, qpos, qvel, cfrc):
        return np.concatenate((qpos[:, 1:], qvel), axis=1)

    def segments(self):
        return [envs_native.Segment("qpos", 1, self.nq - 1),
                envs_native.Segment("qvel", 0, self.nv)]

    def reward(self, task_term, actions, cfrc):
        return task_term - half_cheetah.CTRL_COST_WEIGHT * _ctrl_sq(actions)


class _Ant(_Robot):
    contacts = True

    def __init__(self, proto: Any):
        super().__init__(proto)
        self.position_body = int(proto.data.body(proto._main_body).id)
        self.low, self.high = proto._contact_force_range
        self.min_z, self.max_z = proto._healthy_z_range

    def contact_forces(self, cfrc: np.ndarray) -> np.ndarray:
        """``clip(cfrc_ext, low, high)`` ``[B, nbody, 6]`` (``AntEnv.contact_forces``)."""
        return np.clip(cfrc, self.low, self.high)

    def observe(self, qpos, qvel, cfrc):
        forces = self.contact_forces(cfrc)[:, 1:].reshape(len(qpos), -1)
        return np.concatenate((qpos[:, 2:], qvel, forces), axis=1)

    def segments(self):
        nbody = int(self.proto.model.nbody)
        return [envs_native.Segment("qpos", 2, self.nq - 2),
                envs_native.Segment("qvel", 0, self.nv),
                envs_native.Segment("cfrc", 6, 6 * (nbody - 1), self.low, self.high)]

    def checks(self):
        if not self.terminates:
            return []
        return [envs_native.Check("qpos", 2, self.min_z, self.max_z, inclusive=True)]

    def reward(self, task_term, actions, cfrc):
        ctrl_cost = ant.CTRL_COST_WEIGHT * _ctrl_sq(actions)
        forces = self.contact_forces(cfrc).reshape(len(cfrc), -1)
        contact_cost = ant.CONTACT_COST_WEIGHT * np.sum(np.square(forces), axis=1)
        return task_term - ctrl_cost - contact_cost + ant.SURVIVE_REWARD

    def healthy(self, qpos, qvel):
        finite = np.isfinite(qpos).all(axis=1) & np.isfinite(qvel).all(axis=1)
        z = qpos[:, 2]
        return finite & (self.min_z <= z) & (z <= self.max_z)


class _Planar(_Robot):
    """Hopper and Walker2d: ``qpos[1:]``, ``clip(qvel, -10, 10)``; height and angle health."""

    def __init__(self, proto: Any):
        super().__init__(proto)
        self.min_z, self.max_z = proto._healthy_z_range
        self.min_angle, self.max_angle = proto._healthy_angle_range

    def observe(self, qpos, qvel, cfrc):
        return np.concatenate((qpos[:, 1:], np.clip(qvel, -10, 10)), axis=1)

    def segments(self):
        return [envs_native.Segment("qpos", 1, self.nq - 1),
                envs_native.Segment("qvel", 0, self.nv, -10.0, 10.0)]

    def checks(self):
        if not self.terminates:
            return []
        return [envs_native.Check("qpos", 1, self.min_z, self.max_z),
                envs_native.Check("qpos", 2, self.min_angle, self.max_angle)]

    def reward(self, task_term, actions, cfrc):
        ctrl_cost = rand_params.CTRL_COST_WEIGHT * _ctrl_sq(actions)
        return task_term + rand_params.ALIVE_BONUS - ctrl_cost

    def healthy(self, qpos, qvel):
        z, angle = qpos[:, 1], qpos[:, 2]
        return ((self.min_z < z) & (z < self.max_z)
                & (self.min_angle < angle) & (angle < self.max_angle))


class _Hopper(_Planar):
    def __init__(self, proto: Any):
        super().__init__(proto)
        self.min_state, self.max_state = proto._healthy_state_range

    def healthy(self, qpos, qvel):
        state = np.concatenate((qpos, qvel), axis=1)[:, 2:]
        in_range = np.all((self.min_state < state) & (state < self.max_state), axis=1)
        return in_range & super().healthy(qpos, qvel)

    def checks(self):
        if not self.terminates:
            return []
        state = [("qpos", k) for k in range(2, self.nq)] + [("qvel", k) for k in range(self.nv)]
        return super().checks() + [envs_native.Check(field, k, self.min_state, self.max_state)
                                   for field, k in state]


def _robot(proto: Any) -> _Robot:
    for base, robot in ((HalfCheetahEnv, _Cheetah), (AntEnv, _Ant), (HopperEnv, _Hopper),
                        (Walker2dEnv, _Planar)):
        if isinstance(proto, base):
            return robot(proto)
    raise ValueError(f"no batched simulator for {type(proto).__name__}")


# --- the simulator --------------------------------------------------------------------------------
class MujocoBatchEnv:
    """All environments of a meta-batch of one MuJoCo family, stepped together on all cores.

    Implements :class:`envs.vector.TaskVectorEnv` with the semantics of
    :class:`envs.vector.SyncTaskVectorEnv`: one episode per ``reset``; an environment that
    terminates, is truncated at ``horizon`` or diverges is frozen (zeros) until the next
    ``reset``.

    Args:
        family_name: a MuJoCo family's name, id or preset.
        num_envs: ``B``, the number of environments.
        device: where the returned tensors live.
        horizon: episode length (default: the family's).
        num_threads: stepping threads, the calling one included (default: the cores this
            process may use); 1 steps everything on the calling thread.
        min_envs_per_thread: fewest running envs per stepping thread; a step with fewer
            running envs uses fewer threads.
        native: step with the C loop of :mod:`envs.native` (``True``), with the Python loop
            (``False``), or with the C loop when it was built (``None``, the default). Both
            give the same results bit for bit; :attr:`native` tells which one is used.
    Raises:
        ValueError: ``num_envs`` or ``num_threads`` below 1, or a family this class does not
            simulate (Navigation2D).
        RuntimeError: ``native=True`` and the C loop was not built or cannot be loaded.
    """

    def __init__(self, family_name: str, num_envs: int, device: torch.device | str = "cpu",
                 horizon: int | None = None, num_threads: int | None = None,
                 min_envs_per_thread: int = MIN_ENVS_PER_THREAD, native: bool | None = None):
        if num_envs < 1:
            raise ValueError(f"num_envs must be positive, got {num_envs}")
        spec = family(family_name)
        if not supports(spec.name):
            raise ValueError(f"the mujoco backend does not simulate {spec.name}")
        threads = default_threads() if num_threads is None else num_threads
        if threads < 1:
            raise ValueError(f"num_threads must be positive, got {num_threads}")
        if min_envs_per_thread < 1:
            raise ValueError(f"min_envs_per_thread must be positive, got {min_envs_per_thread}")
        self.family = spec.name
        self.num_envs = num_envs
        self.horizon = spec.horizon if horizon is None else horizon
        self.device = torch.device(device)
        self.num_threads = min(threads, num_envs)
        self.min_envs_per_thread = min_envs_per_thread
        self._proto = make(spec.name).unwrapped
        self.observation_space: gym.Space = self._proto.observation_space
        self.action_space: gym.Space = self._proto.action_space
        self._robot = _robot(self._proto)
        self._task_term, self._task_values = TASK_TERMS[type(self._proto)]
        self._per_task_models = isinstance(self._proto, rand_params._RandParamsEnv)
        self._frame_skip = int(self._proto.frame_skip)
        self._dt = self._proto.dt
        base = copy.copy(self._proto.model)  # the default task's model
        self._models: list[mujoco.MjModel] = [base] * num_envs
        self._task_models: dict[Any, mujoco.MjModel] = {}
        self._datas = [mujoco.MjData(base) for _ in range(num_envs)]
        self._views = _Views(self._datas, self._robot)
        self._tasks: list[Any] = [self._proto.get_task()] * num_envs
        self._params = np.array([self._task_values(t) for t in self._tasks], dtype=np.float64)
        self._params = self._params.reshape(num_envs, -1)
        self._running = np.zeros(num_envs, dtype=bool)
        self._position = np.zeros((num_envs, 2))
        self._warnings = np.zeros((num_envs, len(DIVERGENCE_WARNINGS)), dtype=np.int64)
        self._t = 0
        self._failed = False  # a step raised: the states are partly stepped until reset
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        if self.num_threads > 1:  # the calling thread is the first stepping thread
            self._new_pool()
        self._stepper = self._native_stepper(native)

    @property
    def native(self) -> bool:
        """Whether steps run the C loop of :mod:`envs.native` (else the Python loop)."""
        return self._stepper is not None

    def _native_stepper(self, native: bool | None) -> "envs_native.Stepper | None":
        if native is False:
            return None
        lib = envs_native.library()
        if lib is None:
            if native:
                raise RuntimeError("the native stepping loop is not available: "
                                   f"{envs_native.unavailable_reason()}")
            return None
        fields = {"qpos": self._views.qpos, "qvel": self._views.qvel,
                  "warning": self._views.warning_stats}
        if self._views.xpos is not None:
            fields["xpos"] = self._views.xpos
        if self._views.cfrc is not None:
            fields["cfrc"] = self._views.cfrc
        return envs_native.Stepper(lib, self.num_threads, self._models, self._datas,
                                   self._views.ctrl, fields, self._frame_skip,
                                   self._robot.contacts)

    # --- tasks ---------------------------------------------------------------------------------
    def set_tasks(self, tasks: Sequence) -> None:
        """One task per environment (validated by the single env's ``coerce_task``).

        Raises:
            ValueError: ``len(tasks) != num_envs``.
            TaskError: a task of the wrong type or outside the family's valid range.
        """
        if len(tasks) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} tasks, got {len(tasks)}")
        coerced = [self._proto.coerce_task(task) for task in tasks]
        if self._per_task_models:
            self._models = self._models_for(coerced)
            if self._stepper is not None:
                self._stepper.set_models(self._models)
        values = [self._task_values(task) for task in coerced]
        self._params = np.array(values, dtype=np.float64).reshape(self.num_envs, -1)
        self._tasks = coerced

    def get_tasks(self) -> list:
        """The task of every environment."""
        return list(self._tasks)

    def _models_for(self, tasks: list) -> list[mujoco.MjModel]:
        """One model per distinct task: the prototype's model after its own ``set_task``."""
        models: dict[Any, mujoco.MjModel] = {}
        for task in tasks:
            if task not in models:
                model = self._task_models.get(task)
                if model is None:
                    self._proto.set_task(task)
                    model = copy.copy(self._proto.model)
                models[task] = model
        self._task_models = models
        return [models[task] for task in tasks]

    # --- episodes ------------------------------------------------------------------------------
    def reset(self, seed: int, offset: int = 0) -> Tensor:
        """Start one episode in every environment, seeded as ``SyncTaskVectorEnv.reset``.

        Environment ``i`` gets ``reset(seed=s_i)`` of the single env, with
        ``s = envs.vector.env_seeds(seed, num_envs, offset)``.

        Returns:
            observations ``[B, D]`` (float32) on ``device``.
        """
        self._check_open()
        seeds = env_seeds(seed, self.num_envs, offset)
        qpos = np.empty((self.num_envs, self._proto.model.nq))
        qvel = np.empty((self.num_envs, self._proto.model.nv))
        for i, s in enumerate(seeds):  # the single env's own reset noise
            self._proto.reset(seed=int(s))
            qpos[i], qvel[i] = self._proto.data.qpos, self._proto.data.qvel
        self._map(lambda idx: self._reset_block(idx, qpos, qvel), np.arange(self.num_envs))
        state = self._views.gather()
        self._warnings = state.warnings
        self._position = self._positions(state)
        self._running[:] = True
        self._t = 0
        self._failed = False
        obs = self._robot.observe(state.qpos, state.qvel, state.cfrc)
        return torch.as_tensor(obs, dtype=torch.float32, device=self.device)

    def step(self, actions: Tensor) -> VectorStep:
        """Apply ``actions [B, A]`` to every running environment.

        Raises:
            ValueError: ``actions`` is not ``[B, A]``, or a running environment's action holds
                NaN or infinity (nothing is simulated then).
            RuntimeError: MuJoCo failed stepping an environment (message: which one, and
                MuJoCo's error), or an earlier step did so and no ``reset`` came since: some
                environments were stepped and some not, so the batch must start over.
        """
        self._check_open()
        if self._failed:
            raise RuntimeError("an earlier step of this simulator failed; call reset() first")
        acts = self._check_actions(actions)
        running = self._running.copy()
        try:
            state = self._step_all(acts, running)
        except BaseException:
            self._failed = True
            raise
        self._t += 1
        position = self._positions(state)
        obs, rew, terminated, truncated, unstable = self._outcome(
            state, position, acts, self._position, self._warnings, self._t)
        frozen = ~running
        obs[frozen], rew[frozen] = 0.0, 0.0
        terminated[frozen] = truncated[frozen] = unstable[frozen] = False
        self._running = running & ~(terminated | truncated)
        self._warnings, self._position = state.warnings, position
        return _to_step(obs, rew, terminated, truncated, unstable, self.device)

    def _outcome(self, state: "_State", position: np.ndarray, acts: np.ndarray,
                 last_position: np.ndarray, last_warnings: np.ndarray,
                 steps_done: int | np.ndarray) -> tuple[np.ndarray, ...]:
        """Observations, rewards, terminated, truncated, unstable of the rows of ``state``.

        Row-wise, for any number of rows ``R`` (one step of the batch, or many steps at once):
        ``position [R, 2]`` after and ``last_position`` before the step, the warning counters
        before it, and the steps done including it (a scalar, or ``[R]``) for the horizon.
        Frozen rows are not treated here.
        """
        with np.errstate(all="ignore"):  # frozen or diverged rows may hold anything
            velocity = (position - last_position) / self._dt
            params = self._params if len(state.qpos) == self.num_envs else np.tile(
                self._params, (len(state.qpos) // self.num_envs, 1))
            term = self._task_term(velocity, position, params)
            rew = self._robot.reward(term, acts, state.cfrc)
            obs = self._robot.observe(state.qpos, state.qvel, state.cfrc)
            terminated = self._robot.terminated(state.qpos, state.qvel)
        warned = (state.warnings > last_warnings).any(axis=1)
        unstable = (warned | ~np.isfinite(state.qpos).all(axis=1)
                    | ~np.isfinite(state.qvel).all(axis=1) | ~np.isfinite(obs).all(axis=1)
                    | ~np.isfinite(rew))
        if unstable.any():
            obs[unstable] = np.nan_to_num(obs[unstable], nan=0.0, posinf=0.0, neginf=0.0)
            rew[unstable] = 0.0
            terminated &= ~unstable
        truncated = unstable | ((steps_done >= self.horizon) & ~terminated)
        return obs, rew, terminated, truncated, unstable

    def run_episodes(self, policy: "envs_native.NativeMLP", task_of: np.ndarray,
                     noise: np.ndarray) -> "EpisodeSteps":
        """Run the episodes started by ``reset`` to their ends, the policy in the native loop.

        Every environment steps from its first step to its last on one thread, acting
        ``mean + std * noise`` with parameter set ``task_of[i]`` of ``policy``; what each step
        returns is then computed from the gathered states exactly as :meth:`step` computes it
        (so the environment is the same; only the policy's float32 arithmetic is C's, not
        torch's). Afterwards every environment is frozen until the next ``reset``.

        Args:
            policy: the MLP and standard deviations, ``K`` parameter sets.
            task_of: ``[B]`` ints in ``[0, K)``.
            noise: float32 ``[horizon, B, A]`` standard normal noise.
        Returns:
            :class:`EpisodeSteps` ``[horizon, B, ...]``, as ``horizon`` calls of :meth:`step`
            would have returned (zeros for frozen envs), with the actions taken.
        Raises:
            RuntimeError: the native loop is not in use (``native``), no ``reset`` since the
                last episodes or a failed call, or MuJoCo failed stepping an environment.
            MemoryError: the native loop could not allocate its scratch space.
            ValueError: inputs of the wrong shape (nothing simulated), or a running
                environment's action is not finite (as :meth:`step`).
            After a ``RuntimeError`` or ``ValueError`` raised once the environments stepped,
            they need a ``reset``.
        """
        self._check_open()
        if self._stepper is None:
            raise RuntimeError("run_episodes needs the native stepping loop (native=True): "
                               f"{envs_native.unavailable_reason() or 'the Python loop is in use'}")
        if self._failed or self._t != 0 or not self._running.all():
            raise RuntimeError("run_episodes needs freshly reset environments: call reset() first")
        threads = self._threads_for(self.num_envs)
        end = envs_native.EpisodeEnd(("warning", self._views.warning_ids), ("qpos", "qvel"),
                                     self._robot.checks())
        block = max(EPISODE_BLOCK, self.num_envs // (threads * EPISODE_BLOCKS_PER_THREAD))
        try:
            native = self._stepper.episodes(threads, block, self.horizon, self._robot.segments(),
                                            end, policy, task_of, noise)
        except (RuntimeError, MemoryError):  # stepped in part: reset first
            self._failed = True
            raise
        self._running[:] = False  # whatever happens next, the episodes are over
        self._t = self.horizon
        try:
            return self._episode_steps(native)
        except BaseException:
            self._failed = True
            raise

    def _episode_steps(self, native: "envs_native.NativeEpisodes") -> "EpisodeSteps":
        """What :meth:`step` would have returned at every step of the native loop's episodes,
        from the gathered states ``[T, B, ...]``: the rows of the first ``L`` steps at once,
        ``L`` the longest episode the loop ran (all envs are frozen after it)."""
        B, T = self.num_envs, self.horizon
        L = max(1, int(native.length.max()))
        rows = lambda x: None if x is None else x[:L].reshape(L * B, *x.shape[2:])  # noqa: E731
        fields = native.fields
        state = _State(rows(fields["qpos"]), rows(fields["qvel"]),
                       self._views.warning_numbers(rows(fields["warning"])),
                       rows(fields.get("xpos")), rows(fields.get("cfrc")))
        position = self._positions(state)
        last_position = np.concatenate((self._position, position[:-B]))
        last_warnings = np.concatenate((self._warnings, state.warnings[:-B]))
        with np.errstate(invalid="ignore"):  # a stopping non-finite action
            acts = rows(native.actions).astype(np.float64)
        outcome = self._outcome(state, position, acts, last_position, last_warnings,
                                np.repeat(np.arange(1, L + 1), B))
        obs, rew, terminated, truncated, unstable = (x.reshape(L, B, *x.shape[1:])
                                                     for x in outcome)
        running = np.zeros((T, B), dtype=bool)  # before each step
        running[0] = True
        for t in range(1, L):
            running[t] = running[t - 1] & ~(terminated[t - 1] | truncated[t - 1])
        after = running[L - 1] & ~(terminated[L - 1] | truncated[L - 1])  # not over after L
        _check_native_ends(running.sum(axis=0) + after, native.length, native.bad_action)
        frozen = ~running[:L]
        obs[frozen], rew[frozen] = 0.0, 0.0
        terminated[frozen] = truncated[frozen] = unstable[frozen] = False

        def t(x: np.ndarray, dtype: torch.dtype) -> Tensor:  # [L, B, ...] -> [T, B, ...]
            full = np.zeros((T, *x.shape[1:]), dtype=x.dtype)
            full[:L] = x
            return torch.as_tensor(full, dtype=dtype, device=self.device)

        step = VectorStep(t(obs, torch.float32), t(rew, torch.float32),
                          t(terminated, torch.bool), t(truncated, torch.bool),
                          t(unstable, torch.bool))
        return EpisodeSteps(torch.as_tensor(native.actions, device=self.device),
                            torch.as_tensor(running, device=self.device), step,
                            torch.as_tensor(native.length, device=self.device))

    def close(self) -> None:
        """Stop and join the stepping threads; the simulator cannot be used afterwards."""
        # (a forked child holds a copy of the parent's pool, whose threads are not its own)
        if self._pool is not None and os.getpid() == self._pool_pid:
            self._pool.shutdown(wait=True)
        self._pool = None
        if getattr(self, "_stepper", None) is not None:
            self._stepper.close()
            self._stepper = None
        if not self._closed:
            self._proto.close()
        self._closed = True

    def __enter__(self) -> "MujocoBatchEnv":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None and os.getpid() == getattr(self, "_pool_pid", None):
            pool.shutdown(wait=False)

    # --- internals ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this MujocoBatchEnv is closed")

    def _check_actions(self, actions: Tensor) -> np.ndarray:
        acts = np.asarray(torch.as_tensor(actions).detach().cpu().numpy(), dtype=np.float64)
        shape = (self.num_envs, *self.action_space.shape)
        if acts.shape != shape:
            raise ValueError(f"actions must have shape {shape}, got {acts.shape}")
        bad = self._running & ~np.isfinite(acts).all(axis=1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"action of env {i} must be finite, got {acts[i].tolist()}")
        return acts

    def _positions(self, state: "_State") -> np.ndarray:
        """``[B, 2]``: what the velocity is measured on (x, 0) or the torso's (x, y)."""
        if state.xpos is not None:
            return state.xpos[:, :2].copy()
        position = np.zeros((len(state.qpos), 2))
        position[:, 0] = state.qpos[:, 0]
        return position

    def _threads_for(self, running: int) -> int:
        """Stepping threads for ``running`` envs: at least ``min_envs_per_thread`` each."""
        return max(1, min(self.num_threads, running // self.min_envs_per_thread))

    def _step_all(self, acts: np.ndarray, running: np.ndarray) -> "_State":
        """Step the running envs with ``acts`` and gather everyone's state."""
        if self._stepper is None:
            self._map(lambda idx: self._step_block(idx, acts), np.flatnonzero(running))
            return self._views.gather()
        count = int(running.sum())
        threads = self._threads_for(count)
        block = -(-max(count, 1) // (threads * BLOCKS_PER_THREAD))  # blocks of running envs
        out = self._stepper.step(acts, running, threads, block)
        return _State(out["qpos"], out["qvel"], self._views.warning_numbers(out["warning"]),
                      out.get("xpos"), out.get("cfrc"))

    def _new_pool(self) -> None:
        """Start the ``num_threads - 1`` Python stepping threads, owned by this process."""
        self._pool = ThreadPoolExecutor(self.num_threads - 1, thread_name_prefix=THREAD_PREFIX)
        self._pool_pid = os.getpid()

    def _map(self, work: Callable[[np.ndarray], None], indices: np.ndarray) -> None:
        """Run ``work`` on blocks of ``indices``: the calling thread and up to
        ``num_threads - 1`` pool threads take the next block until none is left."""
        threads = self._threads_for(len(indices))
        if self._pool is None or threads <= 1:
            if len(indices):
                work(indices)
            return
        if os.getpid() != self._pool_pid:  # a forked child: the pool's threads stayed behind
            self._new_pool()
        blocks = np.array_split(indices, threads * BLOCKS_PER_THREAD)
        taken = itertools.count()  # next() on a count is atomic under the GIL

        def drain() -> None:
            while (k := next(taken)) < len(blocks):
                work(blocks[k])

        helpers = [self._pool.submit(drain) for _ in range(threads - 1)]
        try:
            drain()
        finally:
            for helper in helpers:  # wait for all, then re-raise a helper's exception
                helper.exception()
            for helper in helpers:
                helper.result()

    def _reset_block(self, indices: np.ndarray, qpos: np.ndarray, qvel: np.ndarray) -> None:
        """``mj_resetData``, the initial state, ``mj_forward``: ``MujocoEnv.reset`` per env."""
        for i in indices:
            model, data = self._models[i], self._datas[i]
            mujoco.mj_resetData(model, data)
            data.qpos[:] = qpos[i]
            data.qvel[:] = qvel[i]
            mujoco.mj_forward(model, data)
            for w in DIVERGENCE_WARNINGS:  # as the single env, which zeroes them before a step:
                data.warning[w].number = 0  # a divergence then always raises a counter above 0

    def _step_block(self, indices: np.ndarray, acts: np.ndarray) -> None:
        """``MujocoEnv._step_mujoco_simulation`` per env (``cfrc_ext`` only where observed)."""
        models, datas, ctrl = self._models, self._datas, self._views.ctrl
        step, post, nstep = mujoco.mj_step, mujoco.mj_rnePostConstraint, self._frame_skip
        contacts = self._robot.contacts
        for i in indices:
            ctrl[i][:] = acts[i]
            try:
                step(models[i], datas[i], nstep)
            except mujoco.FatalError as err:  # the native loop's error, for either loop
                raise RuntimeError(f"MuJoCo error stepping env {i}: {err}") from err
            if contacts:
                post(models[i], datas[i])


def _check_native_ends(steps: np.ndarray, length: np.ndarray, bad_action: np.ndarray) -> None:
    """Raise where the native loop ended an episode before its outcomes end it.

    Args:
        steps: ``[B]`` steps of every episode, by the outcomes :meth:`MujocoBatchEnv.step`
            computes; length: ``[B]`` steps the native loop took; bad_action: ``[B]``, the
            loop stopped before applying a non-finite action.
    Raises:
        ValueError: an episode still running met a non-finite action (as ``step`` raises).
        RuntimeError: the loop stopped an episode early for another reason (a bug: its
            checks must imply the outcomes' end).
    """
    early = np.flatnonzero(steps > length)
    if not len(early):
        return
    i = int(early[0])
    if bad_action[i]:
        raise ValueError(f"action of env {i} must be finite")
    raise RuntimeError(f"the native loop ended env {i}'s episode after {length[i]} steps, "
                       f"its outcomes say after {steps[i]}")


@dataclass(frozen=True)
class EpisodeSteps:
    """What :meth:`MujocoBatchEnv.run_episodes` returns, every tensor ``[T, B, ...]``.

    Attributes:
        actions: float32 ``[T, B, A]``, the actions taken where ``running``; elsewhere zeros,
            or what the native loop computed past an episode's end.
        running: ``[T, B]``, whether the env ran step ``t`` (its episode not over before it).
        steps: what every step returned, as :meth:`MujocoBatchEnv.step` returns it.
        native_steps: ``[B]`` steps the native loop ran (at least ``running.sum(0)``: its
            checks end an episode at the same step, or later where only the outcomes see the
            end).
    """

    actions: Tensor
    running: Tensor
    steps: VectorStep
    native_steps: Tensor


@dataclass(frozen=True)
class _State:
    """The gathered simulator state of all environments (copies).

    Attributes:
        qpos: ``[B, nq]``; qvel: ``[B, nv]``.
        warnings: ``[B, 3]`` counters of MuJoCo's bad-qpos/qvel/qacc warnings.
        xpos: ``[B, 3]`` the velocity-measuring body's position (Ant torso), else None.
        cfrc: ``[B, nbody, 6]`` external contact forces (Ant), else None.
    """

    qpos: np.ndarray
    qvel: np.ndarray
    warnings: np.ndarray
    xpos: np.ndarray | None
    cfrc: np.ndarray | None


class _Views:
    """Cached numpy views into every ``MjData``; ``gather`` copies them into batch arrays."""

    def __init__(self, datas: list[mujoco.MjData], robot: _Robot):
        self.ctrl = [d.ctrl for d in datas]
        self.qpos = [d.qpos for d in datas]
        self.qvel = [d.qvel for d in datas]
        self.warning = [d.warning.number for d in datas]
        self.warning_ids = np.array([int(w) for w in DIVERGENCE_WARNINGS])
        # every mjWarningStat {int lastinfo; int number;} as one int32 [mjNWARNING, 2] view
        self.warning_stats = [_warning_stats(d) for d in datas]
        body = robot.position_body
        self.xpos = None if body is None else [d.xpos[body] for d in datas]
        self.cfrc = [d.cfrc_ext for d in datas] if robot.contacts else None

    def warning_numbers(self, stats: np.ndarray) -> np.ndarray:
        """``[B, 3]`` int64 divergence-warning counters from gathered ``[B, mjNWARNING, 2]``."""
        return stats[:, self.warning_ids, 1].astype(np.int64)

    def gather(self) -> _State:
        warnings = np.array(self.warning)[:, self.warning_ids].astype(np.int64)
        return _State(np.array(self.qpos), np.array(self.qvel), warnings,
                      None if self.xpos is None else np.array(self.xpos),
                      None if self.cfrc is None else np.array(self.cfrc))


def _warning_stats(data: mujoco.MjData) -> np.ndarray:
    """An int32 ``[mjNWARNING, 2]`` view of ``data.warning`` (``lastinfo``, ``number``)."""
    number = data.warning.number
    base = data.warning.lastinfo.ctypes.data
    if number.ctypes.data != base + 4 or number.strides != (8,):
        raise RuntimeError("unexpected mjWarningStat layout")
    buffer = (ctypes.c_int32 * (2 * len(number))).from_address(base)
    view = np.frombuffer(buffer, dtype=np.int32).reshape(len(number), 2)
    return view


def _to_step(obs: np.ndarray, rew: np.ndarray, terminated: np.ndarray, truncated: np.ndarray,
             unstable: np.ndarray, device: torch.device) -> VectorStep:
    def t(x: np.ndarray, dtype: torch.dtype) -> Tensor:
        return torch.as_tensor(x, dtype=dtype, device=device)

    return VectorStep(t(obs, torch.float32), t(rew, torch.float32), t(terminated, torch.bool),
                      t(truncated, torch.bool), t(unstable, torch.bool))
