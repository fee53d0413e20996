"""lipctl fit env=NAME model=NAME: train a process model and certify its Lipschitz constant."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lipctl.config import ConfigError, process_of, require_number, user_errors
from lipctl.control.models import MODELS, ProcessModel, fit_and_save
from lipctl.control.process_data import ProcessDataset, load_dataset
from lipctl.envs.process import Process


def validate(cfg: DictConfig) -> None:
    if cfg.model.get("_target_") is None:
        raise ConfigError("model", f"model {cfg.model.name!r} has no _target_ (the process "
                                   "model class to fit)")
    if not Path(cfg.data).is_file():
        raise ConfigError("data", f"data file not found: {cfg.data} (make it with lipctl data)")
    require_number(cfg, "noise", 0)
    require_number(cfg, "lr", 0, exclusive=True)
    for key in ("epochs", "batch_size", "torch_threads"):
        require_number(cfg, key, 1, integer=True)
    if cfg.patience is not None:
        require_number(cfg, "patience", 1, integer=True)
    require_number(cfg, "seed", 0, integer=True)


def read_data(path: str, process: Process) -> ProcessDataset:
    """The dataset at `path`; a malformed file or data of another process is a ConfigError."""
    try:
        return load_dataset(path, process)
    except ValueError as error:
        raise ConfigError("data", str(error)) from None


def build(cfg: DictConfig, data: ProcessDataset) -> ProcessModel:
    """The model configured at `model` (its `_target_` class with its hyper-parameters) for the
    data's sizes; a bad hyper-parameter, or a class not registered under `model.name` (whose
    files could then not be loaded), is a ConfigError."""
    node = {k: v for k, v in OmegaConf.to_container(cfg.model).items() if k != "name"}
    try:
        model = instantiate(node, state_size=len(data.state_names),
                            input_size=len(data.input_names))
    except InstantiationException as error:
        cause = error.__cause__ or error
        raise ConfigError("model", str(cause).splitlines()[0]) from None
    if MODELS.get(cfg.model.name) is not type(model):
        raise ConfigError("model.name", f"{type(model).__name__} is not registered as "
                                        f"{cfg.model.name!r}: call lipctl.control.models."
                                        "register_model on it where it is defined")
    return model


def fit_model(cfg: DictConfig) -> None:
    torch.set_num_threads(cfg.torch_threads)
    data = read_data(cfg.data, process_of(cfg))
    torch.manual_seed(cfg.seed)  # the initial weights; fit's seed drives noise and batches
    model = build(cfg, data)
    result, certificate = fit_and_save(cfg.out, model, data, epochs=cfg.epochs, lr=cfg.lr,
                                       batch_size=cfg.batch_size, target_noise_sigma=cfg.noise,
                                       seed=cfg.seed, patience=cfg.patience)
    print(f"{cfg.out}: {cfg.model.name} of {data.plant_id}, noise {cfg.noise}, test MSE "
          f"{result.test_mse:.5f} (scaled; predicting no change: {result.baseline_mse:.5f}), "
          f"best epoch {result.best_epoch} of {len(result.history)} run, "
          f"{result.seconds:.1f} s; Lipschitz upper {certificate.upper:.4g} "
          f"({certificate.method}), sampled lower {certificate.lower:.4g}")
    if not result.beats_baseline:
        print(f"lipctl fit: warning: {cfg.out} predicts worse than no change (test MSE "
              f"{result.test_mse:.5f} >= {result.baseline_mse:.5f}); train longer (epochs, "
              "patience), try another model, or check the data", file=sys.stderr)


def main(cfg: DictConfig) -> None:
    with user_errors("lipctl fit"):
        validate(cfg)
        fit_model(cfg)
