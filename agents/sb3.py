"""Stable-Baselines3 PPO baselines: the task-aware ``oracle`` and ``ppo`` from scratch per task.

* ``oracle``: one PPO policy trained on the family's *train* task distribution with the task's
  parameters appended to every observation (:class:`TaskInObservation`), then evaluated on the
  held-out tasks without any adaptation. It knows what adaptation has to infer, so it is an
  upper reference for an adapted policy.
* ``ppo``: for each held-out task, a fresh PPO policy trained on that task alone (the task is
  not observed) for a given number of env steps, then evaluated. With the budget of an
  adaptation run it answers "is meta-learning better than learning from scratch with the same
  experience?".

Hyperparameters are SB3's PPO defaults (``MlpPolicy``: 2 x 64 tanh, lr 3e-4, 10 epochs,
minibatch 64, gamma 0.99, GAE 0.95, clip 0.2, initial std 1) with two documented changes:

* Actions are rescaled to [-1, 1] (:func:`normalized_actions`) when a family's action box is
  another one (Navigation2D: [-0.1, 0.1]). SB3's Gaussian starts at std 1 and clips samples
  to the action box, so in a 0.1-wide box nearly every early action is saturated; SB3's
  guide recommends a [-1, 1] action space for exactly this reason. MuJoCo families are already
  in [-1, 1] and are left alone.
* The rollout length ``n_steps`` (per env) is SB3's 2048 at most, shortened so that a budget is
  met without overshoot (:func:`rollout_plan`): SB3's ``learn`` always finishes the rollout it
  started, so with 2048-step rollouts a 2,000-step budget would use 2,048 steps and a 6,000-step
  one 6,144.

Evaluation is deterministic: the policy's mean action (SB3's ``predict(deterministic=True)``,
the default of SB3's own ``evaluate_policy``), undiscounted return summed over each episode,
averaged over episodes. Navigation2D resets deterministically, so its episodes are identical;
MuJoCo families differ through their reset noise (seeded per episode).

Everything is reproducible from ``seed``: SB3's ``seed=`` (torch, numpy and Python RNGs, the
vectorized envs' first reset), ``numpy`` Generators for task sampling, seeded evaluation resets.
This module is pure: it returns models and numbers and does no file I/O and no logging.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import RescaleAction
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from envs.registry import make
from envs.tasks import (Direction2DTask, DirectionTask, DynamicsTask, GoalTask, TaskError,
                        VelocityTask)

MAX_ROLLOUT = 2048  # SB3 PPO's default n_steps: the longest rollout per env we use
BATCH_SIZE = 64  # SB3 PPO's default minibatch size
MIN_TIMESTEPS = BATCH_SIZE  # the smallest budget: one minibatch


# --- tasks as vectors -------------------------------------------------------------------------
def task_vector(task: Any) -> np.ndarray:
    """A task's parameters as a flat float64 vector (what the oracle observes).

    * ``GoalTask``: ``(goal_x, goal_y)``.
    * ``VelocityTask``: ``(velocity,)``.
    * ``DirectionTask``: ``(direction,)``, -1.0 or +1.0.
    * ``Direction2DTask``: ``(dx, dy)``.
    * ``DynamicsTask``: the natural log of every multiplier, in the order ``body_mass``,
      ``body_inertia``, ``geom_friction``, ``dof_damping``. Multipliers are ``1.5 ** u`` /
      ``1.3 ** u`` with ``u ~ U[-3, 3)``, so their logs are centred on 0 and bounded by about
      1.2 in magnitude, a well-scaled network input (the multipliers themselves span 0.3-3.4).

    Raises:
        TaskError: ``task`` is not one of the task types of :mod:`envs.tasks`.
    """
    if isinstance(task, (GoalTask, Direction2DTask)):
        values = task.goal if isinstance(task, GoalTask) else task.direction
        return np.asarray(values, dtype=np.float64).reshape(-1)
    if isinstance(task, VelocityTask):
        return np.array([task.velocity], dtype=np.float64)
    if isinstance(task, DirectionTask):
        return np.array([task.direction], dtype=np.float64)
    if isinstance(task, DynamicsTask):
        multipliers = (*task.body_mass, *task.body_inertia, *task.geom_friction,
                       *task.dof_damping)
        return np.log(np.asarray(multipliers, dtype=np.float64))
    raise TaskError(f"not a task: {task!r}")


class TaskInObservation(gym.Wrapper):
    """Append :func:`task_vector` of the current task to every observation.

    Args:
        env: an adaptbed family env (anything whose ``unwrapped`` has the task API).
        task_sampler: a ``numpy.random.Generator``. With it, every ``reset`` first sets a new
            task drawn from the family's *train* distribution with this generator only (oracle
            training). Without it (``None``) the task is never changed here: it is whatever
            ``set_task`` last set (evaluation).

    The observation space is the env's box followed by ``len(task_vector)`` unbounded entries,
    in the env's observation dtype.
    """

    def __init__(self, env: gym.Env, task_sampler: np.random.Generator | None = None):
        super().__init__(env)
        if task_sampler is not None and not isinstance(task_sampler, np.random.Generator):
            raise TypeError("task_sampler must be a numpy.random.Generator, got "
                            f"{type(task_sampler).__name__}")
        self.task_sampler = task_sampler
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise TypeError(f"TaskInObservation needs a flat Box observation space, got {space}")
        self._cached: tuple[Any, np.ndarray] | None = None
        size = self._task_vector().shape[0]
        inf = np.full(size, np.inf)
        self.observation_space = gym.spaces.Box(
            np.concatenate([space.low, -inf]).astype(space.dtype),
            np.concatenate([space.high, inf]).astype(space.dtype), dtype=space.dtype)

    def _task_vector(self) -> np.ndarray:
        task = self.env.unwrapped.get_task()
        if self._cached is None or self._cached[0] is not task:
            self._cached = (task, task_vector(task))
        return self._cached[1]

    def _observe(self, obs: np.ndarray) -> np.ndarray:
        return np.concatenate([obs, self._task_vector()]).astype(self.observation_space.dtype)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if self.task_sampler is not None:
            task = self.env.unwrapped.sample_tasks(1, self.task_sampler)[0]
            self.env.unwrapped.set_task(task)
        obs, info = self.env.reset(seed=seed, options=options)
        return self._observe(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._observe(obs), reward, terminated, truncated, info


def normalized_actions(env: gym.Env) -> gym.Env:
    """``env`` with its action box rescaled to [-1, 1] (unchanged if it already is)."""
    space = env.action_space
    if (isinstance(space, gym.spaces.Box) and np.all(np.isfinite(space.low))
            and np.all(np.isfinite(space.high))
            and not (np.all(space.low == -1.0) and np.all(space.high == 1.0))):
        ones = np.ones(space.shape, dtype=space.dtype)  # in the box's dtype: no precision warning
        return RescaleAction(env, -ones, ones)
    return env


def make_env(family: str, task: Any = None, task_sampler: np.random.Generator | None = None,
             observe_task: bool = False) -> gym.Env:
    """A family env as the SB3 baselines see it: optional task in the observation, [-1, 1]
    actions.

    Args:
        family: family name, env id or preset.
        task: the task to set (kept across resets unless ``task_sampler`` is given).
        task_sampler: generator for a new train task at every reset (implies ``observe_task``).
        observe_task: append the task vector to observations (the oracle's env).
    """
    env = make(family, task=task)
    if observe_task or task_sampler is not None:
        env = TaskInObservation(env, task_sampler)
    return normalized_actions(env)


# --- budgets ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RolloutPlan:
    """How a budget of env steps is spent by SB3 PPO.

    Attributes:
        n_steps: rollout length per env (SB3's ``n_steps``).
        n_updates: number of rollouts, each followed by one PPO update.
        total_timesteps: ``n_steps * n_envs * n_updates``, the steps actually used.
        batch_size: minibatch size (64, or the whole rollout if that is smaller).
    """

    n_steps: int
    n_updates: int
    total_timesteps: int
    batch_size: int


def rollout_plan(timesteps: int, n_envs: int = 1) -> RolloutPlan:
    """Split ``timesteps`` env steps into PPO rollouts of at most 2048 steps per env.

    Rule: ``n_updates = ceil(timesteps / (2048 * n_envs))`` and
    ``n_steps = floor(timesteps / (n_updates * n_envs))``. Every budget of at least 64 steps
    gives one update or more; the steps used are never more than ``timesteps`` and fewer by
    less than ``n_updates * n_envs`` (e.g. 2,000 -> one update on 2,000 steps; 6,000 -> three
    on 2,000 each; 200,000 with 4 envs -> 25 updates on 4 x 2,000). The minibatch is SB3's 64
    (the last minibatch of an epoch may be smaller when 64 does not divide the rollout).

    Raises:
        ValueError: ``timesteps < 64``, ``n_envs < 1``, or fewer timesteps than
            environments (no environment would take a step).
    """
    if isinstance(n_envs, bool) or int(n_envs) != n_envs or n_envs < 1:
        raise ValueError(f"n_envs must be a positive integer, got {n_envs!r}")
    if isinstance(timesteps, bool) or int(timesteps) != timesteps or timesteps < MIN_TIMESTEPS:
        raise ValueError(f"timesteps must be an integer >= {MIN_TIMESTEPS}, got {timesteps!r}")
    timesteps, n_envs = int(timesteps), int(n_envs)
    if timesteps < n_envs:
        raise ValueError(f"a budget of {timesteps} timesteps cannot give each of {n_envs} "
                         "environments one step: use fewer environments or a larger budget")
    n_updates = math.ceil(timesteps / (MAX_ROLLOUT * n_envs))
    n_steps = timesteps // (n_updates * n_envs)
    return RolloutPlan(n_steps, n_updates, n_steps * n_envs * n_updates,
                       min(BATCH_SIZE, n_steps * n_envs))


def derived_seed(seed: int, *key: int) -> int:
    """A 32-bit seed for SB3 / Gymnasium from ``(seed, *key)`` (independent streams)."""
    return int(np.random.SeedSequence([int(seed), *key]).generate_state(1)[0])


def new_ppo(venv: DummyVecEnv, plan: RolloutPlan, seed: int) -> PPO:
    """SB3 PPO with default hyperparameters but ``plan``'s rollout and minibatch sizes."""
    with warnings.catch_warnings():  # the "truncated mini-batch" notice: intended, see rollout_plan
        warnings.filterwarnings("ignore", message=".*mini-batch size.*", category=UserWarning)
        return PPO("MlpPolicy", venv, n_steps=plan.n_steps, batch_size=plan.batch_size,
                   seed=seed, device="cpu", verbose=0)


# --- oracle -----------------------------------------------------------------------------------
def oracle_venv(family: str, seed: int, n_envs: int = 4, start: int = 0) -> DummyVecEnv:
    """``n_envs`` train-distribution envs with the task observed; env ``i`` samples its tasks
    from ``numpy.random.default_rng(derived_seed(seed, 1, i))``, or, for a training resumed
    after ``start > 0`` env steps, from ``default_rng(derived_seed(seed, 1, i, start))``."""
    def factory(i: int) -> Callable[[], gym.Env]:
        key = (1, i) if start == 0 else (1, i, start)
        rng = np.random.default_rng(derived_seed(seed, *key))
        return lambda: Monitor(make_env(family, task_sampler=rng))

    return DummyVecEnv([factory(i) for i in range(n_envs)])


def train_oracle(family: str, total_timesteps: int, seed: int, n_envs: int = 4,
                 callback: BaseCallback | None = None, resume: PPO | None = None) -> PPO:
    """Train the oracle: SB3 PPO on the train task distribution with the task observed.

    Args:
        family: family name, env id or preset.
        total_timesteps: env steps over all envs (spent as :func:`rollout_plan` says).
        seed: seeds SB3 and the task generators.
        n_envs: parallel envs (``DummyVecEnv``), each drawing a new task at every episode.
        callback: an optional SB3 callback (e.g. a progress bar or checkpoints of the caller).
        resume: a partly trained oracle of the same budget (saved between two rollouts, e.g.
            by the caller's callback in ``on_rollout_start``) to train on for the remaining
            ``total_timesteps - resume.num_timesteps`` steps. Its optimizer state is kept; the
            episodes in flight when it was saved are not, so the envs restart, with task
            generators and SB3 seeds derived from ``(seed, resume.num_timesteps)``
            (``derived_seed(seed, 1, i, done)`` and ``derived_seed(seed, 5, done)``). A resumed
            training is therefore not bit-identical to an uninterrupted one.

    Returns:
        The trained model (CPU). Its observation is ``env obs + task_vector(task)`` and its
        actions are in [-1, 1] for families rescaled by :func:`normalized_actions`; use
        :func:`oracle_returns` to evaluate it.

    Raises:
        ValueError: ``resume`` does not fit this budget (:func:`check_resumable`).
    """
    plan = rollout_plan(total_timesteps, n_envs)
    if resume is None:
        venv = oracle_venv(family, seed, n_envs)
        model = new_ppo(venv, plan, seed)
        model.learn(plan.total_timesteps, callback=callback)
    else:
        check_resumable(resume, total_timesteps, n_envs)
        done = int(resume.num_timesteps)
        venv = oracle_venv(family, seed, n_envs, start=done)
        model = resume
        model.set_env(venv)  # discards the saved last observations: the envs restart
        model.set_random_seed(derived_seed(seed, 5, done))
        model.learn(plan.total_timesteps - done, callback=callback, reset_num_timesteps=False)
    venv.close()
    return model


def check_resumable(model: PPO, total_timesteps: int, n_envs: int) -> None:
    """Check that ``model`` is a partly trained oracle of this budget: the same rollouts
    (``n_steps`` x ``n_envs`` of :func:`rollout_plan`), saved between two rollouts, with steps
    left to train.

    Raises:
        ValueError: saying which of these does not hold.
    """
    plan = rollout_plan(total_timesteps, n_envs)
    done = int(model.num_timesteps)
    if model.n_steps != plan.n_steps or model.n_envs != n_envs:
        raise ValueError(f"it has rollouts of {model.n_steps} steps x {model.n_envs} envs; "
                         f"this budget uses {plan.n_steps} x {n_envs}")
    if done % (plan.n_steps * n_envs):
        raise ValueError(f"it was saved after {done} steps, inside a rollout of "
                         f"{plan.n_steps * n_envs}")
    if not 0 <= done < plan.total_timesteps:
        raise ValueError(f"it has trained {done} of {plan.total_timesteps} steps: nothing left")


def oracle_returns(model: PPO, family: str, tasks: Sequence[Any], episodes_per_task: int,
                   seed: int) -> list[float]:
    """Mean undiscounted episode return of the oracle on each task, without adaptation.

    Deterministic (mean) actions; the episodes of task ``i`` reset with seeds
    ``derived_seed(seed, 2, i) + episode``.
    """
    returns = []
    for i, task in enumerate(tasks):
        env = make_env(family, task=task, observe_task=True)
        try:
            returns.append(mean_return(model, env, episodes_per_task, derived_seed(seed, 2, i)))
        finally:
            env.close()
    return returns


# --- PPO from scratch ---------------------------------------------------------------------------
def ppo_from_scratch_returns(family: str, tasks: Sequence[Any], timesteps: int,
                             episodes_per_task: int, seed: int,
                             on_task: Callable[[int, float], None] | None = None) -> list[float]:
    """For each task, a fresh PPO trained on that task alone for ``timesteps`` env steps,
    then its mean undiscounted return.

    Args:
        family: family name, env id or preset.
        tasks: the tasks (the task is fixed and not observed).
        timesteps: training budget per task, spent as :func:`rollout_plan` says with one env.
        episodes_per_task: evaluation episodes per task (deterministic actions).
        seed: task ``i`` trains with SB3 seed ``derived_seed(seed, 3, i)`` and evaluates with
            reset seeds ``derived_seed(seed, 4, i) + episode``.
        on_task: optional ``on_task(i, mean_return)`` called after each task (progress).

    Returns:
        One mean return per task, in the order of ``tasks``.
    """
    _check_episodes(episodes_per_task)
    plan = rollout_plan(timesteps, 1)
    returns = []
    for i, task in enumerate(tasks):
        venv = DummyVecEnv([lambda task=task: Monitor(make_env(family, task=task))])
        model = new_ppo(venv, plan, derived_seed(seed, 3, i))
        model.learn(plan.total_timesteps)
        venv.close()
        env = make_env(family, task=task)
        try:
            returns.append(mean_return(model, env, episodes_per_task, derived_seed(seed, 4, i)))
        finally:
            env.close()
        if on_task is not None:
            on_task(i, returns[-1])
    return returns


# --- evaluation -------------------------------------------------------------------------------
def episode_return(model: PPO, env: gym.Env, seed: int) -> float:
    """Undiscounted return of one episode with deterministic actions, reset with ``seed``."""
    obs, _ = env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        action, _ = model.predict(obs, deterministic=True)
        obs, reward, terminated, truncated, _ = env.step(action)
        total += float(reward)
        done = terminated or truncated
    return total


def mean_return(model: PPO, env: gym.Env, episodes: int, seed: int) -> float:
    """Mean of :func:`episode_return` over ``episodes`` episodes (reset seeds ``seed + k``)."""
    _check_episodes(episodes)
    return float(np.mean([episode_return(model, env, seed + k) for k in range(episodes)]))


def _check_episodes(episodes: int) -> None:
    if isinstance(episodes, bool) or int(episodes) != episodes or episodes < 1:
        raise ValueError(f"episodes per task must be a positive integer, got {episodes!r}")
