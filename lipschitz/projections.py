"""Projection families (Newhouse et al. 2025): the raw weight is projected after each optimiser
step, so training uses a plain linear layer whose weight stays (about) inside the spectral ball.

Three projections of each member's weight W onto spectral norm <= `bound`:
- "soft_cap": two odd cubic steps of W / bound, M <- M (I - a M'M) then M <- M (I + a M'M);
  together they map every singular value s (in units of the bound) to
  s (1 - t^2 (3 - 3t + t^2)) with t = a s^2 (`soft_cap_polynomial`), and the strength a is the
  smallest that maps every s <= 1 + delta back to <= 1, where delta bounds the spectral norm of
  the update just made, relative to the bound (`soft_cap_strength`): the update's Frobenius
  norm, at most the largest update the optimiser can make;
- "hammer": one power-iteration step on persistent vectors gives the top singular pair
  (u, s, v); if s > bound, W <- W - (s - bound) u v';
- "svd_clip": W <- U min(S, bound) V', exact.

The polynomial and power-iteration projections are invariants under bounded updates, not proofs:
in eval mode (certificates, export, evaluation) the effective weight is
W * min(1, bound / exact sigma), so the certified map never exceeds the bound.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

from lipctl.lipschitz.family import LipschitzLinear, check_bound, power_step, register_family


class ProjectedLinear(LipschitzLinear):
    """Base of the projection families: forward uses the raw weight in training mode and
    W * min(1, bound / exact sigma) in eval mode; `post_step` replaces each member's weight
    by `project(weight)` in place (one batched call on [E, out, in] stacks, keeping the
    parameter's storage so optimiser state stays attached). The initial weight is scaled into
    the ball (sigma <= bound), so every family's invariant holds from the first step.
    """

    def reset_parameters(self) -> None:
        """nn.Linear's initialisation, then each member scaled to spectral norm <= `bound`."""
        super().reset_parameters()
        if self.bound is not None:
            with torch.no_grad():
                self.weight.mul_(self.cap_factor())

    def cap_factor(self) -> Tensor:
        """min(1, bound / exact sigma) per member, shaped to multiply the weight."""
        factor = (self.bound / self.exact_sigma()).clamp(max=1.0)
        return factor.to(self.weight.dtype)[..., None, None]

    def constrained_weight(self) -> Tensor:
        return self.weight if self.training else self.weight * self.cap_factor()

    def project(self, weight: Tensor) -> Tensor:
        """The projected weight for a [..., out, in] weight (members independent)."""
        raise NotImplementedError

    @torch.no_grad()
    def post_step(self) -> None:
        """Project the weight in place after an optimiser step."""
        if self.bound is not None:
            self.weight.copy_(self.project(self.weight))


def soft_cap_polynomial(s: float | Tensor, strength: float) -> float | Tensor:
    """Where the soft cap sends a singular value s (in units of the bound): the composition
    s1 = s (1 - a s^2), s1 (1 + a s1^2) equals s (1 - t^2 (3 - 3t + t^2)) with t = a s^2."""
    t = strength * s * s
    return s * (1 - t * t * (3 - 3 * t + t * t))


# d/ds [s (1 - t^2 (3 - 3t + t^2))] = 1 - 15 t^2 + 21 t^3 - 9 t^4 = (1 - 3t)(1 + 3t (1 - t)^2):
# the soft cap's map increases in s while a s^2 < 1/3 and decreases after.
PEAK_T = 1 / 3
# The strength at which the map's peak is exactly 1: enough for any singular value below the
# point where the first step's factor (1 - a s^2) turns negative.
MAX_STRENGTH = PEAK_T * soft_cap_polynomial(1.0, PEAK_T) ** 2
MAX_DELTA = 1 / math.sqrt(MAX_STRENGTH) - 1  # largest relative update the soft cap can absorb


def _strengths(deltas: Tensor) -> Tensor:
    """`soft_cap_strength` of every entry of a float64 tensor of deltas in (0, MAX_DELTA]: a
    bisection on the strength, all entries at once."""
    lo, hi = torch.zeros_like(deltas), torch.full_like(deltas, MAX_STRENGTH)
    for _ in range(100):  # the largest singular value's image falls as the strength grows
        a = 0.5 * (lo + hi)
        peak = torch.minimum(1 + deltas, (PEAK_T / a).sqrt())  # where s -> image is largest
        capped = soft_cap_polynomial(peak, a) <= 1.0
        lo, hi = torch.where(capped, lo, a), torch.where(capped, a, hi)
    return hi


def check_delta(delta: float) -> None:
    """Raise ValueError unless the soft cap can absorb a relative update `delta`."""
    if not 0 < delta <= MAX_DELTA:
        raise ValueError(f"the soft cap absorbs updates of at most {MAX_DELTA:.3f} x bound in "
                         f"spectral norm, got max_update / bound = {delta:g}: lower lr or "
                         "max_update, or use hammer or svd_clip")


@lru_cache(maxsize=256)
def soft_cap_strength(delta: float) -> float:
    """The smallest strength a such that the soft cap maps every singular value in
    [0, 1 + delta] (units of the bound) to [0, 1]: a cap that holds under updates whose spectral
    norm is at most delta times the bound. Solved by bisection, cached per delta."""
    check_delta(delta)
    return float(_strengths(torch.tensor([delta], dtype=torch.float64))[0])


# the strengths for relative updates on a geometric grid up to MAX_DELTA: a layer looks up the
# grid point at or above its update's delta, so the strength it applies is never too weak
STRENGTH_GRID = torch.logspace(-9, math.log10(MAX_DELTA), 2048, dtype=torch.float64)
STRENGTH_GRID[-1] = MAX_DELTA
STRENGTH_TABLE = _strengths(STRENGTH_GRID)


def grid_strength(delta: Tensor) -> Tensor:
    """The tabulated strength for each relative update in `delta` (<= MAX_DELTA): that of the
    nearest grid point at or above it, at least as strong as `soft_cap_strength(delta)`."""
    grid, table = STRENGTH_GRID.to(delta.device), STRENGTH_TABLE.to(delta.device)
    index = torch.searchsorted(grid, delta.double()).clamp(max=len(grid) - 1)
    return table[index]


def _odd_cubic_step(m: Tensor, c: float) -> Tensor:
    """M + c M M'M (singular values s -> s (1 + c s^2)), with the Gram matrix on the smaller
    side."""
    if m.shape[-2] <= m.shape[-1]:
        return m + c * ((m @ m.mT) @ m)
    return m + c * (m @ (m.mT @ m))


ADAM_LR = 3e-4  # the learners' default rate: a soft cap's update bound before it is coupled


@register_family("soft_cap")
class SoftCapLinear(ProjectedLinear):
    """Spectral soft cap after each optimiser step (see the module docstring).

    `max_update` is the largest spectral norm one optimiser update of this weight can have.
    Given, it is fixed; left None, `make_optimizer` couples it to the optimiser that trains the
    layer (`set_update_bound`): Muon's updates have a known spectral norm, and Adam moves each
    entry by about its rate lr at most, so an update's spectral norm is at most its Frobenius
    norm, lr * sqrt(out * in) (reached by rank-one sign patterns, the shape of a linear layer's
    per-sample gradient). Until coupled it assumes Adam at ADAM_LR.

    Each step applies the strength for the update it just made: the layer keeps the weight it
    left after its last projection (a buffer, not saved), and the update's Frobenius norm,
    capped at `max_update`, bounds its spectral norm, so a weight inside the ball stays inside
    while small updates are not shrunk as hard as the largest one would need. A loaded weight
    counts as projected; one changed in place from outside gets at most the strength for
    `max_update`.
    """

    def __init__(self, in_features: int, out_features: int, bound: float | None = 1.0,
                 ensemble_size: int | None = None, bias: bool = True, scale: float = 1.0,
                 max_update: float | None = None):
        check_bound(max_update, "max_update")
        super().__init__(in_features, out_features, bound, ensemble_size, bias, scale)
        self.fixed_update = max_update is not None
        self.max_update, self.strength = 0.0, None
        self._couple(ADAM_LR * math.sqrt(in_features * out_features) if max_update is None
                     else float(max_update))
        self.register_buffer("projected", self.weight.detach().clone(), persistent=False)
        self.register_load_state_dict_post_hook(SoftCapLinear._loaded)

    @staticmethod
    @torch.no_grad()
    def _loaded(layer: SoftCapLinear, incompatible_keys: object) -> None:
        """A loaded weight counts as projected (a saved weight is one: every step ends with
        the projection), so a resumed run applies the strengths the uninterrupted one would."""
        layer.projected.copy_(layer.weight)

    def _couple(self, max_update: float) -> None:
        self.max_update = max_update
        if self.bound is not None:
            self.strength = soft_cap_strength(max_update / self.bound)

    def set_update_bound(self, spectral_norm: float) -> None:
        if not self.fixed_update:
            self._couple(spectral_norm)

    def project(self, weight: Tensor, strength: float | Tensor | None = None) -> Tensor:
        """The soft-capped weight, at `strength` (a number, or one per member shaped
        [..., 1, 1]; default: the strength for `max_update`)."""
        strength = self.strength if strength is None else strength
        m = _odd_cubic_step(weight / self.bound, -strength)
        return _odd_cubic_step(m, strength) * self.bound

    def step_strength(self) -> Tensor:
        """Per member, the strength for the update made since the last projection."""
        update = torch.linalg.matrix_norm(self.weight - self.projected)
        delta = update.clamp(max=self.max_update) / self.bound
        return grid_strength(delta).to(self.weight.dtype)[..., None, None]

    @torch.no_grad()
    def post_step(self) -> None:
        if self.bound is not None:
            self.weight.copy_(self.project(self.weight, self.step_strength()))
            self.projected.copy_(self.weight)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", max_update={self.max_update:g}"


@register_family("hammer")
class HammerLinear(ProjectedLinear):
    """Spectral hammer after each optimiser step: one power-iteration step on persistent
    vectors u, v (buffers) estimates the top singular pair, and a top singular value above
    `bound` is set to `bound`. An invariant for updates that raise at most one singular value
    above the bound (rank-one updates) once the power iteration has converged; Adam's updates
    raise several, and the hammer lowers one per step, so the raw weight can stay well above
    the bound (1.1-1.5x measured on regressions), which eval mode then caps: the evaluated
    function is not quite the trained one. Prefer soft_cap or svd_clip with Adam."""

    def __init__(self, in_features: int, out_features: int, bound: float | None = 1.0,
                 ensemble_size: int | None = None, bias: bool = True, scale: float = 1.0):
        super().__init__(in_features, out_features, bound, ensemble_size, bias, scale)
        if bound is not None:
            self.add_power_vectors()

    def project(self, weight: Tensor) -> Tensor:
        wv, v = power_step(weight, self.u)
        sigma = torch.linalg.vector_norm(wv, dim=-1, keepdim=True)
        u = wv / sigma.clamp_min(1e-12)
        self.u.copy_(u)
        self.v.copy_(v)
        excess = (sigma - self.bound).clamp_min(0.0)
        return weight - (excess * u).unsqueeze(-1) * v.unsqueeze(-2)


@register_family("svd_clip")
class SVDClipLinear(ProjectedLinear):
    """Singular values clipped at `bound` after each optimiser step (exact, one SVD per
    member)."""

    def project(self, weight: Tensor) -> Tensor:
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        return (u * s.clamp(max=self.bound).unsqueeze(-2)) @ vh
