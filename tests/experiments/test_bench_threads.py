"""Smoke test of ``experiments/bench_threads.py``: one row per family and thread count."""

from __future__ import annotations

import json
import math

import pytest

from experiments import bench_threads


def test_one_row_per_thread_count_with_every_size(capsys):
    argv = ["--family", "HalfCheetahVel", "--threads", "1,2", "--sizes", "1x2,2x1"]
    assert bench_threads.main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [(r["family"], r["threads"]) for r in rows] == [("HalfCheetahVel", 1),
                                                          ("HalfCheetahVel", 2)]
    for row in rows:
        for key in ("physics_limit_sps", "sampler_1x2_sps", "sampler_2x1_sps"):
            assert math.isfinite(row[key]) and row[key] > 0, key


def test_one_row_per_thread_count_and_minimum(capsys):
    argv = ["--family", "AntVel", "--threads", "2", "--sizes", "1x2",
            "--min-envs-per-thread", "1,4"]
    assert bench_threads.main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [(r["threads"], r["min_envs_per_thread"]) for r in rows] == [(2, 1), (2, 4)]
    assert all(math.isfinite(r["sampler_1x2_sps"]) and r["sampler_1x2_sps"] > 0 for r in rows)


@pytest.mark.parametrize("argv, message", [
    (["--threads", "0"], "--threads"),
    (["--threads", "two"], "--threads"),
    (["--sizes", "8"], "TASKSxEPISODES"),
    (["--min-envs-per-thread", "0"], "--min-envs-per-thread"),
    (["--family", "Navigation2D"], "not a MuJoCo family"),
])
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    assert bench_threads.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
