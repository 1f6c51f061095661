"""The linear feature value baseline of Duan et al. 2016 (rllab), as pure functions.

Duan, Chen, Houthooft, Schulman & Abbeel 2016, "Benchmarking Deep Reinforcement Learning for
Continuous Control", Sec. 6 / Appendix (``LinearFeatureBaseline``), also the baseline of the MAML
policy-gradient experiments (Finn et al. 2017). Per valid step ``t`` of an episode with
observation ``o_t`` (``D`` numbers) the features are::

    phi_t = [clip(o_t, -10, 10), clip(o_t, -10, 10)^2, s, s^2, s^3, 1],   s = t / 100

(``F = 2 * D + 4`` numbers), and the value is ``V_t = phi_t . w``. ``w`` is refitted on every
batch by ridge-regularised least squares to the discounted returns ``R_t``::

    w = argmin_w  sum_{valid t, e} (phi_{t,e} . w - R_{t,e})^2 + reg * |w|^2,

solved, as rllab does, through the normal equations ``(Phi^T Phi + reg I) w = Phi^T R``, here by
Cholesky in float64 (float32 on MPS), with ``Phi^T Phi`` summed over the valid steps only. If
the factorisation fails or a solution is non-finite, ``reg`` is multiplied by 10 and the fit
retried (``max_tries`` fits in all, as rllab), after which the weights fall back to zeros;
a task with non-finite valid inputs gets zero weights.

Shapes (time-major, see :mod:`meta.returns`): one task is ``obs [T, E, D]``, ``returns/mask
[T, E]``, ``weights [F]``; a meta-batch of ``N`` tasks adds a leading ``N`` (any leading
dimensions work) and gets one fit per task, ``weights [N, F]``, in one batched Cholesky solve.
Padded steps (``mask == 0``) give all-zero feature rows, so padding never changes the fit and
may hold anything (NaN included). The baseline carries no gradient: inputs are detached.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "LinearFeatureBaseline",
    "feature_dim",
    "features",
    "fit",
    "predict",
    "fit_predict",
    "normal_equations",
    "ridge_solve",
]

OBS_CLIP = 10.0
TIME_SCALE = 100.0
DEFAULT_REG = 1e-5
DEFAULT_MAX_TRIES = 5


def feature_dim(obs_dim: int) -> int:
    """Number of features ``F = 2 * D + 4`` for ``D``-dimensional observations."""
    return 2 * obs_dim + 4


def features(obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """rllab linear-baseline features ``[o, o^2, s, s^2, s^3, 1]`` (Duan et al. 2016).

    ``o`` is the observation clipped to ``[-10, 10]`` and ``s = t / 100`` with ``t`` the row
    index (the time step within the episode, since episodes start at row 0).

    Args:
        obs: ``[..., T, E, D]`` observations (``[T, E, D]`` or ``[N, T, E, D]``).
        mask: ``[..., T, E]`` 1.0 on valid steps, 0.0 on padding.

    Returns:
        ``[..., T, E, F]`` features, ``F = 2 * D + 4``, in ``obs``' floating dtype (the default
        dtype for integer observations); all-zero rows on padded steps.

    Raises:
        ValueError: if ``obs`` is not ``[..., T, E, D]`` or ``mask`` is not ``obs.shape[:-1]``.
    """
    _check_obs_mask(obs, mask)
    dtype = obs.dtype if obs.is_floating_point() else torch.get_default_dtype()
    s = _scaled_times(obs.shape[-3], dtype, obs.device)[:, None].expand(obs.shape[:-1])
    phi = _row_features(obs.detach().to(dtype), s)  # [..., T, E, F]
    valid = (mask != 0).to(obs.device).unsqueeze(-1)
    return torch.where(valid, phi, torch.zeros((), dtype=dtype, device=obs.device))


def _scaled_times(num_steps: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``s = t / 100`` for ``t = 0 .. T-1``: ``[T]``."""
    return torch.arange(num_steps, dtype=dtype, device=device) / TIME_SCALE


def _row_features(obs: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``[..., D]`` observations and ``[...]`` scaled times -> ``[..., F]`` features."""
    o = obs.clamp(-OBS_CLIP, OBS_CLIP)
    s = s.unsqueeze(-1)
    return torch.cat([o, o.square(), s, s.square(), s.pow(3), torch.ones_like(s)], dim=-1)


def fit(
    obs: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    reg: float = DEFAULT_REG,
    max_tries: int = DEFAULT_MAX_TRIES,
) -> torch.Tensor:
    """Ridge least-squares weights of the linear feature baseline, one fit per task.

    Solves ``min_w |Phi w - R|^2 + reg |w|^2`` over the valid steps (Duan et al. 2016,
    ``LinearFeatureBaseline.fit``) through its normal equations
    ``(Phi^T Phi + reg I) w = Phi^T R`` (:func:`normal_equations`, :func:`ridge_solve`),
    batched over leading (task) dimensions. Tasks whose
    solution is non-finite are refitted with ``reg * 10, reg * 100, ...`` (``max_tries`` fits in
    all); if none is finite their weights are zeros. A task with NaN/inf among its valid returns
    (or NaN among its valid observations; infinite ones are clipped) gets zero weights directly.

    Args:
        obs: ``[..., T, E, D]`` observations.
        returns: ``[..., T, E]`` regression targets (discounted returns).
        mask: ``[..., T, E]`` 1.0 on valid steps, 0.0 on padding.
        reg: ridge coefficient, > 0.
        max_tries: number of fits before falling back to zeros, >= 1.

    Returns:
        ``[..., F]`` weights (``[F]`` for one task, ``[N, F]`` for ``N``), ``F = 2 * D + 4``, in
        the promoted floating dtype of ``obs`` and ``returns``.

    Raises:
        ValueError: on mismatched shapes, ``reg <= 0`` or ``max_tries < 1``.
    """
    _check_obs_mask(obs, mask)
    if returns.shape != mask.shape:
        raise ValueError(
            f"returns must have the mask's shape {tuple(mask.shape)}, got {tuple(returns.shape)}"
        )
    if not reg > 0:
        raise ValueError(f"reg must be positive, got {reg}")
    if max_tries < 1:
        raise ValueError(f"max_tries must be at least 1, got {max_tries}")
    out_dtype = _float_dtype(obs, returns)
    solve_dtype = torch.float32 if obs.device.type == "mps" else torch.float64
    num_steps, num_envs, obs_dim = obs.shape[-3:]
    batch, num_features = obs.shape[:-3], feature_dim(obs_dim)
    rows = obs.detach().reshape(-1, num_steps * num_envs, obs_dim)  # [B, T*E, D]
    valid = (mask != 0).to(obs.device).reshape(rows.shape[:-1])  # [B, T*E]
    target = returns.detach().to(obs.device).reshape(valid.shape)
    times = _scaled_times(num_steps, solve_dtype, obs.device).repeat_interleave(num_envs)  # [T*E]
    gram, moment, finite = normal_equations(rows, times, target, valid)
    weights = torch.zeros(rows.shape[0], num_features, dtype=solve_dtype, device=obs.device)
    solved = ~finite  # a task with NaN/inf among its valid inputs keeps zero weights
    for attempt in range(max_tries):
        solution = ridge_solve(gram, moment, reg * 10.0**attempt)  # [B, F]
        newly = ~solved & torch.isfinite(solution).all(dim=-1)
        weights = torch.where(newly.unsqueeze(-1), solution, weights)
        solved = solved | newly
        if bool(solved.all()):
            break
    return weights.reshape(*batch, num_features).to(out_dtype)


def normal_equations(obs: torch.Tensor, times: torch.Tensor, target: torch.Tensor,
                     valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per task ``Phi^T Phi`` ``[B, F, F]``, ``Phi^T R`` ``[B, F]`` and whether its valid inputs
    are finite ``[B]``, from ``obs [B, M, D]``, ``times [M]`` (``s`` of each row), ``target``
    and ``valid`` ``[B, M]``, in the dtype of ``times``.

    The features are built for the valid rows only: padding is most of the rows where episodes
    end early (the Ant's, before it learns to stay healthy), and would add only zeros. A task
    whose valid rows hold NaN (or an infinite return) gets zero sums and ``finite`` False.
    """
    b, f = obs.shape[0], feature_dim(obs.shape[-1])
    gram = times.new_zeros(b, f, f)
    moment = times.new_zeros(b, f)
    finite = torch.ones(b, dtype=torch.bool, device=obs.device)
    for n in range(b):
        keep = valid[n]
        x = _row_features(obs[n][keep].to(times.dtype), times[keep])  # [V_n, F]
        y = target[n][keep].to(times.dtype)
        finite[n] = torch.isfinite(x).all() & torch.isfinite(y).all()
        gram[n] = torch.where(finite[n], x.mT @ x, 0.0)
        moment[n] = torch.where(finite[n], x.mT @ y, 0.0)
    return gram, moment, finite


def ridge_solve(gram: torch.Tensor, moment: torch.Tensor, reg: float) -> torch.Tensor:
    """``w = (G + reg I)^-1 m`` per task by Cholesky (``gram [B, F, F]``, ``moment [B, F]``):
    ``[B, F]``, NaN for a task whose ``G + reg I`` the factorisation finds not positive definite."""
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    chol, info = torch.linalg.cholesky_ex(gram + reg * eye)
    solution = torch.cholesky_solve(moment.unsqueeze(-1), chol).squeeze(-1)
    return torch.where((info == 0).unsqueeze(-1), solution, torch.nan)


def predict(weights: torch.Tensor, obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Baseline values ``V_t = phi_t . w`` (Duan et al. 2016), zero on padding.

    Args:
        weights: ``[..., F]`` weights from :func:`fit` (leading dims as ``obs``' task dims).
        obs: ``[..., T, E, D]`` observations.
        mask: ``[..., T, E]`` 1.0 on valid steps, 0.0 on padding.

    Returns:
        ``[..., T, E]`` values in the promoted floating dtype of ``weights`` and ``obs``; exactly 0
        on padded steps.

    Raises:
        ValueError: on mismatched shapes or a weight vector of the wrong length.
    """
    _check_obs_mask(obs, mask)
    num_features = feature_dim(obs.shape[-1])
    if weights.dim() < 1 or weights.shape[-1] != num_features:
        raise ValueError(f"weights must end in F={num_features}, got {tuple(weights.shape)}")
    if weights.shape[:-1] != obs.shape[:-3]:
        raise ValueError(
            f"weights' leading dims {tuple(weights.shape[:-1])} must match obs' "
            f"{tuple(obs.shape[:-3])}"
        )
    dtype = _float_dtype(obs, weights)
    d = obs.shape[-1]
    w = weights.detach().to(device=obs.device, dtype=dtype)  # [..., F]
    o = obs.detach().to(dtype).clamp(-OBS_CLIP, OBS_CLIP)  # [..., T, E, D]
    s = _scaled_times(obs.shape[-3], dtype, obs.device)[:, None]  # [T, 1]
    powers = torch.cat([s, s.square(), s.pow(3), torch.ones_like(s)], dim=-1)  # [T, 4]
    # phi . w without building phi: the observation terms, then the time terms [..., T, 1].
    values = (torch.einsum("...ted,...d->...te", o, w[..., :d])
              + torch.einsum("...ted,...d->...te", o.square(), w[..., d:2 * d])
              + (powers * w[..., None, 2 * d:]).sum(dim=-1).unsqueeze(-1))
    valid = (mask != 0).to(obs.device)
    return torch.where(valid, values, torch.zeros((), dtype=dtype, device=obs.device))


def fit_predict(
    obs: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    reg: float = DEFAULT_REG,
    max_tries: int = DEFAULT_MAX_TRIES,
) -> torch.Tensor:
    """Refit the baseline on this batch (per task) and return its values on the same batch.

    Args:
        obs: ``[..., T, E, D]`` observations.
        returns: ``[..., T, E]`` discounted returns to fit.
        mask: ``[..., T, E]`` 1.0 on valid steps, 0.0 on padding.
        reg: ridge coefficient, > 0.
        max_tries: number of fits before falling back to zeros.

    Returns:
        ``[..., T, E]`` baseline values, exactly 0 on padded steps.
    """
    return predict(fit(obs, returns, mask, reg=reg, max_tries=max_tries), obs, mask)


@dataclass(frozen=True)
class LinearFeatureBaseline:
    """Namespace over the functional API holding the ridge settings; it stores no weights.

    Usage::

        baseline = LinearFeatureBaseline()
        values = baseline.fit_predict(obs, returns, mask)   # [T, E] or [N, T, E]

    Attributes:
        reg: ridge coefficient of the least-squares fit (rllab's ``reg_coeff``).
        max_tries: fits (with ``reg`` times 10 each retry) before falling back to zeros.
    """

    reg: float = DEFAULT_REG
    max_tries: int = DEFAULT_MAX_TRIES

    def __post_init__(self) -> None:
        if not self.reg > 0:
            raise ValueError(f"reg must be positive, got {self.reg}")
        if self.max_tries < 1:
            raise ValueError(f"max_tries must be at least 1, got {self.max_tries}")

    @staticmethod
    def feature_dim(obs_dim: int) -> int:
        """See :func:`feature_dim`."""
        return feature_dim(obs_dim)

    @staticmethod
    def features(obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """See :func:`features`: ``[..., T, E, D] -> [..., T, E, F]``."""
        return features(obs, mask)

    def fit(
        self,
        obs: torch.Tensor,
        returns: torch.Tensor,
        mask: torch.Tensor,
        reg: float | None = None,
    ) -> torch.Tensor:
        """See :func:`fit`; ``reg`` defaults to ``self.reg``. Returns ``[..., F]`` weights."""
        reg = self.reg if reg is None else reg
        return fit(obs, returns, mask, reg=reg, max_tries=self.max_tries)

    @staticmethod
    def predict(weights: torch.Tensor, obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """See :func:`predict`. Returns ``[..., T, E]`` values."""
        return predict(weights, obs, mask)

    def fit_predict(
        self, obs: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """See :func:`fit_predict`. Returns ``[..., T, E]`` values, refitted on this batch."""
        return fit_predict(obs, returns, mask, reg=self.reg, max_tries=self.max_tries)


# --- helpers -------------------------------------------------------------------------------------
def _check_obs_mask(obs: torch.Tensor, mask: torch.Tensor) -> None:
    if obs.dim() < 3:
        raise ValueError(f"obs must be [..., T, E, D], got shape {tuple(obs.shape)}")
    if mask.shape != obs.shape[:-1]:
        raise ValueError(f"mask must have shape {tuple(obs.shape[:-1])}, got {tuple(mask.shape)}")


def _float_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The promoted dtype of ``tensors``, or the default dtype when it is not floating."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype if dtype.is_floating_point else torch.get_default_dtype()
