"""Tests of meta/returns.py: hand-computed fixtures, special cases, batching, dtypes, padding."""

from __future__ import annotations

import math

import pytest
import torch

from meta.returns import discounted_returns, gae_advantages, normalize_advantages, weighted_mean

DTYPES = [torch.float32, torch.float64]
NAN = float("nan")


def _random_batch(seed: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float64):
    """Random rewards/values ``[..., T, E]`` and a prefix mask with early terminations."""
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(shape, generator=g, dtype=dtype)
    values = torch.randn(shape, generator=g, dtype=dtype)
    num_steps = shape[-2]
    lengths = torch.randint(1, num_steps + 1, shape[:-2] + shape[-1:], generator=g)  # [..., E]
    t = torch.arange(num_steps).reshape(num_steps, 1)
    mask = (t < lengths.unsqueeze(-2)).to(dtype)  # [..., T, E]
    return rewards, values, mask


# --- discounted_returns --------------------------------------------------------------------------
# Column 0 runs the full T = 4 steps, column 1 ends after 2 steps (its padding holds junk).
REWARDS = [[1.0, 1.0], [2.0, 1.0], [3.0, 5.0], [4.0, 7.0]]
MASK = [[1.0, 1.0], [1.0, 1.0], [1.0, 0.0], [1.0, 0.0]]


@pytest.mark.parametrize("dtype", DTYPES)
def test_discounted_returns_hand_computed(dtype):
    # gamma = 0.5, column 0: R3 = 4, R2 = 3 + 0.5*4 = 5, R1 = 2 + 0.5*5 = 4.5,
    #                        R0 = 1 + 0.5*4.5 = 3.25
    #               column 1: R1 = 1, R0 = 1 + 0.5*1 = 1.5, padding 0
    expected = torch.tensor([[3.25, 1.5], [4.5, 1.0], [5.0, 0.0], [4.0, 0.0]], dtype=dtype)
    rewards, mask = torch.tensor(REWARDS, dtype=dtype), torch.tensor(MASK, dtype=dtype)
    out = discounted_returns(rewards, mask, 0.5)
    assert out.dtype == dtype
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_discounted_returns_gamma_one_sums_and_gamma_zero_is_rewards():
    rewards, mask = torch.tensor(REWARDS), torch.tensor(MASK)
    # gamma = 1: reward-to-go, column 0: 1+2+3+4 = 10, 2+3+4 = 9, 3+4 = 7, 4; column 1: 1+1 = 2, 1
    expected = torch.tensor([[10.0, 2.0], [9.0, 1.0], [7.0, 0.0], [4.0, 0.0]])
    torch.testing.assert_close(discounted_returns(rewards, mask, 1.0), expected)
    torch.testing.assert_close(discounted_returns(rewards, mask, 0.0), rewards * mask)


def test_discounted_returns_ignores_nan_padding():
    rewards = torch.tensor(REWARDS)
    rewards[2:, 1] = NAN
    out = discounted_returns(rewards, torch.tensor(MASK), 0.5)
    assert torch.isfinite(out).all()
    assert out[0, 1] == 1.5 and out[2, 1] == 0.0 and out[3, 1] == 0.0


def test_discounted_returns_batched_equals_per_task_loop():
    rewards, _, mask = _random_batch(0, (3, 6, 4))  # [N, T, E]
    batched = discounted_returns(rewards, mask, 0.9, time_axis=1)
    looped = torch.stack([discounted_returns(rewards[i], mask[i], 0.9) for i in range(3)])
    torch.testing.assert_close(batched, looped, rtol=0, atol=0)
    # Time-major with the task dim moved behind it is the same computation.
    time_major = discounted_returns(rewards.transpose(0, 1), mask.transpose(0, 1), 0.9)
    torch.testing.assert_close(time_major.transpose(0, 1), looped, rtol=0, atol=0)


def test_discounted_returns_matches_explicit_sum():
    rewards, _, mask = _random_batch(1, (7, 5))
    gamma = 0.8
    out = discounted_returns(rewards, mask, gamma)
    for e in range(5):
        length = int(mask[:, e].sum())
        for t in range(7):
            want = sum(gamma ** (k - t) * rewards[k, e].item() for k in range(t, length))
            assert out[t, e].item() == pytest.approx(want, abs=1e-12)


def test_discounted_returns_rejects_bad_arguments():
    rewards, mask = torch.tensor(REWARDS), torch.tensor(MASK)
    with pytest.raises(ValueError, match="same shape"):
        discounted_returns(rewards, mask[:3], 0.9)
    with pytest.raises(ValueError, match="gamma"):
        discounted_returns(rewards, mask, 1.5)
    with pytest.raises(ValueError, match="time_axis"):
        discounted_returns(rewards, mask, 0.9, time_axis=2)


# --- gae_advantages ------------------------------------------------------------------------------
# T = 3, E = 2; column 0 runs to the end, column 1 ends after 2 steps (junk in its padding).
GAE_REWARDS = [[1.0, 2.0], [2.0, 4.0], [3.0, 9.0]]
GAE_VALUES = [[1.0, 2.0], [1.0, 2.0], [2.0, 9.0]]
GAE_MASK = [[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]]


def _gae_fixture(dtype: torch.dtype = torch.float32):
    return tuple(torch.tensor(x, dtype=dtype) for x in (GAE_REWARDS, GAE_VALUES, GAE_MASK))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gae_hand_computed(dtype):
    # gamma = 0.5, lam = 0.5 (gamma*lam = 0.25); the value after the last valid step is 0.
    # column 0: d2 = 3 + 0.5*0 - 2 = 1, d1 = 2 + 0.5*2 - 1 = 2, d0 = 1 + 0.5*1 - 1 = 0.5
    #           A2 = 1, A1 = 2 + 0.25*1 = 2.25, A0 = 0.5 + 0.25*2.25 = 1.0625
    # column 1: d1 = 4 + 0.5*0 - 2 = 2, d0 = 2 + 0.5*2 - 2 = 1
    #           A1 = 2, A0 = 1 + 0.25*2 = 1.5, A2 = 0 (padding)
    expected = torch.tensor([[1.0625, 1.5], [2.25, 2.0], [1.0, 0.0]], dtype=dtype)
    out = gae_advantages(
        torch.tensor(GAE_REWARDS, dtype=dtype),
        torch.tensor(GAE_VALUES, dtype=dtype),
        torch.tensor(GAE_MASK, dtype=dtype),
        gamma=0.5,
        lam=0.5,
    )
    assert out.dtype == dtype
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_gae_bootstrap_value_only_for_episodes_running_at_T():
    # bootstrap = [4, 100]: column 0 is still running at T, so d2 = 3 + 0.5*4 - 2 = 3,
    # A2 = 3, A1 = 2 + 0.25*3 = 2.75, A0 = 0.5 + 0.25*2.75 = 1.1875.
    # Column 1 ended at t = 1: its 100 is ignored, same as without bootstrapping.
    expected = torch.tensor([[1.1875, 1.5], [2.75, 2.0], [3.0, 0.0]])
    out = gae_advantages(
        torch.tensor(GAE_REWARDS),
        torch.tensor(GAE_VALUES),
        torch.tensor(GAE_MASK),
        gamma=0.5,
        lam=0.5,
        bootstrap_value=torch.tensor([4.0, 100.0]),
    )
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_gae_zero_bootstrap_equals_default():
    rewards, values, mask = _random_batch(2, (5, 4))
    default = gae_advantages(rewards, values, mask, 0.9, 0.8)
    zeros = torch.zeros(4, dtype=torch.float64)
    zero = gae_advantages(rewards, values, mask, 0.9, 0.8, bootstrap_value=zeros)
    torch.testing.assert_close(default, zero, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gae_lambda_one_is_returns_minus_values(dtype):
    rewards, values, mask = _random_batch(3, (8, 5), dtype)
    for gamma in (0.99, 1.0):
        advantages = gae_advantages(rewards, values, mask, gamma, 1.0)
        expected = discounted_returns(rewards, mask, gamma) - values * mask
        torch.testing.assert_close(advantages, expected)


def test_gae_gamma_one_lambda_one_hand_computed():
    # Column 0: R = [6, 5, 3] (1+2+3, 2+3, 3); A = R - V = [5, 4, 1].
    # Column 1: R = [6, 4]; A = [4, 2].
    rewards, values, mask = _gae_fixture()
    out = gae_advantages(rewards, values, mask, 1.0, 1.0)
    torch.testing.assert_close(out, torch.tensor([[5.0, 4.0], [4.0, 2.0], [1.0, 0.0]]))


def test_gae_lambda_zero_is_one_step_td_error():
    rewards, values, mask = _random_batch(4, (6, 3))
    gamma = 0.9
    next_values = torch.cat([values[1:] * mask[1:], torch.zeros(1, 3, dtype=torch.float64)])
    delta = (rewards + gamma * next_values - values) * mask
    torch.testing.assert_close(gae_advantages(rewards, values, mask, gamma, 0.0), delta)


def test_gae_ignores_nan_padding():
    rewards, values, mask = _gae_fixture()
    rewards[2, 1] = NAN
    values[2, 1] = NAN
    out = gae_advantages(rewards, values, mask, 0.5, 0.5, bootstrap_value=torch.tensor([0.0, NAN]))
    torch.testing.assert_close(out, torch.tensor([[1.0625, 1.5], [2.25, 2.0], [1.0, 0.0]]))


def test_gae_batched_equals_per_task_loop():
    rewards, values, mask = _random_batch(5, (3, 7, 4))  # [N, T, E]
    bootstrap = torch.randn(3, 4, dtype=torch.float64)
    batched = gae_advantages(rewards, values, mask, 0.95, 0.9, bootstrap, time_axis=1)
    looped = torch.stack(
        [gae_advantages(rewards[i], values[i], mask[i], 0.95, 0.9, bootstrap[i]) for i in range(3)]
    )
    torch.testing.assert_close(batched, looped, rtol=0, atol=0)


def test_gae_rejects_bad_arguments():
    rewards, values, mask = _gae_fixture()
    with pytest.raises(ValueError, match="values"):
        gae_advantages(rewards, values[:2], mask, 0.9, 0.9)
    with pytest.raises(ValueError, match="lam"):
        gae_advantages(rewards, values, mask, 0.9, -0.1)
    with pytest.raises(ValueError, match="bootstrap_value"):
        gae_advantages(rewards, values, mask, 0.9, 0.9, bootstrap_value=torch.zeros(3))


# --- normalize_advantages ------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_normalize_hand_computed(dtype):
    # Valid values 1, 3, 5, 7: mean 4, deviations -3, -1, 1, 3, variance (9+1+1+9)/4 = 5.
    advantages = torch.tensor([[1.0, 7.0], [3.0, 50.0], [5.0, -50.0]], dtype=dtype)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]], dtype=dtype)
    s = math.sqrt(5.0)
    expected = torch.tensor([[-3 / s, 3 / s], [-1 / s, 0.0], [1 / s, 0.0]], dtype=dtype)
    out = normalize_advantages(advantages, mask, eps=1e-12)
    assert out.dtype == dtype
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_normalize_gives_zero_mean_unit_std_over_valid_steps(dtype):
    advantages, _, mask = _random_batch(6, (9, 5), dtype)
    out = normalize_advantages(advantages * 3.0 + 2.0, mask)
    n = mask.sum()
    mean = (out * mask).sum() / n
    std = ((out - mean).square() * mask).sum().div(n).sqrt()
    assert abs(mean.item()) < 1e-5 and abs(std.item() - 1.0) < 1e-5
    assert (out[mask == 0] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "case",
    ["single_valid_step", "constant", "constant_float_noise", "no_valid_step", "nan_padding"],
)
def test_normalize_never_nan(dtype, case):
    advantages = torch.randn(6, 4, dtype=dtype)
    mask = torch.ones(6, 4, dtype=dtype)
    if case == "single_valid_step":
        mask.zero_()
        mask[0, 2] = 1.0
    elif case == "constant":
        advantages.fill_(3.0)
    elif case == "constant_float_noise":  # 0.1 is inexact: a naive mean leaves rounding residue
        advantages = torch.full((100, 7), 0.1, dtype=dtype)
        mask = torch.ones(100, 7, dtype=dtype)
        mask[60:, 3] = 0.0
    elif case == "no_valid_step":
        mask.zero_()
    elif case == "nan_padding":
        advantages[3:, 1] = NAN
        mask[3:, 1] = 0.0
    out = normalize_advantages(advantages, mask)
    assert torch.isfinite(out).all()
    if case == "nan_padding":
        assert (out[3:, 1] == 0).all() and out.abs().max() > 0.1
    else:
        assert (out == 0).all()


def test_normalize_batched_is_per_task():
    advantages, _, mask = _random_batch(7, (3, 6, 4))
    advantages = advantages + torch.tensor([0.0, 10.0, -5.0], dtype=torch.float64)[:, None, None]
    batched = normalize_advantages(advantages, mask)
    looped = torch.stack([normalize_advantages(advantages[i], mask[i]) for i in range(3)])
    torch.testing.assert_close(batched, looped)
    # Per task, not over the whole meta-batch: every task is centred on its own mean.
    task_means = weighted_mean(batched, mask)
    torch.testing.assert_close(task_means, torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12)


def test_normalize_rejects_bad_arguments():
    with pytest.raises(ValueError, match="same shape"):
        normalize_advantages(torch.zeros(3, 2), torch.ones(3, 3))
    with pytest.raises(ValueError, match="2 dimensions"):
        normalize_advantages(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="eps"):
        normalize_advantages(torch.zeros(3, 2), torch.ones(3, 2), eps=0.0)


# --- weighted_mean -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_weighted_mean_hand_computed(dtype):
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=dtype)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]], dtype=dtype)
    out = weighted_mean(x, mask)  # (1 + 2 + 3) / 3 = 2
    assert out.shape == () and out.dtype == dtype
    assert out.item() == pytest.approx(2.0)


def test_weighted_mean_batched_gives_one_mean_per_task():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[10.0, 20.0], [30.0, NAN]]])  # [N=2, T=2, E=2]
    mask = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, 0.0]]])
    # task 0: (1+2+3+4)/4 = 2.5; task 1: (10+20+30)/3 = 20 (the NaN is padding)
    torch.testing.assert_close(weighted_mean(x, mask), torch.tensor([2.5, 20.0]))


def test_weighted_mean_empty_mask_is_zero_and_gradient_is_mask_over_count():
    assert weighted_mean(torch.randn(3, 2), torch.zeros(3, 2)).item() == 0.0
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    weighted_mean(x, mask).backward()
    torch.testing.assert_close(x.grad, mask / 3.0)


def test_weighted_mean_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        weighted_mean(torch.zeros(3, 2), torch.ones(2, 3))
    with pytest.raises(ValueError, match="2 dimensions"):
        weighted_mean(torch.zeros(3), torch.ones(3))
