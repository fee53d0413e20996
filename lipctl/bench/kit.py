"""What every benchmark records beside its results: the machine it ran on, and its bench record
(settings, machine, wall time) or results JSON written atomically; and the check of a list of
integer settings."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from lipctl.config import ConfigError
from lipctl.envs.files import write_json


def cpu_count() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0))


def cpu_model() -> str:
    """The processor's model name (from /proc/cpuinfo where there is one)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(**extra: Any) -> dict[str, Any]:
    """The processor, usable cores, GPU, Python, torch and its threads, and `extra` fields (for
    example the processes a benchmark ran at once)."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return {"processor": cpu_model(), "cpus": cpu_count(), "gpu": gpu,
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), **extra}


def write_bench_record(path: Path, settings: DictConfig | dict, wall_seconds: float,
                       machine: dict[str, Any] | None = None, **extra: Any) -> None:
    """Write {settings, machine, wall_seconds, **extra} as JSON to `path`, atomically."""
    if isinstance(settings, DictConfig):
        settings = OmegaConf.to_container(settings, resolve=True)
    write_json(path, {"settings": settings, "machine": machine or machine_info(),
                      "wall_seconds": round(wall_seconds, 1), **extra})


def require_integers(cfg: DictConfig, key: str, minimum: int) -> list[int]:
    """cfg[key] as a list of integers at or above `minimum`; a ConfigError if it is empty or
    holds anything else."""
    values = cfg[key]
    if (not isinstance(values, Sequence) or not values
            or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum
                   for v in values)):
        raise ConfigError(key, f"must be a list of integers >= {minimum}, got {values}")
    return list(values)
