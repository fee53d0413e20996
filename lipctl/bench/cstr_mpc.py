"""Benchmark `cstr_mpc`: process models of the CSTR and Lyapunov MPC on each in closed loop.

Writes models.csv (one row per model and target-noise level), closed_loop.csv (one row per
controller, horizon, start and measurement-noise setting), closed_loop.png and a summary JSON.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from lipctl.bench.report import write_csv
from lipctl.control.cstr_closed_loop import (
    FIRST_PRINCIPLES,
    PUBLISHED_STARTS,
    cstr_closed_loop,
    cstr_mpc,
)
from lipctl.control.cstr_data import generate, save_dataset
from lipctl.control.models import build_model, certify_model, fit, load_model, save_model
from lipctl.envs.cstr import LYAPUNOV_P, STABILITY_LEVEL, TARGET_HALF_WIDTHS, rk4_step


def fit_models(exp: DictConfig, work: Path) -> list[dict]:
    """Fit every model at every target-noise level; rows of models.csv."""
    data = generate(rk4_step, seed=exp.seed, **exp.data)
    save_dataset(data, work / "cstr.npz")
    z_test, _ = data.sequences("test")
    rows = []
    for name in exp.models:
        for noise in exp.noise:
            model = build_model(name, 2, 2, hidden=exp.hidden)
            result = fit(model, data, epochs=exp.epochs, lr=exp.lr, batch_size=exp.batch_size,
                         target_noise_sigma=noise, seed=exp.seed, patience=exp.patience)
            certificate = certify_model(model, torch.from_numpy(z_test[:512]))
            save_model(work / f"{name}-noise{noise}.pt", model, data)
            rows.append({"model": name, "noise_sigma": noise, "test_mse": result.test_mse,
                         "lipschitz_upper": certificate.upper,
                         "lipschitz_lower": certificate.lower,
                         "params": sum(p.numel() for p in model.parameters()),
                         "train_seconds": round(result.seconds, 2)})
            print(f"fit {name} noise {noise}: test MSE {result.test_mse:.5f}, "
                  f"upper {certificate.upper:.3g}, lower {certificate.lower:.3g}", flush=True)
    return rows


def run_controllers(exp: DictConfig, work: Path) -> tuple[list[dict], dict]:
    """Every controller from every start, with and without measurement noise."""
    rows, paths = [], {}
    names = [FIRST_PRINCIPLES, *exp.models]
    for horizon in exp.horizons:
        for name in names if horizon == exp.horizons[0] else [FIRST_PRINCIPLES, "iclrnn"]:
            trained = None if name == FIRST_PRINCIPLES else load_model(work / f"{name}-noise0.0.pt")
            controller = cstr_mpc(trained, horizon=horizon)
            for noisy in (False, True):
                noise = list(exp.measurement_noise_std) if noisy else [0.0, 0.0]
                for start in PUBLISHED_STARTS:
                    trajectory, m = cstr_closed_loop(controller, start, exp.steps,
                                                     obs_noise_std=noise, seed=exp.seed)
                    if horizon == exp.horizons[0] and not noisy:
                        paths[(name, start)] = np.array([i["state"] for i in trajectory.infos])
                    rows.append({"model": name, "horizon": horizon,
                                 "measurement_noise": noisy, "start_CA": start[0],
                                 "start_T": start[1], "reached_step": m.reached_step,
                                 "cost": m.integrated_cost,
                                 "solve_ms_median": m.solve_ms_median,
                                 "solve_ms_p95": m.solve_ms_p95, "failures": m.fallbacks,
                                 "bound_violations": m.bound_violations})
                    print(f"mpc {name} N={horizon} noise={noisy} start {start}: reached "
                          f"{m.reached_step}, {m.solve_ms_median:.1f} ms", flush=True)
    return rows, paths


def _ellipse(matrix: np.ndarray, level: float) -> np.ndarray:
    """Points [2, 200] of the boundary {x' M x = level}."""
    angle = np.linspace(0, 2 * np.pi, 200)
    circle = np.stack([np.cos(angle), np.sin(angle)])
    return np.sqrt(level) * np.linalg.solve(np.linalg.cholesky(matrix).T, circle)


def plot(paths: dict, out: Path) -> None:
    """Closed-loop state paths from every start, one panel per controller."""
    names = list(dict.fromkeys(name for name, _ in paths))
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.4), sharey=True)
    target = _ellipse(np.diag(1 / np.asarray(TARGET_HALF_WIDTHS) ** 2), 1.0)
    region = _ellipse(LYAPUNOV_P, STABILITY_LEVEL)
    for ax, name in zip(np.atleast_1d(axes), names, strict=True):
        ax.plot(*target, "k-", lw=1, label="target")
        ax.plot(*region, "k:", lw=1, label="V = 372")
        for (model, _), states in paths.items():
            if model == name:
                ax.plot(states[:, 0], states[:, 1], ".-", ms=3, lw=1)
        ax.set_title(f"{name} MPC (N=2)", fontsize=9)
        ax.set_xlabel("CA - CAs")
    np.atleast_1d(axes)[0].set_ylabel("T - Ts")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def run_benchmark(exp: DictConfig, out: Path, work: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model_rows = fit_models(exp, work)
    write_csv(out / "models.csv", model_rows)
    loop_rows, paths = run_controllers(exp, work)
    write_csv(out / "closed_loop.csv", loop_rows)
    plot(paths, out / "closed_loop.png")
    summary = {"settings": OmegaConf.to_container(exp, resolve=True),
               "machine": {"processor": platform.processor() or platform.machine(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "wall_seconds": round(time.perf_counter() - started, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
