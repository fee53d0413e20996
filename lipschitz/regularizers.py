"""Soft Lipschitz regularisers: gradient penalties and adversarial robust losses.

Conventions: a "row" is one input point, indexed by all leading dimensions of the input; norms are
taken over the last (feature) dimension. `fn` may lay its outputs out freely (e.g. [E, B] for an
ensemble critic fed [B, d]) as long as each output depends on one row only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Fn = Callable[[Tensor], Tensor]
NORMS = ("l2", "linf")


def interpolate(a: Tensor, b: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Uniformly random points on the segments between paired rows of `a` and `b`."""
    if a.shape != b.shape:
        raise ValueError(f"interpolate needs equal shapes, got {list(a.shape)} and {list(b.shape)}")
    alpha = torch.rand(*a.shape[:-1], 1, generator=generator, device=a.device, dtype=a.dtype)
    return torch.lerp(a, b, alpha)


def _input_gradient_norms(fn: Fn, points: Tensor, create_graph: bool) -> Tensor:
    points = points.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(points).sum(), points, create_graph=create_graph)
    return torch.linalg.vector_norm(grad, dim=-1)


def input_gradient_norm(fn: Fn, points: Tensor) -> Tensor:
    """Per-row l2 norm of the gradient of sum(fn(points)) w.r.t. the points (detached)."""
    return _input_gradient_norms(fn, points, create_graph=False).detach()


def gradient_penalty(fn: Fn, points: Tensor, k: float = 1.0, one_sided: bool = True) -> Tensor:
    """Penalty on input-gradient norms g of sum(fn(points)): mean(relu(g - k)^2) if one-sided,
    else mean((g - k)^2). Differentiable w.r.t. fn's parameters; the points are detached."""
    excess = _input_gradient_norms(fn, points, create_graph=True) - k
    if one_sided:
        excess = excess.clamp_min(0.0)
    return excess.pow(2).mean()


def _check_attack(eps: float, norm: str, steps: int) -> None:
    if eps < 0:
        raise ValueError(f"eps must be non-negative, got {eps}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")


def project_to_ball(delta: Tensor, eps: float, norm: str = "l2") -> Tensor:
    """Each row of `delta` projected onto the ball ||row|| <= eps (l2: scaled, linf: clipped)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    length = torch.linalg.vector_norm(delta, dim=-1, keepdim=True)
    return delta * (eps / length.clamp_min(1e-12)).clamp(max=1.0)


def _ascent_direction(grad: Tensor, norm: str) -> Tensor:
    if norm == "linf":
        return grad.sign()
    return grad / torch.linalg.vector_norm(grad, dim=-1, keepdim=True).clamp_min(1e-12)


def _pgd(
    fn: Fn, x: Tensor, reference: Tensor, eps: float, norm: str, steps: int,
    step_size: float | None,
) -> Tensor:
    _check_attack(eps, norm, steps)
    if eps == 0:
        return torch.zeros_like(x)
    if step_size is None:
        step_size = eps if steps == 1 else 2.5 * eps / steps
    start = _ascent_direction(torch.randn_like(x), norm)
    delta = (1e-3 * eps * start).requires_grad_(True)
    for _ in range(steps):
        change = (fn(x + delta) - reference).pow(2).sum()
        (grad,) = torch.autograd.grad(change, delta)
        with torch.no_grad():
            delta = project_to_ball(delta + step_size * _ascent_direction(grad, norm), eps, norm)
        delta.requires_grad_(True)
    return delta.detach()


def adversarial_perturbation(
    fn: Fn,
    x: Tensor,
    eps: float,
    norm: str = "l2",
    steps: int = 1,
    step_size: float | None = None,
) -> Tensor:
    """Detached delta with per-row ||delta|| <= eps that approximately maximises
    ||fn(x + delta) - fn(x)||^2, by projected gradient ascent (PGD).

    l2 steps follow the row-normalised gradient, linf steps its sign. `step_size` defaults to eps
    for one step (FGSM) and 2.5 * eps / steps otherwise. The objective has zero gradient at
    delta = 0, so the ascent starts from a random point of norm eps * 1e-3 (its first step is then
    one power iteration towards the most sensitive direction). Only input gradients are taken, so
    parameters of modules inside fn receive no .grad.
    """
    x = x.detach()
    with torch.no_grad():
        reference = fn(x)
    return _pgd(fn, x, reference, eps, norm, steps, step_size)


def robust_loss(
    fn: Fn,
    x: Tensor,
    eps: float,
    norm: str = "l2",
    steps: int = 1,
    step_size: float | None = None,
    reference: Tensor | None = None,
) -> Tensor:
    """Mean over rows of ||fn(x + delta) - fn(x)||^2 for the adversarial delta of
    `adversarial_perturbation`; differentiable w.r.t. fn's parameters, fn(x) is the fixed target
    (pass it as `reference` where it is already computed)."""
    x = x.detach()
    if reference is None:
        with torch.no_grad():
            reference = fn(x)
    reference = reference.detach()
    delta = _pgd(fn, x, reference, eps, norm, steps, step_size)
    return (fn(x + delta) - reference).pow(2).sum() / x.shape[:-1].numel()
