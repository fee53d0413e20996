"""Bounds on the regret and the deterioration of a feedback policy cloned from an LQR expert on
an LTI system, in the form of Al Makdah, Krishnan & Pasqualetti's (policy error or Lipschitz
constant times a closed-loop gain), with every constant computed for the system at hand.

Plant x_{t+1} = A x_t + B u_t, cost J = sum_{t<T} x_t'Q x_t + u_t'R u_t, expert u = -K x.

Regret (no assumption on the clone beyond its certified Lipschitz bound L). The clone's
trajectory is the expert's loop driven by the policy error d_t = clone(x_t) + K x_t, so with
w the expert trajectory's cost outputs [Q^1/2 x*_t; R^1/2 u*_t] and M the map from d to the
change of those outputs through the expert's closed loop A - BK, J(clone) = ||w + M d||^2
exactly, and for ||d_t|| <= e_t:
    regret <= 2 sum_t ||(M'w)_t|| e_t + ||M||^2 sum_t e_t^2.
The policy error generalises from the demonstrations by the Lipschitz property: at any state x,
||d(x)|| <= min_i ||d(x_i)|| + (L + ||K||) ||x - x_i|| over the demonstrated states x_i.

Deterioration (assumption: the clone acts as its linearisation at the origin, u = u0 + J x, over
the states the perturbed loop visits). A measurement perturbation delta_t = S v_t with
||v_t|| <= eps changes the cost outputs z of the nominal closed loop by G v, G the map through
the clone's closed loop A + BJ; so J(perturbed) - J(nominal) = 2 z'G v + ||G v||^2 and
    deterioration <= 2 eps sum_t ||(G'z)_t|| + eps^2 T ||G||^2.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from lipctl.envs.lti import LTISystem, spectral_radius


def response_matrix(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray,
                    horizon: int) -> np.ndarray:
    """The map from inputs w_0..w_{T-1} to outputs y_t = C x_t + D w_t of x_{t+1} = A x_t +
    B w_t, x_0 = 0, as one [T p, T k] matrix (block (t, s) = C A^(t-1-s) B for s < t, D on the
    diagonal)."""
    p, k = c.shape[0], b.shape[1]
    blocks = [c @ np.linalg.matrix_power(a, lag) @ b for lag in range(horizon - 1)]
    matrix = np.zeros((horizon * p, horizon * k))
    for t in range(horizon):
        matrix[t * p:(t + 1) * p, t * k:(t + 1) * k] = d
        for s in range(t):
            matrix[t * p:(t + 1) * p, s * k:(s + 1) * k] = blocks[t - 1 - s]
    return matrix


def _root(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a positive semi-definite matrix."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(values.clip(min=0))) @ vectors.T


def _per_step_norms(stacked: np.ndarray, size: int) -> np.ndarray:
    """||block_t|| of rows [N, T size] cut into T blocks of `size`: [N, T]."""
    return np.linalg.norm(stacked.reshape(len(stacked), -1, size), axis=-1)


def cost_outputs(system: LTISystem, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """[Q^1/2 x_t; R^1/2 u_t] stacked over t for trajectories states [N, T, n], actions
    [N, T, m]: [N, T (n + m)], whose squared norm is each trajectory's cost."""
    outputs = np.concatenate([states @ _root(system.q).T, actions @ _root(system.r).T], -1)
    return outputs.reshape(len(states), -1)


def jacobian_at_origin(policy: nn.Module, state_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(u0, J): the policy's action at the origin [m] and its Jacobian there [m, n]."""
    origin = torch.zeros(state_dim, dtype=torch.float64)
    module = copy.deepcopy(policy).double()
    with torch.no_grad():
        offset = module(origin[None])[0].numpy()
    jacobian = torch.autograd.functional.jacobian(lambda x: module(x[None])[0], origin)
    return offset, jacobian.detach().numpy()


@dataclass(frozen=True)
class RegretBound:
    """Per initial state: the regret bound, and the policy-error bounds e_t it used [N, T]."""

    bound: np.ndarray
    policy_error: np.ndarray
    expert_gain: float  # ||M||: policy error -> cost outputs, through the expert's loop


def regret_bound(system: LTISystem, expert_states: np.ndarray, clone_states: np.ndarray,
                 lipschitz: float, demo_states: np.ndarray, demo_errors: np.ndarray
                 ) -> RegretBound:
    """The regret bound of the module docstring for each initial state: the expert's
    trajectories [N, T, n], the clone's nominal ones [N, T, n], the clone's certified bound,
    and its policy errors ||clone(x_i) + K x_i|| at the demonstrated states [M, n]."""
    gain = system.lqr_gain()
    n, m, horizon = system.state_dim, system.input_dim, clone_states.shape[1]
    c = np.vstack([_root(system.q), -_root(system.r) @ gain])
    d = np.vstack([np.zeros((n, m)), _root(system.r)])
    response = response_matrix(system.a - system.b @ gain, system.b, c, d, horizon)
    outputs = cost_outputs(system, expert_states, -expert_states @ gain.T)
    linear = _per_step_norms(outputs @ response, m)  # ||(M'w)_t||
    slope = lipschitz + np.linalg.norm(gain, 2)
    visited = torch.as_tensor(clone_states.reshape(-1, n), dtype=torch.float64)
    distances = torch.cdist(visited, torch.as_tensor(demo_states, dtype=torch.float64)).numpy()
    error = (demo_errors[None] + slope * distances).min(1).reshape(clone_states.shape[:2])
    expert_gain = float(np.linalg.norm(response, 2))
    bound = 2 * (linear * error).sum(1) + expert_gain ** 2 * (error ** 2).sum(1)
    return RegretBound(bound, error, expert_gain)


@dataclass(frozen=True)
class DeteriorationBound:
    """The clone's linearisation and the deterioration bound it gives. `coefficients`:
    (linear [N], quadratic) with bound(eps) = 2 eps linear + eps^2 quadratic per initial
    state."""

    jacobian: np.ndarray
    offset: np.ndarray
    closed_loop_radius: float  # rho(A + B J)
    gain: float                # ||G||: normalised perturbation sequence -> cost outputs
    linear: np.ndarray
    quadratic: float

    def bound(self, eps: float) -> np.ndarray:
        return 2 * eps * self.linear + eps ** 2 * self.quadratic


def deterioration_bound(system: LTISystem, policy: nn.Module, states: np.ndarray,
                        actions: np.ndarray, scale: np.ndarray) -> DeteriorationBound:
    """The deterioration bound of the module docstring for the clone `policy` from its nominal
    trajectories (states [N, T, n], actions [N, T, m]); perturbations scale * v."""
    offset, jacobian = jacobian_at_origin(policy, system.state_dim)
    n, horizon = system.state_dim, states.shape[1]
    spread = jacobian @ np.diag(scale)
    c = np.vstack([_root(system.q), _root(system.r) @ jacobian])
    d = np.vstack([np.zeros((n, n)), _root(system.r) @ spread])
    closed = system.a + system.b @ jacobian
    response = response_matrix(closed, system.b @ spread, c, d, horizon)
    linear = _per_step_norms(cost_outputs(system, states, actions) @ response, n).sum(1)
    gain = float(np.linalg.norm(response, 2))
    return DeteriorationBound(jacobian, offset, spectral_radius(closed), gain, linear,
                              horizon * gain ** 2)


def linearity_residual(policy: nn.Module, offset: np.ndarray, jacobian: np.ndarray,
                       states: Tensor) -> float:
    """How far the policy is from its linearisation over `states` [N, n]: the largest
    ||policy(x) - u0 - J x|| over the largest ||policy(x)|| (0: exactly affine there)."""
    with torch.no_grad():
        actions = copy.deepcopy(policy).double()(states.double()).numpy()
    affine = offset + states.double().numpy() @ jacobian.T
    return float(np.linalg.norm(actions - affine, axis=-1).max()
                 / max(np.linalg.norm(actions, axis=-1).max(), 1e-12))
