"""Masked, time-major return and advantage estimators for policy-gradient meta-RL.

Conventions (shared by the whole of adaptbed):

* One task's batch of episodes is time-major: ``[T, E, ...]`` (``T`` time steps, ``E`` episodes).
* ``mask`` is float ``[T, E]``: 1.0 on valid steps, 0.0 on the padding after an episode ended;
  the valid steps of each column are a prefix (step 0 of an episode is row 0).
* A meta-batch of ``N`` tasks stacks a leading task dimension: ``[N, T, E, ...]``.

``discounted_returns`` and ``gae_advantages`` scan over one time axis (``time_axis``, 0 by
default; pass ``time_axis=1`` for a ``[N, T, E]`` meta-batch) and treat every other dimension as
independent episodes. ``normalize_advantages`` and ``weighted_mean`` reduce over the last two
dimensions ``[T, E]`` of one task and keep any leading dimensions (``[N, T, E] -> [N]``).

Values on padded steps are never read: padding may hold anything, NaN included, and every
output is exactly zero there.
"""

from __future__ import annotations

import torch

__all__ = [
    "discounted_returns",
    "gae_advantages",
    "normalize_advantages",
    "weighted_mean",
]


def discounted_returns(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    *,
    time_axis: int = 0,
) -> torch.Tensor:
    """Discounted reward-to-go within each episode, ``R_t = r_t + gamma * R_{t+1}``.

    The return after an episode's last valid step is 0 (no bootstrapping), so
    ``R_t = sum_{l >= 0} gamma^l r_{t+l}`` over the episode's remaining valid steps
    (Sutton & Barto 2018, eq. 3.8, truncated at the end of the episode).

    Args:
        rewards: ``[T, ...]`` rewards ``r_t`` (time on ``time_axis``).
        mask: ``[T, ...]`` (same shape) 1.0 on valid steps, 0.0 on padding.
        gamma: discount factor in ``[0, 1]``.
        time_axis: the time dimension of ``rewards``/``mask`` (1 for ``[N, T, E]``).

    Returns:
        ``[T, ...]`` returns ``R_t``, in the dtype of ``rewards``; exactly 0 on padded steps.

    Raises:
        ValueError: on mismatched shapes, a scalar input, or ``gamma`` outside ``[0, 1]``.
    """
    _check_same_shape("rewards", rewards, mask)
    axis = _check_time_axis(rewards, time_axis)
    _check_unit_interval("gamma", gamma)
    r_t = _masked(rewards, mask).movedim(axis, 0)
    valid_t = _valid(mask, rewards).movedim(axis, 0)
    return_tp1 = torch.zeros_like(r_t[0])
    returns = []
    for t in reversed(range(r_t.shape[0])):
        return_t = torch.where(valid_t[t], r_t[t] + gamma * return_tp1, 0.0)
        returns.append(return_t)
        return_tp1 = return_t
    return torch.stack(returns[::-1]).movedim(0, axis)


def gae_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
    bootstrap_value: torch.Tensor | None = None,
    *,
    time_axis: int = 0,
) -> torch.Tensor:
    """Generalized Advantage Estimation (Schulman et al. 2016, "High-Dimensional Continuous
    Control Using Generalized Advantage Estimation", eq. 16).

    ``delta_t = r_t + gamma * V_{t+1} * m_{t+1} - V_t`` and
    ``A_t = sum_{l >= 0} (gamma * lam)^l delta_{t+l}``, computed backwards as
    ``A_t = delta_t + gamma * lam * A_{t+1}`` within each episode; ``A_t = 0`` on padding.

    The value after an episode's last valid step is 0: an episode that ends inside the ``T``
    steps, and by default also one still running at step ``T - 1`` (the time limit), is treated
    as terminated, as the reference MAML / rllab implementations do. With ``lam = 1`` this gives
    ``A_t = R_t - V_t`` (``R_t`` from :func:`discounted_returns`); with ``lam = 0`` it gives
    ``A_t = delta_t``.

    ``bootstrap_value`` (optional) is the value ``V(s_T)`` of the state reached after step
    ``T - 1``, one per episode. It is used only for episodes still running at the last row
    (``mask[T - 1] == 1``), i.e. truncated by the time limit, as ``V_T * m_T`` in ``delta_{T-1}``;
    it is ignored for episodes that ended earlier. An episode that truly terminated exactly at
    step ``T - 1`` also has ``mask[T - 1] == 1``: pass 0 for it (the caller knows terminal from
    truncated; this function does not).

    Args:
        rewards: ``[T, ...]`` rewards ``r_t`` (time on ``time_axis``).
        values: ``[T, ...]`` baseline values ``V_t = V(s_t)``.
        mask: ``[T, ...]`` 1.0 on valid steps, 0.0 on padding.
        gamma: discount factor in ``[0, 1]``.
        lam: GAE ``lambda`` in ``[0, 1]``.
        bootstrap_value: optional ``[...]`` (the shape without the time axis, e.g. ``[E]`` or
            ``[N, E]``) value of the state after the last step; see above.
        time_axis: the time dimension (1 for ``[N, T, E]``).

    Returns:
        ``[T, ...]`` advantages ``A_t`` in the promoted dtype of ``rewards`` and ``values``;
        exactly 0 on padded steps.

    Raises:
        ValueError: on mismatched shapes or ``gamma``/``lam`` outside ``[0, 1]``.
    """
    _check_same_shape("rewards", rewards, mask)
    _check_same_shape("values", values, mask)
    axis = _check_time_axis(rewards, time_axis)
    _check_unit_interval("gamma", gamma)
    _check_unit_interval("lam", lam)
    dtype = torch.promote_types(rewards.dtype, values.dtype)
    r_t = _masked(rewards.to(dtype), mask).movedim(axis, 0)
    v_t = _masked(values.to(dtype), mask).movedim(axis, 0)
    valid_t = _valid(mask, r_t).movedim(axis, 0)
    if bootstrap_value is None:
        v_after_last = torch.zeros_like(r_t[0])
    else:
        expected = r_t.shape[1:]
        if bootstrap_value.shape != expected:
            raise ValueError(
                f"bootstrap_value must have shape {tuple(expected)}, "
                f"got {tuple(bootstrap_value.shape)}"
            )
        v_after_last = torch.where(valid_t[-1], bootstrap_value.to(r_t), 0.0)
    # V_{t+1} * m_{t+1}: the next row's (already masked) value; after row T-1, the bootstrap.
    v_tp1 = torch.cat([v_t[1:], v_after_last.unsqueeze(0)], dim=0)
    delta_t = torch.where(valid_t, r_t + gamma * v_tp1 - v_t, 0.0)
    advantage_tp1 = torch.zeros_like(r_t[0])
    advantages = []
    for t in reversed(range(r_t.shape[0])):
        advantage_t = torch.where(valid_t[t], delta_t[t] + gamma * lam * advantage_tp1, 0.0)
        advantages.append(advantage_t)
        advantage_tp1 = advantage_t
    return torch.stack(advantages[::-1]).movedim(0, axis)


def normalize_advantages(
    advantages: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Masked standardisation ``(A - mean) / (std + eps)`` over one task's valid steps.

    rllab's ``center_adv`` option, as used by the MAML reference code for its policy-gradient
    experiments (Finn et al. 2017, Sec. 5.3). Mean and (population, ``1/n``) standard deviation are
    taken over all valid steps of the last two dimensions ``[T, E]``, separately for every
    leading index (each task of ``[N, T, E]`` over its own steps). The centring subtracts a
    valid element first, so constant advantages (and a single valid step) give exact zeros,
    never NaN; a task with no valid step gives zeros.

    Args:
        advantages: ``[..., T, E]`` advantages (e.g. ``[T, E]`` or ``[N, T, E]``).
        mask: ``[..., T, E]`` 1.0 on valid steps, 0.0 on padding.
        eps: positive constant added to the standard deviation.

    Returns:
        ``[..., T, E]`` normalised advantages, dtype of ``advantages``; exactly 0 on padding.

    Raises:
        ValueError: on mismatched shapes, fewer than 2 dimensions, or ``eps <= 0``.
    """
    _check_same_shape("advantages", advantages, mask)
    _check_task_dims("advantages", advantages)
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    valid = _valid(mask, advantages)
    a = _masked(advantages, mask)
    flat_a, flat_valid = a.flatten(-2), valid.flatten(-2)
    first_valid = flat_valid.to(flat_a.dtype).argmax(dim=-1, keepdim=True)  # 0 when none valid
    reference = flat_a.gather(-1, first_valid).unsqueeze(-1)  # [..., 1, 1], a valid value or 0
    shifted = torch.where(valid, a - reference, 0.0)
    centered = torch.where(valid, shifted - weighted_mean(shifted, mask)[..., None, None], 0.0)
    std = weighted_mean(centered.square(), mask).sqrt()[..., None, None]
    return centered / (std + eps)


def weighted_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over one task's ``[T, E]``: ``sum(x * mask) / max(sum(mask), 1)``.

    The per-task surrogate-loss average of the MAML policy-gradient objective (Finn et al. 2017,
    Alg. 3, the inner and outer losses). A task with no valid step averages to 0. Padded entries
    of ``x`` are never read (NaN there does not leak).

    Args:
        x: ``[..., T, E]`` values (e.g. ``[T, E]`` or ``[N, T, E]``).
        mask: ``[..., T, E]`` 1.0 on valid steps, 0.0 on padding.

    Returns:
        ``[...]``: a scalar for ``[T, E]``, ``[N]`` for ``[N, T, E]``; differentiable in ``x``.

    Raises:
        ValueError: on mismatched shapes or fewer than 2 dimensions.
    """
    _check_same_shape("x", x, mask)
    _check_task_dims("x", x)
    m = mask.to(x.dtype) if x.is_floating_point() else mask
    total = torch.where(mask != 0, x * m, 0.0).sum(dim=(-2, -1))
    return total / m.sum(dim=(-2, -1)).clamp_min(1.0)


# --- helpers -------------------------------------------------------------------------------------
def _valid(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Boolean ``mask != 0`` on ``like``'s device."""
    return (mask != 0).to(like.device)


def _masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` with padded entries replaced by exact zeros (NaN-safe, unlike ``x * mask``)."""
    return torch.where(_valid(mask, x), x, torch.zeros((), dtype=x.dtype, device=x.device))


def _check_same_shape(name: str, x: torch.Tensor, mask: torch.Tensor) -> None:
    if x.shape != mask.shape:
        raise ValueError(
            f"{name} and mask must have the same shape, "
            f"got {tuple(x.shape)} and {tuple(mask.shape)}"
        )


def _check_time_axis(x: torch.Tensor, time_axis: int) -> int:
    if x.dim() < 1:
        raise ValueError("expected at least a time dimension, got a scalar")
    if not -x.dim() <= time_axis < x.dim():
        raise ValueError(f"time_axis {time_axis} is out of range for {x.dim()} dimensions")
    return time_axis % x.dim()


def _check_task_dims(name: str, x: torch.Tensor) -> None:
    if x.dim() < 2:
        raise ValueError(f"{name} must be [..., T, E], at least 2 dimensions, got {tuple(x.shape)}")


def _check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
