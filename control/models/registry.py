"""Process models by name: what a model file names, so files load as data (never code).

Built-in models are registered here; a model of your own (a `ProcessModel` subclass with a
`name`, in any module) is registered by `register_model`, called where the class is defined, so
that `lipctl fit` (which builds it from `conf/model/<name>.yaml`'s `_target_`) can save it and
`mpc`/`deploy` can load its files once its module is imported.
"""

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


def register_model(cls: type[ProcessModel]) -> type[ProcessModel]:
    """Register a ProcessModel subclass under its `name` (usable as a class decorator);
    ValueError if the name is missing or taken by another class."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a class attribute `name` to be registered")
    if MODELS.get(name, cls) is not cls:
        raise ValueError(f"process model name {name!r} is taken by {MODELS[name].__name__}")
    MODELS[name] = cls
    return cls
