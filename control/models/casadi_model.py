"""Trained process models as CasADi functions in the process's units.

`casadi_model(trained)` returns a `casadi.Function` x_next = f(x, u) in the process's own units
that does what `TrainedModel.predict` does for the last sub-step: scale x and u with the saved
scalers, feed the scaled [x, u] at each of the `substeps` sub-steps through the model's own
CasADi expression (`ProcessModel.casadi_sequence`: ICLRNN, ICRNN, RNN and LSTM have one) and
unscale the final state. The function is plain CasADi arithmetic (scalar SX, or matrix MX with
`symbolic="MX"`) on float64 copies of the weights (no callbacks), so CasADi differentiates it
exactly; called on SX or MX symbols it gives expressions, called on numbers it evaluates, which
makes it a drop-in `MPC(model=...)` like a process's first-principles `step`.
"""

from __future__ import annotations

from pathlib import Path

import casadi as ca

from lipctl.control.models.io import TrainedModel, load_model


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
    _check_sizes(trained)
    (s_mean, s_std), (u_mean, u_std) = (
        (ca.DM(scaler.mean), ca.DM(scaler.std))
        for scaler in (trained.state_scaler, trained.input_scaler))
    if symbolic not in ("SX", "MX"):
        raise ValueError(f"symbolic must be 'SX' or 'MX', got {symbolic!r}")
    symbol = getattr(ca, symbolic)
    x, u = symbol.sym("x", trained.model.state_size), symbol.sym("u", trained.model.input_size)
    z = ca.vertcat((x - s_mean) / s_std, (u - u_mean) / u_std)
    x_next = trained.model.casadi_sequence(z, trained.substeps) * s_std + s_mean
    return ca.Function(f"{trained.model.name}_model", [x, u], [x_next], ["x", "u"], ["x_next"])
