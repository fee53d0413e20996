"""CasADi building blocks for the process models' own translations (`casadi_sequence`):
activations, affine maps, the stacked recurrence over sub-steps, and a model's weights as
float64 CasADi matrices checked against the shapes its sizes imply.

Expressions work on scalar (SX) and matrix (MX) symbols alike. The input sequence of a process
model repeats one vector, so the bottom cell's projection of it is computed once and reused at
every sub-step; this is the same arithmetic as projecting each copy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import casadi as ca
import numpy as np
from torch import nn

Weights = Mapping[str, ca.DM]
Drive = Callable[[int, Any], Any]
"""drive(layer, x) -> the cell's input projection (biases included) of its input x."""
Cell = Callable[[int, Any, Any], tuple[Any, Any]]
"""cell(layer, drive, state) -> (h, next state); state is None at the first sub-step."""


def relu(v: Any) -> Any:
    return ca.fmax(0, v)


def sigmoid(v: Any) -> Any:
    return 1 / (1 + ca.exp(-v))


def affine(weight: ca.DM, v: Any, bias: ca.DM) -> Any:
    return ca.mtimes(weight, v) + bias


def stack(z: Any, steps: int, layers: int, drive: Drive, cell: Cell) -> Any:
    """The top cell's hidden state after `steps` sub-steps of a stack of `layers` cells. The
    bottom cell sees z at every sub-step, so its projection is computed once; each later cell
    reads the hidden sequence of the cell below."""
    inputs = [z]
    for layer in range(layers):
        drives = [drive(layer, x) for x in inputs]
        state, hidden = None, []
        for t in range(steps):
            h, state = cell(layer, drives[t if len(drives) > 1 else 0], state)
            hidden.append(h)
        inputs = hidden
    return inputs[-1]


def weights(model: nn.Module, name: str, expected: Mapping[str, tuple[int, ...]]
            ) -> dict[str, ca.DM]:
    """float64 CasADi copies of the model's weights named in `expected`, each checked against
    its shape and for finiteness (ValueError naming the weight); exact zeros are dropped (many in
    clamped non-negative weights), which gives smaller expressions."""
    state = {k: v.detach().cpu().double().numpy() for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"{name} model lacks weights {', '.join(missing)}")
    for key, shape in expected.items():
        if state[key].shape != shape:
            raise ValueError(f"{name} weight {key!r} has shape {state[key].shape}, "
                             f"expected {shape}")
        if not np.all(np.isfinite(state[key])):
            raise ValueError(f"{name} weight {key!r} holds non-finite values")
    return {key: ca.sparsify(ca.DM(state[key])) for key in expected}
