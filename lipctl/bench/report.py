"""Writing benchmark tables."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    """Rows of equal keys as a CSV file with a header (the first row's keys, in order)."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
