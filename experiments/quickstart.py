"""``adaptbed quickstart`` (README's main command): meta-train ``navigation-2d`` on the CPU for a
few minutes, then show on the held-out test split how much one, two and three policy-gradient
steps from 20 episodes improve the return, next to a randomly initialised policy adapted the
same way and the "stand still" return."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from experiments.cliutil import Parser, seed as seed_arg
from envs.registry import make
from envs.tasks import task_to_dict
from envs.splits import get_split
from envs.vector import make_vector_env
from experiments import config as cfglib
from experiments.plot import evaluation_figure, save_png
from experiments.presets import get_preset
from experiments.rundir import RunDirError, atomic_write_text
from experiments.train import (StoppedNow, TrainingDiverged, TrainingStopped, build_policy,
                               prepare_run_dir, train)
from meta.adaptation import AdvantageSettings
from meta.evaluation import evaluate_adaptation

PRESET = "navigation-2d"
DEFAULT_ITERATIONS = 40


def stand_still_returns(tasks: Sequence) -> list[float]:
    """Return of the zero action on each Navigation2D task (simulated, horizon 100)."""
    env = make(PRESET)
    out = []
    for task in tasks:
        env.unwrapped.set_task(task)
        env.reset(seed=0)
        total, done = 0.0, False
        while not done:
            _, r, term, trunc, _ = env.step(np.zeros(2, dtype=np.float32))
            total, done = total + r, term or trunc
        out.append(total)
    env.close()
    return out


def evaluate(cfg: cfglib.Config, policy: torch.nn.Module, tasks: Sequence, num_steps: int,
             seed: int) -> dict:
    venv = make_vector_env(PRESET, len(tasks) * cfg.maml.episodes_per_task, cfg.run.device)
    return evaluate_adaptation(
        venv, policy, dict(policy.named_parameters()), tasks, cfg.maml.fast_lr, num_steps,
        cfg.maml.episodes_per_task, AdvantageSettings(cfg.maml.gamma, cfg.maml.gae_lambda),
        seed=seed)


def plot_document(tasks: Sequence, results: dict[str, dict], stand_still: float) -> dict:
    """The results in ``adaptbed evaluate``'s schema, standing still drawn as a flat line."""
    steps = results["maml"]["steps"]
    flat = {"steps": steps, "mean": [stand_still] * len(steps), "ci95": [0.0] * len(steps),
            "kind": "flat"}
    plot_names = {"maml": "maml", "random init": "random"}  # experiments.plot's agent names
    return {"split": "test", "family": "Navigation2D", "tasks": [task_to_dict(t) for t in tasks],
            "agents": {**{plot_names[k]: {**v, "kind": "curve"} for k, v in results.items()},
                       "stand_still": flat}}


def format_results(results: dict[str, dict], stand_still: float) -> str:
    steps = results["maml"]["steps"]
    lines = [f"{'agent':<14}" + "".join(f"{f'after {k} step' + ('s' if k != 1 else ''):>18}"
                                          for k in steps)]
    for name, res in results.items():
        cells = "".join(f"{f'{m:.1f} ± {c:.1f}':>18}" for m, c in zip(res["mean"], res["ci95"]))
        lines.append(f"{name:<14}{cells}")
    lines.append(f"{'stand still':<14}{stand_still:>18.1f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="adaptbed quickstart", description=__doc__)
    p.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                   help=f"meta-iterations (default {DEFAULT_ITERATIONS}, 2-3 minutes on 2 cores)")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--run-dir", default="", help="default runs/quickstart-s<seed>-<time>")
    p.add_argument("--inner-steps", type=int, default=3, help="adaptation steps evaluated (K)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    run_dir = Path(args.run_dir or f"runs/quickstart-s{args.seed}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        if args.inner_steps < 1:
            raise cfglib.ConfigError(f"--inner-steps must be positive, got {args.inner_steps}")
        cfg = cfglib.apply_overrides(get_preset(PRESET), [
            f"run.iterations={args.iterations}", f"run.seed={args.seed}",
            f"run.run_dir={run_dir}", f"run.quiet={args.quiet}"])
        cfglib.validate(cfg)
        prepare_run_dir(cfg, run_dir, resume=False)
    except (cfglib.ConfigError, RunDirError) as err:
        print(f"adaptbed quickstart: error: {err}", file=sys.stderr)
        return 2
    print(f"meta-training {PRESET} for {args.iterations} iterations into {run_dir} ...",
          file=sys.stderr)
    started = time.perf_counter()
    try:
        train(cfg, run_dir)
    except (TrainingStopped, StoppedNow) as stopped:
        print(f"adaptbed quickstart: {stopped}; then evaluate it with `adaptbed evaluate "
              f"{run_dir}`", file=sys.stderr)
        return stopped.exit_code
    except TrainingDiverged as err:
        print(f"adaptbed quickstart: error: {err}", file=sys.stderr)
        return 1
    train_seconds = time.perf_counter() - started

    tasks = get_split(PRESET, "test")
    trained = build_policy(cfg, *_spaces())
    from experiments.rundir import load_checkpoint

    trained.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "latest.pt")["policy"])
    random_init = build_policy(cfglib.apply_overrides(cfg, ["run.seed=12345"]), *_spaces())
    eval_seed = 2**20 + args.seed
    results = {"maml": evaluate(cfg, trained, tasks, args.inner_steps, eval_seed),
               "random init": evaluate(cfg, random_init, tasks, args.inner_steps, eval_seed)}
    still = float(np.mean(stand_still_returns(tasks)))
    doc = {"split": "test", "num_tasks": len(tasks), "train_seconds": train_seconds,
           "agents": results, "stand_still": still}
    atomic_write_text(run_dir / "eval" / "quickstart.json", json.dumps(doc, indent=2))
    save_png(evaluation_figure(plot_document(tasks, results, still)),
             run_dir / "eval" / "quickstart.png")

    print(f"\nNavigation2D, held-out test split ({len(tasks)} tasks): mean return ± 95% CI over "
          f"tasks,\nafter k policy-gradient steps from {cfg.maml.episodes_per_task} episodes "
          f"(step size {cfg.maml.fast_lr}, then {cfg.maml.fast_lr / 2}):\n")
    print(format_results(results, still))
    print(f"\nmeta-training took {train_seconds:.0f} s; run directory: {run_dir}")
    print(f"results: {run_dir / 'eval' / 'quickstart.json'} and quickstart.png; "
          f"TensorBoard: tensorboard --logdir {run_dir / 'tb'}")
    return 0


def _spaces():
    env = make(PRESET)
    return env.observation_space, env.action_space


if __name__ == "__main__":
    sys.exit(main())
