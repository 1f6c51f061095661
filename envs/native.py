"""The native stepping loop of :class:`envs.mujoco_batch.MujocoBatchEnv` (``envs/mjbatch.c``).

The batched simulator's Python loop holds the GIL for every environment's control write, MuJoCo
call and state copy; on 2 cores that serial work kept the sampler at 0.41-0.70 of the physics
limit. ``envs/mjbatch.c`` runs the same loop in C on its own thread pool, with the GIL released
for the whole step (``ctypes`` releases it around foreign calls): per environment it writes the
control, calls ``mj_step`` ``frame_skip`` times and ``mj_rnePostConstraint`` where asked, then
copies the fields the observation and reward need into batch arrays. It calls the very
``mj_step`` of the ``libmujoco`` that the ``mujoco`` package loaded, on the same ``MjData``, so
the results are bit for bit those of the Python loop (``tests/envs/test_native.py``).

Building:
    The C file is compiled once per source version with the system C compiler (``$CC``, else
    ``cc``; ``-O2 -shared -fPIC -pthread``) into ``$ADAPTBED_CACHE`` (default
    ``~/.cache/adaptbed``), on first use; nothing is downloaded. Without a compiler, or when the
    build or load fails, :func:`library` returns ``None``, :func:`unavailable_reason` says why,
    and the simulator falls back to its Python loop (same results, slower). Set
    ``ADAPTBED_NATIVE=0`` to force the Python loop.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import mujoco
import numpy as np

SOURCE = Path(__file__).with_name("mjbatch.c")
#: Bytes of the message buffer ``mjb_step`` fills on a MuJoCo fatal error.
MESSAGE_BYTES = 512

_reason: str | None = None


def cache_dir() -> Path:
    """Where the compiled library is kept (``$ADAPTBED_CACHE`` or ``~/.cache/adaptbed``)."""
    return Path(os.environ.get("ADAPTBED_CACHE", Path.home() / ".cache" / "adaptbed"))


def enabled() -> bool:
    """False when ``ADAPTBED_NATIVE=0`` asks for the Python loop."""
    return os.environ.get("ADAPTBED_NATIVE", "1") != "0"


def unavailable_reason() -> str | None:
    """Why :func:`library` returned ``None`` (``None`` when it did not, or was not asked)."""
    return _reason


def _library_path() -> Path:
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    tag = f"{sys.platform}-{os.uname().machine}" if hasattr(os, "uname") else sys.platform
    return cache_dir() / f"mjbatch-{digest}-{tag}.so"


def _compile(target: Path) -> None:
    """Compile ``SOURCE`` into ``target`` atomically (another process may race us)."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        cmd = [compiler, "-O2", "-std=c11", "-shared", "-fPIC", "-pthread", str(SOURCE), "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr.strip()}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class Library:
    """The loaded C library and the MuJoCo entry points it is handed."""

    def __init__(self, path: Path):
        self.lib = ctypes.CDLL(str(path))
        self.lib.mjb_pool_new.restype = ctypes.c_void_p
        self.lib.mjb_pool_new.argtypes = [ctypes.c_int]
        self.lib.mjb_pool_free.restype = None
        self.lib.mjb_pool_free.argtypes = [ctypes.c_void_p]
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        self.lib.mjb_step.restype = i64
        self.lib.mjb_step.argtypes = [p, ctypes.c_int, i64, p, p, p, p, i64, i64, i64,
                                      p, p, p, p, p, i64, p, p, p, p]
        mj = ctypes.CDLL(_libmujoco_path())  # already loaded by `mujoco`: the same instance

        def address(name: str) -> int:
            return ctypes.cast(getattr(mj, name), ctypes.c_void_p).value

        self.mj_step = address("mj_step")
        self.mj_rne_post_constraint = address("mj_rnePostConstraint")
        self.set_tls_error = address("_mjPRIVATE__set_tls_error_fn")
        self.get_tls_error = address("_mjPRIVATE__get_tls_error_fn")


def _libmujoco_path() -> str:
    folder = Path(mujoco.__file__).parent
    candidates = sorted(folder.glob("libmujoco.so*")) + sorted(folder.glob("libmujoco*.dylib"))
    if not candidates:
        raise RuntimeError(f"no libmujoco shared library next to {mujoco.__file__}")
    return str(candidates[0])


def build() -> Path:
    """Compile the library unless the cache already holds this source's build; its path.

    Raises:
        RuntimeError: no C compiler, or the compiler failed (its message included).
        OSError: the cache directory cannot be written.
    """
    path = _library_path()
    if not path.exists():
        _compile(path)
    return path


@functools.lru_cache(maxsize=1)
def library() -> Library | None:
    """The compiled library (built on first use), or ``None`` when it cannot be had."""
    global _reason
    _reason = None
    if not enabled():
        _reason = "ADAPTBED_NATIVE=0"
        return None
    try:
        return Library(build())
    except (OSError, RuntimeError, AttributeError) as err:
        _reason = f"{type(err).__name__}: {err}"
        return None


def main() -> int:
    """``python -m envs.native``: build and load the library; exit 1 (with why) if it fails."""
    lib = library()
    if lib is None:
        print(f"native stepping loop unavailable: {unavailable_reason()}", file=sys.stderr)
        return 1
    print(f"native stepping loop: {_library_path()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


class Stepper:
    """Steps a fixed list of ``(model, data)`` pairs and gathers fields, via ``mjb_step``.

    Args:
        lib: the loaded :class:`Library`.
        num_threads: threads per step, the calling one included.
        models, datas: ``B`` models (may repeat) and ``B`` distinct ``MjData``.
        ctrl: ``B`` float64 views ``[nu]`` of ``data.ctrl``.
        fields: name -> ``B`` C-contiguous numpy views into the ``MjData``s, all of one shape
            and dtype per name; :meth:`step` copies them into ``[B, *shape]`` arrays.
        nstep: ``mj_step`` calls per environment step (the frame skip).
        contacts: call ``mj_rnePostConstraint`` after the steps (fills ``cfrc_ext``).
    """

    def __init__(self, lib: Library, num_threads: int, models: Sequence[mujoco.MjModel],
                 datas: Sequence[mujoco.MjData], ctrl: Sequence[np.ndarray],
                 fields: dict[str, Sequence[np.ndarray]], nstep: int, contacts: bool):
        self.lib, self.num_threads, self.nstep = lib, num_threads, nstep
        self.num_envs = len(datas)
        self.nu = int(ctrl[0].shape[0])
        self.post = lib.mj_rne_post_constraint if contacts else None
        self._datas = list(datas)  # keep the MjData alive as long as their addresses are used
        self._datas_addr = np.array([d._address for d in datas], dtype=np.uintp)
        self._ctrl_addr = np.array([c.ctypes.data for c in ctrl], dtype=np.uintp)
        self.set_models(models)
        self._names = list(fields)
        self._out = {name: np.empty((self.num_envs, *views[0].shape), dtype=views[0].dtype)
                     for name, views in fields.items()}
        for name, views in fields.items():
            if not all(v.flags.c_contiguous for v in views):
                raise ValueError(f"field {name!r}: every view must be C-contiguous")
        self._src = np.array([v.ctypes.data for name in self._names for v in fields[name]],
                             dtype=np.uintp)
        self._dst = np.array([self._out[name].ctypes.data for name in self._names],
                             dtype=np.uintp)
        self._size = np.array([self._out[name][0].nbytes for name in self._names],
                              dtype=np.int64)
        self._message = ctypes.create_string_buffer(MESSAGE_BYTES)
        self._pool: int | None = None
        self._new_pool()

    def _new_pool(self) -> None:
        self._pool = self.lib.lib.mjb_pool_new(self.num_threads)
        if not self._pool:
            raise MemoryError("mjb_pool_new failed")
        self._pid = os.getpid()

    def set_models(self, models: Sequence[mujoco.MjModel]) -> None:
        """The ``B`` models to step with (they must outlive their use)."""
        self._models = list(models)
        self._models_addr = np.array([m._address for m in models], dtype=np.uintp)

    def step(self, actions: np.ndarray, running: np.ndarray, threads: int,
             block: int) -> dict[str, np.ndarray]:
        """Step the running envs with ``actions [B, nu]`` (float64), gather every field.

        Returns:
            name -> ``[B, *shape]`` arrays (reused by the next call: copy what must outlive it).
        Raises:
            RuntimeError: MuJoCo raised a fatal error stepping an environment.
        """
        if self._pool is None:
            raise RuntimeError("this Stepper is closed")
        if os.getpid() != self._pid:  # a forked child: the pool's threads stayed in the parent
            self._new_pool()
        acts = np.ascontiguousarray(actions, dtype=np.float64)
        run = np.ascontiguousarray(running, dtype=np.uint8)
        failed = self.lib.lib.mjb_step(
            self._pool, threads, block, self.lib.mj_step, self.post, self.lib.set_tls_error,
            self.lib.get_tls_error, self.num_envs, self.nu, self.nstep,
            self._models_addr.ctypes.data, self._datas_addr.ctypes.data,
            self._ctrl_addr.ctypes.data, acts.ctypes.data, run.ctypes.data, len(self._names),
            self._src.ctypes.data, self._dst.ctypes.data, self._size.ctypes.data, self._message)
        if failed >= 0:
            message = self._message.value.decode(errors="replace")
            raise RuntimeError(f"MuJoCo error stepping env {failed}: {message}")
        return self._out

    def close(self) -> None:
        """Join the pool's threads (in a forked child that never stepped: leave the parent's)."""
        if self._pool is not None and os.getpid() == self._pid:
            self.lib.lib.mjb_pool_free(self._pool)
        self._pool = None

    def __del__(self) -> None:
        if getattr(self, "_pool", None) is not None:
            self.close()
