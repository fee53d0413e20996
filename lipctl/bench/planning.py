"""Planning on MBPO's learned model (`lipctl bench experiment=planning`): the SAC policy alone
against MPPI with the critic as terminal value and MPPI without it, over horizons, from MBPO
checkpoints trained with and without the Lipschitz critic, nominally and under measurement noise.

Reads the checkpoints `experiment.checkpoints`/<env>/<variant>/seed<k>/checkpoint.pt (the work
folder of `lipctl bench experiment=mbpo_vs_ensemble`). Every controller of a checkpoint runs from
the same initial states (episode seeds) and sees the same noise draws. Writes, under the output
folder: runs/<env>/<variant>/seed<k>.csv (one row per controller x horizon x noise), and from
those files alone (`report`, also `replot=true`) summary.csv and planning.png; speed.csv (planning
ms per step against the number of samples at the largest horizon); bench_<envs>.json (the
settings, machine and wall time of the invocation that planned those envs).
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from joblib import Parallel, delayed
from omegaconf import DictConfig, OmegaConf

from lipctl.agents.saved import SavedAgent, load_agent
from lipctl.bench.kit import machine_info, write_bench_record
from lipctl.bench.report import interval_estimate
from lipctl.config import ConfigError, require_number
from lipctl.control import NoisyMeasurements, TimedController, returns, run
from lipctl.control.planner import PlannerFactory, PlannerSettings, sampling_planner
from lipctl.envs import make_env
from lipctl.envs.files import read_csv, write_csv

POLICY, WITH_VALUE, WITHOUT_VALUE = "policy", "mppi+value", "mppi"
EPISODE_SEED = 1000  # episode i of every controller starts from reset(seed=EPISODE_SEED + i)


def checkpoint_path(exp: DictConfig, env: str, variant: str, seed: int) -> Path:
    return Path(exp.checkpoints) / env / variant / f"seed{seed}" / "checkpoint.pt"


def validate(exp: DictConfig) -> None:
    """Every checkpoint exists, and the settings are in range, before any planning."""
    planner_of(exp, exp.horizons[0] if exp.horizons else 1)
    if not exp.horizons or min(exp.horizons) < 1:
        raise ConfigError("experiment.horizons", f"needs horizons >= 1, got {list(exp.horizons)}")
    if any(noise < 0 for noise in exp.obs_noise):
        raise ConfigError("experiment.obs_noise", f"needs values >= 0, got {list(exp.obs_noise)}")
    require_number(exp, "jobs", 1, integer=True)
    for env in exp.episodes:
        require_number(exp, f"episodes.{env}", 1, integer=True)
    missing = [str(checkpoint_path(exp, env, variant, seed)) for env in exp.episodes
               for variant in exp.variants for seed in exp.seeds
               if not checkpoint_path(exp, env, variant, seed).is_file()]
    if missing:
        raise ConfigError("experiment.checkpoints", f"{len(missing)} checkpoint(s) missing, e.g. "
                                                    f"{missing[0]} (train them with lipctl bench "
                                                    f"experiment=mbpo_vs_ensemble)")


def planner_of(exp: DictConfig, horizon: int, **changes: int) -> PlannerFactory:
    """The sampling planner of the experiment's settings at `horizon` (and `changes`), as a
    planner factory; its settings checked now."""
    keywords = {**OmegaConf.to_container(exp.planner), "horizon": horizon, **changes}
    try:
        PlannerSettings(**keywords)
    except (TypeError, ValueError) as error:
        raise ConfigError("experiment.planner", str(error)) from None
    return partial(sampling_planner, **keywords)


def evaluate(exp: DictConfig, env_name: str, variant: str, seed: int) -> list[dict]:
    """Every controller x horizon x noise level on one checkpoint: one row each."""
    torch.set_num_threads(1)
    saved = load_agent(checkpoint_path(exp, env_name, variant, seed))
    episodes = exp.episodes[env_name]
    controllers = [(POLICY, 0)] + [(name, h) for h in exp.horizons
                                   for name in (WITH_VALUE, WITHOUT_VALUE)]
    rows = []
    for noise in exp.obs_noise:
        for name, horizon in controllers:
            planned, seconds = _controller(saved, exp, name, horizon, seed)
            controller = (NoisyMeasurements(planned, noise * saved.observation_std, seed)
                          if noise > 0 else planned)
            env = make_env(saved.env_id)
            started = time.perf_counter()
            values = returns(run(controller, env, episodes, seed=EPISODE_SEED))
            steps = len(seconds) or None
            env.close()
            rows.append({"env": env_name, "variant": variant, "seed": seed, "controller": name,
                         "horizon": horizon, "obs_noise": noise, "episodes": episodes,
                         "return_mean": float(values.mean()), "return_std": float(values.std()),
                         "ms_per_step": (1000 * float(np.median(seconds)) if steps else
                                         None),
                         "wall_seconds": round(time.perf_counter() - started, 2)})
    print(f"{env_name} {variant} seed {seed}: policy {rows[0]['return_mean']:.1f}, best MPPI "
          f"{max(r['return_mean'] for r in rows[1:]):.1f}", flush=True)
    return rows


def _controller(saved: SavedAgent, exp: DictConfig, name: str, horizon: int, seed: int):
    """The controller `name` on a checkpoint, timed per act (seconds list; empty: the policy's
    acts are not timed)."""
    if name == POLICY:
        return saved.controller(), []
    planner = saved.planner(planner_of(exp, horizon), terminal_value=name == WITH_VALUE,
                            proposal=True, seed=seed)
    timed = TimedController(planner)
    return timed, timed.seconds


def speed(exp: DictConfig) -> list[dict]:
    """Planning ms per step at the largest horizon for each of `exp.speed_samples`, on the first
    checkpoint of each env, from states of one policy episode."""
    torch.set_num_threads(1)
    rows = []
    for env_name in exp.episodes:
        saved = load_agent(checkpoint_path(exp, env_name, exp.variants[0], exp.seeds[0]))
        env = make_env(saved.env_id)
        states = run(saved.controller(), env, 1,
                     seed=EPISODE_SEED, max_steps=60)[0].observations[10:60]
        env.close()
        for samples in exp.speed_samples:
            planner = saved.planner(planner_of(exp, max(exp.horizons), samples=samples))
            planner.act(states[0])  # warm-up
            seconds = []
            for state in states:
                start = time.perf_counter()
                planner.act(state)
                seconds.append(time.perf_counter() - start)
            rows.append({"env": env_name, "model_members": len(saved.dynamics.elite_index),
                         "horizon": max(exp.horizons), "samples": samples,
                         "ms_median": round(1000 * float(np.median(seconds)), 2),
                         "ms_p95": round(1000 * float(np.percentile(seconds, 95)), 2)})
            print(f"{env_name}: {samples} samples, H={max(exp.horizons)}: "
                  f"{rows[-1]['ms_median']:.1f} ms per step", flush=True)
    return rows


def _read_runs(out: Path) -> list[dict]:
    rows = [row for path in sorted((out / "runs").rglob("seed*.csv")) for row in read_csv(path)]
    for row in rows:
        for key in ("seed", "horizon", "episodes"):
            row[key] = int(row[key])
        for key in ("obs_noise", "return_mean", "return_std"):
            row[key] = float(row[key])
        row["ms_per_step"] = float(row["ms_per_step"]) if row["ms_per_step"] else None
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Per env, variant, controller, horizon and noise: IQM over seeds (95% CI) of the mean
    return and of its gain over the same seed's policy under the same noise; median ms."""
    policy = {(r["env"], r["variant"], r["seed"], r["obs_noise"]): r["return_mean"]
              for r in rows if r["controller"] == POLICY}
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["env"], row["variant"], row["controller"], row["horizon"], row["obs_noise"])
        groups.setdefault(key, []).append(row)
    summary = []
    for (env, variant, controller, horizon, noise), members in groups.items():
        point, low, high = interval_estimate([m["return_mean"] for m in members], "iqm")
        gains = [m["return_mean"] - policy[(env, variant, m["seed"], noise)] for m in members]
        gain, gain_low, gain_high = interval_estimate(gains, "iqm")
        times = [m["ms_per_step"] for m in members if m["ms_per_step"] is not None]
        summary.append({"env": env, "variant": variant, "controller": controller,
                        "horizon": horizon, "obs_noise": noise, "seeds": len(members),
                        "return_iqm": round(point, 1), "ci_low": round(low, 1),
                        "ci_high": round(high, 1), "gain_over_policy_iqm": round(gain, 1),
                        "gain_ci_low": round(gain_low, 1), "gain_ci_high": round(gain_high, 1),
                        "ms_per_step": round(float(np.median(times)), 2) if times else None})
    return summary


def plot(summary: list[dict], path: Path) -> None:
    """Return IQM (95% CI) against the horizon, one panel per env and noise level; the policy
    alone as a dashed line per variant."""
    envs = list(dict.fromkeys(r["env"] for r in summary))
    noises = sorted({r["obs_noise"] for r in summary})
    fig, axes = plt.subplots(len(noises), len(envs), figsize=(4.6 * len(envs), 3.4 * len(noises)),
                             squeeze=False)
    for row_axes, noise in zip(axes, noises, strict=True):
        for ax, env in zip(row_axes, envs, strict=True):
            rows = [r for r in summary if r["env"] == env and r["obs_noise"] == noise]
            for i, variant in enumerate(dict.fromkeys(r["variant"] for r in rows)):
                colour = f"C{i}"
                for controller, style in ((WITH_VALUE, "-"), (WITHOUT_VALUE, ":")):
                    line = sorted((r for r in rows if r["variant"] == variant
                                   and r["controller"] == controller), key=lambda r: r["horizon"])
                    horizons = [r["horizon"] for r in line]
                    ax.plot(horizons, [r["return_iqm"] for r in line], style, marker="o",
                            color=colour, label=f"{variant} {controller}")
                    ax.fill_between(horizons, [r["ci_low"] for r in line],
                                    [r["ci_high"] for r in line], color=colour, alpha=0.12)
                alone = next(r for r in rows if r["variant"] == variant
                             and r["controller"] == POLICY)
                ax.axhline(alone["return_iqm"], color=colour, ls="--", lw=1,
                           label=f"{variant} policy")
            ax.set(title=f"{env}, measurement noise {noise:g} std", xlabel="horizon H",
                   ylabel="return (IQM, 95% CI)")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(exp: DictConfig, out: Path) -> list[dict]:
    """summary.csv and planning.png from out/runs/ alone."""
    summary = summarise(_read_runs(out))
    write_csv(out / "summary.csv", summary)
    plot(summary, out / "planning.png")
    return summary


def run_benchmark(exp: DictConfig, out: Path, work: Path) -> None:
    """Every env x variant x seed in `exp.jobs` processes into out/runs/, then speed and
    `report`."""
    started = time.perf_counter()
    jobs = [(env, variant, seed) for env in exp.episodes for variant in exp.variants
            for seed in exp.seeds]
    print(f"{len(jobs)} checkpoints in {exp.jobs} processes", flush=True)
    results = Parallel(n_jobs=exp.jobs)(delayed(evaluate)(exp, *job) for job in jobs)
    for (env, variant, seed), rows in zip(jobs, results, strict=True):
        (out / "runs" / env / variant).mkdir(parents=True, exist_ok=True)
        write_csv(out / "runs" / env / variant / f"seed{seed}.csv", rows)
    timed = speed(exp)  # rows of envs not planned in this invocation are kept
    kept = [row for row in (read_csv(out / "speed.csv") if (out / "speed.csv").exists() else [])
            if row["env"] not in exp.episodes]
    write_csv(out / "speed.csv", kept + timed)
    summary = report(exp, out)
    write_bench_record(out / f"bench_{'_'.join(exp.episodes)}.json", exp,
                       time.perf_counter() - started,
                       machine_info(processes=exp.jobs, torch_threads_per_process=1))
    for row in summary:
        print(f"{row['env']:<18} {row['variant']:<28} {row['controller']:<10} H={row['horizon']} "
              f"noise {row['obs_noise']:g}: return IQM {row['return_iqm']:.1f} "
              f"[{row['ci_low']:.1f}, {row['ci_high']:.1f}], gain over policy "
              f"{row['gain_over_policy_iqm']:.1f}", flush=True)
