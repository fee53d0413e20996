"""Orthogonal layers: the Cayley transform of a skew-symmetric parameter, times the bound."""

from __future__ import annotations

import torch
from torch import Tensor

from lipctl.lipschitz.family import SIGMA_MARGIN, LipschitzLinear, register_family


def cayley_semi_orthogonal(weight: Tensor) -> Tensor:
    """A semi-orthogonal matrix (all singular values 1) of the same [..., out, in] shape.

    With n = max(out, in) and k = min(out, in), the (transposed, if wide) weight [n, k] is
    padded to P [n, n] with zeros, A = P - P' is skew-symmetric, and the result is the first k
    columns of the Cayley transform Q = (I + A)^-1 (I - A), which is orthogonal for every skew A
    (I + A is always invertible): one batched solve with k right-hand sides, differentiable."""
    wide = weight.shape[-2] < weight.shape[-1]
    tall = weight.transpose(-2, -1) if wide else weight
    n, k = tall.shape[-2:]
    padded = torch.cat([tall, tall.new_zeros(*tall.shape[:-1], n - k)], dim=-1)
    skew = padded - padded.transpose(-2, -1)
    eye = torch.eye(n, dtype=weight.dtype, device=weight.device)
    q = torch.linalg.solve(eye + skew, (eye - skew)[..., :k])
    return q.transpose(-2, -1) if wide else q


@register_family("orthogonal")
class OrthogonalLinear(LipschitzLinear):
    """Orthogonal re-parametrisation: the effective weight is `bound` times a semi-orthogonal
    matrix (Cayley transform of the raw weight), so every singular value equals `bound`.

    A gradient-norm-preserving layer: with norm-preserving activations (GroupSort, MaxMin) the
    whole network keeps gradient norms. The Cayley map covers the orthogonal matrices without
    eigenvalue -1. Training mode differentiates through the solve in the weight's dtype; eval
    mode solves in float64 and shrinks the result by a relative 1e-6 so the effective weight's
    spectral norm stays <= `bound` after rounding. `bound=None` gives a plain linear layer.
    """

    def constrained_weight(self) -> Tensor:
        if self.training:
            return cayley_semi_orthogonal(self.weight) * self.bound
        weight = cayley_semi_orthogonal(self.weight.double()) * (self.bound / (1 + SIGMA_MARGIN))
        return weight.to(self.weight.dtype)
