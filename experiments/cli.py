"""The ``adaptbed`` console script: one subcommand per user-facing script in ``experiments/``."""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

from experiments.cliutil import route_mujoco_warnings
from experiments.memory import keep_freed_memory

COMMANDS = {
    "envs": ("experiments.envs_table", "list the task families and their splits"),
    "train": ("experiments.train", "meta-train a policy (MAML) on a task family"),
    "quickstart": ("experiments.quickstart", "meta-train navigation-2d and evaluate it (2-3 min)"),
    "sinusoid": ("experiments.sinusoid", "MAML on the sinusoid regression benchmark"),
    "evaluate": ("experiments.evaluate", "adaptation curves on held-out tasks, with baselines"),
    "adapt": ("experiments.adapt", "adapt a meta-trained policy to one given task and save it"),
    "rollout": ("experiments.rollout", "evaluate (and optionally render) a saved policy"),
    "summary": ("experiments.summary", "what a training run did: returns, time, throughput"),
    "plot": ("experiments.plot", "overlay the adaptation curves (or training curves) of runs"),
    "baseline": ("experiments.baselines", "train the pretrained / oracle baselines of a family"),
    "study": ("experiments.study", "train and evaluate MAML and every baseline; Markdown report"),
    "bench": ("experiments.bench", "sampler throughput against the physics limit (JSON)"),
}


def usage() -> str:
    lines = ["usage: adaptbed COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<11} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "`adaptbed COMMAND --help` describes each command."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"adaptbed: error: unknown command {name!r}; known: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    keep_freed_memory()  # fewer page faults in the tensor-heavy steps (experiments.memory)
    route_mujoco_warnings()  # to stderr, not stdout and ./MUJOCO_LOG.TXT
    try:
        module = importlib.import_module(COMMANDS[name][0])
    except ModuleNotFoundError as err:
        if err.name != COMMANDS[name][0]:
            raise
        print(f"adaptbed: error: {name!r} is not available yet in this version", file=sys.stderr)
        return 2
    try:
        return int(module.main(rest) or 0)
    except SystemExit as done:  # argparse's exits, so that main() is callable in-process
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)


if __name__ == "__main__":
    sys.exit(main())
