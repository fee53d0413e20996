"""Data files: atomic writes (from lipctl.envs.files) and data-only loading of torch files."""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Collection
from pathlib import Path

import torch

from lipctl.envs.files import atomic_write

__all__ = ["atomic_write", "load_data"]

ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


def load_data(path: str | Path, formats: Collection[object], error: type[Exception], noun: str,
              description: str, map_location: str | torch.device = "cpu") -> dict:
    """A dict saved by torch.save, loaded as data only (weights_only=True). Raises `error` for a
    missing file ("<noun> not found"), one that is not plain data or not a torch file at all
    ("<path> is not <description> (refused: ...)"), an unreadable or truncated one ("cannot read
    <noun> <path>: ..."), or a "format" not in `formats` ("<path> is not <description>")."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{noun} not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as failure:
        raise error(f"cannot read {noun} {path}: {failure.strerror or failure}") from None
    except Exception as failure:  # never retried unsafely, never with torch's advice to do so
        with open(path, "rb") as head:
            archive = head.read(4) == ZIP_MAGIC  # a torch file, damaged, rather than foreign
        if archive and not isinstance(failure, pickle.UnpicklingError):
            raise error(f"cannot read {noun} {path}: corrupt or truncated file") from None
        raise error(f"{path} is not {description} (refused: it is not plain data)") from None
    if not isinstance(state, dict) or state.get("format") not in formats:
        raise error(f"{path} is not {description}")
    return state
