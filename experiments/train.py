"""``adaptbed train``: meta-train a policy with MAML and keep a complete record of the run.

The meta-training loop is :func:`train`, top to bottom: sample tasks from the train split ->
sample pre-adaptation episodes -> adapt -> sample post-adaptation episodes -> outer update ->
log -> checkpoint. Everything it calls is importable and tested on its own.
"""

from __future__ import annotations

import argparse
import copy
import os
import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from experiments.cliutil import Parser, seed as seed_arg
from agents.policies import make_policy
from envs.registry import family, make
from envs.vector import TaskVectorEnv, make_vector_env
from experiments import config as cfglib
from experiments.presets import get_preset
from experiments.rundir import (CONFIG_FORMAT, CsvLog, RunDirError, atomic_write_text,
                                environment_info, has_resumable_checkpoint,
                                load_latest_checkpoint, read_json,
                                save_checkpoint)
from meta.adaptation import AdvantageSettings, NumericalFault, collect_meta_batch, step_seeds
from meta.maml import InnerLoop
from meta.outer import MetaBatch, OuterOptimizer, make_outer
from meta.sampler import tasks_per_wave

# The inner-loop form `maml.inner_batching=auto` uses per device. CPU: measured with
# `python -m experiments.bench_inner` on 2 cores (README, 18:05 UTC): on halfcheetah-vel the
# per-task loop took 0.50 s against 1.18 s batched; on navigation-2d 0.13 s against 0.15 s.
# CUDA: batched: on an H100 `bench_inner` measured it 13-14x faster than the loop (README,
# "Benchmarks of the inner loop", 2026-11-27): a GPU pays per kernel launch.
AUTO_BATCHING = {"cpu": "loop", "cuda": "batched"}


# --- building the pieces from a config ----------------------------------------------------------
@dataclass
class Components:
    """Everything a run needs, built from its config."""

    venv: TaskVectorEnv
    task_source: Any  # the family's env, used for sample_tasks
    policy: nn.Module
    inner: InnerLoop
    outer: OuterOptimizer
    advantages: AdvantageSettings


def inner_loop(cfg: cfglib.Config) -> InnerLoop:
    batching = cfg.maml.inner_batching
    if batching == "auto":
        batching = AUTO_BATCHING[torch.device(cfg.run.device).type]
    return InnerLoop((cfg.maml.fast_lr,) * cfg.maml.num_inner_steps, cfg.maml.first_order,
                     batching, cfg.maml.inner_objective)


def build_policy(cfg: cfglib.Config, observation_space, action_space) -> nn.Module:
    """The policy of a run, initialised from ``torch.manual_seed(run.seed)``."""
    torch.manual_seed(cfg.run.seed)
    policy = make_policy(observation_space.shape[0], action_space, cfg.policy.hidden_sizes,
                         cfg.policy.activation, cfg.policy.init_std)
    return policy.to(cfg.run.device)


def simulator_envs(family_name: str, num_tasks: int, episodes_per_task: int,
                   max_wave_envs: int, device: str = "cpu") -> int:
    """The simulator's size for ``num_tasks x episodes_per_task`` episodes: one wave of them
    (:func:`meta.sampler.tasks_per_wave`) for the MuJoCo families with the policy on the CPU;
    all of them for Navigation2D, whose simulator runs on torch, and with the policy on CUDA,
    where waves are not checked to give the same episodes."""
    if not family(family_name).mujoco or torch.device(device).type != "cpu":
        return num_tasks * episodes_per_task
    return tasks_per_wave(num_tasks, episodes_per_task, max_wave_envs) * episodes_per_task


def sampler_envs(cfg: cfglib.Config) -> int:
    """The training simulator's size (``run.max_wave_envs``, :func:`simulator_envs`)."""
    return simulator_envs(cfg.env.family, cfg.maml.meta_batch_size, cfg.maml.episodes_per_task,
                          cfg.run.max_wave_envs, cfg.run.device)


def build(cfg: cfglib.Config) -> Components:
    spec = family(cfg.env.family)
    native = cfg.run.sampler == "native"  # it needs the batched simulator's native loop
    venv = make_vector_env(spec.name, sampler_envs(cfg), cfg.run.device,
                           backend="mujoco" if native else "auto")
    if native and not getattr(venv, "native", False):
        from envs import native as envs_native

        venv.close()
        raise cfglib.ConfigError(f"run.sampler=native needs the native stepping loop, which is "
                                 f"unavailable: {envs_native.unavailable_reason()} (python -m "
                                 f"envs.native; rebuild with pip install -e .)")
    policy = build_policy(cfg, venv.observation_space, venv.action_space)
    inner = inner_loop(cfg)
    o = cfg.outer
    settings: dict[str, Any] = {
        "trpo": dict(max_kl=o.max_kl, cg_iters=o.cg_iters, cg_damping=o.cg_damping,
                     ls_max_steps=o.ls_max_steps, ls_backtrack_ratio=o.ls_backtrack_ratio,
                     fisher=o.fisher, fisher_subsample=o.fisher_subsample),
        "ppo": dict(lr=o.lr, epochs=o.ppo_epochs, clip_eps=o.clip_eps,
                    inner_kl_coef=o.inner_kl_coef),
        "adam": dict(lr=o.lr),
    }[o.algo]
    outer = make_outer(o.algo, policy, inner, **settings)
    advantages = AdvantageSettings(cfg.maml.gamma, cfg.maml.gae_lambda,
                                   cfg.maml.bootstrap_truncated)
    return Components(venv, make(spec.name).unwrapped, policy, inner, outer, advantages)


def iteration_tasks(task_source: Any, cfg: cfglib.Config, iteration: int) -> list:
    """The train tasks of one meta-iteration, from a generator seeded by (seed, iteration)."""
    rng = np.random.default_rng([cfg.run.seed, iteration])
    return task_source.sample_tasks(cfg.maml.meta_batch_size, rng)


# --- the loop ---------------------------------------------------------------------------------
def train(cfg: cfglib.Config, run_dir: Path, resume: bool = False) -> dict[str, float]:
    """Meta-train according to ``cfg``, writing everything into ``run_dir``.

    Returns the metrics of the last iteration.
    """
    parts = build(cfg)
    start, env_steps, best, rejected, failures = 0, 0, -math.inf, 0, 0  # failures: in a row
    if resume:
        state, warning = load_latest_checkpoint(run_dir / "checkpoints")
        if warning:
            print(f"adaptbed train: warning: {warning}", file=sys.stderr)
        parts.policy.load_state_dict(state["policy"])
        parts.outer.load_state_dict(state["outer"])
        start, env_steps, best = state["iteration"], state["env_steps"], state["best_return"]
        rejected = state.get("rejected_steps", 0)
        failures = state.get("consecutive_failures", 0)  # absent from older checkpoints
    logger = RunLogger(run_dir, cfg, start)
    progress = Progress(cfg.run.iterations, start, enabled=not cfg.run.quiet)
    stop = StopRequest(run_dir)
    metrics: dict[str, float] = {}
    try:
        for iteration in range(start, cfg.run.iterations):
            started = time.perf_counter()
            tasks = iteration_tasks(parts.task_source, cfg, iteration)
            seeds = step_seeds(cfg.run.seed, iteration, parts.inner.num_steps + 1)
            try:
                batch, metrics = collect_meta_batch(
                    parts.venv, parts.policy, dict(parts.policy.named_parameters()), tasks,
                    parts.inner, cfg.maml.episodes_per_task, parts.advantages, seeds,
                    cfg.run.sampler)
            except NumericalFault as err:  # nothing to learn from: skip the outer step
                batch, fault = None, str(err)
                metrics = {**faulty_metrics(parts.inner.num_steps), **err.metrics}
            update_started = time.perf_counter()
            good = snapshot(parts)
            if batch is not None:
                metrics.update(parts.outer.step(batch))
                fault = numerical_fault(metrics, batch, parts.policy)
            metrics["seconds_updating"] = time.perf_counter() - update_started
            if fault:  # never let a non-finite value reach the parameters or a checkpoint
                restore(parts, good)
                rejected, failures = rejected + 1, failures + 1
                progress.message(f"adaptbed train: iteration {iteration}: outer step rejected "
                                 f"({fault}); parameters kept")
            else:
                failures = 0
            metrics["rejected_steps"] = float(rejected)
            env_steps += int(metrics["env_steps"])
            metrics = summarize(metrics, parts.inner.num_steps, env_steps,
                                time.perf_counter() - started)
            logger.log(iteration, metrics)
            post = metrics[f"return_step_{parts.inner.num_steps}"]  # sampled with `good`
            if post > best:  # NaN (failed sampling) never is
                best = post
                # the parameters that earned it: those before this iteration's outer step
                save_checkpoint(run_dir / "checkpoints" / "best.pt",
                                {"policy": good[0], "outer": good[1], "iteration": iteration,
                                 "env_steps": env_steps, "best_return": best,
                                 "metrics": metrics})
            state = {"policy": parts.policy.state_dict(), "outer": parts.outer.state_dict(),
                     "iteration": iteration + 1, "env_steps": env_steps, "best_return": best,
                     "rejected_steps": rejected, "consecutive_failures": failures,
                     "metrics": metrics}
            last = iteration + 1 == cfg.run.iterations
            stopping = stop.requested  # read once: checkpoint and stop on the same answer
            saved = (iteration + 1) % cfg.run.checkpoint_every == 0 or last or bool(stopping)
            if saved:
                save_checkpoint(run_dir / "checkpoints" / "latest.pt", state, keep_previous=True)
            if cfg.run.keep_every and (iteration + 1) % cfg.run.keep_every == 0:
                save_checkpoint(run_dir / "checkpoints" / f"iteration-{iteration + 1}.pt", state)
            progress.update(metrics, parts.inner.num_steps)
            if failures >= cfg.run.max_consecutive_failures:
                raise TrainingDiverged(
                    f"{failures} outer steps in a row were rejected for non-finite values "
                    f"(last: {fault}); the last good parameters are in {run_dir / 'checkpoints'}. "
                    "Lower the learning rates or max_kl, or check the rewards")
            if not stopping and not last and stop.requested:  # came during the writes above
                stopping = stop.requested
                if not saved:
                    save_checkpoint(run_dir / "checkpoints" / "latest.pt", state,
                                    keep_previous=True)
            if stopping and not last:
                raise TrainingStopped(stopping, iteration + 1, run_dir)
    finally:
        stop.restore()
        progress.close()
        logger.close()
        parts.venv.close()
        parts.task_source.close()
    return metrics


class TrainingStopped(Exception):
    """SIGINT or SIGTERM stopped the run after a checkpointed iteration; it can be resumed."""

    def __init__(self, signal_name: str, iterations: int, run_dir: Path):
        self.exit_code = 128 + int(signal.Signals[signal_name])  # the shell's convention
        super().__init__(f"stopped by {signal_name} after iteration {iterations}; continue "
                         f"with `adaptbed train --resume --run-dir {run_dir}`")


class StoppedNow(KeyboardInterrupt):
    """A second SIGINT or SIGTERM: the run stops at once, within an iteration. Its last
    checkpoint is intact (``latest.pt`` is never missing), so it resumes from there."""

    def __init__(self, signal_name: str, run_dir: Path):
        self.exit_code = 128 + int(signal.Signals[signal_name])
        where = (f"continue from the last checkpoint with `adaptbed train --resume --run-dir "
                 f"{run_dir}`" if has_resumable_checkpoint(run_dir / "checkpoints")
                 else f"it had no checkpoint yet: delete {run_dir} and start again")
        super().__init__(f"stopped at once by a second {signal_name}; {where}")


class TrainingDiverged(RuntimeError):
    """Too many consecutive outer steps were rejected for non-finite values."""


def snapshot(parts: Components) -> tuple[dict, dict]:
    """Copies of the policy parameters and outer-optimizer state, to undo a bad step."""
    return (copy.deepcopy(parts.policy.state_dict()), copy.deepcopy(parts.outer.state_dict()))


def restore(parts: Components, saved: tuple[dict, dict]) -> None:
    parts.policy.load_state_dict(saved[0])
    parts.outer.load_state_dict(saved[1])


def numerical_fault(metrics: dict[str, float], batch: MetaBatch, policy: nn.Module) -> str | None:
    """What is non-finite after an outer step (returns, advantages, losses, parameters), if any."""
    for episodes in [*batch.train, batch.valid]:
        valid = episodes.mask > 0
        if not torch.isfinite(episodes.rewards[valid]).all():
            return "non-finite rewards"
        if not torch.isfinite(episodes.advantages[valid]).all():
            return "non-finite advantages"
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
        return f"non-finite {', '.join(sorted(bad))}"
    if metrics.get("non_finite_gradient"):
        return "non-finite gradient"
    if not all(torch.isfinite(p).all() for p in policy.parameters()):
        return "non-finite parameters"
    return None


def faulty_metrics(num_steps: int) -> dict[str, float]:
    """The metrics of an iteration whose episodes were unusable (returns unknown: NaN)."""
    metrics = {f"return_step_{k}": math.nan for k in range(num_steps + 1)}
    metrics.update(env_steps=0.0, unstable_episodes=0.0, seconds_sampling=0.0,
                   seconds_adapting=0.0, loss_before=math.nan, loss_after=math.nan,
                   kl=math.nan, accepted=0.0)
    return metrics


def resident_memory_mb() -> float:
    """Current resident memory of this process in MiB (Linux ``/proc``; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class StopRequest:
    """SIGINT / SIGTERM ask the loop to stop after the current iteration and its checkpoint
    (then :class:`TrainingStopped` is raised; ``adaptbed train`` exits with 128 + signal number,
    130 for SIGINT and 143 for SIGTERM, so that scripts do not carry on as if it had finished)."""

    def __init__(self, run_dir: Path) -> None:
        self.requested: str | None = None
        self.run_dir = run_dir
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:  # a second signal: stop now
            raise StoppedNow(signal.Signals(signum).name, self.run_dir)
        self.requested = signal.Signals(signum).name

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def summarize(metrics: dict[str, float], num_steps: int, env_steps: int,
              seconds: float) -> dict[str, float]:
    """Add the derived scalars: adaptation gain, cumulative env steps, env steps per second."""
    out = dict(metrics)
    out["adaptation_gain"] = metrics[f"return_step_{num_steps}"] - metrics["return_step_0"]
    out["env_steps_total"] = float(env_steps)
    out["env_steps_per_second"] = metrics["env_steps"] / max(metrics["seconds_sampling"], 1e-9)
    out["seconds_iteration"] = seconds
    out["rss_mb"] = resident_memory_mb()
    return out


# --- logging (the only I/O of the loop) --------------------------------------------------------
TAGS = {  # metric key -> TensorBoard tag
    "adaptation_gain": "adaptation/gain",
    "loss_before": "losses/outer_loss_before",
    "loss_after": "losses/outer_loss_after",
    "kl": "losses/kl",
    "ls_steps": "losses/line_search_steps",
    "grad_norm": "losses/grad_norm",
    "accepted": "losses/step_accepted",
    "env_steps_total": "charts/env_steps",
    "env_steps_per_second": "charts/env_steps_per_second",
    "unstable_episodes": "charts/unstable_episodes",
    "rss_mb": "charts/resident_memory_mb",
    "rejected_steps": "health/rejected_steps",
    "seconds_sampling": "time/sampling_s",
    "seconds_adapting": "time/adapting_s",
    "seconds_updating": "time/updating_s",
    "seconds_iteration": "time/iteration_s",
}


def tag_of(key: str) -> str | None:
    if key.startswith("return_step_"):
        return f"adaptation/{key}"
    return TAGS.get(key)


TIMING_KEYS = ("seconds_sampling", "seconds_adapting", "seconds_updating", "seconds_iteration",
               "env_steps_per_second", "rss_mb")


class RunLogger:
    """TensorBoard scalars (namespaced tags) mirrored in two CSV files: ``progress.csv`` with
    every deterministic scalar (identical for two runs of the same seed) and ``timing.csv``
    with the wall-clock ones."""

    def __init__(self, run_dir: Path, cfg: cfglib.Config, start_iteration: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events logged after the last checkpoint by a crashed run
        self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_iteration or None)
        self.csv = CsvLog(run_dir / "progress.csv", start_iteration)
        self.timing_csv = CsvLog(run_dir / "timing.csv", start_iteration)
        if start_iteration == 0:
            table = "\n".join(["| key | value |", "|---|---|"] +
                              [f"| {k} | {v} |" for k, v in cfglib.flatten(cfg).items()])
            self.writer.add_text("hyperparameters", table, 0)

    def log(self, iteration: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            tag = tag_of(key)
            if tag is not None:
                self.writer.add_scalar(tag, value, iteration)
        self.writer.flush()
        logged = {k: v for k, v in metrics.items() if tag_of(k) is not None}
        self.csv.write({"iteration": iteration,
                        **{k: v for k, v in logged.items() if k not in TIMING_KEYS}})
        self.timing_csv.write({"iteration": iteration,
                               **{k: v for k, v in logged.items() if k in TIMING_KEYS}})

    def close(self) -> None:
        self.writer.close()


class Progress:
    """A tqdm bar on stderr: iteration, return before/after adaptation, env steps/s."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="meta-train", unit="it",
                            file=sys.stderr, dynamic_ncols=True)

    def update(self, metrics: dict[str, float], num_steps: int) -> None:
        if self.bar is not None:
            self.bar.set_postfix(pre=f"{metrics['return_step_0']:.1f}",
                                 post=f"{metrics[f'return_step_{num_steps}']:.1f}",
                                 sps=f"{metrics['env_steps_per_second']:.0f}")
            self.bar.update(1)

    def message(self, text: str) -> None:
        """A line on stderr that does not break the bar."""
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --- command line ------------------------------------------------------------------------------
DEFAULT_PRESET = "navigation-2d"


def preset_in(argv: Sequence[str]) -> str | None:
    """The value of ``--preset NAME`` / ``--preset=NAME`` in ``argv``, if any."""
    for i, arg in enumerate(argv):
        if arg == "--preset" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--preset="):
            return arg.split("=", 1)[1]
    return None


def parser(preset: str = DEFAULT_PRESET) -> argparse.ArgumentParser:
    """The command line; ``--help`` lists every config key with ``preset``'s values."""
    try:
        shown = get_preset(preset)
    except cfglib.ConfigError:  # an unknown preset is reported after parsing
        preset, shown = DEFAULT_PRESET, get_preset(DEFAULT_PRESET)
    p = Parser(
        prog="adaptbed train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Meta-train a policy with MAML on a task family.",
        epilog=cfglib.help_text(shown) + f"\n\nThe defaults shown are the {preset} preset's; "
               "`adaptbed train --preset NAME --help` shows another preset's.")
    p.add_argument("--preset", default=None,
                   help=f"preset name (one per task family; see `adaptbed envs`; default "
                        f"{DEFAULT_PRESET}); not with --resume")
    p.add_argument("--seed", type=seed_arg, help="run.seed")
    p.add_argument("--device", help="run.device: cpu or cuda")
    p.add_argument("--iterations", type=int, help="run.iterations")
    p.add_argument("--run-dir", help="run.run_dir (default runs/<preset>-s<seed>-<time>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from its latest checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted config overrides, e.g. maml.fast_lr=0.05 outer.algo=ppo")
    return p


def resolve(args: argparse.Namespace) -> tuple[cfglib.Config, Path]:
    """The validated config and run directory of a command line (raises one-line errors)."""
    flags = [f"run.{k}={v}" for k, v in (("seed", args.seed), ("device", args.device),
                                         ("iterations", args.iterations),
                                         ("run_dir", args.run_dir)) if v is not None]
    if args.quiet:
        flags.append("run.quiet=true")
    if args.resume:
        if not args.run_dir:
            raise RunDirError("--resume needs --run-dir of the run to continue")
        run_dir = Path(args.run_dir)
        if not (run_dir / "config.json").exists():
            raise RunDirError(f"{run_dir} holds no run to resume (no config.json)")
        doc = read_json(run_dir / "config.json")
        if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
            raise RunDirError(f"{run_dir / 'config.json'} is not the config.json of a run")
        if doc.get("format") != CONFIG_FORMAT:
            raise RunDirError(f"{run_dir / 'config.json'} has format {doc.get('format')!r}; this "
                              f"adaptbed reads format {CONFIG_FORMAT} (written by another version)")
        saved = cfglib.from_dict(doc["config"])
        changeable = [f for f in flags if f.split("=")[0] in
                      ("run.iterations", "run.quiet", "run.device", "run.run_dir")]
        if args.overrides or len(changeable) != len(flags) or args.preset is not None:
            raise RunDirError("a resumed run keeps its config (preset and overrides "
                              "included): only --iterations, --device and --quiet may be "
                              "given with --resume")
        # --quiet holds for this invocation only: a later resume without it shows progress
        cfg = cfglib.apply_overrides(saved, [f"run.quiet={str(args.quiet).lower()}",
                                             *changeable])
        if saved.run.device == "cuda" and args.device is None:
            try:
                cfglib.validate(cfg)
            except cfglib.ConfigError:
                raise RunDirError("this run was last trained with run.device=cuda (its "
                                  "config.json) and no CUDA GPU is available here; pass "
                                  "--device cpu to continue it on the CPU") from None
    else:
        cfglib.check_command_line_overrides(args.overrides)
        cfg = cfglib.apply_overrides(get_preset(args.preset or DEFAULT_PRESET),
                                     [*args.overrides, *flags])
    cfglib.validate(cfg)
    if not cfg.run.run_dir:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        cfg = cfglib.apply_overrides(cfg, [f"run.run_dir=runs/{cfg.preset or 'run'}-s{cfg.run.seed}-{stamp}"])
    return cfg, Path(cfg.run.run_dir)


def prepare_run_dir(cfg: cfglib.Config, run_dir: Path, resume: bool,
                    resumed_at: int | None = None) -> None:
    """Create ``run_dir`` and write ``config.json``; refuse to overwrite a different run.

    A resume (``resumed_at``: the checkpoint's iteration) keeps the ``environment`` the run
    started with (its commit and package versions) and appends the resuming one, with the
    iteration and time, to the list ``resumes``.
    """
    config_path = run_dir / "config.json"
    if config_path.exists() and not resume:
        if not has_resumable_checkpoint(run_dir / "checkpoints"):
            raise RunDirError(f"{run_dir} holds a run that stopped before its first checkpoint "
                              "(nothing to resume); delete it or choose another --run-dir")
        raise RunDirError(f"{run_dir} already holds a run; continue it with `adaptbed train "
                          f"--resume --run-dir {run_dir}` or choose another --run-dir")
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(f"cannot create run directory {run_dir}: {err.strerror}") from None
    doc = {"format": CONFIG_FORMAT, "config": cfglib.to_dict(cfg),
           "environment": environment_info(),
           "family": family(cfg.env.family).env_id}
    if resume and config_path.exists():
        previous = read_json(config_path)
        doc["environment"] = previous.get("environment", doc["environment"])
        doc["resumes"] = [*previous.get("resumes", []),
                          {"iteration": resumed_at, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "environment": environment_info()}]
    atomic_write_text(config_path, json.dumps(doc, indent=2))


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser(preset_in(argv) or DEFAULT_PRESET).parse_args(argv)
    done = None
    try:
        cfg, run_dir = resolve(args)
        if args.resume:  # no usable checkpoint: a one-line error, not a traceback
            done = resumable_state(run_dir, cfg)
        if done is not None and done["iteration"] == cfg.run.iterations:  # nothing to train
            print(f"adaptbed train: {run_dir} has already completed its {cfg.run.iterations} "
                  "iterations; pass a larger --iterations to continue it", file=sys.stderr)
            print_result(run_dir, done.get("metrics", {}), cfg.maml.num_inner_steps)
            return 0
        prepare_run_dir(cfg, run_dir, args.resume, None if done is None else done["iteration"])
    except (cfglib.ConfigError, RunDirError) as err:
        print(f"adaptbed train: error: {err}", file=sys.stderr)
        return 2
    if not cfg.run.quiet:
        print(f"run directory: {run_dir}   (tensorboard --logdir {run_dir / 'tb'})",
              file=sys.stderr)
    try:
        metrics = train(cfg, run_dir, resume=args.resume)
    except TrainingDiverged as err:
        print(f"adaptbed train: error: {err}", file=sys.stderr)
        return 1
    except RunDirError as err:  # e.g. a damaged progress.csv found on resume
        print(f"adaptbed train: error: {err}", file=sys.stderr)
        return 2
    except (TrainingStopped, StoppedNow) as stopped:
        print(f"adaptbed train: {stopped}", file=sys.stderr)
        return stopped.exit_code
    print_result(run_dir, metrics, cfg.maml.num_inner_steps)
    return 0


def resumable_state(run_dir: Path, cfg: cfglib.Config) -> dict:
    """The checkpoint a resume starts from.

    Raises:
        RunDirError: none is usable, or ``run.iterations`` is below the iterations it holds.
    """
    try:
        state, _ = load_latest_checkpoint(run_dir / "checkpoints")
    except RunDirError as err:
        if not has_resumable_checkpoint(run_dir / "checkpoints"):
            raise RunDirError(f"{run_dir} has no checkpoint to resume from (the run stopped "
                              "before its first one); delete it and start again") from None
        raise
    if cfg.run.iterations < state["iteration"]:
        raise RunDirError(f"{run_dir} has already trained {state['iteration']} iterations; "
                          f"--iterations {cfg.run.iterations} would not continue it")
    return state


def print_result(run_dir: Path, metrics: dict[str, float], num_steps: int) -> None:
    """The one JSON line on stdout: the last iteration's returns before and after adaptation."""
    if metrics:
        print(json.dumps({"run_dir": str(run_dir), "return_before": metrics["return_step_0"],
                          "return_after": metrics[f"return_step_{num_steps}"]}))


if __name__ == "__main__":
    from experiments.memory import keep_freed_memory

    keep_freed_memory()  # as `adaptbed train` does (experiments/cli.py)
    from experiments.cliutil import route_mujoco_warnings

    route_mujoco_warnings()
    sys.exit(main())
