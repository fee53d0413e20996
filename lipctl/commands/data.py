"""lipctl data env=cstr: generate open-loop process data with a fixed split and train scalers."""

from __future__ import annotations

import numpy as np
from omegaconf import DictConfig

from lipctl.config import ConfigError, require_number, user_errors
from lipctl.control.cstr_data import SPLITS, generate, save_dataset
from lipctl.envs.cstr import ENV_ID, rk4_step

PLANTS = {ENV_ID: rk4_step}


def validate(cfg: DictConfig) -> None:
    if cfg.env.id not in PLANTS:
        raise ConfigError("env", f"no data generator for '{cfg.env.id}'; "
                                 f"choose from {', '.join(PLANTS)}")
    require_number(cfg, "seed", 0, integer=True)
    for key in ("states_per_axis", "inputs_per_axis"):
        require_number(cfg, key, 2, integer=True)
    for key in ("chains", "periods"):
        require_number(cfg, key, 1, integer=True)


def make_data(cfg: DictConfig) -> None:
    data = generate(PLANTS[cfg.env.id], states_per_axis=cfg.states_per_axis,
                    inputs_per_axis=cfg.inputs_per_axis, chains=cfg.chains, periods=cfg.periods,
                    seed=cfg.seed)
    save_dataset(data, cfg.out)
    counts = ", ".join(f"{split} {int(np.sum(data.split == i))}" for i, split in enumerate(SPLITS))
    print(f"{cfg.out}: {len(data.x0)} samples of one sampling period ({counts})")


def main(cfg: DictConfig) -> None:
    with user_errors("lipctl data"):
        validate(cfg)
        make_data(cfg)
