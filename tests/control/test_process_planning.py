"""Sampling planners on a process: its ODE and a fitted model's torch face as dynamics, the
stage cost as reward, in closed loop on the simulated plant."""

from __future__ import annotations

from importlib.resources import files

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lipctl.control.models import TrainedModel, build_model
from lipctl.control.process_data import Scaler
from lipctl.control.process_mpc import mpc_episode
from lipctl.control.process_planning import ProcessPlanner, process_step
from lipctl.envs.cstr import CSTR, PUBLISHED_STARTS
from lipctl.envs.quadtank import quadtank_process

MPPI = OmegaConf.load(files("lipctl.conf") / "planner" / "mppi.yaml")
QUADTANK = quadtank_process()


def mppi(**settings):
    """The MPPI factory of conf/planner/mppi.yaml with `settings` changed."""
    return instantiate(OmegaConf.merge(MPPI, settings))


def test_the_reward_is_minus_the_stage_cost_around_the_setpoint():
    planner = ProcessPlanner(mppi(horizon=2), CSTR, process_step(CSTR))
    rng = np.random.default_rng(0)
    x = CSTR.sample_states(rng, 16)
    u = rng.uniform(CSTR.input_low, CSTR.input_high, (16, 2))
    following, reward = planner.dynamics(torch.from_numpy(x), torch.from_numpy(u))
    np.testing.assert_allclose(following.numpy(), CSTR.step(x, u))
    np.testing.assert_allclose(reward.numpy(), -CSTR.stage_cost(x, u))


def test_the_fitted_model_face_is_predict_in_torch_and_differentiable():
    torch.manual_seed(0)
    model = build_model("iclrnn", 2, 2, hidden=8)
    trained = TrainedModel(model.eval(), Scaler(np.array([0.05, -2.0]), np.array([0.8, 40.0])),
                           Scaler(np.array([0.1, 1e4]), np.array([2.0, 2.9e5])), CSTR.name,
                           CSTR.state_names, CSTR.input_names, CSTR.sampling_period,
                           CSTR.substeps)
    rng = np.random.default_rng(1)
    x = CSTR.sample_states(rng, 32)
    u = rng.uniform(CSTR.input_low, CSTR.input_high, (32, 2))
    step = process_step(CSTR, trained)
    x_tensor = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    following = step(x_tensor, torch.tensor(u, dtype=torch.float32))
    np.testing.assert_allclose(following.detach().numpy(), trained.predict(x, u)[:, -1],
                               rtol=1e-5, atol=1e-5 * CSTR.target_half_widths.min())
    following.sum().backward()
    assert x_tensor.grad is not None and torch.isfinite(x_tensor.grad).all()
    with pytest.raises(ValueError, match="models process 'cstr'"):
        process_step(QUADTANK, trained)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mppi", "cem"])
def test_a_planner_on_the_ode_reaches_the_target_from_the_published_starts(method):
    for start in PUBLISHED_STARTS:
        planner = ProcessPlanner(mppi(horizon=2, method=method), CSTR, process_step(CSTR))
        _, metrics = mpc_episode(planner, list(start), steps=30)
        assert metrics.reached_step is not None and metrics.reached_step <= 25, (start, metrics)
        assert metrics.bound_violations == 0 and metrics.fallbacks == 0
        assert metrics.status_counts == {"planned": 30}


def test_a_non_finite_measurement_holds_the_last_input_as_a_fallback():
    planner = ProcessPlanner(mppi(horizon=3), CSTR, process_step(CSTR))
    np.testing.assert_array_equal(planner.act(np.array([np.nan, 0.0])), CSTR.steady_input)
    first = planner.act(np.array(PUBLISHED_STARTS[0]))
    held = planner.act(np.array([np.nan, 0.0]))
    np.testing.assert_array_equal(held, first)
    assert [s.fallback for s in planner.stats] == [True, False, True]
    planner.reset()
    assert planner.stats == []


def test_setpoint_changes_reach_the_plant_and_the_planner():
    setpoints = list(QUADTANK.operating_points)
    planner = ProcessPlanner(mppi(horizon=5), QUADTANK, process_step(QUADTANK))
    x_ref, _ = QUADTANK.reference(setpoints[0])
    _, metrics = mpc_episode(planner, list(QUADTANK.steady_state), steps=40,
                             schedule={0: setpoints[0]})
    np.testing.assert_array_equal(planner.x_ref, x_ref)
    assert metrics.reached_step is not None, metrics
