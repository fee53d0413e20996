"""lipctl data env=NAME: one-period samples of a process with a fixed split and train scalers,
simulated from its first-principles model or imported from a plant log (import=PATH.csv)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from lipctl.config import ConfigError, process_of, require_choice, require_number, user_errors
from lipctl.control.log_import import RANGE_CHECKS, Columns, LogError, LogPolicy, import_log
from lipctl.control.process_data import (
    SCALERS,
    SPLITS,
    ProcessDataset,
    generate,
    random_split,
    save_dataset,
)
from lipctl.envs.process import Process


def fractions(cfg: DictConfig) -> tuple[float, float, float]:
    """The train/val/test fractions; ConfigError unless three non-negative numbers summing to 1."""
    value = tuple(cfg.fractions)
    try:
        random_split(0, 0, value)
    except ValueError as error:
        raise ConfigError("fractions", str(error)) from None
    return value


def log_policy(cfg: DictConfig) -> LogPolicy:
    """The gap, segment, period and range settings (log.*) and the split fractions of an
    import."""
    return LogPolicy(max_gap_periods=cfg.log.max_gap_periods,
                     min_segment_periods=cfg.log.min_segment_periods,
                     period_tolerance=cfg.log.period_tolerance, fractions=fractions(cfg),
                     range_check=cfg.log.range_check, scaler=cfg.scaler)


def columns(cfg: DictConfig) -> dict | None:
    """The log's column map (log.columns) as a plain dict, None for the variables' own names."""
    node = cfg.log.columns
    return None if node is None else OmegaConf.to_container(node)


def validate(cfg: DictConfig) -> None:
    process = process_of(cfg)
    require_number(cfg, "seed", 0, integer=True)
    require_choice(cfg, "scaler", SCALERS)
    fractions(cfg)
    if cfg["import"] is None:
        if not process.has_model:
            raise ConfigError("import", f"process {process.name!r} has no first-principles "
                                        "model to simulate; import its plant log: import=PATH.csv")
        for key in ("states_per_axis", "inputs_per_axis"):
            require_number(cfg, key, 2, integer=True)
        for key in ("chains", "periods"):
            require_number(cfg, key, 1, integer=True)
        return
    if not Path(cfg["import"]).is_file():
        raise ConfigError("import", f"log file not found: {cfg['import']}")
    require_number(cfg, "log.max_gap_periods", 0, exclusive=True)
    require_number(cfg, "log.min_segment_periods", 1, integer=True)
    require_number(cfg, "log.period_tolerance", 0)
    require_choice(cfg, "log.range_check", RANGE_CHECKS)
    try:
        Columns.of(process, columns(cfg))
    except ValueError as error:
        raise ConfigError("log.columns", str(error)) from None


def import_data(cfg: DictConfig, process: Process) -> ProcessDataset:
    """The plant log's dataset, its import report printed; a bad log is a ConfigError."""
    try:
        data, report = import_log(process, cfg["import"], columns(cfg), log_policy(cfg))
    except LogError as error:
        raise ConfigError("import", str(error)) from None
    print("\n".join(report.lines(cfg["import"], process)))
    return data


def make_data(cfg: DictConfig) -> None:
    process = process_of(cfg)
    if cfg["import"] is None:
        data = generate(process, states_per_axis=cfg.states_per_axis,
                        inputs_per_axis=cfg.inputs_per_axis, chains=cfg.chains,
                        periods=cfg.periods, seed=cfg.seed, fractions=fractions(cfg),
                        scaler=cfg.scaler)
    else:
        data = import_data(cfg, process)
    save_dataset(data, cfg.out)
    counts = ", ".join(f"{split} {int(np.sum(data.split == i))}" for i, split in enumerate(SPLITS))
    print(f"{cfg.out}: {len(data.x0)} samples of one sampling period ({counts})")


def main(cfg: DictConfig) -> None:
    with user_errors("lipctl data"):
        validate(cfg)
        make_data(cfg)
