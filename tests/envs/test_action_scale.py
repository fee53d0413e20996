"""The one map between unit actions and a plant's action box, for numpy, torch and CasADi."""

from __future__ import annotations

import casadi as ca
import numpy as np
import pytest
import torch

from lipctl.control.policy import ScaledPolicy
from lipctl.envs.action_scale import ActionScale

LOW, HIGH = np.array([0.0, -2.0, 5.0]), np.array([1.0, 2.0, 9.0])


def test_unit_corners_map_to_the_box_and_back():
    scale = ActionScale(LOW, HIGH)
    np.testing.assert_allclose(scale.to_env(-np.ones(3)), LOW)
    np.testing.assert_allclose(scale.to_env(np.ones(3)), HIGH)
    actions = np.random.default_rng(0).uniform(LOW, HIGH, (50, 3))
    np.testing.assert_allclose(scale.to_env(scale.to_unit(actions)), actions, rtol=1e-12)
    assert np.all(np.abs(scale.to_unit(actions)) <= 1)


def test_dtype_and_device_follow_the_input():
    scale = ActionScale(LOW, HIGH)
    assert scale.to_env(np.zeros(3, np.float32)).dtype == np.float32
    assert scale.to_unit(np.zeros(3)).dtype == np.float64
    unit = torch.rand(4, 3, dtype=torch.float32) * 2 - 1
    action = scale.to_env(unit)
    assert action.dtype == torch.float32 and action.device == unit.device
    torch.testing.assert_close(action, torch.as_tensor(scale.to_env(unit.numpy())))
    policy = ScaledPolicy(torch.nn.Tanh(), LOW, HIGH)
    torch.testing.assert_close(policy(unit), scale.to_env(torch.tanh(unit)))


def test_casadi_symbols_map_like_numbers():
    scale = ActionScale(LOW, HIGH)
    unit = ca.SX.sym("v", 3)
    mapped = ca.Function("f", [unit], [scale.to_env(unit)])
    point = np.array([0.3, -0.7, 1.0])
    np.testing.assert_allclose(np.asarray(mapped(point)).ravel(), scale.to_env(point))


@pytest.mark.parametrize("low, high", [([0.0, 1.0], [1.0, 1.0]), ([[0.0]], [[1.0]]),
                                       ([0.0], [1.0, 2.0])])
def test_a_box_that_is_not_one_is_refused(low, high):
    with pytest.raises(ValueError, match="1-D with low < high"):
        ActionScale(low, high)
