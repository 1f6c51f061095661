"""Every user-facing command rejects bad input up front: exit code 2, one line on stderr, no
traceback, nothing written. One row per case (the per-command suites test more cases)."""

import pytest

from experiments.cli import main
from experiments.presets import get_preset
from experiments import config as cfglib
from experiments.train import prepare_run_dir, train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("bad-input") / "run"
    cfg = cfglib.apply_overrides(get_preset("navigation-2d"), [
        "maml.meta_batch_size=2", "maml.episodes_per_task=2", "policy.hidden_sizes=8,8",
        "run.iterations=1", "run.quiet=true", f"run.run_dir={path}"])
    prepare_run_dir(cfg, path, resume=False)
    train(cfg, path)
    return path


CASES = {
    "unknown command": ["fly"],
    "envs: unknown flag": ["envs", "--yaml"],
    "train: unknown preset": ["train", "--preset", "rocket"],
    "train: unknown override key": ["train", "maml.fast_learning_rate=0.1"],
    "train: malformed override": ["train", "maml.fast_lr"],
    "train: zero meta-batch": ["train", "maml.meta_batch_size=0"],
    "train: negative learning rate": ["train", "maml.fast_lr=-0.1"],
    "train: unknown family": ["train", "env.family=Rocket"],
    "train: zero outer learning rate": ["train", "outer.lr=0"],
    "train: run directory that cannot be written": ["train", "--run-dir", "/proc/adaptbed/run"],
    "train: existing run without --resume": ["train", "--run-dir", "{run}"],
    "train: --resume of an empty dir": ["train", "--resume", "--run-dir", "{empty}"],
    "quickstart: zero iterations": ["quickstart", "--iterations", "0"],
    "sinusoid: zero iterations": ["sinusoid", "--iterations", "0"],
    "evaluate: unknown split": ["evaluate", "{run}", "--split", "validation"],
    "evaluate: not a run directory": ["evaluate", "{empty}"],
    "evaluate: zero inner steps": ["evaluate", "{run}", "--inner-steps", "0"],
    "evaluate: unknown baseline": ["evaluate", "{run}", "--baselines", "expert"],
    "adapt: malformed task JSON": ["adapt", "{run}", "--task", "{goal: 1", "--save", "{out}"],
    "adapt: task of another family": ["adapt", "{run}", "--task", '{"velocity": 1.0}',
                                      "--save", "{out}"],
    "baseline: unknown preset": ["baseline", "oracle", "--preset", "rocket"],
    "baseline: zero timesteps": ["baseline", "oracle", "--preset", "navigation-2d",
                                 "--timesteps", "0"],
    "bench: unknown family": ["bench", "--family", "Rocket"],
    "plot: run without evaluation": ["plot", "{run}"],
    "train: negative seed": ["train", "--seed", "-1"],
    "train: preset as an override": ["train", "preset=halfcheetah-vel"],
    "train: negative seed override": ["train", "run.seed=-1"],
    "evaluate: negative seed": ["evaluate", "{run}", "--seeds", "0", "-1"],
    "adapt: seed above 2**32 - 1": ["adapt", "{run}", "--task", '{"goal": [0.1, 0.2]}',
                                    "--seed", str(2**32), "--save", "{out}"],
    "train: seed override above 2**32 - 1": ["train", f"run.seed={2**32}"],
    "rollout: negative seed": ["rollout", "{run}", "--seed", "-3"],
    "study: negative evaluation seed": ["study", "--eval-seed", "-1"],
    "baseline: negative seed": ["baseline", "oracle", "--preset", "navigation-2d",
                                "--seed", "-1"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2(case, run_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    places = {"{run}": str(run_dir), "{empty}": str(empty), "{out}": str(tmp_path / "out")}
    args = [places.get(a, a) for a in CASES[case]]
    before = sorted(p.name for p in run_dir.rglob("*"))
    code = main(args)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 2, (case, captured.err)
    assert len(lines) == 1 and "error" in lines[0], (case, captured.err)
    assert "Traceback" not in captured.err
    assert sorted(p.name for p in run_dir.rglob("*")) == before  # nothing written
    assert not (tmp_path / "out").exists()


def test_cuda_without_gpu_is_refused(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["train", "--device", "cuda", "--iterations", "1"]) == 2
    assert "no CUDA GPU is available" in capsys.readouterr().err
