"""The native stepping loop of :class:`envs.mujoco_batch.MujocoBatchEnv` (``envs/mjbatch.c``).

The batched simulator's Python loop holds the GIL for every environment's control write, MuJoCo
call and state copy; on 2 cores that serial work kept the meta-batch sampling at 0.59-0.70 of
the physics limit (as then measured, by Python threads). ``envs/mjbatch.c`` runs the same loop
in C on its own thread pool, with the GIL released for the whole step (``ctypes`` releases it
around foreign calls): per environment it writes the control, calls ``mj_step`` ``frame_skip``
times and ``mj_rnePostConstraint`` where asked, then copies the fields the observation and
reward need into batch arrays. It calls the very ``mj_step`` of the ``libmujoco`` that the
``mujoco`` package loaded, on the same ``MjData``, so the results are bit for bit those of
the Python loop (``tests/envs/test_mujoco_batch.py`` runs its comparisons with both).

Building:
    ``pip install`` compiles the C file as the (otherwise empty) extension module
    ``envs._mjbatch`` (``setup.py``); this module imports it only to find the file, and loads
    it with ``ctypes``. Nothing is compiled or written at run time. Where it was not built (no
    C compiler at install time, or the source tree used without installing), :func:`library`
    returns ``None``, :func:`unavailable_reason` says why, and the simulator falls back to its
    Python loop (same results, slower). ``ADAPTBED_NATIVE=0`` forces the Python loop.
    ``python -m envs.native`` reports which one runs.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib
import os
import sys
from pathlib import Path
from typing import Sequence

import mujoco
import numpy as np

#: The extension module that holds the compiled loop, and its source.
EXTENSION = "envs._mjbatch"
SOURCE = Path(__file__).with_name("mjbatch.c")
#: Bytes of the message buffer ``mjb_step`` fills on a MuJoCo fatal error.
MESSAGE_BYTES = 512

_reason: str | None = None


def enabled() -> bool:
    """False when ``ADAPTBED_NATIVE=0`` asks for the Python loop."""
    return os.environ.get("ADAPTBED_NATIVE", "1") != "0"


def unavailable_reason() -> str | None:
    """Why :func:`library` returned ``None`` (``None`` when it did not, or was not asked)."""
    return _reason


def source_sha256() -> str:
    """SHA-256 of ``envs/mjbatch.c`` (a build records the one it was compiled from)."""
    return hashlib.sha256(SOURCE.read_bytes()).hexdigest()


def extension_path() -> Path:
    """The compiled ``envs._mjbatch``'s file.

    Raises:
        ImportError: it was not built (``pip install -e .`` builds it).
    """
    return Path(importlib.import_module(EXTENSION).__file__)


class Library:
    """The loaded C library and the MuJoCo entry points it is handed."""

    def __init__(self, path: Path):
        self.lib = ctypes.CDLL(str(path))
        self.lib.mjb_source_sha256.restype = ctypes.c_char_p
        built = self.lib.mjb_source_sha256().decode()
        if SOURCE.exists() and built != source_sha256():
            raise RuntimeError(f"{path.name} was built from another version of {SOURCE.name}: "
                               "rebuild it with `pip install -e .`")
        self.lib.mjb_pool_new.restype = ctypes.c_void_p
        self.lib.mjb_pool_new.argtypes = [ctypes.c_int]
        self.lib.mjb_pool_free.restype = None
        self.lib.mjb_pool_free.argtypes = [ctypes.c_void_p]
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        self.lib.mjb_step.restype = i64
        self.lib.mjb_step.argtypes = [p, ctypes.c_int, i64, p, p, p, p, i64, i64, i64,
                                      p, p, p, p, p, p, i64, p, p, p, p]
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


@functools.lru_cache(maxsize=1)
def library() -> Library | None:
    """The loaded library, or ``None`` when it was not built or is switched off."""
    global _reason
    _reason = None
    if not enabled():
        _reason = "ADAPTBED_NATIVE=0"
        return None
    try:
        return Library(extension_path())
    except (ImportError, OSError, RuntimeError, AttributeError) as err:
        _reason = f"{type(err).__name__}: {err}"
        return None


def main() -> int:
    """``python -m envs.native``: load the library; exit 1 (with why) if it cannot be."""
    lib = library()
    if lib is None:
        print(f"native stepping loop unavailable: {unavailable_reason()}", file=sys.stderr)
        return 1
    print(f"native stepping loop: {extension_path()}")
    return 0


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

        The running envs are handed out first, in blocks of ``block`` envs, so that the threads
        share the stepping evenly however few envs run and wherever they are in the batch.

        Returns:
            name -> ``[B, *shape]`` arrays (reused by the next call: copy what must outlive it).
        Raises:
            ValueError: ``actions`` is not ``[B, nu]`` or ``running`` not ``[B]``.
            RuntimeError: MuJoCo raised a fatal error stepping an environment.
        """
        if np.shape(actions) != (self.num_envs, self.nu) or np.shape(running) != (self.num_envs,):
            raise ValueError(f"expected actions {(self.num_envs, self.nu)} and running "
                             f"{(self.num_envs,)}, got {np.shape(actions)} and "
                             f"{np.shape(running)}")
        if self._pool is None:
            raise RuntimeError("this Stepper is closed")
        if os.getpid() != self._pid:  # a forked child: the pool's threads stayed in the parent
            self._new_pool()
        acts = np.ascontiguousarray(actions, dtype=np.float64)
        run = np.ascontiguousarray(running, dtype=np.uint8)
        order = np.argsort(run == 0, kind="stable")  # the running envs first, each in order
        failed = self.lib.lib.mjb_step(
            self._pool, threads, block, self.lib.mj_step, self.post, self.lib.set_tls_error,
            self.lib.get_tls_error, self.num_envs, self.nu, self.nstep,
            self._models_addr.ctypes.data, self._datas_addr.ctypes.data,
            self._ctrl_addr.ctypes.data, acts.ctypes.data, run.ctypes.data, order.ctypes.data,
            len(self._names),
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


if __name__ == "__main__":
    sys.exit(main())
