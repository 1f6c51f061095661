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
