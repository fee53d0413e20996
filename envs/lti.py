"""Discrete-time linear systems x_{t+1} = A x_t + B u_t with a quadratic cost, where the
quantities of Lipschitz behaviour cloning are exact: the LQR expert, its closed-loop cost from
any initial state, and the least feedback gain that can stabilise the system.

Systems: a double integrator and the linearisation of MuJoCo's InvertedPendulum-v5 (the model
its LQR expert is designed on, without termination).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.optimize

ZERO_GAIN = 1e-9  # a least stabilising gain below this (relative to ||B||) is 0


@dataclass(frozen=True)
class LTISystem:
    """x_{t+1} = A x_t + B u_t, cost J = sum_{t < horizon} x_t'Q x_t + u_t'R u_t, initial states
    uniform in the box |x_i| <= x0_half_widths[i]; inputs are unbounded."""

    name: str
    a: np.ndarray
    b: np.ndarray
    q: np.ndarray
    r: np.ndarray
    horizon: int
    x0_half_widths: np.ndarray

    @property
    def state_dim(self) -> int:
        return self.a.shape[0]

    @property
    def input_dim(self) -> int:
        return self.b.shape[1]

    def riccati(self) -> np.ndarray:
        """P of the discrete algebraic Riccati equation: x0'P x0 is the expert's infinite-horizon
        cost from x0."""
        return scipy.linalg.solve_discrete_are(self.a, self.b, self.q, self.r)

    def lqr_gain(self) -> np.ndarray:
        """K [m, n] of the infinite-horizon LQR law u = -K x."""
        p = self.riccati()
        return np.linalg.solve(self.r + self.b.T @ p @ self.b, self.b.T @ p @ self.a)

    def cost_matrix(self, gain: np.ndarray, horizon: int | None = None) -> np.ndarray:
        """S with x0'S x0 = J of u = -gain x from x0 over `horizon` steps (default: the
        system's): S = sum_t (A - BK)'^t (Q + K'RK) (A - BK)^t."""
        closed = self.a - self.b @ gain
        stage = self.q + gain.T @ self.r @ gain
        total = np.zeros_like(self.a)
        for _ in range(self.horizon if horizon is None else horizon):
            total = stage + closed.T @ total @ closed
        return total

    def initial_states(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """[count, n] states uniform in the initial box."""
        return rng.uniform(-1.0, 1.0, (count, self.state_dim)) * self.x0_half_widths


def spectral_radius(matrix: np.ndarray) -> float:
    return float(np.max(np.abs(np.linalg.eigvals(matrix))))


def least_stabilising_gain(a: np.ndarray, b: np.ndarray, starts: int = 8,
                           seed: int = 0) -> tuple[float, np.ndarray]:
    """(||K||_2, K): the smallest-norm gain found with rho(A - BK) < 1.

    A clone whose l2 Lipschitz constant is L has a Jacobian of norm <= L at the origin, so no
    clone with L below the infimum of ||K||_2 over stabilising gains stabilises the loop (its
    linearisation is unstable): that infimum is the critical L. It is searched by Nelder-Mead on
    ||K|| with a penalty outside the stable set, started from LQR gains of growing input cost
    (which tend to the least-energy stabilising gain) and random perturbations of them, each
    result then shrunk along its ray to the stability boundary by bisection. The value is
    attained by a stabilising gain, so it is an upper estimate of the infimum (0 when A is
    already Schur stable, or when the search shrinks to a gain below ZERO_GAIN, as for a
    marginally stable A; exact for a scalar system, where it is (|a| - 1) / |b|).
    """
    n, m = b.shape
    if spectral_radius(a) < 1:
        return 0.0, np.zeros((m, n))
    rng = np.random.default_rng(seed)
    seeds = []
    for input_cost in np.logspace(-2, 8, starts):
        p = scipy.linalg.solve_discrete_are(a, b, np.eye(n) * 1e-6, np.eye(m) * input_cost)
        seeds.append(np.linalg.solve(np.eye(m) * input_cost + b.T @ p @ b, b.T @ p @ a))

    def objective(flat: np.ndarray) -> float:
        gain = flat.reshape(m, n)
        excess = spectral_radius(a - b @ gain) - (1 - 1e-9)
        return float(np.linalg.norm(gain, 2) + 1e3 * max(excess, 0.0))

    best = min(seeds, key=lambda k: np.linalg.norm(k, 2))
    for start in seeds + [s * (1 + 0.2 * rng.standard_normal(s.shape)) for s in seeds]:
        result = scipy.optimize.minimize(objective, start.ravel(), method="Nelder-Mead",
                                         options={"xatol": 1e-10, "fatol": 1e-12,
                                                  "maxiter": 4000 * n * m})
        gain = result.x.reshape(m, n)
        multiple = smallest_stabilising_multiple(a, b, gain)
        if multiple is not None and multiple * np.linalg.norm(gain, 2) < np.linalg.norm(best, 2):
            best = multiple * gain
    norm = float(np.linalg.norm(best, 2))
    if norm < ZERO_GAIN * max(1.0, float(np.linalg.norm(b, 2))):
        return 0.0, np.zeros((m, n))  # marginally stable A: arbitrarily small gains stabilise
    return norm, best


def smallest_stabilising_multiple(a: np.ndarray, b: np.ndarray, gain: np.ndarray
                                  ) -> float | None:
    """The smallest t in (0, 1] with rho(A - t B K) < 1 (bisection, assuming the stable t form
    an interval ending at 1); None if K itself does not stabilise."""
    def stable(t: float) -> bool:
        return spectral_radius(a - t * b @ gain) < 1

    if not stable(1.0):
        return None
    low, high = 0.0, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (low, middle) if stable(middle) else (middle, high)
    return high


def demonstrations(system: LTISystem, gain: np.ndarray, episodes: int, noise_radius: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Expert data: `episodes` closed-loop trajectories of u = -gain x from initial states of
    the box, and (DART-style) a copy of every visited state perturbed by scale * v, v uniform in
    the ball ||v||_2 <= noise_radius, with `scale` the clean states' per-dimension std, labelled
    by the expert. Returns (states [N, n], actions [N, m], episode index [N], coverage: the
    per-dimension min, max and std of the states and the scale)."""
    closed = system.a - system.b @ gain
    x = system.initial_states(rng, episodes)
    clean = np.empty((episodes, system.horizon, system.state_dim))
    for t in range(system.horizon):
        clean[:, t] = x
        x = x @ closed.T
    scale = clean.reshape(-1, system.state_dim).std(0)
    direction = rng.standard_normal(clean.shape)
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    radius = noise_radius * rng.uniform(size=clean.shape[:-1] + (1,)) ** (1 / system.state_dim)
    noisy = clean + scale * radius * direction
    states = np.concatenate([clean, noisy], axis=1).reshape(-1, system.state_dim)
    episode_index = np.repeat(np.arange(episodes), 2 * system.horizon)
    coverage = {"states": len(states), "scale": scale.tolist(), "min": states.min(0).tolist(),
                "max": states.max(0).tolist(), "std": states.std(0).tolist(),
                "noise_radius": noise_radius}
    return states, -states @ gain.T, episode_index, coverage


def double_integrator(dt: float = 0.1, horizon: int = 100) -> LTISystem:
    """Position and velocity under a force, sampled every dt: 2 states, 1 input."""
    a = np.array([[1.0, dt], [0.0, 1.0]])
    b = np.array([[dt**2 / 2], [dt]])
    return LTISystem("double_integrator", a, b, np.eye(2), 0.1 * np.eye(1), horizon,
                     np.array([1.0, 1.0]))


def inverted_pendulum_linear(horizon: int = 100) -> LTISystem:
    """InvertedPendulum-v5 linearised at the upright equilibrium (one env step, 0.04 s), with
    the cost of its LQR expert (envs/experts.py): 4 states, 1 input, open-loop unstable."""
    import gymnasium as gym

    from lipctl.envs.experts import linearise_mujoco

    env = gym.make("InvertedPendulum-v5")
    a, b = linearise_mujoco(env)
    env.close()
    return LTISystem("inverted_pendulum_linear", a, b, np.diag([1.0, 10.0, 0.1, 0.1]),
                     0.1 * np.eye(1), horizon, np.array([0.2, 0.1, 0.2, 0.2]))


LTI_SYSTEMS: dict[str, Callable[[], LTISystem]] = {
    "double_integrator": double_integrator,
    "inverted_pendulum_linear": inverted_pendulum_linear,
}
