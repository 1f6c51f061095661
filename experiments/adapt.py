"""``adaptbed adapt``: adapt a meta-trained policy to one task you give, and save the result.

Usage::

    adaptbed adapt RUN_DIR --task '{"velocity": 1.7}' --save DIR
                   [--inner-steps K] [--episodes-per-step N] [--seed S] [--checkpoint latest|best|iteration-<k>]

The adaptation is exactly the evaluation protocol of ``adaptbed evaluate`` on a single task:
K policy-gradient steps (the first at the run's ``fast_lr``, later ones at ``fast_lr / 2``,
but as many as the run's inner steps at ``fast_lr``),
each from N fresh episodes, then N more episodes with the adapted policy. With the same seed the
returns equal those ``adaptbed evaluate`` reports on a split file that holds only that task
(tested). In a split of several tasks a task's episodes sit further along the evaluation's
batch, whose resets and action noise are drawn for the whole batch, so its numbers there
differ by sampling noise.

``DIR`` receives ``policy.pt`` (the adapted ``state_dict`` with the run's config, the task and
the returns after each step; load it with :func:`load_adapted`) and ``adapted.json`` (the same
without the weights). ``adaptbed rollout DIR`` evaluates or renders it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from envs.registry import make
from envs.tasks import TaskError, task_from_dict, task_to_dict
from envs.vector import make_vector_env
from experiments import config as cfglib
from experiments.cliutil import Parser, seed as seed_arg
from experiments.evaluate import (DEFAULT_INNER_STEPS, USER_ERRORS, LoadedRun, Protocol,
                                  available_device, checkpoint_name, load_run, policy_from_state,
                                  protocol_of)
from experiments.rundir import (RunDirError, atomic_write_text, load_checkpoint,
                                save_checkpoint)
from meta.adaptation import collect_meta_batch, step_seeds
from meta.maml import InnerLoop, adapt

POLICY_FILE = "policy.pt"
SUMMARY_FILE = "adapted.json"


def parse_task(family_name: str, text: str) -> Any:
    """A task of ``family_name`` from its JSON text, validated by the family's ``coerce_task``.

    Raises:
        TaskError: malformed JSON, wrong fields, or a value outside the family's range.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise TaskError(f"--task is not valid JSON ({err.msg} at char {err.pos}): {text!r}") from None
    env = make(family_name)
    try:
        return env.unwrapped.coerce_task(data)
    finally:
        env.close()


@dataclass
class Adapted:
    """A policy adapted to one task."""

    policy: nn.Module
    task: Any
    returns: list[float]  # mean return after 0..K steps (the last with the adapted policy)


def adapt_to_task(policy: nn.Module, task: Any, protocol: Protocol, seed: int) -> Adapted:
    """Adapt ``policy`` to ``task`` with the evaluation protocol.

    Sampling and adaptation are :func:`meta.adaptation.collect_meta_batch` with the schedule
    of :func:`meta.evaluation.step_sizes` and the seeds of
    :func:`meta.evaluation.evaluate_adaptation`; the final parameters are recomputed from the
    same episodes with :func:`meta.maml.adapt` (deterministic, so identical to those that
    sampled the last batch).

    Returns:
        a copy of ``policy`` holding the adapted parameters (``policy`` is not modified).
    """
    inner = InnerLoop(protocol.step_sizes, first_order=True,
                      batching="loop")
    n = protocol.episodes_per_step
    venv = make_vector_env(protocol.family, n, protocol.device)
    base = dict(policy.named_parameters())
    try:
        batch, metrics = collect_meta_batch(venv, policy, base, [task], inner, n,
                                            protocol.advantages,
                                            step_seeds(seed, 0, inner.num_steps + 1))
    finally:
        venv.close()
    params = adapt(policy, base, batch.train, inner, create_graph=False)
    adapted = _copy_with(policy, {k: v[0].detach() for k, v in params.items()})
    returns = [float(metrics[f"return_step_{k}"]) for k in range(inner.num_steps + 1)]
    return Adapted(adapted, task, returns)


def _copy_with(policy: nn.Module, params: dict[str, torch.Tensor]) -> nn.Module:
    """A deep copy of ``policy`` whose parameters are ``params``."""
    import copy

    clone = copy.deepcopy(policy)
    with torch.no_grad():
        for name, p in clone.named_parameters():
            p.copy_(params[name])
    return clone


def save_adapted(directory: Path, adapted: Adapted, run: LoadedRun, protocol: Protocol,
                 seed: int) -> dict[str, Any]:
    """Write ``policy.pt`` and ``adapted.json`` into ``directory``; returns the summary."""
    summary = {
        "family": run.family, "task": task_to_dict(adapted.task),
        "returns": adapted.returns, "steps": list(range(len(adapted.returns))),
        "inner_steps": protocol.inner_steps, "episodes_per_step": protocol.episodes_per_step,
        "step_sizes": list(protocol.step_sizes), "seed": seed,
        "run_dir": str(run.run_dir.resolve()), "checkpoint": run.checkpoint,
        "checkpoint_iteration": run.iteration,
    }
    state = {"state_dict": adapted.policy.state_dict(), "config": cfglib.to_dict(run.cfg),
             **summary}
    save_checkpoint(directory / POLICY_FILE, state)
    atomic_write_text(directory / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary


def load_adapted(directory: Path) -> tuple[nn.Module, cfglib.Config, Any, dict[str, Any]]:
    """``(policy, config, task, summary)`` of a folder written by ``adaptbed adapt``.

    Raises:
        RunDirError: missing or corrupt ``policy.pt``.
        ConfigError, TaskError: a config or task this version cannot read.
    """
    path = directory / POLICY_FILE
    state = load_checkpoint(path)
    if not {"state_dict", "config", "task", "family"} <= state.keys():
        raise RunDirError(f"{path} is not an adapted policy written by `adaptbed adapt`")
    cfg = cfglib.from_dict(state["config"])
    cfg = cfglib.apply_overrides(cfg, [f"run.device={available_device(cfg)}"])
    policy = policy_from_state(cfg, state["state_dict"], path)
    env = make(cfg.env.family)
    try:
        task = env.unwrapped.coerce_task(task_from_dict(env.unwrapped.task_type, state["task"]))
    finally:
        env.close()
    summary = {k: v for k, v in state.items() if k not in ("state_dict", "config", "version")}
    return policy, cfg, task, summary


# --- command line ------------------------------------------------------------------------------
def parser() -> Parser:
    p = Parser(
        prog="adaptbed adapt",
        description="Adapt a meta-trained policy to one task (K policy-gradient steps, the "
                    "evaluation protocol) and save the adapted policy.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--task", required=True,
                   help='the task as JSON, e.g. \'{"velocity": 1.7}\' or \'{"goal": [0.3, -0.2]}\'')
    p.add_argument("--save", type=Path, required=True, metavar="DIR",
                   help="folder for policy.pt and adapted.json")
    p.add_argument("--inner-steps", type=int, default=DEFAULT_INNER_STEPS,
                   help=f"adaptation steps K (default {DEFAULT_INNER_STEPS})")
    p.add_argument("--episodes-per-step", type=int,
                   help="episodes per step (default: the run's maml.episodes_per_task)")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--checkpoint", default="latest", type=checkpoint_name,
                   help="latest (default), best, or iteration-<k> (kept by run.keep_every)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        run = load_run(args.run_dir, args.checkpoint)
        protocol = protocol_of(run, args.inner_steps, args.episodes_per_step)
        task = parse_task(run.family, args.task)
        adapted = adapt_to_task(run.policy, task, protocol, args.seed)
        save_adapted(args.save, adapted, run, protocol, args.seed)
    except USER_ERRORS as err:
        print(f"adaptbed adapt: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"adaptbed adapt: error: cannot write {args.save}: {err.strerror}", file=sys.stderr)
        return 2
    print(f"{run.family} task {json.dumps(task_to_dict(task))}: mean return over "
          f"{protocol.episodes_per_step} episodes after k steps")
    for k, r in enumerate(adapted.returns):
        print(f"  k={k}: {r:.2f}")
    print(f"saved {args.save / POLICY_FILE}; try `adaptbed rollout {args.save}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
