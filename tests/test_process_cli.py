"""The process-control commands end to end: lipctl data -> fit -> mpc, and their bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import assert_user_error, lipctl

TINY_DATA = ["states_per_axis=5", "inputs_per_axis=3", "chains=8", "periods=5"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A tiny dataset and an ICLRNN fitted on it, made through the CLI."""
    folder = tmp_path_factory.mktemp("process")
    data = lipctl("data", "out=cstr.npz", *TINY_DATA, cwd=folder, check=True)
    assert "cstr.npz:" in data.stdout and "train" in data.stdout
    fit = lipctl("fit", "model=iclrnn", "data=cstr.npz", "out=iclrnn.pt", "epochs=3",
                 "model.hidden=8", cwd=folder, check=True)
    assert "test MSE" in fit.stdout and "Lipschitz upper" in fit.stdout
    return folder


def test_first_principles_mpc_reaches_the_target(workdir):
    result = lipctl("mpc", "model=first_principles", "steps=20", cwd=workdir, check=True)
    assert "target reached at step" in result.stdout
    assert "fallbacks 0" in result.stdout


def test_mpc_on_a_fitted_model_runs_the_closed_loop(fitted):
    result = lipctl("mpc", "model=iclrnn", "model_file=iclrnn.pt", "steps=3", cwd=fitted,
                    check=True)
    assert "iclrnn MPC, horizon 2" in result.stdout


def test_bad_process_inputs_are_one_line_and_exit_code_2(fitted):
    saved = torch.load(fitted / "iclrnn.pt", weights_only=True)
    torch.save({**saved, "plant_id": "lipctl/Other-v0"}, fitted / "other_plant.pt")
    (fitted / "garbage.pt").write_bytes(b"not a model")
    with np.load(fitted / "cstr.npz") as record:
        arrays = dict(record)
    arrays["targets"][0, 0, 0] = np.nan
    np.savez(fitted / "nonfinite.npz", **arrays)
    cases = [
        (["mpc", "horizon=0"], "horizon: must be >= 1"),
        (["mpc", "model=transformer"], "model/transformer"),
        (["mpc", "model=iclrnn", "model_file=missing.pt"], "model file not found"),
        (["mpc", "model=iclrnn", "model_file=other_plant.pt"], "model_file:"),
        (["mpc", "model=iclrnn", "model_file=garbage.pt"], "model_file:"),
        (["mpc", "start=[1.0]"], "start: must hold 2 numbers"),
        (["fit", "model=nosuch"], "model/nosuch"),
        (["fit", "data=nonfinite.npz", "out=x.pt"], "non-finite"),
        (["fit", "data=missing.npz"], "data file not found"),
        (["data", "env=pendulum"], "no data generator for 'Pendulum-v1'"),
        (["bench", "experiment.horizons=[0]"], "experiment.horizons"),
    ]
    for args, expected in cases:
        assert_user_error(lipctl(*args, cwd=fitted, timeout=120), expected)


def test_bench_cstr_mpc_writes_its_results(workdir):
    lipctl("bench", "experiment=cstr_mpc", "out=results", "work=work",
           "experiment.data.states_per_axis=4", "experiment.data.inputs_per_axis=3",
           "experiment.data.chains=4", "experiment.data.periods=4", "experiment.models=[iclrnn]",
           "experiment.noise=[0.0,0.5]", "experiment.hidden=8", "experiment.epochs=2",
           "experiment.horizons=[2]", "experiment.steps=3", cwd=workdir, check=True)
    models = (workdir / "results" / "models.csv").read_text().splitlines()
    assert models[0].startswith("model,noise_sigma,test_mse,lipschitz_upper")
    assert len(models) == 3
    closed_loop = (workdir / "results" / "closed_loop.csv").read_text().splitlines()
    assert len(closed_loop) == 1 + 2 * 2 * 4  # 2 controllers x noise on/off x 4 starts
    assert (workdir / "results" / "closed_loop.png").stat().st_size > 0
