"""Stacked seeds against separate processes: SAC's env steps per second per seed when S seeds
train in one process (`lipctl train seeds=[...]`) and when each seed is its own process.

For every env, critic/actor width and seed count S of the experiment config, three ways to run
the same S seeds, side by side in one benchmark, each a real `lipctl train` command:
- `stacked_1core`: one process, one torch thread, the S seeds stacked;
- `stacked_2core`: the S seeds split into `jobs` stacks, run at once through the joblib launcher;
- `separate`: S processes of one seed each, `jobs` at a time through the joblib launcher (what
  a sweep did before seeds stacked).
Per way: the wall time of the whole command, and from each seed's train.csv its env steps per
second over the update phase (after warm-up; a stacked run's seeds share its clock), and from
each process's summary.json its peak memory. `stacked_1core_gain`: S times a stacked seed's
rate over one run's alone (how many more env steps per second one core gives);
`stacked_2core_wall_vs_separate`: the wall time of the S seeds on 2 cores, stacked over
separate.

Writes out/runs/<env>/w<width>/<way>_S<S>/ (each seed's train.csv and summary.json, and
timing.json: the command's wall seconds) and, from those files alone (`report`, also
`lipctl bench experiment=stacked_seeds replot=true`), summary.csv and throughput.png; bench.json
(settings, machine).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from omegaconf import DictConfig

from lipctl.bench.kit import machine_info, write_bench_record
from lipctl.config import ConfigError, require_number
from lipctl.envs.files import read_csv, write_csv, write_json

WAYS = ("stacked_1core", "stacked_2core", "separate")


def validate(exp: DictConfig) -> None:
    require_number(exp, "jobs", 1, integer=True)
    require_number(exp, "steps", 1, integer=True)
    require_number(exp, "warmup_steps", 0, integer=True)
    if exp.warmup_steps >= exp.steps:
        raise ConfigError("experiment.warmup_steps", "must be below experiment.steps")
    for key in ("seed_counts", "widths"):
        values = list(exp[key])
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                             for v in values):
            raise ConfigError(f"experiment.{key}", f"must be positive integers, got {values}")
    if not exp.envs:
        raise ConfigError("experiment.envs", "needs at least one env")


def _stacks(seeds: list[int], jobs: int) -> list[list[int]]:
    count = min(jobs, len(seeds))
    return [list(part) for part in np.array_split(seeds, count)]


def _command(exp: DictConfig, env: str, width: int, folder: Path, seeds: list[int], way: str
             ) -> list[str]:
    common = [f"env={env}", f"agent.learner.hidden=[{width},{width}]",
              f"loop.total_steps={exp.steps}", f"loop.warmup_steps={exp.warmup_steps}",
              *exp.overrides, *exp.envs[env], "progress=false"]
    train = [sys.executable, "-m", "lipctl", "train"]
    if way == "stacked_1core":
        return [*train, f"seeds=[{','.join(map(str, seeds))}]",
                f"hydra.run.dir={folder}/seed${{seed}}", *common]
    launcher = ["-m", "hydra/launcher=local", f"hydra.launcher.n_jobs={exp.jobs}",
                f"hydra.sweep.dir={folder}", "hydra.sweep.subdir=seed${seed}"]
    if way == "stacked_2core":
        stacks = ",".join(f"[{','.join(map(str, stack))}]" for stack in _stacks(seeds, exp.jobs))
        return [*train, *launcher, f"seeds={stacks}", *common]
    return [*train, *launcher, f"seed={','.join(map(str, seeds))}", *common]


def _keep(folder: Path, target: Path, seeds: list[int], seconds: float) -> None:
    """Each seed's train.csv and summary.json, and the command's wall time, under target."""
    for seed in seeds:
        (target / f"seed{seed}").mkdir(parents=True, exist_ok=True)
        for name in ("train.csv", "summary.json"):
            shutil.copy(folder / f"seed{seed}" / name, target / f"seed{seed}" / name)
    write_json(target / "timing.json", {"wall_seconds": seconds})


def run_benchmark(exp: DictConfig, out: Path, work: Path) -> None:
    """Run every (env, width, S, way) command in turn and report."""
    started = time.perf_counter()
    for env in exp.envs:
        for width in exp.widths:
            for count in exp.seed_counts:
                seeds = list(range(count))
                for way in WAYS:
                    name = f"{env}/w{width}/{way}_S{count}"
                    folder = work / name
                    shutil.rmtree(folder, ignore_errors=True)
                    command = _command(exp, env, width, folder, seeds, way)
                    clock = time.perf_counter()
                    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
                    seconds = time.perf_counter() - clock
                    _keep(folder, out / "runs" / name, seeds, seconds)
                    print(f"[{name}] {seconds:.1f} s", flush=True)
    write_bench_record(out / "bench.json", exp, time.perf_counter() - started,
                       machine_info(torch_threads=1))
    report(exp, out)


def _update_rate(train_csv: Path, warmup: int) -> float:
    """Median env steps per second over the logged intervals after warm-up."""
    rates = [float(row["steps_per_s"]) for row in read_csv(train_csv)
             if int(row["step"]) > warmup and row.get("steps_per_s")]
    return float(np.median(rates))


def report(exp: DictConfig, out: Path) -> None:
    """summary.csv and throughput.png from out/runs/ and the settings the runs were made with
    (bench.json), not `exp`, which may have changed since."""
    settings = json.loads((out / "bench.json").read_text())["settings"]
    rows = []
    for env in settings["envs"]:
        for width in settings["widths"]:
            for count in settings["seed_counts"]:
                row = {"env": env, "width": width, "seeds": count}
                for way in WAYS:
                    folder = out / "runs" / env / f"w{width}" / f"{way}_S{count}"
                    rates = [_update_rate(folder / f"seed{k}" / "train.csv",
                                          settings["warmup_steps"]) for k in range(count)]
                    peaks = [json.loads((folder / f"seed{k}" / "summary.json").read_text())
                             ["peak_rss_mb"] for k in range(count)]
                    wall = json.loads((folder / "timing.json").read_text())["wall_seconds"]
                    row[f"{way}_steps_per_s_per_seed"] = round(float(np.median(rates)), 1)
                    row[f"{way}_wall_s"] = round(wall, 1)
                    row[f"{way}_peak_rss_mb"] = round(max(peaks), 1)
                rows.append(row)
    single = {(r["env"], r["width"]): r["stacked_1core_steps_per_s_per_seed"]
              for r in rows if r["seeds"] == 1}
    for row in rows:  # env steps per second of all S seeds on one core, over one run's
        row["stacked_1core_gain"] = round(row["seeds"] * row["stacked_1core_steps_per_s_per_seed"]
                                          / single[(row["env"], row["width"])], 2)
        row["stacked_2core_wall_vs_separate"] = round(
            row["stacked_2core_wall_s"] / row["separate_wall_s"], 2)
    write_csv(out / "summary.csv", rows)
    _plot(rows, out / "throughput.png")


def _plot(rows: list[dict], path: Path) -> None:
    """Per (env, width): the update-phase env steps per second of all S seeds together (S x
    each seed's) stacked on one core against one run alone (top), and the wall time of the S
    seeds on 2 cores, stacked against separate processes (bottom)."""
    panels = sorted({(r["env"], r["width"]) for r in rows})
    fig, axes = plt.subplots(2, len(panels), figsize=(3.6 * len(panels), 6), squeeze=False)
    for column, (env, width) in enumerate(panels):
        part = [r for r in rows if r["env"] == env and r["width"] == width]
        counts = [r["seeds"] for r in part]
        top, bottom = axes[0][column], axes[1][column]
        top.plot(counts, [r["seeds"] * r["stacked_1core_steps_per_s_per_seed"] for r in part],
                 "o-", label="S seeds stacked, one core")
        top.axhline(part[0]["stacked_1core_steps_per_s_per_seed"], color="k", ls=":",
                    label="one run alone")
        top.set(title=f"{env}, {width}x{width}", ylabel="env steps / s, all seeds",
                ylim=(0, None))
        bottom.plot(counts, [r["stacked_2core_wall_s"] for r in part], "s-",
                    label="stacked, 2 cores")
        bottom.plot(counts, [r["separate_wall_s"] for r in part], "^-",
                    label="separate processes, 2 cores")
        bottom.set(xlabel="seeds S", ylabel="wall seconds, all S seeds", ylim=(0, None))
        for ax in (top, bottom):
            ax.set_xticks(counts, [str(c) for c in counts])
    axes[0][0].legend(fontsize=7)
    axes[1][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
