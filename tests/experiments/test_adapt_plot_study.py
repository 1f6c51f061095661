"""``adaptbed adapt`` / ``rollout`` (round trip, video or its one-line refusal), ``adaptbed
plot`` (overlay of two runs) and ``adaptbed study`` at tiny budgets (a report with a table)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from envs.tasks import GoalTask
from envs.vector import make_vector_env
from experiments import adapt, plot, rollout, study
from experiments import config as cfglib
from experiments import evaluate
from experiments.presets import get_preset
from experiments.train import prepare_run_dir, train
from meta.adaptation import AdvantageSettings, step_seeds
from meta.evaluation import evaluate_adaptation
from meta.sampler import sample_episodes

ROOT = Path(__file__).resolve().parents[2]
TINY = ["maml.meta_batch_size=2", "maml.episodes_per_task=2", "policy.hidden_sizes=8,8"]
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TASK = '{"goal": [0.3, -0.2]}'




def train_tiny(run_dir: Path, preset: str = "navigation-2d", overrides=TINY,
               seed: int = 0) -> Path:
    cfg = cfglib.apply_overrides(get_preset(preset), [
        *overrides, "run.iterations=2", "run.quiet=true", f"run.seed={seed}",
        f"run.run_dir={run_dir}"])
    prepare_run_dir(cfg, run_dir, resume=False)
    train(cfg, run_dir)
    return run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_tiny(tmp_path_factory.mktemp("adapt") / "run")
    finally:
        torch.set_num_threads(previous)


def one_line_error(rc: int, err: str, command: str, *fragments: str) -> None:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"adaptbed {command}: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# --- adapt and rollout ---------------------------------------------------------------------------
def test_adapt_then_rollout_round_trip(run_dir, tmp_path, capsys):
    save = tmp_path / "adapted"
    rc = adapt.main([str(run_dir), "--task", TASK, "--inner-steps", "2",
                     "--episodes-per-step", "3", "--seed", "4", "--save", str(save)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    summary = json.loads((save / "adapted.json").read_text())
    assert summary["task"] == {"goal": [0.3, -0.2]} and summary["family"] == "Navigation2D"
    assert summary["steps"] == [0, 1, 2] and len(summary["returns"]) == 3
    assert summary["step_sizes"] == [0.1, 0.05]

    # the returns are those of the evaluation protocol on this one task with the same seed
    run = evaluate.load_run(run_dir)
    task = GoalTask(goal=(0.3, -0.2))
    venv = make_vector_env("navigation-2d", 3)
    curve = evaluate_adaptation(venv, run.policy, dict(run.policy.named_parameters()), [task],
                                0.1, 2, 3, AdvantageSettings(), seed=4)
    np.testing.assert_allclose(summary["returns"], curve["per_task"][0], rtol=1e-5)

    # the saved weights are the adapted ones: they reproduce the last return exactly
    policy, cfg, saved_task, meta = adapt.load_adapted(save)
    assert saved_task == task and meta["returns"] == summary["returns"]
    assert cfg == run.cfg
    moved = [not torch.equal(a, b) for a, b in zip(policy.parameters(), run.policy.parameters())]
    assert any(moved)
    episodes = sample_episodes(venv, policy, dict(policy.named_parameters()), [task], 3,
                               step_seeds(4, 0, 3)[2])
    assert episodes.mean_return() == pytest.approx(summary["returns"][-1], rel=1e-5)

    rc = rollout.main([str(save), "--episodes", "4", "--seed", "1"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert '{"goal": [0.3, -0.2]}' in out and "adapted policy" in out
    mean = float(re.search(r"mean return (-?[\d.]+)", out).group(1))
    expected = rollout.episode_returns(policy, "Navigation2D", task, 4, 1, "cpu")
    assert mean == pytest.approx(np.mean(expected), abs=0.006)

    # a run directory rolls out its meta-trained policy on a given task
    rc = rollout.main([str(run_dir), "--task", '{"goal": [-0.1, 0.4]}', "--episodes", "2"])
    out, err = capsys.readouterr()
    assert rc == 0 and "not adapted" in out, err


@pytest.mark.parametrize("task, fragment", [
    ('{"goal": [0.3, -0.2]', "not valid JSON"),
    ('{"velocity": 1.7}', "GoalTask takes fields"),
    ('{"goal": [30, 0]}', "must lie in"),
    ('[0.3, -0.2]', "GoalTask"),
])
def test_adapt_rejects_bad_tasks(run_dir, tmp_path, capsys, task, fragment):
    rc = adapt.main([str(run_dir), "--task", task, "--save", str(tmp_path / "a")])
    one_line_error(rc, capsys.readouterr().err, "adapt", fragment)
    assert not (tmp_path / "a").exists()


def test_adapt_and_rollout_reject_bad_directories(run_dir, tmp_path, capsys):
    rc = adapt.main([str(tmp_path), "--task", TASK, "--save", str(tmp_path / "a")])
    one_line_error(rc, capsys.readouterr().err, "adapt", "not a run directory")
    rc = adapt.main([str(run_dir), "--task", TASK, "--inner-steps", "0", "--save",
                     str(tmp_path / "a")])
    one_line_error(rc, capsys.readouterr().err, "adapt", "--inner-steps")
    rc = rollout.main([str(tmp_path)])
    one_line_error(rc, capsys.readouterr().err, "rollout", "neither")
    rc = rollout.main([str(run_dir)])
    one_line_error(rc, capsys.readouterr().err, "rollout", "--task")
    (tmp_path / "policy.pt").write_bytes(b"not a checkpoint")
    rc = rollout.main([str(tmp_path)])
    one_line_error(rc, capsys.readouterr().err, "rollout", "policy.pt")


def test_rollout_video_refusals(run_dir, tmp_path, capsys):
    rc = rollout.main([str(run_dir), "--task", TASK, "--video", str(tmp_path / "v.gif")])
    one_line_error(rc, capsys.readouterr().err, "rollout", "Navigation2D has no renderer")
    rc = rollout.main([str(run_dir), "--task", TASK, "--video", str(tmp_path / "v.avi")])
    one_line_error(rc, capsys.readouterr().err, "rollout", ".gif or .mp4")
    assert not list(tmp_path.iterdir())


def test_gif_writer(tmp_path):
    from PIL import Image

    frames = [np.full((16, 12, 3), 40 * i, dtype=np.uint8) for i in range(5)]
    rollout.write_video(tmp_path / "v.gif", frames, fps=20)
    with Image.open(tmp_path / "v.gif") as image:
        assert image.n_frames == 5 and image.size == (12, 16)


@pytest.fixture(scope="module")
def cheetah_run(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("video") / "hc", "halfcheetah-vel",
                      ["maml.meta_batch_size=1", "maml.episodes_per_task=1",
                       "policy.hidden_sizes=4"])


@pytest.mark.parametrize("gl", ["egl", None])
def test_mujoco_video_is_written_or_refused_in_one_line(cheetah_run, tmp_path, gl):
    """Rendering needs an OpenGL platform: where MUJOCO_GL=egl works (it does on the 2-core CI
    machine) a GIF is written; without MUJOCO_GL there is no display, so the command must
    explain in one line and exit with 2. Either way, never a traceback."""
    env = {k: v for k, v in CHILD_ENV.items() if k != "MUJOCO_GL"}
    if gl:
        env["MUJOCO_GL"] = gl
    video = tmp_path / "cheetah.gif"
    proc = subprocess.run([sys.executable, "-m", "experiments.cli", "rollout", str(cheetah_run),
                           "--task", '{"velocity": 1.7}', "--episodes", "1", "--video",
                           str(video), "--video-steps", "12"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    if proc.returncode == 0:
        from PIL import Image

        with Image.open(video) as image:
            assert image.n_frames == 13  # the first frame and one per step
    else:
        one_line_error(proc.returncode, proc.stderr, "rollout", "MUJOCO_GL")
        assert not video.exists()


# --- plot ----------------------------------------------------------------------------------------
def test_plot_overlays_the_maml_curves_of_two_runs(run_dir, tmp_path, capsys):
    other = train_tiny(tmp_path / "other", seed=1)
    for run in (run_dir, other):
        assert evaluate.main([str(run), "--inner-steps", "2", "--max-tasks", "4",
                              "--quiet"]) == 0
    docs = [plot.read_evaluation(r, "test") for r in (run_dir, other)]
    figure = plot.overlay_figure([("run", docs[0]), ("other", docs[1])])
    lines = figure.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["run", "other"]
    for line, doc in zip(lines, docs):
        assert list(line.get_ydata()) == pytest.approx(doc["agents"]["maml"]["mean"])

    out = tmp_path / "both.png"
    capsys.readouterr()
    assert plot.main([str(run_dir), str(other), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rc = plot.main([str(run_dir), str(tmp_path), "--out", str(out)])
    one_line_error(rc, capsys.readouterr().err, "plot", "adaptbed evaluate")
    rc = plot.main([str(run_dir), "--split", "test-best", "--out", str(out)])
    one_line_error(rc, capsys.readouterr().err, "plot", "--split test --checkpoint best")
    # curves of different tasks are not overlaid under one title
    assert evaluate.main([str(other), "--inner-steps", "2", "--max-tasks", "3", "--quiet"]) == 0
    capsys.readouterr()
    rc = plot.main([str(run_dir), str(other), "--out", str(out)])
    one_line_error(rc, capsys.readouterr().err, "plot", "different tasks")


def test_plot_titles_name_a_checkpoint_other_than_the_latest():
    doc = {"family": "Navigation2D", "split": "test", "tasks": [{}, {}],
           "agents": {"maml": {"steps": [0, 1], "mean": [-3.0, -2.0], "ci95": [0.5, 0.4],
                               "kind": "curve"}}}
    assert plot.evaluation_figure(doc).axes[0].get_title() == "Navigation2D: test split (2 tasks)"
    best = plot.evaluation_figure({**doc, "checkpoint": "best"}).axes[0].get_title()
    assert best == "Navigation2D: test split (2 tasks), checkpoint best"


# --- study ---------------------------------------------------------------------------------------
def test_study_with_tiny_budgets_writes_a_report(tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["--preset", "navigation-2d", "--seeds", "0", "1", "--iterations", "2",
            "--baseline-iterations", "2", "--oracle-timesteps", "128", "--out", str(out),
            "--inner-steps", "1", "--episodes-per-step", "1", "--max-tasks", "2", "--quiet",
            *TINY]
    rc = study.main(argv)
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    report = (out / "report.md").read_text()
    assert report in stdout
    for split in ("test", "ood"):  # Navigation2D has both
        assert f"## {split} split (2 tasks)" in report and f"![{split}]({split}.png)" in report
        assert (out / f"{split}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.count("| agent | after 0 steps | after 1 step |") == 2
    for row in ("| MAML (2 seeds pooled) |", "| MAML maml-s0 |", "| MAML maml-s1 |",
                "| pretrained |", "| random init |", "| PPO from scratch (100 env steps) | - |",
                "| oracle (no adaptation) |"):
        assert report.count(row) == 2, row
    cell = re.compile(r"-?\d+\.\d ± \d+\.\d")
    table = [line for line in report.splitlines() if line.startswith("| MAML (2 seeds")]
    assert all(len(cell.findall(line)) == 2 for line in table)

    # the pooled curve averages each task over the two seeds' runs
    doc = json.loads((out / "test.json").read_text())
    runs = [json.loads((out / f"maml-s{s}" / "eval" / "test.json").read_text())
            for s in (0, 1)]
    expected = (np.asarray(runs[0]["agents"]["maml"]["per_task"])
                + runs[1]["agents"]["maml"]["per_task"]) / 2
    np.testing.assert_allclose(doc["agents"]["maml"]["per_task"], expected, rtol=1e-12)
    assert doc["tasks"] == runs[0]["tasks"] and len(doc["tasks"]) == 2
    assert set(doc["agents"]) == {"maml", "pretrained", "random", "ppo", "oracle"}
    assert set(runs[1]["agents"]) == {"maml"}  # baselines are evaluated once

    assert "oracle timesteps 128" in report

    # a second run of the study reuses the finished runs, resumes shorter ones, and refuses
    # runs trained otherwise
    logged = []
    study.train_seed("navigation-2d", 0, 2, TINY, out / "maml-s0", True, logged.append)
    assert logged == [f"maml seed 0: reusing {out / 'maml-s0'} (2 iterations)"]
    study.train_seed("navigation-2d", 1, 3, TINY, out / "maml-s1", True, logged.append)
    assert logged[-1] == f"maml seed 1: resuming {out / 'maml-s1'} at iteration 2"
    assert study.completed_iterations(out / "maml-s1") == 3
    with pytest.raises(study.StudyError, match="trained 3 iterations, more than the 2 asked"):
        study.train_seed("navigation-2d", 1, 2, TINY, out / "maml-s1", True, logged.append)
    with pytest.raises(study.StudyError, match="maml.fast_lr=0.1.*asks for 0.05"):
        study.train_seed("navigation-2d", 0, 2, [*TINY, "maml.fast_lr=0.05"], out / "maml-s0",
                         True, logged.append)
    baselines = out / "baselines"
    study.train_baselines("navigation-2d", ["pretrained"], baselines, 0, 3, None, TINY, True,
                          logged.append)
    assert logged[-1] == f"pretrained: resuming {baselines / 'pretrained'} at iteration 2"
    assert study.completed_iterations(baselines / "pretrained") == 3
    with pytest.raises(study.StudyError, match="trained for 128 timesteps.*asks for 200000"):
        study.train_baselines("navigation-2d", ["oracle"], baselines, 0, 3, None, TINY, True,
                              logged.append)


def test_study_rejects_bad_input(tmp_path, capsys):
    rc = study.main(["--preset", "nowhere", "--out", str(tmp_path)])
    one_line_error(rc, capsys.readouterr().err, "study", "unknown preset")
    rc = study.main(["--preset", "navigation-2d", "--seeds", "0", "0", "--out", str(tmp_path)])
    one_line_error(rc, capsys.readouterr().err, "study", "distinct")
    rc = study.main(["--preset", "navigation-2d", "--baselines", "zero", "--out", str(tmp_path)])
    one_line_error(rc, capsys.readouterr().err, "study", "unknown baseline")
    # the pretrained baseline's own check, before the MAML runs train (not after hours)
    rc = study.main(["--preset", "navigation-2d", "--out", str(tmp_path),
                     "maml.num_inner_steps=2"])
    one_line_error(rc, capsys.readouterr().err, "study", "maml.num_inner_steps is fixed to 0")
    assert not list(tmp_path.iterdir())


def test_moving_average_is_a_trailing_mean():
    assert plot.moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert plot.moving_average([1.0, 3.0], 1) == [1.0, 3.0]
    nan = float("nan")
    smooth = plot.moving_average([1.0, nan, 3.0, 5.0], 2)  # a failed iteration logs NaN
    assert smooth[0] == 1.0 and smooth[1] == 1.0 and smooth[2:] == [3.0, 4.0]
    assert math.isnan(plot.moving_average([nan], 1)[0])


def test_plot_training_draws_before_and_after_adaptation_from_progress_csv(run_dir, tmp_path,
                                                                           capsys):
    progress = plot.read_progress(run_dir)
    figure = plot.training_figure([("run", progress)], smooth=1)
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    assert set(lines) == {"run: after adaptation", "run: before adaptation"}
    assert list(lines["run: after adaptation"].get_ydata()) == pytest.approx(progress["return_step_1"])
    assert list(lines["run: before adaptation"].get_xdata()) == progress["iteration"]

    out = tmp_path / "training.png"
    assert plot.main(["--training", str(run_dir), "--smooth", "2", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    rc = plot.main(["--training", str(tmp_path), "--out", str(out)])
    one_line_error(rc, capsys.readouterr().err, "plot", "adaptbed train")
    rc = plot.main(["--training", str(run_dir), "--smooth", "0", "--out", str(out)])
    one_line_error(rc, capsys.readouterr().err, "plot", "--smooth")
    rc = plot.main([str(run_dir), "--smooth", "5", "--out", str(out)])
    one_line_error(rc, capsys.readouterr().err, "plot", "--training")


def test_study_starts_again_a_run_that_stopped_before_its_first_resumable_checkpoint(tmp_path):
    run = tmp_path / "maml-s0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "checkpoints" / "best.pt").write_bytes(b"written before latest.pt in iteration 0")
    logged = []
    cfg = study.maml_config("navigation-2d", 0, [])
    assert study.prepare_reuse(run, cfg, 2, "maml seed 0", logged.append) == 0
    assert not run.exists() and "starting it again" in logged[0]
