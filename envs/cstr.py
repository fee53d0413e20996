"""The non-isothermal CSTR of Wu and co-workers (A -> B, second order, exothermic) as a process.

State and input are deviations from the steady state: x = [CA - CAs, T - Ts] (kmol/m3, K),
u = [CA0 - CA0s, Q - Qs] (kmol/m3, kJ/h); time is in hours. `CSTR` is its process description
(lipctl.envs.process): the right-hand side works on numpy arrays and CasADi columns alike, so the
plant and a first-principles MPC model share one definition. The stability region is the
Lyapunov level set {x' P x <= 372} of the reference LMPC, the target the ellipse
(CA / 0.1)^2 + (T / 3)^2 <= 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from casadi import exp as ca_exp

from lipctl.envs.process import Process, Vector, is_symbolic, join, rk4, split
from lipctl.envs.process_env import ProcessEnv

ENV_ID = "lipctl/CSTR-v0"
SAMPLING_PERIOD = 0.005  # hours
SUBSTEPS = 10  # RK4 steps per sampling period
ACTION_LOW = np.array([-3.5, -5e5])
ACTION_HIGH = np.array([3.5, 5e5])
LYAPUNOV_P = np.array([[1060.0, 22.0], [22.0, 0.52]])
STABILITY_LEVEL = 372.0  # the stability region is V(x) <= STABILITY_LEVEL
TARGET_HALF_WIDTHS = np.array([0.1, 3.0])  # the target ellipse (CA / 0.1)^2 + (T / 3)^2 <= 1
STATE_WEIGHTS = (1000.0, 1.0)  # stage cost 1000 CA^2 + T^2 ...
INPUT_WEIGHTS = (1.0, 3e-10)  # ... + CA0^2 + 3e-10 Q^2 (the reference LMPC cost)
PUBLISHED_STARTS = ((1.5, -70.0), (-1.5, 70.0), (-1.25, 50.0), (1.25, -50.0))  # of the reference


@dataclass(frozen=True)
class CSTRParams:
    """Physical constants and the steady state.

    CAs and Ts are the exact root of the right-hand side at CA0s, Qs (published rounded to
    1.9537 and 401.8727), so x = 0, u = 0 is an equilibrium of the deviation model.
    """

    F: float = 5.0  # feed flow, m3/h
    V: float = 1.0  # volume, m3
    k0: float = 8.46e6  # pre-exponential factor, m3/(kmol h)
    E: float = 5e4  # activation energy, kJ/kmol
    R: float = 8.314  # gas constant, kJ/(kmol K)
    dH: float = -1.15e4  # heat of reaction, kJ/kmol
    rho: float = 1000.0  # density, kg/m3
    Cp: float = 0.231  # heat capacity, kJ/(kg K)
    T0: float = 300.0  # feed temperature, K
    CA0s: float = 4.0  # steady feed concentration, kmol/m3
    Qs: float = 0.0  # steady heat input, kJ/h
    CAs: float = 1.953688316091  # steady concentration, kmol/m3
    Ts: float = 401.8726595885  # steady temperature, K


PARAMS = CSTRParams()


def cstr_rhs(x: Vector, u: Vector, params: CSTRParams = PARAMS) -> Vector:
    """dx/dt of the deviation state x under the deviation input u (numpy or CasADi)."""
    symbolic = is_symbolic(x, u)
    exp = ca_exp if symbolic else np.exp
    p = params
    (x_conc, x_temp), (u_feed, u_heat) = split(x), split(u)
    conc, temp = x_conc + p.CAs, x_temp + p.Ts
    rate = p.k0 * exp(-p.E / (p.R * temp)) * conc**2
    d_conc = p.F / p.V * (u_feed + p.CA0s - conc) - rate
    d_temp = (p.F / p.V * (p.T0 - temp) - p.dH / (p.rho * p.Cp) * rate
              + (u_heat + p.Qs) / (p.rho * p.Cp * p.V))
    return join([d_conc, d_temp], symbolic)


def rk4_step(x: Vector, u: Vector, dt: float = SAMPLING_PERIOD, substeps: int = SUBSTEPS,
             params: CSTRParams = PARAMS, disturbance: np.ndarray | None = None) -> Vector:
    """State after `dt` hours with `u` held, by `substeps` classical RK4 steps (numpy or CasADi).

    `disturbance`, if given, is added to dx/dt over the whole interval (same units as dx/dt).
    """
    return rk4(lambda z, v: cstr_rhs(z, v, params), x, u, dt, substeps, disturbance)


def cstr_process(params: CSTRParams = PARAMS, substeps: int = SUBSTEPS,
                 state_weights: Sequence[float] = STATE_WEIGHTS,
                 input_weights: Sequence[float] = INPUT_WEIGHTS) -> Process:
    """The CSTR's process description (deviation variables; the steady state is the origin)."""
    region = np.sqrt(STABILITY_LEVEL * np.diag(np.linalg.inv(LYAPUNOV_P)))
    return Process(
        name="cstr", env_id=ENV_ID,
        state_names=("CA", "T"), input_names=("CA0", "Q"),
        state_units=("kmol/m3", "K"), input_units=("kmol/m3", "kJ/h"), time_unit="h",
        sampling_period=SAMPLING_PERIOD, substeps=substeps,
        input_low=ACTION_LOW, input_high=ACTION_HIGH, state_low=-region, state_high=region,
        steady_state=np.zeros(2), steady_input=np.zeros(2),
        state_weights=tuple(state_weights), input_weights=tuple(input_weights),
        target_half_widths=TARGET_HALF_WIDTHS,
        rhs=lambda x, u: cstr_rhs(x, u, params),
        lyapunov_matrix=LYAPUNOV_P, stability_level=STABILITY_LEVEL,
    )


CSTR = cstr_process()


class CSTREnv(ProcessEnv):
    """The CSTR in deviation form (`ProcessEnv` of `cstr_process`), sampled every
    SAMPLING_PERIOD hours; episodes start uniformly in V(x) <= STABILITY_LEVEL unless given x0."""

    def __init__(self, x0: Sequence[float] | None = None, substeps: int = SUBSTEPS,
                 obs_noise_std: Sequence[float] = (0.0, 0.0),
                 disturbance_std: Sequence[float] = (0.0, 0.0),
                 state_weights: Sequence[float] = STATE_WEIGHTS,
                 input_weights: Sequence[float] = INPUT_WEIGHTS,
                 params: CSTRParams = PARAMS) -> None:
        super().__init__(cstr_process(params, substeps, state_weights, input_weights), x0=x0,
                         obs_noise_std=obs_noise_std, disturbance_std=disturbance_std)


gym.register(id=ENV_ID, entry_point="lipctl.envs.cstr:CSTREnv", max_episode_steps=100)
