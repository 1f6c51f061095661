"""Train, held-out test and out-of-distribution task splits, and their JSON form.

* ``train``: the family's task distribution, sampled by the training loop from a generator
  seeded with the run's seed.
* ``test``: 40 tasks from the same distribution, drawn from a generator whose entropy is the
  128-bit constant :data:`TEST_SPLIT_ENTROPY` (spawn key = the family's :data:`SPLIT_KEYS`
  entry). Training draws its tasks from ``SeedSequence([seed, iteration])``, which meets this
  stream only for the seed ``TEST_SPLIT_ENTROPY`` itself, a 128-bit number no one types.
* ``ood``: 40 tasks beyond the training range (families whose task set is exhaustive, such as
  the two directions of HalfCheetahDir, have none and raise ``TaskError``).

This module is pure: it returns and parses JSON text; ``experiments/`` reads and writes files.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from envs.registry import family, make
from envs.tasks import TaskError, task_from_dict, task_to_dict

SPLITS = ("train", "test", "ood")
SPLIT_SIZE = 40
TEST_SPLIT_ENTROPY = 0x5EED_ADA9_7BED_0000_0000_0000_0000_0001
OOD_SPLIT_ENTROPY = 0x5EED_ADA9_7BED_0000_0000_0000_0000_0002


#: Each family's spawn key for its fixed splits, frozen: a new family takes the next unused
#: number, and reordering ``FAMILIES`` changes nothing (the splits are pinned by
#: ``tests/envs/test_splits_and_registry.py``).
SPLIT_KEYS = {"Navigation2D": 0, "HalfCheetahVel": 1, "HalfCheetahDir": 2, "AntVel": 3,
              "AntDir": 4, "AntDir2D": 5, "AntGoal": 6, "HopperRandParams": 7,
              "Walker2dRandParams": 8}


def split_rng(entropy: int, family_name: str) -> np.random.Generator:
    """The generator of a fixed split: ``entropy`` and the family's :data:`SPLIT_KEYS` entry."""
    name = family(family_name).name
    if name not in SPLIT_KEYS:
        raise KeyError(f"family {name!r} has no entry in envs.splits.SPLIT_KEYS: give it the "
                       f"next unused number ({max(SPLIT_KEYS.values()) + 1})")
    return np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(SPLIT_KEYS[name],)))


def train_tasks(family_name: str, n: int, rng: np.random.Generator) -> list:
    """``n`` training tasks drawn from ``rng`` (the training loop's generator)."""
    env = make(family_name)
    try:
        return env.unwrapped.sample_tasks(n, rng)
    finally:
        env.close()


def get_split(family_name: str, split: str) -> list:
    """The fixed ``test`` or ``ood`` split of a family (40 tasks).

    Raises:
        ValueError: unknown split name.
        TaskError: the family has no ``ood`` split.
    """
    if split not in ("test", "ood"):
        raise ValueError(f"unknown split {split!r}; fixed splits are 'test' and 'ood' "
                         "(or pass a JSON file written by split_to_json)")
    env = make(family_name)
    try:
        if split == "test":
            return env.unwrapped.sample_tasks(SPLIT_SIZE, split_rng(TEST_SPLIT_ENTROPY, family_name))
        return env.unwrapped.sample_ood_tasks(SPLIT_SIZE, split_rng(OOD_SPLIT_ENTROPY, family_name))
    finally:
        env.close()


def split_to_json(family_name: str, split: str, tasks: list) -> str:
    """JSON text ``{"family": ..., "split": ..., "tasks": [{...}, ...]}``."""
    doc: dict[str, Any] = {
        "family": family(family_name).name,
        "split": split,
        "tasks": [task_to_dict(t) for t in tasks],
    }
    return json.dumps(doc, indent=2)


def split_from_json(text: str) -> tuple[str, str, list]:
    """Parse :func:`split_to_json`'s text into ``(family, split, tasks)``; tasks are validated.

    Raises:
        TaskError: malformed JSON, unknown family, or a task invalid for the family.
    """
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise TaskError(f"split file is not valid JSON: {err}") from None
    if not isinstance(doc, dict) or not {"family", "tasks"} <= doc.keys():
        raise TaskError("split file must be an object with 'family' and 'tasks'")
    try:
        spec = family(str(doc["family"]))
    except KeyError as err:
        raise TaskError(str(err)) from None
    env = make(spec.name)
    try:
        tasks = [env.unwrapped.coerce_task(task_from_dict(env.unwrapped.task_type, d))
                 for d in doc["tasks"]]
    finally:
        env.close()
    if not tasks:
        raise TaskError("split file holds no tasks")
    return spec.name, str(doc.get("split", "custom")), tasks
