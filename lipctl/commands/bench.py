"""lipctl bench experiment=NAME: run a benchmark and write its results/ folder.

A benchmark is a module and a config: conf/experiment/<name>.yaml names the module in `module`,
and the module offers `validate(exp)` (the settings, before any work), `run_benchmark(exp, out,
work)` (the runs, then the report) and `report(exp, out)` (tables and figures from out/runs/
alone, which `replot=true` calls). A benchmark that writes one results file instead names it in
`output` (under out), and its report reads that."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import torch
from omegaconf import DictConfig

from lipctl.bench.report import bootstrap_reps
from lipctl.config import ConfigError, keys_under, require_number, user_errors

PROTOCOL = ("validate", "run_benchmark", "report")


def benchmark_module(exp: DictConfig) -> ModuleType:
    """The module the experiment config names, checked to offer the benchmark protocol."""
    name = exp.get("module")
    if not isinstance(name, str) or not name:
        raise ConfigError("experiment.module", f"must name the benchmark's module (with "
                                               f"{', '.join(PROTOCOL)}), got {name!r}")
    try:
        module = importlib.import_module(name)
    except ImportError as error:
        raise ConfigError("experiment.module", f"cannot import {name}: {error}") from None
    if missing := [f for f in PROTOCOL if not callable(getattr(module, f, None))]:
        raise ConfigError("experiment.module", f"{name} lacks {', '.join(missing)}")
    return module


def report_source(cfg: DictConfig) -> Path:
    """What the report reads: out/runs/, or out/<output> where the experiment names one file."""
    return Path(cfg.out) / cfg.experiment.get("output", "runs")


def validate(cfg: DictConfig) -> ModuleType:
    """The benchmark's module and, unless replotting, its settings; returns the module."""
    require_number(cfg, "torch_threads", 1, integer=True)
    require_number(cfg, "bootstrap_reps", 10, integer=True)
    module = benchmark_module(cfg.experiment)
    if cfg.replot:
        if not report_source(cfg).exists():
            raise ConfigError("replot", f"no per-run files in {cfg.out}/runs/"
                              if cfg.experiment.get("output") is None
                              else f"no {report_source(cfg)} to report from")
    else:
        with keys_under("experiment"):
            module.validate(cfg.experiment)
    return module


def main(cfg: DictConfig) -> None:
    with user_errors("lipctl bench"):
        module = validate(cfg)
        torch.set_num_threads(cfg.torch_threads)
        with bootstrap_reps(cfg.bootstrap_reps):
            if cfg.replot:
                module.report(cfg.experiment, Path(cfg.out))
                print(f"tables and figures rebuilt from {report_source(cfg)}")
                return
            module.run_benchmark(cfg.experiment, Path(cfg.out), Path(cfg.work))
        print(f"results written to {cfg.out}/")
