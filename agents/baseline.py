"""The linear feature value baseline of Duan et al. 2016 (rllab), as pure functions.

Duan, Chen, Houthooft, Schulman & Abbeel 2016, "Benchmarking Deep Reinforcement Learning for
Continuous Control", Sec. 6 / Appendix (``LinearFeatureBaseline``), also the baseline of the MAML
policy-gradient experiments (Finn et al. 2017). Per valid step ``t`` of an episode with
observation ``o_t`` (``D`` numbers) the features are::

    phi_t = [clip(o_t, -10, 10), clip(o_t, -10, 10)^2, s, s^2, s^3, 1],   s = t / 100

(``F = 2 * D + 4`` numbers), and the value is ``V_t = phi_t . w``. ``w`` is refitted on every
batch by ridge-regularised least squares to the discounted returns ``R_t``::

    w = argmin_w  sum_{valid t, e} (phi_{t,e} . w - R_{t,e})^2 + reg * |w|^2,

solved with ``torch.linalg.lstsq`` on the design matrix augmented with ``sqrt(reg) * I`` rows
(so it has full column rank and is never singular) rather than rllab's normal equations, in
float64 (float32 on MPS). If a solution is non-finite, ``reg`` is multiplied by 10 and the fit
retried (``max_tries`` fits in all, as rllab), after which the weights fall back to zeros;
a task with non-finite valid inputs gets zero weights (LAPACK rejects NaN).

Shapes (time-major, see :mod:`meta.returns`): one task is ``obs [T, E, D]``, ``returns/mask
[T, E]``, ``weights [F]``; a meta-batch of ``N`` tasks adds a leading ``N`` (any leading
dimensions work) and gets one fit per task, ``weights [N, F]``, in one batched ``lstsq``.
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
    o = obs.detach().to(dtype).clamp(-OBS_CLIP, OBS_CLIP)
    num_steps = obs.shape[-3]
    s = torch.arange(num_steps, dtype=dtype, device=obs.device) / TIME_SCALE  # [T]
    s = s[:, None, None].expand(*obs.shape[:-1], 1)  # [..., T, E, 1]
    phi = torch.cat([o, o.square(), s, s.square(), s.pow(3), torch.ones_like(s)], dim=-1)
    valid = (mask != 0).to(obs.device).unsqueeze(-1)
    return torch.where(valid, phi, torch.zeros((), dtype=dtype, device=obs.device))


def fit(
    obs: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    reg: float = DEFAULT_REG,
    max_tries: int = DEFAULT_MAX_TRIES,
) -> torch.Tensor:
    """Ridge least-squares weights of the linear feature baseline, one fit per task.

    Solves ``min_w |Phi w - R|^2 + reg |w|^2`` over the valid steps (Duan et al. 2016,
    ``LinearFeatureBaseline.fit``) as the plain least-squares problem
    ``[Phi; sqrt(reg) I] w = [R; 0]``, batched over leading (task) dimensions. Tasks whose
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
    phi = features(obs.detach().to(solve_dtype), mask)  # [..., T, E, F]
    valid = (mask != 0).to(obs.device)
    target = torch.where(valid, returns.detach().to(device=obs.device, dtype=solve_dtype), 0.0)
    design = phi.flatten(-3, -2)  # [..., T*E, F]
    target = target.flatten(-2).unsqueeze(-1)  # [..., T*E, 1]
    num_features = design.shape[-1]
    eye = torch.eye(num_features, dtype=solve_dtype, device=obs.device)
    batch = design.shape[:-2]
    zeros = torch.zeros(*batch, num_features, 1, dtype=solve_dtype, device=obs.device)
    padded_target = torch.cat([target, zeros], dim=-2)  # [..., T*E + F, 1]
    # A task with NaN/inf among its valid inputs has no finite fit (and LAPACK rejects NaN):
    # solve a zero problem in its place and let it fall back to zero weights.
    finite = torch.isfinite(design).all(dim=(-2, -1)) & torch.isfinite(target).all(dim=(-2, -1))
    design = torch.where(finite[..., None, None], design, 0.0)
    padded_target = torch.where(finite[..., None, None], padded_target, 0.0)
    weights = torch.zeros(*batch, num_features, dtype=solve_dtype, device=obs.device)
    solved = ~finite
    for attempt in range(max_tries):
        ridge = (reg * 10.0**attempt) ** 0.5 * eye.expand(*batch, num_features, num_features)
        solution = torch.linalg.lstsq(torch.cat([design, ridge], dim=-2), padded_target).solution
        solution = solution.squeeze(-1)  # [..., F]
        newly = ~solved & torch.isfinite(solution).all(dim=-1)
        weights = torch.where(newly.unsqueeze(-1), solution, weights)
        solved = solved | newly
        if bool(solved.all()):
            break
    return weights.to(out_dtype)


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
    phi = features(obs, mask).to(dtype)  # [..., T, E, F]
    w = weights.detach().to(device=obs.device, dtype=dtype)
    return (phi * w[..., None, None, :]).sum(dim=-1)


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
