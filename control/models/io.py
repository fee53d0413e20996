"""Trained process models on disk: plain data (weights, hyper-parameters, scalers, the process's
name and variable names, the Lipschitz certificate computed at fit time) that loads with
torch.load(weights_only=True), and checks that a model fits the process it is used for."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lipctl.control.export import PROBES, PROCESS_MODEL, Exportable
from lipctl.control.models.base import ProcessModel
from lipctl.control.models.certify import certify_model
from lipctl.control.models.registry import build_model
from lipctl.control.process_data import ProcessDataset, Scaler, check_origin
from lipctl.envs.files import atomic_write, load_data
from lipctl.envs.process import Process
from lipctl.lipschitz.certificates import Certificate

FORMAT = "lipctl-process-model-2"
EARLIER_FORMAT = "lipctl-process-model-1"  # refused with a clear line: refit


@dataclass(frozen=True)
class TrainedModel:
    """A process model with the scalers and process it was fitted for, and the Lipschitz
    certificate computed when it was fitted (None if none was saved)."""

    model: ProcessModel
    state_scaler: Scaler
    input_scaler: Scaler
    plant_id: str
    state_names: tuple[str, ...]
    input_names: tuple[str, ...]
    sampling_period: float
    substeps: int
    certificate: Certificate | None = None

    @torch.no_grad()
    def predict(self, x0: np.ndarray, u: np.ndarray) -> np.ndarray:
        """States [n, substeps, ns] (process units) over one period from x0 [n, ns], u [n, nu]."""
        return self.trajectory(torch.as_tensor(x0, dtype=torch.float64),
                               torch.as_tensor(u, dtype=torch.float64)).numpy()

    def trajectory(self, x0: Tensor, u: Tensor) -> Tensor:
        """`predict` on torch tensors, batched and differentiable: states [B, substeps, ns] over
        one period from x0 [B, ns] with u [B, nu] held, scaled in the inputs' dtype and run in
        the network's (the torch dynamics face that planners use)."""
        def scaled(values: Tensor, scaler: Scaler) -> Tensor:
            mean, std = (torch.as_tensor(a, dtype=values.dtype, device=values.device)
                         for a in (scaler.mean, scaler.std))
            return (values - mean) / std

        features = torch.cat([scaled(x0, self.state_scaler), scaled(u, self.input_scaler)], -1)
        weight = next(self.model.parameters())
        z = features[:, None].expand(-1, self.substeps, -1).to(weight)
        y = self.model.eval()(z).to(x0.dtype)
        mean, std = (torch.as_tensor(a, dtype=x0.dtype, device=x0.device)
                     for a in (self.state_scaler.mean, self.state_scaler.std))
        return y * std + mean

    def exportable(self, samples: int = 64) -> Exportable:
        """The network on scaled sequences, with the certificate saved when it was fitted
        (computed from the weights, with a sampled lower bound from `samples` random scaled
        sequences, only for a file that holds none)."""
        generator = torch.Generator().manual_seed(0)
        width = self.model.state_size + self.model.input_size
        sequences = torch.randn(samples, self.substeps, width, generator=generator)
        certificate = self.certificate or certify_model(self.model, sequences)
        return Exportable(PROCESS_MODEL, self.model, sequences[:1],
                          [row[None] for row in sequences[:PROBES]], certificate, self.plant_id,
                          self)

    def next_state(self, x: Tensor, u: Tensor) -> Tensor:
        """The state [B, ns] one sampling period after x [B, ns] with u [B, nu] held (torch)."""
        return self.trajectory(x, u)[:, -1]


def _scaler_dict(scaler: Scaler) -> dict[str, list[float]]:
    return {"mean": scaler.mean.tolist(), "std": scaler.std.tolist()}


def save_model(path: str | Path, model: ProcessModel, data: ProcessDataset,
               certificate: Certificate | None = None) -> None:
    """Write the model, its hyper-parameters, the dataset's scalers, process and names, and the
    model's Lipschitz certificate, atomically."""
    sizes = (data.x0.shape[1], data.u.shape[1])
    if (model.state_size, model.input_size) != sizes:
        raise ValueError(f"model maps {model.state_size} states and {model.input_size} inputs, "
                         f"the data has {sizes[0]} and {sizes[1]}")
    state = {
        "format": FORMAT, "model": model.name, "hparams": dict(model.hparams),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "state_size": model.state_size, "input_size": model.input_size,
        "plant_id": data.plant_id, "state_names": list(data.state_names),
        "input_names": list(data.input_names), "sampling_period": data.sampling_period,
        "substeps": data.substeps, "state_scaler": _scaler_dict(data.state_scaler),
        "input_scaler": _scaler_dict(data.input_scaler),
        "certificate": None if certificate is None else certificate.to_dict(),
    }
    atomic_write(path, lambda f: torch.save(state, f))


def _read(path: Path) -> dict:
    state = load_data(path, (FORMAT, EARLIER_FORMAT), ValueError, "model file",
                      f"a lipctl process model ({FORMAT})")
    if state["format"] == EARLIER_FORMAT:
        raise ValueError(f"{path} was saved by an earlier lipctl ({EARLIER_FORMAT}: no process "
                         "names or certificate); fit it again with lipctl fit")
    return state


def _scaler(saved: dict, size: int, what: str, path: Path) -> Scaler:
    scaler = Scaler(np.asarray(saved["mean"], dtype=np.float64),
                    np.asarray(saved["std"], dtype=np.float64))
    if scaler.mean.shape != (size,) or scaler.std.shape != (size,):
        raise ValueError(f"{path}: the {what} scaler has {scaler.mean.shape[0]} features, "
                         f"the model {size}")
    return scaler


def _check_fits(trained: TrainedModel, data: ProcessDataset, path: Path) -> None:
    """Raise ValueError unless the model was fitted with the data's process, timing and
    scalers."""
    if trained.plant_id != data.plant_id:
        raise ValueError(f"{path} models process {trained.plant_id!r}, the data "
                         f"{data.plant_id!r}")
    if (trained.substeps, trained.sampling_period) != (data.substeps, data.sampling_period):
        raise ValueError(f"{path} was fitted for {trained.substeps} sub-steps of "
                         f"{trained.sampling_period}, the data has {data.substeps} of "
                         f"{data.sampling_period}")
    for what in ("state", "input"):
        mine, theirs = getattr(trained, f"{what}_scaler"), getattr(data, f"{what}_scaler")
        if not (np.allclose(mine.mean, theirs.mean) and np.allclose(mine.std, theirs.std)):
            raise ValueError(f"{path} was fitted with other {what} scalers than the data's "
                             "(a model of another plant or dataset)")


def check_process(trained: TrainedModel, process: Process, where: str) -> None:
    """ValueError unless the model was fitted for `process`: its name, variables and period."""
    check_origin(trained, process, where, "models")


def load_model(path: str | Path, data: ProcessDataset | None = None,
               process: Process | None = None) -> TrainedModel:
    """Load a model saved by `save_model` as data only. A model of another process (given
    `process`: other name, variables or period) or (given `data`) of other scalers or timing is
    a ValueError."""
    path = Path(path)
    return trained_model(_read(path), path, data, process)


def trained_model(state: dict, path: str | Path, data: ProcessDataset | None = None,
                  process: Process | None = None) -> TrainedModel:
    """The model of a model file's contents `state` (as `load_model` checks them; `path` names
    the file in errors), for a reader that has already read the file."""
    sizes = (state["state_size"], state["input_size"])
    names = (tuple(state["state_names"]), tuple(state["input_names"]))
    if tuple(map(len, names)) != sizes:
        raise ValueError(f"{path} names {len(names[0])} states and {len(names[1])} inputs for a "
                         f"model of {sizes[0]} and {sizes[1]}")
    model = build_model(state["model"], *sizes, **state["hparams"])
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as error:
        raise ValueError(f"{path}: weights do not fit model {state['model']!r}: "
                         f"{str(error).splitlines()[0]}") from None
    trained = TrainedModel(
        model.eval(), _scaler(state["state_scaler"], sizes[0], "state", path),
        _scaler(state["input_scaler"], sizes[1], "input", path), state["plant_id"],
        *names, float(state["sampling_period"]), int(state["substeps"]),
        None if state["certificate"] is None else Certificate.from_dict(state["certificate"]))
    if process is not None:
        check_process(trained, process, str(path))
    if data is not None:
        _check_fits(trained, data, path)
    return trained
