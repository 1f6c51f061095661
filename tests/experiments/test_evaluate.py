"""``adaptbed evaluate``: the MAML paper's protocol on held-out tasks, every baseline, the
outputs (JSON schema, CSV, PNG, TensorBoard) and the one-line errors of bad input.

The run is tiny (2 tasks x 2 episodes, an 8 x 8 policy, 2 meta-iterations, ``fast_lr`` 0.07 so
the step-size schedule is recognisable); the baselines are trained at tiny budgets in fixtures
with ``experiments.baselines``. Runs use one torch thread (see tests/experiments/test_train.py).
The learning test at the end (``slow``) trains navigation-2d with the CI-sized budget.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import meta.evaluation
from envs.splits import get_split, split_to_json
from envs.tasks import task_to_dict
from envs.vector import make_vector_env
from experiments import baselines, evaluate, quickstart
from experiments import config as cfglib
from experiments.presets import get_preset
from experiments.train import prepare_run_dir, train
from meta.adaptation import AdvantageSettings
from meta.evaluation import evaluate_adaptation, step_sizes

ROOT = Path(__file__).resolve().parents[2]
TINY = ["maml.meta_batch_size=2", "maml.episodes_per_task=2", "policy.hidden_sizes=8,8"]
FAST_LR = 0.07




def train_tiny(run_dir: Path, overrides: list[str] = ()) -> Path:
    cfg = cfglib.apply_overrides(get_preset("navigation-2d"), [
        *TINY, *overrides, "run.iterations=2", "run.quiet=true", f"run.run_dir={run_dir}"])
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        prepare_run_dir(cfg, run_dir, resume=False)
        train(cfg, run_dir)
    finally:
        torch.set_num_threads(previous)
    return run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("eval") / "run", [f"maml.fast_lr={FAST_LR}"])


@pytest.fixture(scope="module")
def baseline_dir(tmp_path_factory) -> Path:
    """Tiny pretrained and oracle baselines, trained by ``adaptbed baseline``."""
    out = tmp_path_factory.mktemp("baselines")
    assert baselines.main(["pretrained", "--preset", "navigation-2d", "--iterations", "2",
                           "--out", str(out / "pretrained"), "--quiet", *TINY]) == 0
    assert baselines.main(["oracle", "--preset", "navigation-2d", "--timesteps", "128",
                           "--n-envs", "1", "--out", str(out / "oracle"), "--quiet"]) == 0
    return out


def run_evaluate(capsys, *argv) -> tuple[int, str, str]:
    rc = evaluate.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def read_doc(run_dir: Path, split: str = "test") -> dict:
    return json.loads((run_dir / "eval" / f"{split}.json").read_text())


def assert_one_line_error(rc: int, err: str, *fragments: str) -> None:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("adaptbed evaluate: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# --- the protocol and its outputs ----------------------------------------------------------------
def test_protocol_writes_the_documented_schema(run_dir, capsys):
    rc, out, err = run_evaluate(capsys, run_dir, "--inner-steps", 2, "--quiet")
    assert rc == 0, err
    doc = read_doc(run_dir)
    tasks = get_split("navigation-2d", "test")
    assert doc["split"] == "test" and doc["family"] == "Navigation2D"
    assert doc["tasks"] == [task_to_dict(t) for t in tasks]
    assert list(doc["agents"]) == ["maml"]
    maml = doc["agents"]["maml"]
    assert maml["steps"] == [0, 1, 2] and maml["kind"] == "curve"
    assert len(maml["mean"]) == len(maml["ci95"]) == 3
    assert len(maml["per_task"]) == len(tasks) and all(len(r) == 3 for r in maml["per_task"])
    values = [*maml["mean"], *maml["ci95"], *(v for r in maml["per_task"] for v in r)]
    assert all(math.isfinite(v) for v in values)
    assert all(c >= 0 for c in maml["ci95"])
    assert maml["mean"] == pytest.approx(np.mean(maml["per_task"], axis=0).tolist())
    assert doc["episodes_per_step"] == 2  # default: the run's maml.episodes_per_task
    assert doc["seeds"] == [0] and doc["checkpoint"] == "latest"

    # the CSV mirrors the JSON
    rows = (run_dir / "eval" / "test.csv").read_text().splitlines()
    assert rows[0] == "agent,step,mean,ci95" and len(rows) == 1 + 3
    assert [float(r.split(",")[2]) for r in rows[1:]] == pytest.approx(maml["mean"])
    # the plot is a PNG
    assert (run_dir / "eval" / "test.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the table: a header with the steps, one row per agent, the numbers of the JSON
    header = next(line for line in out.splitlines() if line.startswith("agent"))
    assert all(f"after {k} step" in header for k in range(3))
    row = next(line for line in out.splitlines() if line.startswith("maml")).split()
    assert [float(x) for x in row[1::3]] == pytest.approx(maml["mean"], abs=0.051)


def test_tensorboard_scalars_per_agent_and_step(run_dir, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rc, _, err = run_evaluate(capsys, run_dir, "--inner-steps", 1, "--split", "ood",
                              "--baselines", "random", "--max-tasks", 3, "--quiet")
    assert rc == 0, err
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"eval/ood/maml", "eval/ood/random"} <= set(tags)
    doc = read_doc(run_dir, "ood")
    last = {}
    for event in events.Scalars("eval/ood/random"):  # later evaluations append: keep the last
        last[event.step] = event.value
    assert sorted(last) == [0, 1]
    assert [last[0], last[1]] == pytest.approx(doc["agents"]["random"]["mean"], rel=1e-5)


def test_step_sizes_are_fast_lr_then_half(run_dir, capsys, monkeypatch):
    assert step_sizes(0.1, 3) == (0.1, 0.05, 0.05)
    assert step_sizes(FAST_LR, 1) == (FAST_LR,)
    assert step_sizes(0.1, 3, trained_steps=2) == (0.1, 0.1, 0.05)  # as trained, then half
    assert step_sizes(0.1, 2, trained_steps=0) == (0.1, 0.05)  # a multi-task policy
    seen = []
    real = meta.evaluation.InnerLoop

    def recording(sizes, *args, **kwargs):
        seen.append(tuple(sizes))
        return real(sizes, *args, **kwargs)

    monkeypatch.setattr(meta.evaluation, "InnerLoop", recording)
    rc, _, err = run_evaluate(capsys, run_dir, "--inner-steps", 3, "--max-tasks", 4,
                              "--seeds", 5, "--quiet")
    assert rc == 0, err
    assert seen == [(FAST_LR, FAST_LR / 2, FAST_LR / 2)]  # the run's fast_lr, not a default
    doc = read_doc(run_dir)
    assert doc["step_sizes"] == [FAST_LR, FAST_LR / 2, FAST_LR / 2]

    # the same numbers as the protocol called by hand on the run's checkpoint
    monkeypatch.undo()
    run = evaluate.load_run(run_dir)
    tasks = get_split("navigation-2d", "test")[:4]
    venv = make_vector_env("navigation-2d", len(tasks) * 2)
    manual = evaluate_adaptation(venv, run.policy, dict(run.policy.named_parameters()), tasks,
                                 FAST_LR, 3, 2, AdvantageSettings(), seed=5)
    np.testing.assert_allclose(doc["agents"]["maml"]["per_task"], manual["per_task"], rtol=1e-5)


def test_a_run_trained_with_two_inner_steps_is_evaluated_with_two_full_steps(run_dir,
                                                                            monkeypatch):
    run = evaluate.load_run(run_dir)
    assert evaluate.protocol_of(run, 3, None).step_sizes == (FAST_LR, FAST_LR / 2, FAST_LR / 2)
    two = dataclasses.replace(run.cfg, maml=dataclasses.replace(run.cfg.maml, num_inner_steps=2))
    protocol = evaluate.protocol_of(dataclasses.replace(run, cfg=two), 3, None)
    assert protocol.step_sizes == (FAST_LR, FAST_LR, FAST_LR / 2)
    seen = []  # and the evaluation itself adapts with that schedule, not only the JSON's record
    real = meta.evaluation.InnerLoop

    def recording(sizes, *args, **kwargs):
        seen.append(tuple(sizes))
        return real(sizes, *args, **kwargs)

    monkeypatch.setattr(meta.evaluation, "InnerLoop", recording)
    evaluate.adaptation_curve(run.policy, get_split("navigation-2d", "test")[:2], protocol, 0)
    assert seen == [protocol.step_sizes]


def test_a_mujoco_curve_sampled_in_waves_equals_the_one_sampled_at_once(monkeypatch):
    """A protocol's ``max_wave_envs`` reaches the simulator: 16 tasks x 8 episodes in waves of
    64 envs give the same per-task returns as all 128 envs at once."""
    from agents.policies import GaussianMLPPolicy

    sizes = []

    def recording(family_name, num_envs, *args, **kwargs):
        sizes.append(num_envs)
        return make_vector_env(family_name, num_envs, *args, **kwargs)

    monkeypatch.setattr(evaluate, "make_vector_env", recording)
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(17, 6, hidden_sizes=(16,))
    tasks = get_split("halfcheetah-vel", "test")[:16]
    curves = [evaluate.adaptation_curve(
        policy, tasks, evaluate.Protocol("HalfCheetahVel", 1, 8, 0.1, AdvantageSettings(),
                                         max_wave_envs=wave), seed=2)
        for wave in (0, 64)]
    assert sizes == [128, 64]
    assert curves[0] == curves[1]


def test_the_protocol_takes_the_run_s_wave_size(run_dir):
    run = evaluate.load_run(run_dir)
    assert evaluate.protocol_of(run, 1, None).max_wave_envs == run.cfg.run.max_wave_envs
    other = dataclasses.replace(run.cfg, run=dataclasses.replace(run.cfg.run, max_wave_envs=128))
    assert evaluate.protocol_of(dataclasses.replace(run, cfg=other), 1, None).max_wave_envs == 128


def test_same_seed_same_result_different_seed_different(run_dir, capsys):
    def curve(*seeds: int) -> dict:
        rc, _, err = run_evaluate(capsys, run_dir, "--inner-steps", 1, "--max-tasks", 5,
                                  "--baselines", "random", "--seeds", *seeds, "--quiet")
        assert rc == 0, err
        return read_doc(run_dir)["agents"]

    first, again, other = curve(0), curve(0), curve(1)
    assert first == again
    assert first["maml"]["per_task"] != other["maml"]["per_task"]
    assert first["random"]["per_task"] != other["random"]["per_task"]
    # several seeds: each task's values are averaged over the seeds first (documented)
    both = curve(0, 1)
    for agent in ("maml", "random"):
        expected = (np.asarray(first[agent]["per_task"]) + other[agent]["per_task"]) / 2
        np.testing.assert_allclose(both[agent]["per_task"], expected, rtol=1e-12)
        assert both[agent]["mean"] == pytest.approx(expected.mean(axis=0).tolist())
        assert both[agent]["ci95"] == pytest.approx(
            [meta.evaluation.ci95(c) for c in expected.T.tolist()])
        np.testing.assert_allclose(both[agent]["seed_means"],
                                   [first[agent]["mean"], other[agent]["mean"]], rtol=1e-12)


def tb_scalars(run_dir: Path, tag: str) -> list:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0}).Reload()
    return events.Scalars(tag) if tag in events.Tags()["scalars"] else []


def test_add_keeps_the_agents_already_evaluated_with_the_same_protocol(run_dir, capsys):
    common = (run_dir, "--inner-steps", 1, "--max-tasks", 3, "--quiet")
    rc, _, err = run_evaluate(capsys, *common)
    assert rc == 0, err
    first = read_doc(run_dir)
    maml_points = len(tb_scalars(run_dir, "eval/test/maml"))
    rc, out, err = run_evaluate(capsys, *common, "--baselines", "random", "--add")
    assert rc == 0, err
    added = read_doc(run_dir)
    assert len(tb_scalars(run_dir, "eval/test/maml")) == maml_points  # not logged twice
    assert [e.step for e in tb_scalars(run_dir, "eval/test/random")][-2:] == [0, 1]
    assert list(added["agents"]) == ["maml", "random"]
    assert added["agents"]["maml"] == first["agents"]["maml"]  # deterministic: same numbers
    assert len(added["commands"]) == 2 and "--add" in added["commands"][1]
    assert "random" in out  # the printed table shows every agent of the file
    rc, _, err = run_evaluate(capsys, run_dir, "--inner-steps", 2, "--max-tasks", 3, "--add",
                              "--quiet")
    assert_one_line_error(rc, err, "--add", "inner_steps", "rerun without --add")
    assert read_doc(run_dir) == added  # refused before evaluating: nothing written


def test_other_checkpoints_are_evaluated_into_their_own_files(tmp_path, capsys):
    run = train_tiny(tmp_path / "run", ["run.keep_every=1"])
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert {"iteration-1.pt", "iteration-2.pt", "latest.pt"} <= set(names)
    rc, _, err = run_evaluate(capsys, run, "--max-tasks", 2, "--inner-steps", 1, "--quiet")
    assert rc == 0, err
    latest = read_doc(run)
    rc, out, err = run_evaluate(capsys, run, "--checkpoint", "iteration-1", "--max-tasks", 2,
                                "--inner-steps", 1, "--quiet")
    assert rc == 0, err
    kept = read_doc(run, "test-iteration-1")
    assert kept["checkpoint"] == "iteration-1" and kept["checkpoint_iteration"] == 1
    assert latest["checkpoint_iteration"] == 2 and read_doc(run) == latest  # left alone
    assert kept["agents"]["maml"]["per_task"] != latest["agents"]["maml"]["per_task"]
    assert "test-iteration-1.json" in out
    rc, out, err = run_evaluate(capsys, run, "--checkpoint", "best", "--max-tasks", 2,
                                "--inner-steps", 1, "--quiet")
    assert rc == 0, err
    assert read_doc(run, "test-best")["checkpoint"] == "best" and "test-best.json" in out
    assert read_doc(run) == latest  # the best checkpoint's evaluation has its own files too
    rc, _, err = run_evaluate(capsys, run, "--checkpoint", "iteration-7")
    assert_one_line_error(rc, err, "iteration-7.pt")


def test_ood_split_evaluates_exactly_the_ood_tasks(run_dir, capsys):
    rc, _, err = run_evaluate(capsys, run_dir, "--split", "ood", "--inner-steps", 1, "--quiet")
    assert rc == 0, err
    doc = read_doc(run_dir, "ood")
    ood = get_split("navigation-2d", "ood")
    assert doc["split"] == "ood" and doc["tasks"] == [task_to_dict(t) for t in ood]
    assert len(doc["agents"]["maml"]["per_task"]) == len(ood) == 40
    assert (run_dir / "eval" / "ood.csv").exists() and (run_dir / "eval" / "ood.png").exists()


def test_split_file_of_the_family_works_and_of_another_family_fails(run_dir, tmp_path, capsys):
    tasks = get_split("navigation-2d", "ood")[:3]
    mine = tmp_path / "corners.json"
    mine.write_text(split_to_json("navigation-2d", "corners", tasks))
    rc, _, err = run_evaluate(capsys, run_dir, "--split", mine, "--inner-steps", 1, "--quiet")
    assert rc == 0, err
    doc = read_doc(run_dir, "corners")
    assert doc["split"] == "corners" and doc["tasks"] == [task_to_dict(t) for t in tasks]

    other = tmp_path / "cheetah.json"
    other.write_text(split_to_json("halfcheetah-vel", "test",
                                   get_split("halfcheetah-vel", "test")[:2]))
    rc, _, err = run_evaluate(capsys, run_dir, "--split", other)
    assert_one_line_error(rc, err, "HalfCheetahVel", "Navigation2D")
    assert not (run_dir / "eval" / "cheetah.json").exists()


def test_every_baseline_end_to_end(run_dir, baseline_dir, capsys):
    rc, out, err = run_evaluate(capsys, run_dir, "--baselines",
                                "pretrained,random,ppo,oracle,stand_still",
                                "--baseline-dir", baseline_dir, "--ppo-budgets", "1,10",
                                "--inner-steps", 1, "--episodes-per-step", 1,
                                "--max-tasks", 2, "--quiet")
    assert rc == 0, err
    doc = read_doc(run_dir)
    agents = doc["agents"]
    assert list(agents) == ["maml", "pretrained", "random", "ppo", "ppo_x10", "oracle",
                            "stand_still"]
    for name in ("maml", "pretrained", "random"):
        assert agents[name]["steps"] == [0, 1] and agents[name]["kind"] == "curve", name
    horizon = 100
    for name, multiple in (("ppo", 1), ("ppo_x10", 10)):
        assert agents[name]["steps"] == [1] and agents[name]["kind"] == "point", name
        assert agents[name]["env_steps"] == multiple * 1 * 1 * horizon  # K * N * horizon
    for name in ("oracle", "stand_still"):
        assert agents[name]["kind"] == "flat" and agents[name]["steps"] == [0, 1], name
        assert agents[name]["mean"][0] == agents[name]["mean"][1], name
    # standing still on navigation-2d: the distance to the goal, every step (an independent
    # single-env simulation, as the quickstart computes it)
    still = quickstart.stand_still_returns(get_split("navigation-2d", "test")[:2])
    assert [r[0] for r in agents["stand_still"]["per_task"]] == pytest.approx(still, rel=1e-5)
    for name, res in agents.items():
        assert len(res["per_task"]) == 2, name
        assert all(math.isfinite(v) for v in [*res["mean"], *res["ci95"]]), name
    # the pretrained baseline is fine-tuned: its curve moves; the oracle's does not
    assert agents["pretrained"]["per_task"][0][0] != agents["pretrained"]["per_task"][0][1]
    rows = [line.split()[0] for line in out.splitlines()[3:] if line.strip()]
    assert [r for r in rows if r in agents] == list(agents)  # one table row per agent
    assert (run_dir / "eval" / "test.png").stat().st_size > 0


def test_a_pretrained_baseline_of_another_family_is_refused(run_dir, tmp_path, capsys):
    assert baselines.main(["pretrained", "--preset", "halfcheetah-vel", "--iterations", "1",
                           "--out", str(tmp_path / "pretrained"), "--quiet",
                           "maml.meta_batch_size=1", "maml.episodes_per_task=1",
                           "policy.hidden_sizes=4"]) == 0
    capsys.readouterr()
    rc, _, err = run_evaluate(capsys, run_dir, "--baselines", "pretrained",
                              "--baseline-dir", tmp_path)
    assert_one_line_error(rc, err, "HalfCheetahVel")


# --- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("baseline", ["pretrained", "oracle"])
def test_missing_baseline_names_the_command_that_trains_it(run_dir, tmp_path, capsys, baseline):
    rc, _, err = run_evaluate(capsys, run_dir, "--baselines", baseline,
                              "--baseline-dir", tmp_path)
    assert_one_line_error(rc, err, f"adaptbed baseline {baseline} --preset navigation-2d")


@pytest.fixture
def broken_run(run_dir, tmp_path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("eval", "tb"))
    return copy


@pytest.mark.parametrize("case, fragment", [
    ("corrupt latest", "latest.pt"),
    ("truncated latest", "latest.pt"),
    ("missing best", "no checkpoint"),
    ("not a run dir", "not a run directory"),
    ("corrupt config", "config.json"),
])
def test_bad_run_directories(broken_run, capsys, case, fragment):
    args = [broken_run]
    checkpoint = broken_run / "checkpoints" / "latest.pt"
    if case == "corrupt latest":
        checkpoint.write_bytes(b"\x00garbage" * 100)
    elif case == "truncated latest":
        checkpoint.write_bytes(checkpoint.read_bytes()[:200])
    elif case == "missing best":
        (broken_run / "checkpoints" / "best.pt").unlink()
        args += ["--checkpoint", "best"]
    elif case == "not a run dir":
        (broken_run / "config.json").unlink()
    elif case == "corrupt config":
        (broken_run / "config.json").write_text("{not json")
    rc, _, err = run_evaluate(capsys, *args)
    assert_one_line_error(rc, err, fragment)
    assert not (broken_run / "eval").exists()


def test_a_family_without_ood_split_says_so():
    from envs.tasks import TaskError

    with pytest.raises(TaskError, match="no out-of-distribution split"):
        evaluate.resolve_split("HalfCheetahDir", "ood")


@pytest.mark.parametrize("argv, fragment", [
    (["--split", "validation"], "unknown split"),
    (["--split", "train"], "unknown split"),
    (["--split", "missing.json"], "cannot read split file"),
    (["--inner-steps", "0"], "--inner-steps"),
    (["--episodes-per-step", "0"], "--episodes-per-step"),
    (["--baselines", "pretrained,maml2"], "unknown baseline 'maml2'"),
    (["--ppo-budgets", "1,x"], "--ppo-budgets"),
    (["--max-tasks", "0"], "--max-tasks"),
])
def test_bad_arguments(run_dir, capsys, argv, fragment):
    rc, _, err = run_evaluate(capsys, run_dir, *argv)
    assert_one_line_error(rc, err, fragment)


@pytest.mark.parametrize("argv", [["--inner-steps", "two"], ["--checkpoint", "first"],
                                  ["--checkpoint", "iteration-0"], []])
def test_argument_errors_are_one_line(run_dir, capsys, argv):
    with pytest.raises(SystemExit) as stop:
        evaluate.main([str(run_dir), *argv] if argv else [])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("adaptbed evaluate: error: "), lines


def test_malformed_split_file_and_wrong_family_task(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    rc, _, err = run_evaluate(capsys, run_dir, "--split", bad)
    assert_one_line_error(rc, err, "not valid JSON")
    wrong = tmp_path / "wrong.json"  # a Navigation2D file holding a velocity task
    wrong.write_text(json.dumps({"family": "Navigation2D", "tasks": [{"velocity": 1.0}]}))
    rc, _, err = run_evaluate(capsys, run_dir, "--split", wrong)
    assert_one_line_error(rc, err, "GoalTask")


def test_console_script_error_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.cli", "evaluate", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"adaptbed evaluate: error: {tmp_path} is not a run directory (no config.json); "
        "create one with `adaptbed train`"]


# --- learning ------------------------------------------------------------------------------------
# Budget of tests/experiments/test_navigation_learning.py (25 iterations of 10 tasks x 10
# episodes, 32 x 32 policy), for MAML and for the pretrained baseline (maml.num_inner_steps=0).
# Measured when the test was written (training seeds 0, 1, 2 x evaluation seeds 0, 1; test
# split, return after one step): MAML -18.8 / -18.2, -18.7 / -18.1, -18.2 / -17.7; pretrained
# -33.9 / -34.0, -35.5 / -35.5, -33.1 / -33.4 (it learns to stand still: -38.6 before the
# step, standing still earns -37.2); random init about -112 to -114. Smallest gaps: 14.9 over
# pretrained, 93 over random; the margins keep about half of them as headroom. The test trains
# with seed 0 and evaluates with seed 0 (about 30 s on 2 cores).
LEARNING = ["maml.meta_batch_size=10", "maml.episodes_per_task=10", "policy.hidden_sizes=32,32"]
MARGIN_OVER_PRETRAINED = 7.0
MARGIN_OVER_RANDOM = 40.0


@pytest.mark.slow
def test_maml_after_one_step_beats_pretrained_and_random(tmp_path, capsys):
    cfg = cfglib.apply_overrides(get_preset("navigation-2d"), [
        *LEARNING, "run.iterations=25", "run.quiet=true", f"run.run_dir={tmp_path / 'maml'}"])
    prepare_run_dir(cfg, tmp_path / "maml", resume=False)
    train(cfg, tmp_path / "maml")
    assert baselines.main(["pretrained", "--preset", "navigation-2d", "--iterations", "25",
                           "--out", str(tmp_path / "bl" / "pretrained"), "--quiet",
                           *LEARNING]) == 0
    rc, out, err = run_evaluate(capsys, tmp_path / "maml", "--baselines", "pretrained,random",
                                "--baseline-dir", tmp_path / "bl", "--inner-steps", 1, "--quiet")
    assert rc == 0, err
    print(out)
    agents = read_doc(tmp_path / "maml")["agents"]
    maml, pretrained, random = (agents[a]["mean"][1] for a in ("maml", "pretrained", "random"))
    assert maml > pretrained + MARGIN_OVER_PRETRAINED, (maml, pretrained)
    assert maml > random + MARGIN_OVER_RANDOM, (maml, random)


def test_an_interval_over_one_task_is_shown_as_undefined_not_as_zero():
    assert evaluate.mean_ci_text(-47.07, 3.21) == "-47.1 ± 3.2"
    assert evaluate.mean_ci_text(-47.07, float("nan")) == "-47.1 ± n/a"
    one_task = evaluate.summarize([[[-47.0, -20.0]]], [0, 1])  # 1 seed, 1 task, K = 1
    assert one_task["mean"] == [-47.0, -20.0]
    assert all(math.isnan(c) for c in one_task["ci95"])


def test_a_split_file_never_takes_the_name_of_a_fixed_split_or_another_checkpoint(tmp_path):
    from envs.splits import get_split, split_to_json

    tasks = get_split("Navigation2D", "test")[:2]
    names = {}
    for stem in ("test", "mine", "test-best", "test-iteration-20"):
        path = tmp_path / f"{stem}.json"
        path.write_text(split_to_json("Navigation2D", stem, tasks))
        names[stem] = evaluate.resolve_split("Navigation2D", str(path))[0]
    assert names == {"test": "file-test", "mine": "mine", "test-best": "file-test-best",
                     "test-iteration-20": "file-test-iteration-20"}
