"""``adaptbed baseline`` end to end with tiny budgets: the artifacts of both subcommands, the
``load_oracle`` / ``pretrained_policy`` round trips, ``--force``, and one-line errors (exit 2)
for bad input.

Pretrained runs are 2 iterations of 2 tasks x 2 episodes with an 8 x 8 policy; oracles are 256
env steps on 2 envs. Torch uses one thread, as the oracle command itself does.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from stable_baselines3 import PPO

from agents.sb3 import oracle_returns, train_oracle
from envs.splits import get_split
from experiments import cli
from experiments import config as cfglib
from experiments import baselines
from experiments.baselines import load_oracle, main, pretrained_policy
from experiments.presets import get_preset
from experiments.rundir import RunDirError, load_checkpoint
from experiments.train import build_policy, prepare_run_dir

ROOT = Path(__file__).resolve().parents[2]
NAV = "navigation-2d"
TINY = ["maml.meta_batch_size=2", "maml.episodes_per_task=2", "policy.hidden_sizes=8,8"]
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}




def pretrained(out: Path, *extra: str) -> int:
    return main(["pretrained", "--preset", NAV, "--iterations", "2", "--out", str(out),
                 "--quiet", *extra, *TINY])


def oracle(out: Path, *extra: str) -> int:
    return main(["oracle", "--preset", NAV, "--timesteps", "256", "--n-envs", "2", "--out",
                 str(out), "--quiet", *extra])


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("baselines") / "pretrained"
    assert pretrained(out, "--seed", "3") == 0
    return out


@pytest.fixture(scope="module")
def oracle_dir(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("baselines") / "oracle"
    assert oracle(out, "--seed", "5") == 0
    return out


# --- pretrained ---------------------------------------------------------------------------------
def test_pretrained_writes_a_run_directory_without_adaptation(pretrained_dir):
    for name in ("config.json", "progress.csv", "checkpoints/latest.pt", "tb"):
        assert (pretrained_dir / name).exists(), name
    doc = json.loads((pretrained_dir / "config.json").read_text())
    cfg = cfglib.from_dict(doc["config"])
    assert cfg.maml.num_inner_steps == 0
    assert cfg.run.seed == 3 and cfg.run.iterations == 2
    assert cfg.policy.hidden_sizes == (8, 8) and cfg.outer.algo == get_preset(NAV).outer.algo
    assert load_checkpoint(pretrained_dir / "checkpoints" / "latest.pt")["iteration"] == 2
    header = (pretrained_dir / "progress.csv").read_text().splitlines()[0]
    assert "return_step_0" in header and "return_step_1" not in header


def test_pretrained_policy_round_trip(pretrained_dir):
    policy, cfg = pretrained_policy(pretrained_dir)
    state = load_checkpoint(pretrained_dir / "checkpoints" / "latest.pt")["policy"]
    assert policy.state_dict().keys() == state.keys()
    assert all(torch.equal(policy.state_dict()[k], state[k]) for k in state)
    assert cfg.maml.num_inner_steps == 0 and cfg.run.run_dir == str(pretrained_dir)
    fresh = build_policy(cfg, *_nav_spaces())  # same architecture as the training loop's
    assert fresh.state_dict().keys() == state.keys()
    mean, log_std = policy(torch.zeros(5, 2))
    assert mean.shape == log_std.shape == (5, 2) and torch.isfinite(mean).all()


def _nav_spaces():
    from envs.registry import make

    env = make(NAV)
    return env.observation_space, env.action_space


def test_pretrained_stdout_is_one_json_line(tmp_path, capsys):
    assert pretrained(tmp_path / "p") == 0
    out = capsys.readouterr()
    doc = json.loads(out.out.strip())
    assert doc["baseline"] == "pretrained" and doc["family"] == "Navigation2D"
    assert math.isfinite(doc["return"]) and out.err == ""  # --quiet: nothing on stderr


def test_pretrained_force_replaces_only_a_pretrained_run(tmp_path, capsys):
    out = tmp_path / "p"
    assert pretrained(out, "--iterations", "1") == 0
    capsys.readouterr()
    assert pretrained(out) == 2
    assert "--force" in capsys.readouterr().err
    assert pretrained(out, "--force") == 0
    assert load_checkpoint(out / "checkpoints" / "latest.pt")["iteration"] == 2
    maml = tmp_path / "maml"
    prepare_run_dir(cfglib.apply_overrides(get_preset(NAV), TINY), maml, resume=False)
    capsys.readouterr()
    assert pretrained(maml, "--force") == 2
    assert "not a pretrained baseline" in capsys.readouterr().err
    assert (maml / "config.json").exists()


def test_pretrained_policy_refuses_other_runs(tmp_path):
    maml = tmp_path / "maml"
    prepare_run_dir(cfglib.apply_overrides(get_preset(NAV), TINY), maml, resume=False)
    with pytest.raises(RunDirError, match="num_inner_steps=1"):
        pretrained_policy(maml)
    with pytest.raises(RunDirError):
        pretrained_policy(tmp_path / "nothing")


# --- oracle -------------------------------------------------------------------------------------
def test_oracle_writes_model_and_metadata(oracle_dir):
    assert (oracle_dir / "oracle.zip").stat().st_size > 0
    meta = json.loads((oracle_dir / "oracle.json").read_text())
    assert meta["family"] == "Navigation2D" and meta["preset"] == NAV
    assert meta["timesteps"] == meta["timesteps_used"] == 256
    assert meta["seed"] == 5 and meta["n_envs"] == 2
    assert meta["hyperparameters"]["n_steps"] == 128
    packages = meta["environment"]["packages"]
    assert packages["stable-baselines3"] and packages["torch"] and packages["gymnasium"]
    assert not [p for p in oracle_dir.iterdir() if p.name.endswith(".tmp")]


def test_load_oracle_round_trip(oracle_dir):
    model, family = load_oracle(oracle_dir)
    assert family == "Navigation2D" and model.observation_space.shape == (4,)
    same = train_oracle(NAV, 256, seed=5, n_envs=2)  # the API with the command's arguments
    loaded, trained = model.policy.state_dict(), same.policy.state_dict()
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)
    tasks = get_split(NAV, "test")[:2]
    returns = oracle_returns(model, family, tasks, 1, seed=0)
    assert returns == oracle_returns(same, family, tasks, 1, seed=0)
    assert all(math.isfinite(r) for r in returns)


def test_load_oracle_errors(tmp_path):
    with pytest.raises(RunDirError):
        load_oracle(tmp_path)
    (tmp_path / "oracle.json").write_text(json.dumps({"family": "Navigation2D"}))
    with pytest.raises(RunDirError, match="no oracle model"):
        load_oracle(tmp_path)
    (tmp_path / "oracle.zip").write_bytes(b"not a zip")
    with pytest.raises(RunDirError, match="unreadable"):
        load_oracle(tmp_path)


def test_oracle_force_overwrites(tmp_path, capsys):
    out = tmp_path / "o"
    assert oracle(out) == 0
    before = (out / "oracle.json").read_text()
    capsys.readouterr()
    assert oracle(out, "--seed", "1") == 2
    assert (out / "oracle.json").read_text() == before
    assert oracle(out, "--seed", "1", "--force") == 0
    assert json.loads((out / "oracle.json").read_text())["seed"] == 1


def interrupt_after_next_update(monkeypatch):
    """Make the oracle command stop (KeyboardInterrupt) right after its next partial save."""
    real = baselines.partial_callback

    def stopping(out, meta, started):
        callback = real(out, meta, started)
        save = callback._on_rollout_start

        def save_then_stop():
            save()
            if callback.model.num_timesteps > callback.first:  # it saved
                raise KeyboardInterrupt

        callback._on_rollout_start = save_then_stop
        return callback

    monkeypatch.setattr(baselines, "partial_callback", stopping)


def test_oracle_resumes_from_its_latest_update(tmp_path, monkeypatch, capsys):
    """A 3-rollout oracle (3 x 2048 steps) replacing a finished one with --force, killed after
    its first update, resumed and killed after its second, resumed to the end."""
    torch.set_num_threads(1)
    out = tmp_path / "o"

    def command(*extra: str) -> int:
        return main(["oracle", "--preset", NAV, "--out", str(out), "--quiet", *extra])

    assert oracle(out) == 0  # a finished oracle, to be replaced
    interrupt_after_next_update(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        command("--force", "--timesteps", "6144", "--n-envs", "1", "--seed", "2")
    assert sorted(p.name for p in out.iterdir()) == ["oracle-partial.json", "oracle-partial.zip"]
    partial = json.loads((out / "oracle-partial.json").read_text())
    assert partial["num_timesteps"] == 2048 and partial["timesteps"] == 6144
    # The partial model is the uninterrupted training after its first update.
    saved = PPO.load(out / "oracle-partial.zip", device="cpu").policy.state_dict()
    first = train_oracle(NAV, 2048, seed=2, n_envs=1).policy.state_dict()
    assert all(torch.equal(saved[k], first[k]) for k in first)

    capsys.readouterr()
    assert command() == 2  # neither --resume nor --force
    assert "--resume" in capsys.readouterr().err
    assert command("--resume", "--force") == 2
    assert "exclude" in capsys.readouterr().err
    assert command("--resume", "--seed", "3") == 2  # another seed than the partial's
    assert "differs" in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt):
        command("--resume")
    assert json.loads((out / "oracle-partial.json").read_text())["num_timesteps"] == 4096
    monkeypatch.undo()
    (out / "oracle.zip").write_bytes(b"stray")  # as if a finishing run died before its JSON
    assert command("--resume") == 0
    meta = json.loads((out / "oracle.json").read_text())
    assert meta["timesteps_used"] == 6144 and meta["resumed_at"] == [2048, 4096]
    assert meta["seed"] == 2 and meta["seconds"] >= partial["seconds"]
    assert sorted(p.name for p in out.iterdir()) == ["oracle.json", "oracle.zip"]
    model, _ = load_oracle(out)
    assert model.num_timesteps == 6144
    after = model.policy.state_dict()
    assert not all(torch.equal(after[k], first[k]) for k in first)  # it trained on
    capsys.readouterr()
    assert command("--resume") == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_oracle_resume_needs_a_partial_oracle(tmp_path, capsys):
    def resume() -> int:
        return main(["oracle", "--preset", NAV, "--out", str(tmp_path), "--resume"])

    assert resume() == 2
    assert "no unfinished oracle" in capsys.readouterr().err
    (tmp_path / "oracle-partial.zip").write_bytes(b"not a zip")
    (tmp_path / "oracle-partial.json").write_text(json.dumps({"preset": NAV}))
    assert resume() == 2
    assert "lacks the oracle's settings" in capsys.readouterr().err
    (tmp_path / "oracle-partial.json").write_text(json.dumps(
        {"preset": NAV, "timesteps": 6144, "seed": 0, "n_envs": 1}))
    assert resume() == 2
    err = capsys.readouterr().err
    assert "unreadable" in err and len(err.strip().splitlines()) == 1


def test_console_script_shows_progress_on_stderr(tmp_path):
    out = tmp_path / "o"
    proc = subprocess.run([sys.executable, "-m", "experiments.cli", "baseline", "oracle",
                           "--preset", NAV, "--timesteps", "128", "--n-envs", "1", "--out",
                           str(out)], cwd=ROOT, env=CHILD_ENV, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "oracle" in proc.stderr and "128" in proc.stderr
    assert json.loads(proc.stdout)["timesteps"] == 128
    assert (out / "oracle.zip").exists() and (out / "oracle.json").exists()


# --- bad input ----------------------------------------------------------------------------------
BAD = {
    "no subcommand": [],
    "unknown subcommand": ["maml"],
    "unknown preset (oracle)": ["oracle", "--preset", "nope", "--timesteps", "256"],
    "unknown preset (pretrained)": ["pretrained", "--preset", "nope"],
    "missing preset": ["oracle", "--timesteps", "256"],
    "zero timesteps": ["oracle", "--preset", NAV, "--timesteps", "0"],
    "negative timesteps": ["oracle", "--preset", NAV, "--timesteps", "-100"],
    "too few timesteps": ["oracle", "--preset", NAV, "--timesteps", "10"],
    "zero envs": ["oracle", "--preset", NAV, "--timesteps", "256", "--n-envs", "0"],
    "fewer timesteps than envs": ["oracle", "--preset", NAV, "--timesteps", "100", "--n-envs",
                                  "128"],
    "non-integer timesteps": ["oracle", "--preset", NAV, "--timesteps", "1e3x"],
    "zero iterations": ["pretrained", "--preset", NAV, "--iterations", "0"],
    "bad override": ["pretrained", "--preset", NAV, "maml.meta_batch_size=0"],
    "unknown override": ["pretrained", "--preset", NAV, "maml.nope=1"],
    "adaptation steps": ["pretrained", "--preset", NAV, "maml.num_inner_steps=2"],
    "unknown flag": ["oracle", "--preset", NAV, "--bogus"],
}


@pytest.mark.parametrize("args", BAD.values(), ids=BAD.keys())
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args):
    out = ["--out", str(tmp_path / "out")] if len(args) > 1 and args[0] in ("oracle",
                                                                            "pretrained") else []
    assert main([*args, *out]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in captured.err
    assert not (tmp_path / "out").exists()


def test_bad_input_through_the_adaptbed_command(capsys):
    assert cli.main(["baseline", "oracle", "--preset", "nope"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    assert main(["oracle", "--help"]) == 0
    assert "--timesteps" in capsys.readouterr().out
