"""AOL: almost-orthogonal layers (Prach & Lampert 2022), a rescaling with spectral norm <= 1."""

from __future__ import annotations

from torch import Tensor

from lipctl.lipschitz.family import SIGMA_MARGIN, LipschitzLinear, register_family


def aol_rescale(weight: Tensor) -> Tensor:
    """W diag(d) with d_j = (sum_i |W'W|_ij)^(-1/2), per member of a [..., out, in] weight.

    The result has spectral norm <= 1 (Prach & Lampert 2022, Theorem 1); a zero column gets
    d_j = 0 (it stays zero, and its gradient stays finite)."""
    gram = (weight.transpose(-2, -1) @ weight).abs().sum(dim=-2)
    nonzero = gram > 0
    scale = gram.where(nonzero, 1.0).rsqrt().where(nonzero, 0.0)
    return weight * scale.unsqueeze(-2)


@register_family("aol")
class AOLLinear(LipschitzLinear):
    """AOL re-parametrisation: the effective weight is `bound` times `aol_rescale(W)`, so its
    spectral norm is at most `bound` by construction (no power iteration, no projection).

    Each input column is divided by the square root of its row sum of |W'W|; the bound is tight
    when W's columns are orthogonal and loose otherwise. Training mode differentiates through
    the rescaling in the weight's dtype; eval mode computes it in float64 and shrinks it by a
    relative 1e-6 so the effective weight's spectral norm stays <= `bound` after rounding.
    `bound=None` gives a plain linear layer.
    """

    def constrained_weight(self) -> Tensor:
        if self.training:
            return aol_rescale(self.weight) * self.bound
        weight = aol_rescale(self.weight.double()) * (self.bound / (1 + SIGMA_MARGIN))
        return weight.to(self.weight.dtype)
