"""Open-loop process data: generation (CSTR and quadruple tank), the seeded split, train-only
scalers and the .npz record."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from lipctl.control.models import build_model, mse, mse_in
from lipctl.control.process_data import (
    Scaler,
    generate,
    grid_samples,
    load_dataset,
    make_dataset,
    random_samples,
    random_split,
    sane_rows,
    save_dataset,
    state_grid,
)
from lipctl.envs.cstr import CSTR, SUBSTEPS, cstr_rhs, rk4_step
from lipctl.envs.quadtank import quadtank_process

INPUT_LOW, INPUT_HIGH, STABILITY_LEVEL = CSTR.input_low, CSTR.input_high, CSTR.stability_level
lyapunov = CSTR.lyapunov

SMALL = dict(states_per_axis=10, inputs_per_axis=4, chains=16, periods=10)


@pytest.fixture(scope="module")
def dataset():
    return generate(CSTR, **SMALL, seed=0)


def test_grid_samples_start_inside_the_region_and_span_the_inputs():
    x0, u, targets = grid_samples(CSTR, states_per_axis=10, inputs_per_axis=4)
    states = len(state_grid(CSTR, 10))
    assert states > 10
    assert x0.shape == u.shape == (states * 16, 2)
    assert targets.shape == (states * 16, SUBSTEPS, 2)
    assert (lyapunov(x0) <= STABILITY_LEVEL).all()
    np.testing.assert_array_equal(u.min(axis=0), INPUT_LOW)
    np.testing.assert_array_equal(u.max(axis=0), INPUT_HIGH)
    np.testing.assert_allclose(targets[:, 0], rk4_step(x0, u, 0.005 / SUBSTEPS))


def test_random_chains_go_on_from_the_reached_state_and_restart_inside_the_region():
    chains, periods = 8, 5
    x0, u, targets = random_samples(CSTR, chains=chains, periods=periods, seed=1)
    assert x0.shape == (chains * periods, 2) and targets.shape == (chains * periods, SUBSTEPS, 2)
    assert (lyapunov(x0) <= STABILITY_LEVEL).all()
    assert ((u >= INPUT_LOW) & (u <= INPUT_HIGH)).all()
    previous_end, next_start = targets[:-chains, -1], x0[chains:]
    inside = lyapunov(previous_end) <= STABILITY_LEVEL
    assert inside.any()
    np.testing.assert_array_equal(next_start[inside], previous_end[inside])


def test_generation_drops_non_finite_and_insane_rows():
    def flaky_rhs(x: np.ndarray, u: np.ndarray) -> np.ndarray:
        out = cstr_rhs(x, u)
        out[u[..., 0] > 3] = np.nan  # the top CA0 row of the input grid blows up
        out[u[..., 1] < -4.9e5, 1] += 1e7  # the bottom Q row leaves the sane range
        return out

    flaky_plant = dataclasses.replace(CSTR, rhs=flaky_rhs)
    clean, flaky = generate(CSTR, **SMALL), generate(flaky_plant, **SMALL)
    assert len(flaky.x0) < len(clean.x0)
    assert np.isfinite(flaky.targets).all()
    assert sane_rows(CSTR, flaky.x0, flaky.targets).all()
    assert not sane_rows(CSTR, np.zeros((1, 2)), np.full((1, SUBSTEPS, 2), np.nan)).any()


def test_quadruple_tank_data_has_its_own_sizes_names_and_timing(tmp_path: Path):
    process = quadtank_process()
    data = generate(process, states_per_axis=3, inputs_per_axis=3, chains=8, periods=5)
    assert data.x0.shape[1] == 4 and data.u.shape[1] == 2
    assert data.targets.shape[1:] == (process.substeps, 4)
    assert (data.plant_id, data.state_names, data.input_names) == (
        "quadtank", ("h1", "h2", "h3", "h4"), ("v1", "v2"))
    z, y = data.sequences("train")
    assert z.shape[2] == 6 and y.shape[2] == 4
    save_dataset(data, tmp_path / "quadtank.npz")
    assert load_dataset(tmp_path / "quadtank.npz", process).sampling_period == 10.0
    with pytest.raises(ValueError, match="holds data of process 'quadtank', expected 'cstr'"):
        load_dataset(tmp_path / "quadtank.npz", CSTR)


def test_split_is_fixed_by_the_seed(dataset):
    x0, u, targets = dataset.x0, dataset.u, dataset.targets
    again = make_dataset(CSTR, x0, u, targets, random_split(len(x0), 0, (0.7, 0.15, 0.15)))
    other = make_dataset(CSTR, x0, u, targets, random_split(len(x0), 1, (0.7, 0.15, 0.15)))
    np.testing.assert_array_equal(again.split, dataset.split)
    assert (other.split != dataset.split).any()
    counts = np.bincount(dataset.split, minlength=3) / len(x0)
    np.testing.assert_allclose(counts, [0.7, 0.15, 0.15], atol=0.01)


def test_scalers_are_fitted_on_train_rows_only(dataset):
    train = dataset.rows("train")
    states = np.concatenate([dataset.x0[train][:, None], dataset.targets[train]], axis=1)
    expected = Scaler.fit(states)
    np.testing.assert_allclose(dataset.state_scaler.mean, expected.mean)
    np.testing.assert_allclose(dataset.state_scaler.std, expected.std)
    np.testing.assert_allclose(dataset.input_scaler.mean, dataset.u[train].mean(axis=0))
    everything = Scaler.fit(np.concatenate([dataset.x0[:, None], dataset.targets], axis=1))
    assert not np.allclose(dataset.state_scaler.mean, everything.mean, rtol=0, atol=1e-9)
    assert not np.allclose(dataset.input_scaler.mean, dataset.u.mean(axis=0), rtol=0, atol=1e-9)


def test_a_minmax_dataset_maps_its_train_rows_onto_the_unit_box():
    data = generate(CSTR, **SMALL, seed=0, scaler="minmax")
    train = data.rows("train")
    _, y = data.sequences("train")
    states = np.concatenate([data.state_scaler.transform(data.x0[train])[:, None], y], axis=1)
    np.testing.assert_allclose(states.min(axis=(0, 1)), 0, atol=1e-6)
    np.testing.assert_allclose(states.max(axis=(0, 1)), 1, atol=1e-6)
    inputs = data.input_scaler.transform(data.u[train])
    np.testing.assert_allclose([inputs.min(axis=0), inputs.max(axis=0)], [[0, 0], [1, 1]],
                               atol=1e-9)
    with pytest.raises(ValueError, match="scaler must be one of standard, minmax"):
        Scaler.fit(data.u, "robust")


def test_a_model_error_in_another_scalers_units(dataset):
    """`mse_in` with the model's own scaler is its MSE; in other units every dimension's
    squared error is rescaled by the ratio of the two scales."""
    torch.manual_seed(0)
    model = build_model("rnn", 2, 2, hidden=8)
    z, y = (torch.from_numpy(a) for a in dataset.sequences("test"))
    assert mse_in(model, dataset, "test", dataset.state_scaler) == pytest.approx(
        float(mse(model, z, y)), rel=1e-4)
    other = Scaler(dataset.state_scaler.mean + 1.0, dataset.state_scaler.std * np.array([2, 4]))
    with torch.no_grad():
        squared = ((model(z) - y) ** 2).double().numpy()
    expected = np.mean(squared * (dataset.state_scaler.std / other.std) ** 2)
    assert mse_in(model, dataset, "test", other) == pytest.approx(expected, rel=1e-4)


def test_sequences_repeat_the_scaled_state_and_input(dataset):
    z, y = dataset.sequences("val")
    rows = dataset.rows("val")
    assert z.shape == (len(rows), SUBSTEPS, 4) and y.shape == (len(rows), SUBSTEPS, 2)
    assert (z == z[:, :1]).all()
    np.testing.assert_allclose(z[:, 0, :2], dataset.state_scaler.transform(dataset.x0[rows]),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dataset.state_scaler.inverse(y), dataset.targets[rows],
                               rtol=1e-5, atol=1e-3)


def test_save_load_round_trip(dataset, tmp_path: Path):
    path = tmp_path / "cstr.npz"
    save_dataset(dataset, path)
    loaded = load_dataset(path)
    for name in ("x0", "u", "targets", "split"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(dataset, name))
    np.testing.assert_array_equal(loaded.state_scaler.std, dataset.state_scaler.std)
    assert (loaded.plant_id, loaded.substeps, loaded.sampling_period) == ("cstr", 10, 0.005)
    assert (loaded.state_names, loaded.input_names) == (("CA", "T"), ("CA0", "Q"))


def _tampered(dataset, tmp_path: Path, **changes) -> Path:
    path = tmp_path / "cstr.npz"
    save_dataset(dataset, path)
    with np.load(path) as record:
        fields = {**dict(record), **changes}
    np.savez(path, **fields)
    return path


def test_non_finite_rows_are_a_clear_error(dataset, tmp_path: Path):
    targets = dataset.targets.copy()
    targets[[0, 5, 9], 3, 1] = np.nan
    targets[5, 0, 0] = np.inf
    n = len(targets)
    with pytest.raises(ValueError, match=f"3 of {n} data rows hold non-finite"):
        load_dataset(_tampered(dataset, tmp_path, targets=targets))
    with pytest.raises(ValueError, match=f"3 of {n} data rows hold non-finite"):
        make_dataset(CSTR, dataset.x0, dataset.u, targets, dataset.split)


def test_wrong_plant_schema_or_shape_is_refused(dataset, tmp_path: Path):
    path = _tampered(dataset, tmp_path)
    with pytest.raises(ValueError, match="expected 'quadtank'"):
        load_dataset(path, quadtank_process())
    with pytest.raises(ValueError, match="holds data of process 'pendulum'"):
        load_dataset(_tampered(dataset, tmp_path, plant_id=np.array("pendulum")), CSTR)
    with pytest.raises(ValueError, match="names states/inputs"):
        load_dataset(_tampered(dataset, tmp_path, state_names=np.array(["C", "T"])), CSTR)
    with pytest.raises(ValueError, match="schema version 99"):
        load_dataset(_tampered(dataset, tmp_path, schema_version=np.array(99)))
    with pytest.raises(ValueError, match="targets must be"):
        load_dataset(_tampered(dataset, tmp_path, targets=dataset.targets[:, :5]))
    with pytest.raises(ValueError, match="is not a process dataset record"):
        np.savez(path, x0=dataset.x0)
        load_dataset(path)
