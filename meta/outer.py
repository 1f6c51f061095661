"""Outer-loop optimizers of the MAML meta-objective, behind one interface.

Each optimizer owns the policy's parameters the way a ``torch.optim`` optimizer does: ``step``
takes a :class:`MetaBatch` (the pre-adaptation episodes of every inner step, and the
post-adaptation episodes sampled with the adapted parameters), updates the parameters in
place, and returns a dict of metrics. The loss maths are the pure functions above them.

* :class:`TRPO` -- Finn et al. 2017, sec. 5.3 (MAML with TRPO as the meta-optimizer): a trust
  region step on the post-adaptation surrogate, with the mean KL between the old and new
  *adapted* policies as constraint (Schulman et al. 2015, eq. 14), the natural gradient from
  conjugate gradient on Hessian-vector products through the adaptation, and a backtracking
  line search.
* :class:`PPO` -- the clipped surrogate (Schulman et al. 2017, eq. 7) on post-adaptation
  episodes over several epochs, with ProMP's KL penalty ``eta * KL(pi_theta_old || pi_theta)``
  on the pre-adaptation states (Rothfuss et al. 2019, eq. 13). ProMP's objective also adapts
  with its LVC inner loss: that is an :class:`~meta.maml.InnerLoop` with ``objective="lvc"``
  (``maml.inner_objective=lvc``); with the default REINFORCE inner loss this is MAML with a
  clipped outer surrogate.
* :class:`AdamOuter` -- Adam on the post-adaptation policy-gradient loss (the tutorial's form,
  with the outer loss evaluated at the *adapted* parameters).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from agents.policies import DistParams, Params, batched_dist_params, dist_params
from meta.cg import conjugate_gradient_and_product
from meta.episodes import Episodes
from meta.maml import InnerLoop, adapt, detached, reinforce_loss
from meta.returns import weighted_mean


@dataclass(frozen=True)
class MetaBatch:
    """Episodes of one meta-iteration (all with advantages).

    Attributes:
        train: one batch per inner step; ``train[k]`` was sampled with the parameters after
            ``k`` inner steps.
        valid: post-adaptation episodes, sampled with the fully adapted parameters.
    """

    train: Sequence[Episodes]
    valid: Episodes

    @property
    def num_tasks(self) -> int:
        """``N``, the number of tasks."""
        return self.valid.num_tasks

    def first_tasks(self, m: int) -> "MetaBatch":
        """The batch restricted to its first ``m`` tasks (all their episodes): every tensor
        ``[m, T, E, ...]``; the batch itself when ``m >= N``."""
        return self.task_range(0, m)

    def select_tasks(self, tasks: Sequence[int]) -> "MetaBatch":
        """The batch restricted to ``tasks`` (indices, in that order): every tensor
        ``[len(tasks), T, E, ...]``; the batch itself when that is all of them in order.

        Raises:
            ValueError: ``tasks`` is empty or holds an index outside ``[0, N)``.
        """
        tasks = [int(t) for t in tasks]
        if not tasks or not all(0 <= t < self.num_tasks for t in tasks):
            raise ValueError(f"tasks must be a non-empty list of indices in [0, "
                             f"{self.num_tasks}), got {tasks}")
        if tasks == list(range(self.num_tasks)):
            return self
        if tasks == list(range(tasks[0], tasks[-1] + 1)):  # a range: views, no copies
            return self.task_range(tasks[0], tasks[-1] + 1)
        index = torch.tensor(tasks, device=self.valid.mask.device)
        return MetaBatch([e.map(lambda x: x[index]) for e in self.train],
                         self.valid.map(lambda x: x[index]))

    def task_range(self, start: int, stop: int) -> "MetaBatch":
        """The batch restricted to tasks ``start:stop``; the batch itself when that is all."""
        if start <= 0 and stop >= self.num_tasks:
            return self
        return MetaBatch([e.map(lambda x: x[start:stop]) for e in self.train],
                         self.valid.map(lambda x: x[start:stop]))


# --- pure pieces --------------------------------------------------------------------------------
def adapted_dist(policy: nn.Module, params: Mapping[str, Tensor], batch: MetaBatch,
                 inner: InnerLoop, create_graph: bool) -> DistParams:
    """The adapted policies' distributions on the post-adaptation states, ``[N, T, E, ...]``,
    evaluated in the inner loop's form (``inner.batching``)."""
    adapted = adapt(policy, params, batch.train, inner, create_graph=create_graph,
                    num_tasks=batch.valid.num_tasks)
    return batched_dist_params(policy, adapted, batch.valid.observations, inner.batching)


def importance_ratio(policy: nn.Module, new: DistParams, old: DistParams, episodes: Episodes) -> Tensor:
    """``pi_new(a|s) / pi_old(a|s)`` on valid steps, 1 on padding: ``[N, T, E]``.

    The log-ratio is masked before ``exp`` so padded steps can never overflow to ``inf``.
    """
    log_ratio = policy.log_prob(new, episodes.actions) - policy.log_prob(old, episodes.actions)
    return torch.exp(torch.where(episodes.mask > 0, log_ratio, 0.0))


def surrogate_loss(policy: nn.Module, new: DistParams, old: DistParams, valid: Episodes) -> Tensor:
    """TRPO surrogate ``-E[ratio * A]`` per task (Schulman et al. 2015, eq. 14): ``[N]``."""
    ratio = importance_ratio(policy, new, old, valid)
    return -weighted_mean(ratio * valid.advantages, valid.mask)


def clipped_surrogate_loss(policy: nn.Module, new: DistParams, old: DistParams, valid: Episodes,
                           clip_eps: float) -> Tensor:
    """PPO clipped surrogate ``-E[min(r A, clip(r, 1-eps, 1+eps) A)]`` (Schulman 2017, eq. 7): ``[N]``."""
    ratio = importance_ratio(policy, new, old, valid)
    adv = valid.advantages
    objective = torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    return -weighted_mean(objective, valid.mask)


def mean_kl(policy: nn.Module, old: DistParams, new: DistParams, episodes: Episodes) -> Tensor:
    """``E_s[KL(pi_old(.|s) || pi_new(.|s))]`` over valid steps, per task: ``[N]``."""
    return weighted_mean(policy.kl(old, new), episodes.mask)


def flat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflat(vector: Tensor, like: Mapping[str, Tensor]) -> Params:
    out, i = {}, 0
    for k, v in like.items():
        out[k] = vector[i : i + v.numel()].view_as(v)
        i += v.numel()
    return out


def _finite(*xs: Tensor) -> bool:
    return all(bool(torch.isfinite(x).all()) for x in xs)


def _detach_dist(dist: DistParams) -> DistParams:
    return tuple(d.detach() for d in dist)


def fisher_task_count(num_tasks: int, subsample: float) -> int:
    """How many of ``num_tasks`` tasks the Fisher-vector products use: ``ceil(subsample * N)``,
    at least 1."""
    return max(1, min(num_tasks, math.ceil(subsample * num_tasks - 1e-9)))


# --- optimizers ---------------------------------------------------------------------------------
class OuterOptimizer:
    """Common plumbing: the policy, its parameters and the inner loop.

    ``step`` returns ``accepted = 0`` when it made no update; it adds
    ``non_finite_gradient = 1`` when the reason was a NaN or infinite gradient (the caller then
    restores the state from before the step: PPO may have taken some epochs already).
    """

    def __init__(self, policy: nn.Module, inner: InnerLoop):
        self.policy = policy
        self.inner = inner
        self.params: Params = dict(policy.named_parameters())

    def step(self, batch: MetaBatch) -> dict[str, float]:  # pragma: no cover - interface
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def _write(self, new: Mapping[str, Tensor]) -> None:
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(new[k])


FISHER = ("exact", "first_order")


class TRPO(OuterOptimizer):
    """MAML-TRPO (see the module docstring); defaults are the paper's.

    ``fisher`` chooses the metric of the trust region. ``"exact"`` (the paper's, default):
    the Hessian of the mean KL through the adaptation, computed exactly in its Gauss-Newton
    form (:func:`kl_hessian_product`).
    ``"first_order"``: the same KL with the inner gradient held constant
    (``d theta' / d theta = I``), about 4x cheaper per Fisher-vector product. The gradient
    stays the exact meta-gradient, and the line search still checks the exact KL of the
    adapted policies against ``max_kl``, so the trust region holds either way; only the step
    direction and its first trial length change.

    ``fisher_subsample`` in (0, 1] estimates the Fisher-vector products from the KL of the
    first ``ceil(fisher_subsample * N)`` tasks of the meta-batch only (all their episodes),
    the way rllab's ``subsample_factor`` subsamples the data of TRPO's Fisher-vector products.
    Tasks are drawn i.i.d., so those are a uniform random subset, and the mean KL over them is
    an unbiased estimate of the mean over all tasks. The products cost about that fraction;
    the gradient and the line search still use every task, so the exact KL bound holds.

    Each line-search trial stops as soon as the KL bound is certainly broken
    (:func:`candidate_loss_and_kl`), with the decisions of the full evaluation; it evaluates
    the tasks with the largest KL in the trials before first (:func:`evaluation_order`), so a
    rejected trial stops sooner.
    """

    def __init__(self, policy: nn.Module, inner: InnerLoop, max_kl: float = 0.01,
                 cg_iters: int = 10, cg_damping: float = 1e-5, ls_max_steps: int = 15,
                 ls_backtrack_ratio: float = 0.8, fisher: str = "exact",
                 fisher_subsample: float = 1.0):
        super().__init__(policy, inner)
        if fisher not in FISHER:
            raise ValueError(f"unknown fisher {fisher!r}; known: {FISHER}")
        if not 0 < fisher_subsample <= 1:
            raise ValueError(f"fisher_subsample must be in (0, 1], got {fisher_subsample}")
        self.max_kl, self.cg_iters, self.cg_damping = max_kl, cg_iters, cg_damping
        self.ls_max_steps, self.ls_backtrack_ratio = ls_max_steps, ls_backtrack_ratio
        self.fisher, self.fisher_subsample = fisher, fisher_subsample

    def step(self, batch: MetaBatch) -> dict[str, float]:
        params = self.params
        new = adapted_dist(self.policy, params, batch, self.inner, create_graph=True)
        old = _detach_dist(new)
        loss = surrogate_loss(self.policy, new, old, batch.valid).mean()
        reuse = self._fisher_reuses_graph(batch)
        g = flat(torch.autograd.grad(loss, list(params.values()), retain_graph=reuse))
        loss = loss.detach()
        kl_hessian = self._fisher_product(batch, new if reuse else None, old)
        del new  # without reuse, free the N-task second-order graph before conjugate gradient

        def fisher_vector_product(v: Tensor) -> Tensor:
            return kl_hessian(v) + self.cg_damping * v

        step_dir, f_step_dir = conjugate_gradient_and_product(fisher_vector_product, g,
                                                              self.cg_iters)
        shs = 0.5 * (step_dir @ f_step_dir)  # x^T F x from CG's own products
        metrics = {"loss_before": loss.item(), "grad_norm": g.norm().item()}
        if not _finite(g, step_dir, shs) or shs <= 0:
            return {**metrics, "loss_after": loss.item(), "kl": 0.0, "ls_steps": 0.0,
                    "accepted": 0.0, "non_finite_gradient": float(not _finite(g, step_dir, shs))}
        full_step = step_dir / torch.sqrt(shs / self.max_kl)
        theta = flat([p.detach() for p in params.values()])
        kl_estimate = torch.full((batch.num_tasks,), float("nan"), dtype=theta.dtype,
                                 device=theta.device)
        for k in range(self.ls_max_steps):
            candidate = unflat(theta - self.ls_backtrack_ratio**k * full_step, params)
            trial = candidate_loss_and_kl(self.policy, candidate, batch, self.inner, old,
                                          self.max_kl, order=evaluation_order(kl_estimate))
            # KL grows about as the step's square: keep every estimate at the full step's scale
            at_full_step = trial.task_kl / self.ls_backtrack_ratio ** (2 * k)
            kl_estimate = torch.where(torch.isnan(trial.task_kl), kl_estimate, at_full_step)
            if trial.rejected_early:  # the KL bound is already broken
                continue
            new_loss, new_kl = trial.loss, trial.kl
            if _finite(new_loss, new_kl) and new_loss < loss and new_kl <= self.max_kl:
                self._write(candidate)
                return {**metrics, "loss_after": float(new_loss), "kl": float(new_kl),
                        "ls_steps": float(k + 1), "accepted": 1.0}
        return {**metrics, "loss_after": loss.item(), "kl": 0.0,
                "ls_steps": float(self.ls_max_steps), "accepted": 0.0}

    def _fisher_reuses_graph(self, batch: MetaBatch) -> bool:
        """Whether the Fisher is the exact one on every task, i.e. of the gradient's graph."""
        return (self.fisher == "exact"
                and fisher_task_count(batch.num_tasks, self.fisher_subsample) == batch.num_tasks)

    def _fisher_product(self, batch: MetaBatch, new: DistParams | None, old: DistParams
                        ) -> Callable[[Tensor], Tensor]:
        """``v -> F v`` on the tasks the Fisher uses (see :func:`kl_hessian_product`).

        ``new``: the adapted distributions with the exact graph on every task, to reuse; None
        builds the graph the Fisher needs (a subset of the tasks, or first order).
        """
        if new is None:
            m = fisher_task_count(batch.num_tasks, self.fisher_subsample)
            first_order = self.inner.first_order or self.fisher == "first_order"
            inner = dataclasses.replace(self.inner, first_order=first_order)
            batch = batch.first_tasks(m)
            new = adapted_dist(self.policy, self.params, batch, inner, create_graph=True)
            old = tuple(d[:m] for d in old)
        return kl_hessian_product(self.policy, list(self.params.values()), old, new, batch.valid)


#: With the vmap-ed inner loop (``"batched"``), the line search evaluates a candidate on this
#: many chunks of the tasks at most, checking the KL bound after each; the per-task loop checks
#: it after every task (see :func:`candidate_loss_and_kl`).
LINE_SEARCH_CHUNKS = 8


@dataclass(frozen=True)
class LineSearchTrial:
    """What one line-search trial measured.

    Attributes:
        loss, kl: the surrogate and the mean KL over all ``N`` tasks (0-dim tensors); None
            when the trial stopped early because the KL bound was certainly broken.
        task_kl: ``[N]`` every evaluated task's mean KL, NaN for the tasks not evaluated.
    """

    loss: Tensor | None
    kl: Tensor | None
    task_kl: Tensor

    @property
    def rejected_early(self) -> bool:
        """Whether the trial stopped before evaluating every task (then it is rejected)."""
        return self.loss is None


def evaluation_order(kl_estimate: Tensor) -> list[int]:
    """The order in which a line-search trial evaluates the tasks: largest expected KL first.

    ``kl_estimate [N]`` holds each task's KL in the latest trial that evaluated it, brought to
    one step length (:class:`TRPO` divides it by the square of the trial's backtracking
    factor: near the current parameters the KL grows as the step's square), NaN where no
    trial did (then the mean of the known ones stands in; all NaN: the tasks in order). Each
    trial only shortens the step, so the tasks' KL tend to keep their ranks from trial to
    trial, and the tasks that weigh most against the bound come first. Ties keep the task
    order. Only the cost of a trial depends on the order, never its outcome.
    """
    known = ~torch.isnan(kl_estimate)
    if not bool(known.any()):
        return list(range(kl_estimate.numel()))
    key = torch.where(known, kl_estimate, kl_estimate[known].mean())
    return torch.argsort(-key, stable=True).tolist()


@torch.no_grad()
def candidate_loss_and_kl(policy: nn.Module, candidate: Mapping[str, Tensor], batch: MetaBatch,
                          inner: InnerLoop, old: DistParams, max_kl: float,
                          order: Sequence[int] | None = None) -> LineSearchTrial:
    """One line-search trial: the surrogate and the mean KL of the policies adapted from
    ``candidate``, as a :class:`LineSearchTrial` (without them when it stopped early).

    The tasks are adapted and evaluated in ``order`` (a permutation of the ``N`` tasks;
    default: as they come), one at a time with the per-task inner loop, in up to
    :data:`LINE_SEARCH_CHUNKS` chunks with the vmap-ed one. Every task's KL is non-negative,
    so as soon as the KL summed over the tasks done so far exceeds ``N * max_kl`` the mean
    over all ``N`` tasks does too: the trial is rejected without the remaining tasks (also
    when that sum is NaN, which the full evaluation rejects as non-finite). The decision is
    the one the full evaluation would take (up to float rounding exactly at the bound), and a
    completed trial's numbers are those of all tasks: each task's adaptation depends on its
    own episodes only, and the means are taken in task order whatever the evaluation order,
    so with the per-task loop they are the same bit for bit in any order (with the vmap-ed
    one, up to float rounding).

    Raises:
        ValueError: ``order`` is not a permutation of the tasks.
    """
    n = batch.num_tasks
    order = list(range(n)) if order is None else list(order)
    if sorted(order) != list(range(n)):
        raise ValueError(f"order must be a permutation of the {n} tasks, got {order}")
    size = 1 if inner.batching == "loop" else math.ceil(n / LINE_SEARCH_CHUNKS)
    losses = kls = kl_sum = None
    for start in range(0, n, size):
        tasks = order[start:start + size]
        index = torch.tensor(tasks, device=old[0].device)
        part = batch.select_tasks(tasks)
        part_old = tuple(d[index] for d in old)
        dist = adapted_dist(policy, candidate, part, inner, create_graph=False)
        part_loss = surrogate_loss(policy, dist, part_old, part.valid)
        part_kl = mean_kl(policy, part_old, dist, part.valid)
        if losses is None:  # [N], in the dtypes the losses come in
            losses = part_loss.new_full((n,), float("nan"))
            kls = part_kl.new_full((n,), float("nan"))
            kl_sum = part_kl.new_zeros(())
        losses[index], kls[index] = part_loss, part_kl
        kl_sum = kl_sum + part_kl.sum()
        if start + size < n and not bool(kl_sum <= n * max_kl):  # beyond it, or NaN
            return LineSearchTrial(None, None, kls)
    return LineSearchTrial(losses.mean(), kls.mean(), kls)


def kl_hessian_product(policy: nn.Module, params: Sequence[Tensor], old: DistParams,
                       new: DistParams, valid: Episodes) -> Callable[[Tensor], Tensor]:
    """``v [P] -> F v [P]``, ``F`` the Hessian in ``theta`` of the mean KL of the adapted policies
    (TRPO's metric, Schulman et al. 2015, appendix C), at ``new == old``.

    With ``z(theta)`` the adapted policies' distribution parameters on the post-adaptation
    states (``new``, each ``[N, T, E, ...]``, with its graph to ``params``) and ``J = dz/dtheta``,
    the chain rule gives ``F = J^T H_z J + sum_j (dKL/dz_j) d^2 z_j / dtheta^2``. The KL is at
    its minimum in ``z`` where ``z == old``, so ``dKL/dz = 0`` there and the second term
    vanishes: ``F = J^T H_z J`` exactly (the Gauss-Newton form; Martens 2014, sec. 9), with
    ``H_z`` the KL's Hessian in ``z`` (one small block per state). Each product then costs a
    ``J v`` and a ``J^T u``, second derivatives of the inner loss, where differentiating
    ``dKL/dtheta`` twice (the textbook product) costs its third derivatives. ``J v`` is the
    derivative in ``u`` of ``<J^T u, v>`` (``J^T u`` is linear in ``u``), so everything is
    reverse mode and the graphs are built once for all products.

    Raises:
        ValueError: the policy's distribution parameters are not a stationary point of its
            KL at ``z == old`` (e.g. normalised log-probabilities), where the form is not exact.
    """
    z = tuple(d.detach().clone().requires_grad_() for d in old)  # H_z is taken at z == old
    stationary = torch.autograd.grad(policy.kl(old, z).sum(), z)
    if any(bool((g.abs() > 1e-4).any()) for g in stationary):
        raise ValueError(f"{type(policy).__name__}.kl has a non-zero gradient in the new "
                         "distribution's parameters where they equal the old ones: TRPO's "
                         "Fisher product needs parameters without constraints (e.g. logits "
                         "rather than normalised log-probabilities)")
    kl_grad = torch.autograd.grad(mean_kl(policy, old, z, valid).mean(), z, create_graph=True)
    probes = tuple(torch.zeros_like(d, requires_grad=True) for d in new)
    jt_probe = flat(torch.autograd.grad(new, params, grad_outputs=probes, create_graph=True))

    def product(v: Tensor) -> Tensor:
        jv = torch.autograd.grad(jt_probe, probes, grad_outputs=v, retain_graph=True)
        hjv = torch.autograd.grad(kl_grad, z, grad_outputs=jv, retain_graph=True)
        return flat(torch.autograd.grad(new, params, grad_outputs=hjv, retain_graph=True))

    return product


class PPO(OuterOptimizer):
    """Clipped-surrogate outer loop with Adam; ProMP with the LVC inner loss (module docstring)."""

    def __init__(self, policy: nn.Module, inner: InnerLoop, lr: float = 1e-3, epochs: int = 5,
                 clip_eps: float = 0.2, inner_kl_coef: float = 0.0):
        super().__init__(policy, inner)
        self.epochs, self.clip_eps, self.inner_kl_coef = epochs, clip_eps, inner_kl_coef
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=lr)

    def step(self, batch: MetaBatch) -> dict[str, float]:
        old: DistParams | None = None
        pre_states = batch.train[0] if batch.train else batch.valid
        old_pre = _detach_dist(dist_params(self.policy, self.params, pre_states.observations))
        metrics: dict[str, float] = {}
        for epoch in range(self.epochs):
            new = adapted_dist(self.policy, self.params, batch, self.inner, create_graph=True)
            if old is None:
                old = _detach_dist(new)
            loss = clipped_surrogate_loss(self.policy, new, old, batch.valid, self.clip_eps).mean()
            pre = dist_params(self.policy, self.params, pre_states.observations)
            pre_kl = mean_kl(self.policy, old_pre, pre, pre_states).mean()
            total = loss + self.inner_kl_coef * pre_kl
            if epoch == 0:
                metrics["loss_before"] = loss.item()
            self.optimizer.zero_grad()
            total.backward()
            if not _finite(*(p.grad for p in self.params.values())):
                self.optimizer.zero_grad()
                return {**metrics, "loss_after": loss.item(), "kl": 0.0, "accepted": 0.0,
                        "non_finite_gradient": 1.0}
            self.optimizer.step()
        with torch.no_grad():
            new = adapted_dist(self.policy, self.params, batch, self.inner, create_graph=False)
            metrics["loss_after"] = float(clipped_surrogate_loss(
                self.policy, new, old, batch.valid, self.clip_eps).mean())
            metrics["kl"] = float(mean_kl(self.policy, old, new, batch.valid).mean())
        metrics["accepted"] = 1.0
        return metrics

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)


class AdamOuter(OuterOptimizer):
    """Adam on ``sum_i L_i(theta'_i)``, the post-adaptation REINFORCE loss (MAML eq. 2 / Alg. 3)."""

    def __init__(self, policy: nn.Module, inner: InnerLoop, lr: float = 1e-3):
        super().__init__(policy, inner)
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=lr)

    def step(self, batch: MetaBatch) -> dict[str, float]:
        n = batch.valid.num_tasks
        adapted = adapt(self.policy, self.params, batch.train, self.inner, create_graph=True,
                        num_tasks=n)
        loss = reinforce_loss(self.policy, adapted, batch.valid, per_task_params=True,
                              batching=self.inner.batching).mean()
        self.optimizer.zero_grad()
        loss.backward()
        if not _finite(*(p.grad for p in self.params.values())):
            self.optimizer.zero_grad()
            return {"loss_before": loss.item(), "loss_after": loss.item(), "kl": 0.0,
                    "accepted": 0.0, "non_finite_gradient": 1.0}
        self.optimizer.step()
        with torch.no_grad():
            new_adapted = adapt(self.policy, self.params, batch.train, self.inner,
                                create_graph=False, num_tasks=n)
            form = self.inner.batching
            new = batched_dist_params(self.policy, detached(new_adapted), batch.valid.observations,
                                      form)
            old = batched_dist_params(self.policy, detached(adapted), batch.valid.observations, form)
            kl = float(mean_kl(self.policy, old, new, batch.valid).mean())
            loss_after = float(reinforce_loss(self.policy, detached(new_adapted), batch.valid,
                                              per_task_params=True, batching=form).mean())
        return {"loss_before": loss.item(), "loss_after": loss_after, "kl": kl, "accepted": 1.0}

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)


ALGORITHMS = {"trpo": TRPO, "ppo": PPO, "adam": AdamOuter}


def make_outer(algo: str, policy: nn.Module, inner: InnerLoop, **kwargs) -> OuterOptimizer:
    """The outer optimizer named ``algo`` (trpo|ppo|adam) with its keyword settings."""
    if algo not in ALGORITHMS:
        raise ValueError(f"unknown outer algorithm {algo!r}; known: {sorted(ALGORITHMS)}")
    return ALGORITHMS[algo](policy, inner, **kwargs)
