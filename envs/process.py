"""A process for control, described once: what data generation, log import, model fitting, MPC,
metrics, the runtime and OPC UA need to know about a plant, and nothing they must import from it.

A `Process` names its states and inputs (with units), bounds its inputs, fixes the sampling
period, the stage cost's weights, a steady state (the default setpoint), the target set around a
setpoint and the box of states its data covers. A plant with a first-principles model gives its
right-hand side dx/dt = rhs(x, u), written once for numpy arrays (states along the last axis, any
leading batch axes) and CasADi columns alike; a plant known only from its logs gives none. An
optional Lyapunov matrix P and level describe a stability region {(x - x_s)' P (x - x_s) <= level}
for Lyapunov MPC. The CSTR (lipctl.envs.cstr) and the quadruple tank (lipctl.envs.quadtank) are
instances; a user's own plant is one more.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import casadi as ca
import numpy as np
import torch

Vector = Any  # a numpy array or torch tensor [..., n], or a CasADi column [n, 1]
RightHandSide = Callable[[Vector, Vector], Vector]
"""rhs(x, u) -> dx/dt per time unit of the process (numpy or CasADi)."""


def is_symbolic(*values: Any) -> bool:
    """Whether any value is a CasADi SX, MX or DM."""
    return any(isinstance(v, ca.SX | ca.MX | ca.DM) for v in values)


def split(v: Vector) -> list:
    """Components of a vector: rows of a CasADi column, last-axis slices of a numpy array or a
    torch tensor."""
    if is_symbolic(v):
        return [v[i] for i in range(v.shape[0])]
    if isinstance(v, torch.Tensor):
        return list(v.unbind(-1))
    v = np.asarray(v, dtype=np.float64)
    return [v[..., i] for i in range(v.shape[-1])]


def join(parts: list, symbolic: bool) -> Vector:
    """The inverse of `split`: a CasADi column or a numpy array with the parts on the last axis."""
    return ca.vertcat(*parts) if symbolic else np.stack(parts, axis=-1)


def quadratic_form(v: Vector, matrix: np.ndarray) -> Any:
    """v' M v (numpy or torch, batched over leading axes, or CasADi); zero entries of M are
    skipped."""
    parts = split(v)
    return sum(float(m) * parts[i] * parts[j] for (i, j), m in np.ndenumerate(matrix) if m != 0)


def rk4(rhs: RightHandSide, x: Vector, u: Vector, dt: float, substeps: int,
        disturbance: np.ndarray | None = None) -> Vector:
    """State after `dt` with `u` held, by `substeps` classical RK4 steps (numpy or CasADi);
    `disturbance`, if given, is added to dx/dt over the whole interval."""
    if substeps < 1:
        raise ValueError(f"substeps must be >= 1, got {substeps}")

    def f(z: Vector) -> Vector:
        dz = rhs(z, u)
        return dz if disturbance is None else dz + disturbance

    if not is_symbolic(x):
        x = np.asarray(x, dtype=np.float64)
    h = dt / substeps
    for _ in range(substeps):
        k1 = f(x)
        k2 = f(x + h / 2 * k1)
        k3 = f(x + h / 2 * k2)
        k4 = f(x + h * k3)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x


def _array(name: str, value: Sequence[float] | np.ndarray, size: int) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.shape != (size,) or not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be {size} finite numbers, got {value}")
    return array


@dataclass(frozen=True, eq=False)
class Process:
    """One plant for process control; see the module docstring.

    Sizes follow `state_names` and `input_names`; every array is checked against them. The stage
    cost is (x - x_r)' diag(state_weights) (x - x_r) + (u - u_r)' diag(input_weights) (u - u_r)
    around a reference (x_r, u_r), by default the steady state. The target set is the ellipse
    sum_i ((x_i - x_r,i) / target_half_widths_i)^2 <= 1. `substeps` is both the number of RK4
    steps per sampling period of the ODE and the number of sub-samples per period a process
    model learns. `operating_points` name further (state, input) equilibria, for setpoint changes.
    """

    name: str
    state_names: tuple[str, ...]
    input_names: tuple[str, ...]
    state_units: tuple[str, ...]
    input_units: tuple[str, ...]
    time_unit: str
    sampling_period: float
    input_low: np.ndarray
    input_high: np.ndarray
    state_low: np.ndarray
    state_high: np.ndarray
    steady_state: np.ndarray
    steady_input: np.ndarray
    state_weights: tuple[float, ...]
    input_weights: tuple[float, ...]
    target_half_widths: np.ndarray
    rhs: RightHandSide | None = None
    substeps: int = 10
    env_id: str | None = None
    lyapunov_matrix: np.ndarray | None = None
    stability_level: float | None = None
    operating_points: Mapping[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ns, nu = len(self.state_names), len(self.input_names)
        if ns < 1 or nu < 1:
            raise ValueError(f"process {self.name!r} needs at least one state and one input")
        for names, units, kind in ((self.state_names, self.state_units, "state"),
                                   (self.input_names, self.input_units, "input")):
            if len(set(names)) != len(names):
                raise ValueError(f"process {self.name!r} repeats a {kind} name: {names}")
            if len(units) != len(names):
                raise ValueError(f"process {self.name!r} gives {len(units)} {kind} units "
                                 f"for {len(names)} {kind}s")
        if not self.sampling_period > 0:
            raise ValueError(f"sampling_period must be > 0, got {self.sampling_period}")
        if self.substeps < 1:
            raise ValueError(f"substeps must be >= 1, got {self.substeps}")
        sizes = {"input_low": nu, "input_high": nu, "state_low": ns, "state_high": ns,
                 "steady_state": ns, "steady_input": nu, "state_weights": ns,
                 "input_weights": nu, "target_half_widths": ns}
        for key, size in sizes.items():
            object.__setattr__(self, key, _array(key, getattr(self, key), size))
        for low, high in (("input_low", "input_high"), ("state_low", "state_high")):
            if not np.all(getattr(self, low) < getattr(self, high)):
                raise ValueError(f"process {self.name!r}: {low} must be below {high}")
        if np.any(self.state_weights < 0) or np.any(self.input_weights < 0):
            raise ValueError(f"process {self.name!r}: cost weights must be non-negative")
        if not np.all(self.target_half_widths > 0):
            raise ValueError(f"process {self.name!r}: target_half_widths must be > 0")
        if (self.lyapunov_matrix is None) != (self.stability_level is None):
            raise ValueError(f"process {self.name!r}: give both lyapunov_matrix and "
                             "stability_level, or neither")
        if self.lyapunov_matrix is not None:
            matrix = np.asarray(self.lyapunov_matrix, dtype=np.float64)
            if matrix.shape != (ns, ns) or not np.allclose(matrix, matrix.T) \
                    or np.linalg.eigvalsh(matrix)[0] <= 0:
                raise ValueError(f"process {self.name!r}: lyapunov_matrix must be symmetric "
                                 f"positive definite [{ns}, {ns}]")
            object.__setattr__(self, "lyapunov_matrix", matrix)
        points = {name: (_array(f"operating point {name} state", x, ns),
                         _array(f"operating point {name} input", u, nu))
                  for name, (x, u) in self.operating_points.items()}
        object.__setattr__(self, "operating_points", points)

    @property
    def state_size(self) -> int:
        return len(self.state_names)

    @property
    def input_size(self) -> int:
        return len(self.input_names)

    @property
    def has_model(self) -> bool:
        """Whether the process has a first-principles right-hand side."""
        return self.rhs is not None

    def step(self, x: Vector, u: Vector, dt: float | None = None,
             disturbance: np.ndarray | None = None) -> Vector:
        """State after `dt` (default: one sampling period) with `u` held, by RK4 on `rhs`
        (`substeps` steps per sampling period, at least one); numpy or CasADi."""
        if self.rhs is None:
            raise ValueError(f"process {self.name!r} has no first-principles model (rhs); "
                             "fit a process model to its data instead")
        dt = self.sampling_period if dt is None else dt
        substeps = max(1, round(self.substeps * dt / self.sampling_period))
        return rk4(self.rhs, x, u, dt, substeps, disturbance)

    def reference(self, setpoint: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(state, input) of the named operating point, or the steady state for None."""
        if setpoint is None:
            return self.steady_state, self.steady_input
        if setpoint not in self.operating_points:
            raise ValueError(f"process {self.name!r} has no operating point {setpoint!r}; "
                             f"it has {', '.join(self.operating_points) or 'none'}")
        return self.operating_points[setpoint]

    def stage_cost(self, x: Vector, u: Vector, x_ref: Vector | None = None,
                   u_ref: Vector | None = None) -> Any:
        """Quadratic stage cost around (x_ref, u_ref), by default the steady state."""
        x_ref = self.steady_state if x_ref is None else x_ref
        u_ref = self.steady_input if u_ref is None else u_ref
        return (quadratic_form(x - x_ref, np.diag(self.state_weights))
                + quadratic_form(u - u_ref, np.diag(self.input_weights)))

    def lyapunov(self, x: Vector, x_ref: Vector | None = None) -> Any:
        """V(x) = (x - x_ref)' P (x - x_ref); ValueError without a Lyapunov matrix."""
        if self.lyapunov_matrix is None:
            raise ValueError(f"process {self.name!r} has no Lyapunov function")
        return quadratic_form(x - (self.steady_state if x_ref is None else x_ref),
                              self.lyapunov_matrix)

    def in_target(self, x: np.ndarray, x_ref: np.ndarray | None = None) -> np.ndarray:
        """Whether states x [..., ns] lie in the target ellipse around x_ref."""
        offset = np.asarray(x) - (self.steady_state if x_ref is None else x_ref)
        return quadratic_form(offset, np.diag(self.target_half_widths**-2.0)) <= 1.0

    def target_lyapunov_level(self) -> float:
        """The largest level rho with {V <= rho} inside the target ellipse: the smallest
        generalised eigenvalue of P against the ellipse's matrix."""
        if self.lyapunov_matrix is None:
            raise ValueError(f"process {self.name!r} has no Lyapunov function")
        scale = np.diag(self.target_half_widths)
        return float(np.linalg.eigvalsh(scale @ self.lyapunov_matrix @ scale)[0])

    def in_region(self, x: np.ndarray) -> np.ndarray:
        """Whether states x [..., ns] lie in the region data covers: the stability region where
        there is one, else the state box (False for NaN)."""
        x = np.asarray(x, dtype=np.float64)
        if self.lyapunov_matrix is not None:
            return self.lyapunov(x) <= self.stability_level
        return np.all((x >= self.state_low) & (x <= self.state_high), axis=-1)

    def sample_states(self, rng: np.random.Generator, size: int | None = None) -> np.ndarray:
        """States drawn uniformly from the region ([ns], or [size, ns] given `size`): for an
        ellipsoidal stability region, uniform points of the unit ball mapped by
        sqrt(level) L^-T with P = L L'; else uniform in the state box."""
        shape = (self.state_size,) if size is None else (size, self.state_size)
        if self.lyapunov_matrix is None:
            return rng.uniform(self.state_low, self.state_high, size=shape)
        direction = rng.standard_normal(shape)
        direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
        radius = rng.uniform(size=shape[:-1]) ** (1.0 / self.state_size)
        ball = radius[..., None] * direction
        cholesky = np.linalg.cholesky(self.lyapunov_matrix)
        flat = ball.reshape(-1, self.state_size).T
        mapped = np.sqrt(self.stability_level) * np.linalg.solve(cholesky.T, flat).T
        return self.steady_state + mapped.reshape(shape)

    def check_state(self, x: Sequence[float], what: str = "state") -> np.ndarray:
        """x as a float array of the state's size, finite; ValueError naming the states if not."""
        state = np.asarray(x, dtype=np.float64)
        if state.shape != (self.state_size,) or not np.all(np.isfinite(state)):
            raise ValueError(f"{what} must be {self.state_size} finite numbers "
                             f"[{', '.join(self.state_names)}], got {x}")
        return state

    def box_violations(self, x: Sequence[float]) -> str | None:
        """Which states of x (finite, of the state's size) lie outside the state box, with the
        bound each breaks, as one phrase ("CA = 100 is above the upper bound 1.697 kmol/m3,
        ..."); None inside."""
        state = self.check_state(x)
        broken = [f"{name} = {value:g} is {side} {bound:.4g} {unit}"
                  for name, unit, value, low, high in zip(self.state_names, self.state_units,
                                                           state, self.state_low,
                                                           self.state_high, strict=True)
                  for side, bound, out in (("below the lower bound", low, value < low),
                                           ("above the upper bound", high, value > high))
                  if out]
        return ", ".join(broken) or None
