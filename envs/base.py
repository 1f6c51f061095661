"""The task-family API shared by every adaptbed environment.

Usage (the same for every family)::

    env = gymnasium.make("adaptbed/HalfCheetahVel-v0")
    tasks = env.unwrapped.sample_tasks(40, np.random.default_rng(0))   # train distribution
    env.unwrapped.set_task(tasks[0])       # fixed until the next set_task, across reset()
    obs, info = env.reset(seed=0)
    assert env.unwrapped.get_task() == tasks[0]

Tasks are sampled only from the explicit ``numpy.random.Generator`` passed in, never from the
global RNG nor from the environment's own ``np_random``, so ``reset(seed=...)`` never changes the
task and a task set is reproducible on its own.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, ClassVar, Generic, Sequence, TypeVar

import numpy as np

from envs.tasks import TaskError

TaskT = TypeVar("TaskT")


class MetaEnv(Generic[TaskT]):
    """Mixin giving a Gymnasium env ``sample_tasks`` / ``set_task`` / ``get_task``.

    Subclasses set ``task_type`` and implement ``_sample_train_tasks``, ``_validate_task_values``
    and (when some of the task must be pushed into the simulator) ``_apply_task``; they may
    implement ``_sample_ood_tasks`` when the family has out-of-distribution variants.
    Constructors take ``task=None`` (a task or its dict) so that pickling, which rebuilds
    Gymnasium MuJoCo envs from their constructor arguments, keeps the task: ``set_task`` records
    the task among those arguments.
    """

    task_type: ClassVar[type]
    _task: Any

    # --- public API ---------------------------------------------------------------------------
    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[TaskT]:
        """``n`` tasks from the family's training distribution, drawn from ``rng`` only."""
        _check_sample_args(n, rng)
        return list(self._sample_train_tasks(n, rng))

    def sample_ood_tasks(self, n: int, rng: np.random.Generator) -> list[TaskT]:
        """``n`` out-of-distribution tasks (outside the training range), drawn from ``rng`` only.

        Raises:
            TaskError: if the family has no out-of-distribution variants (its training set of
                tasks is already exhaustive, e.g. the two directions of HalfCheetahDir).
        """
        _check_sample_args(n, rng)
        return list(self._sample_ood_tasks(n, rng))

    def set_task(self, task: TaskT | dict) -> None:
        """Make ``task`` the current task; it stays until the next ``set_task``.

        Raises:
            TaskError: if ``task`` is of another family's type or outside the valid range.
        """
        task = self.coerce_task(task)
        self._task = task
        kwargs = getattr(self, "_ezpickle_kwargs", None)
        if isinstance(kwargs, dict):
            kwargs["task"] = task
        self._apply_task(task)

    def get_task(self) -> TaskT:
        """The current task."""
        return self._task

    def coerce_task(self, task: TaskT | dict) -> TaskT:
        """Accept a task or its JSON dict; check its type and range; return the task."""
        from envs.tasks import task_from_dict

        if isinstance(task, dict):
            task = task_from_dict(self.task_type, task)
        if not isinstance(task, self.task_type):
            raise TaskError(
                f"{type(self).__name__} takes a {self.task_type.__name__}, got {type(task).__name__}"
            )
        self._validate_task_values(task)
        return task

    # --- for subclasses -----------------------------------------------------------------------
    def _sample_train_tasks(self, n: int, rng: np.random.Generator) -> Sequence[TaskT]:
        raise NotImplementedError

    def _sample_ood_tasks(self, n: int, rng: np.random.Generator) -> Sequence[TaskT]:
        raise TaskError(f"{type(self).__name__} has no out-of-distribution split")

    def _validate_task_values(self, task: TaskT) -> None:
        raise NotImplementedError

    def _apply_task(self, task: TaskT) -> None:
        """Push the task into the simulator (dynamics families); reward-only families do nothing."""


def _check_sample_args(n: int, rng: np.random.Generator) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"the number of tasks must be a positive integer, got {n!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"tasks are sampled from an explicit numpy.random.Generator, got {type(rng).__name__}"
        )


def check_action(action: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Return ``action`` as a float64 array, or raise a one-line ``ValueError``.

    Raises:
        ValueError: the action's shape is not ``shape``, or it holds NaN or infinity.
    """
    a = np.asarray(action, dtype=np.float64)
    if a.shape != shape:
        raise ValueError(f"action must have shape {shape}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"action must be finite, got {a.tolist()}")
    return a


def real(name: str, value: Any) -> float:
    """``value`` as a finite float; :class:`TaskError` for non-numbers (bools too) and NaN/inf."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TaskError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise TaskError(f"{name} must be finite, got {value!r}")
    return v


def real_vector(name: str, values: Any, length: int) -> np.ndarray:
    """A tuple of ``length`` finite numbers as a float64 array; :class:`TaskError` otherwise."""
    if not isinstance(values, tuple):
        raise TaskError(f"{name} must be a tuple of {length} numbers, got {type(values).__name__}")
    if len(values) != length:
        raise TaskError(f"{name} must have {length} entries, got {len(values)}")
    return np.array([real(f"{name}[{i}]", v) for i, v in enumerate(values)], dtype=np.float64)


def in_range(name: str, value: float, low: float, high: float) -> None:
    """:class:`TaskError` unless ``low <= value <= high``."""
    if not low <= value <= high:
        raise TaskError(f"{name} must lie in [{low}, {high}], got {value}")
