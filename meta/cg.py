"""Conjugate gradient for the TRPO natural-gradient step."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10,
                       residual_tol: float = 1e-10) -> Tensor:
    """Approximately solve ``A x = b`` for symmetric positive-definite ``A`` given ``x -> A x``.

    Hestenes & Stiefel 1952; used by TRPO (Schulman et al. 2015, appendix C) with ``A`` the
    Fisher matrix (Hessian of the mean KL), accessed only through Hessian-vector products.

    Args:
        matvec: ``v [P] -> A v [P]``.
        b: ``[P]`` right-hand side.
        iters: maximum number of iterations (exact after ``P`` in exact arithmetic).
        residual_tol: stop once ``||r||^2`` falls below this.
    Returns:
        ``x [P]``.
    """
    return conjugate_gradient_and_product(matvec, b, iters, residual_tol)[0]


def conjugate_gradient_and_product(matvec: Callable[[Tensor], Tensor], b: Tensor,
                                   iters: int = 10, residual_tol: float = 1e-10
                                   ) -> tuple[Tensor, Tensor]:
    """:func:`conjugate_gradient`'s ``x [P]`` and ``A x [P]``, without another ``matvec``.

    ``x = sum_k alpha_k p_k`` over the search directions, and CG has already computed every
    ``A p_k``, so ``A x = sum_k alpha_k A p_k`` (``A`` is linear): equal to ``matvec(x)`` up to
    float rounding. TRPO needs ``x^T A x`` for its step length (Schulman et al. 2015,
    appendix C), and one Fisher-vector product is the expensive part of an iteration.
    """
    x = torch.zeros_like(b)
    ax = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    r_dot = r @ r
    for _ in range(iters):
        if r_dot <= residual_tol:
            break
        ap = matvec(p)
        alpha = r_dot / (p @ ap)
        x = x + alpha * p
        ax = ax + alpha * ap
        r = r - alpha * ap
        new_r_dot = r @ r
        p = r + (new_r_dot / r_dot) * p
        r_dot = new_r_dot
    return x, ax
