"""Files written so that a crash never leaves a half-written one behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path
from typing import BinaryIO

import torch


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call write(file) on a temp file next to `path`, fsync it, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
