"""Smoke test of ``experiments/bench_waves.py``: one JSON object, every wave count timed, the
episodes compared."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from envs.mujoco_batch import MujocoBatchEnv
from envs.registry import make
from experiments import bench_waves
from experiments.bench import bench_policy, resolve_families
from meta.sampler import sample_episodes


@pytest.mark.parametrize("name", ["HalfCheetahVel", "HopperRandParams"])
def test_every_wave_count_is_timed_and_gives_the_same_episodes(name, capsys):
    argv = ["--family", name, "--tasks", "4", "--episodes", "16", "--waves", "1,2",
            "--rounds", "2", "--horizon", "30"]
    assert bench_waves.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["family"] == name and out["same_episodes"] is True
    assert [out["waves"][w]["envs"] for w in ("1", "2")] == [64, 32]
    for w in ("1", "2"):
        for key in ("sps", "simulator_seconds", "other_seconds"):
            values = out["waves"][w][key]
            assert len(values) == 2 and all(math.isfinite(v) and v > 0 for v in values), key
    assert out["speedup"]["1"] == 1.0 and out["speedup"]["2"] > 0


def test_one_wave_is_always_the_baseline(capsys):
    argv = ["--tasks", "4", "--episodes", "16", "--waves", "2,2", "--rounds", "1",
            "--horizon", "5"]
    assert bench_waves.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["waves"]) == ["1", "2"] and out["speedup"]["1"] == 1.0


def test_same_episodes_tells_different_episodes_apart():
    spec = resolve_families(["HalfCheetahVel"])[0]
    with MujocoBatchEnv(spec.name, 4, horizon=5) as venv:
        policy = bench_policy(spec, venv.observation_space, venv.action_space, "cpu")
        params = {k: v.detach() for k, v in policy.named_parameters()}
        tasks = make(spec.name).unwrapped.sample_tasks(2, np.random.default_rng(0))
        a, b, c = (sample_episodes(venv, policy, params, tasks, 2, seed=s) for s in (1, 1, 2))
    assert bench_waves.same_episodes(a, b) and not bench_waves.same_episodes(a, c)


@pytest.mark.parametrize("argv, message", [
    (["--waves", "3", "--tasks", "4"], "do not divide"),
    (["--waves", "0"], "--waves"),
    (["--tasks", "0"], "--tasks"),
    (["--episodes", "0"], "--episodes"),
    (["--rounds", "0"], "--rounds"),
    (["--family", "Nowhere"], "Nowhere"),
    (["--horizon", "0"], "--horizon"),
    (["--family", "Navigation2D"], "not a MuJoCo family"),
])
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    assert bench_waves.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
