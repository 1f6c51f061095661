"""Shared command-line plumbing: argument errors in one line, exit code 2, no usage dump."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line: ``PROG: error: MESSAGE (see --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def fail(prog: str, message: str, code: int = 2) -> int:
    """Print ``PROG: error: MESSAGE`` on stderr and return ``code`` (for ``return fail(...)``)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


#: Seeds reach ``numpy.random.SeedSequence`` (non-negative), ``torch.manual_seed`` and, for the
#: SB3 baselines, numpy's legacy ``np.random.seed`` (below 2**32): one range for every command.
MAX_SEED = 2**32 - 1


def seed(text: str) -> int:
    """``argparse`` type of a seed: an integer in ``[0, 2**32 - 1]`` (else a one-line error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a seed must be an integer; got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed must be in [0, 2**32 - 1]; got {value}")
    return value


#: MuJoCo warnings shown per process; the rest are counted only (a diverging meta-batch can warn
#: once per environment and step).
MUJOCO_WARNINGS_SHOWN = 5


class MujocoWarnings:
    """MuJoCo's warnings on stderr, ``MUJOCO_WARNINGS_SHOWN`` at most, instead of MuJoCo's default:
    stdout (mixed with a command's JSON result) and a ``MUJOCO_LOG.TXT`` in the current folder.

    The simulators detect divergence from MuJoCo's warning counters, not from these messages,
    so routing them changes no result. MuJoCo calls the handler from any thread.
    """

    def __init__(self, prog: str = "adaptbed"):
        self.prog, self.count = prog, 0

    def __call__(self, message: str) -> None:
        self.count += 1
        if self.count <= MUJOCO_WARNINGS_SHOWN:
            print(f"{self.prog}: MuJoCo warning: {message}", file=sys.stderr)
        if self.count == MUJOCO_WARNINGS_SHOWN:
            print(f"{self.prog}: further MuJoCo warnings are not shown (an unstable simulation "
                  "ends its episode: see charts/unstable_episodes)", file=sys.stderr)


def route_mujoco_warnings(prog: str = "adaptbed") -> None:
    """Install :class:`MujocoWarnings` as MuJoCo's warning handler (the commands do, at start)."""
    import mujoco

    mujoco.set_mju_user_warning(MujocoWarnings(prog))
