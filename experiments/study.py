"""``adaptbed study``: MAML over several seeds against every baseline, in one Markdown report.

Usage::

    adaptbed study --preset NAME [--seeds 0 1 2] [--iterations N] [--baseline-iterations N]
                   [--oracle-timesteps N] [--out DIR] [--inner-steps K] [--episodes-per-step N]
                   [--baselines pretrained,random,ppo,oracle] [--ppo-budgets 1,10,100]
                   [--max-tasks M] [--eval-seed S] [--quiet] [KEY=VALUE ...]

Steps, each done by the command that does it alone (so every intermediate result is an
ordinary run directory that the other commands understand):

1. ``adaptbed train`` for each seed into ``DIR/maml-s<seed>`` (KEY=VALUE overrides apply);
2. ``adaptbed baseline pretrained`` (same overrides, ``--baseline-iterations``, first seed) and
   ``adaptbed baseline oracle`` (``--oracle-timesteps``) once, into ``DIR/baselines/``;
3. ``adaptbed evaluate`` on ``test`` and, when the family has one, ``ood``: the first run with
   every baseline, the other runs with MAML only (the baselines do not depend on the MAML run,
   so evaluating them again would give the same numbers at the same cost);
4. ``DIR/report.md``: per split, a table (agent x number of gradient steps, mean ± 95% CI over
   tasks) and the plot ``DIR/<split>.png``; the combined results are in ``DIR/<split>.json``
   (the schema of ``adaptbed evaluate``). The ``maml`` row pools the seeds: each task's values
   are averaged over the training seeds, then mean and CI are taken over tasks; one row per
   seed follows.

Re-running the same command reuses what is complete (finished runs, trained baselines) and
resumes unfinished runs, so an interrupted study continues where it stopped. A run or baseline
in ``DIR`` trained with other settings (overrides, seed, oracle budget) or for more iterations
than asked is refused with a one-line error rather than reported under the settings asked for.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from envs.registry import make
from envs.tasks import TaskError
from experiments import config as cfglib
from experiments.cliutil import Parser, seed as seed_arg
from experiments.evaluate import mean_ci_text, summarize
from experiments.plot import agent_label, evaluation_figure, read_evaluation, save_png
from experiments.presets import get_preset
from experiments.rundir import (RunDirError, atomic_write_text, has_resumable_checkpoint,
                                load_latest_checkpoint, read_json)


class StudyError(RunDirError):
    """A study that cannot go on (one-line message)."""


# --- the steps ---------------------------------------------------------------------------------
def call(main: Callable[[list[str]], int], argv: list[str], quiet: bool) -> None:
    """Run a subcommand's ``main``; its stdout goes to stderr (or nowhere when ``quiet``).

    Raises:
        StudyError: the subcommand failed (it has printed its own error).
    """
    sink = io.StringIO() if quiet else sys.stderr
    with contextlib.redirect_stdout(sink):
        rc = main(argv)
    if rc in (130, 143):  # SIGINT / SIGTERM: the step stopped cleanly and can be continued
        raise StudyError("stopped by a signal; run the same command again to continue")
    if rc != 0:
        raise StudyError(f"`adaptbed {' '.join(shlex.quote(a) for a in argv)}` failed "
                         f"(exit status {rc})")


def completed_iterations(run_dir: Path) -> int:
    """The iterations of the checkpoint ``adaptbed train --resume`` would continue from
    (``latest.pt``, else ``previous.pt``), 0 when it has none."""
    try:
        return int(load_latest_checkpoint(run_dir / "checkpoints")[0]["iteration"])
    except (RunDirError, KeyError):
        return 0


#: Keys a reused or resumed run may differ in from the request (they do not change its results).
RUN_LOCAL_KEYS = ("run.iterations", "run.quiet", "run.run_dir", "run.device", "preset",
                  "run.checkpoint_every", "run.keep_every")


def check_same_config(run_dir: Path, expected: cfglib.Config, what: str) -> None:
    """Refuse to reuse ``run_dir`` if its ``config.json`` differs from ``expected`` in a key that
    changes results (anything but :data:`RUN_LOCAL_KEYS`).

    Raises:
        StudyError: naming the first differing key, with both values.
    """
    try:
        saved = cfglib.flatten(cfglib.from_dict(read_json(run_dir / "config.json")["config"]))
    except (KeyError, TypeError, cfglib.ConfigError, RunDirError) as err:
        raise StudyError(f"{run_dir} does not hold a readable run ({err}); use another "
                         "--out") from None
    wanted = cfglib.flatten(expected)
    for key in wanted:
        if key not in RUN_LOCAL_KEYS and saved.get(key) != wanted[key]:
            raise StudyError(f"{what} in {run_dir} was trained with {key}={saved.get(key)!r}, "
                             f"this study asks for {wanted[key]!r}; use another --out")


def prepare_reuse(run_dir: Path, expected: cfglib.Config, iterations: int, what: str,
                  log: Callable[[str], None]) -> int:
    """The iterations ``run_dir`` holds, once it is checked to be the run asked for (0: train it
    from scratch; a folder left by a run stopped before its first checkpoint is removed).

    Raises:
        StudyError: another config, or more iterations than asked.
    """
    if not (run_dir / "config.json").exists():
        return 0
    done = completed_iterations(run_dir)
    if done == 0 and not has_resumable_checkpoint(run_dir / "checkpoints"):
        log(f"{what}: {run_dir} stopped before its first checkpoint; starting it again")
        shutil.rmtree(run_dir)
        return 0
    check_same_config(run_dir, expected, what)
    if done > iterations:
        raise StudyError(f"{what} in {run_dir} has trained {done} iterations, more than the "
                         f"{iterations} asked; ask for {done} or use another --out")
    return done


def maml_config(preset: str, seed: int, overrides: Sequence[str]) -> cfglib.Config:
    """The config ``adaptbed train --preset P --seed S OVERRIDES`` trains with."""
    return cfglib.apply_overrides(get_preset(preset), [*overrides, f"run.seed={seed}"])


def train_seed(preset: str, seed: int, iterations: int, overrides: Sequence[str],
               run_dir: Path, quiet: bool, log: Callable[[str], None]) -> None:
    """Train (or resume, or reuse) the MAML run of one seed."""
    from experiments import train

    what = f"maml seed {seed}"
    done = prepare_reuse(run_dir, maml_config(preset, seed, overrides), iterations, what, log)
    if done == iterations:
        log(f"{what}: reusing {run_dir} ({done} iterations)")
        return
    if done > 0:
        log(f"{what}: resuming {run_dir} at iteration {done}")
        argv = ["--resume", "--run-dir", str(run_dir), "--iterations", str(iterations)]
    else:
        log(f"{what}: training {iterations} iterations into {run_dir}")
        argv = ["--preset", preset, "--seed", str(seed), "--iterations", str(iterations),
                "--run-dir", str(run_dir), *overrides]
    call(train.main, [*argv, "--quiet"], quiet)


def oracle_budget(preset: str, timesteps: int | None) -> int:
    """The env steps ``adaptbed baseline oracle`` trains for (its default when None)."""
    from experiments.baselines import DEFAULT_ORACLE_TIMESTEPS, ORACLE_TIMESTEPS

    return timesteps if timesteps is not None else ORACLE_TIMESTEPS.get(preset,
                                                                        DEFAULT_ORACLE_TIMESTEPS)


def train_baselines(preset: str, names: Sequence[str], out: Path, seed: int, iterations: int,
                    oracle_timesteps: int | None, overrides: Sequence[str], quiet: bool,
                    log: Callable[[str], None]) -> None:
    """Train the pretrained and oracle baselines once into ``out``: reused when finished with
    the settings asked for, resumed when unfinished, refused when trained otherwise."""
    from experiments import baselines, train

    if "pretrained" in names:
        path = out / "pretrained"
        expected = baselines.pretrained_config(preset, overrides, iterations, seed, path, True)
        done = prepare_reuse(path, expected, iterations, "the pretrained baseline", log)
        if done == iterations:
            log(f"pretrained: reusing {path}")
        elif done > 0:
            log(f"pretrained: resuming {path} at iteration {done}")
            call(train.main, ["--resume", "--run-dir", str(path), "--iterations",
                              str(iterations), "--quiet"], quiet)
        else:
            log(f"pretrained: training {iterations} iterations into {path}")
            call(baselines.main, ["pretrained", "--preset", preset, "--seed", str(seed),
                                  "--iterations", str(iterations), "--out", str(path),
                                  "--quiet", *overrides], quiet)
    if "oracle" in names:
        path = out / "oracle"
        budget = oracle_budget(preset, oracle_timesteps)
        for name in (baselines.ORACLE_JSON, baselines.PARTIAL_JSON):
            if (path / name).exists():
                meta = read_json(path / name)
                if (meta.get("timesteps"), meta.get("seed")) != (budget, seed):
                    raise StudyError(f"the oracle in {path} was trained for {meta.get('timesteps')} "
                                     f"timesteps with seed {meta.get('seed')}, this study asks "
                                     f"for {budget} with seed {seed}; use another --out")
        if (path / baselines.ORACLE_ZIP).exists() and (path / baselines.ORACLE_JSON).exists():
            log(f"oracle: reusing {path}")
        elif (path / baselines.PARTIAL_JSON).exists():
            log(f"oracle: resuming the unfinished oracle in {path}")
            call(baselines.main, ["oracle", "--preset", preset, "--out", str(path), "--resume",
                                  "--quiet"], quiet)
        else:
            log(f"oracle: training into {path}")
            call(baselines.main, ["oracle", "--preset", preset, "--seed", str(seed),
                                  "--out", str(path), "--force", "--quiet", "--timesteps",
                                  str(budget)], quiet)


def family_splits(family_name: str) -> list[str]:
    """``test``, and ``ood`` when the family has one."""
    env = make(family_name)
    try:
        env.unwrapped.sample_ood_tasks(1, np.random.default_rng(0))
        return ["test", "ood"]
    except TaskError:
        return ["test"]
    finally:
        env.close()


# --- the report --------------------------------------------------------------------------------
def combine(docs: Sequence[tuple[str, dict]]) -> dict:
    """One evaluation document from several runs: ``maml`` pooled over the runs (per-task
    values averaged over runs first), the first run's baselines, each run's curve in ``runs``."""
    first = docs[0][1]
    curves = [doc["agents"]["maml"] for _, doc in docs]
    pooled = {**summarize([c["per_task"] for c in curves], curves[0]["steps"]), "kind": "curve"}
    pooled["seed_means"] = [c["mean"] for c in curves]
    agents = {"maml": pooled, **{k: v for k, v in first["agents"].items() if k != "maml"}}
    return {**{k: v for k, v in first.items() if k not in ("agents", "command")},
            "agents": agents, "runs": {name: doc["agents"]["maml"] for name, doc in docs},
            "seed_aggregation": "maml: per-task values averaged over the training seeds, then "
                                "mean and 95% CI over tasks; baselines: evaluated once"}


def markdown_table(doc: dict, run_names: Sequence[str]) -> str:
    """Agent x number of gradient steps, ``mean ± ci95`` (``-`` where an agent has no value)."""
    steps = doc["agents"]["maml"]["steps"]
    head = ["agent", *[f"after {k} step{'' if k == 1 else 's'}" for k in steps]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(label: str, result: dict) -> str:
        cells = {k: mean_ci_text(m, c) for k, m, c in
                 zip(result["steps"], result["mean"], result["ci95"])}
        return "| " + " | ".join([label, *[cells.get(k, "-") for k in steps]]) + " |"

    n = len(run_names)
    lines.append(row(f"MAML ({n} seed{'s' if n > 1 else ''} pooled)", doc["agents"]["maml"]))
    if n > 1:
        lines += [row(f"MAML {name}", doc["runs"][name]) for name in run_names]
    for name, result in doc["agents"].items():
        if name != "maml":
            suffix = " (no adaptation)" if result.get("kind") == "flat" else ""
            lines.append(row(agent_label(name, result) + suffix, result))
    return "\n".join(lines)


def report_text(preset: str, settings: dict[str, Any], splits: dict[str, dict],
                run_names: Sequence[str], command: str) -> str:
    """The Markdown of ``report.md``."""
    first = next(iter(splits.values()))
    sizes = ", ".join(f"{k} {v}" for k, v in settings.items())
    lines = [f"# Study: {preset} ({first['family']})", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M')} by `{command}`.", "",
             f"Budgets: {sizes}.", "",
             f"Protocol (MAML paper, Fig. 5): per held-out task, {first['inner_steps']} "
             f"policy-gradient step(s) from {first['episodes_per_step']} episodes each (step "
             f"sizes {', '.join(map(str, first['step_sizes']))}), return measured on fresh "
             "episodes after every step; mean ± 95% CI over tasks. MAML pools the seeds "
             "(each task averaged over seeds first). PPO from scratch is trained per task with "
             "the stated env steps and reported at the last step; the oracle observes the task "
             "and is not adapted.", ""]
    for split, doc in splits.items():
        lines += [f"## {split} split ({len(doc['tasks'])} tasks)", "",
                  markdown_table(doc, run_names), "", f"![{split}]({split}.png)", ""]
    lines += ["## Files", "",
              *[f"- `{name}/`: MAML run (its own `eval/<split>.json`)" for name in run_names],
              "- `baselines/pretrained/`, `baselines/oracle/`: the baselines",
              f"- {', '.join(f'`{s}.json`' for s in splits)}: the combined results "
              "(schema of `adaptbed evaluate`)", ""]
    return "\n".join(lines)


# --- command line ------------------------------------------------------------------------------
def parser() -> Parser:
    p = Parser(
        prog="adaptbed study", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train MAML for several seeds and the baselines once, evaluate everything "
                    "on the held-out splits and write a Markdown report.",
        epilog="Re-running the same command reuses finished runs and baselines.")
    p.add_argument("--preset", required=True, help="preset (task family), e.g. navigation-2d")
    p.add_argument("--seeds", type=seed_arg, nargs="+", default=[0, 1, 2], help="default 0 1 2")
    p.add_argument("--iterations", type=int, help="MAML meta-iterations (default: the preset's)")
    p.add_argument("--baseline-iterations", type=int,
                   help="iterations of the pretrained baseline (default: --iterations)")
    p.add_argument("--oracle-timesteps", type=int,
                   help="oracle env steps (default: adaptbed baseline oracle's)")
    p.add_argument("--out", type=Path, help="study folder (default runs/study-<preset>)")
    p.add_argument("--inner-steps", type=int, default=3, help="adaptation steps K (default 3)")
    p.add_argument("--episodes-per-step", type=int,
                   help="episodes per step (default: the runs' maml.episodes_per_task)")
    p.add_argument("--baselines", default="pretrained,random,ppo,oracle",
                   help="default pretrained,random,ppo,oracle")
    p.add_argument("--ppo-budgets", default="1", help="PPO budget multiples (default 1)")
    p.add_argument("--max-tasks", type=int, help="evaluate the first M tasks of each split only")
    p.add_argument("--eval-seed", type=seed_arg, default=0, help="evaluation seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides for MAML and the pretrained baseline")
    return p


def validate(args: argparse.Namespace) -> tuple[cfglib.Config, list[str]]:
    """The MAML config of seed 0 (validated) and the requested baselines.

    Raises:
        ConfigError, RunDirError: one-line messages.
    """
    from experiments.evaluate import parse_baselines, parse_budgets

    cfglib.check_command_line_overrides(args.overrides)
    cfg = cfglib.apply_overrides(get_preset(args.preset), list(args.overrides))
    if args.iterations is not None:
        cfg = cfglib.apply_overrides(cfg, [f"run.iterations={args.iterations}"])
    cfglib.validate(cfg)
    if len(set(args.seeds)) != len(args.seeds):
        raise StudyError(f"--seeds must be distinct, got {args.seeds}")
    for flag in ("baseline_iterations", "oracle_timesteps", "max_tasks", "episodes_per_step"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise StudyError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if args.inner_steps < 1:
        raise StudyError(f"--inner-steps must be at least 1, got {args.inner_steps}")
    parse_budgets(args.ppo_budgets)
    names = parse_baselines(args.baselines)
    if "pretrained" in names:  # its own checks (no inner steps), before any training
        from experiments.baselines import pretrained_config

        pretrained_config(args.preset, args.overrides, args.baseline_iterations, args.seeds[0],
                          Path("unused"), True)
    return cfg, names


def evaluate_runs(run_dirs: Sequence[Path], split: str, args: argparse.Namespace,
                  names: Sequence[str], baseline_dir: Path) -> list[tuple[str, dict]]:
    """``adaptbed evaluate`` of every run on ``split``: the first with the baselines."""
    from experiments import evaluate

    common = ["--split", split, "--inner-steps", str(args.inner_steps), "--seeds",
              str(args.eval_seed), "--baseline-dir", str(baseline_dir), "--ppo-budgets",
              args.ppo_budgets, "--quiet"]
    for flag, value in (("--episodes-per-step", args.episodes_per_step),
                        ("--max-tasks", args.max_tasks)):
        if value is not None:
            common += [flag, str(value)]
    docs = []
    for i, run_dir in enumerate(run_dirs):
        baselines = ["--baselines", ",".join(names)] if i == 0 and names else []
        call(evaluate.main, [str(run_dir), *common, *baselines], args.quiet)
        docs.append((run_dir.name, read_evaluation(run_dir, split)))
    return docs


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    try:
        cfg, names = validate(args)
        out = args.out or Path("runs") / f"study-{args.preset}"
        iterations = cfg.run.iterations
        run_dirs = [out / f"maml-s{seed}" for seed in args.seeds]
        for seed, run_dir in zip(args.seeds, run_dirs):
            train_seed(args.preset, seed, iterations, args.overrides, run_dir, args.quiet, log)
        baseline_dir = out / "baselines"
        train_baselines(args.preset, names, baseline_dir, args.seeds[0],
                        args.baseline_iterations or iterations, args.oracle_timesteps,
                        args.overrides, args.quiet, log)
        splits = {}
        for split in family_splits(cfg.env.family):
            log(f"evaluating {len(run_dirs)} run(s) on the {split} split ...")
            splits[split] = combine(evaluate_runs(run_dirs, split, args, names, baseline_dir))
        settings = {"MAML iterations": iterations, "seeds": " ".join(map(str, args.seeds)),
                    "pretrained iterations": args.baseline_iterations or iterations,
                    "oracle timesteps": oracle_budget(args.preset, args.oracle_timesteps),
                    "overrides": " ".join(args.overrides) or "none"}
        command = shlex.join(["adaptbed", "study", *argv])
        for split, doc in splits.items():
            atomic_write_text(out / f"{split}.json", json.dumps(doc, indent=2) + "\n")
            save_png(evaluation_figure(doc), out / f"{split}.png")
        report = report_text(args.preset, settings, splits, [d.name for d in run_dirs], command)
        atomic_write_text(out / "report.md", report)
    except (StudyError, RunDirError, cfglib.ConfigError, TaskError) as err:
        print(f"adaptbed study: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"adaptbed study: error: {err.strerror}: {err.filename}", file=sys.stderr)
        return 2
    print(report)
    print(f"report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
