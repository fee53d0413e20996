"""lipctl bench experiment=NAME: run a benchmark and write its results/ folder."""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from lipctl.config import ConfigError, require_number, user_errors

EXPERIMENTS = ("cstr_mpc",)


def validate(cfg: DictConfig) -> None:
    if cfg.experiment.name not in EXPERIMENTS:
        raise ConfigError("experiment", f"unknown experiment '{cfg.experiment.name}'; "
                                        f"choose from {', '.join(EXPERIMENTS)}")
    require_number(cfg, "torch_threads", 1, integer=True)
    if cfg.experiment.name == "cstr_mpc":
        for key in ("hidden", "epochs", "steps", "patience", "batch_size"):
            require_number(cfg, f"experiment.{key}", 1, integer=True)
        if min(cfg.experiment.horizons) < 1:
            raise ConfigError("experiment.horizons", "every horizon must be >= 1")


def bench(cfg: DictConfig) -> None:
    torch.set_num_threads(cfg.torch_threads)
    from lipctl.bench.cstr_mpc import run_benchmark

    run_benchmark(cfg.experiment, Path(cfg.out), Path(cfg.work))
    print(f"results written to {cfg.out}/")


@hydra.main(config_path="pkg://conf", config_name="bench", version_base=None)
def main(cfg: DictConfig) -> None:
    with user_errors("lipctl bench"):
        validate(cfg)
        bench(cfg)
