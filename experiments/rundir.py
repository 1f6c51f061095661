"""The run directory: everything a run produces, written so that nothing is lost on a crash.

Layout::

    RUN_DIR/
      config.json            resolved config + package versions + git commit
      progress.csv           one row per meta-iteration (mirrors the TensorBoard scalars)
      tb/                    TensorBoard event files
      checkpoints/latest.pt  policy, outer-optimizer state, iteration, env steps, ...
      checkpoints/best.pt    the same, for the best post-adaptation return so far
      eval/                  evaluation results
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import torch

CHECKPOINT_VERSION = 1


class RunDirError(ValueError):
    """A run directory that cannot be used as asked (one-line message)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename: all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """``torch.save`` of ``state`` (plus a format version), atomically."""
    buffer = io.BytesIO()
    torch.save({"version": CHECKPOINT_VERSION, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` onto the CPU.

    Raises:
        RunDirError: missing, unreadable or of another format version.
    """
    if not path.exists():
        raise RunDirError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated or corrupted file
        raise RunDirError(f"checkpoint {path} is unreadable ({type(err).__name__})") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise RunDirError(f"checkpoint {path} has an unknown format")
    return state


def environment_info() -> dict[str, Any]:
    """Package versions, Python, platform and git commit, recorded next to the config."""
    versions = {}
    for name in ("adaptbed", "torch", "numpy", "gymnasium", "mujoco", "stable-baselines3",
                 "tensorboard"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"packages": versions, "python": platform.python_version(),
            "platform": platform.platform(), "git_commit": git_commit()}


def git_commit() -> str | None:
    """The commit of the adaptbed checkout, if it is one (``+dirty`` with local changes)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


class CsvLog:
    """``progress.csv``: one row per iteration, columns fixed by the first row.

    On resume, rows at or beyond the resumed iteration (written after the last checkpoint,
    before a crash) are dropped, so the file never holds duplicated or missing iterations.
    """

    def __init__(self, path: Path, start_iteration: int):
        self.path = path
        self.columns: list[str] | None = None
        if path.exists():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or []) or None
                rows = [r for r in reader if int(float(r["iteration"])) < start_iteration]
            self._rewrite(rows)

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        out = io.StringIO()
        if self.columns:
            writer = csv.DictWriter(out, self.columns)
            writer.writeheader()
            writer.writerows(rows)
        atomic_write_text(self.path, out.getvalue())

    def write(self, row: Mapping[str, float]) -> None:
        if self.columns is None:
            self.columns = list(row)
            with self.path.open("w", newline="") as f:
                csv.DictWriter(f, self.columns).writeheader()
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.columns, extrasaction="ignore").writerow(
                {k: _format(row[k]) if k in row else "" for k in self.columns})
            f.flush()
            os.fsync(f.fileno())


def _format(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RunDirError(f"cannot read {path}: {err}") from None
