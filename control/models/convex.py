"""Input-convex recurrent networks: ICLRNN (Lipschitz, Wang & Wu 2024) and ICRNN.

Cell on the doubled input [z_t, -z_t]:  h_t = relu(W [z_t, -z_t] + U h_{t-1} + b),  h_0 = 0,
output  y_t = V h_t + c.  Every output y_t is convex in the whole input sequence z:
- W [z_t, -z_t] + b is affine in z, hence convex;
- if h_{t-1} is convex, U h_{t-1} with U >= 0 is a non-negative sum of convex functions, so the
  pre-activation is convex, and relu (convex, non-decreasing) of a convex function is convex;
- V h_t + c with V >= 0 is again a non-negative sum of convex functions plus a constant.
U >= 0 and V >= 0 are what convexity needs; W >= 0 follows the method, and the doubling makes it
no restriction, since W [z, -z] = (W_+ - W_-) z takes any sign. The output is affine rather than
relu(V h + c): both are convex non-decreasing, but a relu would clip the negative half of the
standardised states. ICLRNN also caps the spectral norm of W, U and V, which bounds the Lipschitz
constant of the map (see `lipctl.control.models.certify`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipctl.control.models.base import ProcessModel, RecurrentWeights
from lipctl.lipschitz.layers import SIGMA_MARGIN


class InputConvexRNN(ProcessModel):
    """The input-convex cell above; W, U, V are projected to >= 0 and, when `spectral_cap` is
    set, to spectral norm <= spectral_cap (exact float64 norm) by `project_`."""

    def __init__(self, state_size: int, input_size: int, hidden: int,
                 spectral_cap: float | None):
        cap = {} if spectral_cap is None else {"spectral_cap": spectral_cap}
        super().__init__(state_size, input_size, hidden=hidden, **cap)
        if spectral_cap is not None and not (math.isfinite(spectral_cap) and spectral_cap > 0):
            raise ValueError(f"spectral_cap must be a positive number, got {spectral_cap}")
        self.spectral_cap = spectral_cap
        self.W = nn.Parameter(torch.rand(hidden, 2 * self.features) / math.sqrt(self.features))
        self.U = nn.Parameter(torch.rand(hidden, hidden) / hidden)
        self.V = nn.Parameter(torch.rand(state_size, hidden) / math.sqrt(hidden))
        self.b = nn.Parameter(torch.zeros(hidden))
        self.c = nn.Parameter(torch.zeros(state_size))
        self.project_()

    def constrained(self) -> tuple[Tensor, Tensor, Tensor]:
        """The weights held non-negative (and capped): W, U, V."""
        return self.W, self.U, self.V

    def forward(self, z: Tensor) -> Tensor:
        drive = F.linear(torch.cat([z, -z], dim=-1), self.W, self.b)
        h = drive.new_zeros(drive.shape[0], drive.shape[-1])
        states = []
        for t in range(drive.shape[1]):
            h = torch.relu(drive[:, t] + F.linear(h, self.U))
            states.append(h)
        return F.linear(torch.stack(states, dim=1), self.V, self.c)

    @torch.no_grad()
    def project_(self) -> None:
        for weight in self.constrained():
            weight.clamp_(min=0)
            if self.spectral_cap is not None:
                sigma = torch.linalg.matrix_norm(weight.double(), ord=2) * (1 + SIGMA_MARGIN)
                weight.mul_((self.spectral_cap / sigma).clamp(max=1).to(weight.dtype))

    def recurrent_weights(self) -> RecurrentWeights:
        w = self.W.detach().double()
        return RecurrentWeights(w[:, :self.features] - w[:, self.features:],
                                self.U.detach().double(), self.V.detach().double())


class ICLRNN(InputConvexRNN):
    """Input-convex Lipschitz RNN: non-negative W, U, V with spectral norms <= spectral_cap."""

    name = "iclrnn"

    def __init__(self, state_size: int, input_size: int, hidden: int = 64,
                 spectral_cap: float = 1.0):
        super().__init__(state_size, input_size, hidden, spectral_cap)


class ICRNN(InputConvexRNN):
    """Input-convex RNN: non-negative W, U, V, no spectral cap."""

    name = "icrnn"

    def __init__(self, state_size: int, input_size: int, hidden: int = 64):
        super().__init__(state_size, input_size, hidden, None)
