"""Sinusoid regression: the supervised benchmark of MAML (Finn, Abbeel, Levine 2017, sec. 5.1).

A task ``T_i`` is a sine wave ``y = A sin(x - phi)`` with amplitude ``A ~ U[0.1, 5]`` and phase
``phi ~ U[0, pi]``; inputs are ``x ~ U[-5, 5]``. The loss of a task is the mean squared error
(eq. 2 of the paper, ``L_{T_i}(f_phi) = sum_j ||f_phi(x_j) - y_j||^2`` up to normalisation)
on ``K`` points. The regressor is an MLP ``1 -> 40 -> 40 -> 1`` with ReLU.

Three agents are compared on a fixed held-out set of tasks, each fine-tuned with ``K`` support
points and plain gradient steps of size ``alpha`` (the protocol of Fig. 2 / Fig. 3):

* ``maml``: the initialisation ``theta`` meta-trained by Algorithm 2, i.e. by Adam on the
  meta-objective ``sum_i L_{T_i}(f_{theta'_i})`` (eq. 3) with ``theta'_i`` one inner step of
  eq. 1 on the task's support points, the outer loss taken on fresh query points;
* ``pretrained``: the same network trained by Adam on plain regression over tasks drawn from
  the same distribution (no adaptation in its objective), the paper's "pretrained" baseline;
* ``zero``: the constant predictor ``f = 0``, whose MSE is ``E[y^2] = E[A^2] / 2 ~ 4.25``.

The inner loop is :func:`meta.maml.gradient_descent` applied to an ordinary ``nn.Module``
through :func:`torch.func.functional_call`; tasks are batched with :func:`torch.func.vmap` over
per-task copies of the parameters.

Run ``python -m experiments.sinusoid --help``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Mapping

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from experiments.cliutil import Parser, seed as seed_arg
from agents.policies import Params, mlp
from meta.maml import detached, gradient_descent

AMPLITUDE_RANGE = (0.1, 5.0)
PHASE_RANGE = (0.0, math.pi)
INPUT_RANGE = (-5.0, 5.0)
HIDDEN_SIZES = (40, 40)
EVAL_SEED = 2017
"""Seed of the held-out evaluation tasks: independent of the training seed, so every run is
scored on the same tasks."""

ProgressFn = Callable[[int, float], None]


@dataclass(frozen=True)
class SinusoidConfig:
    """Hyperparameters of the benchmark (defaults: the paper's, except the number of iterations).

    Attributes:
        iterations: outer (meta-)iterations, also the pretrained baseline's Adam steps (the
            paper trains 70,000; the default is sized for about a minute on 2 CPU cores).
        meta_batch_size: tasks per outer iteration (25).
        num_shots: ``K``, support points per task for adaptation, and query points per task
            for the meta-loss (10).
        inner_lr: ``alpha`` of eq. 1, in training and evaluation (0.01).
        inner_steps: inner gradient steps during meta-training (1).
        meta_lr: Adam step size ``beta`` of the outer loop and of pretraining (1e-3).
        first_order: drop the second-order terms of the meta-gradient (first-order MAML).
        eval_tasks: held-out tasks to evaluate on.
        eval_steps: fine-tuning steps at evaluation; MSE is reported after 0, 1, ..., of them.
        eval_query_points: query points per held-out task at which MSE is measured (100).
        seed: seeds network initialisation and training data.
        eval_seed: seeds the held-out tasks and their points.
    """

    iterations: int = 10000
    meta_batch_size: int = 25
    num_shots: int = 10
    inner_lr: float = 0.01
    inner_steps: int = 1
    meta_lr: float = 1e-3
    first_order: bool = False
    eval_tasks: int = 100
    eval_steps: int = 10
    eval_query_points: int = 100
    seed: int = 0
    eval_seed: int = EVAL_SEED


@dataclass(frozen=True)
class SineTasks:
    """A batch of sine tasks: ``amplitudes [N]`` and ``phases [N]``."""

    amplitudes: np.ndarray
    phases: np.ndarray

    @property
    def num_tasks(self) -> int:
        return len(self.amplitudes)


@dataclass(frozen=True)
class Batch:
    """Points of ``N`` tasks: ``x``, ``y`` of shape ``[N, K, 1]`` (float32)."""

    x: Tensor
    y: Tensor


# --- data ---------------------------------------------------------------------------------------
def sample_tasks(num_tasks: int, rng: np.random.Generator) -> SineTasks:
    """Draws tasks ``(A, phi)`` with ``A ~ U[0.1, 5]``, ``phi ~ U[0, pi]`` (sec. 5.1)."""
    amplitudes = rng.uniform(*AMPLITUDE_RANGE, size=num_tasks)
    phases = rng.uniform(*PHASE_RANGE, size=num_tasks)
    return SineTasks(amplitudes, phases)


def sample_points(tasks: SineTasks, num_points: int, rng: np.random.Generator) -> Batch:
    """Draws ``x ~ U[-5, 5]`` for every task and labels it ``y = A sin(x - phi)``."""
    x = rng.uniform(*INPUT_RANGE, size=(tasks.num_tasks, num_points, 1))
    y = tasks.amplitudes[:, None, None] * np.sin(x - tasks.phases[:, None, None])
    return Batch(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32))


# --- the network --------------------------------------------------------------------------------
def make_network(generator: torch.Generator) -> nn.Sequential:
    """The regressor ``1 -> 40 -> 40 -> 1`` with ReLU, initialised from ``generator``.

    The initialisation is PyTorch's default for ``nn.Linear`` (Kaiming-uniform weights, uniform
    biases of bound ``1 / sqrt(fan_in)``), drawn from ``generator`` instead of the global RNG.
    """
    net = mlp((1, *HIDDEN_SIZES, 1), "relu")
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
                bound = 1.0 / math.sqrt(layer.in_features)
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return net


def network_params(net: nn.Module) -> Params:
    """The network's parameters as a dict ``{name: tensor}`` (the tensors themselves)."""
    return dict(net.named_parameters())


def predict(net: nn.Module, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """``f_theta(x)`` for every task with its own parameters: ``params[k]`` is ``[N, ...]``,
    ``x`` is ``[N, K, 1]``; returns ``[N, K, 1]``."""
    return torch.func.vmap(lambda p, xi: functional_call(net, p, (xi,)))(dict(params), x)


def task_mse(net: nn.Module, params: Mapping[str, Tensor], batch: Batch) -> Tensor:
    """Per-task mean squared error ``L_{T_i}`` (eq. 2, averaged over points): ``[N]``."""
    return ((predict(net, params, batch.x) - batch.y) ** 2).mean(dim=(1, 2))


def per_task(params: Mapping[str, Tensor], num_tasks: int) -> Params:
    """``num_tasks`` copies of shared parameters along a new leading dim (views, no copy)."""
    return {k: v.unsqueeze(0).expand(num_tasks, *v.shape) for k, v in params.items()}


# --- adaptation (eq. 1) -------------------------------------------------------------------------
def adapt(net: nn.Module, params: Mapping[str, Tensor], support: Batch, inner_lr: float,
          num_steps: int, create_graph: bool) -> Params:
    """Adapted parameters ``theta'_i`` of every task in ``support``: ``{name: [N, ...]}``.

    ``num_steps`` applications of MAML eq. 1, ``theta' = theta - alpha grad L_{T_i}(f_theta)``,
    each on the task's own support points. Tasks adapt independently: the inner loss is the
    *sum* of the per-task losses, whose gradient with respect to a task's own copy of the
    parameters is that task's gradient.

    Args:
        params: per-task starting parameters ``{name: [N, ...]}``, e.g. :func:`per_task` of the
            shared ``theta`` (the result stays connected to ``theta`` in the autograd graph).
        create_graph: keep the inner gradients in the graph (second-order meta-gradient);
            without it ``d theta' / d theta = I`` (first-order MAML).
    """
    def inner_loss(p: Params, k: int) -> Tensor:
        return task_mse(net, p, support).sum()

    with torch.enable_grad():
        start = {k: v if v.requires_grad else v.detach().requires_grad_() for k, v in params.items()}
        return gradient_descent(inner_loss, start, (inner_lr,) * num_steps, create_graph)


# --- training -----------------------------------------------------------------------------------
def meta_train(config: SinusoidConfig, progress: ProgressFn | None = None) -> nn.Sequential:
    """MAML for regression (Algorithm 2): the meta-trained network.

    Every iteration samples ``meta_batch_size`` tasks with ``K`` support and ``K`` query points,
    adapts with ``inner_steps`` steps of eq. 1 on the support points and takes one Adam step on
    the meta-objective of eq. 3, the mean query MSE of the adapted parameters
    ``(1/N) sum_i L_{T_i}(f_{theta'_i})``, differentiated through the adaptation.

    Args:
        progress: called as ``progress(iteration, meta_loss)`` after every iteration.
    """
    rng = np.random.default_rng([config.seed, 0])
    net = make_network(torch.Generator().manual_seed(config.seed))
    optimizer = torch.optim.Adam(net.parameters(), lr=config.meta_lr)
    for iteration in range(config.iterations):
        tasks = sample_tasks(config.meta_batch_size, rng)
        support = sample_points(tasks, config.num_shots, rng)
        query = sample_points(tasks, config.num_shots, rng)
        theta = per_task(network_params(net), config.meta_batch_size)
        adapted = adapt(net, theta, support, config.inner_lr, config.inner_steps,
                        create_graph=not config.first_order)
        meta_loss = task_mse(net, adapted, query).mean()
        optimizer.zero_grad()
        meta_loss.backward()
        optimizer.step()
        if progress is not None:
            progress(iteration, meta_loss.item())
    return net


def pretrain(config: SinusoidConfig, progress: ProgressFn | None = None) -> nn.Sequential:
    """The paper's "pretrained" baseline: one network regressed on all tasks jointly.

    Same initialisation, data budget (``meta_batch_size`` tasks with ``2K`` points each per
    iteration), number of iterations and Adam step size as :func:`meta_train`, but the loss is
    the plain MSE of ``f_theta`` itself, ``(1/N) sum_i L_{T_i}(f_theta)``: no adaptation.
    """
    rng = np.random.default_rng([config.seed, 1])
    net = make_network(torch.Generator().manual_seed(config.seed))
    optimizer = torch.optim.Adam(net.parameters(), lr=config.meta_lr)
    for iteration in range(config.iterations):
        tasks = sample_tasks(config.meta_batch_size, rng)
        batch = sample_points(tasks, 2 * config.num_shots, rng)
        loss = ((net(batch.x) - batch.y) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if progress is not None:
            progress(iteration, loss.item())
    return net


# --- evaluation ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class HeldOut:
    """Held-out tasks with ``K`` support points and ``eval_query_points`` query points each."""

    tasks: SineTasks
    support: Batch
    query: Batch


def held_out_tasks(config: SinusoidConfig) -> HeldOut:
    """The fixed evaluation set, drawn from ``eval_seed`` alone (not the training seed)."""
    rng = np.random.default_rng(config.eval_seed)
    tasks = sample_tasks(config.eval_tasks, rng)
    support = sample_points(tasks, config.num_shots, rng)
    query = sample_points(tasks, config.eval_query_points, rng)
    return HeldOut(tasks, support, query)


def fine_tune_curve(net: nn.Module, held_out: HeldOut, inner_lr: float,
                    num_steps: int) -> list[float]:
    """Query MSE (mean over tasks) after ``0, 1, ..., num_steps`` steps of eq. 1 on the support
    points, starting from the network's own parameters (Fig. 2 / Fig. 3 protocol)."""
    params = per_task(detached(network_params(net)), held_out.support.x.shape[0])
    curve = []
    for step in range(num_steps + 1):
        with torch.no_grad():
            curve.append(task_mse(net, params, held_out.query).mean().item())
        if step < num_steps:
            params = detached(adapt(net, params, held_out.support, inner_lr, 1, create_graph=False))
    return curve


def zero_predictor_mse(held_out: HeldOut) -> float:
    """MSE of ``f = 0`` on the query points: the empirical ``E[y^2]`` (``~ E[A^2]/2 ~ 4.25``)."""
    return (held_out.query.y ** 2).mean().item()


def evaluate(agents: Mapping[str, nn.Module], held_out: HeldOut, inner_lr: float,
             num_steps: int) -> dict[str, dict[str, list]]:
    """Fine-tuning curves of every network in ``agents`` plus the zero predictor.

    Returns:
        ``{name: {"steps": [0, ..., num_steps], "mse": [...]}}`` with a ``"zero"`` entry.
    """
    steps = list(range(num_steps + 1))
    results = {name: {"steps": steps, "mse": fine_tune_curve(net, held_out, inner_lr, num_steps)}
               for name, net in agents.items()}
    results["zero"] = {"steps": steps, "mse": [zero_predictor_mse(held_out)] * len(steps)}
    return results


def run(config: SinusoidConfig, progress: Callable[[str, int, float], None] | None = None) -> dict:
    """Trains both networks and evaluates the three agents: the JSON document of the CLI."""
    def tagged(name: str) -> ProgressFn | None:
        return None if progress is None else (lambda i, loss: progress(name, i, loss))

    maml = meta_train(config, tagged("maml"))
    pretrained = pretrain(config, tagged("pretrained"))
    agents = evaluate({"maml": maml, "pretrained": pretrained}, held_out_tasks(config),
                      config.inner_lr, config.eval_steps)
    return {"agents": agents, "config": asdict(config)}


# --- command line -------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = SinusoidConfig()
    parser = Parser(
        prog="adaptbed sinusoid",
        description="MAML sinusoid regression (Finn et al. 2017, sec. 5.1): meta-train, pretrain, "
                    "and compare fine-tuning curves on held-out sine tasks.")
    parser.add_argument("--iterations", type=int, default=defaults.iterations,
                        help=f"outer iterations for MAML and for pretraining ({defaults.iterations})")
    parser.add_argument("--seed", type=seed_arg, default=defaults.seed,
                        help="seed of initialisation and training data")
    parser.add_argument("--eval-seed", type=seed_arg, default=defaults.eval_seed,
                        help="seed of the held-out tasks")
    parser.add_argument("--eval-tasks", type=int, default=defaults.eval_tasks,
                        help=f"held-out tasks ({defaults.eval_tasks})")
    parser.add_argument("--steps", type=int, default=defaults.eval_steps,
                        help=f"fine-tuning steps at evaluation ({defaults.eval_steps})")
    parser.add_argument("--first-order", action="store_true",
                        help="first-order MAML (no second derivatives in the meta-gradient)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    args = parser.parse_args(argv)
    for name in ("iterations", "eval_tasks"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.steps < 0:
        parser.error("--steps must be non-negative")
    return args


def format_table(agents: Mapping[str, Mapping[str, list]]) -> str:
    """The fine-tuning curves as a text table: one row per step, one column per agent."""
    names = list(agents)
    lines = ["step " + "".join(f"{name:>12}" for name in names)]
    for i, step in enumerate(agents[names[0]]["steps"]):
        lines.append(f"{step:>4} " + "".join(f"{agents[n]['mse'][i]:>12.4f}" for n in names))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = SinusoidConfig(iterations=args.iterations, seed=args.seed, eval_seed=args.eval_seed,
                            eval_tasks=args.eval_tasks, eval_steps=args.steps,
                            first_order=args.first_order)
    # Every op here is small (tensors of at most 25 x 40 x 40): intra-op threads only add
    # synchronisation, which costs ~10x on a busy 2-core machine. One thread is the fast setting.
    torch.set_num_threads(1)
    start = time.perf_counter()

    def report(name: str, iteration: int, loss: float) -> None:
        if (iteration + 1) % max(1, config.iterations // 10) == 0:
            print(f"[{name}] iteration {iteration + 1}/{config.iterations}  loss {loss:.4f}  "
                  f"({time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)

    results = run(config, None if args.json else report)
    if args.json:
        print(json.dumps(results))
        return
    print(f"Held-out MSE on {config.eval_tasks} sine tasks, K={config.num_shots} support points, "
          f"{config.eval_query_points} query points, alpha={config.inner_lr} "
          f"({'first' if config.first_order else 'second'}-order MAML, "
          f"{config.iterations} iterations, seed {config.seed})")
    print(format_table(results["agents"]))


if __name__ == "__main__":
    main()
