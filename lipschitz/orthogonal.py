"""Orthogonal layers: the Cayley transform of a skew-symmetric parameter, times the bound."""

from __future__ import annotations

import torch
from torch import Tensor

from lipctl.lipschitz.family import SIGMA_MARGIN, LipschitzLinear, register_family


def cayley_semi_orthogonal(weight: Tensor) -> Tensor:
    """A semi-orthogonal matrix (all singular values 1) of the same [..., out, in] shape.

    With k = min(out, in), the (transposed, if wide) weight [n, k] = [U; V] (U its top k x k
    block) defines the skew-symmetric S = [[U - U', -V'], [V, 0]], and the result is the first k
    columns of the Cayley transform Q = (I + S)^-1 (I - S), orthogonal for every skew S. By block
    elimination they are [2X - I; -2 V X] with X = (I + A)^-1, A = U - U' + V'V: one batched
    k x k inverse, differentiable (I + A is invertible: its symmetric part I + V'V is positive
    definite)."""
    wide = weight.shape[-2] < weight.shape[-1]
    tall = weight.transpose(-2, -1) if wide else weight
    k = tall.shape[-1]
    u, v = tall[..., :k, :], tall[..., k:, :]
    eye = torch.eye(k, dtype=weight.dtype, device=weight.device)
    x = torch.linalg.inv(eye + u - u.transpose(-2, -1) + v.transpose(-2, -1) @ v)
    q = torch.cat([2 * x - eye, -2 * v @ x], dim=-2)
    return q.transpose(-2, -1).contiguous() if wide else q  # F.linear's layout, as exported


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
