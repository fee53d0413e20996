"""Lipschitz bound against return, per layer family (`lipctl bench experiment=lipschitz_layers`):
SAC with its critics constrained by each family (conf/lipschitz/<family>) at bounds set as
fractions of the unconstrained critic's sampled state-Lipschitz constant on that env (measured
on pilot seeds and written in the experiment config), the unconstrained baseline, and the
optimiser question of Newhouse et al. (a family trained by Muon instead of Adam, at one bound).

Every arm's seeds train stacked in one process (`lipctl train seeds=[...]`, `stack` seeds per
process), `jobs` processes at once over all (env, arm, stack) jobs; each seed writes the folder
its separate run would. Finished runs are kept and unfinished ones resume.

Writes, under the output folder: runs/<env>/<arm>/seed<k>/ (eval.csv, summary.json, downsampled
train.csv), and from those files alone (`report`, also `replot=true`) summary.csv (one row per
env x arm: family, fraction, configured bound and optimiser, then the variant sweep's columns:
final / best / area-under-the-curve returns as IQMs with stratified-bootstrap CIs, the critics'
certified and sampled constants, seconds per 1k env steps), pareto.png (certified critic bound
against final return, one line per family, per env), curves.png, lipschitz.png, bench.json.
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from omegaconf import DictConfig, OmegaConf

from lipctl.bench import variant_sweep
from lipctl.bench.report import write_csv
from lipctl.bench.variant_sweep import run_overrides
from lipctl.commands import train
from lipctl.config import ConfigError, check_overrides, require_number


def arm_name(family: str, fraction: float, optimizer: str | None = None) -> str:
    """The folder and table name of a family at a fraction of the reference constant."""
    return f"{family}_{fraction:g}x" + (f"_{optimizer}" if optimizer else "")


def arms(exp: DictConfig) -> dict[str, dict]:
    """Arm name -> {family, fraction, optimizer}: the baseline (family None), every family at
    every fraction under Adam, then the optimiser arms."""
    table: dict[str, dict] = {exp.baseline: {"family": None, "fraction": None,
                                             "optimizer": "adam"}}
    for family in exp.families:
        for fraction in exp.fractions:
            table[arm_name(family, fraction)] = {"family": family, "fraction": fraction,
                                                 "optimizer": "adam"}
    for arm in exp.optimizer_arms:
        table[arm_name(arm.family, arm.fraction, arm.optimizer)] = {
            "family": arm.family, "fraction": arm.fraction, "optimizer": arm.optimizer}
    return table


def bound(exp: DictConfig, env: str, fraction: float) -> float:
    """The critic's certified bound of an arm at `fraction` on `env`."""
    return round(fraction * exp.critic_lipschitz[env], 3)


def arm_overrides(exp: DictConfig, env: str, arm: dict) -> list[str]:
    """The `lipctl train` overrides of one arm on one env (after the experiment's)."""
    if arm["family"] is None:
        return ["lipschitz=none", f"agent.learner.optimizer={arm['optimizer']}"]
    return [f"lipschitz={arm['family']}", f"lipschitz.L={bound(exp, env, arm['fraction'])}",
            f"agent.learner.optimizer={arm['optimizer']}"]


def stacks(exp: DictConfig) -> list[list[int]]:
    """The seeds in stacks of at most `exp.stack`, one process each."""
    seeds = list(exp.seeds)
    return [seeds[i:i + exp.stack] for i in range(0, len(seeds), exp.stack)]


def train_command(exp: DictConfig, env: str, arm: dict, folder: Path,
                  seeds: list[int]) -> list[str]:
    """`lipctl train` of one stack of seeds of one arm, each seed in folder/seed<k>."""
    return [sys.executable, "-m", "lipctl", "train", f"env={env}",
            f"seeds=[{','.join(map(str, seeds))}]", f"hydra.run.dir={folder}/seed${{seed}}",
            "progress=false", "resume=true", *run_overrides(exp, env),
            *arm_overrides(exp, env, arm)]


def validate(exp: DictConfig) -> None:
    """Names, numbers and every arm's composed train config, before any training starts."""
    require_number(exp, "jobs", 1, integer=True)
    require_number(exp, "stack", 1, integer=True)
    if not exp.seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0
                            for s in exp.seeds):
        raise ConfigError("experiment.seeds", f"needs integers >= 0, got {exp.seeds!r}")
    for i in range(len(exp.fractions)):
        require_number(exp, f"fractions.{i}", 0, exclusive=True)
    if not exp.envs:
        raise ConfigError("experiment.envs", "needs at least one env")
    for env in exp.envs:
        if env not in exp.critic_lipschitz:
            raise ConfigError("experiment.critic_lipschitz",
                              f"needs the unconstrained critic's constant on {env}")
        require_number(exp, f"critic_lipschitz.{env}", 0, exclusive=True)
        for arm in arms(exp).values():
            check_overrides("train", [f"env={env}", "seeds=[0]", *run_overrides(exp, env),
                                      *arm_overrides(exp, env, arm)], train.validate)


def run_jobs(exp: DictConfig, work: Path) -> None:
    """Every (env, arm, stack) job, `exp.jobs` at once; the failed ones are named at the end
    (their finished seeds are kept, and a rerun resumes them)."""
    jobs = [(env, name, seeds) for env in exp.envs for name in arms(exp) for seeds in stacks(exp)]
    table = arms(exp)

    def run(job: tuple[str, str, list[int]]) -> float:
        env, name, seeds = job
        started = time.perf_counter()
        command = train_command(exp, env, table[name], work / env / name, seeds)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - started

    failed = []
    with ThreadPoolExecutor(max_workers=exp.jobs) as pool:
        futures = {pool.submit(run, job): job for job in jobs}
        for done, future in enumerate(as_completed(futures), 1):
            env, name, seeds = futures[future]
            try:
                seconds = future.result()
                print(f"[{done}/{len(jobs)}] {env} {name} seeds {seeds}: {seconds:.0f} s",
                      flush=True)
            except subprocess.CalledProcessError as error:
                failed.append(f"{env} {name} seeds {seeds} (exit {error.returncode})")
                print(f"[{done}/{len(jobs)}] {env} {name} seeds {seeds}: FAILED", flush=True)
    if failed:
        raise RuntimeError(f"{len(failed)} training job(s) failed: {'; '.join(failed)}; "
                           "rerun to resume them")


def sweep_view(exp: DictConfig) -> DictConfig:
    """The experiment as the variant sweep's reporting reads it: arms as its variants."""
    view = OmegaConf.create(OmegaConf.to_container(exp, resolve=True))
    view.variants = list(arms(exp))
    return view


def summary_rows(exp: DictConfig, rows: list[dict]) -> list[dict]:
    """The sweep's rows with each arm's family, fraction, configured bound and optimiser first."""
    table = arms(exp)
    described = []
    for row in rows:
        arm = table[row["variant"]]
        configured = None if arm["family"] is None else bound(exp, row["env"], arm["fraction"])
        described.append({"env": row["env"], "arm": row["variant"],
                          "family": arm["family"] or "unconstrained",
                          "fraction": arm["fraction"], "bound": configured,
                          "optimizer": arm["optimizer"],
                          **{k: v for k, v in row.items() if k not in ("env", "variant")}})
    return described


def plot_pareto(exp: DictConfig, rows: list[dict], path: Path) -> None:
    """Per env: the critics' certified bound (median over seeds) against the final return (IQM,
    95% CI), one line per family over its fractions under Adam, the optimiser arms as single
    markers, and the unconstrained baseline as a band."""
    envs = list(exp.envs)
    fig, axes = plt.subplots(1, len(envs), figsize=(4.6 * len(envs), 3.6), squeeze=False)
    for ax, env in zip(axes[0], envs, strict=True):
        mine = [row for row in rows if row["env"] == env]
        base = next(row for row in mine if row["arm"] == exp.baseline)
        ax.axhspan(base["ci_low"], base["ci_high"], color="grey", alpha=0.2)
        ax.axhline(base["final_return_iqm"], color="grey", label="unconstrained (IQM, CI)")
        for family in exp.families:
            line = sorted((row for row in mine
                           if row["family"] == family and row["optimizer"] == "adam"),
                          key=lambda row: row["bound"])
            x = [row["critic_lipschitz_upper"] for row in line]
            y = np.array([row["final_return_iqm"] for row in line])
            error = np.array([[v - row["ci_low"] for v, row in zip(y, line, strict=True)],
                              [row["ci_high"] - v for v, row in zip(y, line, strict=True)]])
            ax.errorbar(x, y, yerr=error, marker="o", capsize=3, label=family)
        for row in mine:
            if row["optimizer"] != "adam" and row["family"] != "unconstrained":
                ax.errorbar([row["critic_lipschitz_upper"]], [row["final_return_iqm"]],
                            yerr=[[row["final_return_iqm"] - row["ci_low"]],
                                  [row["ci_high"] - row["final_return_iqm"]]],
                            marker="s", linestyle="none", capsize=3,
                            label=f"{row['family']} + {row['optimizer']}")
        ax.set(xscale="log", xlabel="critic's certified Lipschitz bound (median over seeds)",
               ylabel="final return (IQM, 95% CI)", title=env)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(exp: DictConfig, out: Path) -> list[dict]:
    """summary.csv, pareto.png, curves.png and lipschitz.png from out/runs/ alone."""
    view = sweep_view(exp)
    runs = variant_sweep.collect(view, out / "runs")
    rows = summary_rows(exp, variant_sweep.summarize(runs, view))
    write_csv(out / "summary.csv", rows)
    plot_pareto(exp, rows, out / "pareto.png")
    variant_sweep.plot_curves(runs, view, out / "curves.png")
    variant_sweep.plot_state_lipschitz(runs, out / "lipschitz.png")
    return rows


def run_benchmark(exp: DictConfig, out: Path, work: Path) -> None:
    """Train every arm (resuming unfinished runs), copy the per-run files, then `report`."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    run_jobs(exp, work)
    variant_sweep.copy_runs(sweep_view(exp), work, out)
    rows = report(exp, out)
    variant_sweep.write_bench_json(exp, out, time.perf_counter() - started)
    for row in rows:
        print(f"{row['env']:<18} {row['arm']:<22} return IQM {row['final_return_iqm']:>8.1f} "
              f"[{row['ci_low']:.1f}, {row['ci_high']:.1f}]  certified critic bound "
              f"{row['critic_lipschitz_upper']:.4g}", flush=True)
