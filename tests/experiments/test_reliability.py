"""Reliability of `adaptbed train`: corrupted checkpoints, incompatible configs, numerical faults
and memory over a long run."""

import csv
import json
import math

import pytest
import torch

import meta.adaptation
from experiments import config as cfglib
from experiments.presets import get_preset
from experiments.rundir import RunDirError, load_checkpoint, load_latest_checkpoint
from experiments.train import main, prepare_run_dir, train

TINY = ["maml.meta_batch_size=2", "maml.episodes_per_task=2", "policy.hidden_sizes=8,8",
        "run.quiet=true"]


def tiny_config(run_dir, *overrides):
    cfg = cfglib.apply_overrides(get_preset("navigation-2d"),
                                 [*TINY, f"run.run_dir={run_dir}", *overrides])
    cfglib.validate(cfg)
    return cfg


def run(run_dir, *overrides, resume=False):
    cfg = tiny_config(run_dir, *overrides)
    if not resume:
        prepare_run_dir(cfg, run_dir, resume=False)
    return cfg, train(cfg, run_dir, resume=resume)


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_corrupted_latest_checkpoint_falls_back_to_previous_and_ends_identically(tmp_path, capsys):
    reference = tmp_path / "reference"
    run(reference, "run.iterations=4")
    damaged = tmp_path / "damaged"
    run(damaged, "run.iterations=3")
    latest = damaged / "checkpoints" / "latest.pt"
    data = bytearray(latest.read_bytes())
    data[-100] ^= 0xFF  # flip one byte of the payload
    latest.write_bytes(bytes(data))
    with pytest.raises(RunDirError, match="checksum mismatch"):
        load_checkpoint(latest)
    state, warning = load_latest_checkpoint(damaged / "checkpoints")
    assert state["iteration"] == 2 and "previous.pt" in warning

    assert main(["--resume", "--run-dir", str(damaged), "--iterations", "4", "--quiet"]) == 0
    assert "resuming from previous.pt" in capsys.readouterr().err
    final = load_checkpoint(damaged / "checkpoints" / "latest.pt")["policy"]
    expected = load_checkpoint(reference / "checkpoints" / "latest.pt")["policy"]
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    assert [r["iteration"] for r in rows(damaged / "progress.csv")] == ["0", "1", "2", "3"]


def test_truncated_checkpoint_is_detected(tmp_path):
    run(tmp_path, "run.iterations=1")
    latest = tmp_path / "checkpoints" / "latest.pt"
    latest.write_bytes(latest.read_bytes()[:50])
    with pytest.raises(RunDirError, match="checksum mismatch|truncated"):
        load_checkpoint(latest)


def test_a_crash_while_replacing_latest_leaves_the_old_latest_in_place(tmp_path, monkeypatch):
    import experiments.rundir as rundir

    path = tmp_path / "latest.pt"
    rundir.save_checkpoint(path, {"iteration": 1}, keep_previous=True)
    rundir.save_checkpoint(path, {"iteration": 2}, keep_previous=True)
    assert load_checkpoint(path)["iteration"] == 2
    assert load_checkpoint(tmp_path / "previous.pt")["iteration"] == 1

    def killed(*args, **kwargs):  # the process dies before the new file is in place
        raise KeyboardInterrupt

    monkeypatch.setattr(rundir, "atomic_write_bytes", killed)
    with pytest.raises(KeyboardInterrupt):
        rundir.save_checkpoint(path, {"iteration": 3}, keep_previous=True)
    assert load_checkpoint(path)["iteration"] == 2  # never without a latest.pt
    assert load_checkpoint(tmp_path / "previous.pt")["iteration"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt", "previous.pt"]


def test_results_are_written_with_the_umask_s_mode_not_0600(tmp_path):
    from experiments.rundir import atomic_write_text

    import experiments.rundir as rundir

    atomic_write_text(tmp_path / "a.json", "{}")
    (tmp_path / "plain.json").write_text("{}")  # what open() gives under this umask
    mode = (tmp_path / "plain.json").stat().st_mode & 0o777
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == mode == 0o666 & ~rundir._UMASK


def test_a_checkpoint_that_would_run_code_when_loaded_is_refused(tmp_path, capsys):
    import hashlib
    import io

    from experiments.rundir import CHECKPOINT_MAGIC

    class Payload:
        def __reduce__(self):
            return (print, ("this ran while loading",))

    def write(path, state):
        buffer = io.BytesIO()
        torch.save(state, buffer)
        payload = buffer.getvalue()
        path.write_bytes(CHECKPOINT_MAGIC + hashlib.sha256(payload).hexdigest().encode()
                         + b"\n" + payload)

    write(tmp_path / "plain.pt", {"version": 1, "policy": {"w": torch.zeros(2)}})
    assert load_checkpoint(tmp_path / "plain.pt")["policy"]["w"].shape == (2,)
    write(tmp_path / "latest.pt", {"version": 1, "policy": Payload()})
    with pytest.raises(RunDirError, match="unreadable"):
        load_checkpoint(tmp_path / "latest.pt")
    assert "this ran" not in capsys.readouterr().out


def test_config_of_another_format_is_refused_with_the_reason(tmp_path, capsys):
    run(tmp_path, "run.iterations=1")
    doc = json.loads((tmp_path / "config.json").read_text())
    doc["format"] = 999
    (tmp_path / "config.json").write_text(json.dumps(doc))
    code = main(["--resume", "--run-dir", str(tmp_path), "--iterations", "2", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "format 999" in err and "reads format 1" in err


def test_nan_rewards_are_rejected_and_training_continues(tmp_path, monkeypatch, capsys):
    real = meta.adaptation.sample_episodes
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        episodes = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:  # iteration 1, pre-adaptation episodes
            episodes = episodes.map(lambda x: x)
            rewards = episodes.rewards.clone()
            rewards[0, 0, 0] = float("nan")
            import dataclasses

            episodes = dataclasses.replace(episodes, rewards=rewards)
        return episodes

    monkeypatch.setattr(meta.adaptation, "sample_episodes", poisoned)
    cfg = tiny_config(tmp_path, "run.iterations=3", "run.checkpoint_every=1")
    prepare_run_dir(cfg, tmp_path, resume=False)
    params_after = []
    import experiments.train as train_module

    real_save = train_module.save_checkpoint

    def recording_save(path, state, **kwargs):
        if path.name == "latest.pt":
            params_after.append({k: v.clone() for k, v in state["policy"].items()})
        return real_save(path, state, **kwargs)

    monkeypatch.setattr(train_module, "save_checkpoint", recording_save)
    train(cfg, tmp_path)
    assert "outer step rejected (non-finite rewards" in capsys.readouterr().err
    # iteration 1 was rejected: the parameters after it are those after iteration 0
    assert all(torch.equal(params_after[0][k], params_after[1][k]) for k in params_after[0])
    assert not all(torch.equal(params_after[1][k], params_after[2][k]) for k in params_after[0])
    for saved in params_after:
        assert all(torch.isfinite(v).all() for v in saved.values())
    rejected = [float(r["rejected_steps"]) for r in rows(tmp_path / "progress.csv")]
    assert rejected == [0.0, 1.0, 1.0]


def test_exploding_learning_rate_stops_the_run_with_a_clear_message(tmp_path, capsys):
    code = main(["--run-dir", str(tmp_path), "--iterations", "20", *TINY, "outer.algo=adam",
                 "outer.lr=1e30", "run.max_consecutive_failures=2"])
    err = capsys.readouterr().err
    assert code == 1
    assert "2 outer steps in a row were rejected for non-finite values" in err
    assert err.count("Traceback") == 0
    state = load_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    assert all(torch.isfinite(v).all() for v in state["policy"].values())
    assert state["iteration"] < 20


def test_a_resumed_run_stops_on_the_same_streak_of_rejected_steps_as_an_uninterrupted_one(
        tmp_path, capsys):
    exploding = [*TINY, "outer.algo=adam", "outer.lr=1e30", "run.max_consecutive_failures=3"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(["--run-dir", str(whole), "--iterations", "20", *exploding]) == 1
    assert main(["--run-dir", str(split), "--iterations", "2", *exploding]) == 0
    assert load_checkpoint(split / "checkpoints" / "latest.pt")["consecutive_failures"] == 2
    assert main(["--resume", "--run-dir", str(split), "--iterations", "20", "--quiet"]) == 1
    assert capsys.readouterr().err.count("3 outer steps in a row were rejected") == 2
    ends = [load_checkpoint(d / "checkpoints" / "latest.pt")["iteration"] for d in (whole, split)]
    assert ends[0] == ends[1] == 3


def test_memory_stays_flat_over_50_iterations(tmp_path):
    run(tmp_path, "run.iterations=50")
    timing = rows(tmp_path / "timing.csv")
    rss = [float(r["rss_mb"]) for r in timing]
    growth = rss[-1] - rss[9]
    print(f"resident memory: iteration 10 {rss[9]:.1f} MiB, iteration 50 {rss[-1]:.1f} MiB, "
          f"growth {growth:.1f} MiB")
    assert all(math.isfinite(x) and x > 0 for x in rss)
    assert growth < 20.0, rss  # a leak of one batch per iteration would grow far beyond this


def test_a_step_with_non_finite_gradients_is_rejected_and_undone(tmp_path, monkeypatch, capsys):
    import meta.outer

    real_step = meta.outer.TRPO.step

    def partial_then_nan(self, batch):  # like PPO: some epochs applied, then a NaN gradient
        metrics = real_step(self, batch)
        with torch.no_grad():
            next(iter(self.params.values())).add_(1.0)
        return {**metrics, "accepted": 0.0, "non_finite_gradient": 1.0}

    cfg = tiny_config(tmp_path, "run.iterations=2", "run.max_consecutive_failures=5")
    prepare_run_dir(cfg, tmp_path, resume=False)
    from experiments.train import build_policy
    from envs.registry import make

    env = make("navigation-2d")
    initial = build_policy(cfg, env.observation_space, env.action_space).state_dict()
    monkeypatch.setattr(meta.outer.TRPO, "step", partial_then_nan)
    train(cfg, tmp_path)
    assert "outer step rejected (non-finite gradient)" in capsys.readouterr().err
    final = load_checkpoint(tmp_path / "checkpoints" / "latest.pt")
    assert all(torch.equal(final["policy"][k], initial[k]) for k in initial)
    assert [float(r["rejected_steps"]) for r in rows(tmp_path / "progress.csv")] == [1.0, 2.0]


def test_a_csv_row_torn_by_a_crash_is_dropped_on_resume(tmp_path):
    from experiments.rundir import CsvLog

    path = tmp_path / "progress.csv"
    path.write_text("iteration,return_step_0\n0,-1.5\n1,-1.25\n2,-1.\n")  # 2: cut mid-number
    CsvLog(path, start_iteration=2)
    assert path.read_text() == "iteration,return_step_0\n0,-1.5\n1,-1.25\n"
    path.write_text("iteration,return_step_0\n0,-1.5\n1,-1.25\n2")  # cut after the number
    CsvLog(path, start_iteration=2)
    assert path.read_text() == "iteration,return_step_0\n0,-1.5\n1,-1.25\n"
    # iteration 12 torn after its first digit: not mistaken for a row of iteration 1
    path.write_text("iteration,return_step_0\n0,-1.5\n1,-1.25\n1")
    CsvLog(path, start_iteration=12)
    assert path.read_text() == "iteration,return_step_0\n0,-1.5\n1,-1.25\n"
    path.write_text("iteration,return_step_0\n0,-1.5\nx,-1.25\n2,-1.0\n")
    with pytest.raises(RunDirError, match="line 3"):
        CsvLog(path, start_iteration=2)


def test_mujoco_warnings_go_to_stderr_not_stdout_nor_a_log_file(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = """
import mujoco
from experiments.cliutil import route_mujoco_warnings
route_mujoco_warnings("test")
m = mujoco.MjModel.from_xml_string(
    "<mujoco><worldbody><body><freejoint/><geom size='.1'/></body></worldbody></mujoco>")
d = mujoco.MjData(m)
for _ in range(8):  # MuJoCo warns on the first occurrence after a reset
    mujoco.mj_resetData(m, d)
    d.qvel[:] = 1e20
    mujoco.mj_step(m, d)
print("done")
"""
    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": root})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "done\n"  # a command's JSON result stays alone on stdout
    lines = proc.stderr.splitlines()
    assert sum("MuJoCo warning: Nan, Inf or huge value" in line for line in lines) == 5
    assert "further MuJoCo warnings are not shown" in lines[-1]
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
