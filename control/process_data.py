"""Open-loop data of any process for process models: generation, split, scaling, the .npz record.

One sample is one sampling period of the plant: the state x0 at its start, the input u held over
it and the states at its `substeps` sub-samples, targets[i, k] = x(t0 + (k + 1) period / substeps)
(a plant log gives one sub-sample: the next logged state). States and inputs are in the process's
own units (lipctl.envs.process). Generated samples come from two sources, as in Wang & Wu (2024):
initial states on a grid inside the process's region crossed with a grid of inputs across their
bounds, and random-excitation chains (a random input held for one period, the next period
starting where the last ended).

Record schema (.npz, SCHEMA_VERSION 1; loads with allow_pickle=False), ns states, nu inputs:
    x0 [N, ns] float64, u [N, nu] float64, targets [N, substeps, ns] float64,
    split [N] int8 (0 train, 1 val, 2 test),
    state_mean, state_std [ns], input_mean, input_std [nu] float64 (fitted on the train rows),
    schema_version int, plant_id str (the process's name), state_names [ns] str,
    input_names [nu] str, sampling_period float (the process's time unit), substeps int.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lipctl.envs.files import atomic_write, load_arrays
from lipctl.envs.process import Process

SCHEMA_VERSION = 1
SANE_FACTOR = 2.0  # rows whose states leave the state box grown SANE_FACTOR x are dropped
SPLITS = ("train", "val", "test")


def _grid(low: np.ndarray, high: np.ndarray, points_per_axis: int) -> np.ndarray:
    """Every point [points_per_axis ** d, d] of a regular grid over a box, ends included."""
    axes = [np.linspace(lo, hi, points_per_axis) for lo, hi in zip(low, high, strict=True)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(low))


def state_grid(process: Process, points_per_axis: int) -> np.ndarray:
    """Grid states [n, ns] over the process's state box that lie inside its region."""
    grid = _grid(process.state_low, process.state_high, points_per_axis)
    return grid[process.in_region(grid)]


def input_grid(process: Process, points_per_axis: int) -> np.ndarray:
    """Grid inputs [points_per_axis ** nu, nu] spanning the input bounds, ends included."""
    return _grid(process.input_low, process.input_high, points_per_axis)


def simulate_period(process: Process, x0: np.ndarray, u: np.ndarray) -> np.ndarray:
    """States [n, substeps, ns] at the sub-samples of one period from x0 [n, ns] with u [n, nu]
    held. Overflow is not an error here: rows that blow up are non-finite and get dropped later."""
    states, x = [], x0
    dt = process.sampling_period / process.substeps
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(process.substeps):
            x = process.step(x, u, dt)
            states.append(x)
    return np.stack(states, axis=1)


def grid_samples(process: Process, states_per_axis: int, inputs_per_axis: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x0, u, targets) for every grid state crossed with every grid input."""
    states = state_grid(process, states_per_axis)
    inputs = input_grid(process, inputs_per_axis)
    x0 = np.repeat(states, len(inputs), axis=0)
    u = np.tile(inputs, (len(states), 1))
    return x0, u, simulate_period(process, x0, u)


def random_samples(process: Process, chains: int, periods: int, seed: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x0, u, targets) of `chains` random-excitation chains of `periods` periods each.

    Inputs are uniform over their bounds and held for one period; a chain goes on from the state
    it reached, or restarts from a random state in the region once it has left the region.
    """
    rng = np.random.default_rng(seed)
    x = process.sample_states(rng, size=chains)
    rows = []
    for _ in range(periods):
        u = rng.uniform(process.input_low, process.input_high,
                        size=(chains, process.input_size))
        targets = simulate_period(process, x, u)
        rows.append((x, u, targets))
        x = targets[:, -1].copy()
        left = ~process.in_region(x)  # catches NaN too
        x[left] = process.sample_states(rng, size=int(left.sum()))
    return tuple(np.concatenate(parts) for parts in zip(*rows, strict=True))


def sane_rows(process: Process, x0: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Mask of rows whose states are finite and inside the state box grown SANE_FACTOR x about
    its centre."""
    centre = (process.state_high + process.state_low) / 2
    limits = SANE_FACTOR * (process.state_high - process.state_low) / 2
    states = np.concatenate([x0[:, None], targets], axis=1)
    return np.all(np.abs(states - centre) <= limits, axis=(1, 2))  # False for NaN


SCALERS = ("standard", "minmax")


@dataclass(frozen=True)
class Scaler:
    """Per-feature affine scaling (x - mean) / std: standardisation (`mean`, `std` the data's)
    or min-max scaling onto [0, 1] (`mean` the minimum, `std` the range)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, kind: str = "standard") -> Scaler:
        """The scaler of `kind` (one of SCALERS) for x [..., d] over all leading axes: mean and
        std ("standard"), or minimum and range ("minmax"); the divisor floored at 1e-12."""
        _require(kind in SCALERS, f"scaler must be one of {', '.join(SCALERS)}, got {kind!r}")
        flat = x.reshape(-1, x.shape[-1])
        if kind == "minmax":
            low = flat.min(axis=0)
            return cls(low, np.maximum(flat.max(axis=0) - low, 1e-12))
        return cls(flat.mean(axis=0), np.maximum(flat.std(axis=0), 1e-12))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std

    def inverse(self, x: np.ndarray) -> np.ndarray:
        return x * self.std + self.mean


def encode(x0: np.ndarray, u: np.ndarray, state_scaler: Scaler, input_scaler: Scaler,
           substeps: int) -> np.ndarray:
    """Model inputs z [n, substeps, ns + nu]: the scaled [x0, u] repeated at every sub-step
    (float32)."""
    features = np.concatenate([state_scaler.transform(x0), input_scaler.transform(u)], axis=-1)
    return np.repeat(features[:, None], substeps, axis=1).astype(np.float32)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_finite(x0: np.ndarray, u: np.ndarray, targets: np.ndarray) -> None:
    finite = (np.isfinite(x0).all(axis=1) & np.isfinite(u).all(axis=1)
              & np.isfinite(targets).all(axis=(1, 2)))
    _require(bool(finite.all()), f"{int((~finite).sum())} of {len(x0)} data rows hold non-finite "
                                 "values (NaN or inf); drop them before building the dataset")


@dataclass(frozen=True)
class ProcessDataset:
    """Samples of one sampling period of the process `plant_id` (its states and inputs named by
    `state_names`, `input_names`), their fixed split and the scalers fitted on train rows.
    Construction validates shapes, split codes, scalers and finiteness."""

    x0: np.ndarray
    u: np.ndarray
    targets: np.ndarray
    split: np.ndarray
    state_scaler: Scaler
    input_scaler: Scaler
    plant_id: str
    state_names: tuple[str, ...]
    input_names: tuple[str, ...]
    sampling_period: float
    substeps: int

    def __post_init__(self) -> None:
        n, ns, nu = len(self.x0), len(self.state_names), len(self.input_names)
        _require(self.x0.shape == (n, ns), f"x0 must be [N, {ns}], got {self.x0.shape}")
        _require(self.u.shape == (n, nu), f"u must be [{n}, {nu}], got {self.u.shape}")
        _require(self.substeps >= 1, f"substeps must be >= 1, got {self.substeps}")
        _require(self.targets.shape == (n, self.substeps, ns),
                 f"targets must be [{n}, {self.substeps}, {ns}], got {self.targets.shape}")
        _require(self.split.shape == (n,) and bool(np.isin(self.split, (0, 1, 2)).all()),
                 f"split must be [{n}] with codes 0 (train), 1 (val), 2 (test)")
        for name, scaler, size in (("state", self.state_scaler, ns),
                                   ("input", self.input_scaler, nu)):
            _require(scaler.mean.shape == scaler.std.shape == (size,)
                     and bool(np.isfinite(scaler.mean).all()) and bool((scaler.std > 0).all()),
                     f"{name} scaler must hold {size} finite means and positive stds")
        _check_finite(self.x0, self.u, self.targets)

    def rows(self, split: str) -> np.ndarray:
        """Indices of the rows in `split` ("train", "val" or "test")."""
        _require(split in SPLITS, f"split must be one of {SPLITS}, got {split!r}")
        return np.flatnonzero(self.split == SPLITS.index(split))

    def sequences(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Scaled model inputs z [n, substeps, ns + nu] and targets y [n, substeps, ns]
        (float32)."""
        rows = self.rows(split)
        z = encode(self.x0[rows], self.u[rows], self.state_scaler, self.input_scaler,
                   self.substeps)
        return z, self.state_scaler.transform(self.targets[rows]).astype(np.float32)

    def check_process(self, process: Process, where: str = "the data") -> None:
        """ValueError unless the data belongs to `process` (see `check_origin`)."""
        check_origin(self, process, where, "holds data of")


def check_origin(record: Any, process: Process, where: str, verb: str) -> None:
    """ValueError unless `record` (a dataset, or a model fitted on one: its plant_id,
    state_names, input_names and sampling_period) belongs to `process`; the message reads
    "<where> <verb> process '<plant_id>', expected ..."."""
    _require(record.plant_id == process.name,
             f"{where} {verb} process {record.plant_id!r}, expected {process.name!r}")
    names = (record.state_names, record.input_names)
    expected = (process.state_names, process.input_names)
    _require(names == expected, f"{where} names states/inputs {names}, expected {expected}")
    _require(np.isclose(record.sampling_period, process.sampling_period),
             f"{where} is sampled every {record.sampling_period} {process.time_unit}, the "
             f"process every {process.sampling_period}")


def random_split(n: int, seed: int, fractions: tuple[float, float, float]) -> np.ndarray:
    """Split codes [n] (0 train, 1 val, 2 test) of a permutation seeded with `seed`."""
    _check_fractions(fractions)
    bounds = np.round(np.cumsum(fractions)[:2] * n).astype(int)
    split = np.empty(n, dtype=np.int8)
    for code, part in enumerate(np.split(np.random.default_rng(seed).permutation(n), bounds)):
        split[part] = code
    return split


def _check_fractions(fractions: tuple[float, float, float]) -> None:
    _require(len(fractions) == 3 and min(fractions) >= 0 and abs(sum(fractions) - 1) < 1e-9,
             f"fractions must be three non-negative numbers summing to 1, got {fractions}")


def fit_state_scaler(x0: np.ndarray, targets: np.ndarray, kind: str = "standard") -> Scaler:
    """The state scaler of `kind` fitted on states x0 [n, ns] and their targets [n, k, ns]
    together, so that predictions can be chained."""
    return Scaler.fit(np.concatenate([x0[:, None], targets], axis=1), kind)


def make_dataset(process: Process, x0: np.ndarray, u: np.ndarray, targets: np.ndarray,
                 split: np.ndarray, substeps: int | None = None,
                 scaler: str = "standard") -> ProcessDataset:
    """The dataset of `process` with the given split codes, its scalers of kind `scaler` (one
    of SCALERS) fitted on train rows only (the state scaler on train x0 and targets together, so
    predictions can be chained); `substeps` defaults to the process's."""
    _check_finite(x0, u, targets)
    train = split == 0
    _require(bool(train.any()), f"no train rows among {len(x0)} rows")
    state_scaler = fit_state_scaler(x0[train], targets[train], scaler)
    return ProcessDataset(x0, u, targets, split, state_scaler, Scaler.fit(u[train], scaler),
                          plant_id=process.name, state_names=process.state_names,
                          input_names=process.input_names,
                          sampling_period=process.sampling_period,
                          substeps=process.substeps if substeps is None else substeps)


def generate(process: Process, states_per_axis: int = 25, inputs_per_axis: int = 8,
             chains: int = 64, periods: int = 40, seed: int = 0,
             fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
             scaler: str = "standard") -> ProcessDataset:
    """Grid samples plus random-excitation chains of the process's ODE, insane or non-finite
    rows dropped, then split at random into train/val/test `fractions` and scaled by a
    `scaler` (one of SCALERS) fitted on the train rows (`seed` drives the chains and the
    split)."""
    _check_fractions(fractions)
    parts = [grid_samples(process, states_per_axis, inputs_per_axis),
             random_samples(process, chains, periods, seed)]
    x0, u, targets = (np.concatenate(arrays) for arrays in zip(*parts, strict=True))
    keep = sane_rows(process, x0, targets)
    x0, u, targets = x0[keep], u[keep], targets[keep]
    return make_dataset(process, x0, u, targets, random_split(len(x0), seed, fractions),
                        scaler=scaler)


def save_dataset(dataset: ProcessDataset, path: str | Path) -> None:
    """Write the dataset as an .npz record of the schema in this module's docstring."""
    arrays = dict(
        x0=dataset.x0, u=dataset.u, targets=dataset.targets, split=dataset.split,
        state_mean=dataset.state_scaler.mean, state_std=dataset.state_scaler.std,
        input_mean=dataset.input_scaler.mean, input_std=dataset.input_scaler.std,
        schema_version=np.array(SCHEMA_VERSION), plant_id=np.array(dataset.plant_id),
        state_names=np.array(dataset.state_names), input_names=np.array(dataset.input_names),
        sampling_period=np.array(dataset.sampling_period), substeps=np.array(dataset.substeps),
    )
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_dataset(path: str | Path, process: Process | None = None) -> ProcessDataset:
    """Read a record written by `save_dataset`; a wrong schema version, shapes, non-finite rows
    or (given `process`) data of another process raise ValueError."""
    fields = load_arrays(path, ValueError, "dataset",
                         "a process dataset record (.npz written by lipctl data; a plant log is "
                         "imported with lipctl data env=NAME import=LOG.csv)")
    required = {"x0", "u", "targets", "split", "state_mean", "state_std", "input_mean",
                "input_std", "schema_version", "plant_id", "state_names", "input_names",
                "sampling_period", "substeps"}
    missing = sorted(required - set(fields))
    _require(not missing, f"{path} is not a process dataset record: missing "
                          f"{', '.join(missing)}")
    version = int(fields["schema_version"])
    _require(version == SCHEMA_VERSION,
             f"{path} has schema version {version}, this lipctl reads {SCHEMA_VERSION}")
    dataset = ProcessDataset(
        fields["x0"], fields["u"], fields["targets"], fields["split"],
        Scaler(fields["state_mean"], fields["state_std"]),
        Scaler(fields["input_mean"], fields["input_std"]),
        plant_id=str(fields["plant_id"]),
        state_names=tuple(fields["state_names"].tolist()),
        input_names=tuple(fields["input_names"].tolist()),
        sampling_period=float(fields["sampling_period"]), substeps=int(fields["substeps"]),
    )
    if process is not None:
        dataset.check_process(process, str(path))
    return dataset
