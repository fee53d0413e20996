"""Trained process models as CasADi functions: parity with torch, exact jacobians, size checks,
and an ICLRNN-MPC driving the true CSTR to its target."""

from __future__ import annotations

import copy
from importlib.resources import files
from pathlib import Path

import casadi as ca
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lipctl.control import MPC, SolverOptions, process_metrics, run
from lipctl.control.models import TrainedModel, build_model, casadi_model, fit, save_model
from lipctl.control.models.base import ProcessModel
from lipctl.control.process_data import Scaler, generate
from lipctl.control.process_mpc import mpc_episode
from lipctl.control.process_planning import ProcessPlanner, process_step
from lipctl.envs import make_env
from lipctl.envs.cstr import CSTR, ENV_ID, PUBLISHED_STARTS

STARTS = [list(start) for start in PUBLISHED_STARTS]  # deviation form
ACTION_LOW, ACTION_HIGH = CSTR.input_low, CSTR.input_high
KINDS = {"iclrnn": {}, "icrnn": {}, "rnn": {}, "rnn-relu": {"nonlinearity": "relu"}, "lstm": {},
         "iclrnn-stacked": {"layers": 2}, "rnn-stacked": {"layers": 2},
         "lstm-stacked": {"layers": 2}}
# Scalers of the order the CSTR data gives (CA ~ 1 kmol/m3, T ~ 40 K; inputs across bounds).
STATE_SCALER = Scaler(np.array([0.05, -2.0]), np.array([0.8, 40.0]))
INPUT_SCALER = Scaler(np.array([0.1, 1e4]), np.array([2.0, 2.9e5]))


def _trained(model: ProcessModel, state_scaler: Scaler = STATE_SCALER,
             input_scaler: Scaler = INPUT_SCALER) -> TrainedModel:
    return TrainedModel(model.eval(), state_scaler, input_scaler, CSTR.name, CSTR.state_names,
                        CSTR.input_names, CSTR.sampling_period, CSTR.substeps)


def _untrained(kind: str, hidden: int = 8) -> TrainedModel:
    """A small model with non-trivial weights: its init plus noise, then its own projection."""
    torch.manual_seed(0)
    model = build_model(kind.split("-")[0], 2, 2, hidden=hidden, **KINDS[kind])
    with torch.no_grad():
        for weight in model.parameters():
            weight.add_(0.3 * torch.randn_like(weight))
    model.project_()
    return _trained(model)


def _points(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random states around the scaled range and inputs across their bounds, [n, 2] each."""
    rng = np.random.default_rng(seed)
    x = STATE_SCALER.mean + STATE_SCALER.std * rng.normal(size=(n, 2))
    return x, rng.uniform(ACTION_LOW, ACTION_HIGH, size=(n, 2))


def _torch_next(trained: TrainedModel, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The last predicted state [n, 2] in float64 torch (differentiable in x and u)."""
    net = copy.deepcopy(trained.model).double().eval()
    (s_mean, s_std), (u_mean, u_std) = (
        (torch.from_numpy(s.mean), torch.from_numpy(s.std))
        for s in (trained.state_scaler, trained.input_scaler))
    z = torch.cat([(x - s_mean) / s_std, (u - u_mean) / u_std], dim=-1)
    y = net(z[:, None].expand(-1, trained.substeps, -1))[:, -1]
    return y * s_std + s_mean


def _assert_close(ours: np.ndarray, reference: np.ndarray, std: np.ndarray, rel: float) -> None:
    """|ours - reference| <= rel (|reference| + std) elementwise, std the state scale [2]."""
    error = np.abs(ours - reference) / (np.abs(reference) + std)
    assert error.max() <= rel, f"largest relative error {error.max():.2e} > {rel:.0e}"


def _casadi_next(function: ca.Function, x: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.asarray(function.map(len(x))(x.T, u.T)).T


@pytest.mark.parametrize("kind", list(KINDS))
def test_casadi_function_matches_torch(kind):
    trained = _untrained(kind)
    function = casadi_model(trained)
    x, u = _points(200)
    ours = _casadi_next(function, x, u)
    with torch.no_grad():
        reference = _torch_next(trained, torch.from_numpy(x), torch.from_numpy(u)).numpy()
    _assert_close(ours, reference, STATE_SCALER.std, 1e-10)
    float32 = trained.predict(x, u)[:, -1]  # what the user's TrainedModel gives
    _assert_close(ours, float32, STATE_SCALER.std, 1e-5)
    assert np.ptp(ours, axis=0).min() > 1e-2 * STATE_SCALER.std.min()  # not a constant map


@pytest.mark.parametrize("kind", list(KINDS))
def test_casadi_jacobian_matches_torch_autograd(kind):
    trained = _untrained(kind)
    function = casadi_model(trained)
    x, u = ca.SX.sym("x", 2), ca.SX.sym("u", 2)
    jacobian = ca.Function("jacobian", [x, u], [ca.jacobian(function(x, u), ca.vertcat(x, u))])
    for xk, uk in zip(*_points(5, seed=1), strict=True):
        ours = np.asarray(jacobian(xk, uk))

        def step(xu: torch.Tensor) -> torch.Tensor:
            return _torch_next(trained, xu[None, :2], xu[None, 2:])[0]

        reference = torch.autograd.functional.jacobian(step, torch.from_numpy(np.r_[xk, uk]))
        reference = reference.numpy()
        np.testing.assert_allclose(ours, reference, rtol=1e-8,
                                   atol=1e-10 * np.abs(reference).max())


@pytest.mark.parametrize("kind", list(KINDS))
def test_mx_built_model_matches_the_sx_built_one(kind):
    trained = _untrained(kind)
    x, u = _points(20, seed=4)
    sx, mx = (casadi_model(trained, symbolic=s) for s in ("SX", "MX"))
    np.testing.assert_allclose(_casadi_next(mx, x, u), _casadi_next(sx, x, u), rtol=1e-12)
    with pytest.raises(ValueError, match="symbolic must be 'SX' or 'MX'"):
        casadi_model(trained, symbolic="sx")


def test_symbolic_calls_on_sx_and_mx_give_the_same_numbers():
    function = casadi_model(_untrained("lstm"))
    x0, u0 = _points(1, seed=2)
    expected = np.asarray(function(x0[0], u0[0]))
    for symbol in (ca.SX, ca.MX):
        x, u = symbol.sym("x", 2), symbol.sym("u", 2)
        wrapped = ca.Function("wrapped", [x, u], [function(x, u)])
        np.testing.assert_allclose(np.asarray(wrapped(x0[0], u0[0])), expected, rtol=1e-12)


class _Unknown(ProcessModel):
    name = "gru"


def test_models_that_do_not_fit_are_value_errors():
    model = build_model("iclrnn", 3, 2, hidden=4)
    with pytest.raises(ValueError, match=r"sizes do not match: model \(3, 2\).*scalers \(2, 2\)"):
        casadi_model(_trained(model))
    three = Scaler(np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match=r"names \(2, 2\)"):
        casadi_model(_trained(model, state_scaler=three))
    broken = build_model("icrnn", 2, 2, hidden=4)
    broken.U[0] = torch.nn.Parameter(torch.ones(4, 5))
    with pytest.raises(ValueError, match=r"icrnn weight 'U.0' has shape \(4, 5\), expected "):
        casadi_model(_trained(broken))
    with pytest.raises(ValueError, match="no CasADi translation for process model 'gru'"):
        casadi_model(_trained(_Unknown(2, 2, hidden=4)))


def test_a_model_file_of_other_sizes_is_a_value_error(tmp_path: Path):
    data = generate(CSTR, states_per_axis=6, inputs_per_axis=3, chains=4, periods=3)
    path = tmp_path / "model.pt"
    save_model(path, build_model("rnn", 2, 2, hidden=4), data)
    assert casadi_model(path).size1_out(0) == 2
    state = torch.load(path, weights_only=True)
    torch.save({**state, "input_size": 3}, path)
    with pytest.raises(ValueError, match="names 2 states and 2 inputs for a model of 2 and 3"):
        casadi_model(path)


@pytest.fixture(scope="module")
def iclrnn() -> TrainedModel:
    """An ICLRNN of 16 units fitted for ~3 s on 1340 generated rows (938 train): test MSE
    ~2e-3 (scaled), enough for the MPC; ~1e-2 after 40 epochs on ~500 rows was not."""
    data = generate(CSTR, states_per_axis=12, inputs_per_axis=5, chains=32, periods=20,
                    seed=0)
    torch.manual_seed(0)
    model = build_model("iclrnn", 2, 2, hidden=16)
    result = fit(model, data, epochs=60, batch_size=64, seed=0)
    print(f"\nICLRNN fit: {len(data.rows('train'))} train rows, {result.seconds:.1f} s, "
          f"test MSE {result.test_mse:.2e}")
    return TrainedModel(model.eval(), data.state_scaler, data.input_scaler, data.plant_id,
                        data.state_names, data.input_names, data.sampling_period, data.substeps)


def _closed_loop(mpc: MPC, start: list[float], steps: int = 30):
    (trajectory,) = run(mpc, make_env(ENV_ID, x0=start, max_episode_steps=steps), seed=0)
    return process_metrics(CSTR, trajectory, mpc.stats)


@pytest.mark.slow
def test_fitted_iclrnn_matches_torch(iclrnn):
    x, u = _points(100, seed=3)
    ours = _casadi_next(casadi_model(iclrnn), x, u)
    _assert_close(ours, iclrnn.predict(x, u)[:, -1], iclrnn.state_scaler.std, 1e-5)


def test_iclrnn_mpc_reaches_the_target_from_every_published_start(iclrnn):
    mpc = MPC(casadi_model(iclrnn), CSTR, horizon=2)
    results = {tuple(start): _closed_loop(mpc, start) for start in STARTS}
    for start, metrics in results.items():
        print(f"ICLRNN-MPC N=2 from {start}: reached step {metrics.reached_step}, solve median "
              f"{metrics.solve_ms_median:.1f} ms (p95 {metrics.solve_ms_p95:.1f}), "
              f"statuses {metrics.status_counts}")
    for metrics in results.values():
        assert metrics.reached_step is not None and metrics.reached_step <= 25
        assert metrics.bound_violations == 0


def test_gauss_newton_hessian_is_exact_for_a_relu_network():
    """The ICLRNN is piecewise affine: its second derivatives vanish almost everywhere, so the
    Gauss-Newton Hessian of the Lagrangian equals the exact one at random points."""
    model = casadi_model(_untrained("iclrnn-stacked"), symbolic="MX")
    builds = [MPC(model, CSTR, solver=SolverOptions(symbolic="MX", hessian=hessian))
              for hessian in ("exact", "gauss-newton")]
    exact, gauss_newton = (build._solver.get_function("nlp_hess_l") for build in builds)
    rng = np.random.default_rng(0)
    largest = 0.0
    for _ in range(20):
        v = rng.uniform(-1, 1, size=4)
        p = builds[0].parameters(STATE_SCALER.mean + STATE_SCALER.std * rng.normal(size=2))
        lam_g = rng.uniform(0, 1, size=2)
        reference = np.triu(np.asarray(exact(v, p, 1.0, lam_g)))
        ours = np.triu(np.asarray(gauss_newton(v, p, 1.0, lam_g)))
        np.testing.assert_allclose(ours, reference, rtol=1e-9, atol=1e-9 * np.abs(reference).max())
        largest = max(largest, np.abs(reference).max())
    assert largest > 0


@pytest.mark.slow
@pytest.mark.parametrize("options", [
    SolverOptions(symbolic="MX", method="sqp", hessian="gauss-newton"),
    SolverOptions(symbolic="MX", method="sqp", hessian="gauss-newton", jit=True),
], ids=["sqp-gauss-newton", "sqp-gauss-newton-jit"])
def test_sqp_plans_what_ipopt_plans_on_a_network(iclrnn, options):
    ipopt, sqp = (MPC(casadi_model(iclrnn, symbolic="MX"), CSTR, solver=solver)
                  for solver in (SolverOptions(symbolic="MX"), options))
    span = np.asarray(ACTION_HIGH) - np.asarray(ACTION_LOW)
    for start in STARTS:
        for mpc in (ipopt, sqp):
            mpc.reset()
        for _ in range(3):
            expected, ours = ipopt.act(np.array(start)), sqp.act(np.array(start))
            np.testing.assert_allclose(ours / span, expected / span, atol=2e-3)
        assert not any(s.fallback for s in sqp.stats)  # reset clears stats: checked per start


@pytest.mark.slow
def test_iclrnn_mpc_solve_time_at_horizon_ten(iclrnn):
    mpc = MPC(casadi_model(iclrnn), CSTR, horizon=10)
    metrics = _closed_loop(mpc, STARTS[0], steps=20)
    print(f"\nICLRNN-MPC N=10 from {STARTS[0]}: reached step {metrics.reached_step}, solve "
          f"median {metrics.solve_ms_median:.1f} ms (p95 {metrics.solve_ms_p95:.1f})")
    assert metrics.reached_step is not None


@pytest.mark.slow
def test_mppi_on_the_fitted_iclrnn_reaches_the_target_from_every_published_start(iclrnn):
    """The torch face of the same fitted model that IPOPT plans on, planned on by MPPI."""
    factory = instantiate(OmegaConf.merge(OmegaConf.load(files("lipctl.conf") / "planner"
                                                         / "mppi.yaml"), {"horizon": 2}))
    for start in STARTS:
        planner = ProcessPlanner(factory, CSTR, process_step(CSTR, iclrnn))
        _, metrics = mpc_episode(planner, start, steps=30)
        print(f"MPPI on the ICLRNN from {start}: reached step {metrics.reached_step}, cost "
              f"{metrics.integrated_cost:.4g}, planning {metrics.solve_ms_median:.1f} ms")
        assert metrics.reached_step is not None and metrics.reached_step <= 25
        assert metrics.bound_violations == 0
