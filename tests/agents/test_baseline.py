"""Tests of agents/baseline.py, the linear feature baseline of Duan et al. 2016 (rllab)."""

from __future__ import annotations

import pytest
import torch

from agents import baseline as B
from agents.baseline import LinearFeatureBaseline, feature_dim, features, fit, fit_predict, predict

DTYPES = [torch.float32, torch.float64]
NAN = float("nan")


def _episodes(seed: int, shape: tuple[int, ...], obs_dim: int, dtype: torch.dtype = torch.float64):
    """Random obs ``[..., T, E, D]`` and a prefix mask ``[..., T, E]`` with early terminations."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(*shape, obs_dim, generator=g, dtype=dtype)
    num_steps = shape[-2]
    lengths = torch.randint(num_steps // 2, num_steps + 1, shape[:-2] + shape[-1:], generator=g)
    mask = (torch.arange(num_steps).reshape(num_steps, 1) < lengths.unsqueeze(-2)).to(dtype)
    return obs, mask


def _masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    return (((pred - target) * mask).square().sum() / mask.sum()).item()


# --- features ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_features_hand_computed(dtype):
    # T = 3, E = 1, D = 1; the third step is padding. Row t: [clip(o), clip(o)^2, s, s^2, s^3, 1],
    # s = t / 100. t = 0: o = -20 -> clipped -10, squared 100. t = 1: o = 0.5, 0.25, s = 0.01.
    obs = torch.tensor([[[-20.0]], [[0.5]], [[3.0]]], dtype=dtype)
    mask = torch.tensor([[1.0], [1.0], [0.0]], dtype=dtype)
    expected = torch.tensor(
        [
            [[-10.0, 100.0, 0.0, 0.0, 0.0, 1.0]],
            [[0.5, 0.25, 0.01, 0.0001, 0.000001, 1.0]],
            [[0.0, 0.0, 0.0, 0.0, 0.0, 0.0]],
        ],
        dtype=dtype,
    )
    out = features(obs, mask)
    assert out.dtype == dtype and out.shape == (3, 1, feature_dim(1))
    torch.testing.assert_close(out, expected)


def test_features_batched_shape_and_nan_padding():
    obs, mask = _episodes(0, (2, 5, 3), obs_dim=4)  # [N, T, E, D]
    mask[:, 4, :] = 0.0
    obs[:, 4] = NAN
    out = features(obs, mask)
    assert out.shape == (2, 5, 3, 2 * 4 + 4)
    assert torch.isfinite(out).all() and (out[:, 4] == 0).all()
    torch.testing.assert_close(out[1], features(obs[1], mask[1]))


# --- fit / predict -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_fit_recovers_a_target_linear_in_the_features(dtype):
    # T = 100 so that s = t/100 spans [0, 1) and the s, s^2, s^3 columns are well conditioned.
    obs, mask = _episodes(1, (100, 4), obs_dim=3, dtype=dtype)
    g = torch.Generator().manual_seed(2)
    true_weights = torch.randn(feature_dim(3), generator=g, dtype=dtype)
    target = (features(obs, mask) * true_weights).sum(-1)  # [T, E], 0 on padding
    weights = fit(obs, target, mask, reg=1e-12)
    assert weights.shape == (feature_dim(3),) and weights.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 1e-8
    torch.testing.assert_close(weights, true_weights, rtol=0, atol=tol)
    assert _masked_mse(predict(weights, obs, mask), target, mask) < tol**2
    # With the default ridge the residual is still ~0 relative to the target's spread.
    values = fit_predict(obs, target, mask)
    spread = _masked_mse(torch.zeros_like(target), target, mask)
    assert _masked_mse(values, target, mask) < 1e-6 * spread


def test_fit_beats_a_constant_predictor_on_a_nonlinear_target():
    obs, mask = _episodes(3, (30, 6), obs_dim=2)
    target = torch.sin(2.0 * obs[..., 0]) + obs[..., 1].abs() * obs[..., 0]  # not in feature span
    values = fit_predict(obs, target, mask)
    constant = (target * mask).sum() / mask.sum()
    assert _masked_mse(values, target, mask) < 0.6 * _masked_mse(constant, target, mask)


def test_padding_does_not_change_the_fit():
    obs, mask = _episodes(4, (12, 4), obs_dim=3)
    target = torch.randn(12, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    weights = fit(obs, target, mask)
    # Append 5 padded steps and 2 padded (empty) episodes holding junk: NaN, huge, arbitrary.
    padded_obs = torch.full((17, 6, 3), 1e6, dtype=torch.float64)
    padded_obs[12:, :4] = NAN
    padded_obs[:12, :4] = obs
    padded_target = torch.full((17, 6), NAN, dtype=torch.float64)
    padded_target[:12, :4] = torch.where(mask > 0, target, torch.tensor(123.0, dtype=torch.float64))
    padded_mask = torch.zeros(17, 6, dtype=torch.float64)
    padded_mask[:12, :4] = mask
    padded_weights = fit(padded_obs, padded_target, padded_mask)
    torch.testing.assert_close(padded_weights, weights, rtol=1e-9, atol=1e-10)
    values = predict(padded_weights, padded_obs, padded_mask)
    assert torch.isfinite(values).all() and (values[padded_mask == 0] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_fit_equals_per_task_loop(dtype):
    obs, mask = _episodes(6, (3, 10, 4), obs_dim=2, dtype=dtype)  # [N, T, E, D]
    scale = torch.tensor([1.0, -5.0, 20.0], dtype=dtype)[:, None, None]
    target = scale * (obs[..., 0] + obs[..., 1].square())
    weights = fit(obs, target, mask)
    assert weights.shape == (3, feature_dim(2))
    looped = torch.stack([fit(obs[i], target[i], mask[i]) for i in range(3)])
    torch.testing.assert_close(weights, looped)
    values = fit_predict(obs, target, mask)
    looped_values = torch.stack([fit_predict(obs[i], target[i], mask[i]) for i in range(3)])
    assert values.shape == (3, 10, 4)
    torch.testing.assert_close(values, looped_values)
    # Tasks are fitted separately: the three weight vectors differ.
    assert (weights[0] - weights[2]).abs().max() > 1.0


def _robustness_case(case: str, dtype: torch.dtype):
    obs, mask = _episodes(7, (8, 3), obs_dim=2, dtype=dtype)
    returns = torch.randn(8, 3, generator=torch.Generator().manual_seed(8), dtype=dtype)
    if case == "all_zero_obs":
        obs.zero_()
    elif case == "single_valid_step":
        mask.zero_()
        mask[0, 1] = 1.0
    elif case == "constant_returns":
        returns.fill_(2.5)
    elif case == "identical_episodes":
        obs[:] = obs[:, :1]
        mask[:] = mask[:, :1]
        returns[:] = returns[:, :1]
    elif case == "one_episode":
        obs, mask, returns = obs[:, :1], mask[:, :1], returns[:, :1]
    elif case == "huge_obs":
        obs = obs * 1e6
    elif case == "huge_returns":
        returns = returns * 1e30
    elif case == "no_valid_step":
        mask.zero_()
    return obs, returns, mask


ROBUSTNESS_CASES = [
    "all_zero_obs",
    "single_valid_step",
    "constant_returns",
    "identical_episodes",
    "one_episode",
    "huge_obs",
    "huge_returns",
    "no_valid_step",
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ROBUSTNESS_CASES)
def test_fit_predict_never_nan(case, dtype):
    obs, returns, mask = _robustness_case(case, dtype)
    weights = fit(obs, returns, mask)
    values = predict(weights, obs, mask)
    assert torch.isfinite(weights).all() and torch.isfinite(values).all()
    assert values.dtype == dtype and (values[mask == 0] == 0).all()
    valid = mask > 0
    if case in ("single_valid_step", "constant_returns"):
        # Both lie in the feature span (the constant feature): ridge least squares fits them.
        torch.testing.assert_close(values[valid], returns[valid], rtol=1e-3, atol=1e-3)
    if case == "no_valid_step":
        assert (weights == 0).all()


def test_batched_robustness_cases_do_not_disturb_each_other():
    cases = ("constant_returns", "all_zero_obs", "huge_obs")
    tasks = [_robustness_case(case, torch.float64) for case in cases]
    obs, returns, mask = (torch.stack(parts) for parts in zip(*tasks))
    weights = fit(obs, returns, mask)
    torch.testing.assert_close(weights, torch.stack([fit(*task) for task in tasks]))


def test_non_finite_returns_on_a_valid_step_fall_back_to_zero_weights_for_that_task_only():
    obs, mask = _episodes(9, (2, 6, 3), obs_dim=2)
    returns = obs[..., 0] * 2.0
    returns[0, 0, 0] = NAN
    weights = fit(obs, returns, mask)
    assert (weights[0] == 0).all()
    torch.testing.assert_close(weights[1], fit(obs[1], returns[1], mask[1]))


def test_non_finite_solution_is_retried_with_ten_times_the_ridge(monkeypatch):
    obs, mask = _episodes(10, (2, 6, 3), obs_dim=2)  # [N = 2, ...]
    returns = obs[..., 1] + 1.0
    num_features = feature_dim(2)
    real_solve = B.ridge_solve
    ridges = []

    def flaky_solve(gram, moment, reg):
        ridges.append(reg)
        solution = real_solve(gram, moment, reg)
        if len(ridges) == 1:  # the first fit of task 0 comes back non-finite
            solution[0, 0] = NAN
        return solution

    monkeypatch.setattr(B, "ridge_solve", flaky_solve)
    weights = fit(obs, returns, mask, reg=1e-4)
    monkeypatch.undo()
    assert ridges == pytest.approx([1e-4, 1e-3])
    torch.testing.assert_close(weights[0], fit(obs[0], returns[0], mask[0], reg=1e-3))
    torch.testing.assert_close(weights[1], fit(obs[1], returns[1], mask[1], reg=1e-4))
    assert weights.shape == (2, num_features)


def test_always_non_finite_solution_falls_back_to_zeros_after_max_tries(monkeypatch):
    obs, mask = _episodes(11, (6, 3), obs_dim=2)
    calls = []

    def broken_solve(gram, moment, reg):
        calls.append(reg)
        return torch.full_like(moment, NAN)

    monkeypatch.setattr(B, "ridge_solve", broken_solve)
    weights = fit(obs, obs[..., 0], mask, max_tries=4)
    assert len(calls) == 4 and (weights == 0).all()


def test_a_failed_cholesky_gives_nan_for_that_task_only():
    gram = torch.stack([torch.eye(3, dtype=torch.float64), -torch.eye(3, dtype=torch.float64)])
    moment = torch.ones(2, 3, dtype=torch.float64)
    solution = B.ridge_solve(gram, moment, reg=1e-5)
    torch.testing.assert_close(solution[0], torch.full((3,), 1 / (1 + 1e-5), dtype=torch.float64))
    assert torch.isnan(solution[1]).all()


@pytest.mark.parametrize("obs_dim", [2, 27])
def test_fit_and_predict_equal_the_reference_least_squares(obs_dim):
    """The normal equations over the valid rows solve the ridge problem that least squares on the
    augmented design ``[Phi; sqrt(reg) I] w = [R; 0]`` solves, and ``predict`` is ``Phi w``."""
    obs, mask = _episodes(12, (3, 40, 5), obs_dim=obs_dim)
    obs = obs * 4.0  # some observations beyond the clip
    returns = torch.randn(3, 40, 5, generator=torch.Generator().manual_seed(13),
                          dtype=torch.float64) * 30.0
    reg = 1e-3
    weights = fit(obs, returns, mask, reg=reg)
    phi = features(obs, mask).flatten(-3, -2)  # [N, T*E, F]
    f = phi.shape[-1]
    design = torch.cat([phi, reg**0.5 * torch.eye(f, dtype=phi.dtype).expand(3, f, f)], dim=-2)
    target = torch.cat([torch.where(mask > 0, returns, 0.0).flatten(-2),
                        torch.zeros(3, f, dtype=phi.dtype)], dim=-1)
    reference = torch.linalg.lstsq(design, target.unsqueeze(-1)).solution.squeeze(-1)
    torch.testing.assert_close(weights, reference, rtol=1e-6, atol=1e-6)
    values = predict(weights, obs, mask)
    torch.testing.assert_close(values, (features(obs, mask) * weights[:, None, None]).sum(-1))


def test_baseline_carries_no_gradient():
    obs, mask = _episodes(12, (6, 3), obs_dim=2)
    obs.requires_grad_(True)
    returns = (obs[..., 0] * 3.0).detach().requires_grad_(True)
    values = fit_predict(obs, returns, mask)
    assert not values.requires_grad
    weights = fit(obs, returns, mask).requires_grad_(True)
    assert not predict(weights, obs, mask).requires_grad


# --- the class -----------------------------------------------------------------------------------
def test_class_uses_its_ridge_and_matches_the_functions():
    obs, mask = _episodes(13, (2, 8, 3), obs_dim=2)
    returns = obs[..., 0] - obs[..., 1]
    default = LinearFeatureBaseline()
    strong = LinearFeatureBaseline(reg=100.0)
    torch.testing.assert_close(
        default.fit_predict(obs, returns, mask), fit_predict(obs, returns, mask)
    )
    torch.testing.assert_close(strong.fit(obs, returns, mask), fit(obs, returns, mask, reg=100.0))
    torch.testing.assert_close(
        default.fit(obs, returns, mask, reg=100.0), strong.fit(obs, returns, mask)
    )
    # A large ridge shrinks the weights.
    assert strong.fit(obs, returns, mask).norm() < 0.5 * default.fit(obs, returns, mask).norm()
    weights = default.fit(obs, returns, mask)
    torch.testing.assert_close(default.predict(weights, obs, mask), predict(weights, obs, mask))
    assert default.features(obs, mask).shape[-1] == LinearFeatureBaseline.feature_dim(2) == 8
    assert B.DEFAULT_REG == default.reg == 1e-5


def test_rejects_bad_arguments():
    obs, mask = _episodes(14, (5, 2), obs_dim=3)
    returns = torch.zeros(5, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="mask"):
        features(obs, mask[:4])
    with pytest.raises(ValueError, match=r"\[\.\.\., T, E, D\]"):
        features(obs[0, 0], mask[0, 0])
    with pytest.raises(ValueError, match="returns"):
        fit(obs, returns[:4], mask)
    with pytest.raises(ValueError, match="reg"):
        fit(obs, returns, mask, reg=0.0)
    with pytest.raises(ValueError, match="max_tries"):
        fit(obs, returns, mask, max_tries=0)
    with pytest.raises(ValueError, match="F=10"):
        predict(torch.zeros(9), obs, mask)
    with pytest.raises(ValueError, match="leading dims"):
        predict(torch.zeros(2, 10), obs, mask)
    with pytest.raises(ValueError, match="reg"):
        LinearFeatureBaseline(reg=-1.0)
