"""The quadruple-tank process of Johansson (2000) as a process description and a gymnasium plant.

Four tanks with levels h1..h4 (cm); two pumps with voltages v1, v2 (V). Pump 1 feeds tank 1 (a
fraction gamma1 of its flow) and tank 4 (the rest); pump 2 feeds tank 2 (gamma2) and tank 3. Tanks
3 and 4 drain into tanks 1 and 2, which drain into the basin (Torricelli outflow a sqrt(2 g h)):

    dh1/dt = -a1/A1 sqrt(2 g h1) + a3/A1 sqrt(2 g h3) + gamma1 k1/A1 v1
    dh2/dt = -a2/A2 sqrt(2 g h2) + a4/A2 sqrt(2 g h4) + gamma2 k2/A2 v2
    dh3/dt = -a3/A3 sqrt(2 g h3) + (1 - gamma2) k2/A3 v2
    dh4/dt = -a4/A4 sqrt(2 g h4) + (1 - gamma1) k1/A4 v1

With gamma1 + gamma2 > 1 the linearisation has a minimum-phase zero ("minimum" setting, the
paper's P-); with gamma1 + gamma2 < 1 a non-minimum-phase one ("non_minimum", P+). Time is in
seconds. Levels are absolute (not deviations); the steady state of the nominal pump voltages is
the default setpoint, and two operating points ("low", "high") give setpoint changes. Data and
initial states cover levels h1, h2 in [4, 20] and h3, h4 in [0, 8] cm. Tanks are 20 cm tall: the
plant clips levels to [0, 20] (overflow, or an empty tank).
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from casadi import fmax as ca_fmax
from casadi import sqrt as ca_sqrt

from lipctl.envs.process import Process, Vector, is_symbolic, join, split
from lipctl.envs.process_env import ProcessEnv

ENV_ID = "lipctl/QuadTank-v0"
GRAVITY = 981.0  # cm/s^2
TANK_HEIGHT = 20.0  # cm
SAMPLING_PERIOD = 10.0  # s
SUBSTEPS = 5
PUMP_HIGH = 6.0  # V


@dataclass(frozen=True)
class QuadTankParams:
    """Tank and outlet areas (cm^2), pump gains k (cm^3/(V s)), valve splits gamma and the
    nominal pump voltages (V) of one of Johansson's settings."""

    A: tuple[float, float, float, float] = (28.0, 32.0, 28.0, 32.0)
    a: tuple[float, float, float, float] = (0.071, 0.057, 0.071, 0.057)
    k: tuple[float, float] = (3.33, 3.35)
    gamma: tuple[float, float] = (0.70, 0.60)
    v_nominal: tuple[float, float] = (3.0, 3.0)


SETTINGS = {
    "minimum": QuadTankParams(),
    "non_minimum": QuadTankParams(k=(3.14, 3.29), gamma=(0.43, 0.34), v_nominal=(3.15, 3.15)),
}
OPERATING_VOLTAGES = {"low": 1.0, "high": 1.15}  # x the nominal voltages


def quadtank_rhs(x: Vector, u: Vector, params: QuadTankParams) -> Vector:
    """dh/dt (cm/s) of levels x under pump voltages u (numpy or CasADi); a level below zero
    drains nothing."""
    symbolic = is_symbolic(x, u)
    sqrt, fmax = (ca_sqrt, ca_fmax) if symbolic else (np.sqrt, np.maximum)
    (A1, A2, A3, A4), (a1, a2, a3, a4) = params.A, params.a
    (k1, k2), (g1, g2) = params.k, params.gamma
    h1, h2, h3, h4 = (fmax(h, 0.0) for h in split(x))
    v1, v2 = split(u)
    out1, out2, out3, out4 = (a * sqrt(2 * GRAVITY * h)
                              for a, h in zip((a1, a2, a3, a4), (h1, h2, h3, h4), strict=True))
    return join([(-out1 + out3 + g1 * k1 * v1) / A1, (-out2 + out4 + g2 * k2 * v2) / A2,
                 (-out3 + (1 - g2) * k2 * v2) / A3, (-out4 + (1 - g1) * k1 * v1) / A4],
                symbolic)


def steady_levels(v: np.ndarray, params: QuadTankParams) -> np.ndarray:
    """The equilibrium levels for constant voltages v: each outflow equals its tank's inflow."""
    (k1, k2), (g1, g2) = params.k, params.gamma
    flow3, flow4 = (1 - g2) * k2 * v[1], (1 - g1) * k1 * v[0]
    flows = np.array([g1 * k1 * v[0] + flow3, g2 * k2 * v[1] + flow4, flow3, flow4])
    return (flows / np.asarray(params.a)) ** 2 / (2 * GRAVITY)


def quadtank_process(setting: str = "minimum") -> Process:
    """The quadruple tank's process description in one of `SETTINGS`."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {tuple(SETTINGS)}, got {setting!r}")
    params = SETTINGS[setting]
    nominal = np.asarray(params.v_nominal)
    points = {name: (steady_levels(scale * nominal, params), scale * nominal)
              for name, scale in OPERATING_VOLTAGES.items()}
    return Process(
        name="quadtank" if setting == "minimum" else f"quadtank_{setting}", env_id=ENV_ID,
        state_names=("h1", "h2", "h3", "h4"), input_names=("v1", "v2"),
        state_units=("cm",) * 4, input_units=("V",) * 2, time_unit="s",
        sampling_period=SAMPLING_PERIOD, substeps=SUBSTEPS,
        input_low=np.zeros(2), input_high=np.full(2, PUMP_HIGH),
        state_low=np.array([4.0, 4.0, 0.0, 0.0]), state_high=np.array([20.0, 20.0, 8.0, 8.0]),
        steady_state=points["low"][0], steady_input=nominal,
        state_weights=(1.0, 1.0, 0.0, 0.0), input_weights=(0.01, 0.01),
        target_half_widths=np.array([0.5, 0.5, 2.0, 2.0]),
        rhs=lambda x, u: quadtank_rhs(x, u, params),
        operating_points=points,
    )


class QuadTankEnv(ProcessEnv):
    """The quadruple tank (`ProcessEnv` of `quadtank_process(setting)`); levels clipped to
    [0, TANK_HEIGHT]. Episodes start uniformly in the process's state box unless given x0."""

    def __init__(self, setting: str = "minimum", x0: list[float] | None = None,
                 obs_noise_std: list[float] | None = None,
                 disturbance_std: list[float] | None = None,
                 setpoint: str | None = None) -> None:
        super().__init__(quadtank_process(setting), x0=x0, obs_noise_std=obs_noise_std,
                         disturbance_std=disturbance_std, setpoint=setpoint,
                         state_limits=(np.zeros(4), np.full(4, TANK_HEIGHT)))


gym.register(id=ENV_ID, entry_point="lipctl.envs.quadtank:QuadTankEnv", max_episode_steps=120)
