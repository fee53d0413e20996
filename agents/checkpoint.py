"""Atomic checkpoint files that load as data only (torch.load with weights_only=True)."""

from __future__ import annotations

from pathlib import Path

import torch

from control.files import atomic_write


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or not a lipctl checkpoint."""


FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write `state` to `path` atomically: a temp file in the same folder, fsync, rename."""
    atomic_write(path, lambda f: torch.save({"format": FORMAT_VERSION, **state}, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by `save_checkpoint`, never executing code from it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: {error}".splitlines()[0]) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a lipctl checkpoint (format {FORMAT_VERSION})")
    return state
