"""Exported policies and process models compute what the torch modules compute."""

from __future__ import annotations

import pytest
import torch

from agents.sac import Actor
from control.export import FORMATS, MethodAsForward, export_module, export_parity
from control.models import build_model

TOLERANCE = 1e-5


def _policy() -> tuple[torch.nn.Module, torch.Tensor]:
    """A small SAC actor's deterministic map on a batch of 4 observations of size 3."""
    torch.manual_seed(0)
    return MethodAsForward(Actor(3, 2, [16, 16]).eval(), "deterministic"), torch.randn(4, 3)


def _process_model() -> tuple[torch.nn.Module, torch.Tensor]:
    """An untrained ICLRNN on [B=2, T=5, 4] (state 2 + input 2)."""
    torch.manual_seed(0)
    return build_model("iclrnn", 2, 2, hidden=8).eval(), torch.randn(2, 5, 4)


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


def test_unknown_format_and_method_are_errors(tmp_path):
    module, example = _policy()
    with pytest.raises(ValueError, match="unknown export format 'tflite'"):
        export_module(module, example, tmp_path / "net", "tflite")
    with pytest.raises(ValueError, match="no method 'greedy'"):
        MethodAsForward(module, "greedy")
    with pytest.raises(ValueError, match="not found"):
        export_parity(module, tmp_path / "missing.onnx", "onnx", [example])
