"""One trainer for every process model: Adam on the scaled MSE, early stopping on validation;
and the one way a fitted model is certified and saved (`fit_and_save`)."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lipctl.control.models.base import ProcessModel
from lipctl.control.models.certify import certify_model
from lipctl.control.models.io import save_model
from lipctl.control.process_data import ProcessDataset, Scaler
from lipctl.lipschitz.certificates import Certificate

CERTIFY_SEQUENCES = 512  # test sequences the sampled lower bound of a saved model is taken on


@dataclass(frozen=True)
class FitResult:
    """Per-epoch train/val MSE, the clean-target test MSE of the kept weights (the best
    validation epoch's, or the last epoch's without early stopping), that epoch, the training
    wall time and the test MSE of predicting no change (`baseline_mse`, see `persistence_mse`),
    the baseline a model must beat to be of use."""

    history: list[dict[str, float]]
    test_mse: float
    best_epoch: int
    seconds: float
    baseline_mse: float

    @property
    def beats_baseline(self) -> bool:
        """Whether the model predicts better than no change."""
        return self.test_mse < self.baseline_mse


@torch.no_grad()
def mse(model: ProcessModel, z: Tensor, y: Tensor) -> Tensor:
    """Mean squared error of the model on scaled sequences, in eval mode."""
    training = model.training
    model.eval()
    try:
        return torch.mean((model(z) - y) ** 2)
    finally:
        model.train(training)


@torch.no_grad()
def mse_in(model: ProcessModel, data: ProcessDataset, split: str, scaler: Scaler) -> float:
    """The model's MSE on `split` in the units of another state scaler (e.g. min-max units for
    a model fitted on z-scores): predictions and targets mapped back to the plant's units, then
    scaled by `scaler`."""
    z, y = data.sequences(split)
    training = model.training
    model.eval()
    try:
        prediction = model(torch.from_numpy(z)).double().numpy()
    finally:
        model.train(training)
    error = data.state_scaler.inverse(prediction) - data.state_scaler.inverse(y)
    return float(np.mean((error / scaler.std) ** 2))


def persistence_mse(data: ProcessDataset, split: str) -> float:
    """Scaled MSE on `split` of predicting no change, x(t) = x0 at every sub-step of the period:
    the persistence baseline."""
    _, y = data.sequences(split)
    unchanged = data.state_scaler.transform(data.x0[data.rows(split)])[:, None]
    return float(np.mean((unchanged - y) ** 2))


def _tensors(data: ProcessDataset, split: str, device: torch.device) -> tuple[Tensor, Tensor]:
    return tuple(torch.from_numpy(a).to(device) for a in data.sequences(split))


def _check(epochs: int, lr: float, batch_size: int, target_noise_sigma: float,
           patience: int | None) -> None:
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("patience", patience)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if not target_noise_sigma >= 0:
        raise ValueError(f"target_noise_sigma must be >= 0, got {target_noise_sigma}")


def fit(model: ProcessModel, data: ProcessDataset, epochs: int = 200, lr: float = 1e-2,
        batch_size: int = 128, target_noise_sigma: float = 0.0, seed: int = 0,
        patience: int | None = 20) -> FitResult:
    """Train `model` in place on the dataset's train rows and keep its best-validation weights.

    Gaussian noise of std `target_noise_sigma` (scaled units) is added once to the train and
    validation targets, as a user would only have noisy measurements; the test MSE is taken
    against the clean targets. `model.project_()` runs after every optimiser step. Training stops
    after `patience` epochs without a lower validation MSE and restores the best epoch's weights;
    `patience=None` turns early stopping off: all `epochs` run and the last weights are kept (so
    a model can overfit noisy targets, as in Wang & Wu's regime). `seed` fixes noise and batch
    order.
    """
    _check(epochs, lr, batch_size, target_noise_sigma, patience)
    start = time.perf_counter()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    (z_train, y_train), (z_val, y_val), (z_test, y_test) = (
        _tensors(data, split, device) for split in ("train", "val", "test"))
    y_train, y_val = (
        y + target_noise_sigma * torch.randn(y.shape, generator=generator).to(device)
        for y in (y_train, y_val))
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    history, best_val, best_epoch, best_state = [], np.inf, 0, copy.deepcopy(model.state_dict())
    for epoch in range(1, epochs + 1):
        model.train()
        total = torch.zeros((), device=device)
        for rows in torch.randperm(len(z_train), generator=generator).split(batch_size):
            rows = rows.to(device)
            loss = torch.mean((model(z_train[rows]) - y_train[rows]) ** 2)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            model.project_()
            total += loss.detach() * len(rows)
        val = float(mse(model, z_val, y_val))
        history.append({"epoch": epoch, "train_mse": float(total) / len(z_train), "val_mse": val})
        if patience is None:
            best_epoch = epoch
        elif val < best_val:
            best_val, best_epoch, best_state = val, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= patience:
            break
    if patience is not None:
        model.load_state_dict(best_state)
    test = float(mse(model, z_test, y_test))
    return FitResult(history, test, best_epoch, time.perf_counter() - start,
                     persistence_mse(data, "test"))


def fit_and_save(path: str | Path, model: ProcessModel, data: ProcessDataset, **settings: object
                 ) -> tuple[FitResult, Certificate]:
    """`fit` `model` on `data` (`settings`: fit's keywords), certify it (`certify_model` on the
    first CERTIFY_SEQUENCES test sequences) and save it with its scalers and certificate to
    `path` (`save_model`, its folder made): what `lipctl fit` and every benchmark that fits a
    process model do."""
    result = fit(model, data, **settings)
    z_test, _ = data.sequences("test")
    certificate = certify_model(model, torch.from_numpy(z_test[:CERTIFY_SEQUENCES]))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_model(path, model, data, certificate)
    return result, certificate
