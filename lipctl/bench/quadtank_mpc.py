"""Benchmark `quadtank_mpc`: MPC of the quadruple tank on fitted process models (ICLRNN, RNN)
against first-principles MPC, through setpoint changes between two operating points.

For each setting (minimum / non-minimum phase): open-loop data from the plant's ODE, models
fitted per seed, then closed loops from the "low" operating point through the schedule of
setpoints, without and with measurement noise. Per run: steps to settle after each change (the
state enters the new setpoint's target ellipse and stays until the next change), tracking cost,
input-bound and state-box violations, solve times and fallbacks. Each run writes
runs/<setting>/<controller>-seed<k>[-noisy].json (metrics and the downsampled level trajectory);
models.csv, closed_loop.csv and closed_loop.png are rebuilt from those files (`replot=true`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from lipctl.bench.kit import write_bench_record
from lipctl.config import ConfigError, require_number, require_seeds
from lipctl.control.models import (
    MODELS,
    TrainedModel,
    build_model,
    fit_and_save,
    load_model,
)
from lipctl.control.process_data import generate
from lipctl.control.process_metrics import true_states
from lipctl.control.process_mpc import FIRST_PRINCIPLES, mpc_episode, process_mpc
from lipctl.envs.files import write_csv, write_json
from lipctl.envs.process import Process
from lipctl.envs.quadtank import SETTINGS, quadtank_process


def validate(exp: DictConfig) -> None:
    """The experiment's settings, before any work starts."""
    if unknown := [s for s in exp.settings if s not in SETTINGS]:
        raise ConfigError("experiment.settings", f"unknown setting(s) {unknown}; choose from "
                                                 f"{', '.join(SETTINGS)}")
    if unknown := [m for m in exp.models if m not in MODELS]:
        raise ConfigError("experiment.models", f"unknown model(s) {unknown}; choose from "
                                               f"{', '.join(MODELS)}")
    for key in ("hidden", "epochs", "batch_size", "steps"):
        require_number(exp, key, 1, integer=True)
    require_number(exp, "patience", 1, integer=True, allow_none=True)
    require_number(exp, "lr", 0, exclusive=True)
    require_seeds(exp.seeds)
    for setting in exp.settings:
        require_number(exp, f"horizon.{setting}", 1, integer=True)
    points = quadtank_process().operating_points
    for step, setpoint in exp.schedule.items():
        if not isinstance(step, int) or not 0 <= step < exp.steps or setpoint not in points:
            raise ConfigError("experiment.schedule", f"needs steps in [0, {exp.steps}) mapped to "
                                                     f"{', '.join(points)}, got {step}: {setpoint}")
    if 0 not in exp.schedule:
        raise ConfigError("experiment.schedule", "must set the setpoint of step 0")


def _model_file(work: Path, setting: str, model: str, seed: int) -> Path:
    return work / setting / f"{model}-seed{seed}.pt"


def fit_models(exp: DictConfig, process: Process, setting: str, work: Path) -> list[dict]:
    """Fit (or reuse) every model x seed of one setting; their rows for models.csv."""
    data = generate(process, seed=exp.data_seed, **OmegaConf.to_container(exp.data))
    rows = []
    for model in exp.models:
        for seed in exp.seeds:
            path = _model_file(work, setting, model, seed)
            if not path.is_file():
                torch.manual_seed(seed)
                net = build_model(model, process.state_size, process.input_size,
                                  hidden=exp.hidden)
                result, _ = fit_and_save(path, net, data, epochs=exp.epochs, lr=exp.lr,
                                         batch_size=exp.batch_size, seed=seed,
                                         patience=exp.patience)
                print(f"{setting} {model} seed {seed}: test MSE {result.test_mse:.2e} "
                      f"({result.seconds:.0f} s)", flush=True)
            trained = load_model(path, data, process)
            rows.append({"setting": setting, "model": model, "seed": seed,
                         "test_mse_scaled": _test_mse(trained, data),
                         "lipschitz_upper": trained.certificate.upper,
                         "lipschitz_lower": trained.certificate.lower,
                         "train_rows": len(data.rows("train"))})
    return rows


def _test_mse(trained: TrainedModel, data) -> float:
    """Mean squared one-period prediction error on the test rows, in scaled state units."""
    rows = data.rows("test")
    predicted = trained.predict(data.x0[rows], data.u[rows])
    error = (predicted - data.targets[rows]) / data.state_scaler.std
    return float(np.mean(error**2))


def settling_steps(process: Process, states: np.ndarray, schedule: dict[int, str],
                   steps: int) -> dict[int, int | None]:
    """Per change step k: steps from k until the state enters the target around the new
    setpoint and stays there until the next change (None if it never settles)."""
    changes = sorted(schedule)
    result = {}
    for k, end in zip(changes, [*changes[1:], steps], strict=True):
        x_ref = process.reference(schedule[k])[0]
        inside = process.in_target(states[k + 1:end + 1], x_ref)
        outside = np.flatnonzero(~inside)
        if outside.size == 0:
            result[k] = 0
        elif outside[-1] == len(inside) - 1:
            result[k] = None
        else:
            result[k] = int(outside[-1]) + 2  # states[k + 1 + i] is the state after step k + i
    return result


def run_closed_loop(exp: DictConfig, process: Process, setting: str, controller: str,
                    trained: TrainedModel | None, seed: int, noisy: bool) -> dict:
    """One closed loop through the schedule; its record (metrics and levels)."""
    schedule = {int(k): v for k, v in exp.schedule.items()}
    mpc = process_mpc(process, trained, exp.horizon[setting], setpoint=schedule[0])
    start = process.reference(schedule[0])[0]
    noise = list(exp.measurement_noise_std) if noisy else None
    trajectory, metrics = mpc_episode(mpc, start, exp.steps, obs_noise_std=noise, seed=seed,
                                      schedule=schedule, plant_kwargs={"setting": setting})
    states = true_states(trajectory)
    settle = settling_steps(process, states, schedule, exp.steps)
    return {
        "setting": setting, "controller": controller, "seed": seed, "noisy": noisy,
        "horizon": exp.horizon[setting], "steps": exp.steps, "schedule": schedule,
        "settling_steps": {str(k): v for k, v in settle.items()},
        "settled_every_change": all(v is not None for v in settle.values()),
        "integrated_cost": metrics.integrated_cost,
        "input_bound_violations": metrics.bound_violations,
        "state_box_violations": metrics.state_violations,
        "solve_ms_median": metrics.solve_ms_median, "solve_ms_p95": metrics.solve_ms_p95,
        "fallbacks": metrics.fallbacks, "status_counts": metrics.status_counts,
        "levels": np.round(states, 3).tolist(),
        "inputs": np.round(trajectory.actions, 3).tolist(),
    }


def run_benchmark(exp: DictConfig, out: Path, work: Path) -> None:
    """Fit, run every closed loop (resuming from existing run files), then report."""
    started = time.perf_counter()
    runs = out / "runs"
    model_rows = []
    for setting in exp.settings:
        process = quadtank_process(setting)
        model_rows += fit_models(exp, process, setting, work)
        controllers = {FIRST_PRINCIPLES: {seed: None for seed in exp.seeds[:1]}}
        controllers |= {m: {seed: load_model(_model_file(work, setting, m, seed))
                            for seed in exp.seeds} for m in exp.models}
        for controller, by_seed in controllers.items():
            for seed, trained in by_seed.items():
                for noisy in (False, True):
                    path = runs / setting / f"{controller}-seed{seed}{'-noisy' * noisy}.json"
                    if path.is_file():
                        continue
                    record = run_closed_loop(exp, process, setting, controller, trained, seed,
                                             noisy)
                    write_json(path, record, indent=1)
                    print(f"{path.relative_to(out)}: settling {record['settling_steps']}, "
                          f"solve {record['solve_ms_median']:.1f} ms", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "models.csv", model_rows)
    write_bench_record(out / "bench.json", exp, time.perf_counter() - started)
    report(exp, out)


def _records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/*.json"))]


def report(exp: DictConfig, out: Path) -> None:
    """closed_loop.csv (one row per setting x controller x noise, medians and ranges over
    seeds) and closed_loop.png, from the run files."""
    records = _records(out)
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["setting"], r["controller"], r["noisy"]), []).append(r)
    rows = []
    for (setting, controller, noisy), group in groups.items():
        changes = list(group[0]["settling_steps"])
        row = {"setting": setting, "controller": controller, "measurement_noise": noisy,
               "seeds": len(group),
               "settled_every_change": sum(r["settled_every_change"] for r in group)}
        for k in changes:
            values = [r["settling_steps"][k] for r in group]
            done = [v for v in values if v is not None]
            row[f"settle_steps_after_{k}_median"] = float(np.median(done)) if done else None
            row[f"settle_steps_after_{k}_max"] = max(done) if len(done) == len(values) else None
        for key in ("integrated_cost", "solve_ms_median", "solve_ms_p95"):
            row[f"{key}_median"] = round(float(np.median([r[key] for r in group])), 3)
        for key in ("input_bound_violations", "state_box_violations", "fallbacks"):
            row[key] = sum(r[key] for r in group)
        rows.append(row)
    write_csv(out / "closed_loop.csv", rows)
    plot(records, out / "closed_loop.png")


def plot(records: list[dict], path: Path) -> None:
    """h1 and h2 over time per setting, first seed, noise-free, one line per controller."""
    settings = sorted({r["setting"] for r in records})
    fig, axes = plt.subplots(2, len(settings), figsize=(5.5 * len(settings), 5.5),
                             squeeze=False, sharex=True)
    for col, setting in enumerate(settings):
        process = quadtank_process(setting)
        chosen = [r for r in records if r["setting"] == setting and not r["noisy"]
                  and r["seed"] == min(q["seed"] for q in records if q["controller"]
                                       == r["controller"])]
        for r in chosen:
            levels = np.asarray(r["levels"])
            minutes = np.arange(len(levels)) * process.sampling_period / 60
            for row in range(2):
                axes[row, col].plot(minutes, levels[:, row], lw=1.2, label=r["controller"])
        schedule = {int(k): v for k, v in chosen[0]["schedule"].items()}
        steps = chosen[0]["steps"]
        changes = sorted(schedule)
        for row in range(2):
            for k, end in zip(changes, [*changes[1:], steps], strict=True):
                target = process.reference(schedule[k])[0][row]
                width = process.target_half_widths[row]
                minutes = np.array([k, end]) * process.sampling_period / 60
                axes[row, col].fill_between(minutes, target - width, target + width,
                                            color="0.85", lw=0)
            axes[row, col].set_ylabel(f"{process.state_names[row]} (cm)")
        axes[0, col].set_title(f"{setting} phase", fontsize=10)
        axes[1, col].set_xlabel("time (min)")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Quadruple tank: MPC through setpoint changes (grey: target bands)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
