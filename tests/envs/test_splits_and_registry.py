"""Splits' JSON form, the registry's lookups and errors, and `adaptbed envs`."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest

import envs  # noqa: F401  (registers the adaptbed/ ids)
from envs.registry import FAMILIES, UnknownFamilyError, family, make, markdown_table, table_rows
from envs.splits import SPLIT_KEYS, get_split, split_from_json, split_to_json
from envs.tasks import GoalTask, TaskError, VelocityTask, task_to_dict

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("split", ["test", "ood"])
def test_split_json_round_trip(split):
    tasks = get_split("HalfCheetahVel", split)
    name, parsed_split, parsed = split_from_json(split_to_json("halfcheetah-vel", split, tasks))
    assert (name, parsed_split, parsed) == ("HalfCheetahVel", split, tasks)


def test_split_json_rejects_malformed_text_unknown_family_and_invalid_tasks():
    with pytest.raises(TaskError, match="not valid JSON"):
        split_from_json("{not json")
    with pytest.raises(TaskError, match="unknown task family"):
        split_from_json(json.dumps({"family": "Nope", "tasks": []}))
    with pytest.raises(TaskError, match="must lie in"):
        split_from_json(json.dumps({"family": "Navigation2D", "tasks": [{"goal": [50, 0]}]}))
    with pytest.raises(TaskError, match="fields"):
        split_from_json(json.dumps({"family": "Navigation2D", "tasks": [{"velocity": 1}]}))
    with pytest.raises(TaskError, match="no tasks"):
        split_from_json(json.dumps({"family": "Navigation2D", "tasks": []}))


def test_unknown_split_and_missing_ood_split_are_reported():
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        get_split("Navigation2D", "validation")
    with pytest.raises(TaskError, match="no out-of-distribution split"):
        get_split("HalfCheetahDir", "ood")


def test_family_lookup_by_name_id_and_preset():
    spec = family("HalfCheetahVel")
    assert family("adaptbed/HalfCheetahVel-v0") is spec and family("halfcheetah-vel") is spec


def test_unknown_env_id_lists_the_known_ones():
    with pytest.raises(UnknownFamilyError) as err:
        make("adaptbed/HalfCheetahVelocity-v0")
    message = str(err.value)
    assert "unknown task family" in message
    assert all(spec.env_id in message for spec in FAMILIES)


def test_make_with_a_task_sets_it():
    env = make("navigation-2d", task=GoalTask(goal=(0.2, -0.1)))
    assert env.unwrapped.get_task() == GoalTask(goal=(0.2, -0.1))
    with pytest.raises(TaskError):
        make("navigation-2d", task=VelocityTask(velocity=1.0))


def test_every_family_is_registered_under_the_namespace():
    for spec in FAMILIES:
        assert spec.env_id.startswith("adaptbed/") and spec.env_id in gym.registry
        assert gym.registry[spec.env_id].max_episode_steps == spec.horizon


def test_markdown_table_has_one_row_per_family_and_escapes_pipes():
    lines = markdown_table().splitlines()
    assert len(lines) == 2 + len(FAMILIES)
    assert all(line.count(" | ") == len(table_rows()[0]) - 1 for line in lines[2:])


def test_envs_command_prints_every_family():
    out = subprocess.run([sys.executable, "-m", "experiments.cli", "envs"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert all(spec.env_id in out for spec in FAMILIES)
    rows = json.loads(subprocess.run([sys.executable, "-m", "experiments.cli", "envs", "--json"],
                                     cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    assert rows == table_rows()


# --- the fixed splits never change ----------------------------------------------------------------
#: sha256 (first 16 hex digits) of each split's tasks as sorted JSON, floats at 9 significant
#: digits; recorded on 2026-11-29 from the splits every README evaluation used. A change here
#: means every held-out number in README.md was measured on other tasks.
PINNED_SPLITS = {
    ("Navigation2D", "test"): "b8575f01128f2fbf", ("Navigation2D", "ood"): "e974033960364195",
    ("HalfCheetahVel", "test"): "b6f74ff7ea27e86f", ("HalfCheetahVel", "ood"): "c10925662239da51",
    ("HalfCheetahDir", "test"): "7a0f84093637cfe6",
    ("AntVel", "test"): "03fed9a1e1922c93", ("AntVel", "ood"): "cd98febc3f30a795",
    ("AntDir", "test"): "16a9855e36010c13",
    ("AntDir2D", "test"): "234940fa3053453a",
    ("AntGoal", "test"): "711b248ecf8b7077", ("AntGoal", "ood"): "272072b7619a79f8",
    ("HopperRandParams", "test"): "eedb2aaa62904e2b", ("HopperRandParams", "ood"): "ac994bf1e84a2a9c",
    ("Walker2dRandParams", "test"): "3453bd25464d5ec4",
    ("Walker2dRandParams", "ood"): "5280dcc169c42191",
}


def _rounded(x):
    if isinstance(x, float):
        return float(f"{x:.9g}")
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_rounded(v) for v in x]
    return x


def _fingerprint(tasks: list) -> str:
    text = json.dumps(_rounded([task_to_dict(t) for t in tasks]), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", [s.name for s in FAMILIES])
def test_every_fixed_split_is_the_pinned_one(name):
    for split in ("test", "ood"):
        key = (name, split)
        if key not in PINNED_SPLITS:
            with pytest.raises(TaskError):
                get_split(name, split)
            continue
        assert _fingerprint(get_split(name, split)) == PINNED_SPLITS[key], key


def test_split_keys_are_frozen_per_family_and_distinct():
    assert set(SPLIT_KEYS) == {s.name for s in FAMILIES}
    assert len(set(SPLIT_KEYS.values())) == len(SPLIT_KEYS)
    assert get_split("HalfCheetahVel", "test")[0] == VelocityTask(1.4013084379202922)
