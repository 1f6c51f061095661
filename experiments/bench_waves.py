"""Benchmark: sampling a meta-batch in waves of different sizes (README, "Sampling in waves").

``python -m experiments.bench_waves [--family NAME] [--tasks 40] [--episodes 20]
[--waves 1,2,4,8] [--rounds 3] [--horizon H]``

Samples the same meta-batch (``--tasks`` x ``--episodes`` of the family, the preset's fresh
policy on the CPU, one seed) with :func:`meta.sampler.sample_episodes` on simulators of one
wave for each wave count ``w`` (``tasks / w`` tasks each; ``w`` must divide ``--tasks``), the
wave counts taken in turn ``--rounds`` times after one untimed warm-up each, so that every
setting sees the same drift of the machine. Prints one JSON object:

* ``waves``: per wave count, ``envs`` (the simulator's size), ``sps`` (env steps/s of the
  whole sampling, per round), ``simulator_seconds`` (the time inside the simulator's ``step``,
  native stepping and its numpy, per round) and ``other_seconds`` (the rest: policy forwards,
  action noise, resets, bookkeeping);
* ``speedup``: per wave count, the median over rounds of its ``sps`` over one wave's in the
  same round (the baseline, ``1``);
* ``same_episodes``: whether every wave count gave the one-wave episodes bit for bit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any, Sequence

import numpy as np
import torch

from envs.mujoco_batch import MujocoBatchEnv
from envs.registry import UnknownFamilyError, make
from experiments.bench import bench_policy, resolve_families
from experiments.bench_threads import parse_ints
from experiments.cliutil import Parser, fail
from meta.episodes import Episodes
from meta.sampler import sample_episodes

PROG = "python -m experiments.bench_waves"
FIELDS = ("observations", "actions", "rewards", "mask", "log_probs", "last_observations",
          "truncated", "unstable")


def same_episodes(a: Episodes, b: Episodes) -> bool:
    """Every tensor of ``a`` equals ``b``'s, bit for bit (shapes and dtypes included)."""
    return all(getattr(a, f).shape == getattr(b, f).shape
               and torch.equal(getattr(a, f), getattr(b, f)) for f in FIELDS)


class _TimedSteps:
    """Accumulates the seconds spent in a simulator's ``step`` (wraps the bound method)."""

    def __init__(self, venv: MujocoBatchEnv):
        self.seconds = 0.0
        self._step = venv.step
        venv.step = self  # an instance attribute: only this simulator is timed

    def __call__(self, actions: torch.Tensor) -> Any:
        start = time.perf_counter()
        try:
            return self._step(actions)
        finally:
            self.seconds += time.perf_counter() - start


def measure(family_name: str, tasks: int, episodes: int, waves: Sequence[int], rounds: int,
            horizon: int | None = None, seed: int = 0) -> dict[str, Any]:
    """The JSON object of the module docstring, for one family."""
    spec = resolve_families([family_name])[0]
    for w in waves:
        if tasks % w:
            raise ValueError(f"--waves: {w} waves do not divide {tasks} tasks evenly")
    venvs = {w: MujocoBatchEnv(spec.name, tasks // w * episodes, "cpu", horizon=horizon)
             for w in waves}
    try:
        any_venv = next(iter(venvs.values()))
        policy = bench_policy(spec, any_venv.observation_space, any_venv.action_space, "cpu")
        params = {k: v.detach() for k, v in policy.named_parameters()}
        task_list = make(spec.name).unwrapped.sample_tasks(tasks, np.random.default_rng(seed))
        timers = {w: _TimedSteps(v) for w, v in venvs.items()}
        results: dict[int, dict[str, list[float]]] = {
            w: {"sps": [], "simulator_seconds": [], "other_seconds": []} for w in waves}
        reference, same = None, True
        for w, venv in venvs.items():  # warm-up, and the episodes to compare
            batch = sample_episodes(venv, policy, params, task_list, episodes, seed=seed)
            reference = batch if reference is None else reference
            same = same and same_episodes(reference, batch)
        for _ in range(rounds):
            for w, venv in venvs.items():
                timers[w].seconds = 0.0
                start = time.perf_counter()
                batch = sample_episodes(venv, policy, params, task_list, episodes, seed=seed)
                wall = time.perf_counter() - start
                results[w]["sps"].append(batch.env_steps / wall)
                results[w]["simulator_seconds"].append(timers[w].seconds)
                results[w]["other_seconds"].append(wall - timers[w].seconds)
    finally:
        for venv in venvs.values():
            venv.close()
    base = results[waves[0]]["sps"]
    return {
        "family": spec.name, "tasks": tasks, "episodes": episodes, "rounds": rounds,
        "baseline_waves": waves[0], "torch_threads": torch.get_num_threads(),
        "waves": {str(w): {"envs": venvs[w].num_envs, **results[w]} for w in waves},
        "speedup": {str(w): statistics.median(a / b for a, b in zip(results[w]["sps"], base))
                    for w in waves},
        "same_episodes": same,
    }


def parser() -> Parser:
    p = Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", default="HalfCheetahVel", metavar="NAME",
                   help="a MuJoCo family (default HalfCheetahVel)")
    p.add_argument("--tasks", type=int, default=40, help="tasks of the meta-batch (default 40)")
    p.add_argument("--episodes", type=int, default=20, help="episodes per task (default 20)")
    p.add_argument("--waves", default="1,2,4,8",
                   help="wave counts, the first the baseline (default 1,2,4,8)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    p.add_argument("--horizon", type=int, default=None,
                   help="episode length (default: the family's)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        for name in ("tasks", "episodes", "rounds"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name} must be positive, got {getattr(args, name)}")
        if args.horizon is not None and args.horizon < 1:
            raise ValueError(f"--horizon must be positive, got {args.horizon}")
        waves = parse_ints(args.waves, "--waves")
        result = measure(args.family, args.tasks, args.episodes, waves, args.rounds,
                         args.horizon)
    except (UnknownFamilyError, ValueError) as err:
        return fail(PROG, str(err))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
