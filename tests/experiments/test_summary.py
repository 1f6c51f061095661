"""Tests of ``adaptbed summary`` (experiments/summary.py) on hand-written logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import summary

PROGRESS = """iteration,return_step_0,return_step_1,accepted,rejected_steps,env_steps_total
0,-10,-8,1,0,100
1,-9,-5,1,0,200
2,-8,-6,0,1,300
3,-7,-2,1,1,400
"""
TIMING = """iteration,seconds_sampling,seconds_adapting,seconds_updating,env_steps_per_second,seconds_iteration,rss_mb
0,1.0,0.1,0.5,100,2.0,10
1,1.0,0.1,0.5,100,2.0,30
2,3.0,0.1,0.5,50,4.0,20
3,1.0,0.1,0.5,100,2.0,
"""


def write_run(tmp_path: Path) -> Path:
    (tmp_path / "progress.csv").write_text(PROGRESS)
    (tmp_path / "timing.csv").write_text(TIMING)
    return tmp_path


def test_summary_numbers_are_the_logs_arithmetic(tmp_path, capsys):
    run = write_run(tmp_path)
    assert summary.main([str(run), "--last", "2", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["iterations"] == 4 and s["window"] == "iterations 2-3"
    assert s["return_before_adaptation"] == pytest.approx(-7.5)  # mean of -8, -7
    assert s["return_after_adaptation"] == pytest.approx(-4.0)  # mean of -6, -2
    assert (s["best_iteration"], s["best_return_after_adaptation"]) == (3, -2.0)
    assert (s["accepted_steps"], s["faulted_steps"], s["env_steps"]) == (3, 1, 400)
    assert s["seconds"] == pytest.approx(10.0)
    assert s["env_steps_per_second"] == pytest.approx(40.0)  # 400 steps / 10 s
    assert s["seconds_per_iteration"]["sampling"] == pytest.approx(1.5)
    assert s["peak_rss_mb"] == 30  # the empty cell is skipped


def test_summary_text_names_the_window(tmp_path, capsys):
    assert summary.main([str(write_run(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "iterations 0-3" in out and "-5.2" in out  # mean after adaptation of all 4


@pytest.mark.parametrize("argv, needle", [([], "adaptbed train"), (["--last", "0"], "--last")])
def test_summary_bad_input_is_one_line(tmp_path, capsys, argv, needle):
    assert summary.main([str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and err[0].startswith("adaptbed summary: error:")


def test_summary_skips_iterations_without_returns(tmp_path, capsys):
    run = write_run(tmp_path)
    (run / "progress.csv").write_text(PROGRESS.replace("0,-10,-8,", "0,nan,nan,"))
    assert summary.main([str(run), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["best_iteration"], s["best_return_after_adaptation"]) == (3, -2.0)
    assert s["return_after_adaptation"] == pytest.approx(-13 / 3)  # the 3 finite iterations


def test_summary_of_a_log_that_is_not_numeric(tmp_path, capsys):
    (tmp_path / "progress.csv").write_text("iteration,return_step_0\n0,abc\n")
    assert summary.main([str(tmp_path)]) == 2
    assert "numeric" in capsys.readouterr().err


def test_an_iteration_window_averages_its_rows_and_takes_its_median_times(tmp_path, capsys):
    run = write_run(tmp_path)
    (run / "progress.csv").write_text(  # iteration 0 tried no step (ls_steps 0)
        "iteration,return_step_0,return_step_1,accepted,ls_steps,rejected_steps,env_steps_total\n"
        "0,-10,-8,0,0,0,100\n1,-9,-5,1,3,0,200\n2,-8,-6,0,15,1,300\n3,-7,-2,1,2,1,400\n")
    assert summary.main([str(run), "--iterations", "0:3", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["window"] == "iterations 0-2"
    assert s["return_after_adaptation"] == pytest.approx(-19 / 3)  # mean of -8, -5, -6
    assert s["window_line_search_trials"] == pytest.approx(9.0)  # mean of 3, 15: 0 tried none
    median = s["window_median_seconds_per_iteration"]  # sampling 1, 1, 3: median 1, mean 1.67
    assert median["sampling"] == pytest.approx(1.0) and median["total"] == pytest.approx(2.0)
    # the best iteration and the totals still cover the whole run
    assert s["best_iteration"] == 3 and s["seconds"] == pytest.approx(10.0)
    assert s["seconds_per_iteration"]["sampling"] == pytest.approx(1.5)
    assert summary.main([str(run), "--iterations", "1:3"]) == 0
    assert "line-search trials" in capsys.readouterr().out


def test_a_window_without_timing_rows_gives_strict_json_with_nulls(tmp_path, capsys):
    run = write_run(tmp_path)
    (run / "timing.csv").write_text(TIMING.split("\n")[0] + "\n" + TIMING.split("\n")[4] + "\n")
    assert summary.main([str(run), "--iterations", "0:2", "--json"]) == 0

    def no_constants(name):
        raise AssertionError(f"not strict JSON: {name}")

    s = json.loads(capsys.readouterr().out, parse_constant=no_constants)
    assert s["window_median_seconds_per_iteration"]["sampling"] is None
    assert s["peak_rss_mb"] is None  # the only timing row has no rss_mb


def test_a_timing_log_without_its_columns_is_one_line(tmp_path, capsys):
    run = write_run(tmp_path)
    (run / "timing.csv").write_text("iteration,rss_mb\n0,10\n")
    assert summary.main([str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seconds_sampling" in err[0]


@pytest.mark.parametrize("argv, needle", [
    (["--iterations", "5:9"], "no iteration in 5:9"),
    (["--iterations", "3:1"], "A:B"),
    (["--iterations", "x"], "A:B"),
])
def test_a_bad_or_empty_window_is_one_line(tmp_path, capsys, argv, needle):
    assert summary.main([str(write_run(tmp_path)), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_last_and_iterations_together_are_refused_even_with_the_default_value(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        summary.main([str(write_run(tmp_path)), "--last", "10", "--iterations", "0:2"])
    assert exc.value.code == 2
    assert "not allowed with" in capsys.readouterr().err
