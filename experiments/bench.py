"""``adaptbed bench``: sampling throughput of the MuJoCo families against the physics limit.

``adaptbed bench [KEY=VALUE ...] [--family NAME ...] [--json] [--device cpu|cuda] [--quick]
[--envs N] [--rounds R] [--torch-threads N] [--iteration-only]``

For each MuJoCo family, in one run on this machine, it measures (env steps per second, counting
only the steps of running episodes):

* ``physics_limit_sps``: bare physics (``frame_skip`` ``mj_step`` per env step) in MuJoCo's
  own C loop (``mujoco.rollout``), one ``MjData`` per thread, one thread per core, random
  controls, no Python between steps, no observation, reward or policy: what the simulator
  alone can do. ``physics_limit_python_sps``: the same episodes stepped by Python threads, one
  ``mujoco.mj_step(model, data, frame_skip)`` call per env step (the limit as measured until
  2026-11-29: each call's Python work and GIL hand-over count in it).
* ``physics_batch_sps``: the same bare ``mj_step``, but over one ``MjData`` per environment of
  the throughput runs (``--envs``), every environment one step per round, the environments
  split between the threads (by the native loop of :mod:`envs.native` where it is available,
  else by Python threads): the simulator alone on the sampler's working set, whose states
  no longer all stay in the CPU caches.
* ``sampler_sps``: :func:`meta.sampler.sample_episodes` on the batched simulator
  (:class:`envs.mujoco_batch.MujocoBatchEnv`) with the family preset's policy (2 x 100 ReLU) in
  the loop, ``--envs`` environments (tasks x episodes) for one horizon, reset included, with
  its default stepping loop (``native_loop``: whether that is the C loop of
  :mod:`envs.native`); where it is, ``sampler_python_loop_sps`` measures the same with the
  Python loop and ``python_loop_over_physics`` its ratio to the limit, and (on the CPU)
  ``sampler_native_sps`` the same episodes with ``sampler="native"`` (whole episodes in the
  native loop, the policy evaluated there; README, "Whole episodes in the native loop") and
  ``native_sampler_over_physics`` its ratio. ``run.sampler=native`` as an override samples
  the measured meta-iteration that way.
  ``sampler_cores_busy``: the process's CPU seconds per wall-clock second while the default
  loop sampled (``threads`` cores: ``threads`` minus it is idle capacity).
* ``gym_sync_sps`` / ``gym_async_sps``: Gymnasium's ``SyncVectorEnv`` / ``AsyncVectorEnv``
  (one process per env) of the registered env doing the same work with the same policy:
  the same envs, tasks, seeds, horizon and policy forward per step.
* ``sampler_over_physics``, ``sampler_over_physics_batch``, ``sampler_over_best_gym``: the
  ratios; ``iteration_over_physics``: ``iteration_sampling_sps / physics_limit_sps``.
  The physics limits, the samplers and the batch physics are measured in turn ``--rounds`` times
  (default 3): their keys hold the medians, the two sampler ratios the median of the per-round
  ratios, and ``<key>_rounds`` every round's value (:func:`interleaved_throughput`).
* ``iteration_physics_batch_sps``: ``physics_batch_sps`` over as many environments as the
  measured meta-iteration samples at once (``iteration_sampler_envs``: one wave of the meta-batch,
  400 for the 40 tasks x 20 episodes presets with the default ``run.max_wave_envs``), and
  ``iteration_over_physics_batch``: ``iteration_sampling_sps`` against it, the sampler's share
  of what the simulator alone does on the same working set.
* ``iteration_seconds``: ``sampling`` / ``adaptation`` / ``outer_update`` / ``total`` seconds of
  one warm meta-iteration (the second of the process; ``first_iteration_seconds``: the first,
  with its one-off costs) of the family's default preset (``experiments/presets.py``, built with
  :func:`experiments.train.build`), run in a fresh process whose ``peak_rss_mb`` (peak resident
  memory of that process, interpreter, torch and MuJoCo included) is reported with it, and
  on CUDA ``peak_cuda_mb`` (the most GPU memory tensors occupied; ``null`` on the CPU);
  ``iteration_sampling_sps`` is its sampling throughput at the preset's meta-batch size.
  That process keeps freed memory for reuse as ``adaptbed`` does (:mod:`experiments.memory`;
  ``malloc_keeps_freed`` says whether the setting took effect; ``ADAPTBED_MALLOC=system``
  measures without it).
  ``--device cuda`` runs it (policy, adaptation, outer update) on the GPU.

``--iteration-only`` measures only ``iteration_seconds``, ``first_iteration_seconds`` and
``peak_rss_mb``, e.g. to compare
configs given as ``KEY=VALUE`` overrides. ``--quick`` shrinks everything for a smoke run: 4 envs over 50 steps and a meta-batch of
2 tasks x 2 episodes; ``--envs N`` sets the throughput runs' size (with ``--quick`` too).
Every measurement runs with ``--torch-threads`` torch intra-op threads (default 1; see
``--help``). Output: one JSON object per family and line with ``--json`` (also ``threads``,
the stepping threads = cores, ``torch_threads``, ``envs``, ``horizon``, ``preset``,
``meta_batch``, ``iteration_env_steps``, ``iteration_tasks``,
``iteration_episodes_per_task``, ``iteration_sampler_envs``), else a readable block per family.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import multiprocessing as mp
import resource
import statistics
import sys
import threading
import time
from typing import Any, Callable, Sequence

import gymnasium as gym
import mujoco
import numpy as np
from mujoco import rollout
import torch
from torch import nn

from agents.policies import dist_params
from envs import native as envs_native
from envs.mujoco_batch import BLOCKS_PER_THREAD, MujocoBatchEnv, default_threads
from envs.registry import FAMILIES, FamilySpec, UnknownFamilyError, family, make
from experiments import config as cfglib
from experiments.cliutil import Parser, fail
from experiments.memory import keep_freed_memory
from experiments.presets import get_preset
from meta.sampler import sample_episodes

PROG = "adaptbed bench"
MUJOCO_FAMILIES = tuple(s.name for s in FAMILIES if s.mujoco)


@dataclasses.dataclass(frozen=True)
class Workload:
    """What every throughput measurement of one family simulates."""

    tasks: int
    episodes_per_task: int
    horizon: int
    seed: int = 0

    @property
    def num_envs(self) -> int:
        return self.tasks * self.episodes_per_task


FULL = Workload(tasks=8, episodes_per_task=8, horizon=200)
QUICK = Workload(tasks=2, episodes_per_task=2, horizon=50)
QUICK_ITERATION = ("maml.meta_batch_size=2", "maml.episodes_per_task=2")


# --- the measurements -----------------------------------------------------------------------------
def physics_limit_sps(spec: FamilySpec, work: Workload, threads: int) -> float:
    """Env steps/s of bare physics on ``threads`` threads: ``mujoco.rollout``, MuJoCo's own
    C loop, one ``MjData`` per thread (hot in its core's caches), no Python between steps.

    ``work.num_envs`` episodes of ``work.horizon`` env steps each (an env step is
    ``frame_skip`` calls of ``mj_step`` with the control held, as the envs step), from the
    model's initial state, with uniform random controls; the threads take them one at a time.
    Only the rollout is timed: its thread pool starts before, its inputs are prepared before,
    and it copies no state out.

    Raises:
        RuntimeError: a MuJoCo warning stopped an episode early (the C loop stops an episode at
            its first warning), so fewer steps ran than counted. Checked on each thread's last
            episode.
    """
    model, frame_skip = _model_and_frame_skip(spec)
    initial, controls = limit_rollout_inputs(model, frame_skip, work)
    initial = np.repeat(initial, work.num_envs, axis=0)  # [B, nstate], as the loop reads it
    datas = [mujoco.MjData(model) for _ in range(threads)]
    with rollout.Rollout(nthread=threads if threads > 1 else 0) as pool:
        start = time.perf_counter()
        pool.rollout([model] * work.num_envs, datas, initial, controls, skip_checks=True,
                     nstep=controls.shape[1], chunk_size=1)
        seconds = time.perf_counter() - start
    if any(w.number for data in datas for w in data.warning):
        raise RuntimeError(f"{spec.name}: a MuJoCo warning stopped a rollout episode of the "
                           "physics limit early")
    return work.num_envs * work.horizon / seconds


def limit_rollout_inputs(model: mujoco.MjModel, frame_skip: int, work: Workload
                         ) -> tuple[np.ndarray, np.ndarray]:
    """The physics limit's rollout: the initial state ``[1, nstate]`` (mjSTATE_FULLPHYSICS of a
    fresh ``MjData``, i.e. after ``mj_resetData``) and the controls ``[B, T * frame_skip, nu]``,
    each env step's control repeated for its ``frame_skip`` physics steps."""
    full = mujoco.mjtState.mjSTATE_FULLPHYSICS
    initial = np.empty((1, mujoco.mj_stateSize(model, full)))
    mujoco.mj_getState(model, mujoco.MjData(model), initial[0], full)
    rng = np.random.default_rng(work.seed)
    controls = rng.uniform(-1.0, 1.0, size=(work.num_envs, work.horizon, model.nu))
    return initial, np.repeat(controls, frame_skip, axis=1)


def physics_limit_python_sps(spec: FamilySpec, work: Workload, threads: int) -> float:
    """The same physics as :func:`physics_limit_sps` (same episodes, controls, one ``MjData`` per
    thread), stepped by Python threads with one ``mujoco.mj_step(model, data, frame_skip)``
    call per env step: the limit as measured until 2026-11-29, which counts the Python call
    and the GIL hand-over of every step."""
    model, frame_skip = _model_and_frame_skip(spec)
    _, controls = limit_rollout_inputs(model, 1, work)  # [B, T, nu]
    episodes = iter(range(work.num_envs))  # next() is atomic under the GIL

    def run() -> None:
        data = mujoco.MjData(model)
        while (b := next(episodes, None)) is not None:
            mujoco.mj_resetData(model, data)
            for t in range(work.horizon):
                data.ctrl[:] = controls[b, t]
                mujoco.mj_step(model, data, frame_skip)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return work.num_envs * work.horizon / (time.perf_counter() - start)


def _model_and_frame_skip(spec: FamilySpec) -> tuple[mujoco.MjModel, int]:
    proto = make(spec.name).unwrapped
    return proto.model, int(proto.frame_skip)


def physics_batch_sps(spec: FamilySpec, work: Workload, threads: int) -> float:
    """Env steps/s of bare ``mj_step`` over ``work.num_envs`` ``MjData``s, one step each per
    round for ``work.horizon`` rounds, split between the threads: by the native loop of
    :mod:`envs.native` with nothing gathered where it is available (as the sampler steps them),
    else by Python threads, each stepping its own contiguous block."""
    model, frame_skip = _model_and_frame_skip(spec)
    datas = [mujoco.MjData(model) for _ in range(work.num_envs)]
    rng = np.random.default_rng(work.seed)
    controls = rng.uniform(-1.0, 1.0, size=(work.horizon, work.num_envs, model.nu))
    lib = envs_native.library()
    if lib is not None:
        stepper = envs_native.Stepper(lib, threads, [model] * len(datas), datas,
                                      [d.ctrl for d in datas], {}, frame_skip, contacts=False)
        running = np.ones(work.num_envs, dtype=bool)
        block = -(-work.num_envs // (threads * BLOCKS_PER_THREAD))
        try:
            start = time.perf_counter()
            for t in range(work.horizon):
                stepper.step(controls[t], running, threads, block)
            return work.num_envs * work.horizon / (time.perf_counter() - start)
        finally:
            stepper.close()
    blocks = np.array_split(np.arange(work.num_envs), threads)
    barrier = threading.Barrier(len(blocks))

    def run(block: np.ndarray) -> None:
        try:
            for t in range(work.horizon):
                for i in block:
                    datas[i].ctrl[:] = controls[t, i]
                    mujoco.mj_step(model, datas[i], frame_skip)
                barrier.wait()  # rounds in lockstep, as the sampler steps them
        except BaseException:
            barrier.abort()  # the other threads raise BrokenBarrierError instead of waiting
            raise

    workers = [threading.Thread(target=run, args=(b,)) for b in blocks]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return work.num_envs * work.horizon / (time.perf_counter() - start)


def bench_policy(spec: FamilySpec, observation_space: gym.Space, action_space: gym.Space,
                 device: str) -> nn.Module:
    """The family preset's policy (same architecture and initialisation as a run)."""
    from experiments.train import build_policy

    cfg = cfglib.apply_overrides(get_preset(spec.preset), [f"run.device={device}"])
    return build_policy(cfg, observation_space, action_space)


def sampler_sps(spec: FamilySpec, work: Workload, device: str,
                native: bool | None = None, sampler: str = "stepwise") -> tuple[float, float]:
    """Env steps/s of :func:`sample_episodes` on :class:`MujocoBatchEnv` (reset included);
    ``native``: its stepping loop (``None``: the default, native where available);
    ``sampler``: ``"stepwise"`` or ``"native"`` (whole episodes in the native loop).

    Also returns the cores it kept busy: this process's CPU seconds (user and system, all
    threads) per wall-clock second of the same span. On ``C`` cores, ``C`` minus it is the idle
    capacity that overlapping the serial per-step work with the physics could use at most.
    """
    with MujocoBatchEnv(spec.name, work.num_envs, device, horizon=work.horizon,
                        native=native) as venv:
        policy = bench_policy(spec, venv.observation_space, venv.action_space, device)
        params = {k: v.detach() for k, v in policy.named_parameters()}
        tasks = make(spec.name).unwrapped.sample_tasks(work.tasks,
                                                       np.random.default_rng(work.seed))
        _sync(device)
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        episodes = sample_episodes(venv, policy, params, tasks, work.episodes_per_task,
                                   seed=work.seed, sampler=sampler)
        _sync(device)
        wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
        return episodes.env_steps / wall, cpu / wall


def _cpu_seconds() -> float:
    """This process's user plus system CPU time so far, all threads (nanosecond clock)."""
    return time.process_time()


def _task_env(name: str, task: Any, horizon: int) -> gym.Env:
    return make(name, task=task, max_episode_steps=horizon)


def gym_vector_sps(spec: FamilySpec, work: Workload, device: str, asynchronous: bool) -> float:
    """Env steps/s of Gymnasium's Sync/AsyncVectorEnv with the same envs, seeds and policy.

    Counts the steps of running episodes only (an env that finished is auto-reset by
    Gymnasium on its next step; that step is not counted). Process start-up of
    ``AsyncVectorEnv`` is not timed; the reset is.
    """
    tasks = make(spec.name).unwrapped.sample_tasks(work.tasks, np.random.default_rng(work.seed))
    fns = [functools.partial(_task_env, spec.name, task, work.horizon)
           for task in tasks for _ in range(work.episodes_per_task)]
    cls = gym.vector.AsyncVectorEnv if asynchronous else gym.vector.SyncVectorEnv
    venv = cls(fns)
    try:
        policy = bench_policy(spec, venv.single_observation_space, venv.single_action_space,
                              device)
        params = {k: v.detach() for k, v in policy.named_parameters()}
        generator = torch.Generator(device=device).manual_seed(work.seed)
        seeds = np.random.SeedSequence(work.seed).generate_state(work.num_envs)
        _sync(device)
        start = time.perf_counter()
        obs, _ = venv.reset(seed=[int(s) for s in seeds])
        running = np.ones(work.num_envs, dtype=bool)
        steps = 0
        with torch.no_grad():
            for _ in range(work.horizon):
                dist = dist_params(policy, params,
                                   torch.as_tensor(obs, dtype=torch.float32, device=device))
                actions = policy.sample(dist, generator).cpu().numpy()
                obs, _, terminated, truncated, _ = venv.step(actions)
                steps += int(running.sum())
                running &= ~(terminated | truncated)
                if not running.any():
                    break
        _sync(device)
        return steps / (time.perf_counter() - start)
    finally:
        venv.close()


def iteration_split(preset: str, device: str, quick: bool, torch_threads: int | None = None,
                    overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Seconds by phase of the first two meta-iterations of ``preset``, as training runs them,
    and this process's peak RSS.

    ``iteration_seconds`` is the second iteration's: a training run is made of warm iterations,
    while the first one also pays one-off costs (first ``vmap`` and autograd calls, the
    allocator growing to the meta-batch's size), reported as ``first_iteration_seconds``.
    Meant to run in a fresh process (see :func:`measure_iteration`), so that ``peak_rss_mb``
    is the iterations' own peak (the interpreter, torch and MuJoCo included).
    """
    from experiments.train import build, iteration_tasks
    from meta.adaptation import collect_meta_batch, step_seeds

    malloc_kept = keep_freed_memory()  # as the `adaptbed` command does in its process
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    overrides = [f"run.device={device}", *(QUICK_ITERATION if quick else ()), *overrides]
    cfg = cfglib.apply_overrides(get_preset(preset), overrides)
    parts = build(cfg)
    split: list[dict[str, float]] = []
    try:
        for iteration in range(2):
            tasks = iteration_tasks(parts.task_source, cfg, iteration)
            seeds = step_seeds(cfg.run.seed, iteration, parts.inner.num_steps + 1)
            start = time.perf_counter()
            batch, metrics = collect_meta_batch(
                parts.venv, parts.policy, dict(parts.policy.named_parameters()), tasks,
                parts.inner, cfg.maml.episodes_per_task, parts.advantages, seeds,
                cfg.run.sampler)
            _sync(device)
            update_start = time.perf_counter()
            parts.outer.step(batch)
            _sync(device)
            end = time.perf_counter()
            split.append({"sampling": metrics["seconds_sampling"],
                          "adaptation": metrics["seconds_adapting"],
                          "outer_update": end - update_start, "total": end - start})
    finally:
        parts.venv.close()
    return {
        "preset": preset,
        "meta_batch": f"{cfg.maml.meta_batch_size}x{cfg.maml.episodes_per_task}",
        "iteration_seconds": split[1],
        "first_iteration_seconds": split[0],
        "iteration_env_steps": int(metrics["env_steps"]),
        "iteration_tasks": cfg.maml.meta_batch_size,
        "iteration_episodes_per_task": cfg.maml.episodes_per_task,
        "iteration_sampler_envs": parts.venv.num_envs,  # one wave (run.max_wave_envs)
        "iteration_sampling_sps": metrics["env_steps"] / max(split[1]["sampling"], 1e-9),
        "peak_rss_mb": peak_rss_mb(),
        "peak_cuda_mb": peak_cuda_mb(device),
        "malloc_keeps_freed": malloc_kept,
    }


def peak_cuda_mb(device: str) -> float | None:
    """The most GPU memory tensors occupied in this process so far, in MiB
    (``torch.cuda.max_memory_allocated``; the allocator's cache and the CUDA context are not
    counted): on ``cuda``, what ``peak_rss_mb``, host memory only, does not see. ``None`` on
    the CPU."""
    if torch.device(device).type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(torch.device(device)) / 2**20


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB.

    Linux: ``VmHWM`` of ``/proc/self/status``, the high-water mark of this process image; not
    ``ru_maxrss``, which a spawned process inherits from its parent's size at the fork.
    Elsewhere: ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0)  # bytes vs kB


def measure_iteration(preset: str, device: str, quick: bool, torch_threads: int | None,
                      overrides: Sequence[str] = ()) -> dict[str, Any]:
    """:func:`iteration_split` in a fresh (spawned) process."""
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(iteration_split, (preset, device, quick, torch_threads,
                                            list(overrides)))


def bench_family(spec: FamilySpec, work: Workload, device: str, quick: bool,
                 torch_threads: int | None = None,
                 overrides: Sequence[str] = (), iteration_only: bool = False,
                 rounds: int = 3) -> dict[str, Any]:
    """Every measurement of one family, in the order that keeps them independent."""
    threads = default_threads()
    out: dict[str, Any] = {"family": spec.name, "device": device, "threads": threads,
                           "native_loop": envs_native.library() is not None,
                           "torch_threads": torch.get_num_threads(),
                           "envs": work.num_envs, "horizon": work.horizon}
    out.update(measure_iteration(spec.preset, device, quick, torch_threads, overrides))
    if overrides:
        out["overrides"] = list(overrides)
    if iteration_only:
        return out
    out["gym_async_sps"] = gym_vector_sps(spec, work, device, asynchronous=True)
    out["gym_sync_sps"] = gym_vector_sps(spec, work, device, asynchronous=False)
    out.update(interleaved_throughput(spec, work, device, threads, rounds))
    out["iteration_over_physics"] = out["iteration_sampling_sps"] / out["physics_limit_sps"]
    wave = out["iteration_sampler_envs"] // out["iteration_episodes_per_task"]  # tasks
    meta_batch = Workload(wave, out["iteration_episodes_per_task"], work.horizon, work.seed)
    out["iteration_physics_batch_sps"] = physics_batch_sps(spec, meta_batch, threads)
    out["iteration_over_physics_batch"] = (out["iteration_sampling_sps"]
                                           / out["iteration_physics_batch_sps"])
    out["sampler_over_best_gym"] = out["sampler_sps"] / max(out["gym_sync_sps"],
                                                            out["gym_async_sps"])
    return out


def interleaved_throughput(spec: FamilySpec, work: Workload, device: str, threads: int,
                           rounds: int) -> dict[str, Any]:
    """The physics limits (C loop and Python threads), the sampler (with each stepping loop)
    and the physics over the sampler's states, measured in turn ``rounds`` times, so that each
    sampler measurement has a physics limit taken seconds from it: the machine's speed drifts
    between runs by more than the ratios differ.

    Returns the medians (``physics_limit_sps``, ``physics_limit_python_sps``, ``sampler_sps``,
    ``sampler_python_loop_sps`` and, on the CPU, ``sampler_native_sps`` where the native loop is
    built, ``physics_batch_sps``), the median of the per-round ratios (``sampler_over_physics``,
    ``sampler_over_physics_batch``, ``python_loop_over_physics``,
    ``native_sampler_over_physics``),
    the cores the sampler kept busy (``sampler_cores_busy``, see :func:`sampler_sps`) and every
    round's numbers (the same keys with ``_rounds``).
    """
    busy: list[float] = []

    def sampler(native: bool | None = None) -> float:
        sps, cores = sampler_sps(spec, work, device, native)
        if native is None:
            busy.append(cores)
        return sps

    measure = {"physics_limit_sps": lambda: physics_limit_sps(spec, work, threads),
               "sampler_sps": sampler,
               "physics_batch_sps": lambda: physics_batch_sps(spec, work, threads),
               "physics_limit_python_sps": lambda: physics_limit_python_sps(spec, work, threads)}
    if envs_native.library() is not None:  # the Python loop too, for comparison
        measure["sampler_python_loop_sps"] = lambda: sampler(False)
        if torch.device(device).type == "cpu":  # and whole episodes in the native loop
            measure["sampler_native_sps"] = lambda: sampler_sps(spec, work, device,
                                                                sampler="native")[0]
    runs: dict[str, list[float]] = {key: [] for key in measure}
    for _ in range(rounds):
        for key, run in measure.items():
            runs[key].append(run())

    def per_round(num: str, den: str) -> list[float]:
        return [a / b for a, b in zip(runs[num], runs[den])]

    ratios = {"sampler_over_physics": per_round("sampler_sps", "physics_limit_sps"),
              "sampler_over_physics_batch": per_round("sampler_sps", "physics_batch_sps")}
    if "sampler_python_loop_sps" in runs:
        ratios["python_loop_over_physics"] = per_round("sampler_python_loop_sps",
                                                       "physics_limit_sps")
    if "sampler_native_sps" in runs:
        ratios["native_sampler_over_physics"] = per_round("sampler_native_sps",
                                                          "physics_limit_sps")
    out: dict[str, Any] = {}
    for key, values in {**runs, **ratios, "sampler_cores_busy": busy}.items():
        out[key] = statistics.median(values)
        out[f"{key}_rounds"] = values
    return out


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# --- output and command line ----------------------------------------------------------------------
def render(result: dict[str, Any]) -> str:
    """A readable block for one family."""
    if "sampler_sps" not in result:
        return render_iteration(result)
    lines = [f"{result['family']} ({result['envs']} envs x {result['horizon']} steps, "
             f"{result['threads']} threads, {result['torch_threads']} torch threads, "
             f"{result['device']})"]
    for key in ("physics_limit_sps", "physics_limit_python_sps", "physics_batch_sps",
                "sampler_sps", "sampler_python_loop_sps", "sampler_native_sps", "gym_sync_sps",
                "gym_async_sps",
                "iteration_physics_batch_sps", "iteration_sampling_sps"):
        if key in result:
            lines.append(f"  {key:<28}{result[key]:>12,.0f} env steps/s")
    for key in ("sampler_over_physics", "python_loop_over_physics",
                "native_sampler_over_physics",
                "sampler_over_physics_batch", "sampler_over_best_gym",
                "iteration_over_physics", "iteration_over_physics_batch",
                "sampler_cores_busy"):
        if key in result:
            lines.append(f"  {key:<28}{result[key]:>12.2f}")
    lines.append(f"  stepping loop: {'native (envs/mjbatch.c)' if result['native_loop'] else 'Python'}")
    split = ", ".join(f"{k} {v:.2f}" for k, v in result["iteration_seconds"].items())
    lines.append(f"  meta-iteration {result['preset']} ({result['meta_batch']}): {split} s; "
                 f"{_peaks(result)}")
    return "\n".join(lines)


def _peaks(result: dict[str, Any]) -> str:
    text = f"peak RSS {result['peak_rss_mb']:.0f} MB"
    if result.get("peak_cuda_mb") is not None:
        text += f", peak CUDA memory {result['peak_cuda_mb']:.0f} MB"
    return text


def render_iteration(result: dict[str, Any]) -> str:
    split = ", ".join(f"{k} {v:.2f}" for k, v in result["iteration_seconds"].items())
    return (f"{result['family']}: meta-iteration {result['preset']} ({result['meta_batch']}"
            f"{', ' + ' '.join(result['overrides']) if result.get('overrides') else ''}): "
            f"{split} s; {_peaks(result)}")


def parser() -> Parser:
    p = Parser(prog=PROG, description="Sampling throughput of the MuJoCo families: the batched "
               "simulator against bare physics and Gymnasium's vector envs; the time split of a "
               "warm meta-iteration (the second of a fresh process) and of the first.")
    p.add_argument("--family", nargs="+", action="extend", metavar="NAME",
                   help="MuJoCo families (name, id or preset; default: all)")
    p.add_argument("--json", action="store_true", help="one JSON object per family and line")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where the policy, adaptation and outer update run")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 4 envs x 50 steps, meta-batch 2 tasks x 2 episodes")
    p.add_argument("--torch-threads", type=int, default=1, metavar="N",
                   help="torch intra-op threads outside sampling: the Gymnasium runs, advantages, "
                        "adaptation and outer update (default 1; 0: torch's own default, as "
                        "`adaptbed train` runs). The stepwise sampler's policy forwards always "
                        "use one thread (meta/sampler.py)")
    p.add_argument("--envs", type=int, metavar="N",
                   help=f"environments of the throughput runs, a multiple of the episodes "
                        f"per task (default {FULL.num_envs} = {FULL.tasks} tasks x "
                        f"{FULL.episodes_per_task}; --quick: {QUICK.num_envs} = {QUICK.tasks} x "
                        f"{QUICK.episodes_per_task})")
    p.add_argument("--rounds", type=int, default=3, metavar="R",
                   help="the physics limits, the samplers and the batch physics are measured "
                        "in turn R times; medians reported (default 3)")
    p.add_argument("--iteration-only", action="store_true",
                   help="measure only the meta-iteration's time split and memory (compare "
                        "configs quickly)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides of the measured meta-iteration, e.g. "
                        "outer.fisher=first_order")
    return p


def resolve_families(names: Sequence[str] | None) -> list[FamilySpec]:
    """The requested MuJoCo families (all by default); raises ValueError for others."""
    specs = [family(n) for n in (names or MUJOCO_FAMILIES)]
    for spec in specs:
        if not spec.mujoco:
            raise ValueError(f"{spec.name} is not a MuJoCo family; known: "
                             f"{', '.join(MUJOCO_FAMILIES)}")
    return specs


def workload(args: Any) -> Workload:
    base = QUICK if args.quick else FULL
    if args.envs is None:
        return base
    if args.envs < base.episodes_per_task or args.envs % base.episodes_per_task:
        raise ValueError(f"--envs must be a positive multiple of {base.episodes_per_task}")
    return dataclasses.replace(base, tasks=args.envs // base.episodes_per_task)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        specs = resolve_families(args.family)
        work = workload(args)
        for spec in specs:  # bad overrides fail now, not after minutes of measuring
            cfglib.validate(cfglib.apply_overrides(get_preset(spec.preset), args.overrides))
    except (UnknownFamilyError, ValueError) as err:
        return fail(PROG, str(err))
    if args.device == "cuda" and not torch.cuda.is_available():
        return fail(PROG, "--device cuda but no CUDA GPU is available")
    if args.torch_threads < 0:
        return fail(PROG, "--torch-threads must be 0 (torch's default) or positive")
    if args.rounds < 1:
        return fail(PROG, "--rounds must be at least 1")
    torch_threads = args.torch_threads or None
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    emit: Callable[[dict[str, Any]], str] = json.dumps if args.json else render
    for spec in specs:
        result = bench_family(spec, work, args.device, args.quick, torch_threads,
                              args.overrides, args.iteration_only, args.rounds)
        print(emit(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
