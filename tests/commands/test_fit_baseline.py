"""`lipctl fit` reports the persistence baseline (predicting no change) beside the model's test
MSE and warns when the model does not beat it; its defaults beat it on a 2-hour plant log."""

from __future__ import annotations

import re

import numpy as np
import pytest

from lipctl.control.models.train import persistence_mse
from lipctl.control.process_data import generate, load_dataset, save_dataset
from lipctl.envs.quadtank import quadtank_process
from tests.control.test_log_import import COLUMNS, write_log
from tests.helpers import lipctl

PROCESS = quadtank_process()
REPORT = re.compile(r"test MSE ([\d.]+) \(scaled; predicting no change: ([\d.]+)\)")
WARNING = "predicts worse than no change"


def test_persistence_mse_is_the_scaled_error_of_predicting_no_change():
    data = generate(PROCESS, states_per_axis=2, inputs_per_axis=2, chains=2, periods=5)
    rows = data.rows("test")
    scale = data.state_scaler.std
    expected = np.mean(((data.targets[rows] - data.x0[rows, None]) / scale) ** 2)
    assert persistence_mse(data, "test") == pytest.approx(expected, rel=1e-5)
    assert expected > 0


@pytest.mark.slow
def test_fit_prints_the_baseline_and_warns_below_it(tmp_path):
    data = generate(PROCESS, states_per_axis=2, inputs_per_axis=2, chains=4, periods=10)
    save_dataset(data, tmp_path / "tiny.npz")
    result = lipctl("fit", "env=quadtank", "data=tiny.npz", "epochs=1", "lr=1e-9",
                    "out=tiny.pt", cwd=tmp_path, check=True)
    test_mse, baseline = map(float, REPORT.search(result.stdout).groups())
    assert baseline == pytest.approx(persistence_mse(data, "test"), abs=1e-5)
    assert test_mse > baseline  # one epoch at lr 1e-9: the initial weights
    assert result.stderr.startswith("lipctl fit: warning: tiny.pt predicts worse than no "
                                    "change (test MSE ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert (tmp_path / "tiny.pt").is_file()


@pytest.mark.slow
def test_default_fit_beats_no_change_on_a_two_hour_plant_log(tmp_path):
    """720 periods of 10 s of the quadruple tank logged every 2-4 s (a few optimiser steps per
    epoch): early stopping after 20 epochs without progress leaves an ICLRNN worse than
    predicting no change; the defaults (patience 150 of 500 epochs) beat it."""
    write_log(tmp_path / "log.csv", 720, seed=1, noise=0.02, iso=True)
    lipctl("data", "env=quadtank", "import=log.csv", COLUMNS, "out=log.npz", cwd=tmp_path,
           check=True)
    baseline = persistence_mse(load_dataset(tmp_path / "log.npz", PROCESS), "test")
    short = lipctl("fit", "env=quadtank", "data=log.npz", "epochs=200", "patience=20",
                   "out=short.pt", cwd=tmp_path, check=True)
    assert WARNING in short.stderr
    default = lipctl("fit", "env=quadtank", "data=log.npz", "out=default.pt", cwd=tmp_path,
                     check=True)
    test_mse, reported = map(float, REPORT.search(default.stdout).groups())
    assert reported == pytest.approx(baseline, abs=1e-5)
    assert test_mse < 0.8 * baseline and WARNING not in default.stderr, default
