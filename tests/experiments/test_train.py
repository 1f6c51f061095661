"""``adaptbed train`` end to end: the run directory it writes, its TensorBoard scalars, resume
after a crash or a signal, reproducibility, overrides and the errors of bad input.

Every run is tiny (2 tasks x 2 episodes, an 8 x 8 policy, a few iterations). Subprocesses and
the in-process runs use one torch thread: on a loaded 2-core machine the default thread pool
makes the TRPO update up to 100x slower, and one thread keeps runs comparable with each other.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from envs import native as envs_native
from experiments import config as cfglib
from experiments.presets import get_preset
from experiments.rundir import load_checkpoint
from experiments.train import (build, build_policy, main, parser, prepare_run_dir, resolve,
                               sampler_envs, simulator_envs)
from meta.sampler import MAX_WAVE_ENVS

ROOT = Path(__file__).resolve().parents[2]
TINY = ["maml.meta_batch_size=2", "maml.episodes_per_task=2", "policy.hidden_sizes=8,8"]
N_REF = 4  # iterations of the reference run
CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
REQUIRED_TAGS = (
    "adaptation/return_step_0", "adaptation/return_step_1", "adaptation/gain",
    "losses/outer_loss_before", "losses/outer_loss_after", "losses/kl",
    "losses/line_search_steps", "charts/env_steps", "charts/env_steps_per_second",
    "time/sampling_s", "time/adapting_s", "time/updating_s",
)
HPARAMS_TAG = "hyperparameters/text_summary"


# --- helpers -------------------------------------------------------------------------------------


def train_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m experiments.train ARGS`` from the repository root."""
    return subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=ROOT,
                          env=CHILD_ENV, capture_output=True, text=True, timeout=timeout)


def train_popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "experiments.train", *args], cwd=ROOT,
                            env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def run_main(*args: str) -> int:
    """In-process ``main``; a tiny run unless the arguments say otherwise."""
    return main(["--quiet", *args])


def tiny_run(run_dir: Path, iterations: int, *extra: str) -> None:
    assert run_main("--run-dir", str(run_dir), "--iterations", str(iterations), *TINY,
                    *extra) == 0


def resume(run_dir: Path, iterations: int) -> None:
    next_second(run_dir)
    assert run_main("--resume", "--run-dir", str(run_dir), "--iterations", str(iterations)) == 0


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def iterations_of(path: Path) -> list[int]:
    return [int(row["iteration"]) for row in read_csv(path)[1]]


def complete_rows(path: Path) -> int:
    """Data rows of a CSV file that another process may be appending to."""
    try:
        return max(path.read_text().count("\n") - 1, 0)
    except FileNotFoundError:
        return 0


def wait_for_rows(proc: subprocess.Popen, path: Path, rows: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while complete_rows(path) < rows:
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the run exited ({proc.returncode}) before writing {rows} rows:\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail(f"no {rows} rows in {path} after {timeout} s")
        time.sleep(0.02)


def next_second(run_dir: Path) -> None:
    """Wait until the wall-clock second differs from that of every event file in ``run_dir``.

    TensorBoard reads the event files of a folder in name order, and a name starts with its
    creation time in whole seconds: a resumed run whose event file is created within the same
    second as the interrupted one's is ordered by process id, then by a per-process counter
    compared as text (".10" before ".9"), which can put it first and break the purge of the
    orphaned steps. Only a resume within a second of the interrupted run's start hits this.
    """
    created = max(int(p.name.split(".")[3]) for p in (run_dir / "tb").glob("events.out.*"))
    while time.time() < created + 1:
        time.sleep(0.05)


def scalars(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    return acc.Reload()


def assert_same_checkpoint(a: dict, b: dict) -> None:
    assert a["iteration"] == b["iteration"]
    assert a["env_steps"] == b["env_steps"]
    assert a["best_return"] == b["best_return"]
    assert a["policy"].keys() == b["policy"].keys()
    for key in a["policy"]:
        assert torch.equal(a["policy"][key], b["policy"][key]), key
    assert repr(a["outer"]) == repr(b["outer"])


def assert_one_row_per_iteration(run_dir: Path, n: int) -> None:
    assert iterations_of(run_dir / "progress.csv") == list(range(n))
    assert iterations_of(run_dir / "timing.csv") == list(range(n))
    acc = scalars(run_dir)
    for tag in acc.Tags()["scalars"]:
        assert [e.step for e in acc.Scalars(tag)] == list(range(n)), tag
    assert len(acc.Tensors(HPARAMS_TAG)) == 1


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One uninterrupted end-to-end run of the CLI, shared by the read-only checks."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    proc = train_cli("--preset", "navigation-2d", "--iterations", str(N_REF), "--run-dir",
                     str(run_dir), "--quiet", *TINY)
    assert proc.returncode == 0, proc.stderr
    return run_dir, proc


# --- 1. the run directory ------------------------------------------------------------------------
def test_run_writes_every_artifact(reference):
    run_dir, proc = reference
    assert "Traceback" not in proc.stderr

    doc = json.loads((run_dir / "config.json").read_text())
    assert {"config", "environment"} <= doc.keys()
    cfg = cfglib.from_dict(doc["config"])  # round-trips
    assert cfg.preset == "navigation-2d" and cfg.env.family == "navigation-2d"
    assert cfg.maml.meta_batch_size == 2 and cfg.maml.episodes_per_task == 2
    assert cfg.policy.hidden_sizes == (8, 8) and cfg.run.iterations == N_REF
    assert cfg.run.quiet and Path(cfg.run.run_dir) == run_dir
    env = doc["environment"]
    assert "git_commit" in env
    for package in ("torch", "numpy", "gymnasium", "mujoco", "tensorboard"):
        assert env["packages"][package], package
    assert env["packages"]["torch"] == torch.__version__

    header, rows = read_csv(run_dir / "progress.csv")
    assert [int(r["iteration"]) for r in rows] == list(range(N_REF))
    for key in ("return_step_0", "return_step_1", "adaptation_gain", "loss_before",
                "loss_after", "kl", "ls_steps", "env_steps_total"):
        assert key in header, key
    assert not any(k.startswith("seconds_") or k == "env_steps_per_second" for k in header)
    steps = [int(r["env_steps_total"]) for r in rows]
    assert all(0 < b - a <= 2 * 2 * 2 * 100 for a, b in zip([0, *steps], steps))
    t_header, t_rows = read_csv(run_dir / "timing.csv")
    assert [int(r["iteration"]) for r in t_rows] == list(range(N_REF))
    assert {"seconds_sampling", "seconds_adapting", "seconds_updating", "seconds_iteration",
            "env_steps_per_second"} <= set(t_header)
    assert all(math.isfinite(float(v)) and float(v) >= 0 for r in t_rows for v in r.values())

    assert list((run_dir / "tb").glob("events.out.tfevents.*"))

    # stdout: one JSON line with the last iteration's returns
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(summary["run_dir"]) == run_dir
    assert summary["return_before"] == float(rows[-1]["return_step_0"])
    assert summary["return_after"] == float(rows[-1]["return_step_1"])

    latest = load_checkpoint(run_dir / "checkpoints" / "latest.pt")
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    for state in (latest, best):
        assert {"policy", "outer", "iteration", "env_steps", "best_return"} <= state.keys()
    post = [float(r["return_step_1"]) for r in rows]
    assert latest["iteration"] == N_REF and latest["env_steps"] == steps[-1]
    assert latest["best_return"] == max(post)
    best_at = post.index(max(post))
    assert best["iteration"] == best_at and best["env_steps"] == steps[best_at]
    assert best["best_return"] == max(post)
    policy = build_policy(cfg, *_navigation_spaces())
    policy.load_state_dict(latest["policy"])  # the checkpoint fits the configured policy


def test_best_checkpoint_holds_the_parameters_that_earned_the_best_return(tmp_path):
    """The return after adaptation of iteration i is sampled with the parameters before
    iteration i's outer step: best.pt must hold those, not the stepped ones."""
    run_dir = tmp_path / "run"
    tiny_run(run_dir, 4, "run.keep_every=1")
    _, rows = read_csv(run_dir / "progress.csv")
    post = [float(r["return_step_1"]) for r in rows]
    best_at = post.index(max(post))
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best["iteration"] == best_at and best["best_return"] == max(post)
    if best_at == 0:  # the initial policy, rebuilt from the seed
        cfg = cfglib.from_dict(json.loads((run_dir / "config.json").read_text())["config"])
        before = build_policy(cfg, *_navigation_spaces()).state_dict()
    else:
        before = load_checkpoint(run_dir / "checkpoints" / f"iteration-{best_at}.pt")["policy"]
    after = load_checkpoint(run_dir / "checkpoints" / f"iteration-{best_at + 1}.pt")["policy"]
    assert all(torch.equal(best["policy"][k], before[k]) for k in before)
    assert not all(torch.equal(best["policy"][k], after[k]) for k in after)


def test_resume_keeps_the_original_environment_and_refuses_fewer_iterations(tmp_path, capsys):
    run_dir = tmp_path / "run"
    tiny_run(run_dir, 2)
    started = json.loads((run_dir / "config.json").read_text())
    doc = dict(started, environment={**started["environment"], "git_commit": "original"})
    (run_dir / "config.json").write_text(json.dumps(doc))
    capsys.readouterr()
    assert run_main("--resume", "--run-dir", str(run_dir), "--iterations", "1") == 2
    assert "already trained 2 iterations" in capsys.readouterr().err
    # as many as done: nothing to train, the last result printed again
    assert main(["--resume", "--run-dir", str(run_dir)]) == 0
    out, err = capsys.readouterr()
    assert "already completed its 2 iterations" in err
    assert json.loads(out)["return_after"] == float(rows_of(run_dir)[-1]["return_step_1"])
    resume(run_dir, 3)
    doc = json.loads((run_dir / "config.json").read_text())
    assert doc["environment"]["git_commit"] == "original"  # where the run started
    assert [r["iteration"] for r in doc["resumes"]] == [2]  # the resume that trained
    assert doc["resumes"][-1]["environment"] == started["environment"]
    assert doc["config"]["run"]["iterations"] == 3
    assert main(["--resume", "--run-dir", str(run_dir), "--iterations", "4"]) == 0
    doc = json.loads((run_dir / "config.json").read_text())
    assert doc["config"]["run"]["quiet"] is False  # --quiet (given before) held once only


def rows_of(run_dir: Path) -> list[dict[str, str]]:
    return read_csv(run_dir / "progress.csv")[1]


def _navigation_spaces():
    from envs.registry import make

    env = make("navigation-2d")
    return env.observation_space, env.action_space


# --- 2. TensorBoard ------------------------------------------------------------------------------
def test_tensorboard_scalars(reference):
    run_dir, _ = reference
    acc = scalars(run_dir)
    tags = acc.Tags()
    for tag in REQUIRED_TAGS:
        assert tag in tags["scalars"], tag
        events = acc.Scalars(tag)
        assert [e.step for e in events] == list(range(N_REF)), tag
        assert all(math.isfinite(e.value) for e in events), tag
    # the scalars mirror progress.csv
    _, rows = read_csv(run_dir / "progress.csv")
    for tag, key in (("adaptation/gain", "adaptation_gain"), ("losses/kl", "kl"),
                     ("charts/env_steps", "env_steps_total"),
                     ("adaptation/return_step_1", "return_step_1")):
        assert [e.value for e in acc.Scalars(tag)] == pytest.approx(
            [float(r[key]) for r in rows], rel=1e-6, abs=1e-9), tag
    # the hyperparameters table, once
    assert tags["tensors"] == [HPARAMS_TAG]
    (text,) = acc.Tensors(HPARAMS_TAG)
    assert text.step == 0
    table = text.tensor_proto.string_val[0].decode()
    assert "| maml.meta_batch_size | 2 |" in table and "| outer.algo | trpo |" in table


# --- 3. resume -----------------------------------------------------------------------------------
@pytest.mark.parametrize("algo", ["trpo", "adam", "ppo"])
def test_resume_equals_uninterrupted(reference, tmp_path, algo):
    extra = [f"outer.algo={algo}"]
    if algo == "ppo":  # ProMP: the clipped outer loop with the LVC inner loss
        extra.append("maml.inner_objective=lvc")
    if algo == "trpo":
        whole = reference[0]
    else:
        whole = tmp_path / "whole"
        tiny_run(whole, N_REF, *extra)
    split = tmp_path / "split"
    tiny_run(split, 2, *extra)
    assert load_checkpoint(split / "checkpoints" / "latest.pt")["iteration"] == 2
    resume(split, N_REF)

    assert_same_checkpoint(load_checkpoint(split / "checkpoints" / "latest.pt"),
                           load_checkpoint(whole / "checkpoints" / "latest.pt"))
    assert (split / "progress.csv").read_bytes() == (whole / "progress.csv").read_bytes()
    assert_one_row_per_iteration(split, N_REF)
    saved = json.loads((split / "config.json").read_text())["config"]
    assert saved["run"]["iterations"] == N_REF and saved["outer"]["algo"] == algo
    assert saved["maml"]["inner_objective"] == ("lvc" if algo == "ppo" else "reinforce")


def test_a_snapshot_copied_elsewhere_resumes_as_if_uninterrupted(reference, tmp_path):
    """A run's config, logs, TensorBoard events and latest checkpoint, copied to another folder
    (e.g. committed to carry a long run to another machine), are enough to continue it:
    best.pt and previous.pt may be left behind."""
    started = tmp_path / "started"
    tiny_run(started, 2)
    snapshot = tmp_path / "elsewhere" / "snapshot"
    (snapshot / "checkpoints").mkdir(parents=True)
    for name in ("config.json", "progress.csv", "timing.csv"):
        shutil.copy(started / name, snapshot / name)
    shutil.copy(started / "checkpoints" / "latest.pt", snapshot / "checkpoints" / "latest.pt")
    shutil.copytree(started / "tb", snapshot / "tb")
    shutil.rmtree(started)  # nothing may still point at the original folder
    resume(snapshot, N_REF)

    whole = reference[0]
    assert_same_checkpoint(load_checkpoint(snapshot / "checkpoints" / "latest.pt"),
                           load_checkpoint(whole / "checkpoints" / "latest.pt"))
    assert (snapshot / "progress.csv").read_bytes() == (whole / "progress.csv").read_bytes()
    assert_one_row_per_iteration(snapshot, N_REF)


def test_resume_drops_what_was_logged_after_the_checkpoint(reference, tmp_path):
    run_dir = tmp_path / "run"
    tiny_run(run_dir, 2)
    latest = run_dir / "checkpoints" / "latest.pt"
    saved = latest.read_bytes()
    resume(run_dir, 3)
    latest.write_bytes(saved)  # iteration 2 was logged, then the run died before its checkpoint
    assert iterations_of(run_dir / "progress.csv") == [0, 1, 2]
    resume(run_dir, N_REF)

    whole = reference[0]
    for name in ("latest.pt", "best.pt"):
        assert_same_checkpoint(load_checkpoint(run_dir / "checkpoints" / name),
                               load_checkpoint(whole / "checkpoints" / name))
    assert (run_dir / "progress.csv").read_bytes() == (whole / "progress.csv").read_bytes()
    assert_one_row_per_iteration(run_dir, N_REF)


def test_resume_after_sigkill(tmp_path):
    killed = tmp_path / "killed"
    proc = train_popen("--iterations", "500", "--run-dir", str(killed), "--quiet", *TINY,
                       "run.checkpoint_every=1")
    wait_for_rows(proc, killed / "progress.csv", 2)
    proc.kill()
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    rows = complete_rows(killed / "progress.csv")
    done = load_checkpoint(killed / "checkpoints" / "latest.pt")["iteration"]
    assert 1 <= done <= rows <= done + 1  # a row may precede its checkpoint
    total = done + 2
    resume(killed, total)

    whole = tmp_path / "whole"
    tiny_run(whole, total)
    assert_same_checkpoint(load_checkpoint(killed / "checkpoints" / "latest.pt"),
                           load_checkpoint(whole / "checkpoints" / "latest.pt"))
    assert (killed / "progress.csv").read_bytes() == (whole / "progress.csv").read_bytes()
    assert_one_row_per_iteration(killed, total)


# --- 4. signals ----------------------------------------------------------------------------------
def test_a_second_signal_stops_at_once_with_one_line_and_the_signal_s_exit_code(tmp_path):
    run_dir = tmp_path / "run"
    # twice the default navigation meta-batch: iterations long enough for two signals in one
    proc = train_popen("--iterations", "500", "--run-dir", str(run_dir), "--quiet",
                       "run.checkpoint_every=1", "maml.episodes_per_task=40")
    wait_for_rows(proc, run_dir / "progress.csv", 1)
    time.sleep(1.0)  # into the second iteration (several seconds long)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # two signals closer than the interpreter's handler runs count as one
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the run ignored two SIGTERMs")
    assert proc.returncode == 143, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "stopped at once by a second SIGTERM" in err and "--resume" in err
    assert load_checkpoint(run_dir / "checkpoints" / "latest.pt")["iteration"] >= 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_after_a_checkpointed_iteration(tmp_path, sig):
    run_dir = tmp_path / "run"
    # checkpoint_every=1000: the checkpoint of the last iteration comes from the signal alone
    proc = train_popen("--iterations", "500", "--run-dir", str(run_dir), "--quiet", *TINY,
                       "run.checkpoint_every=1000")
    wait_for_rows(proc, run_dir / "progress.csv", 1)
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"the run ignored {sig.name}")
    assert proc.returncode == 128 + int(sig), err  # 130 for SIGINT, 143 for SIGTERM
    assert time.monotonic() - sent < 10
    assert "Traceback" not in err
    assert f"stopped by {sig.name}" in err and "--resume" in err

    done = load_checkpoint(run_dir / "checkpoints" / "latest.pt")["iteration"]
    assert 1 <= done < 500
    assert iterations_of(run_dir / "progress.csv") == list(range(done))
    assert iterations_of(run_dir / "timing.csv") == list(range(done))

    resume(run_dir, done + 2)
    assert load_checkpoint(run_dir / "checkpoints" / "latest.pt")["iteration"] == done + 2
    assert_one_row_per_iteration(run_dir, done + 2)


# --- 5. seeds ------------------------------------------------------------------------------------
def test_same_seed_same_progress_other_seed_differs(reference, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    tiny_run(again, N_REF, "--seed", "0")
    tiny_run(other, N_REF, "--seed", "1")
    ref = (reference[0] / "progress.csv").read_bytes()
    assert (again / "progress.csv").read_bytes() == ref
    assert (other / "progress.csv").read_bytes() != ref
    assert iterations_of(other / "progress.csv") == list(range(N_REF))


# --- 6. overrides --------------------------------------------------------------------------------
@pytest.mark.parametrize("override, section, key, value", [
    ("outer.algo=ppo", "outer", "algo", "ppo"),
    ("outer.algo=adam", "outer", "algo", "adam"),
    ("maml.first_order=true", "maml", "first_order", True),
    ("maml.num_inner_steps=2", "maml", "num_inner_steps", 2),
])
def test_override_reaches_the_run(reference, tmp_path, override, section, key, value):
    run_dir = tmp_path / "run"
    tiny_run(run_dir, 2, override)
    assert json.loads((run_dir / "config.json").read_text())["config"][section][key] == value
    header, rows = read_csv(run_dir / "progress.csv")
    assert [int(r["iteration"]) for r in rows] == [0, 1]
    _, ref_rows = read_csv(reference[0] / "progress.csv")
    # same initial policy and tasks: the same return before adaptation at iteration 0
    assert rows[0]["return_step_0"] == ref_rows[0]["return_step_0"]
    tags = scalars(run_dir).Tags()["scalars"]
    if key == "algo":  # no TRPO line search
        assert "ls_steps" not in header and "losses/line_search_steps" not in tags
        assert rows[0]["loss_after"] != ref_rows[0]["loss_after"]
    elif key == "first_order":  # another meta-gradient
        assert rows[0]["grad_norm"] != ref_rows[0]["grad_norm"]
    else:
        assert "return_step_2" in header and "adaptation/return_step_2" in tags
        assert "adaptation/return_step_3" not in tags
        for r in rows:
            assert float(r["adaptation_gain"]) == pytest.approx(
                float(r["return_step_2"]) - float(r["return_step_0"]))
            assert int(r["env_steps_total"]) > 0


# --- 7. bad input --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def started_run(tmp_path_factory) -> Path:
    """A run's config.json and no checkpoint, as a run killed in its first iteration leaves."""
    run_dir = tmp_path_factory.mktemp("started") / "run"
    cfg, run_dir = resolve(parser().parse_args(
        ["--run-dir", str(run_dir), "--iterations", "3", "--quiet", *TINY]))
    prepare_run_dir(cfg, run_dir, resume=False)
    return run_dir


@pytest.fixture
def dirs(tmp_path, started_run) -> dict[str, Path]:
    """``fresh``: not there yet; ``empty``: an empty folder; ``started``: a copy of
    :func:`started_run`; ``corrupt``: the same with a truncated latest.pt."""
    out = {"fresh": tmp_path / "fresh", "empty": tmp_path / "empty",
           "started": tmp_path / "started", "corrupt": tmp_path / "corrupt"}
    out["empty"].mkdir()
    shutil.copytree(started_run, out["started"])
    shutil.copytree(started_run, out["corrupt"])
    (out["corrupt"] / "checkpoints" / "latest.pt").write_bytes(b"PK\x03\x04 truncated")
    return out


BAD_INPUT = {  # id -> (arguments, a piece of the message)
    "unknown preset": (["--preset", "no-such-preset", "--run-dir", "{fresh}"], "unknown preset"),
    "unknown key": (["--run-dir", "{fresh}", "maml.no_such_key=1"], "unknown config key"),
    "unknown section": (["--run-dir", "{fresh}", "nope.fast_lr=1"], "unknown config key"),
    "no equals sign": (["--run-dir", "{fresh}", "maml.fast_lr"], "malformed override"),
    "bad value": (["--run-dir", "{fresh}", "maml.meta_batch_size=two"], "meta_batch_size"),
    "zero meta_batch_size": (["--run-dir", "{fresh}", "maml.meta_batch_size=0"],
                             "maml.meta_batch_size must be a positive"),
    "negative fast_lr": (["--run-dir", "{fresh}", "maml.fast_lr=-0.1"],
                         "maml.fast_lr must be positive"),
    "zero iterations": (["--run-dir", "{fresh}", "--iterations", "0"], "run.iterations"),
    "existing run dir": (["--run-dir", "{corrupt}"], "already holds a run; continue it with"),
    "existing run dir without a checkpoint": (["--run-dir", "{started}"],
                                              "stopped before its first checkpoint"),
    "resume empty dir": (["--resume", "--run-dir", "{empty}"], "no run to resume"),
    "resume missing dir": (["--resume", "--run-dir", "{fresh}"], "no run to resume"),
    "resume without run dir": (["--resume"], "--resume needs --run-dir"),
    "resume with override": (["--resume", "--run-dir", "{started}", "maml.fast_lr=0.05"],
                             "keeps its config"),
    "resume with seed": (["--resume", "--run-dir", "{started}", "--seed", "3"],
                         "keeps its config"),
    "resume with preset": (["--resume", "--run-dir", "{started}", "--preset", "ant-vel"],
                           "keeps its config"),
    "resume before first checkpoint": (["--resume", "--run-dir", "{started}"],
                                       "no checkpoint to resume from"),
    "resume corrupt checkpoint": (["--resume", "--run-dir", "{corrupt}"], "checkpoint"),
    "cuda without gpu": (["--run-dir", "{fresh}", "--device", "cuda"], "CUDA"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2_with_one_line(dirs, capsys, case):
    args, message = BAD_INPUT[case]
    if case == "cuda without gpu" and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    args = [a.format(**dirs) for a in args]
    before = {p: p.read_bytes() for p in dirs["started"].rglob("*") if p.is_file()}

    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("adaptbed train: error: ") and message in lines[0], lines[0]
    assert not dirs["fresh"].exists()  # nothing half-made
    assert {p: p.read_bytes() for p in dirs["started"].rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("args", [["--preset", "no-such-preset"],
                                  ["--resume", "--run-dir", "{started}"]],
                         ids=["unknown preset", "resume before first checkpoint"])
def test_bad_input_from_the_command_line(dirs, args):
    proc = subprocess.run([sys.executable, "-m", "experiments.cli", "train",
                           *[a.format(**dirs) for a in args]],
                          cwd=ROOT, env=CHILD_ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("adaptbed train: error: ")


def test_the_simulator_holds_one_wave_of_a_mujoco_meta_batch():
    cheetah = get_preset("halfcheetah-vel")  # 40 tasks x 20 episodes
    assert cheetah.run.max_wave_envs == MAX_WAVE_ENVS
    parts = build(cheetah)
    try:
        assert parts.venv.num_envs == sampler_envs(cheetah) == 400  # 2 waves under 512
    finally:
        parts.venv.close()
    assert sampler_envs(cfglib.apply_overrides(cheetah, ["run.max_wave_envs=0"])) == 800
    assert sampler_envs(cfglib.apply_overrides(cheetah, ["run.max_wave_envs=100"])) == 100
    # all at once: Navigation2D, on the torch simulator, and the policy on CUDA
    nav = cfglib.apply_overrides(cfglib.Config(), ["run.max_wave_envs=64"])
    assert sampler_envs(nav) == nav.maml.meta_batch_size * nav.maml.episodes_per_task
    assert simulator_envs("HalfCheetahVel", 40, 20, 512, "cuda") == 800


@pytest.mark.skipif(envs_native.library() is None,
                    reason=f"native loop unavailable: {envs_native.unavailable_reason()}")
def test_a_run_with_the_native_sampler_resumes_as_if_uninterrupted(tmp_path, monkeypatch):
    """``run.sampler=native`` on halfcheetah-vel (4 tasks x 4 episodes) reaches the sampler,
    is saved with the run, and samples deterministically: a resumed run repeats the
    uninterrupted one's progress bit for bit."""
    import meta.adaptation

    used = []
    real = meta.adaptation.sample_episodes

    def spy(*args, **kwargs):
        used.append(kwargs["sampler"])
        return real(*args, **kwargs)

    monkeypatch.setattr(meta.adaptation, "sample_episodes", spy)
    extra = ["--preset", "halfcheetah-vel", "maml.meta_batch_size=4",
             "maml.episodes_per_task=4", "policy.hidden_sizes=16,16", "run.sampler=native"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert run_main("--run-dir", str(whole), "--iterations", "3", *extra) == 0
    assert used == ["native"] * 6  # 3 iterations, before and after adaptation
    assert run_main("--run-dir", str(split), "--iterations", "2", *extra) == 0
    resume(split, 3)
    assert (split / "progress.csv").read_bytes() == (whole / "progress.csv").read_bytes()
    assert json.loads((whole / "config.json").read_text())["config"]["run"]["sampler"] == "native"
    assert used[-2:] == ["native"] * 2  # the resumed run kept the saved setting


def test_the_native_sampler_without_the_native_loop_is_refused_with_the_reason(monkeypatch):
    cfg = cfglib.apply_overrides(get_preset("halfcheetah-vel"),
                                 ["maml.meta_batch_size=2", "run.sampler=native"])
    monkeypatch.setenv("ADAPTBED_NATIVE", "0")
    envs_native.library.cache_clear()
    try:
        with pytest.raises(cfglib.ConfigError, match="native stepping loop.*ADAPTBED_NATIVE=0"):
            build(cfg)
    finally:
        monkeypatch.undo()
        envs_native.library.cache_clear()
