"""Policies as ordinary ``nn.Module``s whose parameters are data.

A policy's ``forward(obs)`` returns the *parameters of its action distribution* as a tuple of
tensors (so it can be ``vmap``-ed over tasks), and the distribution maths (``log_prob``,
``entropy``, ``kl``, ``sample``) are methods that take those tensors. Adapted parameters are a
``dict[str, Tensor]`` evaluated with :func:`torch.func.functional_call` (see :func:`dist_params`),
so any architecture works without a hand-written functional twin.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

Params = dict[str, Tensor]
DistParams = tuple[Tensor, ...]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


def mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """A plain MLP ``sizes[0] -> ... -> sizes[-1]`` with ``activation`` between hidden layers."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; known: {sorted(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


#: The smallest standard deviation a Gaussian policy gives (rllab's ``min_std``).
MIN_STD = 1e-6
LOG_MIN_STD = math.log(MIN_STD)


class GaussianMLPPolicy(nn.Module):
    """Diagonal Gaussian policy ``pi(a|s) = N(mu_theta(s), diag(exp(log_std))^2)``.

    The mean is an MLP (defaults: 2 x 100 ReLU, as in Finn et al. 2017, sec. 5.3); ``log_std``
    is a state-independent learnable vector, adapted in the inner loop like every other
    parameter. The standard deviation it gives never falls below :data:`MIN_STD` (as in rllab
    and pytorch-maml-rl), so a collapsing ``log_std`` cannot overflow the log-probabilities.
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden_sizes: Sequence[int] = (100, 100),
                 activation: str = "relu", init_std: float = 1.0):
        super().__init__()
        if init_std <= 0:
            raise ValueError(f"init_std must be positive, got {init_std}")
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.mean = mlp([obs_dim, *hidden_sizes, action_dim], activation)
        self.log_std = nn.Parameter(torch.full((action_dim,), math.log(init_std)))

    def forward(self, obs: Tensor) -> DistParams:
        """``obs [..., obs_dim]`` -> ``(mean [..., A], log_std [..., A])``."""
        mean = self.mean(obs)
        return mean, self.log_std.clamp(min=LOG_MIN_STD).expand_as(mean)

    @staticmethod
    def log_prob(dist: DistParams, actions: Tensor) -> Tensor:
        """``log pi(a|s)`` summed over action dimensions: ``[..., A] -> [...]``."""
        mean, log_std = dist
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    @staticmethod
    def entropy(dist: DistParams) -> Tensor:
        """Entropy ``[...]``."""
        _, log_std = dist
        return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)

    @staticmethod
    def kl(p: DistParams, q: DistParams) -> Tensor:
        """``KL(p || q)`` between diagonal Gaussians, summed over action dims: ``[...]``."""
        mean_p, log_std_p = p
        mean_q, log_std_q = q
        var_p, var_q = torch.exp(2 * log_std_p), torch.exp(2 * log_std_q)
        kl = log_std_q - log_std_p + (var_p + (mean_p - mean_q) ** 2) / (2 * var_q) - 0.5
        return kl.sum(-1)

    @staticmethod
    def sample(dist: DistParams, generator: torch.Generator | None = None,
               noise: Tensor | None = None) -> Tensor:
        """One action per distribution, ``[..., A]``, using ``generator`` for reproducibility.

        ``noise``, standard normal ``[..., A]`` drawn beforehand by :meth:`draw_noise`, replaces
        the draw from ``generator``: the same noise gives the same actions.
        """
        mean, log_std = dist
        if noise is None:
            noise = GaussianMLPPolicy.draw_noise(mean.shape, generator, mean.dtype, mean.device)
        elif noise.shape != mean.shape:
            raise ValueError(f"noise of shape {tuple(noise.shape)} for distributions of shape "
                             f"{tuple(mean.shape)}")
        return mean + torch.exp(log_std) * noise

    @staticmethod
    def draw_noise(shape: Sequence[int], generator: torch.Generator | None, dtype: torch.dtype,
                   device: torch.device | str) -> Tensor:
        """The standard normal noise :meth:`sample` draws for distributions ``shape [..., A]``."""
        return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)

    @staticmethod
    def mode(dist: DistParams) -> Tensor:
        """The most likely action (the mean)."""
        return dist[0]


class CategoricalMLPPolicy(nn.Module):
    """Categorical policy over ``num_actions`` discrete actions, logits from an MLP."""

    def __init__(self, obs_dim: int, num_actions: int, hidden_sizes: Sequence[int] = (100, 100),
                 activation: str = "relu"):
        super().__init__()
        self.obs_dim, self.num_actions = obs_dim, num_actions
        self.logits = mlp([obs_dim, *hidden_sizes, num_actions], activation)

    def forward(self, obs: Tensor) -> DistParams:
        """``obs [..., obs_dim]`` -> ``(logits [..., K],)``, unnormalised.

        Unnormalised logits have no constraint, so the KL is stationary in them where the two
        distributions are equal (TRPO's Fisher product relies on it, see
        :func:`meta.outer.kl_hessian_product`).
        """
        return (self.logits(obs),)

    @staticmethod
    def log_prob(dist: DistParams, actions: Tensor) -> Tensor:
        """``log pi(a|s)`` for integer actions ``[...]`` (or ``[..., 1]``) -> ``[...]``."""
        log_p = torch.log_softmax(dist[0], dim=-1)
        index = actions.long()
        if index.dim() == log_p.dim():
            index = index.squeeze(-1)
        return torch.gather(log_p, -1, index.unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def entropy(dist: DistParams) -> Tensor:
        log_p = torch.log_softmax(dist[0], dim=-1)
        return -(log_p.exp() * log_p).sum(-1)

    @staticmethod
    def kl(p: DistParams, q: DistParams) -> Tensor:
        log_p, log_q = torch.log_softmax(p[0], dim=-1), torch.log_softmax(q[0], dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum(-1)

    @staticmethod
    def sample(dist: DistParams, generator: torch.Generator | None = None) -> Tensor:
        logits = dist[0]
        probs = torch.softmax(logits.reshape(-1, logits.shape[-1]), dim=-1)
        return torch.multinomial(probs, 1, generator=generator).reshape(logits.shape[:-1])

    @staticmethod
    def mode(dist: DistParams) -> Tensor:
        return dist[0].argmax(-1)


Policy = GaussianMLPPolicy | CategoricalMLPPolicy


def parameters_of(policy: nn.Module) -> Params:
    """The policy's own parameters as a name -> tensor dict (the tensors themselves, not copies)."""
    return dict(policy.named_parameters())


def dist_params(policy: nn.Module, params: Mapping[str, Tensor], obs: Tensor) -> DistParams:
    """Evaluate ``policy`` with ``params`` instead of its own: ``obs [..., D]`` -> dist params."""
    return functional_call(policy, dict(params), (obs,))


def batched_dist_params(policy: nn.Module, params: Mapping[str, Tensor], obs: Tensor,
                        batching: str = "batched") -> DistParams:
    """One forward for N tasks, each with its own parameters.

    Args:
        params: every tensor has a leading task dim ``[N, ...]``.
        obs: ``[N, ..., D]``.
        batching: ``"batched"``, one ``vmap``-ed forward over the tasks; ``"loop"``, one
            forward per task, then stacked. Same numbers; the loop is faster on the CPU at
            meta-batch sizes (README, "Benchmarks of the inner loop").
    Returns:
        dist params with leading dim ``[N, ...]``.
    """
    if batching == "loop":
        per_task = [functional_call(policy, {k: v[i] for k, v in params.items()}, (obs[i],))
                    for i in range(obs.shape[0])]
        return tuple(torch.stack(parts) for parts in zip(*per_task))
    if batching != "batched":
        raise ValueError(f"unknown batching {batching!r}; known: ('batched', 'loop')")
    return torch.func.vmap(lambda p, o: functional_call(policy, p, (o,)))(dict(params), obs)


def make_policy(obs_dim: int, action_space, hidden_sizes: Sequence[int], activation: str,
                init_std: float = 1.0) -> nn.Module:
    """A Gaussian policy for a ``Box`` action space, a categorical one for ``Discrete``."""
    import gymnasium as gym

    if isinstance(action_space, gym.spaces.Discrete):
        return CategoricalMLPPolicy(obs_dim, int(action_space.n), hidden_sizes, activation)
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        return GaussianMLPPolicy(obs_dim, action_space.shape[0], hidden_sizes, activation, init_std)
    raise ValueError(f"unsupported action space {action_space}")
