"""Export a torch module with a fixed input shape to TorchScript or ONNX, and check parity.

Learned policies (a `lipctl.control.policy.ScaledPolicy`: observations to actions in the plant's
units) and process models (a ProcessModel's forward on [B, T, features]) are exported the same way:
traced once on an example input, so the file computes the module for inputs of exactly that
shape. Files are written atomically. The ONNX file has one input named "input" and one output
named "output".
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from lipctl.envs.files import atomic_write
from lipctl.lipschitz.certificates import Certificate

if TYPE_CHECKING:
    from lipctl.control.models.io import TrainedModel

FORMATS = ("torchscript", "onnx")
POLICY, PROCESS_MODEL = "policy", "process model"  # the kinds of network a checkpoint holds
PROBES = 8  # inputs an export is checked on


@dataclass(frozen=True)
class Exportable:
    """A saved network ready to export or deploy, with its Lipschitz certificate.

    kind: POLICY (module: observations [1, n] -> actions [1, m] in the env's units) or
    PROCESS_MODEL (module: scaled sequences [1, T, n + m] -> scaled states [1, T, n]; `trained`
    holds the scalers). `example` is an input of the exported shape; `probes` are inputs of
    that shape to check an export with; `env_id` is the env or plant it was made for.
    """

    kind: str
    module: nn.Module
    example: Tensor
    probes: list[Tensor]
    certificate: Certificate
    env_id: str
    trained: TrainedModel | None = None


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose from {', '.join(FORMATS)}")


@contextmanager
def _quiet() -> Iterator[None]:
    """torch.jit warns that it is deprecated on every call, and the ONNX exporter logs the
    optional packages it did not find and deprecations of its own; say none of it."""
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`torch.jit", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*treespec", category=FutureWarning)
            yield
    finally:
        onnx_logger.setLevel(level)


def export_module(module: nn.Module, example_input: Tensor, path: str | Path,
                  format: str) -> Path:
    """Trace `module` on `example_input` and write it to `path` as `format` (see FORMATS).

    The module is exported as it is: put it in eval mode first."""
    _check_format(format)
    path = Path(path)
    with torch.no_grad(), _quiet():
        if format == "torchscript":
            traced = torch.jit.trace(module, (example_input,))
            buffer = io.BytesIO()
            torch.jit.save(traced, buffer)
            data = buffer.getvalue()
        else:
            program = torch.onnx.export(module, (example_input,), None, input_names=["input"],
                                        output_names=["output"], dynamo=True, verbose=False)
            data = program.model_proto.SerializeToString()
    atomic_write(path, lambda f: f.write(data))
    return path


def _exported_outputs(path: Path, format: str, inputs: Sequence[Tensor]) -> list[np.ndarray]:
    if format == "torchscript":
        with _quiet():
            loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            return [loaded(x).numpy() for x in inputs]
    import onnxruntime  # heavy; only needed here

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [session.run(["output"], {"input": x.numpy()})[0] for x in inputs]


def export_parity(module: nn.Module, path: str | Path, format: str,
                  inputs: Sequence[Tensor]) -> float:
    """Largest absolute difference between `module` and its export at `path` over `inputs`
    (each of the exported input shape); TorchScript runs in torch, ONNX in onnxruntime."""
    _check_format(format)
    if not inputs:
        raise ValueError("export_parity needs at least one input")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"exported file not found: {path}")
    with torch.no_grad():
        expected = [module(x).numpy() for x in inputs]
    exported = _exported_outputs(path, format, inputs)
    return max(float(np.max(np.abs(e - x))) for e, x in zip(expected, exported, strict=True))
