"""Unconstrained recurrent baselines: an Elman RNN and an LSTM, each with a linear head."""

from __future__ import annotations

from torch import Tensor, nn

from lipctl.control.models.base import ProcessModel, RecurrentWeights

NONLINEARITIES = ("tanh", "relu")


class RNN(ProcessModel):
    """torch's single-layer nn.RNN (tanh or relu) followed by a linear head."""

    name = "rnn"

    def __init__(self, state_size: int, input_size: int, hidden: int = 64,
                 nonlinearity: str = "tanh"):
        super().__init__(state_size, input_size, hidden=hidden, nonlinearity=nonlinearity)
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
        self.rnn = nn.RNN(self.features, hidden, nonlinearity=nonlinearity, batch_first=True)
        self.head = nn.Linear(hidden, state_size)

    def forward(self, z: Tensor) -> Tensor:
        return self.head(self.rnn(z)[0])

    def recurrent_weights(self) -> RecurrentWeights:
        return RecurrentWeights(self.rnn.weight_ih_l0.detach().double(),
                                self.rnn.weight_hh_l0.detach().double(),
                                self.head.weight.detach().double())


class LSTM(ProcessModel):
    """torch's single-layer nn.LSTM followed by a linear head."""

    name = "lstm"

    def __init__(self, state_size: int, input_size: int, hidden: int = 64):
        super().__init__(state_size, input_size, hidden=hidden)
        self.lstm = nn.LSTM(self.features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, state_size)

    def forward(self, z: Tensor) -> Tensor:
        return self.head(self.lstm(z)[0])
