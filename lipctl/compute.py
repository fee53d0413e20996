"""Devices, threads, seeds and memory figures, for one process."""

from __future__ import annotations

import random
import resource
from pathlib import Path

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


def reset_peak_rss() -> None:
    """Restart the process's peak-RSS count (Linux; elsewhere the peak covers the process)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """Peak resident memory of this process since `reset_peak_rss`, in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
