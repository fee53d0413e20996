"""Open-loop CSTR data for process models: generation, split, scaling and the .npz record.

One sample is one sampling period of the plant: the state x0 at its start, the input u held over
it and the states at its `substeps` sub-samples, targets[i, k] = x(t0 + (k + 1) period / substeps).
States are deviations [CA - CAs, T - Ts] from the steady state, inputs deviations [CA0 - CA0s,
Q - Qs]. Samples come from two sources, as in Wang & Wu (2024): initial states on a grid inside the
stability region crossed with a grid of inputs across their bounds, and random-excitation chains
(a random input held for one period, the next period starting where the last ended).

Record schema (.npz, SCHEMA_VERSION 1; loads with allow_pickle=False):
    x0 [N, 2] float64, u [N, 2] float64, targets [N, substeps, 2] float64,
    split [N] int8 (0 train, 1 val, 2 test),
    state_mean, state_std [2], input_mean, input_std [2] float64 (fitted on the train rows),
    schema_version int, plant_id str, state_names [2] str, input_names [2] str,
    sampling_period float (hours), substeps int.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lipctl.control.files import atomic_write
from lipctl.envs.cstr import ACTION_HIGH as INPUT_HIGH
from lipctl.envs.cstr import ACTION_LOW as INPUT_LOW
from lipctl.envs.cstr import ENV_ID as PLANT_ID
from lipctl.envs.cstr import (
    LYAPUNOV_P,
    SAMPLING_PERIOD,
    STABILITY_LEVEL,
    SUBSTEPS,
    lyapunov,
    sample_stability_region,
)

SCHEMA_VERSION = 1
STATE_NAMES = ("CA", "T")  # deviations from CAs = 1.9537 kmol/m3, Ts = 401.8727 K
INPUT_NAMES = ("CA0", "Q")  # deviations from CA0s = 4 kmol/m3, Qs = 0 kJ/h
SANE_FACTOR = 2.0  # rows whose states leave SANE_FACTOR x the region's bounding box are dropped
SPLITS = ("train", "val", "test")

Step = Callable[[np.ndarray, np.ndarray, float], np.ndarray]
"""step(x [n, 2], u [n, 2], dt) -> x after dt hours with u held, row by row."""


def region_half_widths() -> np.ndarray:
    """Half widths of the stability region's bounding box: sqrt(level * diag(P^-1))."""
    return np.sqrt(STABILITY_LEVEL * np.diag(np.linalg.inv(LYAPUNOV_P)))


def state_grid(points_per_axis: int) -> np.ndarray:
    """Grid states [n, 2] over the region's bounding box that lie inside the stability region."""
    axes = [np.linspace(-w, w, points_per_axis) for w in region_half_widths()]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 2)
    return grid[lyapunov(grid) <= STABILITY_LEVEL]


def input_grid(points_per_axis: int) -> np.ndarray:
    """Grid inputs [points_per_axis ** 2, 2] spanning the input bounds, ends included."""
    bounds = zip(INPUT_LOW, INPUT_HIGH, strict=True)
    axes = [np.linspace(lo, hi, points_per_axis) for lo, hi in bounds]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 2)


def simulate_period(step: Step, x0: np.ndarray, u: np.ndarray,
                    period: float = SAMPLING_PERIOD, substeps: int = SUBSTEPS) -> np.ndarray:
    """States [n, substeps, 2] at the sub-samples of one period from x0 [n, 2] with u [n, 2] held.
    Overflow is not an error here: rows that blow up are non-finite and get dropped later."""
    states, x = [], x0
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(substeps):
            x = step(x, u, period / substeps)
            states.append(x)
    return np.stack(states, axis=1)


def grid_samples(step: Step, states_per_axis: int, inputs_per_axis: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x0, u, targets) for every grid state crossed with every grid input."""
    states, inputs = state_grid(states_per_axis), input_grid(inputs_per_axis)
    x0 = np.repeat(states, len(inputs), axis=0)
    u = np.tile(inputs, (len(states), 1))
    return x0, u, simulate_period(step, x0, u)


def random_samples(step: Step, chains: int, periods: int, seed: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x0, u, targets) of `chains` random-excitation chains of `periods` periods each.

    Inputs are uniform over their bounds and held for one period; a chain goes on from the state
    it reached, or restarts from a random state in the region once it has left the region.
    """
    rng = np.random.default_rng(seed)
    x = sample_stability_region(rng, size=chains)
    rows = []
    for _ in range(periods):
        u = rng.uniform(INPUT_LOW, INPUT_HIGH, size=(chains, 2))
        targets = simulate_period(step, x, u)
        rows.append((x, u, targets))
        x = targets[:, -1].copy()
        left = ~(lyapunov(x) <= STABILITY_LEVEL)  # catches NaN too
        x[left] = sample_stability_region(rng, size=int(left.sum()))
    return tuple(np.concatenate(parts) for parts in zip(*rows, strict=True))


def sane_rows(x0: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Mask of rows whose states are finite and inside SANE_FACTOR x the region's bounding box."""
    limits = SANE_FACTOR * region_half_widths()
    states = np.concatenate([x0[:, None], targets], axis=1)
    return np.all(np.abs(states) <= limits, axis=(1, 2))  # False for NaN


@dataclass(frozen=True)
class Scaler:
    """Per-feature standardisation: (x - mean) / std."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Scaler:
        """Mean and std of x [..., d] over all leading axes (std floored at 1e-12)."""
        flat = x.reshape(-1, x.shape[-1])
        return cls(flat.mean(axis=0), np.maximum(flat.std(axis=0), 1e-12))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std

    def inverse(self, x: np.ndarray) -> np.ndarray:
        return x * self.std + self.mean


def encode(x0: np.ndarray, u: np.ndarray, state_scaler: Scaler, input_scaler: Scaler,
           substeps: int) -> np.ndarray:
    """Model inputs z [n, substeps, 4]: the scaled [x0, u] repeated at every sub-step (float32)."""
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
class CSTRDataset:
    """Samples of one sampling period, their fixed split and the scalers fitted on train rows.
    Construction validates shapes, split codes, scalers and finiteness."""

    x0: np.ndarray
    u: np.ndarray
    targets: np.ndarray
    split: np.ndarray
    state_scaler: Scaler
    input_scaler: Scaler
    sampling_period: float = SAMPLING_PERIOD
    substeps: int = SUBSTEPS
    plant_id: str = PLANT_ID

    def __post_init__(self) -> None:
        n, ns, nu = len(self.x0), len(STATE_NAMES), len(INPUT_NAMES)
        _require(self.x0.shape == (n, ns), f"x0 must be [N, {ns}], got {self.x0.shape}")
        _require(self.u.shape == (n, nu), f"u must be [{n}, {nu}], got {self.u.shape}")
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
        """Scaled model inputs z [n, substeps, 4] and targets y [n, substeps, 2] (float32)."""
        rows = self.rows(split)
        z = encode(self.x0[rows], self.u[rows], self.state_scaler, self.input_scaler,
                   self.substeps)
        return z, self.state_scaler.transform(self.targets[rows]).astype(np.float32)


def make_dataset(x0: np.ndarray, u: np.ndarray, targets: np.ndarray, seed: int = 0,
                 fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> CSTRDataset:
    """Split the rows by a permutation seeded with `seed` and fit the scalers on train rows only
    (the state scaler on train x0 and targets together, so predictions can be chained)."""
    _require(len(fractions) == 3 and min(fractions) >= 0 and abs(sum(fractions) - 1) < 1e-9,
             f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    _check_finite(x0, u, targets)
    n = len(x0)
    bounds = np.round(np.cumsum(fractions)[:2] * n).astype(int)
    split = np.empty(n, dtype=np.int8)
    for code, part in enumerate(np.split(np.random.default_rng(seed).permutation(n), bounds)):
        split[part] = code
    train = split == 0
    _require(bool(train.any()), f"no train rows among {n} rows")
    state_scaler = Scaler.fit(np.concatenate([x0[train][:, None], targets[train]], axis=1))
    return CSTRDataset(x0, u, targets, split, state_scaler, Scaler.fit(u[train]))


def generate(step: Step, states_per_axis: int = 25, inputs_per_axis: int = 8,
             chains: int = 64, periods: int = 40, seed: int = 0,
             fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> CSTRDataset:
    """Grid samples plus random-excitation chains, insane or non-finite rows dropped, then split
    into train/val/test `fractions` and scaled (`seed` drives the chains and the split)."""
    parts = [grid_samples(step, states_per_axis, inputs_per_axis),
             random_samples(step, chains, periods, seed)]
    x0, u, targets = (np.concatenate(arrays) for arrays in zip(*parts, strict=True))
    keep = sane_rows(x0, targets)
    return make_dataset(x0[keep], u[keep], targets[keep], seed=seed, fractions=fractions)


def save_dataset(dataset: CSTRDataset, path: str | Path) -> None:
    """Write the dataset as an .npz record of the schema in this module's docstring."""
    arrays = dict(
        x0=dataset.x0, u=dataset.u, targets=dataset.targets, split=dataset.split,
        state_mean=dataset.state_scaler.mean, state_std=dataset.state_scaler.std,
        input_mean=dataset.input_scaler.mean, input_std=dataset.input_scaler.std,
        schema_version=np.array(SCHEMA_VERSION), plant_id=np.array(dataset.plant_id),
        state_names=np.array(STATE_NAMES), input_names=np.array(INPUT_NAMES),
        sampling_period=np.array(dataset.sampling_period), substeps=np.array(dataset.substeps),
    )
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_dataset(path: str | Path, plant_id: str = PLANT_ID) -> CSTRDataset:
    """Read a record written by `save_dataset`; a wrong schema version, plant id, names, shapes
    or non-finite rows raise ValueError."""
    with np.load(path, allow_pickle=False) as record:
        fields = dict(record)
    required = {"x0", "u", "targets", "split", "state_mean", "state_std", "input_mean",
                "input_std", "schema_version", "plant_id", "state_names", "input_names",
                "sampling_period", "substeps"}
    missing = sorted(required - set(fields))
    _require(not missing, f"{path} is not a CSTR dataset record: missing {', '.join(missing)}")
    version = int(fields["schema_version"])
    _require(version == SCHEMA_VERSION,
             f"{path} has schema version {version}, this lipctl reads {SCHEMA_VERSION}")
    found = str(fields["plant_id"])
    _require(found == plant_id, f"{path} holds data of plant {found!r}, expected {plant_id!r}")
    names = (tuple(fields["state_names"].tolist()), tuple(fields["input_names"].tolist()))
    _require(names == (STATE_NAMES, INPUT_NAMES),
             f"{path} names states/inputs {names}, expected {(STATE_NAMES, INPUT_NAMES)}")
    return CSTRDataset(
        fields["x0"], fields["u"], fields["targets"], fields["split"],
        Scaler(fields["state_mean"], fields["state_std"]),
        Scaler(fields["input_mean"], fields["input_std"]),
        sampling_period=float(fields["sampling_period"]), substeps=int(fields["substeps"]),
        plant_id=found,
    )
