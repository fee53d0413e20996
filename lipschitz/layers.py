"""1-Lipschitz activations, and MLPs built from any Lipschitz layer family."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lipctl.lipschitz.family import LipschitzLinear, check_bound, layer_family

GROUPSORT_SIZE = 4  # group size `lipschitz_mlp` uses for activation="groupsort"


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
ACTIVATIONS = tuple(_ACTIVATIONS)


def lipschitz_mlp(
    in_features: int,
    out_features: int,
    hidden: Sequence[int],
    bound: float | None,
    activation: str = "relu",
    layer: str | type[LipschitzLinear] = "spectral",
    ensemble_size: int | None = None,
    layer_bound: float | None = None,
    free_output: bool = False,
    level: bool = False,
    **family_options: Any,
) -> nn.Sequential:
    """MLP of one Lipschitz layer family's layers with a certified global bound `bound`.

    Every activation is 1-Lipschitz, so the network's Lipschitz constant (l2, in eval mode) is at
    most the product of its layers' bounds. How `bound` is met: with `level=True` every layer is
    held to 1 and the output layer's fixed `scale` is `bound`, so the network can use its whole
    bound from the first update (the raw weights stay at unit scale, and no optimiser has to
    grow them); otherwise each of the n layers gets bound**(1/n). `bound=None` gives the same
    structure unconstrained. Instead of `bound`, `layer_bound` holds every layer to that bound
    itself, and `free_output=True` then leaves the output layer unconstrained (the network's
    constant is only what its certificate says). `layer` is a registered family name or class;
    `family_options` go to its constructor (e.g. `mode` for "spectral"). "groupsort" uses
    groups of GROUPSORT_SIZE, so hidden widths must divide by it.
    """
    check_bound(bound)
    check_bound(layer_bound, "layer_bound")
    family = layer_family(layer)
    if bound is not None and layer_bound is not None:
        raise ValueError("give either bound (split over the layers) or layer_bound, not both")
    if bound is not None and free_output:
        raise ValueError("a global bound needs every layer constrained; with free_output=True "
                         "give layer_bound")
    if level and bound is None:
        raise ValueError("level=True puts the global bound on the output scale: give bound")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(_ACTIVATIONS)}, got {activation!r}")
    if family.activations is not None and activation not in family.activations:
        name = layer if isinstance(layer, str) else family.__name__
        raise ValueError(f"layer family {name!r} needs one of the activations "
                         f"{', '.join(family.activations)}, got {activation!r}")
    group = getattr(_ACTIVATIONS[activation](), "group_size", 1)
    if any(width % group for width in hidden):
        raise ValueError(f"activation {activation!r} needs hidden widths divisible by {group}")
    sizes = [in_features, *hidden, out_features]
    n_layers = len(sizes) - 1
    if bound is not None:
        layer_bound = 1.0 if level else bound ** (1 / n_layers)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        if i:
            layers.append(_ACTIVATIONS[activation]())
        last = i == n_layers - 1
        layers.append(family(n_in, n_out, bound=None if last and free_output else layer_bound,
                             ensemble_size=ensemble_size, scale=bound if last and level else 1.0,
                             **family_options))
    linears = [layer for layer in layers if isinstance(layer, LipschitzLinear)]
    for previous, layer in zip([None, *linears[:-1]], linears, strict=True):
        layer.join(previous, output=layer is linears[-1])
    return nn.Sequential(*layers)


@torch.no_grad()
def freeze(module: nn.Module) -> nn.Module:
    """A copy of `module` in which every (non-ensemble) Lipschitz layer is the nn.Linear of its
    `export`: the same function without the family's machinery (exact sigma, projections), so
    it can be traced and exported (ONNX has no SVD) and certifies to the same bound."""
    frozen = copy.deepcopy(module)
    if isinstance(frozen, LipschitzLinear) and frozen.ensemble_size is None:
        return frozen.export()
    for name, child in list(frozen.named_modules()):
        if isinstance(child, LipschitzLinear) and child.ensemble_size is None:
            parent, _, attribute = name.rpartition(".")
            setattr(frozen.get_submodule(parent), attribute, child.export())
    return frozen
