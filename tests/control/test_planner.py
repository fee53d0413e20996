"""The sampling planner (MPPI / CEM) on problems with known answers and on the true Pendulum."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from lipctl.control import run
from lipctl.control.planner import Planner, PlannerSettings

A, B, Q, RHO, P_TERMINAL = 1.0, 0.5, 1.0, 0.1, 2.0  # x' = A x + B u, reward -(Q x^2 + RHO u^2)


def linear_dynamics(state, action):
    return A * state + B * action, -(Q * state.pow(2) + RHO * action.pow(2)).sum(-1)


def terminal_value(state):
    return -P_TERMINAL * state.pow(2).sum(-1)


def finite_horizon_gain(horizon: int) -> float:
    """First-step gain K0 of the finite-horizon LQR (u0 = -K0 x0) by backward Riccati."""
    p = P_TERMINAL
    for _ in range(horizon):
        gain = A * B * p / (RHO + B * B * p)
        p = Q + A * A * p - A * B * p * gain
    return gain


@pytest.mark.parametrize("method", ["mppi", "cem"])
def test_the_first_planned_action_is_the_finite_horizon_lqr_action(method):
    settings = PlannerSettings(horizon=3, samples=1024, iterations=8, method=method,
                               gamma=1.0, proposal_samples=0, min_std=0.0, elites=32)
    planner = Planner(linear_dynamics, [-10.0], [10.0], settings, terminal_value=terminal_value)
    for x0 in (1.5, -0.8):
        planner.reset()
        action = planner.act(np.array([x0]))
        expected = -finite_horizon_gain(3) * x0
        assert action.shape == (1,) and abs(action[0] - expected) < 0.05 * abs(expected), \
            (method, x0, action, expected)


def test_actions_stay_inside_the_bounds_even_when_the_optimum_lies_outside():
    settings = PlannerSettings(horizon=2, samples=256, noise_std=3.0, proposal_samples=0)
    seen = []

    def dynamics(state, action):
        seen.append(action.clone())
        return state, (action - 5.0).pow(2).neg().sum(-1)  # best action: 5, outside [-1, 2]

    planner = Planner(dynamics, [-1.0], [2.0], settings)
    action = planner.act(np.zeros(1))
    every = torch.cat(seen)
    assert every.min() >= -1.0 and every.max() <= 2.0
    assert 1.9 <= action[0] <= 2.0


def test_a_terminated_rollout_earns_no_later_reward_and_no_terminal_value():
    settings = PlannerSettings(horizon=5, samples=4, gamma=1.0, proposal_samples=0)

    def dynamics(state, action):
        return state + 1.0, torch.ones(len(state))

    def falls_at_two(state, action, next_state):
        return next_state[:, 0] >= 2.0

    planner = Planner(dynamics, [-1.0], [1.0], settings, termination=falls_at_two,
                      terminal_value=lambda s: torch.full((len(s),), 100.0))
    starts = torch.zeros(1)
    total, applied = planner.returns(starts, torch.zeros(3, 5, 1))
    assert torch.equal(total, torch.full((3,), 2.0))  # steps to 1 and to 2, then nothing
    assert applied.shape == (3, 5, 1)
    untouched = Planner(dynamics, [-1.0], [1.0], settings,
                        terminal_value=lambda s: torch.full((len(s),), 100.0))
    assert torch.equal(untouched.returns(starts, torch.zeros(1, 5, 1))[0], torch.tensor([105.0]))


def test_proposal_rollouts_follow_the_proposal_policy_on_the_model():
    settings = PlannerSettings(horizon=3, samples=8, proposal_samples=2, proposal_noise=1e-9,
                               gamma=1.0)
    planner = Planner(lambda s, a: (s + a, -s.pow(2).sum(-1)), [-1.0], [1.0], settings,
                      proposal=lambda s: -0.5 * s)
    _, applied = planner.returns(torch.tensor([0.8]), torch.zeros(1, 3, 1), proposal_rows=2)
    assert applied.shape == (3, 3, 1)
    assert torch.allclose(applied[0, :, 0], torch.tensor([-0.4, -0.2, -0.1]), atol=1e-6)
    assert torch.equal(applied[2], torch.zeros(3, 1))


@pytest.mark.parametrize(("field", "value"), [("horizon", 0), ("samples", 0), ("iterations", 0),
                                              ("method", "random"), ("proposal_samples", 512),
                                              ("temperature", 0.0), ("gamma", 1.5)])
def test_bad_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        PlannerSettings(**{field: value})


def pendulum_dynamics(state, action):
    """Pendulum-v1's own equations (g = 10, m = l = 1, dt = 0.05) on its observations."""
    cos, sin, speed = state.unbind(-1)
    theta = torch.atan2(sin, cos)
    torque = action[:, 0].clamp(-2.0, 2.0)
    reward = -(theta.pow(2) + 0.1 * speed.pow(2) + 0.001 * torque.pow(2))
    speed = (speed + (15.0 * torch.sin(theta) + 3.0 * torque) * 0.05).clamp(-8.0, 8.0)
    theta = theta + speed * 0.05
    return torch.stack([torch.cos(theta), torch.sin(theta), speed], -1), reward


@pytest.mark.slow
def test_mppi_alone_on_the_true_pendulum_swings_up_and_balances_it():
    env = gym.make("Pendulum-v1")
    settings = PlannerSettings(horizon=25, samples=256, iterations=2, proposal_samples=0)
    planner = Planner(pendulum_dynamics, env.action_space.low, env.action_space.high, settings)
    (trajectory,) = run(planner, env, episodes=1, seed=3)
    upright = np.arctan2(trajectory.observations[-50:, 1], trajectory.observations[-50:, 0])
    assert np.abs(upright).max() < 0.2 and trajectory.episode_return > -400, \
        trajectory.episode_return
