"""Tests of meta/maml.py: the MAML meta-gradient (Finn et al. 2017) against finite differences,
first-order MAML, batched vs looped adaptation, advantages and the generic inner loop.

Everything runs in float64 on small synthetic batches: ``N = 3`` tasks, ``T = 5`` steps,
``E = 4`` episodes, some terminated early, with junk on the padding.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from agents.baseline import LinearFeatureBaseline
from agents.policies import GaussianMLPPolicy
from meta.episodes import Episodes
from meta.maml import (
    InnerLoop,
    adapt,
    detached,
    gradient_descent,
    log_probs,
    lvc_loss,
    reinforce_loss,
    with_advantages,
)
from meta.returns import discounted_returns

F64 = torch.float64
N, T, E, D, A = 3, 5, 4, 3, 2
GAMMA, LAM = 0.95, 0.9
ALPHA = 0.5  # large enough that the second-order terms matter

# Episode lengths per task: full-length (truncated by the horizon or terminated at the last
# step) and early-terminated episodes in every task.
LENGTHS = torch.tensor([[5, 5, 3, 1], [5, 2, 4, 5], [5, 4, 2, 3]])
TRUNCATED = torch.tensor([[True, False, False, False],
                          [True, False, False, False],
                          [False, False, False, False]])


def make_episodes(seed: int, lengths: torch.Tensor = LENGTHS, truncated: torch.Tensor = TRUNCATED,
                  advantages: bool = True, **adv_kwargs) -> Episodes:
    g = torch.Generator().manual_seed(seed)
    n, e = lengths.shape
    t = int(lengths.max())
    mask = (torch.arange(t).reshape(1, t, 1) < lengths.unsqueeze(1)).to(F64)  # [N, T, E]
    valid = mask.bool()
    junk = lambda shape: 3.0 * torch.randn(shape, generator=g, dtype=F64)  # noqa: E731
    obs = torch.where(valid[..., None], torch.randn(n, t, e, D, generator=g, dtype=F64),
                      junk((n, t, e, D)))
    actions = torch.where(valid[..., None], torch.randn(n, t, e, A, generator=g, dtype=F64),
                          junk((n, t, e, A)))
    rewards = torch.randn(n, t, e, generator=g, dtype=F64) * mask
    episodes = Episodes(
        observations=obs, actions=actions, rewards=rewards, mask=mask,
        log_probs=torch.randn(n, t, e, generator=g, dtype=F64) * mask,
        last_observations=torch.randn(n, e, D, generator=g, dtype=F64),
        truncated=truncated.clone(), unstable=torch.zeros(n, e, dtype=torch.bool),
    )
    if advantages:
        kwargs = {"gamma": GAMMA, "gae_lambda": LAM, **adv_kwargs}
        episodes = with_advantages(episodes, **kwargs)
    return episodes


def make_policy(seed: int = 0) -> GaussianMLPPolicy:
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(D, A, hidden_sizes=(8,), activation="tanh", init_std=0.7).to(F64)
    with torch.no_grad():  # a non-trivial starting point
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return policy


def base_params(policy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().requires_grad_() for k, v in policy.named_parameters()}


def flat(params) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in params.values()])


def unflat(vector: torch.Tensor, like) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for k, v in like.items():
        out[k] = vector[i : i + v.numel()].view_as(v)
        i += v.numel()
    return out


def meta_objective(policy, params, train, valid, inner: InnerLoop, create_graph=True):
    """``J(theta) = mean_i L_i(theta'_i)`` on the post-adaptation episodes."""
    adapted = adapt(policy, params, train, inner, create_graph=create_graph)
    return reinforce_loss(policy, adapted, valid, per_task_params=True).mean()


def meta_gradient(policy, params, train, valid, inner: InnerLoop) -> torch.Tensor:
    loss = meta_objective(policy, params, train, valid, inner)
    return flat(dict(zip(params, torch.autograd.grad(loss, list(params.values())))))


def finite_difference_gradient(fn, params, h: float = 1e-5) -> torch.Tensor:
    """Central differences along every coordinate of the flattened parameters."""
    theta = flat(params).detach()
    return directional_differences(fn, params, torch.eye(theta.numel(), dtype=F64), h)


def directional_differences(fn, params, directions: torch.Tensor, h: float = 1e-5) -> torch.Tensor:
    """Central differences of ``fn`` along each row of ``directions [K, P]``: ``[K]``."""
    theta = flat(params).detach()
    out = torch.zeros(directions.shape[0], dtype=F64)
    for j, v in enumerate(directions):
        plus = float(fn(unflat(theta + h * v, params)))
        minus = float(fn(unflat(theta - h * v, params)))
        out[j] = (plus - minus) / (2 * h)
    return out


def random_directions(num_params: int, k: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, num_params, generator=g, dtype=F64)


def rel_err(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x - y).norm() / y.norm())


def batches(num_steps: int):
    train = [make_episodes(10 + k) for k in range(num_steps)]
    return train, make_episodes(99)


# --- (a) second-order meta-gradient vs finite differences ------------------------------------------
@pytest.mark.parametrize("step_sizes", [(ALPHA,), (ALPHA, ALPHA / 2)], ids=["1-step", "2-steps"])
@pytest.mark.parametrize("batching", ["batched", "loop"])
def test_meta_gradient_matches_finite_differences(step_sizes, batching):
    """Central differences of J along each of the 52 parameters."""
    policy = make_policy()
    params = base_params(policy)
    inner = InnerLoop(step_sizes=step_sizes, batching=batching)
    train, valid = batches(len(step_sizes))
    grad = meta_gradient(policy, params, train, valid, inner)

    def objective(p):
        return meta_objective(policy, p, train, valid, inner, create_graph=False).detach()

    numeric = finite_difference_gradient(objective, params)
    assert (numeric.abs() > 1e-6).all()  # every coordinate is tested for real
    assert rel_err(grad, numeric) < 1e-4
    # and coordinate by coordinate
    torch.testing.assert_close(grad, numeric, rtol=1e-4, atol=1e-6 * float(numeric.abs().max()))


def test_meta_gradient_matches_finite_differences_of_the_trpo_surrogate():
    """The other objective of the outer loop: the importance-sampled surrogate w.r.t. a fixed
    old policy (the adapted policy at a perturbed theta, so the ratio is not 1)."""
    from meta.outer import MetaBatch, adapted_dist, surrogate_loss

    policy = make_policy()
    params = base_params(policy)
    inner = InnerLoop(step_sizes=(ALPHA,))
    train, valid = batches(1)
    batch = MetaBatch(train=train, valid=valid)
    shifted = {k: (v + 0.05 * torch.randn_like(v)).detach() for k, v in params.items()}
    old = tuple(d.detach() for d in adapted_dist(policy, shifted, batch, inner, create_graph=False))

    def objective(p, create_graph=False):
        new = adapted_dist(policy, p, batch, inner, create_graph=create_graph)
        return surrogate_loss(policy, new, old, valid).mean()

    grad = flat(dict(zip(params, torch.autograd.grad(objective(params, True),
                                                     list(params.values())))))
    directions = random_directions(grad.numel(), seed=1)
    numeric = directional_differences(lambda p: objective(p).detach(), params, directions)
    assert rel_err(directions @ grad, numeric) < 1e-4


# --- (b) first-order MAML ---------------------------------------------------------------------------
def manual_first_order_gradient(policy, params, train, valid, step_sizes) -> torch.Tensor:
    """``theta'_i = theta - sum_k alpha_k g_{i,k}.detach()``, task by task, by hand."""
    adapted_tasks = []
    for i in range(N):
        p = dict(params)
        for k, alpha in enumerate(step_sizes):
            loss = reinforce_loss(policy, p, train[k].task(i), per_task_params=False).sum()
            g = torch.autograd.grad(loss, list(p.values()))
            p = {name: v - alpha * gv.detach() for (name, v), gv in zip(p.items(), g)}
        adapted_tasks.append(p)
    adapted = {k: torch.stack([p[k] for p in adapted_tasks]) for k in params}
    loss = reinforce_loss(policy, adapted, valid, per_task_params=True).mean()
    return flat(dict(zip(params, torch.autograd.grad(loss, list(params.values())))))


@pytest.mark.parametrize("step_sizes", [(ALPHA,), (ALPHA, ALPHA / 2)], ids=["1-step", "2-steps"])
@pytest.mark.parametrize("batching", ["batched", "loop"])
def test_first_order_gradient_equals_detached_inner_gradient(step_sizes, batching):
    policy = make_policy()
    params = base_params(policy)
    train, valid = batches(len(step_sizes))
    first = meta_gradient(policy, params, train, valid,
                          InnerLoop(step_sizes=step_sizes, first_order=True, batching=batching))
    manual = manual_first_order_gradient(policy, params, train, valid, step_sizes)
    torch.testing.assert_close(first, manual, rtol=1e-10, atol=1e-12)
    second = meta_gradient(policy, params, train, valid,
                           InnerLoop(step_sizes=step_sizes, batching=batching))
    assert rel_err(first, second) > 1e-2


def test_first_order_ignores_create_graph_and_adapted_values_agree():
    policy = make_policy()
    params = base_params(policy)
    train, _ = batches(1)
    fo = adapt(policy, params, train, InnerLoop(step_sizes=(ALPHA,), first_order=True))
    so = adapt(policy, params, train, InnerLoop(step_sizes=(ALPHA,)))
    ev = adapt(policy, params, train, InnerLoop(step_sizes=(ALPHA,)), create_graph=False)
    for k in params:  # the adapted *values* do not depend on the order of the gradient
        torch.testing.assert_close(fo[k], so[k], rtol=0, atol=1e-14)
        torch.testing.assert_close(ev[k], so[k], rtol=0, atol=1e-14)
    # first order: d theta' / d theta = I, so d(sum theta'_i)/d theta = N * 1
    g = torch.autograd.grad(fo["log_std"].sum(), [params["log_std"]])[0]
    torch.testing.assert_close(g, torch.full_like(g, float(N)), rtol=0, atol=0)
    g2 = torch.autograd.grad(so["log_std"].sum(), [params["log_std"]])[0]
    assert not torch.allclose(g2, g)


# --- (c) the meta-gradient reaches every base parameter --------------------------------------------
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("batching", ["batched", "loop"])
def test_meta_gradient_reaches_every_parameter(first_order, batching):
    policy = make_policy()
    inner = InnerLoop(step_sizes=(ALPHA, ALPHA), first_order=first_order, batching=batching)
    train, valid = batches(2)
    params = dict(policy.named_parameters())  # the module's own leaves, as the outer loop uses
    loss = meta_objective(policy, params, train, valid, inner)
    loss.backward()
    for name, p in policy.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


# --- (d) the tutorial bug: outer loss at the unadapted parameters ----------------------------------
def test_outer_loss_at_unadapted_params_gives_a_different_gradient():
    policy = make_policy()
    params = base_params(policy)
    inner = InnerLoop(step_sizes=(ALPHA,))
    train, valid = batches(1)
    correct = meta_gradient(policy, params, train, valid, inner)
    # the bug: the adapted parameters are computed but the outer loss uses theta itself
    adapt(policy, params, train, inner)
    wrong_loss = reinforce_loss(policy, params, valid, per_task_params=False).mean()
    wrong = flat(dict(zip(params, torch.autograd.grad(wrong_loss, list(params.values())))))
    assert rel_err(wrong, correct) > 0.1
    # and it is the correct one that matches the finite differences of J
    directions = random_directions(correct.numel(), seed=2)
    numeric = directional_differences(
        lambda p: meta_objective(policy, p, train, valid, inner, create_graph=False).detach(),
        params, directions)
    assert rel_err(directions @ correct, numeric) < 1e-4
    assert rel_err(directions @ wrong, numeric) > 0.1


# --- (e) batched == loop ----------------------------------------------------------------------------
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("step_sizes", [(ALPHA,), (ALPHA, 0.1, 0.3)], ids=["1-step", "3-steps"])
def test_batched_and_loop_batching_agree(step_sizes, first_order):
    policy = make_policy()
    params = base_params(policy)
    train, valid = batches(len(step_sizes))
    results = {}
    for batching in ("batched", "loop"):
        inner = InnerLoop(step_sizes=step_sizes, first_order=first_order, batching=batching)
        adapted = adapt(policy, params, train, inner)
        assert all(adapted[k].shape == (N, *params[k].shape) for k in params)
        loss = reinforce_loss(policy, adapted, valid, per_task_params=True).mean()
        grad = flat(dict(zip(params, torch.autograd.grad(loss, list(params.values())))))
        results[batching] = (detached(adapted), grad)
    (a_b, g_b), (a_l, g_l) = results["batched"], results["loop"]
    for k in params:
        torch.testing.assert_close(a_b[k], a_l[k], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g_b, g_l, rtol=1e-10, atol=1e-10)
    # adaptation is per task: the tasks' adapted parameters differ
    assert not torch.allclose(a_b["log_std"][0], a_b["log_std"][1])


def test_adapt_does_not_touch_the_base_parameters_and_accepts_plain_tensors():
    policy = make_policy()
    before = {k: v.detach().clone() for k, v in policy.named_parameters()}
    train, _ = batches(1)
    plain = {k: v.detach().clone() for k, v in policy.named_parameters()}  # no requires_grad
    adapted = adapt(policy, plain, train, InnerLoop(step_sizes=(ALPHA,)), create_graph=False)
    with_grad = adapt(policy, dict(policy.named_parameters()), train, InnerLoop(step_sizes=(ALPHA,)))
    for k, v in policy.named_parameters():
        assert torch.equal(v.detach(), before[k])
        assert plain[k].grad is None and not plain[k].requires_grad
        torch.testing.assert_close(adapted[k], with_grad[k].detach(), rtol=0, atol=1e-14)
        # one step moves every parameter by -alpha * (the task's own gradient)
        assert not torch.allclose(adapted[k][0], before[k])


def test_adapt_one_step_is_theta_minus_alpha_task_gradient():
    policy = make_policy()
    params = base_params(policy)
    train, _ = batches(1)
    adapted = adapt(policy, params, train, InnerLoop(step_sizes=(0.3,)), create_graph=False)
    for i in range(N):
        loss = reinforce_loss(policy, params, train[0].task(i), per_task_params=False).sum()
        grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
        for k in params:
            torch.testing.assert_close(adapted[k][i], (params[k] - 0.3 * grads[k]).detach(),
                                       rtol=1e-12, atol=1e-12)


def test_padding_never_changes_the_loss_or_the_meta_gradient():
    policy = make_policy()
    params = base_params(policy)
    inner = InnerLoop(step_sizes=(ALPHA,))
    train, valid = batches(1)
    pad = ~train[0].mask.bool()

    def rejunk(ep: Episodes, scale: float) -> Episodes:
        m = ~ep.mask.bool()
        return dataclasses.replace(
            ep,
            observations=torch.where(m[..., None], scale, ep.observations),
            actions=torch.where(m[..., None], -scale, ep.actions),
        )

    assert pad.any()
    g1 = meta_gradient(policy, params, train, valid, inner)
    g2 = meta_gradient(policy, params, [rejunk(train[0], 7.0)], rejunk(valid, 3.0), inner)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-14)


# --- losses -----------------------------------------------------------------------------------------
def test_reinforce_loss_by_hand():
    policy = make_policy()
    ep = make_episodes(5)
    params = dict(policy.named_parameters())
    loss = reinforce_loss(policy, params, ep, per_task_params=False)
    assert loss.shape == (N,)
    mean, log_std = policy(ep.observations)
    normal = torch.distributions.Normal(mean, log_std.exp())
    logp = normal.log_prob(ep.actions).sum(-1)
    for i in range(N):
        m = ep.mask[i].bool()
        expected = -(logp[i][m] * ep.advantages[i][m]).mean()
        torch.testing.assert_close(loss[i], expected, rtol=1e-12, atol=1e-12)
    # per-task stacked copies of the same parameters give the same numbers
    stacked = {k: v.unsqueeze(0).expand(N, *v.shape) for k, v in params.items()}
    torch.testing.assert_close(reinforce_loss(policy, stacked, ep, per_task_params=True), loss,
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(log_probs(policy, params, ep, False), logp, rtol=1e-12, atol=1e-12)


def test_reinforce_loss_needs_advantages():
    policy = make_policy()
    with pytest.raises(ValueError, match="advantages"):
        reinforce_loss(policy, dict(policy.named_parameters()),
                       make_episodes(0, advantages=False), per_task_params=False)


# --- (f) with_advantages ----------------------------------------------------------------------------
def test_with_advantages_shape_padding_and_per_task_normalisation():
    raw = make_episodes(3, advantages=False)
    assert raw.advantages is None
    ep = with_advantages(raw, GAMMA, LAM)
    adv = ep.advantages
    assert adv.shape == (N, T, E) and adv.dtype == F64
    assert not adv.requires_grad
    pad = ~ep.mask.bool()
    assert torch.equal(adv[pad], torch.zeros_like(adv[pad]))
    for i in range(N):
        a = adv[i][ep.mask[i].bool()]
        assert abs(float(a.mean())) < 1e-10
        assert abs(float(a.pow(2).mean().sqrt()) - 1.0) < 1e-6  # population std over valid steps
    # the other fields are untouched
    assert torch.equal(ep.observations, raw.observations) and torch.equal(ep.rewards, raw.rewards)


def test_with_advantages_unnormalised_is_gae_on_the_per_task_baseline():
    raw = make_episodes(4, advantages=False)
    adv = with_advantages(raw, GAMMA, 1.0, normalize=False).advantages
    # lambda = 1: A_t = R_t - V_t with V the per-task linear baseline fit to R
    returns = discounted_returns(raw.rewards, raw.mask, GAMMA, time_axis=1)
    for i in range(N):  # fit each task on its own: the same as the batched per-task fit
        w = LinearFeatureBaseline().fit(raw.observations[i], returns[i], raw.mask[i])
        values = LinearFeatureBaseline.predict(w, raw.observations[i], raw.mask[i])
        torch.testing.assert_close(adv[i], (returns[i] - values) * raw.mask[i],
                                   rtol=1e-8, atol=1e-8)


def test_bootstrap_truncated_changes_only_truncated_episodes():
    raw = make_episodes(6, advantages=False)
    plain = with_advantages(raw, GAMMA, LAM, normalize=False).advantages
    boot = with_advantages(raw, GAMMA, LAM, bootstrap_truncated=True, normalize=False).advantages
    trunc = raw.truncated
    assert trunc.any() and (~trunc).any()
    # episode columns [N, E] that are not truncated: identical (full-length terminated included)
    # (the batched least-squares fit is reproducible only to ~1e-15, hence the tolerance)
    not_trunc = (~trunc).unsqueeze(1).expand(N, T, E)
    torch.testing.assert_close(boot[not_trunc], plain[not_trunc], rtol=0, atol=1e-12)
    assert ((raw.mask.sum(1) == T) & ~trunc).any()  # a terminated-at-the-last-step episode
    # truncated episodes: A_t gains (gamma*lambda)^(T-1-t) * gamma * V(s_T), V(s_T) the task's
    # baseline at the last observation and time index T
    returns = discounted_returns(raw.rewards, raw.mask, GAMMA, time_axis=1)
    weights = LinearFeatureBaseline().fit(raw.observations, returns, raw.mask)  # [N, F]
    for i, e in trunc.nonzero().tolist():
        obs = raw.last_observations[i, e].clamp(-10, 10)
        s = T / 100.0
        phi = torch.cat([obs, obs**2, torch.tensor([s, s**2, s**3, 1.0], dtype=F64)])
        v_last = float(phi @ weights[i])
        assert abs(v_last) > 1e-3
        decay = (GAMMA * LAM) ** torch.arange(T - 1, -1, -1, dtype=F64)
        torch.testing.assert_close(boot[i, :, e] - plain[i, :, e], decay * GAMMA * v_last,
                                   rtol=1e-8, atol=1e-8)
    # with normalisation only the tasks holding a truncated episode change
    plain_n = with_advantages(raw, GAMMA, LAM).advantages
    boot_n = with_advantages(raw, GAMMA, LAM, bootstrap_truncated=True).advantages
    for i in range(N):
        change = float((plain_n[i] - boot_n[i]).abs().max())
        if trunc[i].any():
            assert change > 1e-3
        else:
            assert change < 1e-12


# --- the inner-loop configuration -------------------------------------------------------------------
def test_zero_inner_steps_give_every_task_the_base_parameters():
    policy = make_policy()
    params = dict(policy.named_parameters())
    adapted = adapt(policy, params, [], InnerLoop(step_sizes=()), num_tasks=3)
    for k, v in params.items():
        assert adapted[k].shape == (3, *v.shape)
        assert torch.equal(adapted[k][1], v)
    with pytest.raises(ValueError, match="num_tasks"):
        adapt(policy, params, [], InnerLoop(step_sizes=()))


# --- (f') ProMP's LVC inner loss -----------------------------------------------------------------
def sampled_by(policy, params, episodes: Episodes, per_task_params: bool = False) -> Episodes:
    """``episodes`` with the log-probabilities of the policy at ``params``, as if it sampled them."""
    with torch.no_grad():
        logp = log_probs(policy, params, episodes, per_task_params)
    return dataclasses.replace(episodes, log_probs=torch.where(episodes.mask > 0, logp, 0.0))


def on_policy_batches(policy, params, inner: InnerLoop):
    """Two inner steps' episodes, the second as if sampled by the once-adapted parameters."""
    train, valid = batches(2)
    first = sampled_by(policy, params, train[0])
    one_step = dataclasses.replace(inner, step_sizes=inner.step_sizes[:1])
    once = adapt(policy, params, [first], one_step, create_graph=False)
    return [first, sampled_by(policy, once, train[1], per_task_params=True)], valid


@pytest.mark.parametrize("batching", ["batched", "loop"])
def test_lvc_takes_the_same_inner_steps_on_policy_but_gives_another_meta_gradient(batching):
    policy = make_policy()
    params = base_params(policy)
    reinforce = InnerLoop((ALPHA, ALPHA / 2), batching=batching)
    lvc = dataclasses.replace(reinforce, objective="lvc")
    train, valid = on_policy_batches(policy, params, reinforce)
    a = adapt(policy, params, train, reinforce, create_graph=False)
    b = adapt(policy, params, train, lvc, create_graph=False)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-9, atol=1e-10)  # up to rounding
    g_reinforce = meta_gradient(policy, params, train, valid, reinforce)
    g_lvc = meta_gradient(policy, params, train, valid, lvc)
    assert rel_err(g_lvc, g_reinforce) > 1e-3  # the curvature term changes it
    first = dataclasses.replace(lvc, first_order=True)  # without second order they agree
    torch.testing.assert_close(meta_gradient(policy, params, train, valid, first),
                               meta_gradient(policy, params, train, valid,
                                             dataclasses.replace(reinforce, first_order=True)))


def test_lvc_hessian_is_reinforces_minus_the_advantage_weighted_score_outer_product():
    """ProMP sec. 5, for the loss (minus the objective): hess L_LVC = hess L_RE
    - sum_t m_t A_t g_t g_t^T / sum_t m_t, g_t = grad log pi(a_t|s_t), for one task sampled by
    the policy at the point of evaluation."""
    policy = make_policy()
    params = base_params(policy)
    episodes = sampled_by(policy, params, make_episodes(3).task(0))
    theta = flat(params).detach()

    def loss(fn):
        return lambda x: fn(policy, unflat(x, params), episodes, per_task_params=False).sum()

    h_lvc = torch.autograd.functional.hessian(loss(lvc_loss), theta)
    h_re = torch.autograd.functional.hessian(loss(reinforce_loss), theta)
    scores = torch.autograd.functional.jacobian(
        lambda x: log_probs(policy, unflat(x, params), episodes, per_task_params=False).reshape(-1),
        theta)  # [T*E, P]
    weights = (episodes.mask * episodes.advantages).reshape(-1) / episodes.mask.sum()
    expected = h_re - torch.einsum("s,sp,sq->pq", weights, scores, scores)
    torch.testing.assert_close(h_lvc, expected, rtol=1e-9, atol=1e-9)
    assert float((h_lvc - h_re).abs().max()) > 1e-3
    value = lvc_loss(policy, params, episodes, per_task_params=False)
    expected_value = -(episodes.mask * episodes.advantages).sum() / episodes.mask.sum()
    torch.testing.assert_close(value, expected_value.reshape(1))


def test_lvc_off_policy_is_the_importance_weighted_policy_gradient():
    """Away from the sampling parameters (a later PPO epoch), ProMP's inner gradient weights
    each step by pi / pi_old; padding, whatever it holds, stays out."""
    policy = make_policy()
    sampler = base_params(policy)
    episodes = sampled_by(policy, sampler, make_episodes(4).task(1))
    episodes = dataclasses.replace(episodes, log_probs=torch.where(
        episodes.mask > 0, episodes.log_probs, torch.tensor(-1e4, dtype=F64)))  # junk padding
    moved = {k: (v + 0.05 * torch.randn_like(v)).detach().requires_grad_()
             for k, v in sampler.items()}
    (grad,) = [flat(dict(zip(moved, torch.autograd.grad(
        lvc_loss(policy, moved, episodes, per_task_params=False).sum(), list(moved.values())))))]
    logp = log_probs(policy, moved, episodes, per_task_params=False)
    w = torch.where(episodes.mask > 0, torch.exp(logp - episodes.log_probs), 0.0).detach()
    weighted = -(w * logp * episodes.advantages * episodes.mask).sum() / episodes.mask.sum()
    expected = flat(dict(zip(moved, torch.autograd.grad(weighted, list(moved.values())))))
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)
    assert torch.isfinite(grad).all()
    assert float(w[episodes.mask > 0].sub(1).abs().max()) > 1e-2  # really off-policy


def test_inner_loop_validation():
    assert InnerLoop(step_sizes=(0.1, 0.05)).num_steps == 2
    with pytest.raises(ValueError, match="batching"):
        InnerLoop(batching="parallel")
    with pytest.raises(ValueError, match="inner objective 'dice'"):
        InnerLoop(objective="dice")
    assert InnerLoop(step_sizes=()).num_steps == 0  # no adaptation: the pretrained baseline
    with pytest.raises(ValueError, match="step sizes"):
        InnerLoop(step_sizes=(0.1, 0.0))
    with pytest.raises(ValueError, match="step sizes"):
        InnerLoop(step_sizes=(-0.1,))
    policy = make_policy()
    with pytest.raises(ValueError, match="inner steps"):
        adapt(policy, dict(policy.named_parameters()), [make_episodes(0)],
              InnerLoop(step_sizes=(0.1, 0.1)))


# --- (g) gradient_descent -----------------------------------------------------------------------------
def test_gradient_descent_on_a_quadratic_is_exactly_theta_minus_alpha_grad():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(4, 4, generator=g, dtype=F64)
    q = m @ m.T + torch.eye(4, dtype=F64)
    b = torch.randn(4, generator=g, dtype=F64)
    c = torch.randn(3, generator=g, dtype=F64)
    x0 = torch.randn(4, generator=g, dtype=F64, requires_grad=True)
    y0 = torch.randn(3, generator=g, dtype=F64, requires_grad=True)
    calls = []

    def loss_fn(p, k):  # 0.5 x'Qx + b'x + sum(c * y^2); the step index is passed through
        calls.append(k)
        x, y = p["x"], p["y"]
        return 0.5 * x @ q @ x + b @ x + (c * y**2).sum()

    steps = (0.1, 0.05)
    out = gradient_descent(loss_fn, {"x": x0, "y": y0}, steps, create_graph=False)
    assert calls == [0, 1]
    x, y = x0.detach(), y0.detach()
    for alpha in steps:
        x, y = x - alpha * (q @ x + b), y - alpha * (2 * c * y)
    torch.testing.assert_close(out["x"].detach(), x, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(out["y"].detach(), y, rtol=1e-13, atol=1e-13)
    assert set(out) == {"x", "y"}


@pytest.mark.parametrize("create_graph", [True, False])
def test_gradient_descent_jacobian_is_second_or_first_order(create_graph):
    g = torch.Generator().manual_seed(1)
    m = torch.randn(4, 4, generator=g, dtype=F64)
    q = m @ m.T + torch.eye(4, dtype=F64)
    x0 = torch.randn(4, generator=g, dtype=F64, requires_grad=True)
    alpha = 0.05

    def step(x):
        return gradient_descent(lambda p, k: 0.5 * p["x"] @ q @ p["x"], {"x": x}, (alpha,),
                                create_graph)["x"]

    jac = torch.autograd.functional.jacobian(step, x0)
    eye = torch.eye(4, dtype=F64)
    # d theta_1 / d theta_0 = I - alpha Q with the second-order term, I without it
    expected = eye - alpha * q if create_graph else eye
    torch.testing.assert_close(jac, expected, rtol=1e-12, atol=1e-12)
