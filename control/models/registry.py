"""Process models by name."""

from __future__ import annotations

from lipctl.control.models.base import ProcessModel
from lipctl.control.models.baselines import LSTM, RNN
from lipctl.control.models.convex import ICLRNN, ICRNN

MODELS: dict[str, type[ProcessModel]] = {cls.name: cls for cls in (ICLRNN, ICRNN, RNN, LSTM)}


def build_model(name: str, state_size: int, input_size: int,
                **hparams: float | int | str | None) -> ProcessModel:
    """The model registered as `name`; an unknown name or hyper-parameter is a ValueError."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    try:
        return MODELS[name](state_size, input_size, **hparams)
    except TypeError as error:
        raise ValueError(f"bad hyper-parameters for model {name!r}: {error}") from None
