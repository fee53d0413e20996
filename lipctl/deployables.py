"""What `lipctl deploy` runs, built from config with `_target_`: controllers (conf/controller/)
and plants (conf/plant/).

Each builder takes the `Deployment` (what deploy has read before anything is built: the plant's
process description, the checkpoint path and the network read from it) and the keys of its own
config. A controller builder returns the controller and the env it was made for (None: not made
for one); a plant builder returns a `PlantHandle`. A user's own controller or plant is a builder
of this shape named by `_target_` in a YAML file. A mistake a user can fix is a ConfigError
naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lipctl.agents.saved import load_agent
from lipctl.config import ConfigError
from lipctl.control.export import Exportable
from lipctl.control.loop import Controller
from lipctl.control.mpc import SolverOptions
from lipctl.control.opcua_plant import OpcUaPlant, PlantUnavailable, TagError, TagMap, tag_map
from lipctl.control.opcua_security import (
    CLIENT_URI,
    PlantRefused,
    Security,
    SettingError,
    security_settings,
)
from lipctl.control.planner import PlannerFactory
from lipctl.control.policy import ModuleController
from lipctl.control.process_mpc import process_mpc
from lipctl.control.runtime import GymPlant, Plant
from lipctl.envs import UnknownEnvError, env_spaces, make_env
from lipctl.envs.process import Process

Built = tuple[Controller, str | None]
"""A controller and the env it was made for (None: not made for one)."""


@dataclass(frozen=True)
class Deployment:
    """What deploy knows before building: the plant's process description (None for a plant
    without one), the checkpoint path and the network read from it (None where there is none)."""

    process: Process | None
    checkpoint: str | None
    network: Exportable | None


@dataclass(frozen=True)
class PlantHandle:
    """A built plant, the control period (s), the input held before the first action and the
    plant's env id."""

    plant: Plant
    period_s: float
    initial_input: np.ndarray
    env_id: str


def mpc_controller(deployment: Deployment, horizon: int = 2, contraction: bool | None = None,
                   setpoint: str | None = None, solver: Mapping | None = None) -> Built:
    """MPC of the plant's process, strict (a failed solve is the runtime's to handle): on its
    ODE, or on the process model in the checkpoint, which must be one of that process."""
    trained = None if deployment.network is None else deployment.network.trained
    try:
        options = None if solver is None else SolverOptions(**solver)
        controller = process_mpc(deployment.process, trained, horizon, contraction,
                                 strict=True, solver=options, setpoint=setpoint)
    except (TypeError, ValueError) as error:
        key = "checkpoint" if trained is not None and "process" in str(error) else "controller"
        raise ConfigError(key, str(error)) from None
    return controller, None


def policy_controller(deployment: Deployment) -> Built:
    """The checkpoint's deterministic policy, for the env it was trained on."""
    network = deployment.network
    return ModuleController(network.module), network.env_id


def planner_controller(deployment: Deployment, planner: PlannerFactory,
                       terminal_value: bool = True, proposal: bool = True) -> Built:
    """A sampling planner on the MBPO checkpoint's dynamics model (`SavedAgent.planner`)."""
    saved = load_agent(deployment.checkpoint)
    return saved.planner(planner, terminal_value, proposal), saved.env_id


def initial_input(process: Process | None, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The input held before the first action: the process's steady input, or zero for a plant
    without a process description, clipped into the bounds."""
    rest = np.zeros(low.shape) if process is None else process.steady_input
    return np.clip(rest, low, high).astype(np.float64)


def gym_plant(deployment: Deployment, id: str, period_s: float,
              kwargs: Mapping[str, Any] | None = None, seed: int | None = 0,
              env_kwargs: Mapping[str, Any] | None = None) -> PlantHandle:
    """A registered gymnasium env in-process, stepped once per control step, made with
    `env_kwargs` (an env config's own arguments) updated by the plant's `kwargs`."""
    try:
        env = make_env(id, **{**(env_kwargs or {}), **(kwargs or {})})
    except UnknownEnvError:
        raise
    except (TypeError, ValueError) as error:  # a keyword the env does not take, a bad value
        raise ConfigError("plant.kwargs", str(error).splitlines()[0]) from None
    _, _, low, high = env_spaces(env)
    return PlantHandle(GymPlant(env, period_s, seed=seed), period_s,
                       initial_input(deployment.process, low, high), id)


OPCUA_REFUSALS = {PlantUnavailable: "plant.url", PlantRefused: "plant.security",
                  TagError: "plant.tags"}  # a failed first connection -> the key to look at


def security_config(raw: Mapping[str, Any] | None, key: str, application_uri: str) -> Security:
    """The OPC UA security settings `raw` (at config `key`; the password read from where they
    say); ConfigError naming the key of a wrong one."""
    try:
        return security_settings(raw, application_uri)
    except SettingError as error:
        raise ConfigError(f"{key}.{error.key}", error.message) from None


def opcua_tags(process: Process, tags: Mapping | None, period_s: float | None
               ) -> TagMap | None:
    """The tag map for the process's states and inputs (None: lipctl's own server layout);
    ConfigError naming the key of a wrong one, or of a missing plant.period_s."""
    if tags is None:
        return None
    if period_s is None:
        raise ConfigError("plant.period_s", "a plant reached through plant.tags publishes no "
                                            "step period: give the control period in seconds")
    try:
        return tag_map(tags, process.state_names, process.input_names)
    except SettingError as error:
        raise ConfigError(f"plant.tags.{error.key}", error.message) from None


def opcua_plant(deployment: Deployment, url: str, period_s: float | None = None,
                timeout_s: float = 0.5, reconnect_attempts: int = 0,
                reconnect_delay_s: float = 0.1, tags: Mapping | None = None,
                security: Mapping | None = None) -> PlantHandle:
    """The plant behind an OPC UA server (lipctl plant serve, or a vendor's with `tags`),
    connected now; the period is the server's own unless given."""
    process = deployment.process
    plant = OpcUaPlant(url, process, timeout_s, reconnect_attempts, reconnect_delay_s,
                       tags=opcua_tags(process, tags, period_s),
                       security=security_config(security, "plant.security", CLIENT_URI))
    try:
        plant.connect()
        period = period_s or plant.period_s()
    except tuple(OPCUA_REFUSALS) as error:
        plant.close()
        raise ConfigError(OPCUA_REFUSALS[type(error)], str(error)) from None
    initial = initial_input(process, process.input_low, process.input_high)
    return PlantHandle(plant, period, initial, process.env_id or process.name)
