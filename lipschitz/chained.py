"""By-construction families: networks that satisfy the LipSDP-neuron LMI for every value of their
parameters, so the whole network, not each layer, is held to its bound.

For f = W_l phi(W_{l-1} ... phi(W_0 x)) with activations slope-restricted to [0, 1] and diagonal
multipliers T_k >= 0, f is 1-Lipschitz when the block-tridiagonal matrix with blocks
I (for x), 2 T_k (for each hidden activation), -T_k W_k (off the diagonal) and -W_l' W_l (on the
last block) is PSD (see lipctl.lipschitz.lipsdp). Eliminating the blocks one by one (a block
LDL' factorisation) gives Schur complements S_0 = I, S_{k+1} = 2 T_k - T_k W_k S_k^-1 W_k' T_k,
and the condition W_l S_l^-1 W_l' <= I. A family here chooses each W_k so that every S_k stays
positive definite by construction, and each layer's weight follows from its own parameters and
those of the layer before it (`join` links them; `lipschitz_mlp` does it):

- "ldl" (Juston et al. 2025, "LDLT L-Lipschitz Network", derived here from the LMI above): with
  K_k the Cholesky factor of alpha I + V_k V_k' and R_k a square-root factor of S_k,
  W_k = sqrt(2) T_k^-1/2 K_k^-1 V_k R_k' makes S_{k+1} = 2 alpha T_k^1/2 K_k^-1 K_k^-T T_k^1/2
  (so R_{k+1} = sqrt(2 alpha) T_k^1/2 K_k^-1), and the output layer W_l = K_l^-1 V_l R_l' has
  W_l S_l^-1 W_l' = K_l^-1 V_l V_l' K_l^-T < I. The free parameters are V_k and log T_k.
- "sandwich" (Wang & Manchester 2023, LBDN): layer k is h -> sqrt(2) A_k' Psi_k
  phi(sqrt(2) Psi_k^-1 B_k h + b_k) with [A_k B_k] a Cayley-parameterised matrix with
  orthonormal rows and Psi_k = diag(exp(psi_k)); the output layer is a semi-orthogonal C.
  Written as an MLP, layer k's weight is sqrt(2) Psi_k^-1 B_k sqrt(2) A_{k-1}' Psi_{k-1}, and
  the LMI holds with T_k = Psi_k^2 (each sandwich layer is 1-Lipschitz). Every layer is
  scaled by 1 - SANDWICH_SLACK, so the LMI keeps room for rounding.

A layer's effective weight is its unit weight times `bound` (and `scale`): for slope-[0, 1]
activations the network is then at most the product of those factors times 1 (phi(c v) / c is
slope-restricted to [0, 1] for c > 0). The certificate (`certify`) checks the LMI in float64
with the multipliers the layers carry, so the bound is certified, not assumed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lipctl.lipschitz.family import LipschitzLinear, register_family
from lipctl.lipschitz.orthogonal import cayley_semi_orthogonal

ELEMENTWISE_ACTIVATIONS = ("relu", "tanh")  # slope-restricted to [0, 1], as the LMI needs
# Each Sandwich layer is built (1 - SANDWICH_SLACK)-Lipschitz: the exact construction leaves the
# LMI singular at its bound, and float32 rounding of the weights would then break the check.
SANDWICH_SLACK = 1e-3


class ChainedLinear(LipschitzLinear):
    """Base of the by-construction families (see the module docstring).

    Built alone, a layer is an output layer with no predecessor (a contraction times `bound`);
    `join(previous, output=False)` makes it a hidden layer whose activation carries an LMI
    multiplier, and `join(previous, output=True)` the output layer after `previous`.
    """

    activations = ELEMENTWISE_ACTIVATIONS  # multipliers are per neuron: LipSDP-neuron's setting

    def __init__(self, in_features: int, out_features: int, bound: float | None = 1.0,
                 ensemble_size: int | None = None, bias: bool = True, scale: float = 1.0):
        super().__init__(in_features, out_features, bound, ensemble_size, bias, scale)
        self.output = True
        object.__setattr__(self, "previous", None)  # a link, not a submodule

    def _lead(self) -> tuple[int, ...]:
        return () if self.ensemble_size is None else (self.ensemble_size,)

    def join(self, previous: LipschitzLinear | None, output: bool) -> None:
        if previous is not None and (type(previous) is not type(self) or previous.output):
            raise ValueError(f"a {type(self).__name__} follows a hidden layer of its own family")
        if previous is not None and previous.out_features != self.in_features:
            raise ValueError(f"layer expects {self.in_features} inputs, the previous layer "
                             f"gives {previous.out_features}")
        object.__setattr__(self, "previous", previous)
        if self.output and not output:
            self.add_hidden_parameters()
        self.output = output

    def add_hidden_parameters(self) -> None:
        """Register the parameters a hidden layer has beyond an output layer's."""

    def constrained_weight(self) -> Tensor:
        return self.unit_weight() * self.bound

    def unit_weight(self) -> Tensor:
        """The weight of the 1-Lipschitz construction ([E, out, in] for an ensemble)."""
        raise NotImplementedError



def _scale_rows(matrix: Tensor, factor: Tensor) -> Tensor:
    return matrix * factor.unsqueeze(-1)


@register_family("ldl")
class LDLLinear(ChainedLinear):
    """A layer of an LDL'-parameterised network (module docstring): raw `weight` is V_k,
    `log_multiplier` (hidden layers) is log T_k; `alpha` > 0 sets how much of the LMI's slack a
    layer keeps for the layers after it (larger: smaller weights here, more gain left)."""

    def __init__(self, in_features: int, out_features: int, bound: float | None = 1.0,
                 ensemble_size: int | None = None, bias: bool = True, scale: float = 1.0,
                 alpha: float = 1.0):
        if not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be a positive number, got {alpha!r}")
        super().__init__(in_features, out_features, bound, ensemble_size, bias, scale)
        self.alpha = float(alpha)

    def add_hidden_parameters(self) -> None:
        self.log_multiplier = nn.Parameter(torch.zeros(*self._lead(), self.out_features,
                                                       device=self.weight.device))

    def gram_factor(self) -> Tensor:
        """K: the Cholesky factor of alpha I + V V'."""
        eye = torch.eye(self.out_features, dtype=self.weight.dtype, device=self.weight.device)
        return torch.linalg.cholesky(self.alpha * eye + self.weight @ self.weight.mT)

    def unit_weight(self) -> Tensor:
        v = self.weight
        previous = self.previous
        if previous is not None:  # V R' with R' = sqrt(2 alpha') K'^-T T'^1/2
            half = torch.linalg.solve_triangular(previous.gram_factor(), v.mT, upper=False)
            v = half.mT * (2 * previous.alpha * previous.log_multiplier.exp()).sqrt().unsqueeze(-2)
        weight = torch.linalg.solve_triangular(self.gram_factor(), v, upper=False)
        if self.output:
            return weight
        return _scale_rows(weight, (2 / self.log_multiplier.exp()).sqrt())

    def lmi_multiplier(self) -> Tensor | None:
        return None if self.output else self.log_multiplier.exp()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", alpha={self.alpha:g}"


@register_family("sandwich")
class SandwichLinear(ChainedLinear):
    """A layer of a Sandwich (LBDN) network in MLP form (module docstring). Raw `weight` is
    the B part of the Cayley parameter (the whole of C's for the output layer);
    `weight_a` [out, out] (hidden layers) its A part, `psi` (hidden layers) log Psi."""

    def add_hidden_parameters(self) -> None:
        lead = self._lead()
        self.weight_a = nn.Parameter(torch.empty(*lead, self.out_features, self.out_features,
                                                 device=self.weight.device))
        for w in self.weight_a.view(-1, self.out_features, self.out_features):
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        self.psi = nn.Parameter(torch.zeros(*lead, self.out_features, device=self.weight.device))

    def factors(self) -> tuple[Tensor, Tensor]:
        """(A, B) of a hidden layer: [A B] has orthonormal rows."""
        q = cayley_semi_orthogonal(torch.cat([self.weight_a, self.weight], dim=-1))
        return q[..., :self.out_features], q[..., self.out_features:]

    def _right(self, weight: Tensor) -> Tensor:
        """weight [.., m, in] times the previous layer's output map sqrt(2) A' Psi."""
        previous = self.previous
        if previous is None:
            return weight
        a, _ = previous.factors()
        return math.sqrt(2) * weight @ (a.mT * previous.psi.exp().unsqueeze(-2))

    def unit_weight(self) -> Tensor:
        if self.output:
            return self._right(cayley_semi_orthogonal(self.weight)) * (1 - SANDWICH_SLACK)
        _, b = self.factors()
        return _scale_rows(self._right(b), math.sqrt(2) * (1 - SANDWICH_SLACK) * (-self.psi).exp())

    def lmi_multiplier(self) -> Tensor | None:
        return None if self.output else (2 * self.psi).exp()
