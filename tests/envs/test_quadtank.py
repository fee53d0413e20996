"""The quadruple tank as a process description and a gymnasium plant, and MPC of a process known
only through a fitted model (no ODE)."""

from __future__ import annotations

import dataclasses
import warnings

import casadi as ca
import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from scipy.integrate import solve_ivp

from lipctl.control.models import TrainedModel, build_model
from lipctl.control.process_data import generate
from lipctl.control.process_mpc import process_mpc
from lipctl.envs import make_env
from lipctl.envs.quadtank import ENV_ID, SETTINGS, TANK_HEIGHT, quadtank_process, quadtank_rhs


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_operating_points_are_equilibria_near_the_papers_levels(setting):
    process = quadtank_process(setting)
    for levels, voltages in process.operating_points.values():
        np.testing.assert_allclose(quadtank_rhs(levels, voltages, SETTINGS[setting]), 0.0,
                                   atol=1e-12)
    published = {"minimum": [12.4, 12.7, 1.8, 1.4], "non_minimum": [12.6, 13.0, 4.8, 4.9]}
    np.testing.assert_allclose(process.steady_state, published[setting], atol=0.2)


def test_rk4_step_agrees_with_solve_ivp_and_casadi():
    process = quadtank_process()
    x, u = np.array([10.0, 14.0, 2.5, 1.0]), np.array([4.0, 2.0])
    exact = solve_ivp(lambda _, z: process.rhs(z, u), (0.0, process.sampling_period), x,
                      method="DOP853", rtol=1e-12, atol=1e-12).y[:, -1]
    np.testing.assert_allclose(process.step(x, u), exact, atol=1e-4)
    assert not np.allclose(exact, x, atol=0.05)
    xs, us = ca.SX.sym("x", 4), ca.SX.sym("u", 2)
    symbolic = ca.Function("f", [xs, us], [process.step(xs, us)])
    np.testing.assert_allclose(np.asarray(symbolic(x, u)).ravel(), process.step(x, u),
                               rtol=1e-12)


def test_env_is_registered_passes_the_env_checker_and_clips_at_the_tank_height():
    assert ENV_ID in gym.registry
    env = make_env(ENV_ID)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env.unwrapped)
    assert all("symmetric and normalized" in str(w.message) or "infinity" in str(w.message)
               for w in caught), [str(w.message) for w in caught]
    full = make_env(ENV_ID, x0=[19.5, 19.5, 19.5, 19.5], setting="non_minimum")
    full.reset(seed=0)
    _, _, _, _, info = full.step(np.array([6.0, 6.0]))
    assert np.all(info["state"] <= TANK_HEIGHT) and info["state"].max() == TANK_HEIGHT
    _, _, _, _, info = full.step(np.array([9.0, -1.0]))
    assert info["clipped"] and np.array_equal(info["action"], [6.0, 0.0])


def test_the_reward_follows_the_setpoint():
    env = make_env(ENV_ID, x0=list(quadtank_process().operating_points["high"][0]))
    env.reset(seed=0, options={"setpoint": "high"})
    _, at_high, *_ = env.step(quadtank_process().operating_points["high"][1])
    env.reset(seed=0, options={"setpoint": "low"})
    _, at_low, *_ = env.step(quadtank_process().operating_points["high"][1])
    assert at_high == pytest.approx(0.0, abs=1e-9) and at_low < -10.0


def test_mpc_of_a_process_without_an_ode_runs_on_its_fitted_model():
    """A plant known only from data: no rhs, no simulator; the MPC needs the model alone."""
    process = quadtank_process()
    data = generate(process, states_per_axis=2, inputs_per_axis=2, chains=4, periods=3)
    logged_only = dataclasses.replace(process, rhs=None, env_id=None)
    torch.manual_seed(0)
    trained = TrainedModel(build_model("rnn", 4, 2, hidden=8).eval(), data.state_scaler,
                           data.input_scaler, process.name, process.state_names,
                           process.input_names, process.sampling_period, process.substeps)
    mpc = process_mpc(logged_only, trained, horizon=3, setpoint="high")
    action = mpc.act(process.operating_points["low"][0])
    assert action.shape == (2,) and np.all((action >= 0) & (action <= 6))
    assert not mpc.stats[-1].fallback
    with pytest.raises(ValueError, match="has no first-principles model"):
        process_mpc(logged_only)
