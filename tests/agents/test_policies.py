"""Tests of agents/policies.py: distribution maths against torch.distributions, functional and
vmap-ed evaluation with parameter dicts, seeded sampling, construction options."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Categorical, Independent, Normal, kl_divergence

from agents.policies import (
    LOG_MIN_STD,
    CategoricalMLPPolicy,
    GaussianMLPPolicy,
    batched_dist_params,
    dist_params,
    make_policy,
    mlp,
    parameters_of,
)

F64 = torch.float64


def _gaussian(seed: int = 0, obs_dim: int = 3, action_dim: int = 2, **kwargs) -> GaussianMLPPolicy:
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(obs_dim, action_dim, **{"hidden_sizes": (8, 8), **kwargs}).to(F64)
    with torch.no_grad():  # a non-trivial, per-dimension std
        policy.log_std.copy_(torch.linspace(-0.7, 0.4, action_dim, dtype=F64))
    return policy


def _categorical(seed: int = 0, obs_dim: int = 3, num_actions: int = 4, **kwargs):
    torch.manual_seed(seed)
    return CategoricalMLPPolicy(obs_dim, num_actions, **{"hidden_sizes": (8, 8), **kwargs}).to(F64)


def _torch_normal(dist) -> Independent:
    mean, log_std = dist
    return Independent(Normal(mean, log_std.exp()), 1)


def _random_params_like(policy: nn.Module, n: int, seed: int) -> dict[str, torch.Tensor]:
    """``n`` different parameter sets, stacked on a leading task dim."""
    g = torch.Generator().manual_seed(seed)
    return {k: v.detach().unsqueeze(0) + 0.5 * torch.randn(n, *v.shape, generator=g, dtype=v.dtype)
            for k, v in policy.named_parameters()}


# --- Gaussian maths --------------------------------------------------------------------------------
def test_gaussian_forward_shapes_and_log_std_broadcast():
    policy = _gaussian()
    obs = torch.randn(5, 7, 3, dtype=F64)
    mean, log_std = policy(obs)
    assert mean.shape == log_std.shape == (5, 7, 2)
    torch.testing.assert_close(log_std, policy.log_std.expand(5, 7, 2))


def test_a_collapsed_log_std_is_floored_at_the_minimum_std_and_keeps_every_value_finite():
    policy = _gaussian()
    with torch.no_grad():
        policy.log_std.copy_(torch.tensor([-400.0, -1.0], dtype=F64))
    obs = torch.randn(4, 3, dtype=F64)
    mean, log_std = policy(obs)
    assert log_std[:, 0].eq(LOG_MIN_STD).all() and log_std[:, 1].eq(-1.0).all()
    actions = mean + 0.01
    dist = (mean, log_std)
    assert torch.isfinite(policy.log_prob(dist, actions)).all()
    assert torch.isfinite(policy.kl(dist, (mean + 0.01, log_std))).all()
    log_std.sum().backward()  # no gradient through the floor, the usual one above it
    assert policy.log_std.grad.tolist() == [0.0, 4.0]


def test_gaussian_log_prob_entropy_kl_match_torch_distributions():
    policy = _gaussian()
    obs = torch.randn(4, 6, 3, dtype=F64)
    actions = torch.randn(4, 6, 2, dtype=F64)
    p = policy(obs)
    ref_p = _torch_normal(p)
    torch.testing.assert_close(policy.log_prob(p, actions), ref_p.log_prob(actions),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(policy.entropy(p), ref_p.entropy(), rtol=1e-12, atol=1e-12)
    # q: another mean and another (state-dependent here) log std
    q = (p[0] + torch.randn_like(p[0]), p[1] + 0.3 * torch.randn_like(p[1]))
    kl = policy.kl(p, q)
    assert kl.shape == (4, 6)
    torch.testing.assert_close(kl, kl_divergence(ref_p, _torch_normal(q)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(policy.kl(p, p), torch.zeros(4, 6, dtype=F64), rtol=0, atol=1e-14)
    assert (kl > 0).all()


def test_gaussian_mode_is_mean():
    policy = _gaussian()
    p = policy(torch.randn(3, 3, dtype=F64))
    assert torch.equal(policy.mode(p), p[0])


def test_gaussian_sample_reproducible_and_distributed():
    policy = _gaussian()
    obs = torch.randn(3, dtype=F64).expand(20000, 3)
    dist = policy(obs)
    a = policy.sample(dist, torch.Generator().manual_seed(7))
    b = policy.sample(dist, torch.Generator().manual_seed(7))
    c = policy.sample(dist, torch.Generator().manual_seed(8))
    assert a.shape == (20000, 2) and a.dtype == F64
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # the samples follow N(mean, exp(log_std)^2): 20000 draws, 5-sigma bounds
    std = policy.log_std.detach().exp()
    torch.testing.assert_close(a.mean(0), dist[0][0].detach(), rtol=0, atol=float(5 * std.max() / 141))
    torch.testing.assert_close(a.std(0), std, rtol=0.03, atol=0)


# --- categorical maths -----------------------------------------------------------------------------
def test_categorical_log_prob_entropy_kl_match_torch_distributions():
    policy = _categorical()
    obs = torch.randn(4, 6, 3, dtype=F64)
    p = policy(obs)
    torch.testing.assert_close(p[0], policy.logits(obs))  # unnormalised logits
    ref_p = Categorical(logits=policy.logits(obs))
    actions = torch.randint(0, 4, (4, 6))
    expected = ref_p.log_prob(actions)
    torch.testing.assert_close(policy.log_prob(p, actions), expected, rtol=1e-12, atol=1e-12)
    # actions with a trailing singleton dim, and float-coded actions (as stored in a batch)
    torch.testing.assert_close(policy.log_prob(p, actions.unsqueeze(-1)), expected,
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(policy.log_prob(p, actions.to(F64)), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(policy.entropy(p), ref_p.entropy(), rtol=1e-12, atol=1e-12)
    other = _categorical(seed=1)
    q = other(obs)
    torch.testing.assert_close(policy.kl(p, q),
                               kl_divergence(ref_p, Categorical(logits=other.logits(obs))),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(policy.kl(p, p), torch.zeros(4, 6, dtype=F64), rtol=0, atol=1e-14)


def test_categorical_sample_reproducible_and_distributed():
    policy = _categorical()
    obs = torch.randn(3, dtype=F64).expand(2, 10000, 3)
    dist = policy(obs)
    a = policy.sample(dist, torch.Generator().manual_seed(3))
    b = policy.sample(dist, torch.Generator().manual_seed(3))
    c = policy.sample(dist, torch.Generator().manual_seed(4))
    assert a.shape == (2, 10000)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() < 4
    freq = torch.bincount(a.reshape(-1), minlength=4).to(F64) / a.numel()
    torch.testing.assert_close(freq, torch.softmax(dist[0][0, 0].detach(), -1), rtol=0, atol=0.02)
    assert torch.equal(policy.mode(dist), dist[0].argmax(-1))


# --- functional evaluation -------------------------------------------------------------------------
@pytest.mark.parametrize("make", [_gaussian, _categorical], ids=["gaussian", "categorical"])
def test_dist_params_with_own_parameters_equals_forward(make):
    policy = make()
    obs = torch.randn(5, 4, 3, dtype=F64)
    expected = policy(obs)
    got = dist_params(policy, parameters_of(policy), obs)
    assert len(got) == len(expected)
    for x, y in zip(got, expected):
        assert torch.equal(x, y)


@pytest.mark.parametrize("make", [_gaussian, _categorical], ids=["gaussian", "categorical"])
def test_dist_params_uses_the_given_parameters_not_the_modules(make):
    policy = make()
    obs = torch.randn(5, 3, dtype=F64)
    before = [t.clone() for t in policy(obs)]
    other = {k: v.squeeze(0) for k, v in _random_params_like(policy, 1, seed=1).items()}
    got = dist_params(policy, other, obs)
    assert not torch.allclose(got[0], before[0])
    # and it leaves the module's own parameters untouched
    for x, y in zip(policy(obs), before):
        assert torch.equal(x, y)


def test_dist_params_is_differentiable_in_the_given_parameters():
    policy = _gaussian()
    params = {k: v.detach().clone().requires_grad_() for k, v in policy.named_parameters()}
    obs = torch.randn(5, 3, dtype=F64)
    loss = policy.log_prob(dist_params(policy, params, obs), torch.randn(5, 2, dtype=F64)).sum()
    grads = torch.autograd.grad(loss, list(params.values()))
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in policy.parameters())


@pytest.mark.parametrize("batching", ["batched", "loop"])
@pytest.mark.parametrize("make", [_gaussian, _categorical], ids=["gaussian", "categorical"])
def test_batched_dist_params_equals_per_task_loop(make, batching):
    policy = make()
    n = 3
    stacked = _random_params_like(policy, n, seed=2)
    obs = torch.randn(n, 6, 4, 3, dtype=F64)
    got = batched_dist_params(policy, stacked, obs, batching)
    for i in range(n):
        expected = dist_params(policy, {k: v[i] for k, v in stacked.items()}, obs[i])
        for x, y in zip(got, expected):
            assert x.shape[0] == n
            torch.testing.assert_close(x[i], y, rtol=1e-12, atol=1e-12)
    # the tasks really differ, so the check above is not vacuous
    assert not torch.allclose(got[0][0], got[0][1])


@pytest.mark.parametrize("batching", ["batched", "loop"])
def test_batched_dist_params_gradients_stay_per_task(batching):
    policy = _gaussian()
    stacked = {k: v.requires_grad_() for k, v in _random_params_like(policy, 3, seed=3).items()}
    obs = torch.randn(3, 5, 3, dtype=F64)
    mean, _ = batched_dist_params(policy, stacked, obs, batching)
    (g,) = torch.autograd.grad(mean[1].sum(), [stacked["mean.0.weight"]])
    assert g[0].abs().sum() == 0 and g[2].abs().sum() == 0 and g[1].abs().sum() > 0


def test_batched_dist_params_rejects_an_unknown_batching():
    with pytest.raises(ValueError, match="unknown batching 'vectorised'"):
        batched_dist_params(_gaussian(), _random_params_like(_gaussian(), 2, seed=0),
                            torch.randn(2, 5, 3, dtype=F64), "vectorised")


# --- construction ----------------------------------------------------------------------------------
@pytest.mark.parametrize("hidden", [(), (5,), (7, 3, 4)])
@pytest.mark.parametrize("activation, cls", [("relu", nn.ReLU), ("tanh", nn.Tanh)])
def test_hidden_sizes_and_activation_honoured(hidden, activation, cls):
    for policy, body, out in [
        (GaussianMLPPolicy(3, 2, hidden, activation), "mean", 2),
        (CategoricalMLPPolicy(3, 5, hidden, activation), "logits", 5),
    ]:
        net = getattr(policy, body)
        linears = [m for m in net if isinstance(m, nn.Linear)]
        sizes = [3, *hidden, out]
        assert [(m.in_features, m.out_features) for m in linears] == list(zip(sizes[:-1], sizes[1:]))
        activations = [m for m in net if not isinstance(m, nn.Linear)]
        assert len(activations) == len(hidden)
        assert all(type(m) is cls for m in activations)
        assert not isinstance(net[-1], cls)  # no activation on the output


def test_default_architecture_is_the_papers():
    policy = GaussianMLPPolicy(2, 2)
    linears = [m for m in policy.mean if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [100, 100, 2]
    assert all(isinstance(m, nn.ReLU) for m in policy.mean if not isinstance(m, nn.Linear))


def test_init_std_sets_log_std():
    policy = GaussianMLPPolicy(3, 4, (8,), init_std=0.3)
    assert policy.log_std.shape == (4,)
    torch.testing.assert_close(policy.log_std.detach(), torch.full((4,), math.log(0.3)))
    assert "log_std" in parameters_of(policy)


@pytest.mark.parametrize("init_std", [0.0, -1.0])
def test_bad_init_std_raises(init_std):
    with pytest.raises(ValueError, match="init_std"):
        GaussianMLPPolicy(3, 2, (8,), init_std=init_std)


def test_bad_activation_raises():
    with pytest.raises(ValueError, match="activation"):
        GaussianMLPPolicy(3, 2, (8,), activation="sigmoid")
    with pytest.raises(ValueError, match="activation"):
        CategoricalMLPPolicy(3, 2, (8,), activation="gelu")
    with pytest.raises(ValueError, match="activation"):
        mlp([3, 4], "swish")
    with pytest.raises(ValueError, match="activation"):
        make_policy(3, gym.spaces.Discrete(3), (8,), "elu")


def test_make_policy_picks_the_distribution_from_the_action_space():
    box = gym.spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
    gaussian = make_policy(5, box, (16,), "tanh", init_std=0.5)
    assert isinstance(gaussian, GaussianMLPPolicy)
    assert (gaussian.obs_dim, gaussian.action_dim) == (5, 3)
    torch.testing.assert_close(gaussian.log_std.detach(), torch.full((3,), math.log(0.5)))
    assert isinstance(gaussian.mean[1], nn.Tanh) and gaussian.mean[0].out_features == 16

    categorical = make_policy(5, gym.spaces.Discrete(4), (16,), "relu")
    assert isinstance(categorical, CategoricalMLPPolicy)
    assert categorical.num_actions == 4
    assert categorical(torch.zeros(5))[0].shape == (4,)

    with pytest.raises(ValueError, match="unsupported"):
        make_policy(5, gym.spaces.Box(-1.0, 1.0, shape=(2, 2)), (16,), "relu")
    with pytest.raises(ValueError, match="unsupported"):
        make_policy(5, gym.spaces.MultiDiscrete([2, 3]), (16,), "relu")
