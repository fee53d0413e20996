"""A plant's own logs as process data: a CSV of timestamped tags -> a `ProcessDataset`.

Columns: a map from the process's states and inputs to the log's tag names (`Columns.of`), a
variable left out being read from the column of its own name, the time from "time". The time
column holds seconds or ISO timestamps (converted to the process's time unit) and must increase
strictly; exact duplicate rows (the same time and values in every column read) are dropped and
counted. A column in other units than the process's variable declares them (`units`, converted
with lipctl.control.units). Empty, Inf and text cells are counted apart and all read as gaps.

Plausibility: a state (input) column with more than `OUTSIDE_FRACTION` of its numbers outside the
process's state box (input bounds) widened by `BOX_MARGIN` of its width on each side is refused,
or with `range_check="warn"` imported with a warning in the report; the message names the units
that would make it fit.

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lipctl.control.process_data import SPLITS, ProcessDataset, make_dataset, random_split
from lipctl.control.units import UnitError, check_convertible, convert, same_quantity
from lipctl.envs.process import Process

TIME_COLUMN = "time"
TIME_UNIT = "s"  # of a time column of numbers, unless units.time says otherwise
BOX_MARGIN = 0.25  # the plausible range: the process's box widened by this much of its width
OUTSIDE_FRACTION = 0.05  # more numbers of a column than this outside it: implausible
RANGE_CHECKS = ("error", "warn")


class LogError(ValueError):
    """A plant log that cannot become process data; the message is one line."""


@dataclass(frozen=True)
class Columns:
    """The log's column of the time and of each state and input, in the process's order, and
    the units declared for them (by variable name, "time" for the time)."""

    time: str
    states: tuple[str, ...]
    inputs: tuple[str, ...]
    units: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, process: Process, columns: Mapping | None = None) -> Columns:
        """Columns from a map {time: COL, states: {NAME: COL}, inputs: {NAME: COL}, units:
        {NAME: UNIT}}; what it leaves out is the column named like the variable ("time" for
        the time) in the process's unit. ValueError for an unknown key or variable, or a unit
        that cannot become the variable's."""
        columns = dict(columns or {})
        unknown = sorted(set(columns) - {"time", "states", "inputs", "units"})
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r}; use time, states, inputs and units")
        parts = []
        for kind, names in (("states", process.state_names), ("inputs", process.input_names)):
            tags = dict(columns.get(kind) or {})
            extra = sorted(set(tags) - set(names))
            if extra:
                raise ValueError(f"{kind}: process {process.name!r} has no {kind[:-1]} "
                                 f"{extra[0]!r}; it has {', '.join(names)}")
            parts.append(tuple(str(tags.get(name, name)) for name in names))
        made = cls(str(columns.get("time") or TIME_COLUMN), *parts)
        units = {str(k): str(v) for k, v in dict(columns.get("units") or {}).items()}
        targets = made.process_units(process)
        for name, unit in units.items():
            if name not in targets:
                raise ValueError(f"units: process {process.name!r} has no variable {name!r}; "
                                 f"it has {', '.join(targets)}")
            try:
                check_convertible(unit, targets[name][1])
            except UnitError as error:
                raise ValueError(f"units: {name} (column {targets[name][0]!r}): "
                                 f"{error}") from None
        return cls(made.time, made.states, made.inputs, units)

    def process_units(self, process: Process) -> dict[str, tuple[str, str]]:
        """{variable: (its column, the unit the import reads it in)}, "time" first."""
        names = ("time", *process.state_names, *process.input_names)
        tags = (self.time, *self.states, *self.inputs)
        units = (TIME_UNIT, *process.state_units, *process.input_units)
        return {name: (tag, unit) for name, tag, unit in zip(names, tags, units, strict=True)}

    def unit(self, name: str, process: Process) -> str:
        """The unit the log's column of variable `name` is in: declared, or the process's."""
        return self.units.get(name, self.process_units(process)[name][1])


@dataclass(frozen=True)
class LogPolicy:
    """How a log becomes samples; see the module docstring."""

    max_gap_periods: float = 3.0
    min_segment_periods: int = 10
    period_tolerance: float = 0.1
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    range_check: str = "error"  # or "warn": an implausible column is imported with a warning
    scaler: str = "standard"  # the dataset's scalers (process_data.SCALERS)

    def __post_init__(self) -> None:
        if self.range_check not in RANGE_CHECKS:
            raise ValueError(f"range_check must be one of {', '.join(RANGE_CHECKS)}, "
                             f"got {self.range_check!r}")


@dataclass(frozen=True)
class Cells:
    """What a column's cells held besides numbers: empty (NaN), Inf and text cells, and the
    first text cell with its line in the file."""

    nan: int
    inf: int
    text: int
    first_text: tuple[str, int] | None = None


@dataclass(frozen=True)
class ImportReport:
    """What an import read and did, in the process's time unit; `cells` per column read,
    `conversions` as "COLUMN UNIT -> UNIT", `warnings` for implausible columns let through."""

    rows: int
    duplicates: int
    cells: Mapping[str, Cells]
    conversions: tuple[str, ...]
    duration: float
    spacing: float
    periods: int
    short_gaps: int
    long_gaps: int
    segments: int
    segments_dropped: int
    rows_dropped: int
    warnings: tuple[str, ...] = ()

    def lines(self, path: str | Path, process: Process) -> list[str]:
        """The report as printed by `lipctl data import=...`."""
        unit, period = process.time_unit, process.sampling_period
        total = {kind: sum(getattr(c, kind) for c in self.cells.values())
                 for kind in ("nan", "inf", "text")}
        lines = [
            f"{path}: {self.rows} rows over {self.duration:g} {unit}, median spacing "
            f"{self.spacing:.3g} {unit}, {total['nan']} NaN cells, {total['inf']} Inf cells, "
            f"{total['text']} text cells, {self.duplicates} exact duplicate rows dropped"]
        if total["inf"]:
            lines.append("Inf cells (read as gaps): " + ", ".join(
                f"{tag} {c.inf}" for tag, c in self.cells.items() if c.inf))
        if total["text"]:
            lines.append("text cells (read as gaps): " + ", ".join(
                f"{tag} {c.text} (first {c.first_text[0]!r} at line {c.first_text[1]})"
                for tag, c in self.cells.items() if c.first_text))
        if self.conversions:
            lines.append(f"units converted: {', '.join(self.conversions)}")
        lines.append(
            f"resampled onto {self.periods} periods of {period:g} {unit}: short gaps "
            f"interpolated {self.short_gaps}, long gaps {self.long_gaps}, segments kept "
            f"{self.segments}, too short {self.segments_dropped}, rows outside the kept "
            f"segments {self.rows_dropped}")
        return lines + [f"WARNING: {warning}" for warning in self.warnings]


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


def drop_duplicates(frame: pd.DataFrame, columns: Columns) -> tuple[pd.DataFrame, int]:
    """The log without its exact duplicate rows (the same time and values in every column
    read, empty cells alike), and how many were dropped; the index keeps the file's rows."""
    read = list(dict.fromkeys((columns.time, *columns.states, *columns.inputs)))
    duplicate = frame.duplicated(subset=read).to_numpy()
    return frame[~duplicate], int(duplicate.sum())


def line(series: pd.Series, i: int) -> int:
    """The line in the file of the i-th row of `series` (a header line, then the rows)."""
    return int(series.index[i]) + 2


def log_times(series: pd.Series, time_unit: str, path: str | Path,
              unit: str = TIME_UNIT) -> np.ndarray:
    """The time column in the process's time unit: numbers are in `unit` (seconds unless the
    log declares another), text ISO timestamps (seconds since the Unix epoch, UTC where no
    offset is given). LogError for an empty or unparsable cell or a time that does not
    increase, naming its line in the file."""
    try:
        check_convertible(TIME_UNIT, time_unit)
    except UnitError as error:
        raise LogError(f"the process's time unit: {error}") from None
    if pd.api.types.is_numeric_dtype(series):
        seconds = convert(series.to_numpy(dtype=np.float64), unit, TIME_UNIT)
    else:
        if unit != TIME_UNIT:
            raise LogError(f"{path}: column {series.name!r} holds ISO timestamps, which carry "
                           f"their own unit: declare no units.time")
        stamps = pd.to_datetime(series, errors="coerce", utc=True, format="ISO8601")
        epoch = pd.Timestamp(0, tz="UTC")
        seconds = ((stamps - epoch) / pd.Timedelta(seconds=1)).to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(seconds))
    if bad.size:
        cell = series.iloc[bad[0]]
        what = ("an empty time" if pd.isna(cell)
                else f"time {cell!r} is neither seconds nor an ISO timestamp")
        raise LogError(f"{path} line {line(series, bad[0])}: {what}")
    back = np.flatnonzero(np.diff(seconds) <= 0)
    if back.size:
        i = back[0] + 1
        now, before = series.iloc[i], series.iloc[i - 1]
        if seconds[i] == seconds[i - 1]:
            raise LogError(f"{path} line {line(series, i)}: time {now} repeats line "
                           f"{line(series, i - 1)}'s with other values (only exact duplicate "
                           f"rows are dropped)")
        raise LogError(f"{path} line {line(series, i)}: timestamps do not increase ({now} "
                       f"after {before})")
    return convert(seconds, TIME_UNIT, time_unit)


def numbers(frame: pd.DataFrame, tag: str, path: str | Path) -> tuple[np.ndarray, Cells]:
    """A column as floats, its empty, Inf and text cells NaN, and a count of those cells;
    LogError if it holds no number at all."""
    raw = frame[tag]
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
    empty = raw.isna().to_numpy()
    text = np.flatnonzero(np.isnan(values) & ~empty)
    inf = np.isinf(values)
    values[inf] = np.nan
    if np.isnan(values).all():
        raise LogError(f"{path}: column {tag!r} holds no numbers (all empty, Inf or text)")
    first = (str(raw.iloc[text[0]]), line(raw, text[0])) if text.size else None
    return values, Cells(int(empty.sum()), int(inf.sum()), int(text.size), first)


def share_within(values: np.ndarray, low: float, high: float, margin: float = 0.0) -> float:
    """The fraction of the numbers within [low - margin, high + margin]."""
    finite = values[np.isfinite(values)]
    return float(np.mean((finite >= low - margin) & (finite <= high + margin)))


def range_problem(values: np.ndarray, name: str, tag: str, unit: str, target: str,
                  bounds: tuple[float, float], box: str, path: str | Path) -> str | None:
    """None if a column's numbers (in `unit`) fit variable `name`'s `bounds` (in `target`, the
    process's `box` of it) widened by BOX_MARGIN; else why not, with the units that would make
    them fit (the one that puts most of them inside the bounds first)."""
    low, high = bounds
    margin = BOX_MARGIN * (high - low)
    read_in = convert(values, unit, target)
    outside = 1 - share_within(read_in, low, high, margin)
    if outside <= OUTSIDE_FRACTION:
        return None
    candidates = {other: convert(values, other, target)
                  for other in same_quantity(target) if other != unit}
    fits = sorted((other for other, converted in candidates.items()
                   if 1 - share_within(converted, low, high, margin) <= OUTSIDE_FRACTION),
                  key=lambda other: -share_within(candidates[other], low, high))
    hint = (f"values look like {' or '.join(fits)}: declare units: {{{name}: {fits[0]}}} in "
            f"log.columns" if fits else "check its unit and its column in log.columns")
    read = "" if unit == target else f", read in {unit}"
    median = np.nanmedian(read_in)
    return (f"{path}: column {tag!r} ({name}{read}) has {outside:.0%} of its values "
            f"outside [{low - margin:.4g}, {high + margin:.4g}] {target} ({name}'s {box} "
            f"[{low:.4g}, {high:.4g}] widened by {BOX_MARGIN:.0%} each side), median "
            f"{median:.4g} {target}; {hint}")


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


@dataclass(frozen=True)
class Variables:
    """The log's state and input columns as numbers in the process's units, with what their
    cells held, the conversions made and the warnings for implausible columns."""

    states: list[np.ndarray]
    inputs: list[np.ndarray]
    cells: dict[str, Cells]
    conversions: tuple[str, ...]
    warnings: tuple[str, ...]


def read_variables(frame: pd.DataFrame, tags: Columns, process: Process, range_check: str,
                   path: str | Path) -> Variables:
    """The state and input columns, converted to the process's units and checked against its
    state box and input bounds: LogError for an implausible column, or with `range_check`
    "warn" a warning."""
    units = tags.process_units(process)
    columns: dict[str, list[np.ndarray]] = {"states": [], "inputs": []}
    cells, conversions, warnings = {}, [], []
    for kind, names, low, high, box in (
            ("states", process.state_names, process.state_low, process.state_high, "box"),
            ("inputs", process.input_names, process.input_low, process.input_high, "bounds")):
        for i, name in enumerate(names):
            tag, target = units[name]
            values, cells[tag] = numbers(frame, tag, path)
            unit = tags.unit(name, process)
            problem = range_problem(values, name, tag, unit, target, (low[i], high[i]), box,
                                    path)
            if problem and range_check == "error":
                raise LogError(problem)
            warnings += [problem] if problem else []
            if unit != target:
                conversions.append(f"{tag} {unit} -> {target}")
            columns[kind].append(convert(values, unit, target))
    return Variables(columns["states"], columns["inputs"], cells, tuple(conversions),
                     tuple(warnings))


def import_log(process: Process, path: str | Path, columns: Mapping | None = None,
               policy: LogPolicy = LogPolicy()) -> tuple[ProcessDataset, ImportReport]:
    """The plant log at `path` as a dataset of one-period samples (one sub-sample each) of
    `process`, and a report of what was read, converted, interpolated, split and dropped.
    LogError for a log that cannot become data (a missing or empty column, a bad unit, a
    column implausible for its variable, timestamps that do not increase or repeat with other
    values, a log slower than the sampling period, too few samples for the split)."""
    try:
        tags = Columns.of(process, columns)
    except ValueError as error:
        raise LogError(f"columns: {error}") from None
    frame = read_log(path)
    require_columns(frame, tags, path)
    rows = len(frame)
    frame, duplicates = drop_duplicates(frame, tags)
    times = log_times(frame[tags.time], process.time_unit, path, tags.unit("time", process))
    spacing = check_spacing(times, process, policy.period_tolerance, path)
    period = process.sampling_period
    max_gap = policy.max_gap_periods * period
    read = read_variables(frame, tags, process, policy.range_check, path)
    states, inputs = read.states, read.inputs

    grid = period * np.arange(np.ceil(times[0] / period - 1e-9),
                              np.floor(times[-1] / period + 1e-9) + 1)
    x = np.stack([resample(times, v, grid, max_gap, hold=False) for v in states], axis=-1)
    u = np.stack([resample(times, v, grid + period / 2, max_gap, hold=True) for v in inputs],
                 axis=-1)
    valid = (np.isfinite(x[:-1]).all(axis=1) & np.isfinite(u[:-1]).all(axis=1)
             & np.isfinite(x[1:]).all(axis=1))
    runs = segments(valid)
    kept = [(a, b) for a, b in runs if b - a >= policy.min_segment_periods]
    samples = np.concatenate([np.arange(a, b) for a, b in kept] or [np.zeros(0, dtype=int)])
    split = _checked_split(len(samples), policy.fractions, path)
    dataset = make_dataset(process, x[samples], u[samples], x[samples + 1][:, None], split,
                           substeps=1, scaler=policy.scaler)

    pause = (1 + policy.period_tolerance) * period
    gaps = merge_gaps([g for v in states + inputs for g in column_gaps(times, v, pause, max_gap)])
    used = np.zeros(len(times), dtype=bool)
    for a, b in kept:
        used |= (times >= grid[a]) & (times <= grid[b])
    report = ImportReport(
        rows=rows, duplicates=duplicates, cells=read.cells, conversions=read.conversions,
        duration=float(times[-1] - times[0]), spacing=spacing, periods=max(len(grid) - 1, 0),
        short_gaps=sum(not g.long for g in gaps), long_gaps=sum(g.long for g in gaps),
        segments=len(kept), segments_dropped=len(runs) - len(kept),
        rows_dropped=int((~used).sum()), warnings=read.warnings)
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
