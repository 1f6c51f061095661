"""Tests of meta/cg.py and meta/outer.py: conjugate gradient, the MAML-TRPO trust-region step
(checked against an independent recomputation of the KL and the surrogate), PPO and Adam outer
steps, the factory and optimizer state round trips. Small float64 problems throughout."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

import meta.outer as outer
from agents.policies import GaussianMLPPolicy, dist_params
from meta.cg import conjugate_gradient, conjugate_gradient_and_product
from meta.episodes import Episodes
from meta.maml import InnerLoop, adapt, with_advantages
from meta.outer import PPO, TRPO, AdamOuter, MetaBatch, OuterOptimizer, make_outer

F64 = torch.float64
N, T, E, D, A = 3, 5, 4, 3, 2
INNER = InnerLoop(step_sizes=(0.1,))


def make_episodes(seed: int) -> Episodes:
    """Random ``[N, T, E]`` episodes, some terminated early, with advantages."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (N, E), generator=g)
    lengths[:, 0] = T
    mask = (torch.arange(T).reshape(1, T, 1) < lengths.unsqueeze(1)).to(F64)
    episodes = Episodes(
        observations=torch.randn(N, T, E, D, generator=g, dtype=F64),
        actions=torch.randn(N, T, E, A, generator=g, dtype=F64),
        rewards=torch.randn(N, T, E, generator=g, dtype=F64) * mask,
        mask=mask,
        log_probs=torch.zeros(N, T, E, dtype=F64),
        last_observations=torch.randn(N, E, D, generator=g, dtype=F64),
        truncated=lengths == T,
        unstable=torch.zeros(N, E, dtype=torch.bool),
    )
    return with_advantages(episodes, gamma=0.95, gae_lambda=0.9)


def make_batch(seed: int) -> MetaBatch:
    return MetaBatch(train=[make_episodes(1000 + seed)], valid=make_episodes(2000 + seed))


def make_policy(seed: int = 0) -> GaussianMLPPolicy:
    torch.manual_seed(seed)
    policy = GaussianMLPPolicy(D, A, hidden_sizes=(8,), activation="tanh", init_std=0.7).to(F64)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return policy


def snapshot(policy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in policy.named_parameters()}


def changed(policy, before) -> bool:
    return any(not torch.equal(v.detach(), before[k]) for k, v in policy.named_parameters())


# --- an independent recomputation of the trust-region quantities -----------------------------------
def adapted_normals(policy, params, batch: MetaBatch) -> list[torch.distributions.Normal]:
    """The adapted policy of every task on its post-adaptation states, task by task."""
    adapted = adapt(policy, params, batch.train, INNER, create_graph=False)
    out = []
    for i in range(N):
        mean, log_std = dist_params(policy, {k: v[i].detach() for k, v in adapted.items()},
                                    batch.valid.observations[i])
        out.append(torch.distributions.Normal(mean, log_std.exp()))
    return out


def kl_and_surrogate(policy, old_params, new_params, batch: MetaBatch) -> tuple[float, float]:
    """``mean_i E_s KL(pi_old_i || pi_new_i)`` and ``-mean_i E[ratio * A]`` over valid steps,
    with torch.distributions and boolean indexing rather than the module's masked helpers."""
    old = adapted_normals(policy, old_params, batch)
    new = old if new_params is old_params else adapted_normals(policy, new_params, batch)
    valid = batch.valid
    kls, surrogates = [], []
    for i in range(N):
        m = valid.mask[i].bool()
        kl = torch.distributions.kl_divergence(old[i], new[i]).sum(-1)
        kls.append(kl[m].mean())
        a = valid.actions[i]
        ratio = torch.exp(new[i].log_prob(a).sum(-1) - old[i].log_prob(a).sum(-1))
        surrogates.append(-(ratio * valid.advantages[i])[m].mean())
    return float(torch.stack(kls).mean()), float(torch.stack(surrogates).mean())


# --- conjugate gradient -----------------------------------------------------------------------------
def _spd(seed: int, n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=F64)
    return m @ m.T + 0.5 * torch.eye(n, dtype=F64)


@pytest.mark.parametrize("seed", range(3))
def test_conjugate_gradient_solves_an_spd_system(seed):
    a = _spd(seed)
    b = torch.randn(6, generator=torch.Generator().manual_seed(100 + seed), dtype=F64)
    calls = []

    def matvec(v):
        calls.append(1)
        return a @ v

    x = conjugate_gradient(matvec, b, iters=12)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(a @ x, b, rtol=0, atol=1e-6)
    assert len(calls) <= 12


def test_conjugate_gradient_stops_early():
    calls = []

    def matvec(v):
        calls.append(1)
        return _spd(0) @ v

    x = conjugate_gradient(matvec, torch.zeros(6, dtype=F64), iters=10)
    assert calls == [] and torch.equal(x, torch.zeros(6, dtype=F64))
    # a diagonal system with 2 distinct eigenvalues converges in 2 iterations, then stops
    calls.clear()
    diag = torch.tensor([1.0, 1.0, 1.0, 3.0, 3.0, 3.0], dtype=F64)
    b = torch.arange(1.0, 7.0, dtype=F64)

    def diag_matvec(v):
        calls.append(1)
        return diag * v

    x = conjugate_gradient(diag_matvec, b, iters=50)
    torch.testing.assert_close(x, b / diag, rtol=1e-12, atol=1e-12)
    assert len(calls) == 2


def test_conjugate_gradient_respects_the_iteration_budget():
    a, b = _spd(1), torch.ones(6, dtype=F64)
    # one iteration is the steepest-descent step with the exact line search
    x1 = conjugate_gradient(lambda v: a @ v, b, iters=1)
    torch.testing.assert_close(x1, (b @ b) / (b @ a @ b) * b, rtol=1e-12, atol=1e-12)
    x3 = conjugate_gradient(lambda v: a @ v, b, iters=3)
    exact = torch.linalg.solve(a, b)
    assert not torch.allclose(x3, exact, atol=1e-6)
    # CG minimises the A-norm error; each iteration improves it
    err = lambda x: float((x - exact) @ a @ (x - exact))  # noqa: E731
    assert err(x3) < err(x1) < err(torch.zeros(6, dtype=F64))


@pytest.mark.parametrize("iters", [1, 3, 5, 12])
def test_conjugate_gradient_product_is_a_times_x_without_another_matvec(iters):
    g = torch.Generator().manual_seed(7)
    m = torch.randn(12, 12, generator=g, dtype=F64)
    a = m @ m.T + 0.1 * torch.eye(12, dtype=F64)  # 12 dims: not solved before 12 iterations
    b = torch.randn(12, generator=g, dtype=F64)
    calls = []

    def matvec(v):
        calls.append(1)
        return a @ v

    x, ax = conjugate_gradient_and_product(matvec, b, iters=iters)
    assert len(calls) == iters
    torch.testing.assert_close(ax, a @ x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(x, conjugate_gradient(lambda v: a @ v, b, iters=iters),
                               rtol=0, atol=0)
    if iters < 12:
        assert not torch.allclose(ax, b, atol=1e-6)  # not converged: A x is not simply b


# --- TRPO -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("max_kl", [1e-6, 1e-2, 1.0])
def test_trpo_step_respects_the_trust_region_and_improves_the_surrogate(max_kl):
    backtracked = 0
    for seed in range(3):
        policy = make_policy(seed)
        batch = make_batch(seed)
        before = snapshot(policy)
        opt = TRPO(policy, INNER, max_kl=max_kl)
        metrics = opt.step(batch)
        assert all(math.isfinite(v) for v in metrics.values())
        assert metrics["accepted"] == 1.0
        assert changed(policy, before)
        kl, surrogate = kl_and_surrogate(policy, before, snapshot(policy), batch)
        _, surrogate_before = kl_and_surrogate(policy, before, before, batch)
        assert abs(surrogate_before) < 1e-12  # ratio 1, advantages normalised to mean 0
        assert 0 < kl <= max_kl * (1 + 1e-9)
        assert surrogate < surrogate_before
        # the step's reported numbers are those of the parameters it wrote
        assert metrics["kl"] == pytest.approx(kl, rel=1e-8)
        assert metrics["loss_after"] == pytest.approx(surrogate, rel=1e-8)
        assert metrics["loss_before"] == pytest.approx(surrogate_before, abs=1e-12)
        assert metrics["loss_after"] < metrics["loss_before"]
        # a step of the natural-gradient size: not vanishingly far inside the region
        assert kl >= max_kl * opt.ls_backtrack_ratio ** (2 * opt.ls_max_steps)
        assert kl >= max_kl * opt.ls_backtrack_ratio ** (2 * metrics["ls_steps"]) * 0.5
        backtracked += metrics["ls_steps"] > 1
    # a tiny trust region: the full step overshoots it by third-order terms on some seeds;
    # a large one: the quadratic model is poor and the line search always backtracks
    assert backtracked >= (3 if max_kl >= 1.0 else 1)


def test_trpo_step_computes_one_fisher_product_per_cg_iteration(monkeypatch):
    """The step length's ``x^T F x`` comes from CG's own products, not an extra one."""
    real, calls = outer.kl_hessian_product, []

    def counted(*args, **kwargs):
        product = real(*args, **kwargs)

        def count(v):
            calls.append(1)
            return product(v)

        return count

    monkeypatch.setattr(outer, "kl_hessian_product", counted)
    policy, batch = make_policy(0), make_batch(0)
    before = snapshot(policy)
    metrics = TRPO(policy, INNER, max_kl=1e-2, cg_iters=3).step(batch)
    assert len(calls) == 3
    assert metrics["accepted"] == 1.0
    kl, _ = kl_and_surrogate(policy, before, snapshot(policy), batch)
    assert 0 < kl <= 1e-2 * (1 + 1e-9)


@pytest.mark.parametrize("max_kl", [1e-3, 1e-2])
def test_trpo_first_order_fisher_keeps_the_trust_region_with_another_direction(max_kl):
    for seed in range(3):
        steps = {}
        for fisher in ("exact", "first_order"):
            policy = make_policy(seed)
            batch = make_batch(seed)
            before = snapshot(policy)
            metrics = TRPO(policy, INNER, max_kl=max_kl, fisher=fisher).step(batch)
            assert metrics["accepted"] == 1.0
            kl, surrogate = kl_and_surrogate(policy, before, snapshot(policy), batch)
            assert 0 < kl <= max_kl * (1 + 1e-9)  # the exact KL of the adapted policies
            assert surrogate < 0  # improved from 0 (ratio 1, normalised advantages)
            steps[fisher] = snapshot(policy)
        assert any(not torch.allclose(steps["exact"][k], steps["first_order"][k])
                   for k in steps["exact"])


@pytest.mark.parametrize("num_tasks, subsample, expected",
                         [(40, 1.0, 40), (40, 0.1, 4), (40, 0.11, 5), (20, 0.1, 2), (3, 0.01, 1),
                          (3, 0.5, 2)])
def test_fisher_task_count_is_the_rounded_up_fraction(num_tasks, subsample, expected):
    assert outer.fisher_task_count(num_tasks, subsample) == expected


@pytest.mark.parametrize("fisher", ["exact", "first_order"])
def test_subsampled_fisher_is_the_fisher_of_the_first_tasks(fisher):
    """The Fisher-vector product with ``fisher_subsample`` is the full one of the batch cut to its
    first ``ceil(subsample * N)`` tasks."""
    policy, batch = make_policy(2), make_batch(2)
    params = dict(policy.named_parameters())
    v = torch.randn(sum(p.numel() for p in params.values()), dtype=F64,
                    generator=torch.Generator().manual_seed(0))

    def fvp(trpo: TRPO, b: MetaBatch) -> torch.Tensor:
        new = outer.adapted_dist(policy, params, b, INNER, create_graph=True)
        reuse = trpo._fisher_reuses_graph(b)
        return trpo._fisher_product(b, new if reuse else None, outer._detach_dist(new))(v)

    sub = fvp(TRPO(policy, INNER, fisher=fisher, fisher_subsample=0.5), batch)  # 2 of 3 tasks
    full_of_first = fvp(TRPO(policy, INNER, fisher=fisher), batch.first_tasks(2))
    full = fvp(TRPO(policy, INNER, fisher=fisher), batch)
    torch.testing.assert_close(sub, full_of_first)
    assert not torch.allclose(sub, full)


def textbook_fisher_product(policy, params, batch: MetaBatch, inner: InnerLoop, v):
    """``d/dtheta (dKL/dtheta . v)``: the Hessian-vector product by double backward, third
    derivatives of the inner loss included (the reference for the Gauss-Newton form)."""
    new = outer.adapted_dist(policy, params, batch, inner, create_graph=True)
    kl = outer.mean_kl(policy, outer._detach_dist(new), new, batch.valid).mean()
    grad = outer.flat(torch.autograd.grad(kl, list(params.values()), create_graph=True))
    return outer.flat(torch.autograd.grad(grad @ v, list(params.values())))


def categorical_batch(seed: int, steps: int, k: int = 4) -> MetaBatch:
    """Episodes with integer actions in ``[0, k)`` for a categorical policy."""
    def episodes(s: int) -> Episodes:
        e = make_episodes(s)
        g = torch.Generator().manual_seed(s)
        return dataclasses.replace(e, actions=torch.randint(0, k, (N, T, E), generator=g).to(F64))
    return MetaBatch(train=[episodes(1000 + seed + i) for i in range(steps)],
                     valid=episodes(2000 + seed))


@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
@pytest.mark.parametrize("step_sizes", [(), (0.1,), (0.1, 0.05)], ids=["0", "1", "2"])
def test_gauss_newton_fisher_product_equals_the_kl_hessian(kind, step_sizes):
    """``J^T H_z J v`` equals the exact Hessian of the mean KL through 0, 1 and 2 inner steps."""
    from agents.policies import CategoricalMLPPolicy

    inner = InnerLoop(step_sizes=step_sizes)
    if kind == "gaussian":
        policy = make_policy(4)
        batch = MetaBatch(train=[make_episodes(1000 + i) for i in range(len(step_sizes))],
                          valid=make_episodes(2000))
    else:
        torch.manual_seed(4)
        policy = CategoricalMLPPolicy(D, 4, hidden_sizes=(8,), activation="tanh").to(F64)
        batch = categorical_batch(4, len(step_sizes))
    params = dict(policy.named_parameters())
    new = outer.adapted_dist(policy, params, batch, inner, create_graph=True)
    product = outer.kl_hessian_product(policy, list(params.values()), outer._detach_dist(new),
                                       new, batch.valid)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        v = torch.randn(sum(p.numel() for p in params.values()), dtype=F64, generator=g)
        expected = textbook_fisher_product(policy, params, batch, inner, v)
        torch.testing.assert_close(product(v), expected, rtol=1e-9, atol=1e-12)
        assert float(expected.norm()) > 1e-3  # not trivially zero


def test_gauss_newton_fisher_product_refuses_a_kl_that_is_not_stationary():
    """Normalised log-probabilities as distribution parameters: ``dKL/dz != 0`` at ``z == old``,
    where ``J^T H_z J`` is not the Hessian; a clear error rather than a wrong metric."""
    from agents.policies import CategoricalMLPPolicy

    class LogProbPolicy(CategoricalMLPPolicy):
        def forward(self, obs):
            return (torch.log_softmax(self.logits(obs), -1),)

        @staticmethod
        def kl(p, q):
            return (p[0].exp() * (p[0] - q[0])).sum(-1)

    torch.manual_seed(0)
    policy = LogProbPolicy(D, 4, hidden_sizes=(8,)).to(F64)
    batch = categorical_batch(0, 1)
    params = dict(policy.named_parameters())
    new = outer.adapted_dist(policy, params, batch, INNER, create_graph=True)
    with pytest.raises(ValueError, match="non-zero gradient"):
        outer.kl_hessian_product(policy, list(params.values()), outer._detach_dist(new), new,
                                 batch.valid)


@pytest.mark.parametrize("subsample", [1.0, 0.34])
def test_trpo_step_is_the_same_with_batched_and_looped_inner_loops(subsample):
    """``adapted_dist`` evaluates the adapted policies in the inner loop's form; the step the
    optimizer takes does not depend on it."""
    steps = {}
    for batching in ("batched", "loop"):
        policy, batch = make_policy(5), make_batch(5)
        inner = InnerLoop(step_sizes=(0.1,), batching=batching)
        metrics = TRPO(policy, inner, max_kl=1e-2, fisher_subsample=subsample).step(batch)
        assert metrics["accepted"] == 1.0
        steps[batching] = (snapshot(policy), metrics)
    (a, ma), (b, mb) = steps["batched"], steps["loop"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-9, atol=1e-12)
    assert ma["ls_steps"] == mb["ls_steps"]
    assert ma["kl"] == pytest.approx(mb["kl"], rel=1e-9)


def test_trpo_subsampled_fisher_keeps_the_trust_region():
    """Only the step direction changes: the line search checks the exact KL on every task."""
    for seed in range(3):
        steps = {}
        for subsample in (1.0, 0.34):  # 3 tasks, then 2 of 3
            policy, batch = make_policy(seed), make_batch(seed)
            before = snapshot(policy)
            metrics = TRPO(policy, INNER, max_kl=1e-2, fisher_subsample=subsample).step(batch)
            assert metrics["accepted"] == 1.0
            kl, surrogate = kl_and_surrogate(policy, before, snapshot(policy), batch)
            assert 0 < kl <= 1e-2 * (1 + 1e-9)
            assert surrogate < 0
            steps[subsample] = snapshot(policy)
        assert any(not torch.allclose(steps[1.0][k], steps[0.34][k]) for k in steps[1.0])


@pytest.mark.parametrize("fisher", ["exact", "first_order"])
@pytest.mark.parametrize("inner", [InnerLoop(step_sizes=()), InnerLoop((0.1,), first_order=True)],
                         ids=["zero-steps", "fomaml"])
def test_trpo_subsampled_fisher_with_zero_steps_and_first_order_inner_loop(fisher, inner):
    """The pretrained baseline (no inner step) and FOMAML take subsampled-Fisher steps too."""
    policy, batch = make_policy(3), make_batch(3)
    if not inner.num_steps:
        batch = MetaBatch(train=[], valid=batch.valid)
    before = snapshot(policy)
    metrics = TRPO(policy, inner, max_kl=1e-2, fisher=fisher, fisher_subsample=0.34).step(batch)
    assert metrics["accepted"] == 1.0 and 0 < metrics["kl"] <= 1e-2 * (1 + 1e-9)
    assert changed(policy, before)


@pytest.mark.parametrize("subsample", [0.0, -0.1, 1.01])
def test_trpo_rejects_a_fisher_subsample_outside_0_1(subsample):
    with pytest.raises(ValueError, match="fisher_subsample"):
        TRPO(make_policy(0), INNER, fisher_subsample=subsample)


def test_trpo_unknown_fisher_raises():
    with pytest.raises(ValueError, match="fisher"):
        TRPO(make_policy(0), INNER, fisher="diagonal")


def test_trpo_rejected_line_search_leaves_parameters_unchanged(monkeypatch):
    policy = make_policy(1)
    batch = make_batch(1)
    before = snapshot(policy)
    real = outer.surrogate_loss
    calls = []

    def never_better(policy, new, old, valid):  # every candidate looks worse than before
        calls.append(1)
        loss = real(policy, new, old, valid)
        return loss if len(calls) == 1 else loss.detach() + 1.0

    monkeypatch.setattr(outer, "surrogate_loss", never_better)
    opt = TRPO(policy, INNER, max_kl=0.01, ls_max_steps=6)
    metrics = opt.step(batch)
    # the gradient's, then 6 trials of up to N one-task chunks (a trial stops at a broken KL)
    assert 1 + 6 <= len(calls) <= 1 + 6 * N
    assert metrics["accepted"] == 0.0 and metrics["ls_steps"] == 6.0 and metrics["kl"] == 0.0
    assert metrics["loss_after"] == metrics["loss_before"]
    for k, v in policy.named_parameters():
        assert torch.equal(v.detach(), before[k]), k


def test_trpo_rejects_candidates_outside_the_trust_region(monkeypatch):
    policy = make_policy(2)
    before = snapshot(policy)
    real = outer.mean_kl
    calls = []

    def huge_kl(policy, old, new, episodes):  # the Fisher's KL is real, every candidate's huge
        calls.append(1)
        kl = real(policy, old, new, episodes)
        return kl if len(calls) == 1 else kl.detach() + 1.0

    monkeypatch.setattr(outer, "mean_kl", huge_kl)
    metrics = TRPO(policy, INNER, max_kl=0.01, ls_max_steps=4).step(make_batch(2))
    assert metrics["accepted"] == 0.0 and not changed(policy, before)


def old_and_candidate(policy, batch: MetaBatch, inner: InnerLoop, seed: int, scale: float):
    """The adapted policies at the policy's parameters (``old``) and a random candidate near
    them, as a line-search trial sees them."""
    params = dict(policy.named_parameters())
    old = outer._detach_dist(outer.adapted_dist(policy, params, batch, inner, create_graph=False))
    g = torch.Generator().manual_seed(seed)
    candidate = {k: v.detach() + scale * torch.randn(v.shape, generator=g, dtype=F64)
                 for k, v in params.items()}
    return old, candidate


def test_line_search_trial_equals_the_full_evaluation_and_stops_early_past_the_bound(monkeypatch):
    """A trial's surrogate and KL are those of all tasks at once; once the tasks seen so far
    hold more than ``N * max_kl`` of KL, the remaining tasks are not even adapted."""
    policy, batch = make_policy(6), make_batch(6)
    old, candidate = old_and_candidate(policy, batch, INNER, seed=0, scale=0.05)
    full = outer._detach_dist(
        outer.adapted_dist(policy, candidate, batch, INNER, create_graph=False))
    loss = outer.surrogate_loss(policy, full, old, batch.valid).mean()
    kl = outer.mean_kl(policy, old, full, batch.valid).mean()
    assert kl > 0
    got = outer.candidate_loss_and_kl(policy, candidate, batch, INNER, old, max_kl=10 * float(kl))
    assert not got.rejected_early
    torch.testing.assert_close(got.loss, loss, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(got.kl, kl, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(got.task_kl.mean(), kl, rtol=1e-12, atol=1e-15)

    first = float(outer.mean_kl(policy, tuple(d[:1] for d in old), tuple(d[:1] for d in full),
                                batch.task_range(0, 1).valid)[0].detach())
    real, adapted = outer.adapted_dist, []
    monkeypatch.setattr(outer, "adapted_dist", lambda *a, **k: adapted.append(1) or real(*a, **k))
    bound = 0.99 * first / N  # the first task alone already breaks it
    trial = outer.candidate_loss_and_kl(policy, candidate, batch, INNER, old, bound)
    assert trial.rejected_early and trial.loss is None and trial.kl is None
    assert len(adapted) == 1  # one chunk (one task of N = 3) adapted, not all
    assert float(trial.task_kl[0]) == pytest.approx(first, rel=1e-12)
    assert torch.isnan(trial.task_kl[1:]).all()  # the tasks not evaluated
    assert kl > bound  # the full evaluation rejects it too


def cat_batches(batches: list[MetaBatch]) -> MetaBatch:
    """The batches' tasks one after the other: ``[sum of N, T, E, ...]``."""
    def cat(parts: list[Episodes]) -> Episodes:
        fields = [f.name for f in dataclasses.fields(Episodes)]
        return Episodes(**{k: None if getattr(parts[0], k) is None
                           else torch.cat([getattr(p, k) for p in parts]) for k in fields})

    return MetaBatch([cat([b.train[0] for b in batches])], cat([b.valid for b in batches]))


def test_select_tasks_picks_the_tasks_in_the_order_given():
    batch = make_batch(0)
    assert batch.select_tasks([0, 1, 2]) is batch
    for tasks in ([2, 0], [1, 2], [1]):
        part = batch.select_tasks(tasks)
        assert part.num_tasks == len(tasks)
        assert torch.equal(part.valid.observations, batch.valid.observations[tasks])
        assert torch.equal(part.train[0].advantages, batch.train[0].advantages[tasks])
    for bad in ([], [-1], [0, 3]):
        with pytest.raises(ValueError, match="indices"):
            batch.select_tasks(bad)


@pytest.mark.parametrize("batching,chunks", [("loop", 8), ("batched", 8), ("batched", 2)])
def test_line_search_trial_is_the_same_in_any_task_order(batching, chunks, monkeypatch):
    """Evaluating the tasks in another order changes neither the numbers of a completed trial
    (the means are taken in task order; bit for bit with the per-task loop) nor which tasks'
    KL make an early rejection. With 2 chunks of the 3 tasks, the vmap-ed form evaluates the
    chunk (task 2, task 0) first: tasks gathered out of order."""
    monkeypatch.setattr(outer, "LINE_SEARCH_CHUNKS", chunks)
    inner = dataclasses.replace(INNER, batching=batching)
    policy, batch = make_policy(7), make_batch(7)
    old, candidate = old_and_candidate(policy, batch, inner, seed=1, scale=0.05)
    ahead = outer.candidate_loss_and_kl(policy, candidate, batch, inner, old, max_kl=1e9)
    turned = outer.candidate_loss_and_kl(policy, candidate, batch, inner, old, max_kl=1e9,
                                         order=[2, 0, 1])
    if batching == "loop":
        assert torch.equal(ahead.loss, turned.loss) and torch.equal(ahead.kl, turned.kl)
        assert torch.equal(ahead.task_kl, turned.task_kl)
    else:
        torch.testing.assert_close(turned.loss, ahead.loss, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(turned.task_kl, ahead.task_kl, rtol=1e-12, atol=1e-15)
    # the last task alone breaks a bound set just under its own share: first in order, its
    # chunk is the only one evaluated
    bound = 0.99 * float(ahead.task_kl[2]) / N
    trial = outer.candidate_loss_and_kl(policy, candidate, batch, inner, old, bound,
                                        order=[2, 0, 1])
    assert trial.rejected_early
    evaluated = [2] if chunks == 8 else [2, 0]
    assert (~torch.isnan(trial.task_kl)).nonzero().flatten().tolist() == sorted(evaluated)
    torch.testing.assert_close(trial.task_kl[evaluated], ahead.task_kl[evaluated],
                               rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="permutation"):
        outer.candidate_loss_and_kl(policy, candidate, batch, inner, old, 1.0, order=[0, 0, 1])


def test_line_search_trial_takes_its_means_in_task_order():
    """On 12 tasks, in an order whose sums round differently from task order, a completed
    trial still gives the task-order means bit for bit (per-task loop)."""
    inner = dataclasses.replace(INNER, batching="loop")
    policy, batch = make_policy(5), cat_batches([make_batch(s) for s in range(4)])
    n = batch.num_tasks
    old, candidate = old_and_candidate(policy, batch, inner, seed=2, scale=0.1)
    g = torch.Generator().manual_seed(3)
    ahead = outer.candidate_loss_and_kl(policy, candidate, batch, inner, old, max_kl=1e9)
    orders = [torch.randperm(n, generator=g).tolist() for _ in range(50)]
    rounds = [o for o in orders if not torch.equal(ahead.task_kl[o].sum(), ahead.task_kl.sum())]
    assert rounds  # some order does sum to other bits
    got = outer.candidate_loss_and_kl(policy, candidate, batch, inner, old, max_kl=1e9,
                                      order=rounds[0])
    assert torch.equal(got.kl, ahead.kl) and torch.equal(got.loss, ahead.loss)


def test_evaluation_order_puts_the_largest_known_kl_first():
    nan = float("nan")
    assert outer.evaluation_order(torch.full((4,), nan)) == [0, 1, 2, 3]
    assert outer.evaluation_order(torch.tensor([0.1, 0.3, 0.2, 0.3])) == [1, 3, 2, 0]
    # unknown tasks stand at the mean of the known ones (0.2 here): after 0.3, before 0.1
    assert outer.evaluation_order(torch.tensor([0.1, nan, 0.3, nan])) == [2, 1, 3, 0]


def test_trpo_line_search_orders_the_tasks_by_their_kl_in_the_trials_before(monkeypatch):
    """Each trial after the first evaluates the tasks in the order of their latest measured KL
    (at the full step's scale). With the largest-KL task last, rejected trials then adapt fewer
    tasks than in task order, and the step taken is bit for bit the one of evaluating them in
    task order."""
    inner = dataclasses.replace(INNER, batching="loop")
    real_cg = outer.conjugate_gradient_and_product
    # x^T F x read 10x too small: a first trial about 3x too long, about 10x the KL bound, so
    # the line search needs several trials
    monkeypatch.setattr(outer, "conjugate_gradient_and_product",
                        lambda *a: (lambda x, fx: (x, 0.1 * fx))(*real_cg(*a)))
    real_trial, real_adapt = outer.candidate_loss_and_kl, outer.adapted_dist
    calls, adapted = [], []

    def recorded(*args, **kwargs):
        trial = real_trial(*args, **kwargs)
        calls.append((list(kwargs["order"]), trial.task_kl.clone()))
        return trial

    monkeypatch.setattr(outer, "candidate_loss_and_kl", recorded)
    monkeypatch.setattr(outer, "adapted_dist",
                        lambda *a, **k: adapted.append(a[2].num_tasks) or real_adapt(*a, **k))

    def step(batch: MetaBatch, ordered: bool) -> tuple[dict, dict, int]:
        calls.clear(), adapted.clear()
        with monkeypatch.context() as m:
            if not ordered:
                m.setattr(outer, "evaluation_order", lambda kl: list(range(kl.numel())))
            policy = make_policy(3)
            metrics = TRPO(policy, inner, max_kl=1e-4, ls_max_steps=15,
                           ls_backtrack_ratio=0.8).step(batch)
        return metrics, snapshot(policy), sum(adapted)

    batch = make_batch(3)
    far = batch.valid.observations.clone()
    far[2] *= 30  # the last task's states far out: its policy, and its KL, move the most
    batch = MetaBatch(batch.train, dataclasses.replace(batch.valid, observations=far))
    in_task_order, params_in_task_order, cost_in_task_order = step(batch, ordered=False)
    metrics, params, cost = step(batch, ordered=True)
    assert metrics["accepted"] == 1.0 and metrics["ls_steps"] >= 3
    assert calls[0][0] == list(range(N))
    estimate = torch.full((N,), float("nan"), dtype=F64)
    for k, ((order, task_kl), (next_order, _)) in enumerate(zip(calls, calls[1:])):
        at_full_step = task_kl / 0.8 ** (2 * k)
        estimate = torch.where(torch.isnan(task_kl), estimate, at_full_step)
        assert next_order == outer.evaluation_order(estimate)
    assert calls[-1][0][0] == N - 1  # the largest KL first once it was measured
    assert cost < cost_in_task_order  # task-adaptations, gradient and Fisher included
    assert metrics == in_task_order
    for k in params:
        assert torch.equal(params[k], params_in_task_order[k])


def test_trpo_without_an_improving_direction_changes_nothing():
    # zero advantages: the surrogate is flat, the gradient zero, no step exists
    policy = make_policy(3)
    before = snapshot(policy)
    batch = make_batch(3)
    flat_valid = dataclasses.replace(batch.valid, advantages=torch.zeros_like(batch.valid.advantages))
    metrics = TRPO(policy, INNER).step(MetaBatch(train=batch.train, valid=flat_valid))
    assert metrics["accepted"] == 0.0 and metrics["grad_norm"] == 0.0
    assert not changed(policy, before)


@pytest.mark.parametrize("algo", ["trpo", "ppo", "adam"])
def test_non_finite_data_never_corrupts_the_parameters(algo):
    policy = make_policy(4)
    before = snapshot(policy)
    batch = make_batch(4)
    adv = batch.valid.advantages.clone()
    adv[0, 0, 0] = float("nan")
    bad = MetaBatch(train=batch.train, valid=dataclasses.replace(batch.valid, advantages=adv))
    metrics = make_outer(algo, policy, INNER).step(bad)
    assert metrics["accepted"] == 0.0
    assert not changed(policy, before)
    assert all(p.grad is None or torch.equal(p.grad, torch.zeros_like(p.grad))
               for p in policy.parameters())


# --- PPO and Adam -----------------------------------------------------------------------------------
@pytest.mark.parametrize("algo, kwargs", [
    ("ppo", {"lr": 1e-3, "epochs": 3}),
    ("ppo", {"lr": 1e-3, "epochs": 2, "inner_kl_coef": 0.5, "clip_eps": 0.1}),
    ("adam", {"lr": 1e-3}),
])
def test_first_order_optimizer_steps_change_parameters_and_report_finite_metrics(algo, kwargs):
    for seed in range(2):
        policy = make_policy(seed)
        before = snapshot(policy)
        opt = make_outer(algo, policy, INNER, **kwargs)
        metrics = opt.step(make_batch(seed))
        assert {"loss_before", "loss_after", "kl", "accepted"} <= set(metrics)
        assert all(math.isfinite(v) for v in metrics.values())
        assert metrics["accepted"] == 1.0
        assert changed(policy, before)
        assert all(p.requires_grad for p in policy.parameters())
        # small Adam steps along the negative gradient decrease the loss
        assert metrics["loss_after"] < metrics["loss_before"]
        assert metrics["kl"] > 0


def test_adam_kl_metric_is_the_kl_between_adapted_policies():
    policy = make_policy(5)
    batch = make_batch(5)
    before = snapshot(policy)
    metrics = AdamOuter(policy, INNER, lr=1e-2).step(batch)
    kl, _ = kl_and_surrogate(policy, before, snapshot(policy), batch)
    assert metrics["kl"] == pytest.approx(kl, rel=1e-8)


# --- factory and state ------------------------------------------------------------------------------
def test_make_outer():
    policy = make_policy()
    trpo = make_outer("trpo", policy, INNER, max_kl=0.05, cg_iters=7)
    assert isinstance(trpo, TRPO) and trpo.max_kl == 0.05 and trpo.cg_iters == 7
    assert isinstance(make_outer("ppo", policy, INNER, epochs=2), PPO)
    adam = make_outer("adam", policy, INNER, lr=0.5)
    assert isinstance(adam, AdamOuter) and isinstance(adam, OuterOptimizer)
    assert adam.optimizer.param_groups[0]["lr"] == 0.5
    assert adam.inner is INNER and adam.policy is policy
    # the optimizer owns the module's own parameter tensors
    assert all(adam.params[k] is v for k, v in policy.named_parameters())
    with pytest.raises(ValueError, match="unknown outer algorithm"):
        make_outer("sgd", policy, INNER)
    with pytest.raises(ValueError, match="unknown outer algorithm"):
        make_outer("TRPO", policy, INNER)


@pytest.mark.parametrize("algo, kwargs", [("ppo", {"epochs": 2, "lr": 1e-2}),
                                          ("adam", {"lr": 1e-2})])
def test_state_dict_round_trip(algo, kwargs):
    policy = make_policy(6)
    opt = make_outer(algo, policy, INNER, **kwargs)
    opt.step(make_batch(6))
    state = copy.deepcopy(opt.state_dict())
    assert state["state"]  # Adam moments exist after a step

    restored_policy = copy.deepcopy(policy)
    restored = make_outer(algo, restored_policy, INNER, **kwargs)
    restored.load_state_dict(state)
    fresh_policy = copy.deepcopy(policy)
    fresh = make_outer(algo, fresh_policy, INNER, **kwargs)

    batch = make_batch(7)
    opt.step(batch)
    restored.step(batch)
    fresh.step(batch)
    for (k, p), q, r in zip(policy.named_parameters(), restored_policy.parameters(),
                            fresh_policy.parameters()):
        assert torch.equal(p, q), k
    # without the state the step differs (so the round trip is what made them equal)
    assert any(not torch.equal(p, r) for p, r in zip(policy.parameters(),
                                                     fresh_policy.parameters()))


def test_trpo_state_dict_is_empty_and_loads():
    opt = TRPO(make_policy(), INNER)
    assert opt.state_dict() == {}
    opt.load_state_dict({})
