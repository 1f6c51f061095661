"""``adaptbed evaluate``: adaptation curves of a meta-trained run on held-out tasks, with baselines.

Usage::

    adaptbed evaluate RUN_DIR [--split test|ood|FILE.json] [--inner-steps K]
                      [--episodes-per-step N] [--seeds S ...] [--baselines pretrained,random,ppo,oracle,stand_still]
                      [--baseline-dir DIR] [--ppo-budgets 1,10,100]
                      [--checkpoint latest|best|iteration-<k>] [--max-tasks M] [--add] [--quiet]

The protocol is the MAML paper's (Finn et al. 2017, sec. 5.3 / Fig. 5; implemented by
:func:`meta.evaluation.evaluate_adaptation`): for every held-out task, sample N episodes with
the current parameters, take one policy-gradient step at ``fast_lr`` (as many as the run
trained with, if more), further steps at ``fast_lr / 2``, and measure the mean return after
0, 1, ..., K steps, each time on fresh episodes. Per agent the result is the mean over tasks with a 95% confidence interval over tasks
(Student t). With several ``--seeds``, each task's values are first averaged over the seeds,
then mean and CI are taken over tasks (so the CI measures the spread between tasks, as with one
seed, and the number of tasks stays the sample size).

Agents:

* ``maml``: the run's policy (``--checkpoint latest|best|iteration-<k>``, default ``latest``);
* ``random``: a freshly initialised policy of the same architecture (``torch.manual_seed(
  RANDOM_INIT_SEED + seed)``), fine-tuned the same way;
* ``pretrained``: the multi-task policy of ``adaptbed baseline pretrained`` (a run trained
  with ``maml.num_inner_steps=0``), fine-tuned the same way;
* ``ppo``: PPO from scratch on each task with the env steps the adaptation uses,
  ``K * N * horizon``; ``--ppo-budgets 1,10,100`` adds ``ppo_x10`` and ``ppo_x100`` with 10x and
  100x that budget. PPO has no intermediate "gradient steps", so these agents report a single
  point: ``"steps": [K]`` (``"kind": "point"``), drawn as a marker at K;
* ``oracle``: the per-task PPO expert of ``adaptbed baseline oracle`` (it is told the task), no
  adaptation: a flat curve over 0..K (``"kind": "flat"``), drawn as a dashed line;
* ``stand_still``: the all-zero action on every task (N episodes), no adaptation: the flat
  "do nothing" reference a learning agent must beat.

``maml``, ``random`` and ``pretrained`` act by sampling from their Gaussian, as in the paper's
protocol (and as the adaptation needs); ``ppo`` and ``oracle`` are evaluated by
:mod:`agents.sb3` with SB3's deterministic (mean) actions, over N episodes per task.
``--max-tasks M`` keeps the first M tasks of the split (quick checks; recorded in the JSON
through its ``tasks`` list).

Outputs, in ``RUN_DIR/eval/`` (written atomically): ``<split>.json`` (the schema below),
``<split>.csv`` (agent, step, mean, ci95), ``<split>.png`` (the plot) and TensorBoard scalars
``eval/<split>/<agent>`` (x = number of gradient steps) in ``RUN_DIR/tb``. Those are the
latest checkpoint's; another checkpoint's files and tags are named ``<split>-best``,
``<split>-iteration-<k>`` (:func:`output_stem`)::

    {"split": "test", "family": "Navigation2D", "tasks": [{"goal": [0.1, -0.3]}, ...],
     "agents": {"maml": {"steps": [0, 1, 2, 3], "mean": [...], "ci95": [...],
                         "per_task": [[r0, r1, r2, r3], ...], "kind": "curve",
                         "seed_means": [[...] per seed]},
                "ppo": {"steps": [3], ..., "kind": "point", "env_steps": 6000}, ...},
     "seeds": [0], "checkpoint": "latest", "inner_steps": 3, "episodes_per_step": 20,
     "step_sizes": [0.1, 0.05, 0.05], "command": "adaptbed evaluate ..."}
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from envs.registry import UnknownFamilyError, family, make
from envs.splits import get_split, split_from_json
from envs.tasks import TaskError, task_to_dict
from envs.vector import make_vector_env
from experiments import config as cfglib
from experiments.cliutil import Parser, seed as seed_arg
from experiments.rundir import (RunDirError, atomic_write_bytes, atomic_write_text,
                                load_checkpoint, read_json)
from experiments.train import AUTO_BATCHING, build_policy, simulator_envs
from meta.adaptation import AdvantageSettings
from meta.evaluation import ci95, evaluate_adaptation, step_sizes
from meta.sampler import MAX_WAVE_ENVS

BASELINES = ("pretrained", "random", "ppo", "oracle", "stand_still")
CHECKPOINTS = ("latest", "best")  # and iteration-<k>, kept by run.keep_every

DEFAULT_INNER_STEPS = 3
RANDOM_INIT_SEED = 1_000_000  # + the evaluation seed: the random agent's initialisation
EPILOG = """agents: maml always; random (fresh init) and pretrained are fine-tuned like maml;
ppo trains PPO from scratch per task with K*N*horizon env steps (times each --ppo-budgets
multiple; reported at step K only); oracle is one PPO policy that observes the task, and
stand_still the all-zero action (flat references).
With several --seeds, per-task values are averaged over seeds, then mean and 95% CI are
taken over tasks. Results: RUN_DIR/eval/<split>.{json,csv,png} for the latest checkpoint,
<split>-best.* and <split>-iteration-<k>.* for the others; TensorBoard eval/<stem>/<agent>."""
USER_ERRORS = (RunDirError, cfglib.ConfigError, TaskError, UnknownFamilyError)


class EvalError(RunDirError):
    """A request that cannot be evaluated (one-line message)."""


# --- loading a run -----------------------------------------------------------------------------
@dataclass
class LoadedRun:
    """A run directory's config and the policy of one of its checkpoints."""

    run_dir: Path
    cfg: cfglib.Config
    family: str  # the FamilySpec name, e.g. "Navigation2D"
    policy: nn.Module
    checkpoint: str
    iteration: int
    checkpoint_sha256: str = ""


def available_device(cfg: cfglib.Config) -> str:
    """The run's device, or the CPU when it was trained on CUDA and none is available now."""
    if cfg.run.device == "cuda" and not torch.cuda.is_available():
        return "cpu"
    return cfg.run.device


def load_config(run_dir: Path) -> cfglib.Config:
    """The config of the run in ``run_dir``, on a device available now.

    Raises:
        RunDirError: not a run directory, or an unreadable ``config.json``.
        ConfigError: a config that does not parse.
    """
    path = run_dir / "config.json"
    if not path.exists():
        raise RunDirError(f"{run_dir} is not a run directory (no config.json); "
                          "create one with `adaptbed train`")
    doc = read_json(path)
    if not isinstance(doc, dict) or "config" not in doc:
        raise RunDirError(f"{path} holds no 'config' section")
    cfg = cfglib.from_dict(doc["config"])
    family(cfg.env.family)  # UnknownFamilyError for a family this version does not know
    return cfglib.apply_overrides(cfg, [f"run.device={available_device(cfg)}"])


def family_spaces(family_name: str) -> tuple[Any, Any]:
    """``(observation_space, action_space)`` of a family."""
    env = make(family_name)
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def policy_from_state(cfg: cfglib.Config, state_dict: dict, where: Path) -> nn.Module:
    """The run's policy architecture with ``state_dict`` loaded.

    Raises:
        RunDirError: the weights do not fit the architecture of ``cfg``.
    """
    policy = build_policy(cfg, *family_spaces(cfg.env.family))
    try:
        policy.load_state_dict(state_dict)
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RunDirError(f"{where} does not match the run's policy ({first})") from None
    return policy


def checkpoint_name(text: str) -> str:
    """``latest``, ``best`` or ``iteration-<k>`` (argparse type; raises ArgumentTypeError)."""
    if text in CHECKPOINTS or re.fullmatch(r"iteration-[1-9][0-9]*", text):
        return text
    raise argparse.ArgumentTypeError(
        f"unknown checkpoint {text!r}; choose latest, best or iteration-<k> (kept by "
        "run.keep_every)")


def load_run(run_dir: Path, checkpoint: str = "latest") -> LoadedRun:
    """Rebuild a run's policy from ``config.json`` and ``checkpoints/<checkpoint>.pt``.

    Raises:
        RunDirError: not a run directory, a missing, corrupt or mismatched checkpoint.
        ConfigError: a config that does not parse.
    """
    try:
        checkpoint_name(checkpoint)
    except argparse.ArgumentTypeError as err:
        raise EvalError(str(err)) from None
    cfg = load_config(run_dir)
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    state = load_checkpoint(path)
    if not isinstance(state.get("policy"), dict):
        raise RunDirError(f"checkpoint {path} holds no policy")
    policy = policy_from_state(cfg, state["policy"], path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return LoadedRun(run_dir, cfg, family(cfg.env.family).name, policy, checkpoint,
                     int(state.get("iteration", 0)), digest)


# --- tasks -------------------------------------------------------------------------------------
def resolve_split(family_name: str, split: str) -> tuple[str, list]:
    """The name and tasks of ``--split``: ``test``, ``ood`` or a file of
    :func:`envs.splits.split_to_json`.

    A file's results are named after its stem (``file-<stem>`` for stems ``test`` / ``ood`` /
    ``train`` or ending in ``-best`` / ``-iteration-<k>``, so they never overwrite the fixed
    splits' results nor another checkpoint's, :func:`output_stem`).

    Raises:
        EvalError: unknown split name, unreadable file, or a file of another family.
        TaskError: the family has no ``ood`` split; a malformed file.
    """
    if split in ("test", "ood"):
        return split, get_split(family_name, split)
    path = Path(split)
    if path.suffix.lower() != ".json":
        raise EvalError(f"unknown split {split!r}; use test, ood or a FILE.json written by "
                        "envs.splits.split_to_json")
    try:
        text = path.read_text()
    except OSError as err:
        raise EvalError(f"cannot read split file {path}: {err.strerror}") from None
    file_family, _, tasks = split_from_json(text)
    if file_family != family_name:
        raise EvalError(f"split file {path} holds {file_family} tasks, but the run is "
                        f"{family_name}")
    name = path.stem
    reserved = name in ("test", "ood", "train") or re.search(r"-(best|iteration-\d+)$", name)
    return (f"file-{name}" if reserved else name), tasks


def parse_baselines(text: str) -> list[str]:
    """``"pretrained,random"`` -> ``["pretrained", "random"]`` (in :data:`BASELINES` order).

    Raises:
        EvalError: an unknown name.
    """
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise EvalError(f"unknown baseline {unknown[0]!r}; known: {', '.join(BASELINES)}")
    return [b for b in BASELINES if b in names]


def parse_budgets(text: str) -> list[int]:
    """``"1,10,100"`` -> ``[1, 10, 100]``: multiples of the adaptation's env steps for PPO.

    Raises:
        EvalError: a value that is not a positive integer.
    """
    try:
        budgets = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        raise EvalError(f"--ppo-budgets takes positive integers like 1,10,100; got {text!r}") from None
    if not budgets or budgets[0] < 1:
        raise EvalError(f"--ppo-budgets takes positive integers like 1,10,100; got {text!r}")
    return budgets


def ppo_agent_name(multiple: int) -> str:
    """``ppo`` for the adaptation's budget, ``ppo_x10`` for ten times it, ..."""
    return "ppo" if multiple == 1 else f"ppo_x{multiple}"


# --- the protocol ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Protocol:
    """How every agent is adapted and measured (the MAML paper's evaluation)."""

    family: str
    inner_steps: int
    episodes_per_step: int
    fast_lr: float
    advantages: AdvantageSettings
    device: str = "cpu"
    trained_steps: int = 1  # the run's inner steps: those take fast_lr, later ones half
    max_wave_envs: int = MAX_WAVE_ENVS  # the run's run.max_wave_envs: same episodes, faster

    @property
    def step_sizes(self) -> tuple[float, ...]:
        """The inner step sizes (:func:`meta.evaluation.step_sizes`)."""
        return step_sizes(self.fast_lr, self.inner_steps, self.trained_steps)

    @property
    def horizon(self) -> int:
        return family(self.family).horizon

    @property
    def adaptation_env_steps(self) -> int:
        """The env steps the K adaptation steps sample per task (at most): K * N * horizon."""
        return self.inner_steps * self.episodes_per_step * self.horizon


def protocol_of(run: LoadedRun, inner_steps: int, episodes_per_step: int | None) -> Protocol:
    """The evaluation protocol of a run: its ``fast_lr`` and advantage settings.

    Raises:
        EvalError: ``inner_steps`` or ``episodes_per_step`` below 1.
    """
    n = run.cfg.maml.episodes_per_task if episodes_per_step is None else episodes_per_step
    if inner_steps < 1:
        raise EvalError(f"--inner-steps must be at least 1, got {inner_steps}")
    if n < 1:
        raise EvalError(f"--episodes-per-step must be at least 1, got {n}")
    m = run.cfg.maml
    return Protocol(run.family, inner_steps, n, m.fast_lr,
                    AdvantageSettings(m.gamma, m.gae_lambda, m.bootstrap_truncated),
                    run.cfg.run.device, max(1, m.num_inner_steps), run.cfg.run.max_wave_envs)


def adaptation_curve(policy: nn.Module, tasks: Sequence, protocol: Protocol,
                     seed: int) -> list[list[float]]:
    """Per-task returns after 0..K adaptation steps, ``[len(tasks)][K + 1]``
    (:func:`meta.evaluation.evaluate_adaptation`)."""
    n = protocol.episodes_per_step
    envs = simulator_envs(protocol.family, len(tasks), n, protocol.max_wave_envs,
                          protocol.device)
    venv = make_vector_env(protocol.family, envs, protocol.device)
    batching = AUTO_BATCHING[torch.device(protocol.device).type]
    try:
        result = evaluate_adaptation(venv, policy, dict(policy.named_parameters()), tasks,
                                     protocol.fast_lr, protocol.inner_steps, n,
                                     protocol.advantages, seed=seed, batching=batching,
                                     trained_steps=protocol.trained_steps)
    finally:
        venv.close()
    return result["per_task"]


# --- agents ------------------------------------------------------------------------------------
@dataclass
class Agent:
    """An evaluated agent: ``evaluate(seed)`` gives per-task values, one per reported step.

    ``kind``: ``"curve"`` (values after 0..K steps), ``"flat"`` (one value per task, repeated
    over 0..K) or ``"point"`` (one value per task, reported at step K).
    """

    name: str
    kind: str
    evaluate: Callable[[int], list]
    info: dict = field(default_factory=dict)


def curve_agent(name: str, policy_for_seed: Callable[[int], nn.Module], tasks: Sequence,
                protocol: Protocol) -> Agent:
    """An agent fine-tuned by the protocol from the policy ``policy_for_seed(seed)``."""
    return Agent(name, "curve",
                 lambda seed: adaptation_curve(policy_for_seed(seed), tasks, protocol, seed))


def random_policy(cfg: cfglib.Config, seed: int) -> nn.Module:
    """A freshly initialised policy of the run's architecture."""
    fresh = cfglib.apply_overrides(cfg, [f"run.seed={RANDOM_INIT_SEED + seed}"])
    return build_policy(fresh, *family_spaces(cfg.env.family))


def default_baseline_dir(cfg: cfglib.Config) -> Path:
    """``runs/baselines/<preset>``, where ``adaptbed baseline`` writes by default."""
    return Path("runs") / "baselines" / (cfg.preset or family(cfg.env.family).preset)


def _train_hint(kind: str, cfg: cfglib.Config) -> str:
    return f"`adaptbed baseline {kind} --preset {cfg.preset or family(cfg.env.family).preset}`"


def load_pretrained(directory: Path, run: LoadedRun) -> nn.Module:
    """The pretrained baseline's policy, on the run's device.

    Raises:
        EvalError: missing or unreadable (naming the command that trains it), or of another
            family.
    """
    from experiments import baselines

    path = directory / "pretrained"
    hint = _train_hint("pretrained", run.cfg)
    if not (path / "config.json").exists():
        raise EvalError(f"no pretrained baseline in {path}; train it with {hint} "
                        "(or pass --baseline-dir)")
    try:
        policy, cfg = baselines.pretrained_policy(path)
    except USER_ERRORS + (OSError, KeyError, RuntimeError) as err:
        raise EvalError(f"cannot load the pretrained baseline in {path} ({err}); retrain it "
                        f"with {hint}") from None
    other = family(cfg.env.family).name
    if other != run.family:
        raise EvalError(f"the pretrained baseline in {path} is a {other} policy, but the run "
                        f"is {run.family}")
    return policy.to(run.cfg.run.device)


def load_oracle(directory: Path, run: LoadedRun) -> Any:
    """The oracle baseline's PPO model.

    Raises:
        EvalError: missing or unreadable (naming the command that trains it), or of another
            family.
    """
    from experiments import baselines

    path = directory / "oracle"
    hint = _train_hint("oracle", run.cfg)
    if not (path / "oracle.zip").exists():
        raise EvalError(f"no oracle baseline in {path}; train it with {hint} "
                        "(or pass --baseline-dir)")
    try:
        model, family_name = baselines.load_oracle(path)
    except USER_ERRORS + (OSError, KeyError, ValueError) as err:
        raise EvalError(f"cannot load the oracle baseline in {path} ({err}); retrain it "
                        f"with {hint}") from None
    other = family(family_name).name
    if other != run.family:
        raise EvalError(f"the oracle baseline in {path} was trained on {other}, but the run "
                        f"is {run.family}")
    return model


def build_agents(run: LoadedRun, tasks: Sequence, protocol: Protocol, baselines: Sequence[str],
                 baseline_dir: Path, ppo_budgets: Sequence[int],
                 log: Callable[[str], None] = lambda msg: None) -> list[Agent]:
    """``maml`` and the requested baselines, every model loaded (so errors come first).

    Raises:
        EvalError: a baseline model that is missing or of another family.
    """
    agents = [curve_agent("maml", lambda seed: run.policy, tasks, protocol)]
    if "pretrained" in baselines:
        pretrained = load_pretrained(baseline_dir, run)
        agents.append(curve_agent("pretrained", lambda seed: pretrained, tasks, protocol))
    if "random" in baselines:
        agents.append(curve_agent("random", lambda seed: random_policy(run.cfg, seed), tasks,
                                  protocol))
    if "ppo" in baselines:
        agents += [ppo_agent(run.family, tasks, protocol, m, log) for m in ppo_budgets]
    if "oracle" in baselines:
        agents.append(oracle_agent(load_oracle(baseline_dir, run), run.family, tasks, protocol))
    if "stand_still" in baselines:
        agents.append(stand_still_agent(tasks, protocol))
    return agents


def ppo_agent(family_name: str, tasks: Sequence, protocol: Protocol, multiple: int,
              log: Callable[[str], None] = lambda msg: None) -> Agent:
    """PPO from scratch on every task with ``multiple`` times the adaptation's env steps."""
    from agents.sb3 import ppo_from_scratch_returns

    budget = multiple * protocol.adaptation_env_steps
    name = ppo_agent_name(multiple)

    def progress(i: int, mean_return: float) -> None:
        log(f"  {name}: task {i + 1}/{len(tasks)}, return {mean_return:.1f}")

    def evaluate(seed: int) -> list:
        returns = ppo_from_scratch_returns(family_name, list(tasks), budget,
                                           protocol.episodes_per_step, seed, on_task=progress)
        return [[float(r)] for r in returns]

    return Agent(name, "point", evaluate,
                 {"env_steps": budget, "budget_multiple": multiple})


def oracle_agent(model: Any, family_name: str, tasks: Sequence, protocol: Protocol) -> Agent:
    """The task-conditioned expert, not adapted: one value per task."""
    from agents.sb3 import oracle_returns

    def evaluate(seed: int) -> list:
        returns = oracle_returns(model, family_name, list(tasks), protocol.episodes_per_step,
                                 seed)
        return [[float(r)] for r in returns]

    return Agent("oracle", "flat", evaluate)


def stand_still_agent(tasks: Sequence, protocol: Protocol) -> Agent:
    """The all-zero action, not adapted: one value per task (mean over N episodes)."""
    from meta.evaluation import stand_still_returns

    def evaluate(seed: int) -> list:
        n = protocol.episodes_per_step
        venv = make_vector_env(protocol.family, len(tasks) * n, protocol.device)
        try:
            returns = stand_still_returns(venv, list(tasks), n, seed)
        finally:
            venv.close()
        return [[float(r)] for r in returns.tolist()]

    return Agent("stand_still", "flat", evaluate)


# --- results -----------------------------------------------------------------------------------
def summarize(per_task_by_seed: Sequence[Sequence[Sequence[float]]],
              steps: Sequence[int]) -> dict[str, Any]:
    """Mean and 95% CI over tasks of the seed-averaged per-task values.

    Args:
        per_task_by_seed: ``[seeds][tasks][len(steps)]``.
        steps: the number of gradient steps of each column.
    Returns:
        ``{"steps", "mean", "ci95", "per_task", "seed_means"}``.
    """
    values = np.asarray(per_task_by_seed, dtype=np.float64)  # [S, T, K]
    per_task = values.mean(axis=0)  # [T, K]: each task averaged over seeds first
    return {
        "steps": list(steps),
        "mean": [float(v) for v in per_task.mean(axis=0)],
        "ci95": [ci95(per_task[:, k].tolist()) for k in range(per_task.shape[1])],
        "per_task": per_task.tolist(),
        "seed_means": values.mean(axis=1).tolist(),
    }


def agent_steps(kind: str, inner_steps: int) -> list[int]:
    """The steps an agent of ``kind`` reports."""
    return [inner_steps] if kind == "point" else list(range(inner_steps + 1))


def run_agent(agent: Agent, seeds: Sequence[int], inner_steps: int) -> dict[str, Any]:
    """Evaluate ``agent`` for every seed and summarise."""
    by_seed = []
    for seed in seeds:
        values = agent.evaluate(seed)
        if agent.kind == "flat":
            values = [row * (inner_steps + 1) for row in values]
        by_seed.append(values)
    return {**summarize(by_seed, agent_steps(agent.kind, inner_steps)), "kind": agent.kind,
            **agent.info}


def evaluate_all(agents: Sequence[Agent], seeds: Sequence[int], inner_steps: int,
                 log: Callable[[str], None]) -> dict[str, dict]:
    """Every agent's result, in order."""
    results = {}
    for agent in agents:
        log(f"evaluating {agent.name} ({len(seeds)} seed{'s' if len(seeds) > 1 else ''}) ...")
        results[agent.name] = run_agent(agent, seeds, inner_steps)
    return results


def format_table(agents: dict[str, dict], inner_steps: int) -> str:
    """A readable table: one row per agent, mean ± CI after each number of steps."""
    steps = list(range(inner_steps + 1))
    head = [f"after {k} step{'' if k == 1 else 's'}" for k in steps]
    width = max(18, *(len(h) + 2 for h in head))
    name_width = max(12, *(len(n) + 2 for n in agents))
    lines = [f"{'agent':<{name_width}}" + "".join(f"{h:>{width}}" for h in head)]
    for name, res in agents.items():
        cells = {k: mean_ci_text(m, c) for k, m, c in zip(res["steps"], res["mean"], res["ci95"])}
        row = "".join(f"{cells.get(k, '-'):>{width}}" for k in steps)
        note = f"   ({res['env_steps']:,} env steps per task)" if "env_steps" in res else ""
        note = "   (no adaptation)" if res["kind"] == "flat" else note
        lines.append(f"{name:<{name_width}}{row}{note}")
    return "\n".join(lines)


def mean_ci_text(mean: float, ci: float, digits: int = 1) -> str:
    """``mean ± ci``, or ``mean ± n/a`` where the interval is undefined (one task)."""
    half = f"{ci:.{digits}f}" if math.isfinite(ci) else "n/a"
    return f"{mean:.{digits}f} ± {half}"


def csv_text(agents: dict[str, dict]) -> str:
    """``agent,step,mean,ci95``, one row per agent and step."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["agent", "step", "mean", "ci95"])
    for name, res in agents.items():
        for k, m, c in zip(res["steps"], res["mean"], res["ci95"]):
            writer.writerow([name, k, repr(m), repr(c)])
    return out.getvalue()


def write_tensorboard(tb_dir: Path, split: str, agents: dict[str, dict]) -> None:
    """Scalars ``eval/<split>/<agent>`` with x = number of gradient steps (``split``: the
    evaluation's :func:`output_stem`)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tb_dir))
    try:
        for name, res in agents.items():
            for k, m in zip(res["steps"], res["mean"]):
                writer.add_scalar(f"eval/{split}/{name}", m, k)
    finally:
        writer.close()


def output_stem(split: str, checkpoint: str) -> str:
    """The name of an evaluation's files: ``<split>`` for the latest checkpoint, else
    ``<split>-<checkpoint>`` (``test-best``, ``test-iteration-<k>``), so that evaluating another
    checkpoint never replaces the evaluation of the latest."""
    return split if checkpoint == "latest" else f"{split}-{checkpoint}"


def write_outputs(run_dir: Path, doc: dict, tensorboard_agents: Sequence[str] | None = None
                  ) -> list[Path]:
    """``eval/<stem>.{json,csv,png}`` (atomically; :func:`output_stem`) and the TensorBoard
    scalars of ``tensorboard_agents`` (default: every agent of ``doc``)."""
    from experiments.plot import evaluation_figure, png_bytes  # matplotlib: only when plotting

    out = run_dir / "eval"
    split = output_stem(doc["split"], doc.get("checkpoint", "latest"))
    paths = [out / f"{split}.json", out / f"{split}.csv", out / f"{split}.png"]
    atomic_write_text(paths[0], json.dumps(doc, indent=2) + "\n")
    atomic_write_text(paths[1], csv_text(doc["agents"]))
    atomic_write_bytes(paths[2], png_bytes(evaluation_figure(doc)))
    names = doc["agents"] if tensorboard_agents is None else tensorboard_agents
    write_tensorboard(run_dir / "tb", split, {n: doc["agents"][n] for n in names})
    return paths


# --- command line ------------------------------------------------------------------------------
def parser() -> Parser:
    p = Parser(
        prog="adaptbed evaluate", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Adaptation curves of a meta-trained run on held-out tasks (the MAML "
                    "paper's protocol), next to baselines.",
        epilog=EPILOG)
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--split", default="test", help="test, ood or a split FILE.json (default test)")
    p.add_argument("--inner-steps", type=int, default=DEFAULT_INNER_STEPS,
                   help=f"adaptation steps K (default {DEFAULT_INNER_STEPS})")
    p.add_argument("--episodes-per-step", type=int,
                   help="episodes N sampled per step and task (default: the run's "
                        "maml.episodes_per_task)")
    p.add_argument("--seeds", type=seed_arg, nargs="+", default=[0],
                   help="evaluation seeds; per-task values are averaged over them (default 0)")
    p.add_argument("--baselines", default="",
                   help=f"comma-separated, any of {','.join(BASELINES)} (default none)")
    p.add_argument("--baseline-dir", type=Path,
                   help="folder with pretrained/ and oracle/ (default runs/baselines/<preset>)")
    p.add_argument("--ppo-budgets", default="1",
                   help="PPO budgets as multiples of the adaptation's K*N*horizon env steps "
                        "(default 1; e.g. 1,10,100)")
    p.add_argument("--checkpoint", default="latest", type=checkpoint_name,
                   help="latest (default), best, or iteration-<k> (kept by run.keep_every)")
    p.add_argument("--max-tasks", type=int,
                   help="evaluate only the first M tasks of the split (quick checks)")
    p.add_argument("--add", action="store_true",
                   help="keep the agents of the checkpoint's existing eval/<split>.json (or "
                        "<split>-best.json, ...) and add (or "
                        "replace) the ones evaluated now (maml is always re-evaluated: same "
                        "numbers); refused if that file used another protocol (split, tasks, "
                        "seeds, horizon, checkpoint name / iteration / file hash, K, N, step "
                        "sizes)")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    return p


@dataclass
class Request:
    """A validated evaluation request: everything loaded, nothing evaluated yet."""

    run: LoadedRun
    split: str
    tasks: list
    protocol: Protocol
    agents: list[Agent]
    seeds: list[int]
    baseline_dir: Path
    ppo_budgets: list[int]


def resolve(args: argparse.Namespace, log: Callable[[str], None] = lambda msg: None) -> Request:
    """Validate the command line and load every model.

    Raises:
        RunDirError, ConfigError, TaskError, UnknownFamilyError: one-line messages.
    """
    baselines = parse_baselines(args.baselines)
    budgets = parse_budgets(args.ppo_budgets)
    if args.max_tasks is not None and args.max_tasks < 1:
        raise EvalError(f"--max-tasks must be at least 1, got {args.max_tasks}")
    run = load_run(args.run_dir, args.checkpoint)
    protocol = protocol_of(run, args.inner_steps, args.episodes_per_step)
    split, tasks = resolve_split(run.family, args.split)
    tasks = tasks[: args.max_tasks]
    baseline_dir = args.baseline_dir or default_baseline_dir(run.cfg)
    agents = build_agents(run, tasks, protocol, baselines, baseline_dir, budgets, log)
    return Request(run, split, tasks, protocol, agents, list(dict.fromkeys(args.seeds)),
                   baseline_dir, budgets)


def evaluation_document(request: Request, agents: dict[str, dict],
                        argv: Sequence[str]) -> dict[str, Any]:
    """The JSON document of ``eval/<split>.json``."""
    p = request.protocol
    return {
        "split": request.split, "family": request.run.family,
        "tasks": [task_to_dict(t) for t in request.tasks],
        "agents": agents,
        "seeds": request.seeds, "checkpoint": request.run.checkpoint,
        "checkpoint_iteration": request.run.iteration,
        "checkpoint_sha256": request.run.checkpoint_sha256,
        "inner_steps": p.inner_steps, "episodes_per_step": p.episodes_per_step,
        "fast_lr": p.fast_lr, "step_sizes": list(p.step_sizes),
        "horizon": p.horizon,
        "seed_aggregation": "per-task values averaged over seeds, then mean and 95% CI "
                            "(Student t) over tasks",
        "command": shlex.join(["adaptbed", "evaluate", *argv]),
    }


PROTOCOL_KEYS = ("split", "family", "tasks", "seeds", "checkpoint", "checkpoint_iteration",
                 "checkpoint_sha256", "inner_steps", "episodes_per_step", "step_sizes",
                 "horizon")


def existing_evaluation(run_dir: Path, split: str, checkpoint: str = "latest") -> dict | None:
    """``eval/<stem>.json`` of ``run_dir`` (:func:`output_stem`) if there is one.

    Raises:
        EvalError: it exists but cannot be read as an evaluation.
    """
    path = run_dir / "eval" / f"{output_stem(split, checkpoint)}.json"
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
        doc["agents"]["maml"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise EvalError(f"--add: {path} is not an evaluation written by `adaptbed evaluate` "
                        f"({type(err).__name__})") from None
    return doc


def check_same_protocol(old: dict, new: dict) -> None:
    """Raises EvalError naming the first protocol field where ``old`` and ``new`` differ."""
    new = json.loads(json.dumps(new))  # tuples -> lists, as read back from JSON
    for key in PROTOCOL_KEYS:
        if old.get(key) != new.get(key):
            stem = output_stem(new["split"], new.get("checkpoint", "latest"))
            raise EvalError(f"--add: eval/{stem}.json was evaluated with another "
                            f"{key} ({_short(old.get(key))} instead of {_short(new.get(key))}); "
                            "rerun without --add to replace it")


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def merge_evaluations(old: dict, new: dict) -> dict:
    """``new`` plus the agents of ``old`` that ``new`` did not evaluate (same protocol)."""
    merged = dict(new)
    merged["agents"] = {**old["agents"], **new["agents"]}
    merged["commands"] = [*old.get("commands", [old.get("command")]), new["command"]]
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    try:
        request = resolve(args, log)
        previous = (existing_evaluation(request.run.run_dir, request.split, request.run.checkpoint)
                    if args.add else None)
        if previous is not None:  # before minutes of evaluation, not after
            check_same_protocol(previous, evaluation_document(request, {}, argv))
    except USER_ERRORS as err:
        print(f"adaptbed evaluate: error: {err}", file=sys.stderr)
        return 2
    p = request.protocol
    schedule = ", ".join(f"{a:g}" for a in p.step_sizes)
    log(f"{request.run.family}, {request.split} split ({len(request.tasks)} tasks): K="
        f"{p.inner_steps} steps of {p.episodes_per_step} episodes, step sizes {schedule}")
    agents = evaluate_all(request.agents, request.seeds, p.inner_steps, log)
    doc = evaluation_document(request, agents, argv)
    if previous is not None:
        doc = merge_evaluations(previous, doc)
    # --add re-evaluates maml to the same numbers: its scalars are in TensorBoard already
    fresh = [a for a in agents if previous is None or a != "maml"]
    try:
        paths = write_outputs(request.run.run_dir, doc, fresh)
    except OSError as err:
        print(f"adaptbed evaluate: error: cannot write results into {request.run.run_dir / 'eval'}"
              f": {err.strerror}", file=sys.stderr)
        return 2
    seeds = ", ".join(map(str, request.seeds))
    print(f"{request.run.family}, {request.split} split ({len(request.tasks)} tasks), "
          f"checkpoint {request.run.checkpoint}, seed{'s' if len(request.seeds) > 1 else ''} "
          f"{seeds}: mean return ± 95% CI over tasks\nafter k policy-gradient steps from "
          f"{p.episodes_per_step} episodes each (step sizes {schedule}):\n")
    print(format_table(doc["agents"], p.inner_steps))
    print(f"\nresults: {paths[0]}, {paths[1].name}, {paths[2].name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
