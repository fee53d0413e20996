"""Trained process models on disk: plain data (weights, hyper-parameters, scalers, plant) that
loads with torch.load(weights_only=True), and checks that a model fits the plant it is used for."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lipctl.control.cstr_data import (
    INPUT_NAMES,
    PLANT_ID,
    STATE_NAMES,
    CSTRDataset,
    Scaler,
    encode,
)
from lipctl.control.files import atomic_write, load_data
from lipctl.control.models.base import ProcessModel
from lipctl.control.models.registry import build_model

FORMAT = "lipctl-process-model-1"


@dataclass(frozen=True)
class TrainedModel:
    """A process model with the scalers and plant it was fitted for."""

    model: ProcessModel
    state_scaler: Scaler
    input_scaler: Scaler
    plant_id: str
    sampling_period: float
    substeps: int

    @torch.no_grad()
    def predict(self, x0: np.ndarray, u: np.ndarray) -> np.ndarray:
        """States [n, substeps, 2] (deviation units) over one period from x0 [n, 2], u [n, 2]."""
        z = encode(x0, u, self.state_scaler, self.input_scaler, self.substeps)
        y = self.model.eval()(torch.from_numpy(z)).double().numpy()
        return self.state_scaler.inverse(y)


def _scaler_dict(scaler: Scaler) -> dict[str, list[float]]:
    return {"mean": scaler.mean.tolist(), "std": scaler.std.tolist()}


def save_model(path: str | Path, model: ProcessModel, data: CSTRDataset) -> None:
    """Write the model, its hyper-parameters and the dataset's scalers and plant, atomically."""
    sizes = (data.x0.shape[1], data.u.shape[1])
    if (model.state_size, model.input_size) != sizes:
        raise ValueError(f"model maps {model.state_size} states and {model.input_size} inputs, "
                         f"the data has {sizes[0]} and {sizes[1]}")
    state = {
        "format": FORMAT, "model": model.name, "hparams": dict(model.hparams),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "state_size": model.state_size, "input_size": model.input_size,
        "plant_id": data.plant_id, "sampling_period": data.sampling_period,
        "substeps": data.substeps, "state_scaler": _scaler_dict(data.state_scaler),
        "input_scaler": _scaler_dict(data.input_scaler),
    }
    atomic_write(path, lambda f: torch.save(state, f))


def _read(path: Path) -> dict:
    return load_data(path, (FORMAT,), ValueError, "model file",
                     f"a lipctl process model ({FORMAT})")


def _scaler(saved: dict, size: int, what: str, path: Path) -> Scaler:
    scaler = Scaler(np.asarray(saved["mean"], dtype=np.float64),
                    np.asarray(saved["std"], dtype=np.float64))
    if scaler.mean.shape != (size,) or scaler.std.shape != (size,):
        raise ValueError(f"{path}: the {what} scaler has {scaler.mean.shape[0]} features, "
                         f"the model {size}")
    return scaler


def _check_fits(trained: TrainedModel, data: CSTRDataset, path: Path) -> None:
    """Raise ValueError unless the model was fitted with the data's plant, timing and scalers."""
    if trained.plant_id != data.plant_id:
        raise ValueError(f"{path} models plant {trained.plant_id!r}, the data {data.plant_id!r}")
    if (trained.substeps, trained.sampling_period) != (data.substeps, data.sampling_period):
        raise ValueError(f"{path} was fitted for {trained.substeps} sub-steps of "
                         f"{trained.sampling_period} h, the data has {data.substeps} of "
                         f"{data.sampling_period} h")
    for what in ("state", "input"):
        mine, theirs = getattr(trained, f"{what}_scaler"), getattr(data, f"{what}_scaler")
        if not (np.allclose(mine.mean, theirs.mean) and np.allclose(mine.std, theirs.std)):
            raise ValueError(f"{path} was fitted with other {what} scalers than the data's "
                             "(a model of another plant or dataset)")


def load_model(path: str | Path, data: CSTRDataset | None = None,
               plant_id: str = PLANT_ID) -> TrainedModel:
    """Load a model saved by `save_model` as data only. A model of another plant, of other
    state/input sizes, or (when `data` is given) of other scalers or timing is a ValueError."""
    path = Path(path)
    state = _read(path)
    if state["plant_id"] != plant_id:
        raise ValueError(f"{path} models plant {state['plant_id']!r}, expected {plant_id!r}")
    sizes, expected = (state["state_size"], state["input_size"]), (len(STATE_NAMES),
                                                                  len(INPUT_NAMES))
    if sizes != expected:
        raise ValueError(f"{path} maps {sizes[0]} states and {sizes[1]} inputs, the plant has "
                         f"{expected[0]} and {expected[1]}")
    model = build_model(state["model"], *sizes, **state["hparams"])
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as error:
        raise ValueError(f"{path}: weights do not fit model {state['model']!r}: "
                         f"{str(error).splitlines()[0]}") from None
    trained = TrainedModel(
        model.eval(), _scaler(state["state_scaler"], sizes[0], "state", path),
        _scaler(state["input_scaler"], sizes[1], "input", path), state["plant_id"],
        float(state["sampling_period"]), int(state["substeps"]))
    if data is not None:
        _check_fits(trained, data, path)
    return trained
