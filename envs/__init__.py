"""adaptbed task families: parameterized Gymnasium environments with fixed task splits.

Importing this package registers every family under the ``adaptbed/`` namespace, so
``gymnasium.make("adaptbed/HalfCheetahVel-v0")`` works after ``import envs``.
"""

from envs.registry import FAMILIES, FamilySpec, UnknownFamilyError, family, make, register_all
from envs.tasks import (
    Direction2DTask,
    DirectionTask,
    DynamicsTask,
    GoalTask,
    TaskError,
    VelocityTask,
    task_from_dict,
    task_to_dict,
)

register_all()

__all__ = [
    "FAMILIES", "FamilySpec", "UnknownFamilyError", "family", "make", "register_all",
    "Direction2DTask", "DirectionTask", "DynamicsTask", "GoalTask", "TaskError", "VelocityTask",
    "task_from_dict", "task_to_dict",
]
