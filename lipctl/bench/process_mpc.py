"""Benchmark of process models and MPC on them for any plant: the models' accuracy and robustness
to noisy training targets, then MPC on each model against MPC on the plant's own ODE.

The plant is the experiment's `process` (a `_target_` building a lipctl Process) in each of its
`settings` (`kwargs` for the process factory and its simulated plant, and the MPC `horizon`);
`scenarios` are the closed loops' starts (a state, or an operating point's name) and setpoint
schedules. Experiments: cstr_mpc (and its _fast and _paper presets), quadtank_mpc.

Stages (`experiment.stages`, in this order), each writing under the output folder:
- `models`: per setting one dataset from the ODE, then every model x target-noise sigma x seed
  fitted, `jobs` processes at once with one torch thread each; one JSON per fit in
  runs/<setting>/models/<model>/sigma<s>-seed<k>.json (clean test MSE, final noisy train MSE,
  certified and sampled Lipschitz bounds, the smallest constrained weight, a downsampled
  history). A fit whose run file exists, with a model file that loads and belongs to the
  setting's process, is not redone (nor is a kept dataset generated again).
- `closed_loop`: MPC on the models of the first `mpc_seeds` seeds (noise 0; fitted first where
  missing, also without the `models` stage) and on the ODE, from every scenario, without and
  with measurement noise; one JSON per run in runs/<setting>/closed_loop/ (settling steps after
  each setpoint change, cost, violations, solve times, the downsampled state path).
- `solve_time`: the MPCs of `solve_time_models` (first seed) built with every `solver_options`
  entry, side by side from the same scenarios: solve_time.csv and `solve_time_file` (JSON), with
  ratios to first-principles MPC with the same options, with the closed-loop stage's options and
  with its fastest options.
- `budget`: closed loops of each `budget_builds` entry under a wall-clock budget per step (a
  solve not finished inside it fails and the fallback applies): budget.csv.
models.csv, robustness.png (where a model has several noise levels), closed_loop.csv and
closed_loop.png are rebuilt from runs/ alone (`report`, also `lipctl bench ... replot=true`).
summary.json holds the settings, the machine and the wall time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from lipctl.bench.kit import machine_info, write_bench_record
from lipctl.config import ConfigError, process_of, require_number, require_seeds
from lipctl.control.loop import Trajectory
from lipctl.control.models import (
    MODELS,
    TrainedModel,
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
from lipctl.control.process_metrics import ProcessMetrics, true_states
from lipctl.control.process_mpc import (
    FIRST_PRINCIPLES,
    ProcessController,
    mpc_episode,
    process_mpc,
)
from lipctl.envs.files import read_csv, write_csv, write_json
from lipctl.envs.process import Process

STAGES = ("models", "closed_loop", "solve_time", "budget")
HISTORY_ROWS = 50  # history rows kept per fit's run file
STAGE_KEYS = {"solve_time": ("solve_time_models", "solve_time_steps", "solve_time_file"),
              "budget": ("budget_builds", "budget_ms")}

Run = tuple[str, str, float, int]  # (setting, model, noise sigma, seed) of one fit


def setting_kwargs(exp: DictConfig, setting: str) -> dict:
    """The setting's keyword arguments of the process factory and of its simulated plant."""
    kwargs = exp.settings[setting].get("kwargs")
    return {} if kwargs is None else OmegaConf.to_container(kwargs)


def setting_process(exp: DictConfig, setting: str) -> Process:
    """The experiment's process built with the setting's `kwargs`."""
    node = {**OmegaConf.to_container(exp.process), **setting_kwargs(exp, setting)}
    return process_of(OmegaConf.create({"settings": {setting: node}}), f"settings.{setting}")


def validate(exp: DictConfig) -> None:
    """The experiment's settings, before any work starts (keys relative to `experiment`)."""
    if not exp.stages or any(stage not in STAGES for stage in exp.stages):
        raise ConfigError("stages", f"must be a non-empty list of {', '.join(STAGES)}, "
                                    f"got {list(exp.stages)}")
    for stage in exp.stages:
        if missing := [key for key in STAGE_KEYS.get(stage, ()) if exp.get(key) is None]:
            raise ConfigError(missing[0], f"the {stage} stage needs it")
    if not exp.models or any(m not in MODELS for m in exp.models):
        raise ConfigError("models", f"needs known models, got {list(exp.models)}; choose "
                                    f"from {', '.join(MODELS)}")
    for name, extra in (exp.extra_models or {}).items():
        if extra.get("name") not in MODELS or "hidden" not in extra:
            raise ConfigError(f"extra_models.{name}",
                              f"needs a model name ({', '.join(MODELS)}) and a hidden size")
    for key in ("hidden", "layers", "epochs", "batch_size", "jobs", "steps", "mpc_seeds",
                *(("solve_time_steps",) if "solve_time" in exp.stages else ())):
        require_number(exp, key, 1, integer=True)
    require_number(exp, "patience", 1, integer=True, allow_none=True)
    require_number(exp, "lr", 0, exclusive=True)
    require_seeds(exp.seeds, "seeds")
    if exp.data.get("scaler", "standard") not in SCALERS:
        raise ConfigError("data.scaler", f"must be one of {', '.join(SCALERS)}, got "
                                         f"{exp.data.scaler!r}")
    for key in ("noise", *(("budget_ms",) if "budget" in exp.stages else ())):
        values = exp[key]
        if not values or any(isinstance(v, bool) or not v >= 0 for v in values):
            raise ConfigError(key, f"must be a non-empty list of numbers >= 0, got {list(values)}")
    _validate_settings(exp)
    _validate_solvers(exp)


def _validate_settings(exp: DictConfig) -> None:
    """Every setting builds a process with a simulated plant and has a horizon; every scenario
    starts at a state or operating point of every setting, and its schedule names steps of the
    episode and operating points."""
    if not exp.settings:
        raise ConfigError("settings", "needs at least one setting (name: {kwargs, horizon})")
    if not exp.scenarios:
        raise ConfigError("scenarios", "needs at least one closed loop ({start, schedule})")
    for setting in exp.settings:
        require_number(exp, f"settings.{setting}.horizon", 1, integer=True)
        process = setting_process(exp, setting)
        if not process.has_model or process.env_id is None:
            raise ConfigError(f"settings.{setting}", f"process {process.name!r} needs an ODE "
                                                     f"(rhs) and a simulated plant (env_id)")
        for i, scenario in enumerate(exp.scenarios):
            try:
                scenario_start(process, scenario)
                schedule = targets_of(scenario)
                if 0 not in schedule:
                    raise ValueError("its schedule must set the setpoint of step 0")
                for step, setpoint in schedule.items():
                    if not 0 <= step < exp.steps:
                        raise ValueError(f"schedule step {step} is outside [0, {exp.steps})")
                    process.reference(setpoint)
            except (TypeError, ValueError) as error:
                raise ConfigError(f"scenarios.{i}", f"in setting {setting}: {error}") from None


def _validate_solvers(exp: DictConfig) -> None:
    """Each build (controller -> solver_options entry) names existing entries and a default; the
    entries are valid SolverOptions; the solve-time ratios have their reference."""
    builds = {} if exp.get("solver") is None else {"solver": exp.solver}
    if "budget" in exp.stages:
        builds |= {f"budget_builds.{k}": v for k, v in exp.budget_builds.items()}
    for key, build in builds.items():
        for model, option in build.items():
            if option not in exp.solver_options:
                raise ConfigError(f"{key}.{model}", f"must name a solver_options entry "
                                                    f"({', '.join(exp.solver_options)})")
        if "default" not in build:
            raise ConfigError(key, "needs a default entry")
    if "solve_time" in exp.stages and FIRST_PRINCIPLES not in exp.solve_time_models:
        raise ConfigError("solve_time_models",
                          f"must include {FIRST_PRINCIPLES} (the ratios are to it)")
    for name, options in (exp.get("solver_options") or {}).items():
        try:
            SolverOptions(**OmegaConf.to_container(options))
        except (TypeError, ValueError) as error:
            raise ConfigError(f"solver_options.{name}", str(error)) from None


def scenario_start(process: Process, scenario: DictConfig) -> np.ndarray:
    """The scenario's start: an operating point's state, or a state of the process."""
    start = scenario.start
    if isinstance(start, str):
        return process.reference(start)[0]
    return process.check_state(list(start), "start")


def schedule_of(scenario: DictConfig) -> dict[int, str] | None:
    """The scenario's setpoint schedule (step -> operating point), None where it has none."""
    schedule = scenario.get("schedule")
    return {int(step): setpoint for step, setpoint in schedule.items()} if schedule else None


def targets_of(scenario: DictConfig) -> dict[int, str | None]:
    """The setpoint from each change step on: the schedule, or the steady state throughout."""
    return schedule_of(scenario) or {0: None}


def episode(exp: DictConfig, setting: str, controller: ProcessController, scenario: DictConfig,
            steps: int, seed: int, noisy: bool = False) -> tuple[Trajectory, ProcessMetrics]:
    """One closed loop of `controller` on the setting's simulated plant through `scenario`."""
    return mpc_episode(
        controller, scenario_start(controller.process, scenario), steps,
        obs_noise_std=list(exp.measurement_noise_std) if noisy else None, seed=seed,
        schedule=schedule_of(scenario),
        plant_kwargs=setting_kwargs(exp, setting))


def run_name(model: str, sigma: float, seed: int) -> str:
    return f"{model}/sigma{sigma}-seed{seed}"


def fit_file(out: Path, setting: str, model: str, sigma: float, seed: int) -> Path:
    return out / "runs" / setting / "models" / f"{run_name(model, sigma, seed)}.json"


def model_path(work: Path, setting: str, model: str, sigma: float, seed: int) -> Path:
    return work / setting / "models" / f"{model}-sigma{sigma}-seed{seed}.pt"


def _architecture(exp: DictConfig, model: str) -> tuple[str, dict]:
    """(registered model name, hyper-parameters) of a model of this experiment: one of
    `models` with the experiment's hidden and layers, or an `extra_models` entry."""
    extras = exp.extra_models or {}
    if model not in extras:
        return model, {"hidden": exp.hidden, "layers": exp.layers}
    extra = OmegaConf.to_container(extras[model])
    return extra.pop("name"), extra


def _mpc_seeds(exp: DictConfig) -> list[int]:
    return [int(seed) for seed in exp.seeds[:exp.mpc_seeds]]


def _mpc_runs(exp: DictConfig, setting: str) -> list[Run]:
    """The fits the MPC stages plan on: every model at sigma 0 and each of the first `mpc_seeds`
    seeds, each extra model at sigma 0 and the first seed."""
    extras = [(setting, m, 0.0, int(exp.seeds[0])) for m in exp.extra_models or {}]
    return [(setting, m, 0.0, s) for s in _mpc_seeds(exp) for m in exp.models] + extras


def _all_runs(exp: DictConfig, setting: str) -> list[Run]:
    """Every fit of a setting, the ones the MPC stages use first."""
    first = _mpc_runs(exp, setting)
    sweep = [(setting, m, float(s), int(k)) for m in exp.models for s in exp.noise
             for k in exp.seeds]
    return first + [run for run in sweep if run not in first]


def fit_run(exp: dict, setting: str, model: str, sigma: float, seed: int, data_path: str,
            out: str, work: str) -> dict:
    """Fit one model (in a worker process) and write its run file and model file."""
    torch.set_num_threads(1)
    exp = OmegaConf.create(exp)
    data = load_dataset(data_path)
    torch.manual_seed(seed)
    kind, hparams = _architecture(exp, model)
    net = build_model(kind, len(data.state_names), len(data.input_names), **hparams)
    result, certificate = fit_and_save(model_path(Path(work), setting, model, sigma, seed), net,
                                       data, epochs=exp.epochs, lr=exp.lr,
                                       batch_size=exp.batch_size, target_noise_sigma=sigma,
                                       seed=seed, patience=exp.patience)
    train = data.rows("train")
    in_units = {f"test_mse_{kind}": mse_in(net, data, "test", fit_state_scaler(
        data.x0[train], data.targets[train], kind)) for kind in SCALERS}
    constrained = getattr(net, "constrained", None)
    every = max(1, len(result.history) // HISTORY_ROWS)
    record = {
        "setting": setting, "model": model, "kind": kind, "noise_sigma": sigma, "seed": seed,
        "layers": int(hparams.get("layers", 1)), "hidden": int(hparams["hidden"]),
        "epochs": len(result.history), "params": sum(p.numel() for p in net.parameters()),
        "test_mse": result.test_mse, **in_units, "train_mse": result.history[-1]["train_mse"],
        "val_mse": result.history[-1]["val_mse"], "best_epoch": result.best_epoch,
        "lipschitz_upper": certificate.upper, "lipschitz_lower": certificate.lower,
        "min_constrained_weight": (min(float(w.detach().min()) for w in constrained())
                                   if constrained else None),
        "train_seconds": round(result.seconds, 1),
        "train_rows": len(train),
        "history": result.history[::every] + ([result.history[-1]]
                                              if (len(result.history) - 1) % every else []),
    }
    write_json(fit_file(Path(out), setting, model, sigma, seed), record, indent=1)
    return record


def _usable(path: Path, load: Callable[[Path], Any], process: Process) -> bool:
    """Whether the file at `path` loads and belongs to `process` as this lipctl names it (files
    kept from an earlier run may be of an earlier format or name); says why not."""
    if not path.is_file():
        return False
    try:
        check_origin(load(path), process, str(path), "belongs to")
    except ValueError as error:
        print(f"{path} is not used: {str(error).splitlines()[0]}", flush=True)
        return False
    return True


def _dataset(exp: DictConfig, setting: str, process: Process, work: Path) -> Path:
    """The setting's dataset file, generated unless a usable one is kept (one file per scaler,
    so a kept dataset is never read in the other's units)."""
    path = work / setting / f"data-{exp.data.get('scaler', 'standard')}.npz"
    if not _usable(path, load_dataset, process):
        save_dataset(generate(process, seed=exp.data_seed, **OmegaConf.to_container(exp.data)),
                     path)
    data = load_dataset(path)
    print(f"{setting} data: {len(data.x0)} rows ({len(data.rows('train'))} train, "
          f"{len(data.rows('val'))} val, {len(data.rows('test'))} test)", flush=True)
    return path


def fit_models(exp: DictConfig, out: Path, work: Path, runs: list[Run]) -> None:
    """Each of `runs` whose run file or usable model file is missing, `exp.jobs` processes at
    once."""
    processes = {setting: setting_process(exp, setting)
                 for setting in dict.fromkeys(r[0] for r in runs)}
    data = {setting: _dataset(exp, setting, process, work)
            for setting, process in processes.items()}
    todo = [r for r in runs if not (fit_file(out, *r).is_file() and _usable(
        model_path(work, *r), load_model, processes[r[0]]))]
    print(f"models: {len(runs) - len(todo)} of {len(runs)} runs already done", flush=True)
    settings = OmegaConf.to_container(exp, resolve=True)
    started = time.perf_counter()
    # fresh interpreters, not forks: the caller may hold threads (a forked lock stays locked)
    with ProcessPoolExecutor(max_workers=exp.jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(fit_run, settings, *r, str(data[r[0]]), str(out), str(work))
                   for r in todo]
        for done, future in enumerate(as_completed(futures), 1):
            r = future.result()
            print(f"[{done}/{len(todo)}, {time.perf_counter() - started:.0f} s] {r['setting']} "
                  f"{r['model']} sigma {r['noise_sigma']} seed {r['seed']}: test MSE "
                  f"{r['test_mse']:.2e}, train MSE {r['train_mse']:.2e}, upper "
                  f"{r['lipschitz_upper']:.3g}, {r['train_seconds']:.0f} s", flush=True)


def _records(out: Path, stage: str) -> list[dict]:
    """The run files of a stage, each with its setting (the folder it lies in)."""
    runs = out / "runs"
    return [{**json.loads(path.read_text()), "setting": path.relative_to(runs).parts[0]}
            for path in sorted(runs.glob(f"*/{stage}/**/*.json"))]


def _std(values: np.ndarray) -> float:
    """Sample standard deviation (NaN for one value)."""
    return float(values.std(ddof=1)) if len(values) > 1 else float("nan")


def summarize_models(runs: Iterable[dict]) -> list[dict]:
    """models.csv rows: per setting, model and sigma, mean and std (ddof 1) over seeds of the
    clean test MSE and final noisy train MSE; medians of the certificates and fit times."""
    groups: dict[tuple[str, str, float], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["setting"], run["model"], run["noise_sigma"]), []).append(run)
    rows = []
    for (setting, model, sigma), group in sorted(groups.items()):
        test = np.array([r["test_mse"] for r in group])
        train = np.array([r["train_mse"] for r in group])
        units = {}  # the test MSE in each scaler's units
        for kind in SCALERS:
            values = np.array([r[f"test_mse_{kind}"] for r in group])
            units |= {f"test_mse_{kind}_mean": float(values.mean()),
                      f"test_mse_{kind}_std": _std(values)}
        rows.append({
            "setting": setting, "model": model, "layers": group[0]["layers"],
            "hidden": group[0]["hidden"], "epochs": group[0]["epochs"], "noise_sigma": sigma,
            "seeds": len(group), "test_mse_mean": float(test.mean()), "test_mse_std": _std(test),
            **units, "train_mse_mean": float(train.mean()), "train_mse_std": _std(train),
            "lipschitz_upper": float(np.median([r["lipschitz_upper"] for r in group])),
            "lipschitz_upper_max": float(np.max([r["lipschitz_upper"] for r in group])),
            "lipschitz_lower": float(np.median([r["lipschitz_lower"] for r in group])),
            "train_seconds": float(np.median([r["train_seconds"] for r in group])),
        })
    return rows


def plot_robustness(rows: list[dict], path: Path) -> bool:
    """Clean test MSE against the training-target noise, mean +- std over seeds, per setting and
    model with several noise levels; False (no figure) where none has."""
    lines = {}
    for row in rows:
        lines.setdefault((row["setting"], row["model"]), []).append(row)
    lines = {key: mine for key, mine in lines.items() if len(mine) > 1}
    if not lines:
        return False
    one_setting = len({setting for setting, _ in lines}) == 1
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for (setting, model), mine in lines.items():
        sigma = [float(r["noise_sigma"]) for r in mine]
        mean = np.array([float(r["test_mse_mean"]) for r in mine])
        std = np.nan_to_num(np.array([float(r["test_mse_std"]) for r in mine]))
        ax.errorbar(sigma, mean, yerr=std, marker="o", capsize=3,
                    label=model if one_setting else f"{setting} {model}")
    ax.set_yscale("log")
    ax.set_xlabel("noise std on the scaled training targets (the data's scaler units)")
    ax.set_ylabel("test MSE (clean targets, scaler units)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def settling_steps(process: Process, states: np.ndarray, schedule: dict[int, str | None],
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


def _solver(exp: DictConfig, option: str) -> SolverOptions:
    return SolverOptions(**OmegaConf.to_container(exp.solver_options[option]))


def _option(build: DictConfig, model: str) -> str:
    """The solver_options entry a build (controller -> entry, as `experiment.solver`) gives a
    controller: its own, else the build's `default`."""
    return build.get(model, build.default)


def _own_solver(exp: DictConfig, model: str) -> SolverOptions | None:
    """The options a controller runs its closed loops with (None: `process_mpc`'s choice)."""
    return None if exp.get("solver") is None else _solver(exp, _option(exp.solver, model))


def _controllers(exp: DictConfig, setting: str, work: Path, seeds: list[int]
                 ) -> dict[tuple[str, int], TrainedModel | None]:
    """(controller, seed) -> the process model it plans on (None: the ODE, once, at the first
    seed), for the models of `seeds`."""
    chosen = [(m, seed) for _, m, _, seed in _mpc_runs(exp, setting) if seed in seeds]
    return {(FIRST_PRINCIPLES, int(exp.seeds[0])): None,
            **{(m, seed): load_model(model_path(work, setting, m, 0.0, seed))
               for m, seed in chosen}}


def closed_loop_run(exp: DictConfig, setting: str, process: Process, controller: str,
                    trained: TrainedModel | None, seed: int, scenario: int, noisy: bool) -> dict:
    """One closed loop of a scenario; its record (metrics and the state path)."""
    horizon = exp.settings[setting].horizon
    schedule = targets_of(exp.scenarios[scenario])
    mpc = process_mpc(process, trained, horizon, solver=_own_solver(exp, controller),
                      setpoint=schedule[0])
    start = scenario_start(process, exp.scenarios[scenario])
    trajectory, metrics = episode(exp, setting, mpc, exp.scenarios[scenario], exp.steps, seed,
                                  noisy)
    states = true_states(trajectory)
    settle = settling_steps(process, states, schedule, exp.steps)
    return {
        "setting": setting, "controller": controller, "seed": seed, "scenario": scenario,
        "start": [round(float(x), 3) for x in start], "noisy": noisy, "horizon": horizon,
        "steps": exp.steps, "schedule": {str(k): v for k, v in schedule.items()},
        "settling_steps": {str(k): v for k, v in settle.items()},
        "settled_every_change": all(v is not None for v in settle.values()),
        "reached_step": metrics.reached_step, "integrated_cost": metrics.integrated_cost,
        "input_bound_violations": metrics.bound_violations,
        "state_box_violations": metrics.state_violations,
        "solve_ms_median": metrics.solve_ms_median, "solve_ms_p95": metrics.solve_ms_p95,
        "fallbacks": metrics.fallbacks, "status_counts": metrics.status_counts,
        "states": np.round(states, 4).tolist(),
        "inputs": np.round(trajectory.actions, 4).tolist(),
    }


def run_closed_loops(exp: DictConfig, out: Path, work: Path) -> None:
    """Every controller of every setting from every scenario, without and with measurement noise;
    a run whose file exists is not run again."""
    for setting in exp.settings:
        process = setting_process(exp, setting)
        for (controller, seed), trained in _controllers(exp, setting, work,
                                                        _mpc_seeds(exp)).items():
            for scenario in range(len(exp.scenarios)):
                for noisy in (False, True):
                    path = (out / "runs" / setting / "closed_loop" /
                            f"{controller}-seed{seed}-scenario{scenario}{'-noisy' * noisy}.json")
                    if path.is_file():
                        continue
                    record = closed_loop_run(exp, setting, process, controller, trained, seed,
                                             scenario, noisy)
                    write_json(path, record, indent=1)
                    print(f"{path.relative_to(out)}: settling {record['settling_steps']}, cost "
                          f"{record['integrated_cost']:.4g}, solve "
                          f"{record['solve_ms_median']:.1f} ms", flush=True)


def summarize_closed_loops(records: list[dict]) -> list[dict]:
    """closed_loop.csv rows: per setting, scenario, controller and noise, medians over seeds
    (settling steps over the seeds that settled, with their count) and sums of violations."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["setting"], r["scenario"], r["controller"], r["noisy"]), []).append(r)
    rows = []
    for (setting, scenario, controller, noisy), group in sorted(groups.items()):
        row = {"setting": setting, "scenario": scenario, "start": group[0]["start"],
               "controller": controller, "measurement_noise": noisy, "seeds": len(group),
               "settled_every_change": sum(r["settled_every_change"] for r in group)}
        for k, setpoint in group[0]["schedule"].items():
            values = [r["settling_steps"][k] for r in group]
            done = [v for v in values if v is not None]
            row[f"change_{k}"] = setpoint or "steady state"
            row[f"change_{k}_settled"] = len(done)
            row[f"change_{k}_settle_steps_median"] = float(np.median(done)) if done else None
            row[f"change_{k}_settle_steps_max"] = max(done) if len(done) == len(values) else None
        reached = [r["reached_step"] for r in group if r["reached_step"] is not None]
        row["reached"] = len(reached)  # seeds whose state entered the last setpoint's target
        row["reached_step_median"] = float(np.median(reached)) if reached else None
        for key in ("integrated_cost", "solve_ms_median", "solve_ms_p95"):
            row[f"{key}_median"] = round(float(np.median([r[key] for r in group])), 3)
        for key in ("input_bound_violations", "state_box_violations", "fallbacks"):
            row[key] = sum(r[key] for r in group)
        rows.append(row)
    columns = dict.fromkeys(key for row in rows for key in row)  # scenarios change at other steps
    return [{key: row.get(key) for key in columns} for row in rows]


def plot_closed_loops(exp: DictConfig, records: list[dict], path: Path) -> None:
    """Each state over time, one column per setting and scenario, one line per controller
    (first seed, no measurement noise); grey: the target band around each setpoint."""
    columns = sorted({(r["setting"], r["scenario"]) for r in records})
    shown = [r for r in records if not r["noisy"]
             and r["seed"] == min(q["seed"] for q in records if q["controller"] == r["controller"])]
    processes = {setting: setting_process(exp, setting) for setting, _ in columns}
    size = processes[columns[0][0]].state_size
    fig, axes = plt.subplots(size, len(columns), figsize=(3.4 * len(columns), 1.9 * size + 0.6),
                             squeeze=False, sharex="col")
    for col, (setting, scenario) in enumerate(columns):
        process = processes[setting]
        mine = [r for r in shown if r["setting"] == setting and r["scenario"] == scenario]
        for r in mine:
            states = np.asarray(r["states"])
            times = np.arange(len(states)) * process.sampling_period
            for row in range(size):
                axes[row, col].plot(times, states[:, row], lw=1.1, label=r["controller"])
        schedule = {int(k): v for k, v in mine[0]["schedule"].items()}
        changes = sorted(schedule)
        for row in range(size):
            for k, end in zip(changes, [*changes[1:], mine[0]["steps"]], strict=True):
                centre = process.reference(schedule[k])[0][row]
                width = process.target_half_widths[row]
                times = np.array([k, end]) * process.sampling_period
                axes[row, col].fill_between(times, centre - width, centre + width, color="0.85",
                                            lw=0)
            axes[row, col].set_ylabel(f"{process.state_names[row]} ({process.state_units[row]})",
                                      fontsize=8)
        axes[0, col].set_title(f"{setting}, start {mine[0]['start']}", fontsize=8)
        axes[-1, col].set_xlabel(f"time ({process.time_unit})")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(exp: DictConfig, out: Path) -> None:
    """models.csv, robustness.png, closed_loop.csv and closed_loop.png from out/runs/ alone
    (each where its stage has run files)."""
    if fits := _records(out, "models"):
        write_csv(out / "models.csv", summarize_models(fits))
        plot_robustness([{k: str(v) for k, v in r.items()} for r in read_csv(out / "models.csv")],
                        out / "robustness.png")
    if loops := _records(out, "closed_loop"):
        write_csv(out / "closed_loop.csv", summarize_closed_loops(loops))
        plot_closed_loops(exp, loops, out / "closed_loop.png")


def solve_times(exp: DictConfig, work: Path) -> list[dict]:
    """Per setting, model and solver option: solve ms over closed loops from every scenario, the
    MPCs built one after another in this process and measured from the same starts."""
    rows = []
    seed = int(exp.seeds[0])
    for setting in exp.settings:
        process = setting_process(exp, setting)
        horizon = exp.settings[setting].horizon
        models = {name: trained for (name, _), trained
                  in _controllers(exp, setting, work, [seed]).items()
                  if name in exp.solve_time_models}
        for option in exp.solver_options:
            for name, trained in models.items():
                started = time.perf_counter()
                controller = process_mpc(process, trained, horizon, solver=_solver(exp, option))
                build = time.perf_counter() - started
                times, iterations, settled, failures = [], [], [], 0
                for scenario in exp.scenarios:
                    _, m = episode(exp, setting, controller, scenario, exp.solve_time_steps, seed)
                    times += [1e3 * s.solve_time for s in controller.stats]
                    iterations += [s.iterations for s in controller.stats]
                    settled.append(m.reached_step)
                    failures += m.fallbacks
                size = ("" if trained is None else
                        f"{trained.model.hparams['layers']}x{trained.model.hparams['hidden']}")
                rows.append({"setting": setting, "model": name, "size": size,
                             "horizon": horizon, "options": option,
                             "solve_ms_median": float(np.median(times)),
                             "solve_ms_p95": float(np.percentile(times, 95)),
                             "iterations_median": float(np.median(iterations)),
                             "ms_per_iteration": float(np.sum(times) / max(1, np.sum(iterations))),
                             "build_seconds": round(build, 2), "failures": failures,
                             "reached_all": all(r is not None for r in settled)})
                print(f"solve time {setting} {name} N={horizon} {option}: median "
                      f"{rows[-1]['solve_ms_median']:.1f} ms, build {build:.1f} s", flush=True)
    default = _option(exp.solver, FIRST_PRINCIPLES) if exp.get("solver") else None
    for row in rows:
        same = [r for r in rows if r["model"] == FIRST_PRINCIPLES
                and r["setting"] == row["setting"]]
        own = next(r for r in same if r["options"] == row["options"])
        row["ratio_to_first_principles_same_options"] = (row["solve_ms_median"]
                                                         / own["solve_ms_median"])
        if default is not None:
            closed_loop = next(r for r in same if r["options"] == default)
            row["ratio_to_first_principles_closed_loop_options"] = (
                row["solve_ms_median"] / closed_loop["solve_ms_median"])
        row["ratio_to_fastest_first_principles"] = (
            row["solve_ms_median"] / min(r["solve_ms_median"] for r in same))
    return rows


def budgeted_runs(exp: DictConfig, work: Path) -> list[dict]:
    """Closed loops of every `budget_builds` entry under a wall-clock budget per step: a solve
    not finished inside it is a failed one and applies the fallback (the shifted previous
    plan)."""
    rows = []
    seed = int(exp.seeds[0])
    for setting in exp.settings:
        process = setting_process(exp, setting)
        models = _controllers(exp, setting, work, [seed])
        for build_name, build in exp.budget_builds.items():
            for budget_ms in exp.budget_ms:
                for (name, _), trained in models.items():
                    option = _option(build, name)
                    controller = process_mpc(process, trained, exp.settings[setting].horizon,
                                             solver=_solver(exp, option),
                                             time_budget=budget_ms / 1e3)
                    for i, scenario in enumerate(exp.scenarios):
                        _, m = episode(exp, setting, controller, scenario, exp.steps, seed)
                        rows.append({"setting": setting, "build": build_name, "options": option,
                                     "model": name, "budget_ms": budget_ms, "scenario": i,
                                     "steps": exp.steps, "steps_solved": exp.steps - m.fallbacks,
                                     "reached": m.reached_step is not None,
                                     "reached_step": m.reached_step, "cost": m.integrated_cost})
                        print(f"budget {setting} {build_name} {budget_ms} ms {name} scenario "
                              f"{i}: solved {rows[-1]['steps_solved']}/{exp.steps}, reached "
                              f"{m.reached_step}", flush=True)
    return rows


def run_benchmark(exp: DictConfig, out: Path, work: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # the models stage fits every run; the MPC stages alone, only the models they plan on
    runs_of = _all_runs if "models" in exp.stages else _mpc_runs
    fit_models(exp, out, work, [run for setting in exp.settings for run in runs_of(exp, setting)])
    if "closed_loop" in exp.stages:
        run_closed_loops(exp, out, work)
    report(exp, out)
    if "solve_time" in exp.stages:
        rows = solve_times(exp, work)
        write_csv(out / "solve_time.csv", rows)
        write_json(exp.solve_time_file, rows, indent=1)
    if "budget" in exp.stages:
        write_csv(out / "budget.csv", budgeted_runs(exp, work))
    write_bench_record(out / "summary.json", exp, time.perf_counter() - started,
                       machine_info(processes=exp.jobs))
