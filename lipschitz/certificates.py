"""Global l2 Lipschitz certificates for MLPs: three upper-bound tiers and a sampled lower bound.

Tiers, loosest and cheapest first:
- "product": product of the layers' exact spectral norms; valid for any 1-Lipschitz activations.
- "eclipse": ECLipsE-Fast, LipSDP-neuron solved layer by layer in closed form.
- "lipsdp": LipSDP-neuron with per-neuron multipliers optimised by first-order descent.
Every tier also takes the by-construction bound of a network whose layers carry their own LMI
multipliers (lipctl.lipschitz.chained) where that is smaller: the LMI at those multipliers,
checked in float64 like the others.
The two tighter tiers need elementwise activations with slopes in [0, 1] (ReLU, leaky ReLU, tanh,
sigmoid, identity); on nets with MaxMin/GroupSort they fall back to the product bound. Their
multipliers only become a certificate after a float64 Cholesky check of the full LipSDP matrix.

See lipctl.lipschitz.lipsdp for the LipSDP-neuron derivation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipctl.lipschitz.family import LipschitzLinear
from lipctl.lipschitz.layers import GroupSort, MaxMin
from lipctl.lipschitz.lipsdp import (
    certified_rho,
    check_lmi,
    eclipse_fast_multipliers,
    lipsdp_matrix,
    lipsdp_multipliers,
    multiplier_rho,
    to_float64,
)

__all__ = [
    "TIERS",
    "Certificate",
    "certified_rho",
    "certify",
    "check_lmi",
    "construction_bound",
    "eclipse_fast_bound",
    "eclipse_fast_multipliers",
    "lipsdp_bound",
    "lipsdp_matrix",
    "lipsdp_multipliers",
    "lower_bound",
    "mlp_layers",
    "upper_bound",
]

ELEMENTWISE = frozenset({"relu", "leaky_relu", "tanh", "sigmoid", "identity", "elementwise"})
_ACTIVATION_KINDS = (
    (nn.ReLU, "relu"),
    (nn.Tanh, "tanh"),
    (nn.Sigmoid, "sigmoid"),
    (nn.Identity, "identity"),
    (MaxMin, "maxmin"),
    (GroupSort, "groupsort"),
)

Net = nn.Module | Sequence[Tensor]
Bound = tuple[float, str]  # (value, method)


@dataclass(frozen=True)
class Certificate:
    """A certified upper bound on the l2 Lipschitz constant, an optional sampled lower bound,
    the method that produced the upper bound and the wall time it took."""

    upper: float
    lower: float | None
    method: str
    seconds: float

    def to_dict(self) -> dict[str, float | str | None]:
        """Plain floats and strings, safe for torch.load(weights_only=True)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Certificate:
        lower = data.get("lower")
        return cls(upper=float(data["upper"]), lower=None if lower is None else float(lower),
                   method=str(data["method"]), seconds=float(data["seconds"]))


class _Affine(NamedTuple):
    weight: Tensor
    bias: Tensor | None


class _Activation(NamedTuple):
    kind: str
    module: nn.Module


def _leaves(module: nn.Module):
    if isinstance(module, nn.Sequential):
        for child in module:
            yield from _leaves(child)
    else:
        yield module


def _affine(module: nn.Module, member: int | None) -> _Affine | None:
    if isinstance(module, nn.Linear):
        weight, bias = module.weight, module.bias
    elif isinstance(module, LipschitzLinear):
        weight, bias = module.effective_weight(), module.bias
        if module.ensemble_size is not None:
            if member is None or not 0 <= member < module.ensemble_size:
                raise ValueError(f"net holds an ensemble of {module.ensemble_size}: pass "
                                 f"member in [0, {module.ensemble_size}), got {member}")
            weight, bias = weight[member], None if bias is None else bias[member]
    else:
        return None
    return _Affine(to_float64(weight), None if bias is None else to_float64(bias))


def _activation_kind(module: nn.Module) -> str:
    if isinstance(module, nn.LeakyReLU):
        if not 0 <= module.negative_slope <= 1:
            raise ValueError(f"LeakyReLU slope {module.negative_slope} is outside [0, 1]: "
                             "not supported by the certificate")
        return "leaky_relu"
    for cls, kind in _ACTIVATION_KINDS:
        if isinstance(module, cls):
            return kind
    raise ValueError(f"{type(module).__name__} is not supported by the certificate")


@torch.no_grad()
def _layers(net: nn.Module, member: int | None) -> list[_Affine | _Activation]:
    """The net's leaves in order: float64 affine maps and validated activations."""
    layers: list[_Affine | _Activation] = []
    for module in _leaves(net):
        affine = _affine(module, member)
        layers.append(affine or _Activation(_activation_kind(module), module))
    return layers


def mlp_layers(net: Net, member: int | None = None) -> tuple[list[Tensor], list[str]]:
    """Float64 effective weight matrices of an MLP and the activation kind between each pair.

    `net` is an nn.Sequential (nested ones allowed) of nn.Linear / Lipschitz layers and supported
    activations, taken in its current mode (certify in eval mode); `member` picks one member of
    ensemble layers. Activations before the first or after the last linear layer are 1-Lipschitz
    and dropped; several between two layers are joined with "+", none is "identity". A plain
    list of weight matrices is taken as an MLP with elementwise slope-[0, 1] activations.
    """
    if isinstance(net, nn.Module):
        weights, kinds, gap = [], [], []
        for layer in _layers(net, member):
            if isinstance(layer, _Affine):
                if weights:
                    kinds.append("+".join(gap) or "identity")
                weights.append(layer.weight)
                gap = []
            else:
                gap.append(layer.kind)
    else:
        weights = [to_float64(w) for w in net]
        kinds = ["elementwise"] * (len(weights) - 1)
    if not weights:
        raise ValueError("the net has no linear layer to certify")
    for i in range(1, len(weights)):
        if weights[i].shape[1] != weights[i - 1].shape[0]:
            raise ValueError(f"layer {i} expects {weights[i].shape[1]} inputs but layer {i - 1} "
                             f"gives {weights[i - 1].shape[0]}")
    return weights, kinds


def _product(weights: list[Tensor], kinds: list[str]) -> Bound:
    return math.prod(float(torch.linalg.matrix_norm(w, ord=2)) for w in weights), "product"


def _fallback_label(kinds: list[str]) -> str | None:
    """The first activation that is not elementwise slope-restricted, if any."""
    parts = (part for kind in kinds for part in kind.split("+"))
    return next((part for part in parts if part not in ELEMENTWISE), None)


def _certified(weights: list[Tensor], multipliers: list[Tensor], rho: float, method: str,
               fallback: Bound) -> Bound:
    """The LMI-checked bound sqrt(rho'), or the fallback if it is looser or fails the check."""
    rho_checked = certified_rho(weights, multipliers, rho)
    if rho_checked is None:
        return fallback[0], f"{fallback[1]} ({method} LMI check failed)"
    return min((math.sqrt(rho_checked), method), fallback, key=lambda bound: bound[0])


def _eclipse(weights: list[Tensor], kinds: list[str]) -> Bound:
    product = _product(weights, kinds)
    label = _fallback_label(kinds)
    if label is not None:
        return product[0], f"product ({label})"
    multipliers, rho = eclipse_fast_multipliers(weights)
    return _certified(weights, multipliers, rho, "eclipse", product)


def _lipsdp(weights: list[Tensor], kinds: list[str], iterations: int = 300,
            lr: float = 0.1) -> Bound:
    eclipse = _eclipse(weights, kinds)
    if _fallback_label(kinds) is not None:
        return eclipse
    multipliers, rho = lipsdp_multipliers(weights, iterations, lr)
    return _certified(weights, multipliers, rho, "lipsdp", eclipse)


def upper_bound(net: Net, member: int | None = None) -> float:
    """Product of the exact spectral norms of the effective weights (any 1-Lipschitz
    activations)."""
    return _product(*mlp_layers(net, member))[0]


def eclipse_fast_bound(net: Net, member: int | None = None) -> float:
    """ECLipsE-Fast bound, LMI-checked and never above the product bound; nets with
    MaxMin/GroupSort get the product bound."""
    return _eclipse(*mlp_layers(net, member))[0]


def lipsdp_bound(net: Net, member: int | None = None, iterations: int = 300,
                 lr: float = 0.1) -> float:
    """First-order LipSDP-neuron bound, LMI-checked and never above the ECLipsE-Fast bound;
    nets with MaxMin/GroupSort get the product bound."""
    return _lipsdp(*mlp_layers(net, member), iterations=iterations, lr=lr)[0]


def _separate(x1: Tensor, x2: Tensor, min_gap: float, generator: torch.Generator) -> Tensor:
    """x2 moved away from x1 along their difference (or a random direction) where they are
    closer than min_gap."""
    gap = x2 - x1
    length = torch.linalg.vector_norm(gap, dim=-1, keepdim=True)
    random = F.normalize(torch.randn(gap.shape, generator=generator, dtype=gap.dtype), dim=-1)
    direction = torch.where(length > 0, gap / length.clamp_min(1e-300), random)
    return torch.where(length < min_gap, x1 + min_gap * direction, x2)


def lower_bound(net: nn.Module, data: Tensor, steps: int = 100, pairs: int = 256,
                member: int | None = None, seed: int = 0) -> float:
    """Sampled lower bound: the largest ratio ||f(x1) - f(x2)|| / ||x1 - x2|| found by Adam
    ascent on both points of each pair.

    Half of the pairs start at two data rows, half at a data row and a nearby point. The net is
    evaluated in its current mode (certify uses eval) with float64 copies of its effective
    weights, and pairs are kept at least 1e-3 * data std apart, so rounding error stays negligible:
    every reported ratio is attained by the net, hence at most its true Lipschitz constant.
    """
    layers = _layers(net, member)

    def f(x: Tensor) -> Tensor:
        for layer in layers:
            x = F.linear(x, *layer) if isinstance(layer, _Affine) else layer.module(x)
        return x

    n_in = next(layer for layer in layers if isinstance(layer, _Affine)).weight.shape[1]
    points = to_float64(data).reshape(-1, n_in)
    generator = torch.Generator().manual_seed(seed)
    scale = float(points.std()) if points.numel() > 1 else 0.0
    scale = scale if scale > 0 else 1.0
    x1 = points[torch.randint(len(points), (pairs,), generator=generator)]
    x2 = points[torch.randint(len(points), (pairs,), generator=generator)]
    nearby = x1 + 0.1 * scale * torch.randn(x1.shape, generator=generator, dtype=x1.dtype)
    x2 = torch.where(torch.arange(pairs)[:, None] % 2 == 0, nearby, x2)
    return pair_ratio_ascent(f, x1, x2, steps=steps, lr=3e-2 * scale, min_gap=1e-3 * scale,
                             generator=generator)


def pair_ratio_ascent(f: Callable[[Tensor], Tensor], x1: Tensor, x2: Tensor, steps: int,
                      lr: float, min_gap: float, generator: torch.Generator) -> float:
    """Largest ||f(x1) - f(x2)|| / ||x1 - x2|| over rows, after Adam ascent on both points.

    x1, x2 [P, n] are the starting pairs (f maps rows to rows); pairs are kept at least
    `min_gap` apart so rounding cannot inflate a ratio. Run it on a float64 copy of a network:
    every ratio it reports is attained, so it is a lower bound of the Lipschitz constant.
    """
    x1 = x1.detach().clone().requires_grad_(True)
    x2 = _separate(x1.detach(), x2.detach(), min_gap, generator).requires_grad_(True)
    optimiser = torch.optim.Adam([x1, x2], lr=lr)
    best = 0.0
    for step in range(steps + 1):
        ratio = (torch.linalg.vector_norm(f(x1) - f(x2), dim=-1)
                 / torch.linalg.vector_norm(x1 - x2, dim=-1))
        best = max(best, ratio.detach().max().item())
        if step == steps:
            break
        optimiser.zero_grad()
        (-ratio.sum()).backward()
        optimiser.step()
        with torch.no_grad():
            x2.copy_(_separate(x1, x2, min_gap, generator))
    return best


# LipSDP steps (and their rate) that absorb a tight construction's float32 rounding
CONSTRUCTION_REFINEMENT, REFINEMENT_LR = 10, 0.01


def _gain(layer: nn.Module) -> float:
    """The factor a layer's effective weight applies to its family's unit construction."""
    if not isinstance(layer, LipschitzLinear):
        return 1.0
    return (1.0 if layer.bound is None else layer.bound) * layer.scale


def _member(tensor: Tensor, layer: LipschitzLinear, member: int | None) -> Tensor:
    return tensor if layer.ensemble_size is None else tensor[member]


def construction_bound(net: nn.Module, member: int | None = None,
                       refine_iterations: int = CONSTRUCTION_REFINEMENT) -> Bound | None:
    """The by-construction bound of a net whose hidden layers carry LMI multipliers (chained
    families): with every weight divided by its layer's gain (bound x scale), sqrt(rho) at those
    multipliers, LMI-checked in float64, times the product of the gains (valid for elementwise
    activations slope-restricted to [0, 1]); None for any other net or a failed check.

    A tight construction (Sandwich) holds with rho = 1 in exact arithmetic; the float32 weights
    can need slightly more at the same multipliers. Then `refine_iterations` steps of LipSDP
    descent from those multipliers (`lipsdp_multipliers`) look for a rho <= 1."""
    linears = [m for m in _leaves(net) if isinstance(m, nn.Linear | LipschitzLinear)]
    hidden = linears[:-1]
    if not hidden or not all(isinstance(m, LipschitzLinear) and m.lmi_multiplier() is not None
                             for m in hidden):
        return None
    weights, kinds = mlp_layers(net, member)
    if _fallback_label(kinds) is not None:
        return None
    gains = [_gain(m) for m in linears]
    unit = [weight / gain for weight, gain in zip(weights, gains, strict=True)]
    multipliers = [_member(m.lmi_multiplier(), m, member) for m in hidden]
    rho = multiplier_rho(unit, multipliers)
    if rho is None or rho > 1:
        refined, refined_rho = lipsdp_multipliers(unit, refine_iterations, REFINEMENT_LR,
                                                  start=multipliers)
        if rho is None or refined_rho < rho:
            multipliers, rho = refined, refined_rho
    checked = certified_rho(unit, multipliers, rho) if math.isfinite(rho) else None
    if checked is None:
        return None
    return math.sqrt(checked) * math.prod(gains), "construction"


_TIER_BOUNDS = {"product": _product, "eclipse": _eclipse, "lipsdp": _lipsdp}
TIERS = tuple(_TIER_BOUNDS)


def certify(net: nn.Module, data: Tensor | None = None, tier: str = "eclipse",
            member: int | None = None) -> Certificate:
    """Certificate of `net` in eval mode (each module's training flag is restored): the tier's
    upper bound (or the by-construction bound where smaller), the sampled lower bound when
    data is given, and the seconds both took."""
    if tier not in _TIER_BOUNDS:
        raise ValueError(f"tier must be one of {TIERS}, got {tier!r}")
    modes = [(module, module.training) for module in net.modules()]
    start = time.perf_counter()
    net.eval()
    try:
        upper, method = _TIER_BOUNDS[tier](*mlp_layers(net, member))
        construction = construction_bound(net, member)
        if construction is not None and construction[0] < upper:
            upper, method = construction
        lower = None if data is None else lower_bound(net, data, member=member)
    finally:
        for module, training in modes:
            module.training = training
    return Certificate(upper, lower, method, time.perf_counter() - start)
