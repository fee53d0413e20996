"""The non-isothermal CSTR of Wu and co-workers (A -> B, second order, exothermic) as a plant.

State and input are deviations from the steady state: x = [CA - CAs, T - Ts] (kmol/m3, K),
u = [CA0 - CA0s, Q - Qs] (kmol/m3, kJ/h); time is in hours. The right-hand side, the RK4 step, the
Lyapunov function and the stage cost work on numpy arrays (states along the last axis, any leading
batch axes) and on CasADi column vectors alike, so the plant and a first-principles MPC model
share one definition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import casadi as ca
import gymnasium as gym
import numpy as np

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

Vector = Any  # a numpy array [..., n] or a CasADi column [n, 1]


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


def _is_symbolic(*values: Any) -> bool:
    return any(isinstance(v, ca.SX | ca.MX | ca.DM) for v in values)


def _split(v: Vector) -> list:
    """Components of a vector: rows of a CasADi column, last-axis slices of a numpy array."""
    if _is_symbolic(v):
        return [v[i] for i in range(v.shape[0])]
    v = np.asarray(v, dtype=np.float64)
    return [v[..., i] for i in range(v.shape[-1])]


def _join(parts: list, symbolic: bool) -> Vector:
    return ca.vertcat(*parts) if symbolic else np.stack(parts, axis=-1)


def cstr_rhs(x: Vector, u: Vector, params: CSTRParams = PARAMS) -> Vector:
    """dx/dt of the deviation state x under the deviation input u (numpy or CasADi)."""
    symbolic = _is_symbolic(x, u)
    exp = ca.exp if symbolic else np.exp
    p = params
    (x_conc, x_temp), (u_feed, u_heat) = _split(x), _split(u)
    conc, temp = x_conc + p.CAs, x_temp + p.Ts
    rate = p.k0 * exp(-p.E / (p.R * temp)) * conc**2
    d_conc = p.F / p.V * (u_feed + p.CA0s - conc) - rate
    d_temp = (p.F / p.V * (p.T0 - temp) - p.dH / (p.rho * p.Cp) * rate
              + (u_heat + p.Qs) / (p.rho * p.Cp * p.V))
    return _join([d_conc, d_temp], symbolic)


def rk4_step(x: Vector, u: Vector, dt: float = SAMPLING_PERIOD, substeps: int = SUBSTEPS,
             params: CSTRParams = PARAMS, disturbance: np.ndarray | None = None) -> Vector:
    """State after `dt` hours with `u` held, by `substeps` classical RK4 steps (numpy or CasADi).

    `disturbance`, if given, is added to dx/dt over the whole interval (same units as dx/dt).
    """
    if substeps < 1:
        raise ValueError(f"substeps must be >= 1, got {substeps}")

    def f(z: Vector) -> Vector:
        dz = cstr_rhs(z, u, params)
        return dz if disturbance is None else dz + disturbance

    if not _is_symbolic(x):
        x = np.asarray(x, dtype=np.float64)
    h = dt / substeps
    for _ in range(substeps):
        k1 = f(x)
        k2 = f(x + h / 2 * k1)
        k3 = f(x + h / 2 * k2)
        k4 = f(x + h * k3)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def quadratic_form(v: Vector, matrix: np.ndarray) -> Any:
    """v' M v (numpy, batched over leading axes, or CasADi); zero entries of M are skipped."""
    parts = _split(v)
    return sum(m * parts[i] * parts[j] for (i, j), m in np.ndenumerate(matrix) if m != 0)


def lyapunov(x: Vector) -> Any:
    """V(x) = x' P x with P = LYAPUNOV_P."""
    return quadratic_form(x, LYAPUNOV_P)


def stage_cost(x: Vector, u: Vector, state_weights: Sequence[float] = STATE_WEIGHTS,
               input_weights: Sequence[float] = INPUT_WEIGHTS) -> Any:
    """x' diag(state_weights) x + u' diag(input_weights) u."""
    return quadratic_form(x, np.diag(state_weights)) + quadratic_form(u, np.diag(input_weights))


def in_target(x: np.ndarray) -> np.ndarray:
    """Whether states x [..., 2] lie in the target ellipse (CA / 0.1)^2 + (T / 3)^2 <= 1."""
    return quadratic_form(x, np.diag(TARGET_HALF_WIDTHS**-2.0)) <= 1.0


def target_lyapunov_level() -> float:
    """The largest level rho with {V(x) <= rho} inside the target ellipse: the smallest
    generalised eigenvalue of P against the ellipse's matrix."""
    scale = np.diag(TARGET_HALF_WIDTHS)
    return float(np.linalg.eigvalsh(scale @ LYAPUNOV_P @ scale)[0])


def sample_stability_region(rng: np.random.Generator, level: float = STABILITY_LEVEL,
                            size: int | None = None) -> np.ndarray:
    """States drawn uniformly from {V(x) <= level} ([2], or [size, 2] given `size`): uniform
    points of the unit disk mapped by sqrt(level) L^-T, where P = L L'."""
    angle = rng.uniform(0.0, 2.0 * np.pi, size)
    disk = np.sqrt(rng.uniform(size=size)) * np.stack([np.cos(angle), np.sin(angle)])
    cholesky = np.linalg.cholesky(LYAPUNOV_P)
    return (np.sqrt(level) * np.linalg.solve(cholesky.T, disk)).T


def _std(name: str, value: Sequence[float]) -> np.ndarray:
    std = np.asarray(value, dtype=np.float64)
    if std.shape != (2,) or not np.all(std >= 0):
        raise ValueError(f"{name} must be two non-negative numbers (CA, T), got {value}")
    return std


class CSTREnv(gym.Env):
    """The CSTR in deviation form, sampled every SAMPLING_PERIOD hours.

    Observation: the deviation state plus N(0, obs_noise_std^2) measurement noise (the true
    state is info["state"]). Action: [CA0 - CA0s, Q - Qs], clipped to ACTION_LOW..ACTION_HIGH;
    info["clipped"] flags a clipped step and info["clip_count"] counts them in the episode.
    Each step adds N(0, disturbance_std^2) to dx/dt, held over the period. Reward: minus the
    stage cost of the true state at the start of the step and the applied action. Episodes start
    at options["x0"], else at the constructor's `x0`, else uniformly in V(x) <= STABILITY_LEVEL;
    they never terminate (truncation comes from the registered time limit).
    """

    metadata = {"render_modes": []}

    def __init__(self, x0: Sequence[float] | None = None, substeps: int = SUBSTEPS,
                 obs_noise_std: Sequence[float] = (0.0, 0.0),
                 disturbance_std: Sequence[float] = (0.0, 0.0),
                 state_weights: Sequence[float] = STATE_WEIGHTS,
                 input_weights: Sequence[float] = INPUT_WEIGHTS,
                 params: CSTRParams = PARAMS) -> None:
        if substeps < 1:
            raise ValueError(f"substeps must be >= 1, got {substeps}")
        self._x0 = None if x0 is None else self._initial_state(x0)
        self.substeps = substeps
        self.obs_noise_std = _std("obs_noise_std", obs_noise_std)
        self.disturbance_std = _std("disturbance_std", disturbance_std)
        self.state_weights, self.input_weights = tuple(state_weights), tuple(input_weights)
        self.params = params
        self.action_space = gym.spaces.Box(ACTION_LOW, ACTION_HIGH, dtype=np.float64)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float64)
        self._state = np.zeros(2)
        self._clip_count = 0

    @staticmethod
    def _initial_state(x0: Sequence[float]) -> np.ndarray:
        state = np.asarray(x0, dtype=np.float64)
        if state.shape != (2,) or not np.all(np.isfinite(state)):
            raise ValueError(f"x0 must be two finite numbers [CA - CAs, T - Ts], got {x0}")
        return state

    def _observe(self) -> np.ndarray:
        return self._state + self.obs_noise_std * self.np_random.standard_normal(2)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if options is not None and "x0" in options:
            self._state = self._initial_state(options["x0"])
        elif self._x0 is not None:
            self._state = self._x0.copy()
        else:
            self._state = sample_stability_region(self.np_random)
        self._clip_count = 0
        return self._observe(), {"state": self._state.copy(), "clip_count": 0}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        command = np.asarray(action, dtype=np.float64).reshape(2)
        if not np.all(np.isfinite(command)):
            raise ValueError(f"action must be finite, got {command}")
        applied = np.clip(command, ACTION_LOW, ACTION_HIGH)
        clipped = bool(np.any(applied != command))
        self._clip_count += clipped
        cost = float(stage_cost(self._state, applied, self.state_weights, self.input_weights))
        disturbance = self.disturbance_std * self.np_random.standard_normal(2)
        self._state = rk4_step(self._state, applied, SAMPLING_PERIOD, self.substeps, self.params,
                               disturbance)
        info = {"state": self._state.copy(), "action": applied, "cost": cost,
                "clipped": clipped, "clip_count": self._clip_count}
        return self._observe(), -cost, False, False, info


gym.register(id=ENV_ID, entry_point="lipctl.envs.cstr:CSTREnv", max_episode_steps=100)
