"""MPC of any process on any discrete-time CasADi model, built once, solved by IPOPT or SQP.

Problem, for the measured state x, the reference (x_r, u_r) and horizon N (single shooting,
inputs as decision variables), with the process's stage cost (lipctl.envs.process):

    min  sum_{j=1..N} (x_j - x_r)' Qx (x_j - x_r) + (u_{j-1} - u_r)' Ru (u_{j-1} - u_r)
    s.t. x_0 = x,  x_j = model(x_{j-1}, u_{j-1}),  low <= u_j <= high,
         V(x_j) <= max(V(x), rho_min)  for j = 1..N            (if contraction is on)

The contraction constraint (Lyapunov MPC, for a process with a Lyapunov function V around the
reference) is the usual two-mode LMPC in one expression: outside the level set {V <= rho_min}
V may not increase along the plan; inside it the plan stays in it. rho_min defaults to the
largest level set inside the process's target ellipse, so the constraint is feasible at (and
near) the reference, where V(x) -> 0 would ask the impossible. Inputs are optimised scaled to
[-1, 1] (the CSTR's Q spans 1e6 kJ/h, CA0 7 kmol/m3), the constraint is normalised to
V(x_j) / bound <= 1 and the cost is divided by the stage cost of the measured state at the
reference input (at least COST_SCALE_MIN), so the solver sees numbers of order one (and the
SQP method's absolute tolerances mean the same far from the reference as near it). The
reference is a parameter of the problem: `set_setpoint` changes it without rebuilding.

`SolverOptions` choose how the problem is built and solved:
- the method: IPOPT (interior point) or CasADi's SQP method with the active-set QP solver
  qpOASES (CasADi's own qrqp returned steps outside the input bounds on a fitted CSTR model).
  With few inputs and a short horizon an SQP step is cheap and, started from the shifted plan,
  few are needed; IPOPT has to walk its barrier parameter down at every solve;
- the graph: one scalar (SX) expression graph, or a matrix (MX) graph in which a model given as a
  CasADi Function stays one call node per horizon step (dense weight products then run as matrix
  kernels, and the model's derivatives are built once and shared by the horizon steps);
- the Hessian of the Lagrangian: exact; a limited-memory (L-BFGS) approximation; or Gauss-Newton,
  T' H T, where H is the Hessian of the Lagrangian in the planned states and inputs taken as free
  variables (the cost and the Lyapunov constraint are quadratic in them) and T the Jacobian of
  the planned states and inputs in the decision variables. Gauss-Newton drops the model's second
  derivatives only, so it is exact almost everywhere for a piecewise-affine model (a ReLU
  network such as the ICLRNN), and positive semi-definite with non-negative multipliers;
- C code generation of the NLP's functions compiled by the system's C compiler (JIT; without
  one, or if compiling fails, the interpreted functions are used and a warning says so);
- warm starts of the multipliers from the previous solve.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import casadi as ca
import numpy as np

from lipctl.envs.action_scale import ActionScale
from lipctl.envs.process import Process

Model = Callable[[Any, Any], Any]
"""model(x, u) -> x_next on CasADi columns: the state one sampling period later."""

DEFAULT_IPOPT = {"max_iter": 100, "tol": 1e-6, "acceptable_tol": 1e-4}
COST_SCALE_MIN = 1.0  # the cost is divided by max(stage cost of the measured state, this)
DEFAULT_SQP = {"max_iter": 100, "tol_pr": 1e-6, "tol_du": 1e-6}  # IPOPT's tolerance
QUIET_SQP = {"print_header": False, "print_iteration": False, "print_status": False,
             "qpsol": "qpoases", "qpsol_options": {"printLevel": "none", "error_on_fail": False}}
METHODS = {"ipopt": "ipopt", "sqp": "sqpmethod"}  # option value -> CasADi nlpsol plugin
SYMBOLICS = {"SX": ca.SX, "MX": ca.MX}
HESSIANS = ("exact", "limited-memory", "gauss-newton")
JIT_FLAGS = ["-O2"]


@dataclass(frozen=True)
class SolverOptions:
    """How the MPC problem is built and solved (see the module docstring)."""

    symbolic: str = "SX"      # "SX" or "MX"
    hessian: str = "exact"    # "exact", "limited-memory" or "gauss-newton"
    jit: bool = False         # compile the NLP's functions with the C compiler
    warm_duals: bool = False  # start the multipliers from the previous solve's
    method: str = "ipopt"     # "ipopt" or "sqp"

    def __post_init__(self) -> None:
        for field, value, allowed in (("symbolic", self.symbolic, tuple(SYMBOLICS)),
                                      ("hessian", self.hessian, HESSIANS),
                                      ("method", self.method, tuple(METHODS))):
            if value not in allowed:
                raise ValueError(f"{field} must be one of {allowed}, got {value!r}")

    def describe(self) -> str:
        """E.g. "MX graph, SQP, gauss-newton Hessian, JIT"."""
        return (f"{self.symbolic} graph, {self.method.upper()}, {self.hessian} Hessian"
                f"{', JIT' if self.jit else ''}{', warm duals' if self.warm_duals else ''}")

    def casadi_options(self, ipopt_options: dict[str, Any]) -> dict[str, Any]:
        """nlpsol options: the method's settings (`ipopt_options` override IPOPT's; they are a
        ValueError for SQP) and, when `jit` is on and a C compiler is found, code generation."""
        # with Gauss-Newton the solver takes the provided Hessian as exact
        approximation = "limited-memory" if self.hessian == "limited-memory" else "exact"
        options: dict[str, Any] = {"print_time": False, "error_on_fail": False}
        if self.method == "sqp":
            if ipopt_options:
                raise ValueError(f"ipopt_options {sorted(ipopt_options)} apply to method "
                                 "'ipopt', not 'sqp'")
            options |= {**QUIET_SQP, **DEFAULT_SQP, "hessian_approximation": approximation}
        else:
            ipopt = {"print_level": 0, "sb": "yes", **DEFAULT_IPOPT,
                     "hessian_approximation": approximation, **ipopt_options}
            if self.warm_duals:
                ipopt |= {"warm_start_init_point": "yes", "warm_start_bound_push": 1e-6,
                          "warm_start_mult_bound_push": 1e-6}
            options["ipopt"] = ipopt
        if self.jit and _compiler_found():
            options |= {"jit": True, "compiler": "shell",
                        "jit_options": {"flags": JIT_FLAGS, "verbose": False}}
        return options


@contextlib.contextmanager
def _casadi_output_dropped() -> Iterator[None]:
    """Drop what CasADi's C++ code prints (CasADi writes it to sys.stdout) meanwhile: qpOASES
    prints its licence notice when CasADi creates it, before its printLevel option applies."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _compiler_found() -> bool:
    """Whether CasADi's shell compiler (cc or gcc on PATH) is there; a warning if not."""
    if shutil.which("gcc") or shutil.which("cc"):
        return True
    warnings.warn("no C compiler on PATH: MPC runs without JIT", RuntimeWarning, stacklevel=3)
    return False


class SolveFailed(RuntimeError):
    """The solver found no solution (raised by a strict MPC instead of applying its shifted
    plan)."""


@dataclass(frozen=True)
class SolveStats:
    """One MPC step: solver wall time (s), the solver's return status, whether a fallback was
    applied and the solver's iteration count (0 where no solve ran)."""

    solve_time: float
    status: str
    fallback: bool
    iterations: int = 0


def _shift(rows: np.ndarray) -> np.ndarray:
    """Rows [horizon, k] one step on: the first dropped, the last repeated."""
    return np.vstack([rows[1:], rows[-1:]])


class MPC:
    """MPC of a process implementing the Controller protocol; see the module docstring.

    `model` is called once per horizon step on CasADi columns while the problem is built
    (`process.step` is the first-principles model); its cost, input bounds, reference and
    Lyapunov function come from `process`. `contraction` (default: on where the process has a
    Lyapunov function) adds the Lyapunov constraint; `level_min` is rho_min and `ipopt_options`
    override DEFAULT_IPOPT (IPOPT only). `time_budget` (seconds) makes a solve that takes longer
    a failed one, whatever the method: a real-time loop cannot wait for it (IPOPT is also told
    to stop there, its max_wall_time). Each solve starts from the previous plan shifted by one
    step (its last input held). A failed solve (the solver reports no success, or the
    observation is not finite) never raises from `act`: the controller applies that shifted
    plan, or the reference input when there is none since `reset`, and records a fallback in
    `stats`.
    `strict=True` raises SolveFailed instead (after shifting the plan, so the next solve still
    starts from it), for a runtime that applies its own fallback and logs the failure.
    `stats` and `plan` hold the current episode and are cleared by `reset`. `solver` picks
    the build and solve options (`SolverOptions`).
    """

    def __init__(self, model: Model, process: Process, horizon: int = 2,
                 contraction: bool | None = None, setpoint: str | None = None,
                 level_min: float | None = None,
                 ipopt_options: dict[str, Any] | None = None,
                 strict: bool = False,
                 solver: SolverOptions = SolverOptions(),
                 time_budget: float | None = None) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if time_budget is not None and not time_budget > 0:
            raise ValueError(f"time_budget must be > 0 seconds, got {time_budget}")
        if contraction is None:
            contraction = process.lyapunov_matrix is not None
        if contraction and process.lyapunov_matrix is None:
            raise ValueError(f"process {process.name!r} has no Lyapunov function: the "
                             "contraction constraint needs one (set contraction=false)")
        self.process, self.horizon = process, horizon
        self.contraction, self.strict = contraction, strict
        low, high = process.input_low, process.input_high
        self.action_low, self.action_high = low, high
        if contraction:
            self.level_min = (process.target_lyapunov_level() if level_min is None
                              else float(level_min))
            if self.level_min <= 0:
                raise ValueError(f"level_min must be > 0, got {self.level_min}")
        self.action_scale = ActionScale(low, high)
        self._nx, self._nu = process.state_size, process.input_size
        self.options, self.time_budget = solver, time_budget
        if time_budget is not None and solver.method == "ipopt":
            ipopt_options = {"max_wall_time": time_budget, **(ipopt_options or {})}
        self._solver = self._build(model, ipopt_options or {})
        self.set_setpoint(setpoint)
        self.plan: np.ndarray | None = None  # [horizon, nu] inputs, the next one first
        self._multipliers: dict[str, np.ndarray] = {}  # lam_x0, lam_g0 of the last success
        self.stats: list[SolveStats] = []

    def set_setpoint(self, setpoint: str | None) -> None:
        """Track the process's named operating point (None: its steady state) from now on."""
        self.setpoint = setpoint
        self.x_ref, self.u_ref = self.process.reference(setpoint)
        # the input applied with no plan: the reference input, inside the bounds
        self._rest = np.clip(self.u_ref, self.action_low, self.action_high)

    def _build(self, model: Model, ipopt_options: dict[str, Any]) -> ca.Function:
        symbol = SYMBOLICS[self.options.symbolic]
        scaled = symbol.sym("v", self._nu, self.horizon)
        x0, bound = symbol.sym("x0", self._nx), symbol.sym("bound")
        x_ref, u_ref = symbol.sym("x_ref", self._nx), symbol.sym("u_ref", self._nu)
        parameters = ca.vertcat(x0, bound, x_ref, u_ref, symbol.sym("cost_scale"))
        x, states = x0, []
        for j in range(self.horizon):
            x = model(x, self.action_scale.to_env(scaled[:, j]))
            if x.shape != (self._nx, 1):
                raise ValueError(f"model must return a state of size {self._nx}, got {x.shape}")
            states.append(x)
        cost, constraints = self._objective(states, scaled, parameters)
        nlp = {"x": ca.vec(scaled), "p": parameters, "f": cost, "g": constraints}
        options = self.options.casadi_options(ipopt_options)
        if self.options.hessian == "gauss-newton":
            options["hess_lag"] = self._gauss_newton_hessian(symbol, states, scaled, parameters)
        method = METHODS[self.options.method]
        with _casadi_output_dropped():
            try:
                return ca.nlpsol("mpc", method, nlp, options)
            except RuntimeError as error:
                if not options.get("jit"):
                    raise
                warnings.warn(f"JIT compilation of the MPC failed, running it interpreted: "
                              f"{str(error).splitlines()[0]}", RuntimeWarning, stacklevel=3)
                return ca.nlpsol("mpc", method, nlp, {**options, "jit": False})

    def _objective(self, states: list, scaled: Any, parameters: Any) -> tuple[Any, Any]:
        """The cost and the stacked constraints of the plan `scaled` (inputs, [nu, horizon])
        whose states are `states` (one column per horizon step), for the NLP's parameters."""
        nx, nu = self._nx, self._nu
        bound, x_ref = parameters[nx], parameters[nx + 1:2 * nx + 1]
        u_ref, cost_scale = parameters[2 * nx + 1:2 * nx + 1 + nu], parameters[-1]
        cost, constraints = 0, []
        for j, x in enumerate(states):
            u = self.action_scale.to_env(scaled[:, j])
            cost += self.process.stage_cost(x, u, x_ref, u_ref)
            if self.contraction:
                constraints.append(self.process.lyapunov(x, x_ref) / bound)
        return cost / cost_scale, ca.vertcat(*constraints)

    def _gauss_newton_hessian(self, symbol: Any, states: list, scaled: Any,
                              parameters: Any) -> ca.Function:
        """hess_lag(x, p, lam_f, lam_g) = triu(T' H T) (see the module docstring): H from the
        objective with the states as free symbols, T = d(states, inputs)/d(inputs)."""
        free = symbol.sym("states", self._nx, self.horizon)
        cost, constraints = self._objective([free[:, j] for j in range(self.horizon)],
                                            scaled, parameters)
        lam_f, lam_g = symbol.sym("lam_f"), symbol.sym("lam_g", constraints.numel())
        planned = ca.vertcat(ca.vec(free), ca.vec(scaled))
        lagrangian = lam_f * cost + ca.dot(lam_g, constraints)
        in_plan = ca.Function("lagrangian_hessian", [free, scaled, parameters, lam_f, lam_g],
                              [ca.hessian(lagrangian, planned)[0]])
        inputs = ca.vec(scaled)
        jacobian = ca.vertcat(ca.jacobian(ca.vertcat(*states), inputs),
                              ca.DM.eye(inputs.numel()))
        hessian = ca.mtimes([jacobian.T, in_plan(ca.horzcat(*states), scaled, parameters,
                                                 lam_f, lam_g), jacobian])
        # IPOPT takes the upper triangle, sqpmethod the whole symmetric matrix
        if self.options.method == "ipopt":
            return ca.Function("hess_lag", [inputs, parameters, lam_f, lam_g],
                               [ca.triu(hessian)], ["x", "p", "lam_f", "lam_g"],
                               ["triu_hess_gamma_x_x"])
        return ca.Function("hess_lag", [inputs, parameters, lam_f, lam_g], [hessian],
                           ["x", "p", "lam_f", "lam_g"], ["hess_gamma_x_x"])

    def reset(self) -> None:
        self.plan = None
        self._multipliers = {}
        self.stats = []

    def act(self, observation: np.ndarray) -> np.ndarray:
        x = np.asarray(observation, dtype=np.float64).reshape(self._nx)
        shifted = None if self.plan is None else _shift(self.plan)
        start = time.perf_counter()
        if np.all(np.isfinite(x)):
            status, scaled = self._solve(x, shifted)
            iterations = int(self._solver.stats().get("iter_count", 0))
        else:
            status, scaled, iterations = "Non_Finite_Observation", None, 0
        solve_time = time.perf_counter() - start
        if scaled is not None and self.time_budget is not None and solve_time > self.time_budget:
            status, scaled, self._multipliers = "Time_Budget_Exceeded", None, {}
        self.plan = shifted if scaled is None else self.action_scale.to_env(scaled)
        self.stats.append(SolveStats(solve_time, status, scaled is None, iterations))
        if self.strict and scaled is None:
            raise SolveFailed(status)
        return self._rest.copy() if self.plan is None else self.plan[0].copy()

    def parameters(self, x: np.ndarray) -> np.ndarray:
        """The NLP's parameters for the measured state x: [x, the contraction bound, x_ref,
        u_ref, the cost scale] (see the module docstring)."""
        bound = (max(float(self.process.lyapunov(x, self.x_ref)), self.level_min)
                 if self.contraction else 1.0)
        scale = max(float(self.process.stage_cost(x, self.u_ref, self.x_ref, self.u_ref)),
                    COST_SCALE_MIN)
        return np.concatenate([x, [bound], self.x_ref, self.u_ref, [scale]])

    def _solve(self, x: np.ndarray, guess: np.ndarray | None) -> tuple[str, np.ndarray | None]:
        """Solve from the initial point `guess` (inputs [horizon, nu], default the reference
        input): the solver's status and the scaled plan, None unless it succeeded."""
        if guess is None:
            guess = np.tile(self._rest, (self.horizon, 1))
        start = self.action_scale.to_unit(guess).ravel()
        solution = self._solver(x0=start, p=self.parameters(x), lbx=-1.0, ubx=1.0, ubg=1.0,
                                **self._multipliers)
        stats = self._solver.stats()
        if not stats["success"]:
            self._multipliers = {}
            return str(stats["return_status"]), None
        if self.options.warm_duals:  # shifted by one step, like the plan
            self._multipliers = {
                "lam_x0": _shift(np.asarray(solution["lam_x"]).reshape(self.horizon, -1)).ravel(),
                "lam_g0": _shift(np.asarray(solution["lam_g"]).reshape(self.horizon, -1)).ravel()}
        # the solver may relax bounds by ~1e-8: projected back, applied inputs stay in bounds
        scaled = np.clip(np.asarray(solution["x"]).reshape(self.horizon, self._nu), -1.0, 1.0)
        return str(stats["return_status"]), scaled
