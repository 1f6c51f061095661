"""Benchmark: sampling a meta-batch in waves of different sizes (README, "Sampling in waves").

``python -m experiments.bench_waves [--family NAME] [--tasks 40] [--episodes 20]
[--waves 1,2,4,8] [--rounds 3] [--horizon H]``

Samples the same meta-batch (``--tasks`` x ``--episodes`` of the family, the preset's fresh
policy on the CPU, one seed) with :func:`meta.sampler.sample_episodes` on simulators of one
wave for each wave count ``w`` (``tasks / w`` tasks each; ``w`` must divide ``--tasks``; one
wave, the baseline, is always measured). After one untimed warm-up each, the wave counts are
timed in turn ``--rounds`` times, in reverse order every other round, so that every setting
sees the same drift of the machine. Prints one JSON object:

* ``family``, ``tasks``, ``episodes``, ``horizon``, ``seed``, ``rounds``: what was sampled;
* ``waves``: per wave count, ``envs`` (the simulator's size), ``sps`` (env steps/s of the
  whole sampling, per round), ``simulator_seconds`` (the time inside the simulator's ``step``
  calls: the action check, the native stepping, the rewards and observations in numpy, the
  tensors; per round) and ``other_seconds`` (the rest: resets, policy forwards, the action
  noise, padding, the sampler's bookkeeping and its final log-probabilities);
* ``speedup``: per wave count, the median over rounds of its ``sps`` over one wave's in the
  same round;
* ``same_episodes``: whether every wave count gave the one-wave episodes bit for bit (the
  warm-up's). This script does not refuse waves under ``meta.sampler.MIN_WAVE_ENVS``, where
  the policy's matrix products may give other bits: this key says whether they did.

The sampler runs its policy on one torch thread whatever the setting.
"""

from __future__ import annotations

import argparse
import contextlib
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
    """Every tensor of ``a`` equals ``b``'s: shapes, dtypes and values (episodes hold no NaN:
    the simulators zero a diverged state's observation and reward)."""
    return all(getattr(a, f).shape == getattr(b, f).shape
               and getattr(a, f).dtype == getattr(b, f).dtype
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


def check_waves(tasks: int, waves: Sequence[int]) -> list[int]:
    """The wave counts to measure: one wave first, then the others given, each once.

    Raises:
        ValueError: a count that does not divide ``tasks``.
    """
    for w in waves:
        if tasks % w:
            raise ValueError(f"--waves: {w} waves do not divide {tasks} tasks evenly")
    return [1, *dict.fromkeys(w for w in waves if w != 1)]


def measure(family_name: str, tasks: int, episodes: int, waves: Sequence[int], rounds: int,
            horizon: int | None = None, seed: int = 0) -> dict[str, Any]:
    """The JSON object of the module docstring, for one family (``waves``: see
    :func:`check_waves`)."""
    spec = resolve_families([family_name])[0]
    waves = check_waves(tasks, waves)
    with contextlib.ExitStack() as stack:
        venvs = {w: stack.enter_context(MujocoBatchEnv(spec.name, tasks // w * episodes, "cpu",
                                                       horizon=horizon)) for w in waves}
        policy = bench_policy(spec, venvs[1].observation_space, venvs[1].action_space, "cpu")
        params = {k: v.detach() for k, v in policy.named_parameters()}
        task_list = make(spec.name).unwrapped.sample_tasks(tasks, np.random.default_rng(seed))
        timers = {w: _TimedSteps(v) for w, v in venvs.items()}
        results: dict[int, dict[str, list[float]]] = {
            w: {"sps": [], "simulator_seconds": [], "other_seconds": []} for w in waves}
        batches = {w: sample_episodes(venv, policy, params, task_list, episodes, seed=seed)
                   for w, venv in venvs.items()}  # warm-up, and the episodes to compare
        same = all(same_episodes(batches[1], batch) for batch in batches.values())
        for r in range(rounds):
            for w in (waves if r % 2 == 0 else waves[::-1]):
                timers[w].seconds = 0.0
                start = time.perf_counter()
                batch = sample_episodes(venvs[w], policy, params, task_list, episodes, seed=seed)
                wall = time.perf_counter() - start
                results[w]["sps"].append(batch.env_steps / wall)
                results[w]["simulator_seconds"].append(timers[w].seconds)
                results[w]["other_seconds"].append(wall - timers[w].seconds)
        sizes = {w: venv.num_envs for w, venv in venvs.items()}
        horizons = {w: venv.horizon for w, venv in venvs.items()}
    base = results[1]["sps"]
    return {
        "family": spec.name, "tasks": tasks, "episodes": episodes, "horizon": horizons[1],
        "seed": seed, "rounds": rounds,
        "waves": {str(w): {"envs": sizes[w], **results[w]} for w in waves},
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
                   help="wave counts (default 1,2,4,8; one wave, the baseline, is always "
                        "measured)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    p.add_argument("--horizon", type=int, default=None,
                   help="episode length (default: the family's)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:  # the arguments; a failure while measuring is not a usage error
        for name in ("tasks", "episodes", "rounds"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name} must be positive, got {getattr(args, name)}")
        if args.horizon is not None and args.horizon < 1:
            raise ValueError(f"--horizon must be positive, got {args.horizon}")
        resolve_families([args.family])
        waves = check_waves(args.tasks, parse_ints(args.waves, "--waves"))
    except (UnknownFamilyError, ValueError) as err:
        return fail(PROG, str(err))
    result = measure(args.family, args.tasks, args.episodes, waves, args.rounds, args.horizon)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
