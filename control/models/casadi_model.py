"""Trained process models as CasADi expressions, rebuilt from their weights.

`casadi_model(trained)` returns a `casadi.Function` x_next = f(x, u) in the process's own units
that does what `TrainedModel.predict` does for the last sub-step: scale x and u with the
saved scalers, feed the scaled [x, u] at each of the `substeps` sub-steps, run the recurrence
and unscale the final state. The function is plain CasADi arithmetic (scalar SX, or matrix MX
with `symbolic="MX"`) on float64 copies of the weights (no callbacks), so CasADi
differentiates it exactly; called on SX or MX symbols it gives
expressions, called on numbers it evaluates, which makes it a drop-in `MPC(model=...)` like the
first-principles `rk4_step`.

Supported models (by registry name): "iclrnn" and "icrnn" (relu cell on [z, -z], affine
non-negative read-out), "rnn" (torch nn.RNN, tanh or relu) and "lstm" (torch nn.LSTM, gates
i, f, g, o), each with `layers` stacked cells. The input sequence repeats one vector, so the
bottom cell's projection of it is computed once and reused at every sub-step; this is the same
arithmetic as projecting each copy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import casadi as ca
import numpy as np

from lipctl.control.models.base import ProcessModel
from lipctl.control.models.io import TrainedModel, load_model

Weights = Mapping[str, ca.DM]
Recurrence = Callable[[Weights, ca.SX, int, int], ca.SX]
"""sequence(weights, z, steps, layers) -> the scaled output after `steps` sub-steps with input z."""
Drive = Callable[[int, ca.SX], ca.SX]
"""drive(layer, x) -> the cell's input projection (biases included) of its input x."""
Cell = Callable[[int, ca.SX, Any], tuple[ca.SX, Any]]
"""cell(layer, drive, state) -> (h, next state); state is None at the first sub-step."""


def _relu(v: ca.SX) -> ca.SX:
    return ca.fmax(0, v)


def _sigmoid(v: ca.SX) -> ca.SX:
    return 1 / (1 + ca.exp(-v))


def _affine(weight: ca.DM, v: ca.SX, bias: ca.DM) -> ca.SX:
    return ca.mtimes(weight, v) + bias


def _stack(z: ca.SX, steps: int, layers: int, drive: Drive, cell: Cell) -> ca.SX:
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


def _convex_sequence(p: Weights, z: ca.SX, steps: int, layers: int) -> ca.SX:
    """h^l_t = relu(W_l x^l_t + U_l h^l_{t-1} + b_l) from h_0 = 0, x^1 = [z, -z]; V h^L_T + c."""

    def drive(layer: int, x: ca.SX) -> ca.SX:
        x = ca.vertcat(x, -x) if layer == 0 else x
        return _affine(p[f"W.{layer}"], x, p[f"b.{layer}"])

    def cell(layer: int, d: ca.SX, h: ca.SX | None) -> tuple[ca.SX, ca.SX]:
        h = _relu(d if h is None else d + ca.mtimes(p[f"U.{layer}"], h))
        return h, h

    return _affine(p["V"], _stack(z, steps, layers, drive, cell), p["c"])


def _recurrent_drive(p: Weights, prefix: str) -> Drive:
    """torch's x W_ih^T + b_ih + b_hh of layer `layer`."""

    def drive(layer: int, x: ca.SX) -> ca.SX:
        return _affine(p[f"{prefix}.weight_ih_l{layer}"], x,
                       p[f"{prefix}.bias_ih_l{layer}"] + p[f"{prefix}.bias_hh_l{layer}"])

    return drive


def _rnn_sequence(activation: Callable[[ca.SX], ca.SX]) -> Recurrence:
    """torch nn.RNN: h^l_t = act(W_ih x + b_ih + W_hh h^l_{t-1} + b_hh), h_0 = 0; linear head."""

    def run(p: Weights, z: ca.SX, steps: int, layers: int) -> ca.SX:
        def cell(layer: int, d: ca.SX, h: ca.SX | None) -> tuple[ca.SX, ca.SX]:
            h = activation(d if h is None else d + ca.mtimes(p[f"rnn.weight_hh_l{layer}"], h))
            return h, h

        top = _stack(z, steps, layers, _recurrent_drive(p, "rnn"), cell)
        return _affine(p["head.weight"], top, p["head.bias"])

    return run


def _lstm_sequence(p: Weights, z: ca.SX, steps: int, layers: int) -> ca.SX:
    """torch nn.LSTM (gates i, f, g, o stacked in that order) from h_0 = c_0 = 0; linear head."""
    hidden = p["lstm.weight_hh_l0"].shape[1]

    def cell(layer: int, d: ca.SX, state: tuple | None) -> tuple[ca.SX, tuple]:
        h, memory = state or (ca.DM(hidden, 1), ca.DM(hidden, 1))  # structural zeros
        gates = d + ca.mtimes(p[f"lstm.weight_hh_l{layer}"], h)
        i, f, g, o = (gates[k * hidden:(k + 1) * hidden] for k in range(4))
        memory = _sigmoid(f) * memory + _sigmoid(i) * ca.tanh(g)
        h = _sigmoid(o) * ca.tanh(memory)
        return h, (h, memory)

    top = _stack(z, steps, layers, _recurrent_drive(p, "lstm"), cell)
    return _affine(p["head.weight"], top, p["head.bias"])


def _convex_shapes(s: int, n: int, h: int, layers: int) -> dict[str, tuple[int, ...]]:
    shapes = {"V": (s, h), "c": (s,)}
    for layer in range(layers):
        shapes |= {f"W.{layer}": (h, 2 * (s + n) if layer == 0 else h), f"U.{layer}": (h, h),
                   f"b.{layer}": (h,)}
    return shapes


def _recurrent_shapes(prefix: str, gates: int) -> Callable[[int, int, int, int], dict]:
    def shapes(s: int, n: int, h: int, layers: int) -> dict[str, tuple[int, ...]]:
        found = {"head.weight": (s, h), "head.bias": (s,)}
        for k in range(layers):
            found |= {f"{prefix}.weight_ih_l{k}": (gates * h, s + n if k == 0 else h),
                      f"{prefix}.weight_hh_l{k}": (gates * h, h),
                      f"{prefix}.bias_ih_l{k}": (gates * h,),
                      f"{prefix}.bias_hh_l{k}": (gates * h,)}
        return found

    return shapes


SHAPES: dict[str, Callable[[int, int, int, int], dict[str, tuple[int, ...]]]] = {
    "iclrnn": _convex_shapes, "icrnn": _convex_shapes,
    "rnn": _recurrent_shapes("rnn", 1), "lstm": _recurrent_shapes("lstm", 4),
}
"""Per model name: (state_size, input_size, hidden, layers) -> the shape of every weight."""


def _sequence_for(name: str, hparams: Mapping) -> Recurrence:
    """The CasADi recurrence of the model registered as `name`."""
    if name in ("iclrnn", "icrnn"):
        return _convex_sequence
    if name == "lstm":
        return _lstm_sequence
    nonlinearity = hparams.get("nonlinearity", "tanh")
    activations = {"tanh": ca.tanh, "relu": _relu}
    if nonlinearity not in activations:
        raise ValueError(f"rnn nonlinearity must be one of {tuple(activations)}, "
                         f"got {nonlinearity!r}")
    return _rnn_sequence(activations[nonlinearity])


def _check_sizes(trained: TrainedModel) -> None:
    """ValueError unless model, scalers and variable names agree on the state and input sizes."""
    model = trained.model
    found = {"model": (model.state_size, model.input_size),
             "scalers": (trained.state_scaler.mean.shape[0], trained.input_scaler.mean.shape[0]),
             "names": (len(trained.state_names), len(trained.input_names))}
    if len(set(found.values())) > 1:
        described = ", ".join(f"{who} {pair}" for who, pair in found.items())
        raise ValueError(f"process model sizes do not match: {described} (states, inputs)")
    if trained.substeps < 1:
        raise ValueError(f"process model has {trained.substeps} sub-steps, needs at least 1")


def _layers(model: ProcessModel) -> int:
    return int(model.hparams.get("layers", 1))


def _weights(trained: TrainedModel, name: str) -> dict[str, ca.DM]:
    """float64 weights from the state_dict, each checked against the shape its sizes imply."""
    model = trained.model
    state = {k: v.detach().cpu().double().numpy() for k, v in model.state_dict().items()}
    expected = SHAPES[name](model.state_size, model.input_size, int(model.hparams["hidden"]),
                            _layers(model))
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"{name} model lacks weights {', '.join(missing)}")
    for key, shape in expected.items():
        if state[key].shape != shape:
            raise ValueError(f"{name} weight {key!r} has shape {state[key].shape}, "
                             f"expected {shape}")
        if not np.all(np.isfinite(state[key])):
            raise ValueError(f"{name} weight {key!r} holds non-finite values")
    # Drop exact zeros (many in the clamped non-negative weights): smaller expressions.
    return {key: ca.sparsify(ca.DM(state[key])) for key in expected}


def casadi_model(trained: TrainedModel | str | Path, symbolic: str = "SX") -> ca.Function:
    """The CasADi function x_next = f(x [ns], u [nu]) of a trained process model (or of the
    model file at that path), in the process's units; see the module docstring.

    `symbolic="MX"` builds the function from matrix symbols: weight products stay dense matrix
    kernels instead of scalar operations, which evaluates (and differentiates) several times
    faster for wide or stacked models; "SX" gives the scalar graph. A model whose state/input
    sizes disagree with its scalers or variable names, weights of the wrong shape,
    or a model kind without a translation is a ValueError.
    """
    if not isinstance(trained, TrainedModel):
        trained = load_model(trained)
    name = trained.model.name
    if name not in SHAPES:
        raise ValueError(f"no CasADi translation for process model {name!r}; "
                         f"supported: {', '.join(SHAPES)}")
    _check_sizes(trained)
    sequence = _sequence_for(name, trained.model.hparams)
    weights = _weights(trained, name)
    (s_mean, s_std), (u_mean, u_std) = (
        (ca.DM(scaler.mean), ca.DM(scaler.std))
        for scaler in (trained.state_scaler, trained.input_scaler))
    if symbolic not in ("SX", "MX"):
        raise ValueError(f"symbolic must be 'SX' or 'MX', got {symbolic!r}")
    symbol = getattr(ca, symbolic)
    x, u = symbol.sym("x", trained.model.state_size), symbol.sym("u", trained.model.input_size)
    z = ca.vertcat((x - s_mean) / s_std, (u - u_mean) / u_std)
    x_next = sequence(weights, z, trained.substeps, _layers(trained.model)) * s_std + s_mean
    return ca.Function(f"{name}_model", [x, u], [x_next], ["x", "u"], ["x_next"])
