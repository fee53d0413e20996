"""Benchmark `cstr_mpc`: process models of the CSTR, their robustness to noisy training targets,
and Lyapunov MPC on them against first-principles MPC.

Stages (`experiment.stages`, in this order), each writing under the output folder:
- `models`: every model x target-noise sigma x seed fitted on one generated dataset, one process
  per job with one torch thread; one JSON per run in runs/<model>/sigma<s>-seed<k>.json (clean
  test MSE, final noisy train MSE, certified and sampled Lipschitz bounds, the smallest
  constrained weight, a downsampled history). A run whose file exists, with a model file that
  loads and belongs to the CSTR, is not fitted again (nor is a kept dataset generated again).
  models.csv (mean and std over seeds) and robustness.png are rebuilt from runs/ alone
  (`report`, also `lipctl bench ... replot=true`).
- `closed_loop`: MPC on each model (noise 0, first seed; fitted first where its model file is
  missing, also without the `models` stage) and on the plant's own ODE from the four
  published starts, with and without measurement noise: closed_loop.csv, closed_loop.png.
- `solve_time`: the MPCs of `solve_time_models` built with every `solver_options` entry, side by
  side from the same starts: solve_time.csv and `solve_time_file` (JSON), with ratios to
  first-principles MPC with the same options, with the closed-loop stage's options and with its
  fastest options.
- `budget`: closed loops of each `budget_builds` entry under a wall-clock budget per step (a
  solve not finished inside it fails and the fallback applies): budget.csv (steps solved within
  the budget, whether and when the target was reached).
summary.json holds the settings, the machine and the wall time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from lipctl.bench.kit import machine_info, write_bench_record
from lipctl.config import ConfigError, require_number
from lipctl.control.models import (
    MODELS,
    build_model,
    fit_and_save,
    load_model,
    mse_in,
)
from lipctl.control.mpc import SolverOptions
from lipctl.control.process_data import (
    SCALERS,
    check_origin,
    fit_state_scaler,
    generate,
    load_dataset,
    save_dataset,
)
from lipctl.control.process_mpc import FIRST_PRINCIPLES, mpc_episode, process_mpc
from lipctl.envs.cstr import (
    CSTR,
    LYAPUNOV_P,
    PUBLISHED_STARTS,
    STABILITY_LEVEL,
    TARGET_HALF_WIDTHS,
)
from lipctl.envs.files import read_csv, write_csv, write_json

STAGES = ("models", "closed_loop", "solve_time", "budget")
HISTORY_ROWS = 50  # history rows kept per run file


def validate(exp: DictConfig) -> None:
    """The experiment's settings, before any work starts."""
    if not exp.stages or any(stage not in STAGES for stage in exp.stages):
        raise ConfigError("experiment.stages", f"must be a non-empty list of {', '.join(STAGES)}, "
                                               f"got {list(exp.stages)}")
    if unknown := [m for m in exp.models if m not in MODELS]:
        raise ConfigError("experiment.models", f"unknown model(s) {unknown}; choose from "
                                               f"{', '.join(MODELS)}")
    for name, extra in (exp.extra_models or {}).items():
        if extra.get("name") not in MODELS or "hidden" not in extra:
            raise ConfigError(f"experiment.extra_models.{name}",
                              f"needs a model name ({', '.join(MODELS)}) and a hidden size")
    for key in ("hidden", "layers", "epochs", "batch_size", "jobs", "steps", "solve_time_steps"):
        require_number(exp, key, 1, integer=True)
    require_number(exp, "patience", 1, integer=True, allow_none=True)
    require_number(exp, "lr", 0, exclusive=True)
    if exp.data.get("scaler", "standard") not in SCALERS:
        raise ConfigError("experiment.data.scaler", f"must be one of {', '.join(SCALERS)}, got "
                                                    f"{exp.data.scaler!r}")
    for key, values, minimum in (("noise", exp.noise, 0), ("seeds", exp.seeds, 0),
                                 ("horizons", exp.horizons, 1), ("budget_ms", exp.budget_ms, 0)):
        if not values or any(isinstance(v, bool) or not v >= minimum for v in values):
            raise ConfigError(f"experiment.{key}", f"must be a non-empty list of numbers >= "
                                                   f"{minimum}, got {list(values)}")
    builds = {"experiment.solver": exp.solver,
              **{f"experiment.budget_builds.{k}": v for k, v in exp.budget_builds.items()}}
    for key, build in builds.items():
        for model, option in build.items():
            if option not in exp.solver_options:
                raise ConfigError(f"{key}.{model}", f"must name a solver_options entry "
                                                    f"({', '.join(exp.solver_options)})")
        if "default" not in build:
            raise ConfigError(key, "needs a default entry")
    if FIRST_PRINCIPLES not in exp.solve_time_models:
        raise ConfigError("experiment.solve_time_models",
                          f"must include {FIRST_PRINCIPLES} (the ratios are to it)")
    for name, options in exp.solver_options.items():
        try:
            SolverOptions(**OmegaConf.to_container(options))
        except (TypeError, ValueError) as error:
            raise ConfigError(f"experiment.solver_options.{name}", str(error)) from None


def run_name(model: str, sigma: float, seed: int) -> str:
    return f"{model}/sigma{sigma}-seed{seed}"


def model_path(work: Path, model: str, sigma: float, seed: int) -> Path:
    return work / "models" / f"{model}-sigma{sigma}-seed{seed}.pt"


def _architecture(exp: DictConfig, model: str) -> tuple[str, dict]:
    """(registered model name, hyper-parameters) of a model of this experiment: one of
    `models` with the experiment's hidden and layers, or an `extra_models` entry."""
    extras = exp.extra_models or {}
    if model not in extras:
        return model, {"hidden": exp.hidden, "layers": exp.layers}
    extra = OmegaConf.to_container(extras[model])
    return extra.pop("name"), extra


def _mpc_runs(exp: DictConfig) -> list[tuple[str, float, int]]:
    """(model, sigma, seed) of the models the MPC stages plan on: every model at sigma 0 and the
    first seed."""
    return [(m, 0.0, int(exp.seeds[0])) for m in [*exp.models, *(exp.extra_models or {})]]


def _all_runs(exp: DictConfig) -> list[tuple[str, float, int]]:
    """(model, sigma, seed) of every fit: the sweep and each extra model at sigma 0 and the
    first seed, the models the MPC stages use first."""
    sweep = [(m, float(s), int(k)) for m in exp.models for s in exp.noise for k in exp.seeds]
    first = _mpc_runs(exp)
    return first + [run for run in sweep if run not in first]


def fit_run(exp: dict, model: str, sigma: float, seed: int, data_path: str, out: str,
            work: str) -> dict:
    """Fit one model (in a worker process) and write its run file and model file."""
    torch.set_num_threads(1)
    exp = OmegaConf.create(exp)
    data = load_dataset(data_path)
    torch.manual_seed(seed)
    kind, hparams = _architecture(exp, model)
    net = build_model(kind, len(data.state_names), len(data.input_names), **hparams)
    result, certificate = fit_and_save(model_path(Path(work), model, sigma, seed), net, data,
                                       epochs=exp.epochs, lr=exp.lr, batch_size=exp.batch_size,
                                       target_noise_sigma=sigma, seed=seed,
                                       patience=exp.patience)
    train = data.rows("train")
    in_units = {f"test_mse_{kind}": mse_in(net, data, "test", fit_state_scaler(
        data.x0[train], data.targets[train], kind)) for kind in SCALERS}
    constrained = getattr(net, "constrained", None)
    every = max(1, len(result.history) // HISTORY_ROWS)
    record = {
        "model": model, "kind": kind, "noise_sigma": sigma, "seed": seed,
        "layers": int(hparams.get("layers", 1)), "hidden": int(hparams["hidden"]),
        "epochs": len(result.history), "params": sum(p.numel() for p in net.parameters()),
        "test_mse": result.test_mse, **in_units, "train_mse": result.history[-1]["train_mse"],
        "val_mse": result.history[-1]["val_mse"], "best_epoch": result.best_epoch,
        "lipschitz_upper": certificate.upper, "lipschitz_lower": certificate.lower,
        "min_constrained_weight": (min(float(w.detach().min()) for w in constrained())
                                   if constrained else None),
        "train_seconds": round(result.seconds, 1),
        "history": result.history[::every] + ([result.history[-1]]
                                              if (len(result.history) - 1) % every else []),
    }
    path = Path(out) / "runs" / f"{run_name(model, sigma, seed)}.json"
    write_json(path, record, indent=1)
    return record


def _usable(path: Path, load: Callable[[Path], Any]) -> bool:
    """Whether the file at `path` loads and belongs to the CSTR as this lipctl names it (files
    kept from an earlier run may be of an earlier format or name); says why not."""
    if not path.is_file():
        return False
    try:
        check_origin(load(path), CSTR, str(path), "belongs to")
    except ValueError as error:
        print(f"{path} is not used: {str(error).splitlines()[0]}", flush=True)
        return False
    return True


def fit_models(exp: DictConfig, out: Path, work: Path,
               runs: list[tuple[str, float, int]] | None = None) -> None:
    """Each of `runs` (default: every model x sigma x seed) whose run file or usable model file
    is missing, `exp.jobs` processes at once; the dataset is generated again unless the kept one
    is usable (one file per scaler, so a kept dataset is never read in the other's units)."""
    data_path = work / f"cstr-{exp.data.get('scaler', 'standard')}.npz"
    if not _usable(data_path, load_dataset):
        save_dataset(generate(CSTR, seed=exp.data_seed, **OmegaConf.to_container(exp.data)),
                     data_path)
    data = load_dataset(data_path)
    print(f"data: {len(data.x0)} rows ({len(data.rows('train'))} train, "
          f"{len(data.rows('val'))} val, {len(data.rows('test'))} test)", flush=True)
    runs = _all_runs(exp) if runs is None else runs
    todo = [r for r in runs if not ((out / "runs" / f"{run_name(*r)}.json").is_file()
                                    and _usable(model_path(work, *r), load_model))]
    print(f"models: {len(runs) - len(todo)} of {len(runs)} runs already done", flush=True)
    settings = OmegaConf.to_container(exp, resolve=True)
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=exp.jobs) as pool:
        futures = [pool.submit(fit_run, settings, *r, str(data_path), str(out), str(work))
                   for r in todo]
        for done, future in enumerate(as_completed(futures), 1):
            r = future.result()
            print(f"[{done}/{len(todo)}, {time.perf_counter() - started:.0f} s] {r['model']} "
                  f"sigma {r['noise_sigma']} seed {r['seed']}: test MSE {r['test_mse']:.2e}, "
                  f"train MSE {r['train_mse']:.2e}, upper {r['lipschitz_upper']:.3g}, "
                  f"{r['train_seconds']:.0f} s", flush=True)


def _runs(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/*.json"))]


def _std(values: np.ndarray) -> float:
    """Sample standard deviation (NaN for one value)."""
    return float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def summarize(runs: Iterable[dict]) -> list[dict]:
    """models.csv rows: per model and sigma, mean and std (ddof 1) over seeds of the clean
    test MSE and final noisy train MSE; medians of the certificates and fit times."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["model"], run["noise_sigma"]), []).append(run)
    rows = []
    for (model, sigma), group in sorted(groups.items()):
        test = np.array([r["test_mse"] for r in group])
        train = np.array([r["train_mse"] for r in group])
        units = {}  # the test MSE in each scaler's units (NaN for runs that did not record it)
        for kind in SCALERS:
            values = np.array([r.get(f"test_mse_{kind}", np.nan) for r in group])
            units |= {f"test_mse_{kind}_mean": float(values.mean()),
                      f"test_mse_{kind}_std": _std(values)}
        rows.append({
            "model": model, "layers": group[0]["layers"], "hidden": group[0]["hidden"],
            "epochs": group[0]["epochs"], "noise_sigma": sigma, "seeds": len(group),
            "test_mse_mean": float(test.mean()), "test_mse_std": _std(test), **units,
            "train_mse_mean": float(train.mean()), "train_mse_std": _std(train),
            "lipschitz_upper": float(np.median([r["lipschitz_upper"] for r in group])),
            "lipschitz_lower": float(np.median([r["lipschitz_lower"] for r in group])),
            "train_seconds": float(np.median([r["train_seconds"] for r in group])),
        })
    return rows


def plot_robustness(rows: list[dict], path: Path) -> None:
    """Clean test MSE against the training-target noise, mean +- std over seeds, per model."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        if len(mine) < 2:  # a model fitted at one noise level only (an extra model)
            continue
        sigma = [float(r["noise_sigma"]) for r in mine]
        mean = np.array([float(r["test_mse_mean"]) for r in mine])
        std = np.nan_to_num(np.array([float(r["test_mse_std"]) for r in mine]))
        ax.errorbar(sigma, mean, yerr=std, marker="o", capsize=3, label=model)
    ax.set_yscale("log")
    ax.set_xlabel("noise std on the scaled training targets (the data's scaler units)")
    ax.set_ylabel("test MSE (clean targets, scaler units)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(exp: DictConfig, out: Path) -> None:
    """models.csv and robustness.png from out/runs/ alone."""
    rows = summarize(_runs(out))
    write_csv(out / "models.csv", rows)
    plot_robustness([{k: str(v) for k, v in r.items()} for r in read_csv(out / "models.csv")],
                    out / "robustness.png")


def _mpc_models(exp: DictConfig, work: Path) -> dict:
    """Controller name -> the process model it plans on (None: the plant's own ODE)."""
    seed = int(exp.seeds[0])
    return {FIRST_PRINCIPLES: None,
            **{m: load_model(model_path(work, m, 0.0, seed))
               for m in [*exp.models, *(exp.extra_models or {})]}}


def _solver(exp: DictConfig, option: str) -> SolverOptions:
    return SolverOptions(**OmegaConf.to_container(exp.solver_options[option]))


def _option(build: DictConfig, model: str) -> str:
    """The solver_options entry a build (controller -> entry, as `experiment.solver`) gives a
    controller: its own, else the build's `default`."""
    return build.get(model, build.default)


def _own_solver(exp: DictConfig, model: str) -> SolverOptions:
    """The options a controller runs with in the closed-loop stage."""
    return _solver(exp, _option(exp.solver, model))


def run_controllers(exp: DictConfig, work: Path) -> tuple[list[dict], dict]:
    """Every controller from every start, with and without measurement noise."""
    rows, paths = [], {}
    for name, trained in _mpc_models(exp, work).items():
        for horizon in exp.horizons:
            controller = process_mpc(CSTR, trained, horizon, solver=_own_solver(exp, name))
            for noisy in (False, True):
                noise = list(exp.measurement_noise_std) if noisy else [0.0, 0.0]
                for start in PUBLISHED_STARTS:
                    trajectory, m = mpc_episode(controller, start, exp.steps,
                                                obs_noise_std=noise, seed=exp.seeds[0])
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


def solve_times(exp: DictConfig, work: Path) -> list[dict]:
    """Per model, horizon and solver option: solve ms over closed loops from every start, the
    MPCs built one after another in this process and measured from the same starts."""
    rows = []
    models = {name: trained for name, trained in _mpc_models(exp, work).items()
              if name in exp.solve_time_models}
    for horizon in exp.horizons:
        for option in exp.solver_options:
            for name, trained in models.items():
                started = time.perf_counter()
                controller = process_mpc(CSTR, trained, horizon, solver=_solver(exp, option))
                build = time.perf_counter() - started
                times, iterations, reached, failures = [], [], [], 0
                for start in PUBLISHED_STARTS:
                    _, m = mpc_episode(controller, start, exp.solve_time_steps,
                                       seed=exp.seeds[0])
                    times += [1e3 * s.solve_time for s in controller.stats]
                    iterations += [s.iterations for s in controller.stats]
                    reached.append(m.reached_step)
                    failures += m.fallbacks
                size = ("" if trained is None else
                        f"{trained.model.hparams['layers']}x{trained.model.hparams['hidden']}")
                rows.append({"model": name, "size": size, "horizon": horizon, "options": option,
                             "solve_ms_median": float(np.median(times)),
                             "solve_ms_p95": float(np.percentile(times, 95)),
                             "iterations_median": float(np.median(iterations)),
                             "ms_per_iteration": float(np.sum(times) / max(1, np.sum(iterations))),
                             "build_seconds": round(build, 2), "failures": failures,
                             "reached_all": all(r is not None for r in reached)})
                print(f"solve time {name} N={horizon} {option}: median "
                      f"{rows[-1]['solve_ms_median']:.1f} ms, build {build:.1f} s", flush=True)
    default = _option(exp.solver, FIRST_PRINCIPLES)
    for row in rows:
        same = [r for r in rows if r["model"] == FIRST_PRINCIPLES
                and r["horizon"] == row["horizon"]]
        own = next(r for r in same if r["options"] == row["options"])
        row["ratio_to_first_principles_same_options"] = (row["solve_ms_median"]
                                                         / own["solve_ms_median"])
        closed_loop = next(r for r in same if r["options"] == default)
        row["ratio_to_first_principles_closed_loop_options"] = (row["solve_ms_median"]
                                                                / closed_loop["solve_ms_median"])
        row["ratio_to_fastest_first_principles"] = (
            row["solve_ms_median"] / min(r["solve_ms_median"] for r in same))
    return rows


def budgeted_runs(exp: DictConfig, work: Path) -> list[dict]:
    """Closed loops of every `budget_builds` entry under a wall-clock budget per step: a solve
    not finished inside it is a failed one and applies the fallback (the shifted previous
    plan)."""
    rows, models = [], _mpc_models(exp, work)
    for build_name, build in exp.budget_builds.items():
        for budget_ms in exp.budget_ms:
            for name, trained in models.items():
                option = _option(build, name)
                controller = process_mpc(CSTR, trained, exp.horizons[0],
                                         solver=_solver(exp, option),
                                         time_budget=budget_ms / 1e3)
                for start in PUBLISHED_STARTS:
                    _, m = mpc_episode(controller, start, exp.steps, seed=exp.seeds[0])
                    rows.append({"build": build_name, "options": option,
                                 "model": name, "budget_ms": budget_ms, "start_CA": start[0],
                                 "start_T": start[1], "steps": exp.steps,
                                 "steps_solved": exp.steps - m.fallbacks,
                                 "reached": m.reached_step is not None,
                                 "reached_step": m.reached_step, "cost": m.integrated_cost})
                    print(f"budget {build_name} {budget_ms} ms {name} start {start}: solved "
                          f"{rows[-1]['steps_solved']}/{exp.steps}, reached {m.reached_step}",
                          flush=True)
    return rows


def _ellipse(matrix: np.ndarray, level: float) -> np.ndarray:
    """Points [2, 200] of the boundary {x' M x = level}."""
    angle = np.linspace(0, 2 * np.pi, 200)
    circle = np.stack([np.cos(angle), np.sin(angle)])
    return np.sqrt(level) * np.linalg.solve(np.linalg.cholesky(matrix).T, circle)


def plot(paths: dict, horizon: int, out: Path) -> None:
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
        ax.set_title(f"{name} MPC (N={horizon})", fontsize=9)
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
    # the models stage fits every run; the MPC stages alone, only the models they plan on
    fit_models(exp, out, work, None if "models" in exp.stages else _mpc_runs(exp))
    report(exp, out)
    if "closed_loop" in exp.stages:
        loop_rows, paths = run_controllers(exp, work)
        write_csv(out / "closed_loop.csv", loop_rows)
        plot(paths, exp.horizons[0], out / "closed_loop.png")
    if "solve_time" in exp.stages:
        rows = solve_times(exp, work)
        write_csv(out / "solve_time.csv", rows)
        write_json(exp.solve_time_file, rows, indent=1)
    if "budget" in exp.stages:
        write_csv(out / "budget.csv", budgeted_runs(exp, work))
    write_bench_record(out / "summary.json", exp, time.perf_counter() - started,
                       machine_info(processes=exp.jobs))
