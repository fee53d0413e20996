"""Unconstrained recurrent baselines: an Elman RNN and an LSTM, each with a linear head."""

from __future__ import annotations

from typing import Any

import casadi as ca
from torch import Tensor, nn

from lipctl.control.models import casadi_ops as cx
from lipctl.control.models.base import ProcessModel, RecurrentWeights

NONLINEARITIES = {"tanh": ca.tanh, "relu": cx.relu}  # CasADi forms of nn.RNN's nonlinearities


def _recurrent_weights(model: ProcessModel, prefix: str, gates: int) -> cx.Weights:
    """torch's nn.RNN / nn.LSTM weights (`gates` blocks per layer) and the linear head."""
    h = int(model.hparams["hidden"])
    shapes = {"head.weight": (model.state_size, h), "head.bias": (model.state_size,)}
    for k in range(model.layers):
        shapes |= {f"{prefix}.weight_ih_l{k}": (gates * h, model.features if k == 0 else h),
                   f"{prefix}.weight_hh_l{k}": (gates * h, h),
                   f"{prefix}.bias_ih_l{k}": (gates * h,), f"{prefix}.bias_hh_l{k}": (gates * h,)}
    return cx.weights(model, model.name, shapes)


def _drive(p: cx.Weights, prefix: str) -> cx.Drive:
    """torch's x W_ih^T + b_ih + b_hh of each layer."""

    def drive(layer: int, x: Any) -> Any:
        return cx.affine(p[f"{prefix}.weight_ih_l{layer}"], x,
                         p[f"{prefix}.bias_ih_l{layer}"] + p[f"{prefix}.bias_hh_l{layer}"])

    return drive


class RNN(ProcessModel):
    """torch's nn.RNN (tanh or relu, `layers` stacked) followed by a linear head."""

    name = "rnn"

    def __init__(self, state_size: int, input_size: int, hidden: int = 64,
                 nonlinearity: str = "tanh", layers: int = 1):
        super().__init__(state_size, input_size, hidden=hidden, nonlinearity=nonlinearity,
                         layers=layers)
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {tuple(NONLINEARITIES)}, "
                             f"got {nonlinearity!r}")
        self.rnn = nn.RNN(self.features, hidden, num_layers=layers, nonlinearity=nonlinearity,
                          batch_first=True)
        self.head = nn.Linear(hidden, state_size)

    def forward(self, z: Tensor) -> Tensor:
        return self.head(self.rnn(z)[0])

    def recurrent_weights(self) -> RecurrentWeights:
        layers = range(self.rnn.num_layers)
        return RecurrentWeights(
            tuple(getattr(self.rnn, f"weight_ih_l{k}").detach().double() for k in layers),
            tuple(getattr(self.rnn, f"weight_hh_l{k}").detach().double() for k in layers),
            self.head.weight.detach().double())

    def casadi_sequence(self, z: Any, steps: int) -> Any:
        """h^l_t = act(W_ih x + b_ih + W_hh h^l_{t-1} + b_hh) from h_0 = 0; the linear head."""
        p = _recurrent_weights(self, "rnn", 1)
        activation = NONLINEARITIES[self.hparams["nonlinearity"]]

        def cell(layer: int, d: Any, h: Any) -> tuple[Any, Any]:
            h = activation(d if h is None else d + ca.mtimes(p[f"rnn.weight_hh_l{layer}"], h))
            return h, h

        top = cx.stack(z, steps, self.layers, _drive(p, "rnn"), cell)
        return cx.affine(p["head.weight"], top, p["head.bias"])


class LSTM(ProcessModel):
    """torch's nn.LSTM (`layers` stacked) followed by a linear head."""

    name = "lstm"

    def __init__(self, state_size: int, input_size: int, hidden: int = 64, layers: int = 1):
        super().__init__(state_size, input_size, hidden=hidden, layers=layers)
        self.lstm = nn.LSTM(self.features, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, state_size)

    def forward(self, z: Tensor) -> Tensor:
        return self.head(self.lstm(z)[0])

    def casadi_sequence(self, z: Any, steps: int) -> Any:
        """nn.LSTM's cell (gates i, f, g, o stacked in that order) from h_0 = c_0 = 0; the
        linear head."""
        p = _recurrent_weights(self, "lstm", 4)
        hidden = int(self.hparams["hidden"])

        def cell(layer: int, d: Any, state: tuple | None) -> tuple[Any, tuple]:
            h, memory = state or (ca.DM(hidden, 1), ca.DM(hidden, 1))  # structural zeros
            gates = d + ca.mtimes(p[f"lstm.weight_hh_l{layer}"], h)
            i, f, g, o = (gates[k * hidden:(k + 1) * hidden] for k in range(4))
            memory = cx.sigmoid(f) * memory + cx.sigmoid(i) * ca.tanh(g)
            h = cx.sigmoid(o) * ca.tanh(memory)
            return h, (h, memory)

        top = cx.stack(z, steps, self.layers, _drive(p, "lstm"), cell)
        return cx.affine(p["head.weight"], top, p["head.bias"])
