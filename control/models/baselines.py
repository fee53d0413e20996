"""Unconstrained recurrent baselines: an Elman RNN and an LSTM, each with a linear head."""

from __future__ import annotations

from torch import Tensor, nn

from lipctl.control.models.base import ProcessModel, RecurrentWeights

NONLINEARITIES = ("tanh", "relu")


class RNN(ProcessModel):
    """torch's nn.RNN (tanh or relu, `layers` stacked) followed by a linear head."""

    name = "rnn"

    def __init__(self, state_size: int, input_size: int, hidden: int = 64,
                 nonlinearity: str = "tanh", layers: int = 1):
        super().__init__(state_size, input_size, hidden=hidden, nonlinearity=nonlinearity,
                         layers=layers)
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
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


class LSTM(ProcessModel):
    """torch's nn.LSTM (`layers` stacked) followed by a linear head."""

    name = "lstm"

    def __init__(self, state_size: int, input_size: int, hidden: int = 64, layers: int = 1):
        super().__init__(state_size, input_size, hidden=hidden, layers=layers)
        self.lstm = nn.LSTM(self.features, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, state_size)

    def forward(self, z: Tensor) -> Tensor:
        return self.head(self.lstm(z)[0])
