"""lipctl robustness checkpoint=PATH eps=[...]: closed-loop returns of a checkpoint's policy under
random and adversarial perturbations of its measured state."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig

from lipctl.agents.checkpoint import CheckpointError
from lipctl.agents.saved import load_exportable
from lipctl.compute import seed_everything
from lipctl.config import ConfigError, require_choice, require_number, user_errors
from lipctl.control.export import POLICY
from lipctl.control.robustness import RobustnessReport, robustness_sweep
from lipctl.envs.files import write_csv, write_json
from lipctl.lipschitz import TIERS
from lipctl.lipschitz.regularizers import NORMS

OUT_SUFFIXES = (".csv", ".json")


def validate(cfg: DictConfig) -> None:
    if not Path(cfg.checkpoint).is_file():
        raise CheckpointError(f"checkpoint not found: {cfg.checkpoint}")
    if not isinstance(cfg.eps, ListConfig) or not cfg.eps:
        raise ConfigError("eps", f"must be a non-empty list of radii, got {cfg.eps!r}")
    for i in range(len(cfg.eps)):
        require_number(cfg, f"eps.{i}", 0)
    require_choice(cfg, "norm", NORMS)
    require_number(cfg, "episodes", 1, integer=True)
    require_number(cfg, "attack_steps", 1, integer=True)
    require_number(cfg, "seed", 0, integer=True)
    require_number(cfg, "torch_threads", 1, integer=True)
    require_choice(cfg, "certificate_tier", TIERS)
    if cfg.out is not None and Path(cfg.out).suffix not in OUT_SUFFIXES:
        raise ConfigError("out", f"must end in {' or '.join(OUT_SUFFIXES)}, got {cfg.out!r}")


def table(report: RobustnessReport) -> str:
    """The report as aligned text: a header line, then one row per eps."""
    upper = "n/a" if report.lipschitz_upper is None else f"{report.lipschitz_upper:.4g}"
    lines = [f"{report.env_id} | {report.episodes} episodes per setting | {report.norm} ball | "
             f"PGD {report.attack_steps} steps | nominal return {report.nominal_mean:.1f} +- "
             f"{report.nominal_std:.1f} | certified Lipschitz upper {upper}",
             f"{'eps':>8} {'noise return':>16} {'attack return':>16} "
             f"{'noise |da|':>11} {'attack |da|':>11}"]
    for row in report.rows:
        lines.append(f"{row.eps:>8.4g} {row.noise_mean:>9.1f} +- {row.noise_std:<4.0f}"
                     f"{row.attack_mean:>10.1f} +- {row.attack_std:<4.0f}"
                     f"{row.noise_action_change:>11.4g} {row.attack_action_change:>11.4g}")
    return "\n".join(lines)


def write_report(report: RobustnessReport, path: Path) -> None:
    """`.json`: the whole report; `.csv`: one row per eps with the nominal return and bounds."""
    if path.suffix == ".json":
        write_json(path, report.to_dict())
    else:
        shared = {"env_id": report.env_id, "norm": report.norm, "episodes": report.episodes,
                  "attack_steps": report.attack_steps, "nominal_mean": report.nominal_mean,
                  "nominal_std": report.nominal_std, "lipschitz_upper": report.lipschitz_upper,
                  "lipschitz_lower": report.lipschitz_lower}
        write_csv(path, [{**shared, **asdict(row)} for row in report.rows])


def robustness(cfg: DictConfig) -> RobustnessReport:
    torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed)
    network = load_exportable(cfg.checkpoint, cfg.certificate_tier)
    if network.kind != POLICY:
        raise ConfigError("checkpoint", f"{cfg.checkpoint} holds a {network.kind}, not a policy")
    report = robustness_sweep(network.module, network.env_id, list(cfg.eps), cfg.episodes,
                              cfg.norm, cfg.attack_steps, cfg.seed, network.certificate)
    print(table(report))
    if cfg.out is not None:
        write_report(report, Path(cfg.out))
        print(f"written to {cfg.out}")
    return report


def main(cfg: DictConfig) -> None:
    with user_errors("lipctl robustness"):
        validate(cfg)
        robustness(cfg)
