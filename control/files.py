"""Data files: atomic writes and .npz arrays (from lipctl.envs.files) and data-only loading of
torch files."""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Collection
from pathlib import Path

import torch

from lipctl.envs.files import (
    ZIP_MAGIC,
    WriteError,
    atomic_write,
    load_arrays,
    read_magic,
    writing,
)

__all__ = ["WriteError", "atomic_write", "load_arrays", "load_data", "writing"]


def load_data(path: str | Path, formats: Collection[object], error: type[Exception], noun: str,
              description: str, map_location: str | torch.device = "cpu") -> dict:
    """A dict saved by torch.save, loaded as data only (weights_only=True). Raises `error` for a
    missing file ("<noun> not found"), one that is not plain data or not a torch file at all
    ("<path> is not <description> (refused: ...)"), an unreadable, empty or truncated one
    ("cannot read <noun> <path>: ..."), or a "format" not in `formats` ("<path> is not
    <description>")."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{noun} not found: {path}")
    magic = read_magic(path, error, noun)
    if not magic:
        raise error(f"cannot read {noun} {path}: empty file")
    archive = magic == ZIP_MAGIC  # a torch file, damaged or not, rather than a foreign one
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as failure:  # never retried unsafely, never with torch's advice to do so
        # torch reports a cut-off archive as a RuntimeError or an OSError (EINVAL), by where it
        # ends; a refused pickle in an intact archive is an UnpicklingError
        if archive and not isinstance(failure, pickle.UnpicklingError):
            raise error(f"cannot read {noun} {path}: corrupt or truncated file") from None
        raise error(f"{path} is not {description} (refused: it is not plain data)") from None
    if not isinstance(state, dict) or state.get("format") not in formats:
        raise error(f"{path} is not {description}")
    return state
