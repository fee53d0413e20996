"""lipctl bench experiment=NAME: run a benchmark and write its results/ folder."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from omegaconf import DictConfig

from lipctl.bench import (
    cstr_mpc,
    lipschitz_bc,
    lipschitz_layers,
    planning,
    quadtank_mpc,
    stacked_seeds,
    variant_sweep,
)
from lipctl.bench.variant_sweep import run_overrides, seeds_of
from lipctl.commands import train
from lipctl.config import (
    ConfigError,
    check_overrides,
    require_number,
    require_seeds,
    user_errors,
)

SWEEPS = ("mbpo_vs_ensemble", "mbpo_vs_ensemble_paper", "mbpo_regulariser_strength",
          "gail_lipschitz", "gail_lipschitz_long", "gail_lipschitz_paper")
CSTR = ("cstr_mpc", "cstr_mpc_fast", "cstr_mpc_paper")
OWN_MODULES = {"lipschitz_bc": lipschitz_bc, "planning": planning,
               "quadtank_mpc": quadtank_mpc,
               "stacked_seeds": stacked_seeds}  # experiments with a module of their own
# experiments whose module trains `lipctl train` runs and reports them with the experiment config
SWEEP_MODULES = {"lipschitz_layers": lipschitz_layers}
# each rebuilds its tables from out/runs/
EXPERIMENTS = (*CSTR, *OWN_MODULES, *SWEEP_MODULES, *SWEEPS)


def known_variants() -> list[str]:
    """The agent + regulariser pairs of conf/variant."""
    return sorted(path.name.removesuffix(".yaml")
                  for path in resources.files("lipctl.conf").joinpath("variant").iterdir()
                  if path.name.endswith(".yaml"))


def validate_sweep(exp: DictConfig) -> None:
    """Names, seeds and the composed train config of every run, before any training starts."""
    require_number(exp, "jobs", 1, integer=True)
    unknown = [v for v in exp.variants if v not in known_variants()]
    if unknown or not exp.variants:
        raise ConfigError("experiment.variants", f"unknown variant(s) {unknown}; choose from "
                                                 f"{', '.join(known_variants())}")
    own = exp.get("variant_seeds") or {}
    if strays := [v for v in own if v not in known_variants()]:
        raise ConfigError("experiment.variant_seeds", f"unknown variant(s) {strays}")
    for variant in exp.variants:
        key = f"experiment.variant_seeds.{variant}" if variant in own else "experiment.seeds"
        require_seeds(seeds_of(exp, variant), key)
    if not exp.envs:
        raise ConfigError("experiment.envs", "needs at least one env")
    for env in exp.envs:
        check_overrides("train", [f"env={env}", f"variant={','.join(exp.variants)}",
                                  *run_overrides(exp, env)], train.validate)


def validate(cfg: DictConfig) -> None:
    if cfg.experiment.name not in EXPERIMENTS:
        raise ConfigError("experiment", f"unknown experiment '{cfg.experiment.name}'; "
                                        f"choose from {', '.join(EXPERIMENTS)}")
    require_number(cfg, "torch_threads", 1, integer=True)
    if cfg.replot and not (Path(cfg.out) / "runs").is_dir():
        raise ConfigError("replot", f"no per-run files in {cfg.out}/runs/")
    if cfg.experiment.name in SWEEPS:
        validate_sweep(cfg.experiment)
    if cfg.experiment.name == "lipschitz_bc":
        lipschitz_bc.validate(cfg.experiment)
    if cfg.experiment.name == "lipschitz_layers" and not cfg.replot:
        lipschitz_layers.validate(cfg.experiment)
    if cfg.experiment.name == "stacked_seeds":
        stacked_seeds.validate(cfg.experiment)
    if cfg.experiment.name == "planning" and not cfg.replot:
        planning.validate(cfg.experiment)
    if cfg.experiment.name in CSTR:
        cstr_mpc.validate(cfg)
    if cfg.experiment.name == "quadtank_mpc" and not cfg.replot:
        quadtank_mpc.validate(cfg)


def bench(cfg: DictConfig) -> None:
    torch.set_num_threads(cfg.torch_threads)
    if cfg.replot:
        if cfg.experiment.name in CSTR:
            cstr_mpc.report(Path(cfg.out))
        elif cfg.experiment.name in OWN_MODULES:
            OWN_MODULES[cfg.experiment.name].report(Path(cfg.out))
        else:
            SWEEP_MODULES.get(cfg.experiment.name, variant_sweep).report(cfg.experiment,
                                                                         Path(cfg.out))
        print(f"tables and figures rebuilt from {cfg.out}/runs/")
        return
    if cfg.experiment.name in CSTR:
        run_benchmark = cstr_mpc.run_benchmark
    elif cfg.experiment.name in OWN_MODULES:
        run_benchmark = OWN_MODULES[cfg.experiment.name].run_benchmark
    else:
        run_benchmark = SWEEP_MODULES.get(cfg.experiment.name, variant_sweep).run_benchmark
    run_benchmark(cfg.experiment, Path(cfg.out), Path(cfg.work))
    print(f"results written to {cfg.out}/")


def main(cfg: DictConfig) -> None:
    with user_errors("lipctl bench"):
        validate(cfg)
        bench(cfg)
