"""Benchmark: the TRPO outer step with each Fisher estimate, on the same meta-batch.

``python -m experiments.bench_fisher [--preset NAME] [--run-dir DIR [--checkpoint FILE]] [--iteration I]
[--settings exact:1,exact:0.1,...] [--torch-threads N] [KEY=VALUE ...]`` samples one meta-batch
(from a run's latest checkpoint with ``--run-dir``, or the checkpoint file ``--checkpoint``, else
from the preset's initial policy),
then takes one TRPO step from the *same* parameters with every setting ``fisher:subsample``
(``outer.fisher`` and ``outer.fisher_subsample``). It prints one JSON object per setting:

* ``seconds``: the outer step's wall-clock time (after one untimed warm-up step);
* ``surrogate_improvement``: ``loss_before - loss_after`` of the post-adaptation surrogate
  (Schulman et al. 2015, eq. 14) over *all* tasks, the quantity the step maximises;
* ``kl``, ``ls_steps``, ``accepted``: the exact KL of the accepted step, line-search trials;
* ``speedup`` and ``improvement_ratio``: against the first setting (the baseline, by default
  the paper's ``exact:1``), measured in the same run;
* ``collect_seconds``: the sampling and adaptation of the meta-batch (measured once, in the
  process's first meta-iteration, so with its one-off costs: about 10% above a warm one), and
  ``improvement_per_iteration_second``: ``surrogate_improvement / (collect_seconds + seconds)``,
  what the setting's step gains per second of a whole meta-iteration;
* where the step's time goes: ``conjugate_gradient_seconds`` (the Fisher-vector products),
  ``line_search_adaptations`` and ``line_search_adaptation_seconds`` (the line-search trials,
  ``meta.outer.candidate_loss_and_kl``: each re-adapts the tasks from the candidate
  parameters and evaluates the adapted policies, stopping early once the KL bound is broken);
  with ``run.device=cuda`` every timer, ``seconds`` included, waits for the GPU's queued work;
* ``matmul_gflop``: the step's matrix products (backward ones included), in GFLOP;
  ``matmul_isolated_seconds``: their time when each is replayed alone, hot in cache, at the
  BLAS's own speed (:mod:`experiments.matmuls`); ``matmul_share``: that over ``seconds``, a
  lower bound on the part of the step that is matrix products (the rest is element-wise ops,
  memory traffic and autograd's bookkeeping);
* ``minor_page_faults`` during the step, and ``malloc_keeps_freed``: whether the process keeps
  freed memory for reuse (:mod:`experiments.memory`; ``ADAPTBED_MALLOC=system`` turns it off).

The surrogate improvement per step is what a cheaper Fisher may cost; the line search keeps the
exact KL bound whatever the estimate (``tests/meta/test_outer.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from experiments import config as cfglib
from experiments.cliutil import Parser, fail
from experiments.matmuls import Matmul, MatmulRecorder, gflop, isolated_seconds
from experiments.memory import keep_freed_memory
from experiments.presets import get_preset
from experiments.rundir import RunDirError, load_checkpoint, load_latest_checkpoint, read_json
from meta.adaptation import device_clock as clock  # waits for queued CUDA work

DEFAULT_SETTINGS = "exact:1,exact:0.25,exact:0.1,first_order:1,first_order:0.1"


def parse_settings(text: str) -> list[tuple[str, float]]:
    """``"exact:1,first_order:0.1"`` -> ``[("exact", 1.0), ("first_order", 0.1)]``."""
    out = []
    for item in text.split(","):
        fisher, _, subsample = item.strip().partition(":")
        try:
            value = float(subsample or 1.0)
        except ValueError:
            raise ValueError(f"setting {item!r}: the subsample {subsample!r} is not a number") from None
        if fisher not in cfglib.FISHER or not 0 < value <= 1:
            raise ValueError(f"setting {item!r}: expected FISHER:SUBSAMPLE with FISHER in "
                             f"{'|'.join(cfglib.FISHER)} and SUBSAMPLE in (0, 1]")
        out.append((fisher, value))
    return out


def run_config(run_dir: Path | None, preset: str, overrides: Sequence[str]) -> cfglib.Config:
    if run_dir is None:
        return cfglib.apply_overrides(get_preset(preset), overrides)
    cfg = cfglib.from_dict(read_json(run_dir / "config.json")["config"])
    return cfglib.apply_overrides(cfg, overrides)


@contextlib.contextmanager
def timed_outer_parts(timers: dict[str, float], device: torch.device | str) -> Iterator[None]:
    """Time ``meta.outer``'s conjugate gradient and line-search trials
    (``candidate_loss_and_kl``) into ``timers`` while the block runs, with ``clock`` (:func:`meta.adaptation.device_clock`) on
    ``device`` (the outer update's)."""
    from meta import outer

    real_cg, real_trial = outer.conjugate_gradient_and_product, outer.candidate_loss_and_kl

    def cg(*args: Any, **kwargs: Any) -> Any:
        began = clock(device)
        try:
            return real_cg(*args, **kwargs)
        finally:
            timers["conjugate_gradient"] = (timers.get("conjugate_gradient", 0.0)
                                            + clock(device) - began)

    def trial(*args: Any, **kwargs: Any) -> Any:
        began = clock(device)
        try:
            return real_trial(*args, **kwargs)
        finally:
            timers["line_search"] = timers.get("line_search", 0.0) + clock(device) - began
            timers["line_search_calls"] = timers.get("line_search_calls", 0) + 1

    outer.conjugate_gradient_and_product, outer.candidate_loss_and_kl = cg, trial
    try:
        yield
    finally:
        outer.conjugate_gradient_and_product, outer.candidate_loss_and_kl = real_cg, real_trial


def minor_page_faults() -> int:
    """This process's minor page faults so far (``ru_minflt``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def bench(cfg: cfglib.Config, settings: Sequence[tuple[str, float]], run_dir: Path | None,
          iteration: int, checkpoint: Path | None = None, malloc_kept: bool = False) -> list[dict]:
    """One meta-batch, one TRPO step per setting from the same parameters: ``checkpoint``'s,
    else ``run_dir``'s latest, else the preset's initial policy."""
    from experiments.train import build, iteration_tasks
    from meta.adaptation import collect_meta_batch, step_seeds
    from meta.outer import TRPO, fisher_task_count

    parts = build(cfg)
    try:
        if checkpoint is not None:
            parts.policy.load_state_dict(load_checkpoint(checkpoint)["policy"])
        elif run_dir is not None:
            state, _ = load_latest_checkpoint(run_dir / "checkpoints")
            parts.policy.load_state_dict(state["policy"])
        start = {k: v.detach().clone() for k, v in parts.policy.state_dict().items()}
        tasks = iteration_tasks(parts.task_source, cfg, iteration)
        seeds = step_seeds(cfg.run.seed, iteration, parts.inner.num_steps + 1)
        batch, metrics = collect_meta_batch(
            parts.venv, parts.policy, dict(parts.policy.named_parameters()), tasks, parts.inner,
            cfg.maml.episodes_per_task, parts.advantages, seeds)
    finally:
        parts.venv.close()
    o, rows = cfg.outer, []
    collect_seconds = metrics["seconds_sampling"] + metrics["seconds_adapting"]

    def take_step(fisher: str, subsample: float) -> tuple[dict, float]:
        timers.clear()
        parts.policy.load_state_dict(start)
        trpo = TRPO(parts.policy, parts.inner, max_kl=o.max_kl, cg_iters=o.cg_iters,
                    cg_damping=o.cg_damping, ls_max_steps=o.ls_max_steps,
                    ls_backtrack_ratio=o.ls_backtrack_ratio, fisher=fisher,
                    fisher_subsample=subsample)
        faults = minor_page_faults()
        began = clock(cfg.run.device)
        with timed_outer_parts(timers, cfg.run.device):
            step = trpo.step(batch)
        seconds = clock(cfg.run.device) - began
        timers["minor_page_faults"] = minor_page_faults() - faults
        return step, seconds

    def count_matmuls(fisher: str, subsample: float) -> Counter[Matmul]:
        """The step's matrix products, recorded in one more (untimed) run of the same step."""
        with MatmulRecorder() as recorder:
            take_step(fisher, subsample)
        return recorder.counts

    timers: dict[str, float] = {}
    take_step(*settings[-1])  # untimed warm-up (allocator, first autograd/vmap calls)
    for fisher, subsample in settings:
        matmuls = count_matmuls(fisher, subsample)
        step, seconds = take_step(fisher, subsample)
        matmul_seconds = isolated_seconds(matmuls)
        rows.append({
            "preset": cfg.preset, "run_dir": None if run_dir is None else str(run_dir),
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "iteration": iteration, "fisher": fisher, "fisher_subsample": subsample,
            "fisher_tasks": fisher_task_count(batch.num_tasks, subsample),
            "tasks": batch.num_tasks, "seconds": seconds,
            "surrogate_improvement": step["loss_before"] - step["loss_after"],
            "kl": step["kl"], "ls_steps": step["ls_steps"], "accepted": step["accepted"],
            "return_before_adaptation": metrics["return_step_0"],
            "conjugate_gradient_seconds": timers.get("conjugate_gradient", 0.0),
            "line_search_adaptations": int(timers.get("line_search_calls", 0)),
            "line_search_adaptation_seconds": timers.get("line_search", 0.0),
            "torch_threads": torch.get_num_threads(),
            "minor_page_faults": int(timers["minor_page_faults"]),
            "matmul_gflop": gflop(matmuls),
            "matmul_isolated_seconds": matmul_seconds,
            "matmul_share": matmul_seconds / seconds,
            "malloc_keeps_freed": malloc_kept,
            "collect_seconds": collect_seconds,
            "improvement_per_iteration_second": (step["loss_before"] - step["loss_after"])
            / (collect_seconds + seconds),
        })
    base = rows[0]
    for row in rows:
        row["speedup"] = base["seconds"] / row["seconds"]
        row["improvement_ratio"] = (row["surrogate_improvement"] / base["surrogate_improvement"]
                                    if base["surrogate_improvement"] > 0 else float("nan"))
    return rows


def parser() -> Parser:
    p = Parser(prog="python -m experiments.bench_fisher", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides, e.g. maml.meta_batch_size=8")
    p.add_argument("--preset", default="halfcheetah-vel", help="preset when no --run-dir")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="start from this run's config and latest checkpoint")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="start from this checkpoint file of --run-dir instead of its latest")
    p.add_argument("--iteration", type=int, default=0,
                   help="meta-iteration whose tasks and seeds to sample (default 0)")
    p.add_argument("--settings", default=DEFAULT_SETTINGS,
                   help=f"FISHER:SUBSAMPLE list; the first is the baseline (default {DEFAULT_SETTINGS})")
    p.add_argument("--torch-threads", type=int, default=0,
                   help="torch intra-op threads (default 0: torch's own, as adaptbed train)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_intermixed_args(argv)
    try:
        settings = parse_settings(args.settings)
        cfg = run_config(args.run_dir, args.preset, args.overrides)
        cfglib.validate(cfg)
    except (ValueError, cfglib.ConfigError, RunDirError) as err:
        return fail("bench_fisher", str(err))
    malloc_kept = keep_freed_memory()  # as the `adaptbed` command does
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    try:
        if args.checkpoint is not None and args.run_dir is None:
            raise RunDirError("--checkpoint needs the --run-dir whose config it belongs to")
        rows = bench(cfg, settings, args.run_dir, args.iteration, args.checkpoint, malloc_kept)
    except RunDirError as err:
        return fail("bench_fisher", str(err))
    for row in rows:
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
