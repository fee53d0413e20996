"""A plant's own logs as process data: a CSV of timestamped tags -> a `ProcessDataset`.

Columns: a map from the process's states and inputs to the log's tag names (`Columns.of`), a
variable left out being read from the column of its own name, the time from "time". The time
column holds seconds or ISO timestamps (converted to the process's time unit) and must increase
strictly.

Resampling onto the sampling period T: the grid is t_k = k T (k whole, counted from time 0, or
from the Unix epoch for timestamps), so a controller that ticks on whole periods lines up with it.
States are interpolated linearly at t_k. A plant's input is held over a period, so the input of
period [t_k, t_k + T) is the last logged value at its middle (zero-order hold; the middle is
robust to timestamp jitter at either end).

Gaps: a column's gap is a stretch without a number in it (NaN cells, or a pause in the whole log
longer than (1 + period_tolerance) T). A gap up to `max_gap_periods` T long is interpolated (held,
for inputs); a longer one splits the log: a sample (x_k, u_k) -> x_{k+1} never reaches into it.
Runs of consecutive samples (segments) shorter than `min_segment_periods` are dropped. The samples
left are split by time: the first fractions[0] of them train, then val, then test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lipctl.control.process_data import SPLITS, ProcessDataset, make_dataset, random_split
from lipctl.envs.process import Process

TIME_COLUMN = "time"
SECONDS_PER = {"s": 1.0, "min": 60.0, "h": 3600.0}


class LogError(ValueError):
    """A plant log that cannot become process data; the message is one line."""


@dataclass(frozen=True)
class Columns:
    """The log's column of the time and of each state and input, in the process's order."""

    time: str
    states: tuple[str, ...]
    inputs: tuple[str, ...]

    @classmethod
    def of(cls, process: Process, columns: Mapping | None = None) -> Columns:
        """Columns from a map {time: COL, states: {NAME: COL}, inputs: {NAME: COL}}; what it
        leaves out is the column named like the variable ("time" for the time). ValueError for
        an unknown key or variable."""
        columns = dict(columns or {})
        unknown = sorted(set(columns) - {"time", "states", "inputs"})
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r}; use time, states and inputs")
        parts = []
        for kind, names in (("states", process.state_names), ("inputs", process.input_names)):
            tags = dict(columns.get(kind) or {})
            extra = sorted(set(tags) - set(names))
            if extra:
                raise ValueError(f"{kind}: process {process.name!r} has no {kind[:-1]} "
                                 f"{extra[0]!r}; it has {', '.join(names)}")
            parts.append(tuple(str(tags.get(name, name)) for name in names))
        return cls(str(columns.get("time") or TIME_COLUMN), *parts)


@dataclass(frozen=True)
class LogPolicy:
    """How a log becomes samples; see the module docstring."""

    max_gap_periods: float = 3.0
    min_segment_periods: int = 10
    period_tolerance: float = 0.1
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)


@dataclass(frozen=True)
class ImportReport:
    """What an import read and did, in the process's time unit."""

    rows: int
    nan_cells: int
    duration: float
    spacing: float
    periods: int
    short_gaps: int
    long_gaps: int
    segments: int
    segments_dropped: int
    rows_dropped: int

    def lines(self, path: str | Path, process: Process) -> list[str]:
        """The report as printed by `lipctl data import=...`."""
        unit, period = process.time_unit, process.sampling_period
        return [
            f"{path}: {self.rows} rows over {self.duration:g} {unit}, median spacing "
            f"{self.spacing:.3g} {unit}, {self.nan_cells} NaN cells",
            f"resampled onto {self.periods} periods of {period:g} {unit}: short gaps "
            f"interpolated {self.short_gaps}, long gaps {self.long_gaps}, segments kept "
            f"{self.segments}, too short {self.segments_dropped}, rows outside the kept "
            f"segments {self.rows_dropped}",
        ]


def read_log(path: str | Path) -> pd.DataFrame:
    """The log's table (CSV only: Parquet would need pyarrow, which lipctl does not require)."""
    path = Path(path)
    if path.suffix.lower() != ".csv":
        raise LogError(f"{path} is not a .csv file (plant logs are read from CSV)")
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as error:  # pandas' ParserError and EmptyDataError too
        raise LogError(f"{path} cannot be read as CSV: {str(error).splitlines()[0]}") from None


def require_columns(frame: pd.DataFrame, columns: Columns, path: str | Path) -> None:
    """LogError naming the first missing column and listing the file's."""
    for tag in (columns.time, *columns.states, *columns.inputs):
        if tag not in frame.columns:
            raise LogError(f"{path} has no column {tag!r}; its columns are "
                           f"{', '.join(map(str, frame.columns))}")


def log_times(series: pd.Series, time_unit: str, path: str | Path) -> np.ndarray:
    """The time column in the process's time unit: numbers are seconds, text ISO timestamps
    (seconds since the Unix epoch, UTC where no offset is given). LogError for an empty or
    unparsable cell or a time that does not increase, naming its line in the file."""
    if time_unit not in SECONDS_PER:
        raise LogError(f"the process's time unit {time_unit!r} is none of "
                       f"{', '.join(SECONDS_PER)}")
    if pd.api.types.is_numeric_dtype(series):
        seconds = series.to_numpy(dtype=np.float64)
    else:
        stamps = pd.to_datetime(series, errors="coerce", utc=True, format="ISO8601")
        epoch = pd.Timestamp(0, tz="UTC")
        seconds = ((stamps - epoch) / pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(seconds))
    if bad.size:
        cell = series.iloc[bad[0]]
        what = ("an empty time" if pd.isna(cell)
                else f"time {cell!r} is neither seconds nor an ISO timestamp")
        raise LogError(f"{path} line {bad[0] + 2}: {what}")
    back = np.flatnonzero(np.diff(seconds) <= 0)
    if back.size:
        i = back[0] + 1
        raise LogError(f"{path} line {i + 2}: timestamps do not increase ({series.iloc[i]} "
                       f"after {series.iloc[i - 1]})")
    return seconds / SECONDS_PER[time_unit]


def numbers(frame: pd.DataFrame, tag: str, path: str | Path) -> np.ndarray:
    """A column as floats (text cells become NaN); LogError if it holds no number at all."""
    values = pd.to_numeric(frame[tag], errors="coerce").to_numpy(dtype=np.float64)
    if not np.isfinite(values).any():
        raise LogError(f"{path}: column {tag!r} holds no numbers (all NaN)")
    return values


def check_spacing(times: np.ndarray, process: Process, tolerance: float,
                  path: str | Path) -> float:
    """The log's median spacing; LogError if it is longer than the sampling period by more
    than `tolerance` (a fraction), or the log has fewer than two rows."""
    period, unit = process.sampling_period, process.time_unit
    if len(times) < 2:
        raise LogError(f"{path} holds {len(times)} rows, too few to resample")
    spacing = float(np.median(np.diff(times)))
    if spacing > period * (1 + tolerance):
        raise LogError(f"{path} is logged every {spacing:.4g} {unit} (median spacing), more "
                       f"than the sampling period of {period:g} {unit} (period_tolerance "
                       f"{tolerance:g}): it cannot be resampled onto it")
    return spacing


@dataclass(frozen=True)
class Gap:
    """A stretch (start, end) between two numbers of a column; `long` when it splits the log."""

    start: float
    end: float
    long: bool


def column_gaps(times: np.ndarray, values: np.ndarray, pause: float, max_gap: float
                ) -> list[Gap]:
    """The gaps of one column: between consecutive numbers that skip a row or lie more than
    `pause` apart; long when more than `max_gap` apart."""
    rows = np.flatnonzero(np.isfinite(values))
    span = np.diff(times[rows])
    is_gap = (np.diff(rows) > 1) | (span > pause)
    return [Gap(times[rows[i]], times[rows[i + 1]], bool(span[i] > max_gap))
            for i in np.flatnonzero(is_gap)]


def merge_gaps(gaps: list[Gap]) -> list[Gap]:
    """Overlapping gaps (of different columns) as one; long if any of them is."""
    merged: list[Gap] = []
    for gap in sorted(gaps, key=lambda g: g.start):
        if merged and gap.start <= merged[-1].end:
            last = merged[-1]
            merged[-1] = Gap(last.start, max(last.end, gap.end), last.long or gap.long)
        else:
            merged.append(gap)
    return merged


def resample(times: np.ndarray, values: np.ndarray, query: np.ndarray, max_gap: float,
             hold: bool) -> np.ndarray:
    """The column at `query` times: linear interpolation (or, with `hold`, the last number at
    or before the query) between numbers at most `max_gap` apart; NaN elsewhere."""
    finite = np.isfinite(values)
    t, v = times[finite], values[finite]
    after = np.searchsorted(t, query, side="right")  # t[after - 1] <= query < t[after]
    before = np.clip(after - 1, 0, len(t) - 1)
    nxt = np.clip(after, 0, len(t) - 1)
    exact = (after >= 1) & (t[before] == query)
    bridged = (after >= 1) & (after < len(t)) & (t[nxt] - t[before] <= max_gap)
    out = v[before] if hold else np.interp(query, t, v)
    return np.where(exact | bridged, out, np.nan)


def segments(valid: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) index ranges of the runs of True in `valid`."""
    edges = np.diff(np.concatenate([[0], valid.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def time_split(n: int, fractions: tuple[float, float, float]) -> np.ndarray:
    """Split codes [n] of time-ordered rows: the first fractions[0] train, then val, then test
    (the counts of `random_split`, in order)."""
    return np.sort(random_split(n, 0, fractions))


def import_log(process: Process, path: str | Path, columns: Mapping | None = None,
               policy: LogPolicy = LogPolicy()) -> tuple[ProcessDataset, ImportReport]:
    """The plant log at `path` as a dataset of one-period samples (one sub-sample each) of
    `process`, and a report of what was read, interpolated, split and dropped. LogError for a
    log that cannot become data (a missing or empty column, timestamps that do not increase,
    a log slower than the sampling period, too few samples for the split)."""
    try:
        tags = Columns.of(process, columns)
    except ValueError as error:
        raise LogError(f"columns: {error}") from None
    frame = read_log(path)
    require_columns(frame, tags, path)
    times = log_times(frame[tags.time], process.time_unit, path)
    spacing = check_spacing(times, process, policy.period_tolerance, path)
    period = process.sampling_period
    max_gap = policy.max_gap_periods * period
    states = [numbers(frame, tag, path) for tag in tags.states]
    inputs = [numbers(frame, tag, path) for tag in tags.inputs]

    grid = period * np.arange(np.ceil(times[0] / period - 1e-9),
                              np.floor(times[-1] / period + 1e-9) + 1)
    x = np.stack([resample(times, v, grid, max_gap, hold=False) for v in states], axis=-1)
    u = np.stack([resample(times, v, grid + period / 2, max_gap, hold=True) for v in inputs],
                 axis=-1)
    valid = (np.isfinite(x[:-1]).all(axis=1) & np.isfinite(u[:-1]).all(axis=1)
             & np.isfinite(x[1:]).all(axis=1))
    runs = segments(valid)
    kept = [(a, b) for a, b in runs if b - a >= policy.min_segment_periods]
    rows = np.concatenate([np.arange(a, b) for a, b in kept] or [np.zeros(0, dtype=int)])
    split = _checked_split(len(rows), policy.fractions, path)
    dataset = make_dataset(process, x[rows], u[rows], x[rows + 1][:, None], split, substeps=1)

    pause = (1 + policy.period_tolerance) * period
    gaps = merge_gaps([g for v in states + inputs for g in column_gaps(times, v, pause, max_gap)])
    used = np.zeros(len(times), dtype=bool)
    for a, b in kept:
        used |= (times >= grid[a]) & (times <= grid[b])
    report = ImportReport(
        rows=len(frame), nan_cells=int(sum(np.isnan(v).sum() for v in states + inputs)),
        duration=float(times[-1] - times[0]), spacing=spacing, periods=max(len(grid) - 1, 0),
        short_gaps=sum(not g.long for g in gaps), long_gaps=sum(g.long for g in gaps),
        segments=len(kept), segments_dropped=len(runs) - len(kept),
        rows_dropped=int((~used).sum()))
    return dataset, report


def _checked_split(n: int, fractions: tuple[float, float, float], path: str | Path
                   ) -> np.ndarray:
    """The time split of n samples; LogError if a split with a positive fraction is empty."""
    split = time_split(n, fractions)
    for code, name in enumerate(SPLITS):
        if fractions[code] > 0 and not np.any(split == code):
            raise LogError(f"{path} leaves {n} samples after cleaning, too few for the "
                           f"{'/'.join(f'{f:g}' for f in fractions)} train/val/test split "
                           f"(no {name} samples)")
    return split
