"""Devices, threads and seeds for one process."""

from __future__ import annotations

import random

import numpy as np
import torch

from lipctl.config import ConfigError


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, else the CPU; an unavailable device is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError("device", f"unknown device '{name}' (use auto, cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", f"'{name}' requested but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError("device", f"unsupported device '{name}' (use auto, cpu or cuda)")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
