"""Data files: atomic writes (from lipctl.envs.files) and data-only loading of torch files."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import torch
from lipctl.envs.files import atomic_write

__all__ = ["atomic_write", "load_data"]


def load_data(path: str | Path, formats: Collection[object], error: type[Exception], noun: str,
              description: str, map_location: str | torch.device = "cpu") -> dict:
    """A dict saved by torch.save, loaded as data only (weights_only=True). Raises `error` for a
    missing file ("<noun> not found"), an unreadable one, or a "format" not in `formats`
    ("<path> is not <description>")."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{noun} not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as failure:  # torch raises several types for corrupt or foreign files
        raise error(f"cannot read {noun} {path}: {failure}".splitlines()[0]) from None
    if not isinstance(state, dict) or state.get("format") not in formats:
        raise error(f"{path} is not {description}")
    return state
