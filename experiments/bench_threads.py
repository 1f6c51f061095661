"""Benchmark: the batched sampler's throughput against the number of stepping threads.

``python -m experiments.bench_threads [--family NAME ...] [--threads 1,2,4] [--sizes 8x8,40x20]
[--min-envs-per-thread 2,8]``

For each family, each thread count ``k`` and each ``min_envs_per_thread`` it prints one JSON
object (one line) with:

* ``physics_limit_sps``: :func:`experiments.bench.physics_limit_sps` on ``k`` threads (bare
  physics in MuJoCo's C rollout loop, one ``MjData`` per thread, 64 envs x 200 steps of work);
* ``sampler_<T>x<E>_sps`` for every size: :func:`meta.sampler.sample_episodes` on a
  :class:`envs.mujoco_batch.MujocoBatchEnv` of ``T`` tasks x ``E`` episodes stepped by ``k``
  threads (``num_threads=k``; the default is every core) and waking a thread only for at least
  ``min_envs_per_thread`` running envs each, the family preset's policy on the CPU with one
  torch thread, episodes of up to 200 steps (those of the Ant, Hopper and Walker end earlier
  when the robot falls, leaving fewer envs running). Each size samples once untimed (warm-up),
  then once timed.

``MujocoBatchEnv`` steps on every core by default; this measures whether more threads ever cost
throughput (on a many-core machine the stepping threads share one GIL for their per-environment
Python work). Env steps/s count the steps of running episodes only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Sequence

import numpy as np

from envs.mujoco_batch import MIN_ENVS_PER_THREAD, MujocoBatchEnv
from envs.registry import UnknownFamilyError, family, make
from experiments.bench import FULL, bench_policy, physics_limit_sps, resolve_families
from experiments.cliutil import Parser, fail
from meta.sampler import sample_episodes

PROG = "python -m experiments.bench_threads"


def sampler_sps(name: str, tasks: int, episodes: int, threads: int,
                min_envs_per_thread: int = MIN_ENVS_PER_THREAD) -> float:
    """Env steps/s of the batched sampler on ``tasks x episodes`` envs and ``threads`` threads."""
    spec = family(name)
    with MujocoBatchEnv(spec.name, tasks * episodes, "cpu", num_threads=threads,
                        min_envs_per_thread=min_envs_per_thread) as venv:
        policy = bench_policy(spec, venv.observation_space, venv.action_space, "cpu")
        params = {k: v.detach() for k, v in policy.named_parameters()}
        task_list = make(spec.name).unwrapped.sample_tasks(tasks, np.random.default_rng(0))
        sample_episodes(venv, policy, params, task_list, episodes, seed=0)  # warm-up
        start = time.perf_counter()
        batch = sample_episodes(venv, policy, params, task_list, episodes, seed=1)
        return batch.env_steps / (time.perf_counter() - start)


def parse_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"{what}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"{what}: every value must be positive, got {text!r}")
    return values


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"8x8,40x20"`` -> ``[(8, 8), (40, 20)]`` (tasks x episodes)."""
    sizes = []
    for item in text.split(","):
        tasks, sep, episodes = item.strip().partition("x")
        if not sep:
            raise ValueError(f"--sizes: expected TASKSxEPISODES, got {item!r}")
        sizes.append(tuple(parse_ints(f"{tasks},{episodes}", "--sizes")))
    return sizes


def parser() -> Parser:
    p = Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", nargs="+", metavar="NAME", default=["HalfCheetahVel", "AntDir"],
                   help="MuJoCo families (default: HalfCheetahVel AntDir)")
    p.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    p.add_argument("--sizes", default="8x8,40x20",
                   help="sampler sizes TASKSxEPISODES (default 8x8,40x20: the throughput run "
                        "of adaptbed bench and a halfcheetah-vel meta-batch)")
    p.add_argument("--min-envs-per-thread", default=str(MIN_ENVS_PER_THREAD),
                   help="fewest running envs per stepping thread, comma-separated values "
                        f"(default {MIN_ENVS_PER_THREAD}, the simulator's)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        specs = resolve_families(args.family)
        counts = parse_ints(args.threads, "--threads")
        sizes = parse_sizes(args.sizes)
        minimums = parse_ints(args.min_envs_per_thread, "--min-envs-per-thread")
    except (UnknownFamilyError, ValueError) as err:
        return fail(PROG, str(err))
    for spec in specs:
        for k in counts:
            for least in minimums:
                row = {"family": spec.name, "threads": k, "min_envs_per_thread": least,
                       "physics_limit_sps": physics_limit_sps(spec, FULL, k)}
                for tasks, episodes in sizes:
                    row[f"sampler_{tasks}x{episodes}_sps"] = sampler_sps(spec.name, tasks,
                                                                         episodes, k, least)
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
