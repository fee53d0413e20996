"""The seam every Lipschitz layer family plugs into.

A family is one module that subclasses `LipschitzLinear` and registers itself under a name with
`register_family`: a linear map x -> x W' + b (or E of them stacked as [E, out, in], mapping
[E, B, in] to [E, B, out]) whose *effective* weight carries the family's constraint. The family
says how the effective weight follows from its parameters (`constrained_weight`: a
re-parametrisation, or the raw weight for a family that projects after each optimiser step), and
optionally what to do after each optimiser step (`post_step`). Everything else is shared:
forward, the certificate (every tier reads the effective weights), the plain-torch export,
weight sharing within an update, and the output `scale` that carries a network's Lipschitz
level (see `lipschitz_mlp`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SIGMA_MARGIN = 1e-6  # exact spectral norms are inflated by this relative margin (float rounding)


def check_bound(bound: float | None, name: str = "bound") -> None:
    """Raise ValueError unless `bound` is None or a positive finite number."""
    if bound is None:
        return
    if isinstance(bound, bool) or not isinstance(bound, int | float) or not (
            math.isfinite(bound) and bound > 0):
        raise ValueError(f"{name} must be a positive number or None, got {bound!r}")


class LipschitzLinear(nn.Module):
    """Base class of a Lipschitz layer family (see the module docstring).

    `bound` is the spectral norm the family holds the weight to (None: a plain linear layer);
    `scale` multiplies the constrained weight (1 by default), so a layer's effective weight has
    spectral norm at most `scale * bound`, reached through a fixed factor rather than through
    how far the optimiser has grown the raw weight. With `ensemble_size=E` the weight is
    [E, out, in] and the layer maps [E, B, in] to [E, B, out].
    """

    def __init__(self, in_features: int, out_features: int, bound: float | None = 1.0,
                 ensemble_size: int | None = None, bias: bool = True, scale: float = 1.0):
        super().__init__()
        check_bound(bound)
        check_bound(scale, "scale")
        if ensemble_size is not None and ensemble_size < 1:
            raise ValueError(f"ensemble_size must be positive or None, got {ensemble_size}")
        self.in_features, self.out_features = in_features, out_features
        self.bound, self.scale, self.ensemble_size = bound, float(scale), ensemble_size
        lead = () if ensemble_size is None else (ensemble_size,)
        self.weight = nn.Parameter(torch.empty(*lead, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(*lead, out_features)) if bias else None
        self._exact_sigma: tuple[tuple, Tensor] | None = None
        self._shared_weight: Tensor | None = None  # set by `shared_weights`
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's initialisation, applied to each ensemble member separately."""
        for w in self.weight.view(-1, self.out_features, self.in_features):
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        if self.bias is not None:
            limit = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -limit, limit)

    def add_power_vectors(self) -> None:
        """Persistent left and right singular-vector estimates `u`, `v` (buffers, per member)
        for families that run power iteration (`power_step`)."""
        lead = () if self.ensemble_size is None else (self.ensemble_size,)
        self.register_buffer("u", F.normalize(torch.randn(*lead, self.out_features), dim=-1))
        self.register_buffer("v", F.normalize(torch.randn(*lead, self.in_features), dim=-1))

    def constrained_weight(self) -> Tensor:
        """The weight with the family's constraint applied (spectral norm <= `bound`), in the
        current mode; called only when `bound` is set. Families override it."""
        raise NotImplementedError

    activations: tuple[str, ...] | None = None  # the hidden activations it allows (None: any)

    def post_step(self) -> None:
        """What the family does to its parameters after each optimiser step (default: none)."""

    def set_update_bound(self, spectral_norm: float) -> None:
        """Told by `make_optimizer` the largest spectral norm one update of its weight can have
        (default: ignored; the soft cap couples its strength to it)."""

    def join(self, previous: LipschitzLinear | None, output: bool) -> None:
        """Told by `lipschitz_mlp` which layer precedes this one and whether it is the output
        layer (default: ignored; chained families build their weights from both)."""

    def lmi_multiplier(self) -> Tensor | None:
        """The LipSDP multiplier of the activation after this layer under which the network
        is certified by construction (default: None, no such multiplier)."""
        return None

    def train(self, mode: bool = True) -> LipschitzLinear:
        """Switch mode; every switch drops the cached exact sigma, because optimisers (fused or
        foreach Adam among them) may update the weight without bumping its version counter."""
        self._exact_sigma = None
        return super().train(mode)

    def exact_sigma(self) -> Tensor:
        """Exact float64 spectral norm of the raw weight per member, inflated by SIGMA_MARGIN,
        cached until the weight changes (its version, storage, dtype or device) or the mode
        switches."""
        w = self.weight
        key = (w._version, w.data_ptr(), w.dtype, w.device)
        if self._exact_sigma is None or self._exact_sigma[0] != key:
            sigma = torch.linalg.matrix_norm(w.detach().double(), ord=2)
            self._exact_sigma = (key, sigma * (1 + SIGMA_MARGIN))
        return self._exact_sigma[1]

    def effective_weight(self) -> Tensor:
        """The weight forward uses: `scale` times the constrained weight (the raw weight where
        `bound` is None), or the one `shared_weights` set for the enclosing block."""
        if self._shared_weight is not None:
            return self._shared_weight
        weight = self.weight if self.bound is None else self.constrained_weight()
        return weight if self.scale == 1.0 else weight * self.scale

    def forward(self, x: Tensor) -> Tensor:
        weight = self.effective_weight()
        if self.ensemble_size is None:
            return F.linear(x, weight, self.bias)
        if x.dim() != 3 or x.shape[0] != self.ensemble_size:
            raise ValueError(
                f"ensemble layer expects input [{self.ensemble_size}, batch, {self.in_features}],"
                f" got {list(x.shape)}"
            )
        if self.bias is None:
            return torch.bmm(x, weight.transpose(1, 2))
        return torch.baddbmm(self.bias.unsqueeze(1), x, weight.transpose(1, 2))

    @torch.no_grad()
    def export(self) -> nn.Linear:
        """A plain nn.Linear holding the eval-mode effective weight (non-ensemble layers): the
        same function, traceable and exportable, certifying to the same bound."""
        if self.ensemble_size is not None:
            raise ValueError("an ensemble layer has no single nn.Linear export")
        training = self.training
        weight = self.eval().effective_weight()
        self.train(training)
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=weight.device, dtype=weight.dtype)
        linear.weight.copy_(weight)
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        text = f"in_features={self.in_features}, out_features={self.out_features}"
        if self.ensemble_size is not None:
            text += f", ensemble_size={self.ensemble_size}"
        if self.bound is not None:
            text += f", bound={self.bound:g}"
        if self.scale != 1.0:
            text += f", scale={self.scale:g}"
        return text + f", bias={self.bias is not None}"


def power_step(weight: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """One power-iteration step for the top singular pair of each [..., out, in] matrix from
    the left vector u: v = W'u / ||W'u|| (no gradient) and W v (the gradient flows through W),
    whose norm is the singular value estimate and whose direction the next u."""
    with torch.no_grad():
        v = F.normalize((u.unsqueeze(-2) @ weight).squeeze(-2), dim=-1)
    return (weight @ v.unsqueeze(-1)).squeeze(-1), v


FAMILIES: dict[str, type[LipschitzLinear]] = {}


def register_family(name: str) -> Callable[[type[LipschitzLinear]], type[LipschitzLinear]]:
    """Class decorator: make a LipschitzLinear subclass selectable as `lipschitz.layer=name`."""
    def register(cls: type[LipschitzLinear]) -> type[LipschitzLinear]:
        if not issubclass(cls, LipschitzLinear):
            raise TypeError(f"{cls.__name__} must subclass LipschitzLinear")
        if FAMILIES.get(name, cls) is not cls:
            raise ValueError(f"layer family {name!r} is already registered")
        FAMILIES[name] = cls
        return cls
    return register


def takes_option(family: type[LipschitzLinear], name: str) -> bool:
    """Whether the family's constructor has a parameter `name` (e.g. "mode")."""
    return name in inspect.signature(family).parameters


def layer_family(layer: str | type[LipschitzLinear]) -> type[LipschitzLinear]:
    """The family class for a registered name (or the class itself)."""
    if isinstance(layer, type) and issubclass(layer, LipschitzLinear):
        return layer
    if layer not in FAMILIES:
        raise ValueError(f"unknown layer family {layer!r}; choose from {', '.join(FAMILIES)}")
    return FAMILIES[layer]


def lipschitz_layers(module: nn.Module) -> list[LipschitzLinear]:
    """The LipschitzLinear layers of `module` whose effective weight is not the raw one."""
    return [m for m in module.modules()
            if isinstance(m, LipschitzLinear) and (m.bound is not None or m.scale != 1.0)]


@torch.no_grad()
def post_step(module: nn.Module) -> None:
    """Apply every layer's post-step (projection families) after an optimiser step."""
    for layer in lipschitz_layers(module):
        layer.post_step()


@contextmanager
def shared_weights(module: nn.Module, detach: bool = False,
                   weights: dict[LipschitzLinear, Tensor] | None = None
                   ) -> Iterator[dict[LipschitzLinear, Tensor]]:
    """Within the block, every constrained layer of `module` computes its effective weight once
    (e.g. one power iteration in training mode) and every forward reuses it; the block yields
    them by layer. `detach=True` shares constant weights (for forwards that need no gradient
    with respect to the layer's parameters); `weights` reuses those another block yielded."""
    layers = lipschitz_layers(module)
    shared = {}
    for layer in layers:
        weight = layer.effective_weight() if weights is None else weights[layer]
        shared[layer] = weight.detach() if detach else weight
        # a plain attribute, never registered as a parameter (the weight may be one itself)
        object.__setattr__(layer, "_shared_weight", shared[layer])
    try:
        yield shared
    finally:
        for layer in layers:
            object.__setattr__(layer, "_shared_weight", None)
