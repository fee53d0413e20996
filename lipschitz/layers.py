"""Spectrally constrained linear layers, 1-Lipschitz activations and MLPs built from them."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MODES = ("normalize", "cap")
GROUPSORT_SIZE = 4  # group size `lipschitz_mlp` uses for activation="groupsort"
SIGMA_MARGIN = 1e-6  # eval mode divides by sigma * (1 + margin) to absorb float rounding


def check_bound(bound: float | None) -> None:
    """Raise ValueError unless `bound` is None or a positive finite number."""
    if bound is not None and not (math.isfinite(bound) and bound > 0):
        raise ValueError(f"bound must be a positive number or None, got {bound}")


class SpectralLinear(nn.Module):
    """Linear layer (or batched ensemble of them) whose spectral norm is held to `bound`.

    mode "normalize" uses W * bound / sigma, mode "cap" uses W * min(1, bound / sigma), where
    sigma is the largest singular value of each member's weight. In training mode sigma comes
    from power iteration on persistent vectors (differentiable, as torch's spectral_norm); it
    underestimates sigma slightly. In eval mode sigma is the exact float64 spectral norm, cached
    until the weight changes, inflated by a relative 1e-6 so that the effective weight's spectral
    norm is at most `bound` after rounding. `bound=None` gives a plain linear layer.

    With `ensemble_size=E` the weight is [E, out, in] and the layer maps [E, B, in] to [E, B, out]:
    E independent layers in one batched matmul.
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
    ):
        super().__init__()
        check_bound(bound)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if ensemble_size is not None and ensemble_size < 1:
            raise ValueError(f"ensemble_size must be positive or None, got {ensemble_size}")
        if power_iterations < 1:
            raise ValueError(f"power_iterations must be at least 1, got {power_iterations}")
        self.in_features, self.out_features = in_features, out_features
        self.bound, self.mode = bound, mode
        self.ensemble_size, self.power_iterations = ensemble_size, power_iterations
        lead = () if ensemble_size is None else (ensemble_size,)
        self.weight = nn.Parameter(torch.empty(*lead, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(*lead, out_features)) if bias else None
        if bound is not None:
            self.register_buffer("u", F.normalize(torch.randn(*lead, out_features), dim=-1))
            self.register_buffer("v", F.normalize(torch.randn(*lead, in_features), dim=-1))
        self._exact_sigma: tuple[tuple, Tensor] | None = None
        self._shared_weight: Tensor | None = None  # set by `shared_spectral_weights`
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's initialisation, applied to each ensemble member separately."""
        members = self.weight.view(-1, self.out_features, self.in_features)
        for w in members:
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        if self.bias is not None:
            limit = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -limit, limit)

    def _power_sigma(self) -> Tensor:
        """Differentiable sigma after `power_iterations` updates of the stored u, v: with
        v = W'u / ||W'u|| and u <- W v / ||W v||, sigma = u'W v = ||W v|| (the gradient flows
        through W only, as in torch's spectral_norm)."""
        w = self.weight
        with torch.no_grad():
            u = self.u
            for _ in range(self.power_iterations - 1):
                v = F.normalize((u.unsqueeze(-2) @ w).squeeze(-2), dim=-1)
                u = F.normalize((w @ v.unsqueeze(-1)).squeeze(-1), dim=-1)
            v = F.normalize((u.unsqueeze(-2) @ w).squeeze(-2), dim=-1)
        wv = (w @ v.unsqueeze(-1)).squeeze(-1)
        sigma = torch.linalg.vector_norm(wv, dim=-1)
        with torch.no_grad():
            self.u.copy_(wv / sigma.clamp_min(1e-12).unsqueeze(-1))
            self.v.copy_(v)
        return sigma

    def train(self, mode: bool = True) -> SpectralLinear:
        """Switch mode; every switch drops the cached exact sigma, because optimisers (fused or
        foreach Adam among them) may update the weight without bumping its version counter."""
        self._exact_sigma = None
        return super().train(mode)

    def _cached_exact_sigma(self) -> Tensor:
        """Exact float64 spectral norm per member, recomputed after a mode switch or a change of
        the weight's version (in-place edits and state-dict loads in eval mode)."""
        w = self.weight
        key = (w._version, w.data_ptr(), w.dtype, w.device)
        if self._exact_sigma is None or self._exact_sigma[0] != key:
            sigma = torch.linalg.matrix_norm(w.detach().double(), ord=2)
            self._exact_sigma = (key, sigma * (1 + SIGMA_MARGIN))
        return self._exact_sigma[1]

    def effective_weight(self) -> Tensor:
        """The weight forward uses in the current mode (training: power iteration, eval: exact),
        or the one `shared_spectral_weights` computed for the enclosing block."""
        if self.bound is None:
            return self.weight
        if self._shared_weight is not None:
            return self._shared_weight
        sigma = self._power_sigma() if self.training else self._cached_exact_sigma()
        scale = self.bound / sigma.clamp_min(1e-12)
        if self.mode == "cap":
            scale = scale.clamp(max=1.0)
        return self.weight * scale.to(self.weight.dtype)[..., None, None]

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

    def extra_repr(self) -> str:
        text = f"in_features={self.in_features}, out_features={self.out_features}"
        if self.ensemble_size is not None:
            text += f", ensemble_size={self.ensemble_size}"
        if self.bound is not None:
            text += f", bound={self.bound:g}, mode={self.mode}"
        return text + f", bias={self.bias is not None}"


class GroupSort(nn.Module):
    """Sorts consecutive groups of `group_size` features (descending); 1-Lipschitz and
    norm-preserving, since it only permutes each input's coordinates."""

    def __init__(self, group_size: int):
        super().__init__()
        if group_size < 1:
            raise ValueError(f"group_size must be a positive integer, got {group_size}")
        self.group_size = group_size

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % self.group_size:
            raise ValueError(
                f"{type(self).__name__} needs a last dimension divisible by {self.group_size},"
                f" got {x.shape[-1]}"
            )
        groups = x.unflatten(-1, (-1, self.group_size))
        return groups.sort(dim=-1, descending=True).values.flatten(-2)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"


class MaxMin(GroupSort):
    """GroupSort with groups of two: each pair (a, b) becomes (max(a, b), min(a, b))."""

    def __init__(self):
        super().__init__(2)

    def extra_repr(self) -> str:
        return ""


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "maxmin": MaxMin,
    "groupsort": lambda: GroupSort(GROUPSORT_SIZE),
}


def lipschitz_mlp(
    in_features: int,
    out_features: int,
    hidden: Sequence[int],
    bound: float | None,
    activation: str = "relu",
    mode: str = "normalize",
    ensemble_size: int | None = None,
    layer_bound: float | None = None,
    free_output: bool = False,
) -> nn.Sequential:
    """MLP of SpectralLinear layers with a global Lipschitz bound split evenly over the layers.

    Each of the n layers gets bound**(1/n) and every activation is 1-Lipschitz, so the network's
    Lipschitz constant (l2, in eval mode) is at most `bound`. `bound=None` gives the same structure
    unconstrained. "groupsort" uses groups of GROUPSORT_SIZE, so hidden widths must divide by it.
    Instead of `bound`, `layer_bound` holds every layer to that spectral norm itself. With
    `free_output=True` the output layer is unconstrained (the constraint acts on the features;
    the network's constant is then only what its certificate says).
    """
    check_bound(bound)
    check_bound(layer_bound)
    if bound is not None and layer_bound is not None:
        raise ValueError("give either bound (split over the layers) or layer_bound, not both")
    if bound is not None and free_output:
        raise ValueError("a global bound needs every layer constrained; with free_output=True "
                         "give layer_bound")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(_ACTIVATIONS)}, got {activation!r}")
    group = getattr(_ACTIVATIONS[activation](), "group_size", 1)
    if any(width % group for width in hidden):
        raise ValueError(f"activation {activation!r} needs hidden widths divisible by {group}")
    sizes = [in_features, *hidden, out_features]
    n_layers = len(sizes) - 1
    if bound is not None:
        layer_bound = bound ** (1 / n_layers)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        if i:
            layers.append(_ACTIVATIONS[activation]())
        last = i == n_layers - 1
        layers.append(SpectralLinear(n_in, n_out, bound=None if last and free_output
                                     else layer_bound, mode=mode, ensemble_size=ensemble_size))
    return nn.Sequential(*layers)


@contextmanager
def shared_spectral_weights(module: nn.Module, detach: bool = False,
                            weights: dict[SpectralLinear, Tensor] | None = None
                            ) -> Iterator[dict[SpectralLinear, Tensor]]:
    """Within the block, every constrained SpectralLinear of `module` computes its effective
    weight once (one power iteration in training mode) and every forward reuses it, instead of
    one power iteration per call; the block yields them by layer. `detach=True` shares constant
    weights (for forwards that need no gradient with respect to the layer's parameters);
    `weights` reuses those another block yielded instead of computing new ones."""
    layers = [m for m in module.modules() if isinstance(m, SpectralLinear) and m.bound is not None]
    shared = {}
    for layer in layers:
        weight = layer.effective_weight() if weights is None else weights[layer]
        shared[layer] = layer._shared_weight = weight.detach() if detach else weight
    try:
        yield shared
    finally:
        for layer in layers:
            layer._shared_weight = None


def _frozen_linear(layer: SpectralLinear) -> nn.Linear:
    weight = layer.eval().effective_weight()
    linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                       device=weight.device, dtype=weight.dtype)
    linear.weight.copy_(weight)
    if layer.bias is not None:
        linear.bias.copy_(layer.bias)
    return linear


@torch.no_grad()
def freeze_spectral(module: nn.Module) -> nn.Module:
    """A copy of `module` in which every (non-ensemble) SpectralLinear is an nn.Linear holding
    its eval-mode effective weight: the same function without the exact-sigma computation, so
    it can be traced and exported (ONNX has no SVD) and certifies to the same bound."""
    frozen = copy.deepcopy(module)
    if isinstance(frozen, SpectralLinear) and frozen.ensemble_size is None:
        return _frozen_linear(frozen)
    for name, child in list(frozen.named_modules()):
        if isinstance(child, SpectralLinear) and child.ensemble_size is None:
            parent, _, attribute = name.rpartition(".")
            setattr(frozen.get_submodule(parent), attribute, _frozen_linear(child))
    return frozen
