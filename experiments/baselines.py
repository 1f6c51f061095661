"""``adaptbed baseline``: train a family's ``pretrained`` or ``oracle`` baseline once, to reuse.

* ``adaptbed baseline pretrained --preset NAME [--iterations N] [--seed S] [--out DIR]
  [KEY=VALUE ...]``: the multi-task policy, trained by the same loop and outer algorithm as
  MAML (:func:`experiments.train.train`) with ``maml.num_inner_steps=0``, i.e. no adaptation in
  its objective. ``DIR`` (default ``runs/baselines/<preset>/pretrained``) is a normal run
  directory: ``config.json``, ``progress.csv``, ``tb/``, ``checkpoints/latest.pt``, ...
* ``adaptbed baseline oracle --preset NAME [--timesteps N] [--seed S] [--out DIR] [--resume]``:
  SB3 PPO on the train task distribution with the task in the observation (:mod:`agents.sb3`),
  saved as ``DIR/oracle.zip`` plus ``DIR/oracle.json`` (default
  ``runs/baselines/<preset>/oracle``). While it trains, ``DIR/oracle-partial.zip`` /
  ``.json`` hold the model after the latest PPO update; ``--resume`` continues from them.

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
from experiments.cliutil import seed as seed_arg
from experiments.presets import get_preset
from experiments.rundir import (RunDirError, atomic_write_bytes, atomic_write_text,
                                environment_info, load_checkpoint, read_json)

PROG = "adaptbed baseline"
ORACLE_ZIP = "oracle.zip"
ORACLE_JSON = "oracle.json"
# An unfinished oracle, saved between two PPO rollouts (every 2048 x n_envs steps at most) so
# that ``--resume`` loses at most one rollout of work; removed when the oracle is finished.
PARTIAL_ZIP = "oracle-partial.zip"
PARTIAL_JSON = "oracle-partial.json"
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
    cfglib.check_command_line_overrides(overrides)
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
    from experiments.train import StoppedNow, TrainingStopped, prepare_run_dir, train

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
    except (TrainingStopped, StoppedNow) as stopped:
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
        "timesteps_used": int(model.num_timesteps),
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
    """Write ``oracle.zip`` then ``oracle.json``, each atomically (temp file, then os.replace),
    then remove the partial oracle."""
    atomic_write_bytes(out / ORACLE_ZIP, model_bytes(model))
    atomic_write_text(out / ORACLE_JSON, json.dumps(meta, indent=2))
    for name in (PARTIAL_ZIP, PARTIAL_JSON):
        (out / name).unlink(missing_ok=True)


def model_bytes(model: Any) -> bytes:
    buffer = io.BytesIO()
    model.save(buffer)
    return buffer.getvalue()


def save_partial(model: Any, out: Path, meta: dict[str, Any]) -> None:
    """Write the partial oracle atomically: the zip (which carries its own step count, the one
    ``--resume`` uses), then the JSON of settings the zip does not hold (preset, budget, seed,
    envs, seconds so far)."""
    # A crash between the two leaves the JSON one rollout behind the zip: harmless, as --resume
    # counts the zip's steps, but the JSON's seconds then miss that rollout's time.
    atomic_write_bytes(out / PARTIAL_ZIP, model_bytes(model))
    atomic_write_text(out / PARTIAL_JSON, json.dumps(
        {**meta, "num_timesteps": int(model.num_timesteps)}, indent=2))


def load_partial(out: Path) -> tuple[Any, dict[str, Any]]:
    """The partial oracle of ``out`` and its metadata.

    Raises:
        RunDirError: no partial oracle, or an unreadable or malformed one.
    """
    from stable_baselines3 import PPO

    if not (out / PARTIAL_JSON).exists() or not (out / PARTIAL_ZIP).exists():
        raise RunDirError(f"{out} holds no unfinished oracle to resume "
                          f"({PARTIAL_ZIP} and {PARTIAL_JSON})")
    meta = read_json(out / PARTIAL_JSON)
    types = {"preset": str, "timesteps": int, "seed": int, "n_envs": int}
    if not isinstance(meta, dict) or any(not isinstance(meta.get(k), t) for k, t in types.items()):
        raise RunDirError(f"{out / PARTIAL_JSON} lacks the oracle's settings "
                          f"({', '.join(types)}); pass --force to start over")
    try:
        model = PPO.load(out / PARTIAL_ZIP, device="cpu")
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else ""
        raise RunDirError(f"the unfinished oracle in {out} is unreadable "
                          f"({type(err).__name__}: {first}); pass --force to start over") from None
    return model, meta


def progress_callback(total: int, enabled: bool) -> Any:
    """An SB3 callback drawing a tqdm bar on stderr (env steps, mean recent episode return)."""
    from stable_baselines3.common.callbacks import BaseCallback

    class TqdmCallback(BaseCallback):
        def _on_training_start(self) -> None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="oracle", unit="step", file=sys.stderr,
                            dynamic_ncols=True, disable=not enabled,
                            initial=self.model.num_timesteps)

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


def partial_callback(out: Path, meta: dict[str, Any], started: float) -> Any:
    """An SB3 callback saving the partial oracle at the start of every rollout after the first,
    i.e. right after each PPO update (SB3 calls ``on_rollout_end`` *before* the update)."""
    from stable_baselines3.common.callbacks import BaseCallback

    class PartialCallback(BaseCallback):
        def _on_training_start(self) -> None:
            self.first = int(self.model.num_timesteps)

        def _on_rollout_start(self) -> None:
            if self.model.num_timesteps > self.first:
                seconds = meta["seconds_before"] + time.perf_counter() - started
                settings = {k: v for k, v in meta.items() if k != "seconds_before"}
                save_partial(self.model, out, {**settings, "seconds": round(seconds, 3)})

        def _on_step(self) -> bool:
            return True

    return PartialCallback()


def oracle_settings(args: argparse.Namespace, out: Path) -> tuple[int, int, int, Any, dict]:
    """``(timesteps, seed, n_envs, resume_model, partial_meta)`` from the command line and, with
    ``--resume``, the partial oracle (whose settings the command line may repeat, not change).

    The oracle is finished when ``oracle.json`` exists (it is written last). ``--resume`` goes
    on from the partial oracle even beside a stray ``oracle.zip`` (a crash while finishing).
    """
    from agents.sb3 import MIN_TIMESTEPS, check_resumable, rollout_plan

    if args.resume and args.force:
        raise UsageError("--resume and --force exclude each other")
    if args.resume:
        if (out / ORACLE_JSON).exists():
            raise RunDirError(f"{out} already holds a finished oracle: nothing to resume")
        model, meta = load_partial(out)
        for key, given in (("preset", args.preset), ("timesteps", args.timesteps),
                           ("seed", args.seed), ("n_envs", args.n_envs)):
            if given is not None and given != meta[key]:
                raise UsageError(f"--{key.replace('_', '-')} {given} differs from the "
                                 f"unfinished oracle's {meta[key]} in {out}")
        try:
            check_resumable(model, meta["timesteps"], meta["n_envs"])
        except ValueError as err:
            raise RunDirError(f"cannot resume the oracle in {out}: {err}") from None
        return meta["timesteps"], meta["seed"], meta["n_envs"], model, meta
    if not args.force:
        if oracle_outputs_exist(out):
            raise RunDirError(f"{out} already holds an oracle; pass --force to replace it or "
                              "choose another --out")
        if (out / PARTIAL_JSON).exists():
            raise RunDirError(f"{out} holds an unfinished oracle; pass --resume to continue it "
                              "or --force to start over")
    timesteps = args.timesteps
    if timesteps is None:
        timesteps = ORACLE_TIMESTEPS.get(args.preset, DEFAULT_ORACLE_TIMESTEPS)
    if timesteps < MIN_TIMESTEPS:
        raise UsageError(f"--timesteps must be at least {MIN_TIMESTEPS}; got {timesteps}")
    n_envs = 4 if args.n_envs is None else args.n_envs
    if n_envs < 1:
        raise UsageError(f"--n-envs must be a positive integer; got {n_envs}")
    try:
        rollout_plan(timesteps, n_envs)
    except ValueError as err:
        raise UsageError(f"--timesteps {timesteps} with --n-envs {n_envs}: {err}") from None
    seed = 0 if args.seed is None else args.seed
    if seed < 0:
        raise UsageError(f"--seed must be >= 0; got {seed}")
    return timesteps, seed, n_envs, None, {}


def run_oracle(args: argparse.Namespace) -> int:
    from stable_baselines3.common.callbacks import CallbackList

    from agents.sb3 import train_oracle

    name = family(get_preset(args.preset).env.family).name  # unknown preset: ConfigError
    out = Path(args.out or f"runs/baselines/{args.preset}/oracle")
    timesteps, seed, n_envs, resume, previous = oracle_settings(args, out)
    if args.force:  # a killed --force run then leaves only its own partial oracle behind
        for stale in (ORACLE_ZIP, ORACLE_JSON, PARTIAL_ZIP, PARTIAL_JSON):
            (out / stale).unlink(missing_ok=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"cannot create {out}: {err.strerror}") from None
    if not args.quiet:
        action = (f"resuming at step {resume.num_timesteps:,}" if resume is not None
                  else "training")
        print(f"{PROG} oracle: {action} SB3 PPO on {name} with the task observed, "
              f"{timesteps:,} steps, into {out}", file=sys.stderr)
    resumed_at = list(previous.get("resumed_at", []))
    if resume is not None:
        resumed_at.append(int(resume.num_timesteps))
    partial_meta = {"preset": args.preset, "family": name, "timesteps": timesteps,
                    "seed": seed, "n_envs": n_envs, "resumed_at": resumed_at,
                    "seconds_before": float(previous.get("seconds", 0.0))}
    threads = torch.get_num_threads()
    torch.set_num_threads(ORACLE_TORCH_THREADS)
    started = time.perf_counter()
    try:
        callbacks = CallbackList([progress_callback(timesteps, not args.quiet),
                                  partial_callback(out, partial_meta, started)])
        model = train_oracle(name, timesteps, seed, n_envs, callback=callbacks, resume=resume)
    finally:
        torch.set_num_threads(threads)
    seconds = partial_meta["seconds_before"] + time.perf_counter() - started
    meta = oracle_metadata(model, name, args.preset, timesteps, seed, n_envs, seconds)
    if resumed_at:
        meta["resumed_at"] = resumed_at
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
        s.add_argument("--seed", type=seed_arg, help="seed (default: the preset's, 0)")
        s.add_argument("--out", help="output folder (default runs/baselines/<preset>/<baseline>)")
        s.add_argument("--force", action="store_true", help="replace an existing output")
        s.add_argument("--quiet", action="store_true", help="no progress on stderr")
    pre.add_argument("--iterations", type=int, help="meta-iterations (run.iterations)")
    pre.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                     help="config overrides as for adaptbed train (not maml.num_inner_steps)")
    ora.add_argument("--timesteps", type=int,
                     help=f"env steps (default {ORACLE_TIMESTEPS['navigation-2d']:,} for "
                          f"navigation-2d, {DEFAULT_ORACLE_TIMESTEPS:,} for MuJoCo families)")
    ora.add_argument("--n-envs", type=int, help="parallel envs (default 4)")
    ora.add_argument("--resume", action="store_true",
                     help="continue the unfinished oracle of --out from its latest PPO update "
                          "(not bit-identical to an uninterrupted training: the episodes in "
                          "flight restart)")
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
