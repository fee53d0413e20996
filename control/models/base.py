"""The interface every process model implements."""

from __future__ import annotations

from typing import ClassVar, NamedTuple

from torch import Tensor, nn


class RecurrentWeights(NamedTuple):
    """Float64 effective matrices of h_t = phi(A z_t + R h_{t-1} + b), y_t = C h_t + c with a
    1-Lipschitz elementwise phi: what the recurrent Lipschitz bound needs."""

    input: Tensor
    recurrent: Tensor
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
