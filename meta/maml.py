"""The MAML inner loop for policy gradients (Finn, Abbeel, Levine 2017).

Notation of the paper: base parameters ``theta``; for task ``T_i`` the adapted parameters
(eq. 1, one step; repeated for several steps)::

    theta'_i = theta - alpha * grad_theta L_{T_i}(f_theta)

with the policy-gradient loss ``L_{T_i}`` of eq. 4 estimated by REINFORCE with a baseline on
episodes sampled with the current parameters. The meta-objective (eq. 2 / Algorithm 3) is the
loss of the *adapted* parameters on fresh episodes, ``sum_i L_{T_i}(f_{theta'_i})``; its
gradient flows through ``theta'_i`` back to ``theta``, which needs the second derivatives of
``L`` unless ``first_order`` is set. (Evaluating the outer loss at ``theta`` instead of
``theta'_i`` -- the bug of a well-known tutorial -- gives a different gradient; see the tests.)

Everything here is pure: it takes episodes and parameter dicts and returns new tensors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from agents.baseline import LinearFeatureBaseline
from agents.policies import Params, batched_dist_params, dist_params
from meta.episodes import Episodes
from meta.returns import discounted_returns, gae_advantages, normalize_advantages, weighted_mean

BATCHING = ("batched", "loop")
INNER_OBJECTIVES = ("reinforce", "lvc")


# --- advantages ---------------------------------------------------------------------------------
def with_advantages(episodes: Episodes, gamma: float, gae_lambda: float,
                    bootstrap_truncated: bool = False, normalize: bool = True,
                    baseline: LinearFeatureBaseline | None = None) -> Episodes:
    """Episodes with ``advantages [N, T, E]``: GAE(gamma, lambda) on a per-task linear baseline.

    The baseline is refit on each task's own episodes (Duan et al. 2016). At the time limit the
    value is 0 (no bootstrapping, as pytorch-maml-rl and ProMP do) unless ``bootstrap_truncated``,
    which bootstraps truncated episodes with the baseline's value of their last observation.
    Advantages are then normalised per task over its valid steps.
    """
    baseline = baseline or LinearFeatureBaseline()
    rewards, mask = episodes.rewards, episodes.mask
    returns = discounted_returns(rewards, mask, gamma, time_axis=1)
    weights = baseline.fit(episodes.observations, returns, mask)
    values = baseline.predict(weights, episodes.observations, mask)
    bootstrap = None
    if bootstrap_truncated:
        obs_ext, mask_ext = _append_last_observation(episodes)
        values_ext = baseline.predict(weights, obs_ext, mask_ext)  # [N, T+1, E]
        lengths = mask.sum(1).long()  # [N, E]
        last_values = values_ext.gather(1, lengths.unsqueeze(1)).squeeze(1)  # [N, E]
        bootstrap = torch.where(episodes.truncated, last_values, torch.zeros_like(last_values))
    advantages = gae_advantages(rewards, values, mask, gamma, gae_lambda,
                                bootstrap_value=bootstrap, time_axis=1)
    if normalize:
        advantages = normalize_advantages(advantages, mask)
    return dataclasses.replace(episodes, advantages=advantages.detach())


def _append_last_observation(episodes: Episodes) -> tuple[Tensor, Tensor]:
    """Observations ``[N, T+1, E, D]`` with each episode's last observation written right after
    its final valid step, and the matching mask, so the baseline values it at its time index."""
    n, t, e, d = episodes.observations.shape
    obs = torch.cat([episodes.observations, episodes.observations.new_zeros(n, 1, e, d)], dim=1)
    mask = torch.cat([episodes.mask, episodes.mask.new_zeros(n, 1, e)], dim=1)
    lengths = episodes.mask.sum(1).long()  # [N, E]
    index = lengths.unsqueeze(1)  # [N, 1, E]
    obs = obs.scatter(1, index.unsqueeze(-1).expand(n, 1, e, d),
                      episodes.last_observations.unsqueeze(1))
    mask = mask.scatter(1, index, torch.ones_like(index, dtype=mask.dtype))
    return obs, mask


# --- losses -------------------------------------------------------------------------------------
def log_probs(policy: nn.Module, params: Mapping[str, Tensor], episodes: Episodes,
              per_task_params: bool, batching: str = "batched") -> Tensor:
    """``log pi(a_t | s_t)`` of the episodes' actions under ``params``: ``[N, T, E]``.

    With ``per_task_params`` every tensor of ``params`` has a leading task dim ``[N, ...]``,
    evaluated in the form ``batching`` (see :func:`agents.policies.batched_dist_params`).
    """
    if per_task_params:
        dist = batched_dist_params(policy, params, episodes.observations, batching)
    else:
        dist = dist_params(policy, params, episodes.observations)
    return policy.log_prob(dist, episodes.actions)


def reinforce_loss(policy: nn.Module, params: Mapping[str, Tensor], episodes: Episodes,
                   per_task_params: bool, batching: str = "batched") -> Tensor:
    """REINFORCE with a baseline (Williams 1992; MAML eq. 4 estimated from samples).

    ``L_i = - sum_{t,e} m_{t,e} log pi(a_{t,e}|s_{t,e}) A_{t,e} / sum_{t,e} m_{t,e}``, per task:
    returns ``[N]``.
    """
    if episodes.advantages is None:
        raise ValueError("episodes have no advantages: call meta.maml.with_advantages first")
    logp = log_probs(policy, params, episodes, per_task_params, batching)
    return -weighted_mean(logp * episodes.advantages, episodes.mask)


def lvc_loss(policy: nn.Module, params: Mapping[str, Tensor], episodes: Episodes,
             per_task_params: bool, batching: str = "batched") -> Tensor:
    """ProMP's low-variance curvature objective as a loss (Rothfuss et al. 2019, sec. 5): ``[N]``.

    ``L_i = - sum_{t,e} m_{t,e} (pi(a|s) / pi_old(a|s)) A_{t,e} / sum_{t,e} m_{t,e}``, with
    ``pi_old`` the policy that sampled the episodes (``episodes.log_probs``), as in ProMP's
    code: on later PPO epochs the inner step is importance-weighted. At the sampling
    parameters the ratio is 1, so an inner step takes the parameters :func:`reinforce_loss`
    takes, but the objective's Hessian adds ``E[grad log pi grad log pi^T A]`` to REINFORCE's
    ``E[hess log pi A]`` (the loss's subtracts it): the curvature term through which the
    meta-gradient credits the pre-update sampling distribution.
    """
    if episodes.advantages is None:
        raise ValueError("episodes have no advantages: call meta.maml.with_advantages first")
    logp = log_probs(policy, params, episodes, per_task_params, batching)
    valid = episodes.mask > 0  # padding may hold anything: keep it out of the exponential
    ratio = torch.exp(torch.where(valid, logp - episodes.log_probs, 0.0))
    return -weighted_mean(ratio * episodes.advantages, episodes.mask)


INNER_LOSSES = {"reinforce": reinforce_loss, "lvc": lvc_loss}


# --- the inner loop -----------------------------------------------------------------------------
@dataclass(frozen=True)
class InnerLoop:
    """How a policy adapts: ``step_sizes[k]`` for inner step ``k`` (MAML eq. 1, repeated).

    Attributes:
        step_sizes: one learning rate per inner gradient step (``fast_lr``; evaluation uses
            ``fast_lr`` for as many steps as training took, then ``fast_lr / 2``). Empty: no
            adaptation, so the outer loop trains a plain multi-task policy (the ``pretrained``
            baseline).
        first_order: drop the second-order terms (FOMAML): the inner gradient is treated as a
            constant, so ``d theta' / d theta = I``.
        batching: ``"batched"`` adapts all tasks in one computation (a ``vmap``-ed forward
            with per-task parameter copies); ``"loop"`` adapts task by task. Same numbers.
        objective: the inner loss: ``"reinforce"`` (:func:`reinforce_loss`, the MAML paper's)
            or ``"lvc"`` (:func:`lvc_loss`, ProMP's). Both take the same inner steps; only
            the second-order terms of the meta-gradient differ.
    """

    step_sizes: tuple[float, ...] = (0.1,)
    first_order: bool = False
    batching: str = "batched"
    objective: str = "reinforce"

    def __post_init__(self) -> None:
        if self.batching not in BATCHING:
            raise ValueError(f"unknown batching {self.batching!r}; known: {BATCHING}")
        if self.objective not in INNER_OBJECTIVES:
            raise ValueError(f"unknown inner objective {self.objective!r}; "
                             f"known: {INNER_OBJECTIVES}")
        if any(not a > 0 for a in self.step_sizes):
            raise ValueError(f"step sizes must be positive, got {self.step_sizes}")

    @property
    def num_steps(self) -> int:
        return len(self.step_sizes)


def adapt(policy: nn.Module, params: Mapping[str, Tensor], train_episodes: Sequence[Episodes],
          inner: InnerLoop, create_graph: bool = True, num_tasks: int | None = None) -> Params:
    """Adapted parameters ``theta'_i`` for every task, stacked: ``{name: [N, ...]}``.

    Args:
        params: base parameters ``theta`` (shared by all tasks).
        train_episodes: one :class:`Episodes` (with advantages) per inner step, the ``k``-th
            sampled with the parameters after ``k`` steps.
        create_graph: keep the graph of the inner gradients (second-order MAML). Set False
            to only *evaluate* adapted parameters (no outer gradient needed); ``first_order``
            also implies it.
        num_tasks: the number of tasks ``N``; needed only with zero inner steps (then every
            task gets ``theta`` itself).
    """
    if len(train_episodes) != inner.num_steps:
        raise ValueError(f"{inner.num_steps} inner steps need as many batches of episodes, "
                         f"got {len(train_episodes)}")
    if inner.num_steps == 0:
        if num_tasks is None:
            raise ValueError("adapting with zero inner steps needs num_tasks")
        return {k: v.unsqueeze(0).expand(num_tasks, *v.shape) for k, v in params.items()}
    create_graph = create_graph and not inner.first_order
    with torch.enable_grad():
        params = {k: v if v.requires_grad else v.detach().requires_grad_() for k, v in params.items()}
        if inner.batching == "batched":
            return _adapt_batched(policy, params, train_episodes, inner, create_graph)
        return _adapt_loop(policy, params, train_episodes, inner, create_graph)


def _adapt_batched(policy, params, train_episodes, inner, create_graph) -> Params:
    n = train_episodes[0].num_tasks
    stacked = {k: v.unsqueeze(0).expand(n, *v.shape) for k, v in params.items()}
    inner_loss = INNER_LOSSES[inner.objective]

    def loss(p: Params, k: int) -> Tensor:  # tasks are independent: d(sum)/d(p_i) = dL_i/d(p_i)
        return inner_loss(policy, p, train_episodes[k], per_task_params=True).sum()

    return gradient_descent(loss, stacked, inner.step_sizes, create_graph)


def _adapt_loop(policy, params, train_episodes, inner, create_graph) -> Params:
    adapted: list[Params] = []
    inner_loss = INNER_LOSSES[inner.objective]
    for i in range(train_episodes[0].num_tasks):

        def loss(p: Params, k: int, i: int = i) -> Tensor:
            return inner_loss(policy, p, train_episodes[k].task(i), per_task_params=False).sum()

        adapted.append(gradient_descent(loss, dict(params), inner.step_sizes, create_graph))
    return {k: torch.stack([p[k] for p in adapted]) for k in params}


def gradient_descent(loss_fn: Callable[[Params, int], Tensor], params: Mapping[str, Tensor],
                     step_sizes: Sequence[float], create_graph: bool) -> Params:
    """The model-agnostic inner loop: ``theta_{k+1} = theta_k - alpha_k grad L_k(theta_k)``.

    MAML eq. 1 applied ``len(step_sizes)`` times; used by the RL inner loop and by the
    supervised sinusoid benchmark alike.

    Args:
        loss_fn: ``(params, k) -> scalar`` loss of inner step ``k``.
        params: starting parameters (tensors that require grad, leaves or not).
        create_graph: differentiate through the inner gradients (second order); without it
            each gradient is a constant and ``d theta_K / d theta_0 = I`` (first-order MAML).
    Returns:
        the adapted parameters, still connected to ``params`` in the autograd graph.
    """
    params = dict(params)
    for k, alpha in enumerate(step_sizes):
        grads = torch.autograd.grad(loss_fn(params, k), list(params.values()),
                                    create_graph=create_graph)
        params = {name: v - alpha * g for (name, v), g in zip(params.items(), grads)}
    return params


def detached(params: Mapping[str, Tensor]) -> Params:
    """A copy of ``params`` cut from every graph."""
    return {k: v.detach() for k, v in params.items()}
