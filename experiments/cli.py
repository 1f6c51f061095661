"""The ``adaptbed`` console script: one subcommand per user-facing script in ``experiments/``."""

from __future__ import annotations

import importlib
import sys
from typing import Sequence

COMMANDS = {
    "envs": ("experiments.envs_table", "list the task families and their splits"),
    "train": ("experiments.train", "meta-train a policy (MAML) on a task family"),
    "quickstart": ("experiments.quickstart", "meta-train navigation-2d and evaluate it (~5 min)"),
    "sinusoid": ("experiments.sinusoid", "MAML on the sinusoid regression benchmark"),
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
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
