"""Files written so that a crash never leaves a half-written one behind, lipctl's .npz files read
back as plain arrays only, and its torch files as plain data only."""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

ZIP_MAGIC = b"PK\x03\x04"  # torch.save and np.savez both write zip archives
_TEMP_NAME = re.compile(r"[a-z0-9_]{8}")  # the random part of tempfile.mkstemp's names


class WriteError(OSError):
    """A file that could not be written (disk full, file too large, no permission), named with
    the operating system's reason; whatever was at that path before is left as it was."""

    def __init__(self, path: str | Path, cause: OSError):
        super().__init__(cause.errno, cause.strerror or str(cause), str(path))

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def _os_error(failure: BaseException) -> OSError | None:
    """The OSError that `failure` is or was raised from (torch.save reports a failed write of
    its file object as a RuntimeError raised while handling it)."""
    seen: set[int] = set()
    while failure is not None and id(failure) not in seen:
        if isinstance(failure, OSError):
            return failure
        seen.add(id(failure))
        failure = failure.__cause__ or failure.__context__
    return None


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Report an operating-system failure of the writes inside as a WriteError naming `path`."""
    try:
        yield
    except WriteError:
        raise
    except Exception as failure:
        cause = _os_error(failure)
        if cause is None:
            raise
        raise WriteError(path, cause) from failure


def _remove_stale_temps(path: str | Path) -> None:
    """Delete the temp files that interrupted `atomic_write`s of `path` left next to it (one
    writer per path: a temp file being written by another process would go too)."""
    path = Path(path)
    prefix = f".{path.name}."
    for sibling in path.parent.glob(f"{glob.escape(prefix)}*"):
        if _TEMP_NAME.fullmatch(sibling.name[len(prefix):]) and sibling.is_file():
            sibling.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call write(file) on a temp file next to `path`, fsync it, then rename it onto `path`.
    Temp files of earlier interrupted writes of `path` are removed first; an operating-system
    failure (disk full, no permission) is a WriteError naming `path`, which keeps its old
    contents."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it a normal file's mode
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_json(path: str | Path, data: object, indent: int = 2, allow_nan: bool = True) -> None:
    """Write `data` as JSON (`indent` spaces, a final newline) to `path` with `atomic_write`;
    allow_nan=False refuses NaN and infinities with a ValueError before anything is written."""
    text = json.dumps(data, indent=indent, allow_nan=allow_nan) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def write_csv(path: str | Path, rows: Sequence[dict]) -> None:
    """Rows of equal keys as a CSV file with a header (the first row's keys, in order), written
    with `atomic_write`."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    text = buffer.getvalue()
    atomic_write(path, lambda f: f.write(text.encode()))


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header, as written by `write_csv`."""
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def read_magic(path: str | Path, error: type[Exception], noun: str) -> bytes:
    """The first four bytes of the file at `path` (fewer if it is shorter); `error` "cannot read
    <noun> <path>: <reason>" where the system refuses."""
    try:
        with open(path, "rb") as head:
            return head.read(4)
    except OSError as failure:
        raise error(f"cannot read {noun} {path}: {failure.strerror or failure}") from None


def load_arrays(path: str | Path, error: type[Exception], noun: str, description: str
                ) -> dict[str, np.ndarray]:
    """The arrays of an .npz file that lipctl wrote, loaded as plain data (allow_pickle=False).
    Raises `error` "cannot read <noun> <path>: ..." for an unreadable file, one that is no .npz
    archive at all ("not <description>"), or a corrupt or truncated one, and "<path> is not
    <description> (refused: ...)" for one holding objects; never numpy's advice to load it
    unsafely."""
    if read_magic(path, error, noun) != ZIP_MAGIC:
        raise error(f"cannot read {noun} {path}: not {description}")
    try:
        with np.load(path, allow_pickle=False) as record:
            return dict(record)
    except ValueError:  # an object array, which only unpickling could read
        raise error(f"{path} is not {description} (refused: it is not plain data)") from None
    except Exception:  # zipfile, zlib and end-of-file errors of a damaged archive
        raise error(f"cannot read {noun} {path}: corrupt or truncated file") from None


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
