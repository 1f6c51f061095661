"""Task descriptions: small frozen dataclasses that are plain data.

A task is everything that distinguishes one member of a task family from another (a goal
velocity, a direction, a goal position, a set of dynamics multipliers). Tasks are immutable,
hashable, survive pickling, and round-trip through JSON with :func:`task_to_dict` and
:func:`task_from_dict`, so a study can pin its held-out tasks in a file.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping, TypeVar, Union


class TaskError(ValueError):
    """A task of the wrong type, with missing/unknown fields, or outside its family's valid range."""


@dataclass(frozen=True)
class GoalTask:
    """Reach a 2D goal position ``goal = (x, y)`` (Navigation2D, AntGoal)."""

    goal: tuple[float, float]


@dataclass(frozen=True)
class VelocityTask:
    """Run forward at the goal velocity ``velocity`` (m/s along +x) (HalfCheetahVel, AntVel)."""

    velocity: float


@dataclass(frozen=True)
class DirectionTask:
    """Run along ``direction`` in {-1, +1} on the x axis (HalfCheetahDir, AntDir)."""

    direction: int


@dataclass(frozen=True)
class Direction2DTask:
    """Run along the unit vector ``direction = (dx, dy)`` in the plane (AntDir2D)."""

    direction: tuple[float, float]


@dataclass(frozen=True)
class DynamicsTask:
    """Multipliers of a MuJoCo model's original physical parameters (HopperRandParams, ...).

    Each field is a flat tuple of positive multipliers, one per element of the corresponding
    ``MjModel`` array in C order: ``body_mass`` (nbody), ``body_inertia`` (nbody * 3),
    ``geom_friction`` (ngeom * 3), ``dof_damping`` (nv).
    """

    body_mass: tuple[float, ...]
    body_inertia: tuple[float, ...]
    geom_friction: tuple[float, ...]
    dof_damping: tuple[float, ...]


Task = Union[GoalTask, VelocityTask, DirectionTask, Direction2DTask, DynamicsTask]
TASK_TYPES: dict[str, type] = {
    cls.__name__: cls for cls in (GoalTask, VelocityTask, DirectionTask, Direction2DTask, DynamicsTask)
}
T = TypeVar("T")


def task_to_dict(task: Task) -> dict[str, Any]:
    """A JSON-ready dict of the task's fields (tuples become lists)."""
    if not dataclasses.is_dataclass(task) or type(task).__name__ not in TASK_TYPES:
        raise TaskError(f"not a task: {task!r}")
    return {f.name: _to_json(getattr(task, f.name)) for f in dataclasses.fields(task)}


def task_from_dict(task_type: type[T], data: Mapping[str, Any]) -> T:
    """Build a ``task_type`` from a dict such as ``{"velocity": 1.7}``; raises :class:`TaskError`.

    Field values are type-checked (numbers, or lists of numbers for tuple fields) but not
    range-checked: a family's ``validate_task`` does that.
    """
    if not isinstance(data, Mapping):
        raise TaskError(f"a {task_type.__name__} must be a JSON object, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(task_type)]
    missing = [n for n in names if n not in data]
    unknown = [k for k in data if k not in names]
    if missing or unknown:
        raise TaskError(
            f"{task_type.__name__} takes fields {names}; missing {missing}, unknown {unknown}"
        )
    values = {}
    for f in dataclasses.fields(task_type):
        is_tuple = "tuple" in str(f.type)
        values[f.name] = _from_json(task_type.__name__, f.name, data[f.name], is_tuple)
    if task_type is DirectionTask:
        d = values["direction"]
        if d != int(d):
            raise TaskError(f"DirectionTask.direction must be -1 or +1, got {d}")
        values["direction"] = int(d)
    return task_type(**values)


def _to_json(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, float):
        return float(value)
    return value


def _from_json(type_name: str, field: str, value: Any, is_tuple: bool) -> Any:
    def number(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TaskError(f"{type_name}.{field} must hold numbers, got {v!r}")
        if not math.isfinite(v):
            raise TaskError(f"{type_name}.{field} must be finite, got {v!r}")
        return float(v)

    if is_tuple:
        if not isinstance(value, (list, tuple)):
            raise TaskError(f"{type_name}.{field} must be a list of numbers, got {value!r}")
        return tuple(number(v) for v in value)
    return number(value)
