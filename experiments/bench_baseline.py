"""Benchmark: the linear value baseline's fit on one meta-batch of a preset's episodes.

``python -m experiments.bench_baseline [--preset NAME ...] [--repeats N] [--torch-threads N]``

For each preset it samples one batch of episodes (the meta-batch's tasks x episodes, the preset's
initial policy, as the first sampling of meta-iteration 0), computes the discounted returns,
then times, best of ``--repeats``, on the same data:

* ``normal_seconds``: :func:`agents.baseline.fit` (the normal equations over the valid steps,
  solved by Cholesky; what training uses);
* ``lstsq_seconds``: the reference it replaced, ``torch.linalg.lstsq`` on the whole padded
  design matrix augmented with ``sqrt(reg) I`` rows, in float64 (:func:`lstsq_fit`);
* ``advantages_seconds``: :func:`meta.maml.with_advantages` (fit, predict, GAE, normalisation);

and reports ``valid_fraction`` (the share of valid steps among the ``T x E`` rows of a task),
``max_weight_difference`` (the largest absolute difference between the two fits' weights) and
``max_value_difference`` (the same for the baseline's values). One JSON object per preset.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Callable, Sequence

import torch

from agents import baseline
from experiments import config as cfglib
from experiments.cliutil import Parser, fail
from experiments.presets import get_preset
from meta.returns import discounted_returns

PROG = "python -m experiments.bench_baseline"


def lstsq_fit(obs: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
              reg: float = baseline.DEFAULT_REG) -> torch.Tensor:
    """The ridge fit by ``lstsq`` on ``[Phi; sqrt(reg) I] w = [R; 0]`` over all ``T x E`` rows of
    each task (padding included, as zero rows): ``[N, F]`` (no retries; the reference)."""
    phi = baseline.features(obs.double(), mask).flatten(-3, -2)  # [N, T*E, F]
    n, f = phi.shape[0], phi.shape[-1]
    target = torch.where(mask != 0, returns.double(), 0.0).flatten(-2)  # [N, T*E]
    design = torch.cat([phi, reg**0.5 * torch.eye(f, dtype=phi.dtype).expand(n, f, f)], dim=-2)
    padded = torch.cat([target, target.new_zeros(n, f)], dim=-1).unsqueeze(-1)
    return torch.linalg.lstsq(design, padded).solution.squeeze(-1)


def best_seconds(work: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def bench(preset: str, repeats: int) -> dict:
    from experiments.train import build, iteration_tasks
    from meta.adaptation import step_seeds
    from meta.maml import with_advantages
    from meta.sampler import sample_episodes

    cfg = get_preset(preset)
    parts = build(cfg)
    try:
        tasks = iteration_tasks(parts.task_source, cfg, 0)
        seed = step_seeds(cfg.run.seed, 0, parts.inner.num_steps + 1)[0]
        params = {k: v.detach() for k, v in parts.policy.named_parameters()}
        episodes = sample_episodes(parts.venv, parts.policy, params, tasks,
                                   cfg.maml.episodes_per_task, seed)
    finally:
        parts.venv.close()
    obs, mask = episodes.observations, episodes.mask
    returns = discounted_returns(episodes.rewards, mask, cfg.maml.gamma, time_axis=1)
    normal = baseline.fit(obs, returns, mask).double()
    reference = lstsq_fit(obs, returns, mask)
    values = baseline.predict(normal, obs.double(), mask)
    reference_values = baseline.predict(reference, obs.double(), mask)
    maml = cfg.maml
    return {
        "preset": preset, "tasks": len(tasks), "episodes_per_task": maml.episodes_per_task,
        "longest_episode": int(mask.shape[1]), "obs_dim": int(obs.shape[-1]),
        "valid_fraction": float(mask.mean()), "torch_threads": torch.get_num_threads(),
        "normal_seconds": best_seconds(lambda: baseline.fit(obs, returns, mask), repeats),
        "lstsq_seconds": best_seconds(lambda: lstsq_fit(obs, returns, mask), repeats),
        "advantages_seconds": best_seconds(
            lambda: with_advantages(episodes, maml.gamma, maml.gae_lambda,
                                    maml.bootstrap_truncated),
            repeats),
        "max_weight_difference": float((normal - reference).abs().max()),
        "max_value_difference": float((values - reference_values).abs().max()),
    }


def parser() -> Parser:
    p = Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", nargs="+", default=["halfcheetah-vel", "ant-vel"],
                   help="presets (default: halfcheetah-vel ant-vel)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats, best kept (default 3)")
    p.add_argument("--torch-threads", type=int, default=0,
                   help="torch intra-op threads (default 0: torch's own, as adaptbed train)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        for name in args.preset:
            get_preset(name)
        if args.repeats < 1:
            raise ValueError("--repeats must be at least 1")
        if args.torch_threads < 0:
            raise ValueError("--torch-threads must be 0 (torch's default) or positive")
    except (ValueError, cfglib.ConfigError) as err:
        return fail(PROG, str(err))
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    for name in args.preset:
        print(json.dumps(bench(name, args.repeats)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
