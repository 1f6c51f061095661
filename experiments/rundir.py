"""The run directory: everything a run produces, written so that nothing is lost on a crash.

Layout::

    RUN_DIR/
      config.json            resolved config + package versions + git commit
      progress.csv           one row per meta-iteration (mirrors the TensorBoard scalars)
      timing.csv             one row per meta-iteration: the wall-clock scalars
      tb/                    TensorBoard event files
      checkpoints/latest.pt  policy, outer-optimizer state, iteration, env steps, ...
      checkpoints/best.pt    the parameters that sampled the best post-adaptation return so far
                             (before that iteration's outer step)
      checkpoints/previous.pt  the checkpoint latest.pt replaced (a fallback if it is damaged)
      checkpoints/iteration-<k>.pt  kept every run.keep_every iterations
      eval/                  evaluation results
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

CHECKPOINT_VERSION = 1
CONFIG_FORMAT = 1  # format of config.json; bumped on incompatible changes


class RunDirError(ValueError):
    """A run directory that cannot be used as asked (one-line message)."""


def _read_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


#: The process's umask, read once at import (reading it means setting it for an instant).
_UMASK = _read_umask()


def _file_mode() -> int:
    """The mode ``open`` gives a new file under the process's umask (e.g. 0644 for 022)."""
    return 0o666 & ~_UMASK


def fsync_dir(folder: Path) -> None:
    """Make the renames in ``folder`` durable (best effort: not every system can)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename: all or nothing.

    The file gets the mode a plain ``open`` would (the umask's), not ``mkstemp``'s 0600, so
    that other users and tools can read results as they can the CSV logs.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


CHECKPOINT_MAGIC = b"ADAPTBED-CHECKPOINT\n"


def save_checkpoint(path: Path, state: Mapping[str, Any], keep_previous: bool = False) -> None:
    """``torch.save`` of ``state`` behind a magic line and a SHA-256 of the payload, atomically.

    With ``keep_previous`` the checkpoint being replaced is kept as ``previous.pt`` beside it,
    so a checkpoint damaged after it was written still leaves a good one to resume from.
    ``path`` exists at every moment: the old file is linked (or copied) to ``previous.pt``
    first, then the new one renamed over it, so a crash in between loses nothing.
    """
    buffer = io.BytesIO()
    torch.save({"version": CHECKPOINT_VERSION, **state}, buffer)
    payload = buffer.getvalue()
    data = CHECKPOINT_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload
    if keep_previous and path.exists():
        _keep_as_previous(path)
    atomic_write_bytes(path, data)


def _keep_as_previous(path: Path) -> None:
    """``previous.pt`` := the current ``path``, atomically, leaving ``path`` in place."""
    previous = path.with_name("previous.pt")
    staged = path.with_name(".staged-previous.pt")
    staged.unlink(missing_ok=True)
    try:
        os.link(path, staged)  # a second name for the same file: nothing copied
    except OSError:  # a file system without hard links
        atomic_write_bytes(previous, path.read_bytes())
        return
    os.replace(staged, previous)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` onto the CPU, checking its checksum.

    Raises:
        RunDirError: missing, truncated, corrupted (checksum mismatch) or of another version.
    """
    if not path.exists():
        raise RunDirError(f"no checkpoint at {path}")
    data = path.read_bytes()
    header_end = len(CHECKPOINT_MAGIC) + 65
    if not data.startswith(CHECKPOINT_MAGIC) or len(data) < header_end:
        raise RunDirError(f"checkpoint {path} is not an adaptbed checkpoint (or is truncated)")
    digest, payload = data[len(CHECKPOINT_MAGIC):header_end - 1].decode(errors="replace"), data[header_end:]
    if hashlib.sha256(payload).hexdigest() != digest:
        raise RunDirError(f"checkpoint {path} is corrupted (checksum mismatch)")
    try:
        # tensors and plain containers only: unpickling a checkpoint runs no code
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means unusable
        raise RunDirError(f"checkpoint {path} is unreadable ({type(err).__name__})") from None
    if not isinstance(state, dict):
        raise RunDirError(f"checkpoint {path} holds a {type(state).__name__}, not a checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise RunDirError(f"checkpoint {path} has format version {state.get('version')!r}; "
                          f"this adaptbed reads version {CHECKPOINT_VERSION}")
    return state


def has_resumable_checkpoint(checkpoints: Path) -> bool:
    """Whether ``checkpoints`` holds a ``latest.pt`` or ``previous.pt`` (what a resume reads;
    ``best.pt`` and kept ``iteration-<k>.pt`` are not resumed from)."""
    return any((checkpoints / name).exists() for name in ("latest.pt", "previous.pt"))


def load_latest_checkpoint(checkpoints: Path) -> tuple[dict[str, Any], str | None]:
    """The newest good checkpoint of a run: ``latest.pt``, else ``previous.pt``.

    Returns:
        the state, and a one-line warning when ``latest.pt`` was unusable.
    Raises:
        RunDirError: neither is usable (the message names both problems).
    """
    try:
        return load_checkpoint(checkpoints / "latest.pt"), None
    except RunDirError as latest_error:
        try:
            state = load_checkpoint(checkpoints / "previous.pt")
        except RunDirError as previous_error:
            raise RunDirError(f"{latest_error}; {previous_error}") from None
        return state, (f"{latest_error}; resuming from previous.pt "
                       f"(iteration {state['iteration']})")


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


def read_csv_columns(path: Path) -> dict[str, list[float]]:
    """A numeric CSV log (``progress.csv``, ``timing.csv``) as columns of floats; an empty cell
    (a column that appeared later) reads as NaN.

    Raises:
        RunDirError: missing, unreadable, empty or not numeric.
    """
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            raise ValueError("no rows")
        return {k: [float(r[k]) if r[k] not in ("", None) else math.nan for r in rows]
                for k in rows[0]}
    except (OSError, ValueError, TypeError) as err:
        raise RunDirError(f"cannot read {path} as a numeric log ({err})") from None


def adaptation_columns(progress: Mapping[str, Sequence[float]]) -> tuple[str, str]:
    """The before- and after-adaptation return columns: ``return_step_0`` and the last step's."""
    steps = sorted(int(k.rsplit("_", 1)[1]) for k in progress if k.startswith("return_step_"))
    if not steps:
        raise ValueError("no return_step_* columns")
    return f"return_step_{steps[0]}", f"return_step_{steps[-1]}"


def read_progress(run_dir: Path) -> dict[str, list[float]]:
    """``RUN_DIR/progress.csv`` as columns of floats.

    Raises:
        RunDirError: missing (naming the command that writes it), unreadable or without
            adaptation returns.
    """
    path = run_dir / "progress.csv"
    if not path.exists():
        raise RunDirError(f"{path} does not exist; `adaptbed train --run-dir {run_dir}` writes it")
    columns = read_csv_columns(path)
    try:
        adaptation_columns(columns)
    except (ValueError, IndexError):
        raise RunDirError(f"{path} is not a progress log written by `adaptbed train` "
                          "(no return_step_* columns)") from None
    return columns


class CsvLog:
    """``progress.csv`` or ``timing.csv``: one row per iteration; a key first seen later adds a
    column.

    On resume, rows at or beyond the resumed iteration (written after the last checkpoint,
    before a crash) are dropped, so the file never holds duplicated or missing iterations; so is
    a last row torn by the crash (an incomplete line).

    Raises:
        RunDirError: a row other than the last is malformed.
    """

    def __init__(self, path: Path, start_iteration: int):
        self.path = path
        self.columns: list[str] | None = None
        if path.exists():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or []) or None
                rows = list(reader)
            if rows and _row_iteration(rows[-1]) is None:
                rows.pop()  # a row torn by a crash: always one after the last checkpoint
            for number, row in enumerate(rows, start=2):
                if _row_iteration(row) is None:
                    raise RunDirError(f"{path}, line {number}: not a row written by adaptbed "
                                      "train (no iteration number)")
            self._rewrite([r for r in rows if _row_iteration(r) < start_iteration])

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
        new = [k for k in row if k not in self.columns]
        if new:  # a key first seen now (e.g. after an iteration without an outer step)
            with self.path.open(newline="") as f:
                rows = list(csv.DictReader(f))
            self.columns += new
            self._rewrite(rows)
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.columns, extrasaction="ignore").writerow(
                {k: _format(row[k]) if k in row else "" for k in self.columns})
            f.flush()
            os.fsync(f.fileno())


def _row_iteration(row: Mapping[str, str | None]) -> int | None:
    """The iteration of a CSV row, None for a malformed or incomplete (torn) one."""
    if None in row or any(v is None for v in row.values()):  # fewer or more cells than columns
        return None
    try:
        return int(float(row["iteration"]))
    except (KeyError, TypeError, ValueError):
        return None


def _format(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RunDirError(f"cannot read {path}: {err}") from None
