"""Splits' JSON form, the registry's lookups and errors, and `adaptbed envs`."""

import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest

import envs  # noqa: F401  (registers the adaptbed/ ids)
from envs.registry import FAMILIES, UnknownFamilyError, family, make, markdown_table, table_rows
from envs.splits import get_split, split_from_json, split_to_json
from envs.tasks import GoalTask, TaskError, VelocityTask

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
