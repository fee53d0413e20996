"""Spectral re-parametrisation: each weight divided by (or capped at) its spectral norm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lipctl.lipschitz.family import LipschitzLinear, power_step, register_family

MODES = ("normalize", "cap")


@register_family("spectral")
class SpectralLinear(LipschitzLinear):
    """Spectral re-parametrisation: the weight's spectral norm is held to `bound`.

    mode "normalize" uses W * bound / sigma, mode "cap" uses W * min(1, bound / sigma), where
    sigma is the largest singular value of each member's weight. In training mode sigma comes
    from power iteration on persistent vectors (differentiable, as torch's spectral_norm); it
    underestimates sigma slightly. In eval mode sigma is the exact float64 spectral norm, cached
    until the weight changes, inflated by a relative 1e-6 so that the effective weight's spectral
    norm is at most `bound` after rounding. `bound=None` gives a plain linear layer.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bound: float | None = 1.0,
        mode: str = "normalize",
        ensemble_size: int | None = None,
        power_iterations: int = 1,
        bias: bool = True,
        scale: float = 1.0,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if power_iterations < 1:
            raise ValueError(f"power_iterations must be at least 1, got {power_iterations}")
        super().__init__(in_features, out_features, bound, ensemble_size, bias, scale)
        self.mode, self.power_iterations = mode, power_iterations
        if bound is not None:
            self.add_power_vectors()

    def _power_sigma(self) -> Tensor:
        """Differentiable sigma after `power_iterations` updates of the stored u, v (the
        gradient flows through W only, as in torch's spectral_norm)."""
        u = self.u
        for _ in range(self.power_iterations - 1):
            with torch.no_grad():
                u = F.normalize(power_step(self.weight, u)[0], dim=-1)
        wv, v = power_step(self.weight, u)
        sigma = torch.linalg.vector_norm(wv, dim=-1)
        with torch.no_grad():
            self.u.copy_(wv / sigma.clamp_min(1e-12).unsqueeze(-1))
            self.v.copy_(v)
        return sigma

    def constrained_weight(self) -> Tensor:
        sigma = self._power_sigma() if self.training else self.exact_sigma()
        factor = self.bound / sigma.clamp_min(1e-12)
        if self.mode == "cap":
            factor = factor.clamp(max=1.0)
        return self.weight * factor.to(self.weight.dtype)[..., None, None]

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", mode={self.mode}" if self.bound is not None else "")
