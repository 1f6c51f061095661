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

Whole episodes:
    :meth:`Stepper.episodes` (``mjb_episodes``) runs every env's episode from its first step to
    its last on one thread, with a Gaussian MLP policy evaluated in C (float32) between the
    steps: ``MujocoBatchEnv.run_episodes`` and ``sample_episodes(..., sampler="native")`` use
    it (README, "Whole episodes in the native loop").

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
from typing import NamedTuple, Sequence

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
        self.lib.mjb_episodes.restype = i64
        self.lib.mjb_episodes.argtypes = [p, ctypes.c_int, p, p, p]
        self.lib.mjb_max_warnings.restype = i64
        self.max_warnings = int(self.lib.mjb_max_warnings())
        self.lib.mjb_episodes_args_layout.restype = i64
        self.lib.mjb_episodes_args_layout.argtypes = [p, i64, p]
        _check_layout(self.lib)
        mj = ctypes.CDLL(_libmujoco_path())  # already loaded by `mujoco`: the same instance

        def address(name: str) -> int:
            return ctypes.cast(getattr(mj, name), ctypes.c_void_p).value

        self.mj_step = address("mj_step")
        self.mj_rne_post_constraint = address("mj_rnePostConstraint")
        self.set_tls_error = address("_mjPRIVATE__set_tls_error_fn")
        self.get_tls_error = address("_mjPRIVATE__get_tls_error_fn")


_P, _I = ctypes.c_void_p, ctypes.c_int64

#: ``mjb_episodes``'s argument struct (``episodes_args_t`` in ``envs/mjbatch.c``, same order).
_EPISODES_FIELDS = (
    "step:p post:p set_tls_error:p get_tls_error:p num_envs:i nu:i nstep:i horizon:i "
    "models:p datas:p ctrl:p num_fields:i src:p dst:p size:p num_segments:i seg_field:p "
    "seg_start:p seg_count:p seg_low:p seg_high:p warning_field:i num_warnings:i warning_ids:p "
    "num_finite:i finite_field:p num_checks:i check_field:p check_index:p check_inclusive:p "
    "check_low:p check_high:p num_layers:i layer_sizes:p weight:p bias:p use_tanh:i std:p "
    "task_of:p noise:p actions:p length:p bad_action:p block:i")


class Segment(NamedTuple):
    """Part of the observation: ``clip(field[start:start + count], low, high)`` (a float64
    field of the gathered ones)."""

    field: str
    start: int
    count: int
    low: float = -np.inf
    high: float = np.inf


class Check(NamedTuple):
    """A health check: healthy while ``low < field[index] < high`` (``<=`` if ``inclusive``)."""

    field: str
    index: int
    low: float
    high: float
    inclusive: bool = False


class NativeMLP(NamedTuple):
    """A Gaussian MLP policy as ``mjb_episodes`` evaluates it, for ``K`` parameter sets.

    Attributes:
        weights: per layer, float32 ``[K, in, out]`` (``nn.Linear.weight`` transposed).
        biases: per layer, float32 ``[K, out]``.
        use_tanh: tanh between the layers, else ReLU.
        std: float32 ``[K, A]``, the standard deviations.
    """

    weights: Sequence[np.ndarray]
    biases: Sequence[np.ndarray]
    use_tanh: bool
    std: np.ndarray


class EpisodeEnd(NamedTuple):
    """What ends an episode in ``mjb_episodes`` (after the step that caused it).

    Attributes:
        warning: the gathered int32 ``[mjNWARNING, 2]`` warning-stats field, and the warnings
            whose counters must not grow.
        finite: float64 fields that must stay finite.
        checks: health checks (all must hold).
    """

    warning: tuple[str, Sequence[int]]
    finite: Sequence[str]
    checks: Sequence[Check]


class NativeEpisodes(NamedTuple):
    """What :meth:`Stepper.episodes` returns.

    Attributes:
        fields: the gathered fields ``name -> [T, B, *shape]`` after every step (rows after
            an env's last step are left uninitialised).
        actions: float32 ``[T, B, A]``, the actions taken (zeros after an env's last step;
            at its last step, the non-finite action it stopped at where ``bad_action``).
        length: ``[B]`` steps taken.
        bad_action: ``[B]`` uint8, 1 where the episode stopped before applying a non-finite
            action (at step ``length``).
    """

    fields: dict[str, np.ndarray]
    actions: np.ndarray
    length: np.ndarray
    bad_action: np.ndarray


class EpisodesArgs(ctypes.Structure):
    _fields_ = [(name, _P if kind == "p" else _I)
                for name, kind in (f.split(":") for f in _EPISODES_FIELDS.split())]


def _check_layout(lib: ctypes.CDLL) -> None:
    """Refuse a library whose ``episodes_args_t`` is not :class:`EpisodesArgs` (every offset)."""
    fields = EpisodesArgs._fields_
    offsets = (ctypes.c_int64 * (len(fields) + 1))()
    size = ctypes.c_int64(0)
    count = lib.mjb_episodes_args_layout(offsets, len(offsets), ctypes.byref(size))
    ours = [getattr(EpisodesArgs, name).offset for name, _ in fields]
    if (count != len(fields) or list(offsets)[:count] != ours
            or size.value != ctypes.sizeof(EpisodesArgs)):
        raise RuntimeError("envs/native.py's EpisodesArgs does not match mjbatch.c's "
                           "episodes_args_t: rebuild with `pip install -e .`")


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

    def episodes(self, threads: int, block: int, horizon: int, observation: Sequence[Segment],
                 end: EpisodeEnd, policy: NativeMLP, task_of: np.ndarray, noise: np.ndarray
                 ) -> "NativeEpisodes":
        """One episode in every env, up to ``horizon`` steps, the policy in the loop.

        Env ``i`` observes (``observation``), acts ``mean + std * noise[t, i]`` with the MLP of
        parameter set ``task_of[i]``, steps, and stops after the step that ``end`` says ends
        its episode, or before applying a non-finite action. Every env runs from its first
        step to its last on one thread; the threads take the envs in blocks of ``block``.

        Raises:
            ValueError: inputs of the wrong shape, or fields, segments or checks that do not
                fit the gathered fields (nothing was simulated then).
            RuntimeError: MuJoCo raised a fatal error stepping an env (the others may be
                anywhere in their episodes).
            MemoryError: the C loop could not allocate its scratch space.
        """
        B, A, T = self.num_envs, self.nu, horizon
        if self._pool is None:
            raise RuntimeError("this Stepper is closed")
        if os.getpid() != self._pid:
            self._new_pool()
        self._check_episode_spec(observation, end)
        index = {name: k for k, name in enumerate(self._names)}
        noise = np.ascontiguousarray(noise, dtype=np.float32)
        if not np.issubdtype(np.asarray(task_of).dtype, np.integer):
            raise ValueError(f"task_of must hold integers, got {np.asarray(task_of).dtype}")
        task_of = np.ascontiguousarray(task_of, dtype=np.int64)
        weights, biases, std = self._check_policy(policy, sum(seg.count for seg in observation))
        sets = std.shape[0]
        if noise.shape != (T, B, A) or task_of.shape != (B,):
            raise ValueError(f"expected noise {(T, B, A)} and task_of {(B,)}, got "
                             f"{noise.shape} and {task_of.shape}")
        if B and (task_of.min() < 0 or task_of.max() >= sets):
            raise ValueError(f"task_of must index the {sets} parameter sets")
        out = NativeEpisodes({name: np.empty((T, *array.shape), dtype=array.dtype)
                              for name, array in self._out.items()},
                             np.zeros((T, B, A), dtype=np.float32), np.zeros(B, dtype=np.int64),
                             np.zeros(B, dtype=np.uint8))
        i64 = lambda values: np.ascontiguousarray(values, dtype=np.int64)  # noqa: E731
        f64 = lambda values: np.ascontiguousarray(values, dtype=np.float64)  # noqa: E731
        addresses = lambda arrays: np.array([a.ctypes.data for a in arrays],  # noqa: E731
                                            dtype=np.uintp)
        keep = {  # every array the C call reads, alive until it returns
            "dst": addresses([out.fields[name] for name in self._names]),
            "seg_field": i64([index[seg.field] for seg in observation]),
            "seg_start": i64([seg.start for seg in observation]),
            "seg_count": i64([seg.count for seg in observation]),
            "seg_low": f64([seg.low for seg in observation]),
            "seg_high": f64([seg.high for seg in observation]),
            "warning_ids": i64(end.warning[1]),
            "finite_field": i64([index[name] for name in end.finite]),
            "check_field": i64([index[c.field] for c in end.checks]),
            "check_index": i64([c.index for c in end.checks]),
            "check_inclusive": i64([c.inclusive for c in end.checks]),
            "check_low": f64([c.low for c in end.checks]),
            "check_high": f64([c.high for c in end.checks]),
            "layer_sizes": i64([weights[0].shape[1]] + [w.shape[2] for w in weights]),
            "weight": addresses(weights), "bias": addresses(biases),
        }
        data = lambda name: keep[name].ctypes.data  # noqa: E731
        args = EpisodesArgs(
            step=self.lib.mj_step, post=self.post, set_tls_error=self.lib.set_tls_error,
            get_tls_error=self.lib.get_tls_error, num_envs=B, nu=A, nstep=self.nstep,
            horizon=T, models=self._models_addr.ctypes.data,
            datas=self._datas_addr.ctypes.data, ctrl=self._ctrl_addr.ctypes.data,
            num_fields=len(self._names), src=self._src.ctypes.data, dst=data("dst"),
            size=self._size.ctypes.data, num_segments=len(observation),
            seg_field=data("seg_field"), seg_start=data("seg_start"),
            seg_count=data("seg_count"), seg_low=data("seg_low"), seg_high=data("seg_high"),
            warning_field=index[end.warning[0]], num_warnings=len(end.warning[1]),
            warning_ids=data("warning_ids"), num_finite=len(end.finite),
            finite_field=data("finite_field"), num_checks=len(end.checks),
            check_field=data("check_field"), check_index=data("check_index"),
            check_inclusive=data("check_inclusive"), check_low=data("check_low"),
            check_high=data("check_high"), num_layers=len(weights),
            layer_sizes=data("layer_sizes"), weight=data("weight"), bias=data("bias"),
            use_tanh=int(policy.use_tanh), std=std.ctypes.data, task_of=task_of.ctypes.data,
            noise=noise.ctypes.data, actions=out.actions.ctypes.data,
            length=out.length.ctypes.data, bad_action=out.bad_action.ctypes.data,
            block=max(1, block))
        kind = ctypes.c_int64(0)
        failed = self.lib.lib.mjb_episodes(self._pool, threads, ctypes.byref(args),
                                           ctypes.byref(kind), self._message)
        if kind.value == 2:
            raise ValueError(f"at most {self.lib.max_warnings} warning counters can be watched")
        if kind.value == 3:
            raise MemoryError("the native loop could not allocate its scratch space")
        if failed >= 0:
            message = self._message.value.decode(errors="replace")
            raise RuntimeError(f"MuJoCo error stepping env {failed}: {message}")
        return out

    def _check_episode_spec(self, observation: Sequence[Segment], end: EpisodeEnd) -> None:
        """Refuse segments, checks and fields that the C loop would read out of bounds."""
        def field(name: str, dtype: type) -> np.ndarray:
            if name not in self._out:
                raise ValueError(f"no gathered field {name!r}; gathered: {self._names}")
            if self._out[name].dtype != dtype:
                raise ValueError(f"field {name!r} is {self._out[name].dtype}, not "
                                 f"{np.dtype(dtype)}")
            return self._out[name][0].reshape(-1)

        for seg in observation:
            size = len(field(seg.field, np.float64))
            if seg.start < 0 or seg.count < 0 or seg.start + seg.count > size:
                raise ValueError(f"segment {seg} exceeds field {seg.field!r} ({size} values)")
        for check in end.checks:
            if not 0 <= check.index < len(field(check.field, np.float64)):
                raise ValueError(f"check {check} exceeds field {check.field!r}")
        for name in end.finite:
            field(name, np.float64)
        stats = self._out[end.warning[0]] if end.warning[0] in self._out else None
        field(end.warning[0], np.int32)
        ids = list(end.warning[1])
        if (stats.ndim != 3 or stats.shape[2] != 2 or len(ids) > self.lib.max_warnings
                or any(not 0 <= w < stats.shape[1] for w in ids)):
            raise ValueError(f"warning field {end.warning[0]!r} must be int32 [B, n, 2] and "
                             f"at most {self.lib.max_warnings} of its n counters watched, got "
                             f"{stats.shape} and {ids}")

    def _check_policy(self, policy: NativeMLP, obs_dim: int
                      ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
        """The MLP's arrays as the C loop reads them (float32, contiguous), checked."""
        weights = [np.ascontiguousarray(w, dtype=np.float32) for w in policy.weights]
        biases = [np.ascontiguousarray(b, dtype=np.float32) for b in policy.biases]
        std = np.ascontiguousarray(policy.std, dtype=np.float32)
        if not weights or len(biases) != len(weights) or std.ndim != 2:
            raise ValueError("the MLP needs at least one layer, a bias per layer and std [K, A]")
        sets = std.shape[0]
        sizes = [weights[0].shape[1] if weights[0].ndim == 3 else -1]
        for w, b in zip(weights, biases):
            if w.ndim != 3 or w.shape[:2] != (sets, sizes[-1]) or b.shape != (sets, w.shape[2]):
                raise ValueError(f"layer shapes {w.shape} and {b.shape} do not chain for "
                                 f"{sets} parameter sets")
            sizes.append(w.shape[2])
        if sizes[0] != obs_dim or sizes[-1] != self.nu or std.shape[1] != self.nu:
            raise ValueError(f"the MLP maps {sizes[0]} -> {sizes[-1]} (std {std.shape}), the "
                             f"envs need {obs_dim} -> {self.nu}")
        return weights, biases, std

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
