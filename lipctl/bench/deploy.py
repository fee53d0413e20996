"""Deployment benchmark: the CSTR served over OPC UA by `lipctl plant serve` in its own process,
controlled on the wall clock through the controller runtime.

Scenarios, run in one session on one machine (repeats alternate the order):
- first_principles: Lyapunov MPC on the plant's own ODE, no faults;
- iclrnn: Lyapunov MPC on a fitted ICLRNN process model, through the Lipschitz gate, no faults;
- iclrnn_faults: the same with a solver failure, a slow solve, three dropped measurements in
  a row, a NaN measurement, a spike and a restart of the plant server process; fallback "hold".
Each run writes its step log (the first repeat's in out/, the others' in work/); out/<output>
(summary.json) holds every run's runtime summary and the medians over repeats; `closed_loop.png`
shows the first repeat of each scenario (`report` redraws it from the step logs in out/ and prints
the medians).
"""

from __future__ import annotations

import json
import select
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from lipctl.agents.saved import load_exportable
from lipctl.bench.kit import machine_info
from lipctl.config import ConfigError, require_number
from lipctl.control.faults import FaultyController, FaultyPlant
from lipctl.control.models import build_model, fit_and_save
from lipctl.control.opcua_plant import OpcUaPlant, quiet_asyncua
from lipctl.control.process_data import generate
from lipctl.control.process_mpc import process_mpc
from lipctl.control.runtime import Runtime
from lipctl.envs.cstr import CSTR
from lipctl.envs.files import write_json

SCENARIOS = ("first_principles", "iclrnn", "iclrnn_faults")


@dataclass(frozen=True)
class Settings:
    period_s: float = 0.2  # wall seconds per plant step (one 0.005 h sampling period)
    steps: int = 80  # the restarted server takes ~5 s (25 steps) to serve again here
    repeats: int = 3
    start: tuple[float, float] = (1.5, -70.0)
    horizon: int = 2
    lipschitz_max: float = 10.0  # gate for the ICLRNN-MPC
    stale_after_periods: float = 2.5
    measurement_range: tuple[tuple[float, float], tuple[float, float]] = ((-5.0, -200.0),
                                                                         (5.0, 200.0))
    # faults of iclrnn_faults, by step (the controller's faults come before the first measurement
    # fault, so its call k is step k)
    solver_failure_step: int = 3
    slow_solve_step: int = 5
    slow_solve_periods: float = 1.5
    drop_steps: tuple[int, ...] = (7, 8, 9)  # stale once older than stale_after_periods
    nan_step: int = 11
    spike_step: int = 13
    restart_after_step: int = 16
    # the ICLRNN, fitted as in the cstr_mpc benchmark (cpu preset)
    hidden: int = 32
    epochs: int = 100
    patience: int = 20
    seed: int = 0


class PlantProcess:
    """`lipctl plant serve` in a subprocess, started, stopped and restarted on one port."""

    def __init__(self, period_s: float, stderr_path: Path) -> None:
        self.period_s, self.stderr_path, self.port = period_s, stderr_path, 0
        self.process: subprocess.Popen | None = None

    def start(self, x0: Sequence[float], timeout_s: float = 60.0) -> str:
        """Serve from deviation state x0 (on the previous port, if any); return the url."""
        x0_list = ",".join(repr(float(v)) for v in x0)
        command = [sys.executable, "-m", "lipctl", "plant", "serve", f"port={self.port}",
                   f"period_s={self.period_s}", f"x0=[{x0_list}]"]
        with open(self.stderr_path, "a") as stderr:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr,
                                            text=True)
        words = self._line(timeout_s).split()
        if words[:1] != ["serving"]:
            raise RuntimeError(f"lipctl plant serve did not start: {' '.join(words)!r} "
                               f"(see {self.stderr_path})")
        url = words[1]
        self.port = int(url.rsplit(":", 1)[1].split("/")[0])
        return url

    def _line(self, timeout_s: float) -> str:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout_s)
        if not ready:
            raise RuntimeError(f"no output from lipctl plant serve within {timeout_s} s")
        return self.process.stdout.readline().strip()

    def stop(self, timeout_s: float = 30.0) -> np.ndarray:
        """Stop the server (SIGTERM) and return the last state it reported."""
        self.process.terminate()
        out, _ = self.process.communicate(timeout=timeout_s)
        words = out.split()
        if words[:2] != ["stopped", "at"]:
            raise RuntimeError(f"unexpected output of lipctl plant serve: {out!r}")
        return np.array(words[2:4], dtype=np.float64)

    def kill(self) -> None:
        """Kill the server if it still runs (cleanup after an error)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def fit_iclrnn(s: Settings, path: Path) -> Path:
    """The ICLRNN of the cstr_mpc benchmark's cpu preset at `path` (fitted once, then reused)."""
    if path.is_file():
        return path
    data = generate(CSTR, states_per_axis=15, inputs_per_axis=6, chains=64, periods=40,
                    seed=s.seed)
    model = build_model("iclrnn", CSTR.state_size, CSTR.input_size, hidden=s.hidden)
    result, _ = fit_and_save(path, model, data, epochs=s.epochs, lr=0.01, batch_size=128,
                             seed=s.seed, patience=s.patience)
    print(f"fitted ICLRNN: test MSE {result.test_mse:.2e} in {result.seconds:.0f} s", flush=True)
    return path


def reached_step(records: list[dict[str, Any]]) -> int | None:
    """First step from which every valid measurement (no fallback) is in the target region."""
    valid = [(r["step"], r["measurement"]) for r in records if r["fallback"] is None]
    inside = [bool(CSTR.in_target(np.asarray(m))) for _, m in valid]
    if not inside or not inside[-1]:
        return None
    last_outside = max((i for i, ok in enumerate(inside) if not ok), default=-1)
    return valid[last_outside + 1][0]


def run_scenario(name: str, s: Settings, model_path: Path, log_path: Path,
                 server_log: Path) -> dict[str, Any]:
    """One run of scenario `name`; the runtime summary plus reaching and reconnect figures."""
    faulty = name == "iclrnn_faults"
    server = PlantProcess(s.period_s, server_log)
    network = None if name == "first_principles" else load_exportable(model_path)
    certificate = None if network is None else network.certificate
    controller = process_mpc(CSTR, None if network is None else network.trained, s.horizon,
                             strict=True)
    restart: dict[str, Any] = {}
    try:
        url = server.start(s.start)
        client = OpcUaPlant(url, CSTR, timeout_s=0.5, reconnect_attempts=0)
        plant = client
        if faulty:
            controller = FaultyController(controller, fail_steps={s.solver_failure_step},
                                          slow_steps={s.slow_solve_step},
                                          slow_s=s.slow_solve_periods * s.period_s)
            plant = FaultyPlant(client, nan_steps={s.nan_step}, spike_steps={s.spike_step},
                                drop_steps=set(s.drop_steps))
        log_path.unlink(missing_ok=True)
        runtime = Runtime(controller, plant, s.period_s, s.steps, log_path,
                          initial_action=np.zeros(2),
                          lipschitz_max=None if certificate is None else s.lipschitz_max,
                          certificate=certificate, measurement_range=s.measurement_range,
                          stale_after_s=s.stale_after_periods * s.period_s, realtime=True)
        finished = threading.Event()

        def restart_server() -> None:
            """Stop the server once step `restart_after_step` is logged; serve again from the
            state it stopped at."""
            while len(runtime.records) <= s.restart_after_step:
                if finished.wait(0.005):
                    return
            began = time.monotonic()
            restart["state"] = server.stop().tolist()
            server.start(restart["state"])
            restart["outage_s"] = time.monotonic() - began

        restarter = threading.Thread(target=restart_server, daemon=True)
        if faulty:
            restarter.start()
        try:
            summary = runtime.run()
        finally:
            finished.set()
        if faulty:
            restarter.join(timeout=60)
        client.close()
    finally:
        server.kill()
    summary |= {"scenario": name, "reached_step": reached_step(runtime.records),
                "reconnects": client.reconnects,
                "certificate": None if certificate is None else certificate.to_dict()}
    if faulty:
        summary["server_restart"] = restart
    return summary


def _median(runs: list[dict[str, Any]], *keys: str) -> float | None:
    values = []
    for run in runs:
        value = run
        for key in keys:
            value = value[key]
        values.append(value)
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over repeats of the figures the README reports (seconds)."""
    causes = sorted({c for run in runs for c in run["fallbacks_by_cause"]})
    return {
        "steps": _median(runs, "steps"),
        "deadline_misses": _median(runs, "deadline_misses"),
        "fallbacks": _median(runs, "fallbacks"),
        "fallbacks_by_cause": {c: statistics.median(r["fallbacks_by_cause"].get(c, 0)
                                                    for r in runs) for c in causes},
        "reached_step": _median(runs, "reached_step"),
        "reached_in_every_repeat": all(r["reached_step"] is not None for r in runs),
        **{f"{what}_{p}": _median(runs, what, p) for what in ("period", "solve_time")
           for p in ("p50", "p95", "max")},
    }


CAUSE_COLOURS = {"solver_failure": "tab:red", "deadline_miss": "tab:orange",
                 "non_finite_measurement": "tab:purple", "out_of_range": "tab:brown",
                 "stale_measurement": "tab:pink", "read_error": "tab:gray"}
SCENARIO_COLOURS = {"first_principles": "tab:blue", "iclrnn": "tab:green",
                    "iclrnn_faults": "black"}


def _mark_faults(axes: np.ndarray, records: list[dict[str, Any]]) -> None:
    """A vertical line at each fallback step, coloured by cause; read errors (the server
    outage) as one shaded span."""
    for cause, colour in CAUSE_COLOURS.items():
        at = [r["time"] for r in records if r["fallback"] == cause]
        if not at:
            continue
        for ax in axes.ravel():
            label = cause if ax is axes[0, 0] else None
            if cause == "read_error":
                ax.axvspan(min(at), max(at), color=colour, alpha=0.25,
                           label=f"{cause} (server restart)" if label else None)
                continue
            for i, when in enumerate(at):
                ax.axvline(when, color=colour, lw=0.8, alpha=0.7, label=label if i == 0 else None)


def plot(logs: dict[str, Path], out: Path) -> None:
    """CA, T and the two inputs over wall time for one run of each scenario; the fault run's
    fallback steps marked by cause."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    labels = (("CA - CAs (kmol/m3)", "T - Ts (K)"), ("CA0 - CA0s (kmol/m3)", "Q - Qs (kJ/h)"))
    for name, path in logs.items():
        records = [json.loads(line) for line in path.read_text().splitlines()]
        t = np.array([r["time"] for r in records])
        ok = np.array([r["fallback"] is None for r in records])
        x = np.array([r["measurement"] if f else [np.nan, np.nan]
                      for r, f in zip(records, ok, strict=True)], dtype=np.float64)
        u = np.array([r["action"] for r in records], dtype=np.float64)
        for col in range(2):
            colour = SCENARIO_COLOURS[name]
            axes[0, col].plot(t, x[:, col], ".-", ms=3, lw=1, color=colour, label=name)
            axes[1, col].step(t, u[:, col], where="post", lw=1, color=colour)
        if name.endswith("faults"):
            _mark_faults(axes, records)
    for col in range(2):
        band = (0.1, 3.0)[col]
        axes[0, col].axhspan(-band, band, color="green", alpha=0.12)
        for row in range(2):
            axes[row, col].set_ylabel(labels[row][col])
        axes[1, col].set_xlabel("wall time (s)")
    axes[0, 0].legend(fontsize=7, ncol=2)
    fig.suptitle("CSTR over OPC UA (lipctl plant serve), Lyapunov MPC through the runtime; "
                 "green: target band", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def validate(exp: DictConfig) -> None:
    require_number(exp, "period_s", 0, exclusive=True)
    require_number(exp, "steps", 1, integer=True)
    require_number(exp, "repeats", 1, integer=True)
    if exp.steps <= Settings.restart_after_step + 5:
        raise ConfigError("steps", f"must be > {Settings.restart_after_step + 5} (the server "
                                   f"restarts after step {Settings.restart_after_step})")
    if exp.model is not None and not Path(exp.model).is_file():
        raise ConfigError("model", f"no such file: {exp.model}")


def run_benchmark(exp: DictConfig, out: Path, work: Path) -> None:
    """Run every scenario `repeats` times; write out/<output>, the step logs and the figure."""
    s = Settings(period_s=exp.period_s, steps=exp.steps, repeats=exp.repeats)
    quiet_asyncua()
    torch.set_num_threads(1)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model_path = Path(exp.model) if exp.model is not None else fit_iclrnn(s, work / "iclrnn.pt")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SCENARIOS}
    out.mkdir(parents=True, exist_ok=True)
    for repeat in range(s.repeats):
        order = SCENARIOS if repeat % 2 == 0 else tuple(reversed(SCENARIOS))
        for name in order:
            log = step_log(out, name) if repeat == 0 else work / f"steps_{name}_{repeat}.jsonl"
            summary = run_scenario(name, s, model_path, log, work / "server.log")
            runs[name].append(summary)
            causes = summary["fallbacks_by_cause"]
            print(f"repeat {repeat + 1}/{s.repeats} {name}: reached step "
                  f"{summary['reached_step']}, fallbacks {causes or 0}, solve p50 "
                  f"{1e3 * summary['solve_time']['p50']:.1f} ms", flush=True)
    write_json(out / exp.output, {
        "settings": asdict(s), "model": str(model_path),
        "medians": {name: medians(r) for name, r in runs.items()}, "runs": runs,
        "machine": machine_info(), "wall_seconds": round(time.perf_counter() - started, 1)})
    report(exp, out)


def step_log(out: Path, scenario: str) -> Path:
    """The step log of a scenario's first repeat."""
    return out / f"steps_{scenario}.jsonl"


def report(exp: DictConfig, out: Path) -> None:
    """closed_loop.png from the step logs in out/, and the medians of out/<output> printed."""
    plot({name: step_log(out, name) for name in SCENARIOS}, out / "closed_loop.png")
    for name, m in json.loads((out / exp.output).read_text())["medians"].items():
        print(f"{name}: reached step {m['reached_step']}, fallbacks {m['fallbacks_by_cause'] or 0}"
              f", deadline misses {m['deadline_misses']}, solve p50 / p95 "
              f"{1e3 * m['solve_time_p50']:.1f} / {1e3 * m['solve_time_p95']:.1f} ms")
