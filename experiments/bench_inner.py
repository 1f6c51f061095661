"""Benchmark: batched vs per-task-loop inner loop (adapt + second-order meta-gradient, the adapted
policies evaluated in the same form).

``python -m experiments.bench_inner [--preset NAME ...] [--device cpu|cuda] [--repeats R]``
prints one JSON object per preset with the seconds of one adaptation (the preset's inner
steps) + meta-gradient in each form, measured in the same run on synthetic episodes of the
preset's shapes (meta-batch size x episodes per task x horizon, the family's observation and
action sizes). The faster form per device is what ``maml.inner_batching=auto`` uses
(``experiments.train.AUTO_BATCHING``). ``malloc_keeps_freed``: whether the process keeps freed
memory for reuse, as ``adaptbed`` does (:mod:`experiments.memory`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Sequence

import torch

from experiments.cliutil import Parser
from experiments.memory import keep_freed_memory
from agents.policies import make_policy
from envs.registry import family, make
from experiments.presets import get_preset
from experiments.train import inner_loop
from meta.episodes import Episodes
from meta.maml import InnerLoop, adapt, reinforce_loss, with_advantages


def synthetic_episodes(n: int, t: int, e: int, obs_dim: int, act_dim: int, device: str,
                       generator: torch.Generator) -> Episodes:
    """Random episodes ``[N, T, E, ...]`` with advantages (all steps valid)."""
    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(device)

    mask = torch.ones(n, t, e, device=device)
    ep = Episodes(observations=randn(n, t, e, obs_dim), actions=randn(n, t, e, act_dim),
                  rewards=randn(n, t, e), mask=mask, log_probs=torch.zeros_like(mask),
                  last_observations=randn(n, e, obs_dim),
                  truncated=torch.ones(n, e, dtype=torch.bool, device=device),
                  unstable=torch.zeros(n, e, dtype=torch.bool, device=device))
    return with_advantages(ep, 0.99, 1.0)


def time_form(policy, train: list[Episodes], valid: Episodes, inner: InnerLoop, repeats: int,
              device: str) -> float:
    """The best of ``repeats`` timings of one adaptation (``len(train)`` inner steps) and
    meta-gradient in ``inner``'s form."""
    params = dict(policy.named_parameters())
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        adapted = adapt(policy, params, train, inner, create_graph=not inner.first_order)
        loss = reinforce_loss(policy, adapted, valid, per_task_params=True,
                              batching=inner.batching).mean()
        torch.autograd.grad(loss, list(params.values()))
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def bench(preset: str, device: str, repeats: int) -> dict:
    cfg = get_preset(preset)
    spec = family(cfg.env.family)
    env = make(spec.name)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    n, e, t = cfg.maml.meta_batch_size, cfg.maml.episodes_per_task, spec.horizon
    g = torch.Generator().manual_seed(0)
    policy = make_policy(obs_dim, env.action_space, cfg.policy.hidden_sizes,
                         cfg.policy.activation).to(device)
    preset_inner = inner_loop(cfg)  # the preset's steps; its batching is replaced per form
    steps = preset_inner.step_sizes
    train = [synthetic_episodes(n, t, e, obs_dim, act_dim, device, g) for _ in steps]
    valid = synthetic_episodes(n, t, e, obs_dim, act_dim, device, g)
    out = {"preset": preset, "device": device, "tasks": n, "episodes_per_task": e, "horizon": t,
           "inner_steps": len(steps), "torch_threads": torch.get_num_threads()}
    for form in ("batched", "loop"):
        inner = dataclasses.replace(preset_inner, batching=form)
        out[f"{form}_seconds"] = time_form(policy, train, valid, inner, repeats, device)
    out["faster"] = min(("batched", "loop"), key=lambda f: out[f"{f}_seconds"])
    out["loop_over_batched"] = out["loop_seconds"] / out["batched_seconds"]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="python -m experiments.bench_inner", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", nargs="+", default=["navigation-2d", "halfcheetah-vel"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=3, help="timings per form; the best counts")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_inner: error: --device cuda but no CUDA GPU is available", file=sys.stderr)
        return 2
    malloc_kept = keep_freed_memory()  # as the `adaptbed` command does
    for preset in args.preset:
        result = {**bench(preset, args.device, args.repeats), "malloc_keeps_freed": malloc_kept}
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
