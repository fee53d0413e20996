"""Input-convex recurrent networks: ICLRNN (Lipschitz, Wang & Wu 2024) and ICRNN.

A stack of `layers` cells. The first cell reads the doubled input [z_t, -z_t], each later cell
the hidden sequence of the cell below:
    h^1_t = relu(W_1 [z_t, -z_t] + U_1 h^1_{t-1} + b_1),
    h^l_t = relu(W_l h^{l-1}_t + U_l h^l_{t-1} + b_l)   (l = 2..layers),   h^l_0 = 0,
output  y_t = V h^L_t + c. Every output y_t is convex in the whole input sequence z:
- W_1 [z_t, -z_t] + b_1 is affine in z, hence convex;
- if h^l_{t-1} and h^{l-1}_t are convex, W_l h^{l-1}_t + U_l h^l_{t-1} with W_l, U_l >= 0 is a
  non-negative sum of convex functions, so the pre-activation is convex, and relu (convex,
  non-decreasing) of a convex function is convex;
- V h^L_t + c with V >= 0 is again a non-negative sum of convex functions plus a constant.
Non-negative U, later W and V are what convexity needs; W_1 >= 0 follows the method, and the
doubling makes it no restriction, since W_1 [z, -z] = (W_+ - W_-) z takes any sign. The output is
affine rather than relu(V h + c): both are convex non-decreasing, but a relu would clip the
negative half of the standardised states. ICLRNN also caps the spectral norm of every W, U and V,
which bounds the Lipschitz constant of the map (see `lipctl.control.models.certify`).
"""

from __future__ import annotations

import math
from typing import Any

import casadi as ca
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipctl.control.models import casadi_ops as cx
from lipctl.control.models.base import ProcessModel, RecurrentWeights
from lipctl.lipschitz.family import SIGMA_MARGIN


class InputConvexRNN(ProcessModel):
    """The input-convex stack above; every W, U and V is projected to >= 0 and, when
    `spectral_cap` is set, to spectral norm <= spectral_cap (exact float64 norm) by `project_`."""

    def __init__(self, state_size: int, input_size: int, hidden: int,
                 spectral_cap: float | None, layers: int = 1):
        cap = {} if spectral_cap is None else {"spectral_cap": spectral_cap}
        super().__init__(state_size, input_size, hidden=hidden, layers=layers, **cap)
        if spectral_cap is not None and not (math.isfinite(spectral_cap) and spectral_cap > 0):
            raise ValueError(f"spectral_cap must be a positive number, got {spectral_cap}")
        self.spectral_cap = spectral_cap
        self.W = nn.ParameterList(
            [torch.rand(hidden, 2 * self.features) / math.sqrt(self.features)]
            + [torch.rand(hidden, hidden) / hidden for _ in range(layers - 1)])
        self.U = nn.ParameterList([torch.rand(hidden, hidden) / hidden for _ in range(layers)])
        self.b = nn.ParameterList([torch.zeros(hidden) for _ in range(layers)])
        self.V = nn.Parameter(torch.rand(state_size, hidden) / math.sqrt(hidden))
        self.c = nn.Parameter(torch.zeros(state_size))
        self.project_()

    def constrained(self) -> list[Tensor]:
        """The weights held non-negative (and capped): every W and U, then V."""
        return [*self.W, *self.U, self.V]

    def forward(self, z: Tensor) -> Tensor:
        sequence = torch.cat([z, -z], dim=-1)
        for W, U, b in zip(self.W, self.U, self.b, strict=True):
            drive = F.linear(sequence, W, b)
            h = drive.new_zeros(drive.shape[0], drive.shape[-1])
            states = []
            for t in range(drive.shape[1]):
                h = torch.relu(drive[:, t] + F.linear(h, U))
                states.append(h)
            sequence = torch.stack(states, dim=1)
        return F.linear(sequence, self.V, self.c)

    @torch.no_grad()
    def project_(self) -> None:
        for weight in self.constrained():
            weight.clamp_(min=0)
            if self.spectral_cap is not None:
                sigma = torch.linalg.matrix_norm(weight.double(), ord=2) * (1 + SIGMA_MARGIN)
                weight.mul_((self.spectral_cap / sigma).clamp(max=1).to(weight.dtype))

    def recurrent_weights(self) -> RecurrentWeights:
        first = self.W[0].detach().double()
        inputs = [first[:, :self.features] - first[:, self.features:],
                  *(w.detach().double() for w in self.W[1:])]
        return RecurrentWeights(tuple(inputs), tuple(u.detach().double() for u in self.U),
                                self.V.detach().double())

    def casadi_sequence(self, z: Any, steps: int) -> Any:
        """h^l_t = relu(W_l x^l_t + U_l h^l_{t-1} + b_l) from h_0 = 0 and x^1_t = [z, -z];
        the output V h^L_T + c."""
        hidden = int(self.hparams["hidden"])
        shapes = {"V": (self.state_size, hidden), "c": (self.state_size,)}
        for layer in range(self.layers):
            shapes |= {f"W.{layer}": (hidden, 2 * self.features if layer == 0 else hidden),
                       f"U.{layer}": (hidden, hidden), f"b.{layer}": (hidden,)}
        p = cx.weights(self, self.name, shapes)

        def drive(layer: int, x: Any) -> Any:
            x = ca.vertcat(x, -x) if layer == 0 else x
            return cx.affine(p[f"W.{layer}"], x, p[f"b.{layer}"])

        def cell(layer: int, d: Any, h: Any) -> tuple[Any, Any]:
            h = cx.relu(d if h is None else d + ca.mtimes(p[f"U.{layer}"], h))
            return h, h

        return cx.affine(p["V"], cx.stack(z, steps, self.layers, drive, cell), p["c"])


class ICLRNN(InputConvexRNN):
    """Input-convex Lipschitz RNN: non-negative W, U, V with spectral norms <= spectral_cap."""

    name = "iclrnn"

    def __init__(self, state_size: int, input_size: int, hidden: int = 64,
                 spectral_cap: float = 1.0, layers: int = 1):
        super().__init__(state_size, input_size, hidden, spectral_cap, layers)


class ICRNN(InputConvexRNN):
    """Input-convex RNN: non-negative W, U, V, no spectral cap."""

    name = "icrnn"

    def __init__(self, state_size: int, input_size: int, hidden: int = 64, layers: int = 1):
        super().__init__(state_size, input_size, hidden, None, layers)
