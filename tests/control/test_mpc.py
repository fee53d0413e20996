from __future__ import annotations

import casadi as ca
import numpy as np
import pytest

from lipctl.control import (
    MPC,
    SolverOptions,
    SolveStats,
    Trajectory,
    process_metrics,
    reached_step,
    run,
)
from lipctl.control.process_mpc import mpc_episode, process_mpc
from lipctl.envs import make_env
from lipctl.envs.cstr import CSTR, ENV_ID, PUBLISHED_STARTS
from lipctl.envs.quadtank import quadtank_process

STARTS = [list(start) for start in PUBLISHED_STARTS]  # deviation form
ACTION_LOW, ACTION_HIGH = CSTR.input_low, CSTR.input_high


@pytest.fixture(scope="module")
def lmpc() -> MPC:
    """First-principles LMPC, horizon 2, built once for the module (run() resets it)."""
    return MPC(CSTR.step, CSTR)


def _episode(controller: MPC, start: list[float], steps: int = 30) -> Trajectory:
    (trajectory,) = run(controller, make_env(ENV_ID, x0=start, max_episode_steps=steps), seed=0)
    return trajectory


@pytest.mark.parametrize("start", STARTS)
def test_first_principles_lmpc_reaches_and_keeps_the_target(lmpc, start):
    trajectory = _episode(lmpc, start)
    metrics = process_metrics(CSTR, trajectory, lmpc.stats)
    assert metrics.reached_step is not None and metrics.reached_step <= 20
    assert metrics.fallbacks == 0 and metrics.bound_violations == 0
    assert len(lmpc.stats) == len(trajectory) == 30
    # Noise-free plant = model, so the contraction constraint holds on the closed loop.
    v = CSTR.lyapunov(trajectory.observations)
    bound = np.maximum(v[:-1], CSTR.target_lyapunov_level())
    assert np.all(v[1:] <= bound * (1 + 1e-4))


def test_mpc_without_contraction_also_reaches_the_target():
    mpc = MPC(CSTR.step, CSTR, contraction=False)
    trajectory = _episode(mpc, STARTS[0])
    assert reached_step(CSTR, trajectory.observations) is not None
    assert process_metrics(CSTR, trajectory, mpc.stats).fallbacks == 0


@pytest.mark.slow
@pytest.mark.parametrize("horizon", [2, 10])
def test_solve_time_by_horizon(horizon):
    mpc = MPC(CSTR.step, CSTR, horizon=horizon)
    metrics = process_metrics(CSTR, _episode(mpc, STARTS[0], steps=20), mpc.stats)
    print(f"\nLMPC horizon {horizon}: solve median {metrics.solve_ms_median:.1f} ms, "
          f"p95 {metrics.solve_ms_p95:.1f} ms, reached step {metrics.reached_step}")
    assert metrics.fallbacks == 0 and metrics.reached_step is not None


def test_failed_solves_fall_back_without_crashing_the_loop():
    mpc = MPC(CSTR.step, CSTR, ipopt_options={"max_iter": 1})
    trajectory = _episode(mpc, STARTS[0], steps=5)
    metrics = process_metrics(CSTR, trajectory, mpc.stats)
    assert len(trajectory) == 5 and metrics.fallbacks == 5
    assert metrics.status_counts == {"Maximum_Iterations_Exceeded": 5}
    np.testing.assert_array_equal(trajectory.actions, 0.0)  # no plan yet: zero input
    assert metrics.bound_violations == 0


@pytest.mark.parametrize("method,status", [("ipopt", "Maximum_WallTime_Exceeded"),
                                           ("sqp", "Time_Budget_Exceeded")])
def test_a_solve_over_the_time_budget_falls_back(method, status):
    """A budget no solve can meet fails every step (IPOPT stops at it, SQP's late answer is
    discarded); a generous one fails none."""
    solver = SolverOptions(method=method)
    tight = MPC(CSTR.step, CSTR, solver=solver, time_budget=1e-9)
    trajectory = _episode(tight, STARTS[0], steps=3)
    assert [(s.fallback, s.status) for s in tight.stats] == [(True, status)] * 3
    np.testing.assert_array_equal(trajectory.actions, 0.0)  # no plan yet: zero input
    generous = MPC(CSTR.step, CSTR, solver=solver, time_budget=60.0)
    _episode(generous, STARTS[0], steps=3)
    assert [s.fallback for s in generous.stats] == [False] * 3


def test_fallback_applies_the_shifted_previous_plan(lmpc):
    lmpc.reset()
    first = lmpc.act(np.array([0.05, 2.0]))
    plan = lmpc.plan.copy()
    np.testing.assert_array_equal(first, plan[0])
    assert not np.allclose(plan[0], plan[1])
    for _ in range(2):  # the plan shifts, then its last input is held
        np.testing.assert_array_equal(lmpc.act(np.array([np.nan, 0.0])), plan[1])
    assert [s.fallback for s in lmpc.stats] == [False, True, True]
    assert lmpc.stats[-1].status == "Non_Finite_Observation"
    lmpc.reset()
    assert lmpc.plan is None and lmpc.stats == []
    np.testing.assert_array_equal(lmpc.act(np.array([np.inf, 0.0])), [0.0, 0.0])


def test_bad_mpc_settings_are_value_errors():
    with pytest.raises(ValueError, match="horizon"):
        MPC(CSTR.step, CSTR, horizon=0)
    with pytest.raises(ValueError, match="time_budget must be > 0"):
        MPC(CSTR.step, CSTR, time_budget=0.0)
    with pytest.raises(ValueError, match="model must return a state of size 2"):
        MPC(lambda x, u: x[0], CSTR)
    with pytest.raises(ValueError, match="has no Lyapunov function"):
        MPC(quadtank_process().step, quadtank_process(), contraction=True)


def test_reached_step_needs_the_state_to_stay():
    inside, outside = [0.0, 0.0], [1.0, 0.0]
    assert reached_step(CSTR, np.array([outside, inside, inside])) == 1
    assert reached_step(CSTR, np.array([outside, inside, outside, inside])) == 3
    assert reached_step(CSTR, np.array([inside, inside])) == 0
    assert reached_step(CSTR, np.array([inside, outside])) is None
    shifted = np.array([outside, inside]) + 5.0  # around another reference
    assert reached_step(CSTR, shifted, x_ref=np.full(2, 5.0)) == 1


def test_metrics_count_bound_violations_cost_and_solver_figures():
    trajectory = Trajectory(
        observations=np.zeros((4, 2)),
        actions=np.array([[0.0, 0.0], [4.0, 0.0], [0.0, -6e5]]),
        rewards=np.array([-1.0, -2.0, -3.0]),
        terminated=False, truncated=True, infos=[{}] * 4,
    )
    stats = [SolveStats(0.001 * k, "Solve_Succeeded", False) for k in (1, 2)]
    stats.append(SolveStats(0.010, "Maximum_Iterations_Exceeded", True))
    metrics = process_metrics(CSTR, trajectory, stats)
    assert metrics.bound_violations == 2 and metrics.fallbacks == 1
    assert metrics.integrated_cost == pytest.approx(0.005 * 6.0)
    assert metrics.solve_ms_median == pytest.approx(2.0)
    assert metrics.solve_ms_p95 == pytest.approx(9.2)
    assert metrics.status_counts == {"Solve_Succeeded": 2, "Maximum_Iterations_Exceeded": 1}
    assert np.isnan(process_metrics(CSTR, trajectory).solve_ms_median)


@pytest.mark.parametrize("options", [
    SolverOptions(symbolic="MX"),
    SolverOptions(hessian="limited-memory"),
    SolverOptions(symbolic="MX", warm_duals=True),
    SolverOptions(hessian="gauss-newton"),
    SolverOptions(method="sqp", hessian="gauss-newton"),
    SolverOptions(method="sqp", hessian="gauss-newton", warm_duals=True),
])
def test_every_solver_option_plans_what_the_default_plans(lmpc, options):
    other = MPC(CSTR.step, CSTR, solver=options)
    for start in STARTS:
        lmpc.reset()
        other.reset()
        for _ in range(3):  # a few steps, so warm starts of plan and multipliers are used
            expected, ours = lmpc.act(np.array(start)), other.act(np.array(start))
            span = np.asarray(ACTION_HIGH) - np.asarray(ACTION_LOW)
            np.testing.assert_allclose(ours / span, expected / span, atol=2e-3)
        assert not any(s.fallback for s in other.stats)  # reset clears stats: checked per start


def test_warm_duals_are_kept_after_a_success_and_cleared_by_reset():
    mpc = MPC(CSTR.step, CSTR, solver=SolverOptions(warm_duals=True))
    mpc.act(np.array(STARTS[0]))
    assert set(mpc._multipliers) == {"lam_x0", "lam_g0"}
    assert mpc._multipliers["lam_x0"].shape == (2 * 2,)
    mpc.reset()
    assert mpc._multipliers == {}


def _linear(x, u):
    """A small linear plant in the CSTR's units: what a JIT build can compile in seconds."""
    return 0.9 * x + ca.vertcat(0.1 * u[0], 1e-5 * u[1])


def test_jit_compiled_mpc_gives_the_interpreted_plan():
    interpreted = MPC(_linear, CSTR, contraction=False)
    compiled = MPC(_linear, CSTR, contraction=False, solver=SolverOptions(jit=True))
    assert compiled._solver.is_a("Nlpsol") and compiled.options.jit
    start = np.array(STARTS[1])
    np.testing.assert_allclose(compiled.act(start), interpreted.act(start), rtol=1e-6)


def test_jit_without_a_compiler_warns_and_runs_interpreted(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.warns(RuntimeWarning, match="no C compiler on PATH"):
        mpc = MPC(_linear, CSTR, contraction=False, solver=SolverOptions(jit=True))
    assert np.all(np.isfinite(mpc.act(np.array(STARTS[1]))))


def test_an_sqp_build_prints_nothing(capfd):
    """qpOASES's licence notice (printed as CasADi creates it) stays out of the output."""
    mpc = MPC(CSTR.step, CSTR, solver=SolverOptions(method="sqp"))
    mpc.act(np.array(STARTS[0]))
    assert capfd.readouterr().out == ""
    assert mpc.stats[-1].status == "Solve_Succeeded"


def test_bad_solver_options_are_value_errors():
    with pytest.raises(ValueError, match="symbolic must be one of"):
        SolverOptions(symbolic="sx")
    with pytest.raises(ValueError, match="hessian must be one of"):
        SolverOptions(hessian="bfgs")
    with pytest.raises(ValueError, match="method must be one of"):
        SolverOptions(method="sqpmethod")
    with pytest.raises(ValueError, match="apply to method 'ipopt'"):
        MPC(_linear, CSTR, solver=SolverOptions(method="sqp"),
            ipopt_options={"max_wall_time": 0.01})


def _lagrangian_hessians(mpc_exact: MPC, mpc_gauss_newton: MPC, points: int = 20,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The two builds' Hessians of the Lagrangian [points, n, n] at random plans, states and
    non-negative multipliers (upper triangles, as IPOPT takes them)."""
    rng = np.random.default_rng(seed)
    exact = mpc_exact._solver.get_function("nlp_hess_l")
    gauss_newton = mpc_gauss_newton._solver.get_function("nlp_hess_l")
    ours, reference = [], []
    for _ in range(points):
        v = rng.uniform(-1, 1, size=2 * mpc_exact.horizon)
        x = np.array(STARTS[rng.integers(len(STARTS))]) * rng.uniform(0.2, 1.0)
        p = mpc_exact.parameters(x)
        lam_g = rng.uniform(0, 1, size=mpc_exact.horizon)
        reference.append(np.triu(np.asarray(exact(v, p, 1.0, lam_g))))
        ours.append(np.triu(np.asarray(gauss_newton(v, p, 1.0, lam_g))))
    return np.array(ours), np.array(reference)


def test_gauss_newton_hessian_is_an_approximation_for_a_smooth_model():
    """On the CSTR's ODE the model's second derivatives are not zero: Gauss-Newton differs
    from the exact Hessian (so the test that a ReLU model's are equal, in test_neural_mpc.py,
    can fail)."""
    ours, reference = _lagrangian_hessians(
        MPC(CSTR.step, CSTR), MPC(CSTR.step, CSTR, solver=SolverOptions(hessian="gauss-newton")))
    assert np.abs(ours - reference).max() > 1e-3 * np.abs(reference).max()
    for hessian in ours:  # positive semi-definite with non-negative multipliers
        assert np.linalg.eigvalsh(hessian + np.triu(hessian, 1).T).min() >= -1e-9 * np.abs(
            hessian).max()


def test_solve_stats_count_solver_iterations(lmpc):
    lmpc.reset()
    lmpc.act(np.array(STARTS[0]))
    lmpc.act(np.array([np.nan, 0.0]))
    solved, skipped = lmpc.stats
    assert 1 <= solved.iterations <= 100 and not solved.fallback
    assert skipped.iterations == 0 and skipped.fallback


@pytest.mark.slow
def test_quadruple_tank_mpc_follows_a_setpoint_change_without_leaving_bounds():
    """The generic MPC on a second process: no Lyapunov function, absolute levels, a reference
    switched mid-episode without rebuilding the problem."""
    process = quadtank_process()
    low, high = (process.operating_points[name][0] for name in ("low", "high"))
    mpc = process_mpc(process, horizon=10, setpoint="low")
    assert not mpc.contraction
    trajectory, metrics = mpc_episode(mpc, low, steps=50, schedule={0: "low", 20: "high"})
    states = np.array([info["state"] for info in trajectory.infos])
    assert process.in_target(states[20], low) and not process.in_target(states[20], high)
    assert metrics.reached_step is not None and metrics.reached_step <= 45
    assert metrics.bound_violations == metrics.state_violations == metrics.fallbacks == 0
    np.testing.assert_allclose(mpc.x_ref, high)
