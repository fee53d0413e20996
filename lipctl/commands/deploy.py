"""lipctl deploy controller=NAME plant=NAME env=NAME: a controller against a plant (the env's
process simulated, over OPC UA, or any gymnasium env) through the runtime
(Lipschitz gate, measurement checks, deadline, fallback), logging every step to
<out>/steps.jsonl and the summary to <out>/summary.json."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lipctl.agents.checkpoint import CheckpointError
from lipctl.agents.saved import load_exportable
from lipctl.config import (
    ConfigError,
    planner_factory,
    process_of,
    require_choice,
    require_number,
    solver_options,
    user_errors,
)
from lipctl.control.export import POLICY, PROCESS_MODEL
from lipctl.control.opcua_plant import quiet_asyncua
from lipctl.control.opcua_security import CLIENT_URI
from lipctl.control.process_mpc import process_mpc
from lipctl.control.runtime import (
    HOLD,
    DeploymentRefused,
    Runtime,
    describe_summary,
    lipschitz_gate,
    run_until_signalled,
)
from lipctl.deployables import Deployment, PlantHandle, opcua_tags, security_config
from lipctl.envs import make_env
from lipctl.envs.files import write_json
from lipctl.envs.process import Process
from lipctl.lipschitz.certificates import TIERS

PLANNING_AGENT = "MBPO agent checkpoint"
NEEDS_CHECKPOINT = {"policy": POLICY, "model_mpc": PROCESS_MODEL,  # controller -> file kind
                    "planner": PLANNING_AGENT}
PROCESS_CONTROLLERS = ("mpc", "model_mpc")
FALLBACKS = (HOLD, "mpc")
OWN_KEYS = {  # keys deploy itself reads; the rest of each group are its builder's arguments
    "controller": ("name",),
    "plant": ("name", "kind", "process", "realtime", "stale_after_periods", "measurement_range"),
}


def plant_process(cfg: DictConfig) -> Process | None:
    """The plant's process description (plant.process), None for a plant without one."""
    return None if cfg.plant.get("process") is None else process_of(cfg, "plant.process")


def measurement_range(cfg: DictConfig) -> tuple[np.ndarray, np.ndarray] | None:
    """plant.measurement_range as (low, high) arrays; a malformed one is a ConfigError."""
    bounds = cfg.plant.measurement_range
    if bounds is None:
        return None
    key = "plant.measurement_range"
    shown = OmegaConf.to_container(bounds) if OmegaConf.is_config(bounds) else bounds
    try:
        low, high = (np.asarray(b, dtype=np.float64) for b in shown)
    except (TypeError, ValueError):
        raise ConfigError(key, f"must be [low, high], two lists of numbers, got {shown}") from None
    if low.shape != high.shape or low.ndim != 1 or not np.all(low <= high):
        raise ConfigError(key, f"must be [low, high] of one length with low <= high, got {shown}")
    return low, high


def validate(cfg: DictConfig) -> None:
    controller = cfg.controller.name
    if controller in NEEDS_CHECKPOINT:
        if cfg.checkpoint is None:
            raise ConfigError("checkpoint", f"controller={controller} needs checkpoint=PATH "
                                            f"(a {NEEDS_CHECKPOINT[controller]} file)")
        if not Path(cfg.checkpoint).is_file():
            raise CheckpointError(f"checkpoint not found: {cfg.checkpoint}")
    if controller in PROCESS_CONTROLLERS:
        require_number(cfg, "controller.horizon", 1, integer=True)
        solver_options(cfg, "controller.solver")
    if controller == "planner":
        planner_factory(cfg, "controller.planner")
    for group in OWN_KEYS:
        if cfg[group].get("_target_") is None:
            raise ConfigError(group, f"{group} {cfg[group].name!r} has no _target_ (its builder)")
    require_number(cfg, "steps", 1, integer=True)
    require_number(cfg, "deadline_s", 0, exclusive=True, allow_none=True)
    require_number(cfg, "lipschitz_max", 0, exclusive=True, allow_none=True)
    require_choice(cfg, "certificate_tier", TIERS)
    require_choice(cfg, "fallback", FALLBACKS)
    require_number(cfg, "torch_threads", 1, integer=True)
    # first, so that a plant of the user's own has registered its env (importing its module)
    process = plant_process(cfg)
    if cfg.plant.get("kind") == "gym":
        if cfg.plant.id not in gym.registry:
            make_env(cfg.plant.id)  # raises UnknownEnvError with suggestions
        require_number(cfg, "plant.period_s", 0, exclusive=True)
        require_number(cfg, "plant.seed", 0, integer=True, allow_none=True)
    if cfg.plant.get("kind") == "opcua":
        if not str(cfg.plant.url).startswith("opc.tcp://"):
            raise ConfigError("plant.url", f"must start with opc.tcp://, got {cfg.plant.url!r}")
        require_number(cfg, "plant.period_s", 0, exclusive=True, allow_none=True)
        require_number(cfg, "plant.timeout_s", 0, exclusive=True)
        require_number(cfg, "plant.reconnect_attempts", 0, integer=True)
        require_number(cfg, "plant.reconnect_delay_s", 0)
    require_number(cfg, "plant.stale_after_periods", 0)
    measurement_range(cfg)
    needs_process = [f"controller={controller}"] if controller in PROCESS_CONTROLLERS else []
    needs_process += ["fallback=mpc"] if cfg.fallback == "mpc" else []
    if cfg.plant.get("kind") == "opcua" and process is None:
        needs_process.append("plant=opcua")
    if needs_process and process is None:
        raise ConfigError("plant", f"{' and '.join(needs_process)} need a plant with a process "
                                   f"description (plant.process); plant {cfg.plant.name!r} has "
                                   "none (use plant=sim or plant=opcua, with env=NAME)")
    if "mpc" in (controller, cfg.fallback) and not process.has_model:
        raise ConfigError("plant.process", f"process {process.name!r} has no first-principles "
                                           "model for controller=mpc or fallback=mpc")
    if cfg.plant.get("kind") == "opcua":
        raw = OmegaConf.to_container(cfg.plant, resolve=True)
        opcua_tags(process, raw["tags"], raw["period_s"])
        security_config(raw["security"], "plant.security", CLIENT_URI)


def build(cfg: DictConfig, group: str, deployment: Deployment) -> Any:
    """Build `group` by its `_target_` (a builder of lipctl.deployables' shape) from the
    deployment and the group's keys other than deploy's own; a target that cannot be loaded,
    or keys it does not take, is a ConfigError naming the group."""
    own = OWN_KEYS[group]
    node = {k: v for k, v in OmegaConf.to_container(cfg[group], resolve=True).items()
            if k not in own}
    try:
        builder = instantiate(node, _partial_=True, _convert_="all")
        inspect.signature(builder).bind(deployment=deployment)
    except (InstantiationException, TypeError, ValueError) as error:
        cause = str(getattr(error, "__cause__", None) or error).splitlines()[0]
        raise ConfigError(group, f"cannot build {node['_target_']}: {cause}") from None
    return builder(deployment=deployment)


def deploy(cfg: DictConfig) -> dict[str, Any]:
    """Gate, build, run and summarise; the summary is also written to <out>/summary.json."""
    torch.set_num_threads(cfg.torch_threads)
    quiet_asyncua()
    expected = NEEDS_CHECKPOINT.get(cfg.controller.name)
    network = (load_exportable(cfg.checkpoint, cfg.certificate_tier)
               if expected in (POLICY, PROCESS_MODEL) else None)
    if network is not None and network.kind != expected:
        raise ConfigError("checkpoint", f"controller={cfg.controller.name} needs a {expected} "
                                        f"file, {cfg.checkpoint} holds a {network.kind}")
    certificate = None if network is None else network.certificate
    if cfg.lipschitz_max is not None:
        try:
            lipschitz_gate(certificate, cfg.lipschitz_max)
        except DeploymentRefused as refused:
            raise ConfigError("lipschitz_max", str(refused)) from None
    process = plant_process(cfg)
    deployment = Deployment(process, cfg.checkpoint, network)
    controller, made_for = build(cfg, "controller", deployment)
    handle: PlantHandle = build(cfg, "plant", deployment)
    plant, period, plant_env = handle.plant, handle.period_s, handle.env_id
    if made_for is not None and made_for != plant_env:
        plant.close()
        raise ConfigError("plant", f"the {expected} was made for {made_for}, "
                                   f"the plant is {plant_env}")
    backup = (process_mpc(process, None, cfg.controller.get("horizon", 2))
              if cfg.fallback == "mpc" else HOLD)
    out = Path(cfg.out)
    runtime = Runtime(
        controller, plant, period, cfg.steps, out / "steps.jsonl",
        initial_action=handle.initial_input, lipschitz_max=cfg.lipschitz_max,
        certificate=certificate,
        measurement_range=measurement_range(cfg),
        stale_after_s=cfg.plant.stale_after_periods * period, fallback=backup,
        deadline_s=cfg.deadline_s, realtime=cfg.plant.realtime)
    print(f"deploying {cfg.controller.name} on {plant_env} ({cfg.plant.name}), period "
          f"{period:g} s, {cfg.steps} steps; step log {out / 'steps.jsonl'}", flush=True)
    try:
        summary, stopped_by = run_until_signalled(runtime)
    finally:
        plant.close()
    summary |= {"controller": cfg.controller.name, "plant": cfg.plant.name, "env_id": plant_env,
                "clipped_writes": getattr(plant, "clipped_writes", None),
                "reconnects": getattr(plant, "reconnects", None),
                "stopped_by_signal": stopped_by,
                "certificate": None if certificate is None else certificate.to_dict()}
    valid = [r["measurement"] for r in runtime.records if r["fallback"] is None]
    if process is not None and valid:
        x_ref = getattr(controller, "x_ref", None)  # an MPC's setpoint, else the steady state
        summary["final_in_target"] = bool(process.in_target(np.asarray(valid[-1]), x_ref))
    write_json(out / "summary.json", summary, allow_nan=False)
    print(describe_summary(summary))
    return summary


def main(cfg: DictConfig) -> None:
    with user_errors("lipctl deploy"):
        validate(cfg)
        summary = deploy(cfg)
    if summary["interrupted"]:
        sys.exit(128 + summary["stopped_by_signal"])  # the shell's code for a killed command
