"""lipctl fit env=NAME model=NAME: train a process model and certify its Lipschitz constant."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from lipctl.config import ConfigError, process_of, require_number, user_errors
from lipctl.control.models import MODELS, build_model, certify_model, fit, save_model
from lipctl.control.process_data import ProcessDataset, load_dataset
from lipctl.envs.process import Process


def validate(cfg: DictConfig) -> None:
    if cfg.model.name not in MODELS:
        raise ConfigError("model.name", f"unknown model '{cfg.model.name}'; "
                                        f"choose from {', '.join(MODELS)}")
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


def fit_model(cfg: DictConfig) -> None:
    torch.set_num_threads(cfg.torch_threads)
    data = read_data(cfg.data, process_of(cfg))
    hparams = {k: v for k, v in OmegaConf.to_container(cfg.model).items() if k != "name"}
    try:
        model = build_model(cfg.model.name, len(data.state_names), len(data.input_names),
                            **hparams)
    except ValueError as error:
        raise ConfigError("model", str(error)) from None
    result = fit(model, data, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                 target_noise_sigma=cfg.noise, seed=cfg.seed, patience=cfg.patience)
    z, _ = data.sequences("test")
    certificate = certify_model(model, torch.from_numpy(z[:512]))
    save_model(cfg.out, model, data, certificate)
    print(f"{cfg.out}: {cfg.model.name} of {data.plant_id}, noise {cfg.noise}, test MSE "
          f"{result.test_mse:.5f} (scaled), best epoch {result.best_epoch}, "
          f"{result.seconds:.1f} s; Lipschitz upper {certificate.upper:.4g} "
          f"({certificate.method}), sampled lower {certificate.lower:.4g}")


def main(cfg: DictConfig) -> None:
    with user_errors("lipctl fit"):
        validate(cfg)
        fit_model(cfg)
