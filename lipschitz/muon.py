"""Muon: momentum whose matrix updates are orthogonalised by a Newton-Schulz iteration.

Muon (Jordan et al. 2024) keeps a (Nesterov) momentum of each weight matrix's gradient and
steps along an approximation of its orthogonal polar factor U V' (from the SVD U S V'), computed
by a few steps of an odd quintic Newton-Schulz iteration. Every update then has spectral norm
close to the learning rate whatever the gradient's conditioning, which is what makes it a good
partner for Lipschitz constraints (Newhouse et al. 2025 pair it with the spectral soft cap: the
cap's strength is coupled to the largest spectral norm an update can have).

Unlike `torch.optim.Muon`, this one takes stacked weights [E, out, in] (ensembles, twin critics)
as well as plain [out, in] ones and orthogonalises each member in one batched call. As its
authors advise, Muon is for hidden weight matrices only: `MuonAdam` puts those under Muon and
every other parameter (biases, the input and output layers' weights, scales) under Adam.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from lipctl.lipschitz.family import LipschitzLinear

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # Jordan et al.'s quintic: x -> a x + b x^3 + c x^5
# After Frobenius normalisation every singular value lies in [0, 1]; the quintic maps
# [0, NS_MAX_GAIN] into itself, so no singular value of `orthogonalize`'s output exceeds it (for
# any number of steps, up to rounding). With 5 steps, singular values of at least 2e-3 times
# the Frobenius norm end in [0.68, NS_MAX_GAIN].
NS_MAX_GAIN = 1.2025


def orthogonalize(G: Tensor, steps: int = 5, eps: float = 1e-7,
                  dtype: torch.dtype | None = None) -> Tensor:
    """Approximate orthogonal polar factor U V' of each matrix of G [..., m, n] (G = U S V').

    Each matrix is divided by its Frobenius norm (so its singular values lie in [0, 1]), then
    `steps` quintic Newton-Schulz steps X <- a X + (b A + c A^2) X with A = X X' push every
    singular value that is not tiny into about [0.7, 1.2] (see NS_MAX_GAIN). Tall matrices are
    transposed first so that A is the smaller Gram matrix. All leading dimensions go through
    one batched call. The iteration runs in `dtype` (None: G's dtype, at least float32;
    bfloat16 is how Muon is usually run on GPUs, and is faster on CPUs with bfloat16 matrix
    units, at about 1% error); the result has G's dtype.
    """
    if G.dim() < 2:
        raise ValueError(f"orthogonalize needs matrices [..., m, n], got shape {list(G.shape)}")
    if steps < 0:
        raise ValueError(f"steps must be non-negative, got {steps}")
    a, b, c = NS_COEFFICIENTS
    tall = G.shape[-2] > G.shape[-1]
    X = G.mT if tall else G
    X = X.reshape(-1, *X.shape[-2:]).to(dtype or torch.promote_types(G.dtype, torch.float32))
    X = X / torch.linalg.matrix_norm(X, keepdim=True).clamp_min(eps)
    for _ in range(steps):
        A = torch.bmm(X, X.mT)
        X = torch.baddbmm(X, torch.baddbmm(A, A, A, beta=b, alpha=c), X, beta=a)
    X = X.reshape(*G.shape[:-2], *X.shape[-2:]).to(G.dtype)
    return X.mT if tall else X


def update_scale(shape: torch.Size | tuple[int, ...]) -> float:
    """Muon's learning-rate factor for a weight [..., out, in]: max(1, out/in) ** 0.5."""
    return math.sqrt(max(1.0, shape[-2] / shape[-1]))


class Muon(torch.optim.Optimizer):
    """Muon for weight matrices [out, in] and stacks of them [E, out, in].

    Per step: buf <- momentum * buf + (1 - momentum) * grad; the direction is
    grad + momentum * (buf - grad) (Nesterov) or buf; each matrix of it is orthogonalised
    (`orthogonalize`, `ns_steps` steps in `ns_dtype`) and the weight moves by
    lr * update_scale(shape) times it, after decoupled weight decay
    W <- (1 - lr * weight_decay) W. The scale is Jordan et
    al.'s convention (also `torch.optim.Muon`'s default): square and wide updates have spectral
    norm about lr, tall ones lr * sqrt(out/in), so that a tall update's RMS-to-RMS operator norm
    is lr too. It keeps lr interchangeable with torch's Muon, and it makes every update's
    spectral norm at most lr * update_scale(shape) * NS_MAX_GAIN, known before the step (the
    bound a soft cap's `max_update` option can be given). Stacked members are orthogonalised
    separately. Vectors (biases) and higher-rank tensors are refused: give them to Adam.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 0.02,
                 momentum: float = 0.95, nesterov: bool = True, weight_decay: float = 0.0,
                 ns_steps: int = 5, ns_dtype: torch.dtype | None = None):
        if not (math.isfinite(lr) and lr >= 0):
            raise ValueError(f"lr must be a non-negative number, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if not (math.isfinite(weight_decay) and weight_decay >= 0):
            raise ValueError(f"weight_decay must be a non-negative number, got {weight_decay}")
        if ns_steps < 1:
            raise ValueError(f"ns_steps must be at least 1, got {ns_steps}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        ns_steps=ns_steps, ns_dtype=ns_dtype)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group after checking that every parameter is [out, in] or [E, out, in]."""
        params = param_group["params"]
        for p in [params] if isinstance(params, Tensor) else params:
            if p.dim() not in (2, 3):
                raise ValueError(
                    f"Muon updates weight matrices [out, in] or stacks [E, out, in]; got a "
                    f"{p.dim()}-D parameter of shape {list(p.shape)} (give biases and other "
                    f"non-matrix parameters to Adam, e.g. through MuonAdam)")
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One Muon step on every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            lr, momentum = group["lr"], group["momentum"]
            torch._foreach_lerp_(bufs, grads, 1 - momentum)
            directions = torch._foreach_lerp(grads, bufs, momentum) if group["nesterov"] else bufs
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
            for p, direction in zip(params, directions, strict=True):
                update = orthogonalize(direction, group["ns_steps"], dtype=group["ns_dtype"])
                p.add_(update, alpha=-lr * update_scale(p.shape))
        return loss


def _linear_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.children() if isinstance(m, LipschitzLinear | nn.Linear)]


def muon_param_groups(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split `module`'s parameters into (Muon's, Adam's).

    Muon gets the weights of hidden layers: in every nn.Sequential of `module` (what
    `lipschitz_mlp` builds), its linear layers (LipschitzLinear or nn.Linear children, in
    order) other than the first and the last, whose weights are [out, in] or [E, out, in].
    Adam gets everything else: biases, the input and output layers' weights, layers outside any
    nn.Sequential, and any other parameter. Each parameter appears once, in module order.
    """
    hidden: set[int] = set()
    for sequential in (m for m in module.modules() if isinstance(m, nn.Sequential)):
        for layer in _linear_layers(sequential)[1:-1]:
            if layer.weight.dim() in (2, 3):
                hidden.add(id(layer.weight))
    muon, adam = [], []
    for p in module.parameters():
        (muon if id(p) in hidden else adam).append(p)
    return muon, adam


class MuonAdam:
    """Muon for a module's hidden weight matrices and Adam for the rest (`muon_param_groups`),
    stepped, zeroed and checkpointed as one optimiser: a drop-in for
    `torch.optim.Adam(module.parameters(), lr)`.

    `lr` and `adam_options` (betas, eps, fused, ...) go to Adam; `muon_lr`, `momentum`,
    `nesterov`, `weight_decay`, `ns_steps` and `ns_dtype` to Muon. A module without hidden
    matrices gets Adam alone.
    """

    def __init__(self, module: nn.Module, lr: float, muon_lr: float = 0.02,
                 momentum: float = 0.95, nesterov: bool = True, weight_decay: float = 0.0,
                 ns_steps: int = 5, ns_dtype: torch.dtype | None = None,
                 **adam_options: Any):
        muon_params, adam_params = muon_param_groups(module)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        if muon_params:
            self.optimizers["muon"] = Muon(muon_params, lr=muon_lr, momentum=momentum,
                                           nesterov=nesterov, weight_decay=weight_decay,
                                           ns_steps=ns_steps, ns_dtype=ns_dtype)
        if adam_params:
            self.optimizers["adam"] = torch.optim.Adam(adam_params, lr=lr, **adam_options)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """Every parameter group, Muon's first."""
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Step both optimisers (the closure, if any, is evaluated once)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers.values():
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero (or drop) every parameter's gradient."""
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """Each optimiser's state dict by name ("muon", "adam"): tensors and plain data only."""
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, dict[str, Any]]) -> None:
        """Restore `state_dict`; it must hold the same optimisers as this one."""
        if set(state) != set(self.optimizers):
            raise ValueError(f"optimiser state holds {sorted(state)}, this optimiser has "
                             f"{sorted(self.optimizers)}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


OPTIMIZERS = ("adam", "muon")


def _flat_layers(network: nn.Module) -> list[nn.Module]:
    if isinstance(network, nn.Sequential):
        return [layer for child in network for layer in _flat_layers(child)]
    return [network]


def make_optimizer(network: nn.Module, name: str, lr: float, muon_lr: float = 0.02,
                   **options: Any) -> torch.optim.Optimizer | MuonAdam:
    """The optimiser `name` (one of OPTIMIZERS) for `network`'s parameters.

    "adam": `torch.optim.Adam(network.parameters(), lr=lr, **options)`. "muon": `MuonAdam`,
    Muon at `muon_lr` on the hidden weight matrices and Adam at `lr` (with `options`, which
    may also hold Muon's own settings) on the rest. Nested nn.Sequentials count as one MLP (a
    trunk and its head: the head is the output layer, so the trunk's last layer is hidden).
    Every Lipschitz layer is told the largest spectral norm one update of its weight can have
    (Muon's: muon_lr x update_scale x NS_MAX_GAIN; Adam's: lr x sqrt(out x in)), to which a
    soft cap couples its strength.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    flat = nn.Sequential(*_flat_layers(network))
    muon_weights = {id(p) for p in muon_param_groups(flat)[0]} if name == "muon" else set()
    for layer in network.modules():
        if isinstance(layer, LipschitzLinear):
            shape = layer.weight.shape
            layer.set_update_bound(
                muon_lr * update_scale(shape) * NS_MAX_GAIN if id(layer.weight) in muon_weights
                else lr * math.sqrt(shape[-2] * shape[-1]))
    if name == "adam":
        return torch.optim.Adam(network.parameters(), lr=lr, **options)
    return MuonAdam(flat, lr=lr, muon_lr=muon_lr, **options)
