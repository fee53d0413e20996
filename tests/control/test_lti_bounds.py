"""The regret and deterioration bounds of cloned LTI feedback: they hold where their
assumptions do, and the closed-form maps behind them match simulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lipctl.control.lti_bounds import (
    deterioration_bound,
    jacobian_at_origin,
    linearity_residual,
    regret_bound,
    response_matrix,
)
from lipctl.control.lti_robustness import LTILoop, sequence_attack
from lipctl.control.policy import LinearFeedback
from lipctl.envs.lti import LTI_SYSTEMS


def test_the_response_matrix_is_the_simulated_linear_system():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 3)) * 0.5, rng.normal(size=(3, 2))
    c, d = rng.normal(size=(4, 3)), rng.normal(size=(4, 2))
    inputs = rng.normal(size=(6, 2))
    x, outputs = np.zeros(3), []
    for w in inputs:
        outputs.append(c @ x + d @ w)
        x = a @ x + b @ w
    np.testing.assert_allclose(response_matrix(a, b, c, d, 6) @ inputs.ravel(),
                               np.concatenate(outputs), atol=1e-12)


def _linear_clone(system, factor: float) -> nn.Module:
    gain = factor * system.lqr_gain()
    return LinearFeedback(gain, [-np.inf] * system.input_dim, [np.inf] * system.input_dim)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["double_integrator", "inverted_pendulum_linear"])
def test_both_bounds_hold_for_a_linear_clone_and_are_tight_where_they_should_be(name):
    system = LTI_SYSTEMS[name]()
    clone, expert = _linear_clone(system, 0.8), _linear_clone(system, 1.0)
    x0 = torch.as_tensor(system.initial_states(np.random.default_rng(1), 8))
    loop, reference = LTILoop(clone, system), LTILoop(expert, system)
    with torch.no_grad():
        cost, states, actions = loop.rollout(x0)
        expert_cost, expert_states, _ = reference.rollout(x0)
    visited = states.reshape(-1, system.state_dim).numpy()
    errors = np.linalg.norm(visited @ (0.2 * system.lqr_gain()).T, axis=-1)
    # the policy errors known exactly at the visited states: only Cauchy-Schwarz is loose
    regret = regret_bound(system, expert_states.numpy(), states.numpy(), 1.0, visited, errors)
    measured = (cost - expert_cost).numpy()
    assert np.all(measured <= regret.bound * (1 + 1e-9)) and np.all(measured > 0)
    assert np.all(regret.bound <= 10 * measured)
    scale = torch.full((system.state_dim,), 0.1, dtype=torch.float64)
    bound = deterioration_bound(system, clone, states.numpy(), actions.numpy(), scale.numpy())
    offset, jacobian = jacobian_at_origin(clone, system.state_dim)
    np.testing.assert_allclose(jacobian, -0.8 * system.lqr_gain(), rtol=1e-6)
    assert np.allclose(offset, 0) and bound.closed_loop_radius < 1
    assert linearity_residual(clone, offset, jacobian, torch.as_tensor(visited)) < 1e-6
    for eps in (0.1, 1.0):
        attack = sequence_attack(loop, x0, eps, scale, steps=30)
        with torch.no_grad():
            attacked = loop.cost(x0, attack)
        assert np.all((attacked - cost).numpy() <= bound.bound(eps) * (1 + 1e-9))


def test_the_regret_bound_generalises_policy_errors_by_the_lipschitz_constant():
    """Errors known only at demonstrated states: the bound grows with L and the distance."""
    system = LTI_SYSTEMS["double_integrator"]()
    clone, expert = _linear_clone(system, 0.8), _linear_clone(system, 1.0)
    x0 = torch.as_tensor(system.initial_states(np.random.default_rng(2), 4))
    with torch.no_grad():
        cost, states, _ = LTILoop(clone, system).rollout(x0)
        expert_cost, expert_states, _ = LTILoop(expert, system).rollout(x0)
    demos = np.random.default_rng(3).uniform(-1, 1, (200, 2))
    errors = np.linalg.norm(demos @ (0.2 * system.lqr_gain()).T, axis=-1)
    tight = regret_bound(system, expert_states.numpy(), states.numpy(), 0.8 * 4.306, demos,
                         errors)
    loose = regret_bound(system, expert_states.numpy(), states.numpy(), 10.0, demos, errors)
    assert np.all((cost - expert_cost).numpy() <= tight.bound)
    assert np.all(tight.bound < loose.bound)
