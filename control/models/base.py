"""The interface every process model implements."""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

from torch import Tensor, nn


class RecurrentWeights(NamedTuple):
    """Float64 effective matrices of a stack of cells h^l_t = phi(A_l x^l_t + R_l h^l_{t-1} + b_l)
    with x^1_t = z_t, x^l_t = h^{l-1}_t and read-out y_t = C h^L_t + c, for a 1-Lipschitz
    elementwise phi: what the recurrent Lipschitz bound needs (A_l in `inputs`, R_l in
    `recurrents`, bottom cell first)."""

    inputs: tuple[Tensor, ...]
    recurrents: tuple[Tensor, ...]
    output: Tensor


class ProcessModel(nn.Module):
    """Maps scaled (state, input) sequences z [B, T, state_size + input_size] to scaled state
    trajectories [B, T, state_size]. `hparams` (hidden size and the rest) rebuilds the model with
    `build_model`."""

    name: ClassVar[str]

    def __init__(self, state_size: int, input_size: int, hidden: int,
                 **hparams: float | int | str | None):
        super().__init__()
        if min(state_size, input_size, hidden) < 1:
            raise ValueError(f"state, input and hidden sizes must be positive, got {state_size}, "
                             f"{input_size}, {hidden}")
        if int(hparams.get("layers", 1)) < 1:
            raise ValueError(f"layers must be at least 1, got {hparams['layers']}")
        self.state_size, self.input_size = state_size, input_size
        self.hparams = {"hidden": hidden, **hparams}

    @property
    def features(self) -> int:
        """Size of each time step's input: state_size + input_size."""
        return self.state_size + self.input_size

    def project_(self) -> None:
        """Restore the weight constraints after an optimiser step (none by default)."""

    def recurrent_weights(self) -> RecurrentWeights | None:
        """The matrices of the recurrent Lipschitz bound, or None where it does not apply."""
        return None

    @property
    def layers(self) -> int:
        """Stacked recurrent cells."""
        return int(self.hparams.get("layers", 1))

    def casadi_sequence(self, z: Any, steps: int) -> Any:
        """The scaled output after `steps` sub-steps with the constant scaled input z (a CasADi
        column of `features` rows): the model's own CasADi expression of `forward`, used by
        MPC. ValueError for a model without one."""
        raise ValueError(f"no CasADi translation for process model {self.name!r}")
