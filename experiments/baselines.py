"""``adaptbed baseline``: train a family's ``pretrained`` or ``oracle`` baseline once, to reuse.

* ``adaptbed baseline pretrained --preset NAME [--iterations N] [--seed S] [--out DIR]
  [KEY=VALUE ...]``: the multi-task policy, trained by the same loop and outer algorithm as
  MAML (:func:`experiments.train.train`) with ``maml.num_inner_steps=0``, i.e. no adaptation in
  its objective. ``DIR`` (default ``runs/baselines/<preset>/pretrained``) is a normal run
  directory: ``config.json``, ``progress.csv``, ``tb/``, ``checkpoints/latest.pt``, ...
* ``adaptbed baseline oracle --preset NAME [--timesteps N] [--seed S] [--out DIR]``: SB3 PPO
  on the train task distribution with the task in the observation (:mod:`agents.sb3`), saved
  as ``DIR/oracle.zip`` plus ``DIR/oracle.json`` (default ``runs/baselines/<preset>/oracle``).

The evaluate command loads them with :func:`pretrained_policy` and :func:`load_oracle`.
Bad input (unknown preset, non-positive sizes, an existing output without ``--force``) is a
one-line error on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from agents.policies import make_policy
from envs.registry import family, make
from experiments import config as cfglib
from experiments.presets import get_preset
from experiments.rundir import (RunDirError, atomic_write_bytes, atomic_write_text,
                                environment_info, load_checkpoint, read_json)

PROG = "adaptbed baseline"
ORACLE_ZIP = "oracle.zip"
ORACLE_JSON = "oracle.json"
# Default oracle budgets (env steps). Navigation2D: 200k steps reach a mean return of -0.56 on
# the 40 test tasks (100k: -0.83; heading straight for the goal: -0.49; standing still: -37.2),
# in 2.5 min on the 2-core CI machine. MuJoCo families: 1M steps, the RL Baselines3 Zoo budget
# for PPO on MuJoCo locomotion (not measured here).
ORACLE_TIMESTEPS = {"navigation-2d": 200_000}
DEFAULT_ORACLE_TIMESTEPS = 1_000_000
# The oracle trains on one torch thread: SB3's 2 x 64 MLP on minibatches of 64 is dominated by
# thread-pool overhead (measured on the 2-core CI machine: 3.4 s against 7.7 s per 2048-step
# rollout and update with 1 and 2 threads).
ORACLE_TORCH_THREADS = 1


class UsageError(ValueError):
    """A bad command line (one-line message)."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


# --- loading, for the evaluate command ----------------------------------------------------------
def load_oracle(directory: str | Path) -> tuple[Any, str]:
    """The oracle saved by ``adaptbed baseline oracle`` in ``directory``.

    Returns:
        ``(model, family)``: the SB3 ``PPO`` model (CPU) and the family name (``Navigation2D``);
        evaluate it with :func:`agents.sb3.oracle_returns`.

    Raises:
        RunDirError: missing or unreadable ``oracle.json`` / ``oracle.zip``.
    """
    from stable_baselines3 import PPO

    directory = Path(directory)
    meta = read_json(directory / ORACLE_JSON)
    if not (directory / ORACLE_ZIP).exists():
        raise RunDirError(f"no oracle model at {directory / ORACLE_ZIP}")
    try:
        name = family(str(meta["family"])).name
        model = PPO.load(directory / ORACLE_ZIP, device="cpu")
    except Exception as err:  # unknown family, truncated zip, ...
        raise RunDirError(f"oracle in {directory} is unreadable ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''})") from None
    return model, name


def pretrained_policy(directory: str | Path) -> tuple[nn.Module, cfglib.Config]:
    """The multi-task policy of a ``pretrained`` run directory, from ``checkpoints/latest.pt``.

    Returns:
        ``(policy, cfg)``: the policy on the CPU (the module that
        :func:`experiments.train.build_policy` builds, with the trained weights) and the run's
        config.

    Raises:
        RunDirError: no run there, a run that adapts (``maml.num_inner_steps != 0``), or a
            missing / unreadable checkpoint.
    """
    directory = Path(directory)
    try:
        cfg = cfglib.from_dict(read_json(directory / "config.json")["config"])
    except (KeyError, TypeError, cfglib.ConfigError) as err:
        raise RunDirError(f"{directory / 'config.json'} holds no valid config ({err})") from None
    if cfg.maml.num_inner_steps != 0:
        raise RunDirError(f"{directory} is not a pretrained baseline "
                          f"(maml.num_inner_steps={cfg.maml.num_inner_steps}, expected 0)")
    state = load_checkpoint(directory / "checkpoints" / "latest.pt")
    env = make(cfg.env.family)
    try:
        policy = make_policy(env.observation_space.shape[0], env.action_space,
                             cfg.policy.hidden_sizes, cfg.policy.activation, cfg.policy.init_std)
    finally:
        env.close()
    policy.load_state_dict(state["policy"])
    return policy, cfg


# --- pretrained ---------------------------------------------------------------------------------
def pretrained_config(preset: str, overrides: Sequence[str], iterations: int | None,
                      seed: int | None, out: Path, quiet: bool) -> cfglib.Config:
    """The validated config of the pretrained baseline: ``preset`` + ``overrides`` +
    ``maml.num_inner_steps=0``.

    Raises:
        ConfigError: unknown preset, bad override, invalid value, or an override asking for
            adaptation steps.
    """
    cfg = cfglib.apply_overrides(get_preset(preset), list(overrides))
    if cfg.maml.num_inner_steps != 0 and any(
            o.partition("=")[0].strip() == "maml.num_inner_steps" for o in overrides):
        raise cfglib.ConfigError("the pretrained baseline has no adaptation: "
                                 "maml.num_inner_steps is fixed to 0")
    flags = ["maml.num_inner_steps=0", f"run.run_dir={out}"]
    flags += [f"run.{k}={v}" for k, v in (("iterations", iterations), ("seed", seed))
              if v is not None]
    if quiet:
        flags.append("run.quiet=true")
    cfg = cfglib.apply_overrides(cfg, flags)
    cfglib.validate(cfg)
    return cfg


def clear_pretrained_dir(out: Path, force: bool) -> None:
    """Refuse an ``out`` that holds a run, or (with ``force``) delete a previous pretrained run.

    Raises:
        RunDirError: a run is there and ``force`` is false, or it is not a pretrained run.
    """
    config_path = out / "config.json"
    if not config_path.exists():
        return
    if not force:
        raise RunDirError(f"{out} already holds a run; pass --force to replace it or choose "
                          "another --out")
    try:
        old = cfglib.from_dict(read_json(config_path)["config"])
    except (KeyError, TypeError, cfglib.ConfigError):
        old = None
    if old is None or old.maml.num_inner_steps != 0:
        raise RunDirError(f"{out} holds a run that is not a pretrained baseline; "
                          "not deleting it even with --force")
    shutil.rmtree(out)


def run_pretrained(args: argparse.Namespace) -> int:
    from experiments.train import TrainingStopped, prepare_run_dir, train

    out = Path(args.out or f"runs/baselines/{args.preset}/pretrained")
    cfg = pretrained_config(args.preset, args.overrides, args.iterations, args.seed, out,
                            args.quiet)
    clear_pretrained_dir(out, args.force)
    prepare_run_dir(cfg, out, resume=False)
    if not args.quiet:
        print(f"{PROG} pretrained: {cfg.run.iterations} iterations of {cfg.outer.algo} without "
              f"adaptation into {out}", file=sys.stderr)
    try:
        metrics = train(cfg, out)
    except TrainingStopped as stopped:
        print(f"{PROG} pretrained: {stopped}", file=sys.stderr)
        return stopped.exit_code
    print(json.dumps({"out": str(out), "baseline": "pretrained",
                      "family": family(cfg.env.family).name,
                      "return": metrics.get("return_step_0")}))
    return 0


# --- oracle -------------------------------------------------------------------------------------
def oracle_metadata(model: Any, family_name: str, preset: str, timesteps: int, seed: int,
                    n_envs: int, seconds: float) -> dict[str, Any]:
    """What ``oracle.json`` records: the family, budget, seed, hyperparameters and versions."""
    from agents.sb3 import rollout_plan

    plan = rollout_plan(timesteps, n_envs)
    return {
        "baseline": "oracle",
        "family": family_name,
        "env_id": family(family_name).env_id,
        "preset": preset,
        "timesteps": timesteps,
        "timesteps_used": plan.total_timesteps,
        "seed": seed,
        "n_envs": n_envs,
        "observation": "env observation followed by agents.sb3.task_vector(task)",
        "hyperparameters": {
            "algo": "stable_baselines3.PPO", "policy": "MlpPolicy",
            "n_steps": model.n_steps, "batch_size": model.batch_size,
            "n_updates": plan.n_updates, "n_epochs": model.n_epochs,
            "learning_rate": model.learning_rate, "gamma": model.gamma,
            "gae_lambda": model.gae_lambda, "ent_coef": model.ent_coef,
            "vf_coef": model.vf_coef, "max_grad_norm": model.max_grad_norm,
            "clip_range": model.clip_range(1.0),
            "net_arch": repr(model.policy.net_arch),
        },
        "seconds": round(seconds, 3),
        "environment": environment_info(),
    }


def oracle_outputs_exist(out: Path) -> bool:
    return (out / ORACLE_ZIP).exists() or (out / ORACLE_JSON).exists()


def save_oracle(model: Any, out: Path, meta: dict[str, Any]) -> None:
    """Write ``oracle.zip`` then ``oracle.json``, each atomically (temp file, then os.replace)."""
    buffer = io.BytesIO()
    model.save(buffer)
    atomic_write_bytes(out / ORACLE_ZIP, buffer.getvalue())
    atomic_write_text(out / ORACLE_JSON, json.dumps(meta, indent=2))


def progress_callback(total: int, enabled: bool) -> Any:
    """An SB3 callback drawing a tqdm bar on stderr (env steps, mean recent episode return)."""
    from stable_baselines3.common.callbacks import BaseCallback

    class TqdmCallback(BaseCallback):
        def _on_training_start(self) -> None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="oracle", unit="step", file=sys.stderr,
                            dynamic_ncols=True, disable=not enabled)

        def _on_rollout_end(self) -> None:
            infos = self.model.ep_info_buffer
            if infos:
                mean = sum(i["r"] for i in infos) / len(infos)
                self.bar.set_postfix(ret=f"{mean:.1f}")
            self.bar.update(self.num_timesteps - self.bar.n)

        def _on_step(self) -> bool:
            return True

        def _on_training_end(self) -> None:
            self.bar.update(self.num_timesteps - self.bar.n)
            self.bar.close()

    return TqdmCallback()


def run_oracle(args: argparse.Namespace) -> int:
    from agents.sb3 import MIN_TIMESTEPS, train_oracle

    name = family(get_preset(args.preset).env.family).name  # unknown preset: ConfigError
    timesteps = args.timesteps
    if timesteps is None:
        timesteps = ORACLE_TIMESTEPS.get(args.preset, DEFAULT_ORACLE_TIMESTEPS)
    if timesteps < MIN_TIMESTEPS:
        raise UsageError(f"--timesteps must be at least {MIN_TIMESTEPS}; got {timesteps}")
    if args.n_envs < 1:
        raise UsageError(f"--n-envs must be a positive integer; got {args.n_envs}")
    seed = 0 if args.seed is None else args.seed
    if seed < 0:
        raise UsageError(f"--seed must be >= 0; got {seed}")
    out = Path(args.out or f"runs/baselines/{args.preset}/oracle")
    if oracle_outputs_exist(out) and not args.force:
        raise RunDirError(f"{out} already holds an oracle; pass --force to replace it or "
                          "choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"cannot create {out}: {err.strerror}") from None
    if not args.quiet:
        print(f"{PROG} oracle: SB3 PPO on {name} with the task observed, {timesteps} steps, "
              f"into {out}", file=sys.stderr)
    threads = torch.get_num_threads()
    torch.set_num_threads(ORACLE_TORCH_THREADS)
    started = time.perf_counter()
    try:
        model = train_oracle(name, timesteps, seed, args.n_envs,
                             callback=progress_callback(timesteps, not args.quiet))
    finally:
        torch.set_num_threads(threads)
    meta = oracle_metadata(model, name, args.preset, timesteps, seed, args.n_envs,
                           time.perf_counter() - started)
    save_oracle(model, out, meta)
    print(json.dumps({"out": str(out), "baseline": "oracle", "family": name,
                      "timesteps": meta["timesteps_used"], "seconds": meta["seconds"]}))
    return 0


# --- command line ---------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Train a family's pretrained or oracle baseline.")
    sub = p.add_subparsers(dest="baseline", metavar="{pretrained,oracle}", required=True)
    pre = sub.add_parser(
        "pretrained", help="multi-task policy: the MAML loop with maml.num_inner_steps=0",
        description="Train the multi-task policy: the preset's outer algorithm and loop with "
                    "maml.num_inner_steps=0 (no adaptation), into a normal run directory.")
    ora = sub.add_parser(
        "oracle", help="SB3 PPO with the task parameters in the observation",
        description="Train SB3 PPO on the train task distribution with the task parameters "
                    "appended to the observation; saves oracle.zip and oracle.json.")
    for s in (pre, ora):
        s.add_argument("--preset", required=True, help="preset (task family), e.g. navigation-2d")
        s.add_argument("--seed", type=int, help="seed (default: the preset's, 0)")
        s.add_argument("--out", help="output folder (default runs/baselines/<preset>/<baseline>)")
        s.add_argument("--force", action="store_true", help="replace an existing output")
        s.add_argument("--quiet", action="store_true", help="no progress on stderr")
    pre.add_argument("--iterations", type=int, help="meta-iterations (run.iterations)")
    pre.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                     help="config overrides as for adaptbed train (not maml.num_inner_steps)")
    ora.add_argument("--timesteps", type=int,
                     help=f"env steps (default {ORACLE_TIMESTEPS['navigation-2d']:,} for "
                          f"navigation-2d, {DEFAULT_ORACLE_TIMESTEPS:,} for MuJoCo families)")
    ora.add_argument("--n-envs", type=int, default=4, help="parallel envs (default 4)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as stop:  # --help
        return int(stop.code or 0)
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    try:
        return run_pretrained(args) if args.baseline == "pretrained" else run_oracle(args)
    except (UsageError, cfglib.ConfigError, RunDirError) as err:
        print(f"{PROG} {args.baseline}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
