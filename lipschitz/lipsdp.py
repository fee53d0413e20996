"""LipSDP-neuron machinery on float64 weight lists: ECLipsE-Fast, the LMI and its check, and
first-order optimisation of the multipliers.

For f = W_l phi(W_{l-1} ... phi(W_1 x)) with activations slope-restricted to [0, 1], dz_0 = dx and
dz_i the change of the i-th hidden activation satisfy dz_i^T Lambda_i (W_i dz_{i-1} - dz_i) >= 0
for any diagonal Lambda_i >= 0, so ||df|| <= sqrt(rho) ||dx|| whenever the quadratic form
rho ||dz_0||^2 - ||W_l dz_{l-1}||^2 - 2 sum_i dz_i^T Lambda_i (W_i dz_{i-1} - dz_i) is PSD.
Eliminating dz_0, dz_1, ... by Schur complements (rho normalised to 1, Lambda = rho * normalised
multipliers) gives the chain X_0 = I, X_i = 2 Lambda_i - Lambda_i W_i X_{i-1}^{-1} W_i^T Lambda_i
and rho = lambda_max(W_l X_{l-1}^{-1} W_l^T). Multipliers here are always the normalised ones, one
vector per hidden layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

LMI_MARGINS = (1e-8, 1e-6, 1e-4, 1e-2)  # relative inflations of rho tried by the LMI check
STEP_GROWTH = 1.5  # learning-rate growth per accepted descent step


def to_float64(t: Tensor) -> Tensor:
    """Detached float64 CPU copy."""
    return t.detach().to("cpu", torch.float64)


def _congruence(weight: Tensor, chol: Tensor | None) -> Tensor:
    """W X^{-1} W^T for X = L L^T (X = I when L is None)."""
    if chol is None:
        return weight @ weight.T
    half = torch.linalg.solve_triangular(chol, weight.T, upper=False)
    return half.T @ half


def eclipse_fast_multipliers(weights: Sequence[Tensor]) -> tuple[list[Tensor], float]:
    """ECLipsE-Fast normalised multipliers (one vector per hidden layer) and their tight rho.

    Layer by layer: A_i = W_i X_{i-1}^{-1} W_i^T and Lambda_i = I / lambda_max(A_i), the choice
    that maximises the smallest eigenvalue of X_i (it is then >= 1 / lambda_max(A_i)).
    """
    weights = [to_float64(w) for w in weights]
    chol, multipliers = None, []  # chol: Cholesky factor of X_{i-1}
    for weight in weights[:-1]:
        a = _congruence(weight, chol)
        top = float(torch.linalg.eigvalsh(a)[-1])
        lam = torch.full_like(a[0], 1 / top if top > 0 else 1.0)
        multipliers.append(lam)
        chol = torch.linalg.cholesky(torch.diag(2 * lam) - lam[:, None] * a * lam)
    return multipliers, float(torch.linalg.eigvalsh(_congruence(weights[-1], chol))[-1])


def multiplier_rho(weights: Sequence[Tensor], multipliers: Sequence[Tensor]) -> float | None:
    """rho = lambda_max(W_l X_{l-1}^{-1} W_l^T) along the chain X_0 = I,
    X_i = 2 Lambda_i - Lambda_i W_i X_{i-1}^{-1} W_i^T Lambda_i for given normalised multipliers
    (uncertified: check it with `certified_rho`), or None where some X_i is not positive
    definite."""
    weights = [to_float64(w) for w in weights]
    chol = None
    for weight, lam in zip(weights[:-1], multipliers, strict=True):
        lam = to_float64(lam)
        x = torch.diag(2 * lam) - lam[:, None] * _congruence(weight, chol) * lam
        chol, info = torch.linalg.cholesky_ex(x)
        if info:
            return None
    return float(torch.linalg.eigvalsh(_congruence(weights[-1], chol))[-1])


def _blocks(weights: Sequence[Tensor]) -> list[slice]:
    """Index ranges of dz_0, ..., dz_{l-1} in the LipSDP matrix."""
    sizes = [weights[0].shape[1]] + [w.shape[0] for w in weights[:-1]]
    ends = [sum(sizes[: i + 1]) for i in range(len(sizes))]
    return [slice(end - size, end) for size, end in zip(sizes, ends, strict=True)]


def _normalised_matrix(weights: Sequence[Tensor], multipliers: Sequence[Tensor]) -> Tensor:
    """N(Lambda): the LipSDP matrix at rho = 1 without its -W_l^T W_l term (affine in Lambda)."""
    blocks = _blocks(weights)
    n = torch.zeros(blocks[-1].stop, blocks[-1].stop, dtype=torch.float64)
    n[blocks[0], blocks[0]] = torch.eye(blocks[0].stop, dtype=torch.float64)
    for i, (weight, lam) in enumerate(zip(weights[:-1], multipliers, strict=True), start=1):
        n[blocks[i], blocks[i]] = torch.diag(2 * lam)
        n[blocks[i], blocks[i - 1]] = -lam[:, None] * weight
        n[blocks[i - 1], blocks[i]] = -weight.T * lam
    return n


def lipsdp_matrix(weights: Sequence[Tensor], multipliers: Sequence[Tensor], rho: float) -> Tensor:
    """Float64 LipSDP-neuron matrix rho * N(Lambda) - blockdiag(0, ..., W_l^T W_l) over blocks
    [dz_0, ..., dz_{l-1}] for normalised multipliers Lambda (so the actual ones are rho * Lambda).
    The net is sqrt(rho)-Lipschitz if it is PSD and the multipliers are >= 0."""
    weights = [to_float64(w) for w in weights]
    m = rho * _normalised_matrix(weights, [to_float64(lam) for lam in multipliers])
    last = _blocks(weights)[-1]
    m[last, last] -= weights[-1].T @ weights[-1]
    return m


def check_lmi(weights: Sequence[Tensor], multipliers: Sequence[Tensor], rho: float) -> bool:
    """True if the multipliers are non-negative and the LipSDP matrix at rho passes a float64
    Cholesky factorisation (numerically positive definite)."""
    if len(multipliers) != len(weights) - 1:
        raise ValueError(f"need one multiplier vector per hidden layer ({len(weights) - 1}), "
                         f"got {len(multipliers)}")
    if any(bool((to_float64(m) < 0).any()) for m in multipliers):
        return False
    return torch.linalg.cholesky_ex(lipsdp_matrix(weights, multipliers, rho)).info.item() == 0


def certified_rho(
    weights: Sequence[Tensor], multipliers: Sequence[Tensor], rho: float
) -> float | None:
    """Smallest rho * (1 + delta), delta in LMI_MARGINS, at which check_lmi passes (the tight rho
    makes the matrix singular), or None if none does."""
    for delta in LMI_MARGINS:
        if check_lmi(weights, multipliers, rho * (1 + delta)):
            return rho * (1 + delta)
    return None


def _rho_and_gradient(
    weights: list[Tensor], multipliers: list[Tensor]
) -> tuple[float, list[Tensor]] | None:
    """rho(Lambda) = lambda_max(F N^{-1} F^T) with F = [0, ..., 0, W_l] (equal to
    lambda_max(W_l X_{l-1}^{-1} W_l^T)) and its gradient, or None where N is not positive definite.

    With u the top eigenvector and y = N^{-1} F^T u (blocks y_0, ..., y_{l-1}),
    d rho = -y^T dN y, so d rho / d Lambda_i = -2 y_i * (y_i - W_i y_{i-1}) elementwise.
    """
    chol, info = torch.linalg.cholesky_ex(_normalised_matrix(weights, multipliers))
    if info:
        return None
    f_t = torch.zeros(chol.shape[0], weights[-1].shape[0], dtype=torch.float64)
    f_t[_blocks(weights)[-1]] = weights[-1].T
    solved = torch.cholesky_solve(f_t, chol)
    values, vectors = torch.linalg.eigh(f_t.T @ solved)
    y = (solved @ vectors[:, -1]).split([b.stop - b.start for b in _blocks(weights)])
    gradient = [-2 * y_i * (y_i - weight @ y_prev)
                for weight, y_prev, y_i in zip(weights[:-1], y[:-1], y[1:], strict=True)]
    return float(values[-1]), gradient


def lipsdp_multipliers(
    weights: Sequence[Tensor], iterations: int = 300, lr: float = 0.1,
    start: Sequence[Tensor] | None = None,
) -> tuple[list[Tensor], float]:
    """Per-neuron LipSDP multipliers minimising rho, by Adam on their logs from ECLipsE-Fast.

    rho(Lambda) = lambda_max(W_l X_{l-1}^{-1} W_l^T) = lambda_max(F N(Lambda)^{-1} F^T) is convex
    in Lambda (N is affine in Lambda and N -> F N^{-1} F^T is operator convex); the domain is
    N > 0, i.e. every X_i > 0. It is badly conditioned (Hessian condition numbers of 1e9 and
    more), which Adam's per-coordinate scaling tolerates better than plain gradient or
    quasi-Newton steps. Descent is kept monotone: a step that leaves the domain or raises rho is
    undone and the learning rate halved; an accepted step grows it by STEP_GROWTH, up to `lr`.
    `start` replaces the ECLipsE-Fast start (positive multipliers, e.g. a network's own).
    Returns the best multipliers and their (uncertified) rho; any multipliers give a valid
    certificate once the LMI check passes.
    """
    weights = [to_float64(w) for w in weights]
    if start is None:
        start, rho_start = eclipse_fast_multipliers(weights)
        if not start:
            return start, rho_start
    start = [to_float64(m) for m in start]
    theta = [m.log() for m in start]
    best, best_rho = [t.clone() for t in theta], math.inf
    optimiser = torch.optim.Adam(theta, lr=lr)
    step = lr
    for _ in range(iterations):
        result = _rho_and_gradient(weights, [t.exp() for t in theta])
        if result is not None and result[0] <= best_rho:  # rejects nan too
            best_rho, gradient = result
            best = [t.clone() for t in theta]
            for t, g in zip(theta, gradient, strict=True):
                t.grad = g * t.exp()  # chain rule through Lambda = exp(theta)
            step = min(lr, step * STEP_GROWTH)
        else:  # retry from the best point (its gradient is still in .grad) with a shorter step
            for t, kept in zip(theta, best, strict=True):
                t.copy_(kept)
            step *= 0.5
        for group in optimiser.param_groups:
            group["lr"] = step
        optimiser.step()
    return [t.exp() for t in best], best_rho
