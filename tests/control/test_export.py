"""Exported policies and process models compute what the torch modules compute."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lipctl.agents.sac import SAC
from lipctl.control.export import FORMATS, export_module, export_parity
from lipctl.control.models import build_model
from lipctl.control.policy import ModuleController, ScaledPolicy, policy_certificate

TOLERANCE = 1e-5


def _policy() -> tuple[torch.nn.Module, torch.Tensor]:
    """A small SAC learner's deterministic policy in action units, on 4 observations of size 3."""
    torch.manual_seed(0)
    policy = ScaledPolicy(SAC(3, 2, hidden=(16, 16)).policy().eval(), [-2.0, 0.0], [2.0, 5.0])
    return policy, torch.randn(4, 3)


def _process_model() -> tuple[torch.nn.Module, torch.Tensor]:
    """An untrained ICLRNN on [B=2, T=5, 4] (state 2 + input 2)."""
    torch.manual_seed(0)
    return build_model("iclrnn", 2, 2, hidden=8).eval(), torch.randn(2, 5, 4)


@pytest.mark.slow
@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("make", [_policy, _process_model], ids=["policy", "process_model"])
def test_export_parity(tmp_path, make, format):
    module, example = make()
    path = export_module(module, example, tmp_path / f"net.{format}", format)
    inputs = [3 * torch.randn_like(example) for _ in range(3)]
    assert export_parity(module, path, format, inputs) < TOLERANCE
    # the check can fail: a changed module no longer matches its export
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.5)
    assert export_parity(module, path, format, inputs) > TOLERANCE


def test_unknown_format_and_missing_file_are_errors(tmp_path):
    module, example = _policy()
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export_module(module, example, tmp_path / "net", "tflite")
    with pytest.raises(ValueError, match="not found"):
        export_parity(module, tmp_path / "missing.onnx", "onnx", [example])


def test_scaled_policy_acts_in_action_units_and_is_certified():
    policy, observations = _policy()
    with torch.no_grad():
        actions = policy(10 * torch.randn(256, 3))
    low, high = torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 5.0])
    assert torch.all((actions >= low) & (actions <= high))
    assert float(actions.std(0).min()) > 0.1  # not stuck at a bound
    actor = policy.module
    certificate = policy_certificate(actor.mlp, policy, observations)
    assert 0 < certificate.lower <= certificate.upper
    # the upper bound holds on random pairs; it scales with the action range
    x1, x2 = torch.randn(512, 3), torch.randn(512, 3)
    with torch.no_grad():
        ratios = (policy(x1) - policy(x2)).norm(dim=1) / (x1 - x2).norm(dim=1)
    assert float(ratios.max()) <= certificate.upper
    wide = ScaledPolicy(actor, [-20.0, 0.0], [20.0, 5.0])
    assert policy_certificate(actor.mlp, wide, observations).upper == pytest.approx(
        8 * certificate.upper)


def test_module_controller_answers_one_action_in_float64():
    policy, observations = _policy()
    action = ModuleController(policy).act(observations[0].double().numpy())
    assert action.dtype == np.float64 and action.shape == (2,)
    torch.testing.assert_close(torch.from_numpy(action).float(), policy(observations[:1])[0])

