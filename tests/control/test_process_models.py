"""Process models: input-convexity, weight constraints, certificates, training and save/load."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from lipctl.control.models import (
    ICLRNN,
    MODELS,
    ProcessModel,
    build_model,
    certify_model,
    fit,
    load_model,
    register_model,
    save_model,
    sequence_gain,
    sequence_lower_bound,
    sequence_upper_bound,
)
from lipctl.control.process_data import generate
from lipctl.envs.cstr import CSTR
from lipctl.envs.quadtank import quadtank_process
from lipctl.lipschitz.certificates import Certificate

HIDDEN = 32
EPOCHS = 60
MSE_THRESHOLD = 0.05


@pytest.fixture(scope="module")
def data():
    return generate(CSTR, states_per_axis=12, inputs_per_axis=5, chains=32, periods=20,
                    seed=0)


@pytest.fixture(scope="module")
def trained(data):
    """Every registered model fitted once on the small dataset: name -> (model, FitResult)."""
    models = {}
    for name in MODELS:
        torch.manual_seed(0)
        model = build_model(name, 2, 2, hidden=HIDDEN)
        models[name] = model, fit(model, data, epochs=EPOCHS, batch_size=64, seed=0)
    return models


@pytest.fixture(scope="module")
def held_out_inputs(data) -> torch.Tensor:
    return torch.from_numpy(data.sequences("test")[0])


def _random_pairs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Free (not repeated) float64 input sequences over the scaled data range."""
    generator = torch.Generator().manual_seed(seed)
    return tuple(2 * torch.randn(n, 10, 4, generator=generator, dtype=torch.float64)
                 for _ in range(2))


def _midpoint_gap(model: torch.nn.Module) -> torch.Tensor:
    """max over random pairs, time steps and outputs of f((z1+z2)/2) - (f(z1)+f(z2))/2."""
    net = copy.deepcopy(model).double().eval()
    z1, z2 = _random_pairs(2000)
    with torch.no_grad():
        return (net((z1 + z2) / 2) - (net(z1) + net(z2)) / 2).max()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["iclrnn", "icrnn"])
def test_input_convex_models_are_midpoint_convex_in_every_output(trained, name):
    assert _midpoint_gap(trained[name][0]) <= 1e-5


@pytest.mark.slow
def test_plain_rnn_violates_midpoint_convexity(trained):
    assert _midpoint_gap(trained["rnn"][0]) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["iclrnn", "icrnn"])
def test_constrained_weights_are_non_negative_after_training(trained, name):
    model = trained[name][0]
    for weight in model.constrained():
        assert (weight >= 0).all()


@pytest.mark.slow
def test_iclrnn_spectral_norms_stay_under_the_cap(trained):
    for weight in trained["iclrnn"][0].constrained():
        assert torch.linalg.matrix_norm(weight.double(), ord=2) <= 1.0
    assert any(torch.linalg.matrix_norm(w.double(), ord=2) > 1.0
               for w in trained["icrnn"][0].constrained())  # so the cap did something


def test_projection_enforces_a_configured_cap():
    model = ICLRNN(2, 2, hidden=16, spectral_cap=0.5)
    with torch.no_grad():
        for weight in model.constrained():
            weight.normal_(0, 3)
    model.project_()
    for weight in model.constrained():
        assert (weight >= 0).all()
        sigma = torch.linalg.matrix_norm(weight.double(), ord=2)
        assert 0.5 * (1 - 1e-5) <= sigma <= 0.5


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_learns_the_plant(trained, data, name):
    result = trained[name][1]
    _, y_train = data.sequences("train")
    _, y_test = data.sequences("test")
    mean_mse = float(((y_test - y_train.mean(axis=0)) ** 2).mean())
    assert result.test_mse < MSE_THRESHOLD
    assert result.test_mse < 0.05 * mean_mse
    assert result.history[-1]["train_mse"] < result.history[0]["train_mse"]


@pytest.mark.slow
def test_target_noise_is_applied_and_the_clean_fit_survives_it(data):
    torch.manual_seed(0)
    model = build_model("iclrnn", 2, 2, hidden=HIDDEN)
    result = fit(model, data, epochs=30, batch_size=64, target_noise_sigma=0.5, seed=0)
    assert result.history[-1]["train_mse"] > 0.2  # noise of variance 0.25 cannot be fitted
    assert result.test_mse < 0.1


def _certificate_checked_on_sampled_pairs(model: torch.nn.Module, inputs: torch.Tensor,
                                          seed: int):
    """The model's certificate, asserted to lie above its sampled lower bound and above the
    ratio of 4000 random input pairs (half of them 1e-2 apart)."""
    certificate = certify_model(model, inputs[:128], pairs=64, steps=50)
    z1, z2 = _random_pairs(4000, seed=seed)
    z2 = z1 + torch.where(torch.arange(4000)[:, None, None] % 2 == 0, 1e-2, 1.0) * (z2 - z1)
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        ratios = (torch.linalg.vector_norm(net(z1) - net(z2), dim=(1, 2))
                  / torch.linalg.vector_norm(z1 - z2, dim=(1, 2)))
    assert 0 < certificate.lower <= certificate.upper
    assert ratios.max() <= certificate.upper
    return certificate


@pytest.fixture(scope="module")
def stacked(data):
    """A 2-layer ICLRNN and a 2-layer RNN trained without early stopping."""
    models = {}
    for name in ("iclrnn", "rnn"):
        torch.manual_seed(0)
        model = build_model(name, 2, 2, hidden=16, layers=2)
        models[name] = model, fit(model, data, epochs=25, batch_size=64, seed=0, patience=None)
    return models


@pytest.mark.slow
def test_without_early_stopping_every_epoch_runs_and_the_last_weights_are_kept(stacked):
    result = stacked["iclrnn"][1]
    assert len(result.history) == 25 and result.best_epoch == 25
    assert result.history[-1]["train_mse"] < 0.75 * result.history[0]["train_mse"]


@pytest.mark.slow
def test_stacked_iclrnn_is_convex_non_negative_and_capped(stacked):
    model = stacked["iclrnn"][0]
    assert len(model.W) == 2 and len(model.U) == 2
    assert _midpoint_gap(model) <= 1e-5
    for weight in model.constrained():
        assert (weight >= 0).all()
        assert torch.linalg.matrix_norm(weight.double(), ord=2) <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["iclrnn", "rnn"])
def test_stacked_certificate_holds_on_sampled_pairs(stacked, held_out_inputs, name):
    model = stacked[name][0]
    certificate = _certificate_checked_on_sampled_pairs(model, held_out_inputs, seed=2)
    # the composed bound is no looser than the product of the two cells' own bounds
    weights = model.recurrent_weights()
    product = float(torch.linalg.matrix_norm(weights.output, ord=2))
    for a, r in zip(weights.inputs, weights.recurrents, strict=True):
        product *= float(torch.linalg.matrix_norm(a, ord=2)) * sequence_gain(r, 10)
    assert certificate.upper <= product * (1 + 1e-9)


def test_sequence_gain_matches_hand_computed_norms():
    assert sequence_gain(torch.zeros(3, 3), 5) == pytest.approx(1.0)
    assert sequence_gain(torch.eye(3), 2) == pytest.approx((1 + 5**0.5) / 2)  # [[1,0],[1,1]]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["iclrnn", "icrnn", "rnn"])
def test_certified_bound_holds_on_sampled_pairs(trained, held_out_inputs, name):
    model = trained[name][0]
    certificate = _certificate_checked_on_sampled_pairs(model, held_out_inputs, seed=1)
    if name == "iclrnn":
        assert certificate.upper <= 2**0.5 * sequence_gain(torch.eye(1), 10)


@pytest.mark.slow
def test_lstm_has_a_sampled_lower_bound_but_no_weight_bound(trained, held_out_inputs):
    model = trained["lstm"][0]
    assert sequence_upper_bound(model, 10) == float("inf")
    assert sequence_lower_bound(model, held_out_inputs[:64], pairs=16, steps=10) > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_save_load_round_trip_gives_identical_outputs(trained, data, held_out_inputs, name,
                                                      tmp_path: Path):
    model = trained[name][0].eval()
    certificate = Certificate(upper=3.5, lower=1.25, method="recurrent spectral product",
                              seconds=0.1)
    save_model(tmp_path / "model.pt", model, data, certificate)
    loaded = load_model(tmp_path / "model.pt", data)
    assert loaded.certificate == certificate
    assert type(loaded.model) is type(model)
    with torch.no_grad():
        assert torch.equal(loaded.model(held_out_inputs), model(held_out_inputs))
    rows = data.rows("test")[:5]
    predicted = loaded.predict(data.x0[rows], data.u[rows])
    assert predicted.shape == (5, 10, 2)
    assert (np.abs(predicted - data.targets[rows]) < 0.25 * data.state_scaler.std).all()


@pytest.mark.slow
def test_a_model_for_another_plant_or_sizes_is_refused(trained, data, tmp_path: Path):
    path = tmp_path / "model.pt"
    save_model(path, trained["iclrnn"][0], data)
    with pytest.raises(ValueError, match="models process 'cstr', expected 'quadtank'"):
        load_model(path, process=quadtank_process())
    assert load_model(path, process=CSTR).state_names == ("CA", "T")
    other = generate(CSTR, states_per_axis=8, inputs_per_axis=3, chains=8, periods=5,
                     seed=3)
    with pytest.raises(ValueError, match="other state scalers"):
        load_model(path, other)
    state = torch.load(path, weights_only=True)
    torch.save({**state, "state_size": 3}, path)
    with pytest.raises(ValueError, match="names 2 states and 2 inputs for a model of 3 and 2"):
        load_model(path)
    torch.save({**state, "format": "lipctl-process-model-1"}, path)
    with pytest.raises(ValueError, match="saved by an earlier lipctl.*fit it again"):
        load_model(path)
    torch.save({**state, "model": "transformer"}, path)
    with pytest.raises(ValueError, match="unknown model 'transformer'"):
        load_model(path)
    torch.save({**state, "hparams": {"hidden": 8, "spectral_cap": 1.0}}, path)
    with pytest.raises(ValueError, match="weights do not fit"):
        load_model(path)
    with pytest.raises(ValueError, match="model maps 3 states"):
        save_model(path, build_model("rnn", 3, 2, hidden=4), data)


def test_bad_model_names_and_hyper_parameters_are_refused():
    with pytest.raises(ValueError, match="unknown model 'gru'; choose from iclrnn"):
        build_model("gru", 2, 2)
    with pytest.raises(ValueError, match="hidden sizes must be positive"):
        build_model("lstm", 2, 2, hidden=0)
    with pytest.raises(ValueError, match="bad hyper-parameters for model 'icrnn'"):
        build_model("icrnn", 2, 2, spectral_cap=1.0)
    with pytest.raises(ValueError, match="spectral_cap must be a positive number"):
        build_model("iclrnn", 2, 2, spectral_cap=0.0)
    with pytest.raises(ValueError, match="layers must be at least 1, got 0"):
        build_model("rnn", 2, 2, layers=0)


class _Persistence(ProcessModel):
    """A model of one's own: the next state is the current one (no CasADi translation)."""

    name = "persistence_for_tests"

    def __init__(self, state_size: int, input_size: int, hidden: int = 1):
        super().__init__(state_size, input_size, hidden=hidden)
        self.gain = torch.nn.Parameter(torch.ones(1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.gain * z[..., :self.state_size]


def test_a_registered_model_of_ones_own_saves_and_loads_by_name(data, tmp_path: Path):
    register_model(_Persistence)
    assert register_model(_Persistence) is _Persistence  # registering again is harmless
    try:
        model = build_model("persistence_for_tests", 2, 2)
        save_model(tmp_path / "own.pt", model, data)
        loaded = load_model(tmp_path / "own.pt", process=CSTR)
        assert type(loaded.model) is _Persistence
        with pytest.raises(ValueError, match="no CasADi translation for process model"):
            loaded.model.casadi_sequence(None, 1)
        with pytest.raises(ValueError, match="is taken by _Persistence"):
            register_model(type("Other", (_Persistence,), {}))
    finally:
        MODELS.pop("persistence_for_tests")
