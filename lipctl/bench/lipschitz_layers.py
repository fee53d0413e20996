"""Lipschitz bound against return and robustness, per layer family (`lipctl bench
experiment=lipschitz_layers`), in three sections:

- critics: SAC with its critics constrained by each family (conf/lipschitz/<family>) at bounds
  set as fractions of the unconstrained critic's sampled state-Lipschitz constant on that env
  (measured on pilot seeds and written in the experiment config), the unconstrained baseline,
  and the optimiser question of Newhouse et al. (a family trained by Muon instead of Adam);
- policies: the same with the actor constrained instead (bounds as fractions of the
  unconstrained policy's sampled constant, in action units per state unit), each final policy
  then attacked by PGD on its measured state at radii in units of the states' std;
- behaviour cloning: the `lipschitz_bc` benchmark with a clone per family at each bound.

Every arm's seeds train stacked in one process (`lipctl train seeds=[...]`, `stack` seeds per
process), `jobs` processes at once over all (env, arm, stack) jobs; each seed writes the folder
its separate run would. Finished runs are kept and unfinished ones resume.

Writes, under the output folder: runs/<env>/<arm>/seed<k>/ (eval.csv, summary.json, downsampled
train.csv; a policy run's robustness.json), bc/ (runs/, summary.csv, tradeoff_<system>_<family>
.png, as `lipschitz_bc` writes them), and from those files alone (`report`, also
`replot=true`): summary.csv (critic section) and policies.csv (policy section), one row per env
x arm: network, family, fraction, configured bound and optimiser, then the variant sweep's
columns (final / best / area-under-the-curve returns as IQMs with stratified-bootstrap CIs, the
critics' certified and sampled constants, seconds per 1k env steps) and for policies the
certified and sampled policy constants and the attacked returns; pareto.png and policies.png
(certified bound against return, one line per family, per env), curves.png, lipschitz.png,
bench.json.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from functools import lru_cache
from importlib import resources
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from joblib import Parallel, delayed
from matplotlib.ticker import NullFormatter
from omegaconf import DictConfig, OmegaConf

from lipctl.agents.saved import load_exportable
from lipctl.bench import lipschitz_bc, variant_sweep
from lipctl.bench.kit import write_bench_record
from lipctl.bench.report import interval_estimate
from lipctl.bench.variant_sweep import run_overrides
from lipctl.commands import train
from lipctl.config import ConfigError, check_overrides, require_number, require_seeds
from lipctl.control.robustness import robustness_sweep
from lipctl.envs import make_env
from lipctl.envs.files import write_csv, write_json


def arm_name(family: str, fraction: float, optimizer: str | None = None,
             network: str = "critic") -> str:
    """The folder and table name of a family at a fraction of the reference constant."""
    return (f"{'actor_' if network == 'actor' else ''}{family}_{fraction:g}x"
            + (f"_{optimizer}" if optimizer else ""))


def arms(exp: DictConfig, network: str) -> dict[str, dict]:
    """Arm name -> {network, family, fraction, optimizer} for the critic ("critic") or the
    policy ("actor") section: the unconstrained baseline (family None, shared by both), every
    family at every fraction under Adam, then the optimiser arms."""
    section = exp if network == "critic" else exp.policies
    table: dict[str, dict] = {exp.baseline: {"network": None, "family": None, "fraction": None,
                                             "optimizer": "adam"}}
    for family in section.families:
        for fraction in section.fractions:
            table[arm_name(family, fraction, network=network)] = {
                "network": network, "family": family, "fraction": fraction,
                "optimizer": "adam"}
    for arm in section.optimizer_arms:
        table[arm_name(arm.family, arm.fraction, arm.optimizer, network)] = {
            "network": network, "family": arm.family, "fraction": arm.fraction,
            "optimizer": arm.optimizer}
    return table


def env_arms(exp: DictConfig, env: str) -> dict[str, dict]:
    """Every arm that runs on `env`: the critic arms, and the policy arms on a policy env."""
    table = arms(exp, "critic")
    return table | arms(exp, "actor") if env in exp.policies.envs else table


def bound(exp: DictConfig, env: str, arm: dict) -> float:
    """An arm's certified bound on `env`: the critic's, or the policy's in action units per
    state unit."""
    reference = (exp.critic_lipschitz if arm["network"] == "critic"
                 else exp.policies.policy_lipschitz)[env]
    return round(arm["fraction"] * reference, 3)


def family_fields(family: str) -> dict[str, str]:
    """The layer and activation of conf/lipschitz/<family>.yaml (an actor takes the same)."""
    node = OmegaConf.load(resources.files("lipctl.conf").joinpath("lipschitz", f"{family}.yaml"))
    return {"layer": node.get("layer", "spectral"), "activation": node.get("activation", "relu")}


@lru_cache
def action_half_range(env: str) -> float:
    """The largest half-range of `env`'s actions: a policy whose [-1, 1] output is
    L-Lipschitz is L x this in action units (composed and read once per env)."""
    ids = []
    check_overrides("train", [f"env={env}"], lambda cfg: ids.append(cfg.env.id))
    space = make_env(ids[0]).action_space
    return float(np.max((space.high - space.low) / 2))


def arm_overrides(exp: DictConfig, env: str, arm: dict) -> list[str]:
    """The `lipctl train` overrides of one arm on one env (after the experiment's)."""
    optimizer = f"agent.learner.optimizer={arm['optimizer']}"
    if arm["network"] is None:
        return ["lipschitz=none", optimizer]
    if arm["network"] == "critic":
        return [f"lipschitz={arm['family']}", f"lipschitz.L={bound(exp, env, arm)}", optimizer]
    fields = family_fields(arm["family"])
    scale = round(bound(exp, env, arm) / action_half_range(env), 6)
    return ["lipschitz=none", optimizer, "agent.learner.actor_lipschitz={layer: "
            f"{fields['layer']}, L: {scale}, activation: {fields['activation']}}}"]


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
    require_seeds(exp.seeds)
    for key in ("fractions", "policies.fractions", "policies.attack.eps"):
        for i in range(len(OmegaConf.select(exp, key))):
            require_number(exp, f"{key}.{i}", 0, exclusive=True)
    require_number(exp, "policies.attack.episodes", 1, integer=True)
    require_number(exp, "policies.attack.steps", 1, integer=True)
    if not exp.envs:
        raise ConfigError("experiment.envs", "needs at least one env")
    for env in exp.policies.envs:
        if env not in exp.envs:
            raise ConfigError("experiment.policies.envs", f"{env} is not among experiment.envs")
        require_number(exp, f"policies.policy_lipschitz.{env}", 0, exclusive=True)
        std = np.asarray(exp.policies.attack.state_std.get(env, []), dtype=np.float64)
        if not std.size or not np.all(std > 0):
            raise ConfigError("experiment.policies.attack.state_std",
                              f"needs the states' per-dimension std (> 0) on {env}")
    lipschitz_bc.validate(bc_experiment(exp))
    for env in exp.envs:
        if env not in exp.critic_lipschitz:
            raise ConfigError("experiment.critic_lipschitz",
                              f"needs the unconstrained critic's constant on {env}")
        require_number(exp, f"critic_lipschitz.{env}", 0, exclusive=True)
        for arm in env_arms(exp, env).values():
            check_overrides("train", [f"env={env}", "seeds=[0]", *run_overrides(exp, env),
                                      *arm_overrides(exp, env, arm)], train.validate)


def run_jobs(exp: DictConfig, work: Path) -> None:
    """Every (env, arm, stack) job, `exp.jobs` at once, in the order of the envs; the failed
    ones are named at the end (their finished seeds are kept, and a rerun resumes them)."""
    jobs = [(env, name, arm, seeds) for env in exp.envs
            for name, arm in env_arms(exp, env).items() for seeds in stacks(exp)]

    def run(env: str, name: str, arm: dict, seeds: list[int]) -> float:
        started = time.perf_counter()
        command = train_command(exp, env, arm, work / env / name, seeds)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - started

    failed = []
    with ThreadPoolExecutor(max_workers=exp.jobs) as pool:
        futures = {pool.submit(run, *job): job for job in jobs}
        for done, future in enumerate(as_completed(futures), 1):
            env, name, _, seeds = futures[future]
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


ROBUSTNESS = "robustness.json"  # each policy run's attack report, beside its eval.csv


def attack_run(folder: Path, attack: dict, state_std: list[float]) -> None:
    """The closed-loop attack of one run's final policy (`robustness_sweep`, radii in units of
    the states' std) -> folder/robustness.json."""
    torch.set_num_threads(1)
    network = load_exportable(folder / "checkpoint.pt")
    report = robustness_sweep(network.module, network.env_id, attack["eps"], attack["episodes"],
                              attack["norm"], attack["steps"], attack["seed"],
                              network.certificate, state_scale=state_std)
    write_json(folder / ROBUSTNESS, report.to_dict())  # whole, or not at all


def attack_runs(exp: DictConfig, work: Path) -> None:
    """Attack the final policy of every run of the policy section that has no report yet."""
    attack = OmegaConf.to_container(exp.policies.attack, resolve=True)
    todo = [(work / env / name / f"seed{seed}", list(attack["state_std"][env]))
            for env in exp.policies.envs for name in arms(exp, "actor") for seed in exp.seeds
            if not (work / env / name / f"seed{seed}" / ROBUSTNESS).exists()]
    print(f"attacking {len(todo)} policies", flush=True)
    Parallel(n_jobs=exp.jobs)(delayed(attack_run)(folder, attack, std) for folder, std in todo)


def bc_experiment(exp: DictConfig) -> DictConfig:
    """The behaviour-cloning section as a `lipschitz_bc` experiment: its clones in every family
    of `bc_families`, each with its conf/lipschitz layer and activation."""
    bc = OmegaConf.create(OmegaConf.to_container(exp.bc, resolve=True))
    bc.families = {family: family_fields(family) for family in exp.bc_families}
    return bc


def section_view(exp: DictConfig, network: str) -> DictConfig:
    """A section as the variant sweep's reporting reads it: its arms as variants, and for the
    policy section only its envs."""
    view = OmegaConf.create(OmegaConf.to_container(exp, resolve=True))
    view.variants = list(arms(exp, network))
    if network == "actor":
        view.envs = {env: view.envs[env] for env in exp.policies.envs}
    return view


def copy_runs(exp: DictConfig, work: Path, out: Path) -> None:
    """Each run's files under out/runs/ (as the variant sweep copies them), and each policy
    run's attack report."""
    for network in ("critic", "actor"):
        variant_sweep.copy_runs(section_view(exp, network), work, out)
    for env in exp.policies.envs:
        for name in arms(exp, "actor"):
            for seed in exp.seeds:
                shutil.copy2(work / env / name / f"seed{seed}" / ROBUSTNESS,
                             out / "runs" / env / name / f"seed{seed}" / ROBUSTNESS)


def described(exp: DictConfig, network: str, rows: list[dict]) -> list[dict]:
    """The sweep's rows with each arm's network, family, fraction, configured bound and
    optimiser first."""
    table = arms(exp, network)
    result = []
    for row in rows:
        arm = table[row["variant"]]
        result.append({"env": row["env"], "arm": row["variant"],
                       "network": arm["network"] or "none",
                       "family": arm["family"] or "unconstrained",
                       "fraction": arm["fraction"],
                       "bound": None if arm["family"] is None else bound(exp, row["env"], arm),
                       "optimizer": arm["optimizer"],
                       **{k: v for k, v in row.items() if k not in ("env", "variant")}})
    return result


def compared(exp: DictConfig, network: str, rows: list[dict]) -> list[dict]:
    """Each row with its certified bound over the section's reference constant on its env, and
    whether its final return (IQM) keeps the baseline's: at or above the lower end of the
    unconstrained baseline's 95% CI."""
    reference = (exp.critic_lipschitz if network == "critic"
                 else exp.policies.policy_lipschitz)
    certified = "critic_lipschitz_upper" if network == "critic" else "policy_lipschitz_upper"
    base = {row["env"]: row for row in rows if row["arm"] == exp.baseline}
    return [row | {"certified_over_reference": round(row[certified] / reference[row["env"]], 3),
                   "keeps_baseline_return": row["final_return_iqm"]
                   >= base[row["env"]]["ci_low"]} for row in rows]


def _estimate(values: list[float], name: str, digits: int = 1) -> dict[str, float]:
    point, low, high = interval_estimate(values, "iqm")
    return {f"{name}_iqm": round(point, digits), f"{name}_ci_low": round(low, digits),
            f"{name}_ci_high": round(high, digits)}


def attack_columns(exp: DictConfig, runs_dir: Path, env: str, arm: str) -> dict[str, float]:
    """Over an arm's seeds: the policy's certified and sampled constants (medians, action units
    per state unit) and the attack report's returns (IQM, 95% CI): nominal, and under noise
    and under the PGD adversary at every radius."""
    reports = [json.loads((runs_dir / env / arm / f"seed{seed}" / ROBUSTNESS).read_text())
               for seed in exp.seeds]
    columns = {
        "policy_lipschitz_upper": round(float(np.median(
            [r["lipschitz_upper"] for r in reports])), 3),
        "policy_lipschitz_lower": round(float(np.median(
            [r["lipschitz_lower"] for r in reports])), 3),
        **_estimate([r["nominal_mean"] for r in reports], "attack_nominal_return")}
    for i, eps in enumerate(exp.policies.attack.eps):
        for kind in ("noise", "attack"):
            columns |= _estimate([r["rows"][i][f"{kind}_mean"] for r in reports],
                                 f"{kind}_return_eps{eps:g}")
    return columns


def policy_rows(exp: DictConfig, out: Path) -> list[dict]:
    """One row per policy env x policy arm: the training summary and the attack columns."""
    view = section_view(exp, "actor")
    rows = described(exp, "actor", variant_sweep.summarize(
        variant_sweep.collect(view, out / "runs"), view))
    rows = [row | attack_columns(exp, out / "runs", row["env"], row["arm"]) for row in rows]
    return compared(exp, "actor", rows)


def _family_lines(ax: plt.Axes, rows: list[dict], families: list[str], x: str, y: str,
                  low: str, high: str) -> None:
    """One line per family under Adam over its bounds, and the other optimisers' arms as
    single markers."""
    for family in families:
        line = sorted((row for row in rows
                       if row["family"] == family and row["optimizer"] == "adam"),
                      key=lambda row: row["bound"])
        _error_bars(ax, line, x, y, low, high, marker="o", label=family)
    for row in rows:
        if row["optimizer"] != "adam" and row["family"] != "unconstrained":
            _error_bars(ax, [row], x, y, low, high, marker="s", linestyle="none",
                        label=f"{row['family']} + {row['optimizer']}")


def _error_bars(ax: plt.Axes, rows: list[dict], x: str, y: str, low: str, high: str,
                **style: object) -> None:
    values = np.array([row[y] for row in rows])
    ax.errorbar([row[x] for row in rows], values, capsize=3, **style,
                yerr=np.array([values - [row[low] for row in rows],
                               [row[high] for row in rows] - values]))


def _baseline_band(ax: plt.Axes, row: dict, y: str, low: str, high: str) -> None:
    ax.axhspan(row[low], row[high], color="grey", alpha=0.2)
    ax.axhline(row[y], color="grey", label="unconstrained (IQM, CI)")


def _log_bound_axis(ax: plt.Axes, label: str) -> None:
    """A log x axis for certified bounds, labelled at the decades only (minor labels collide)."""
    ax.set(xscale="log", xlabel=label)
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_critic_pareto(exp: DictConfig, rows: list[dict], path: Path) -> None:
    """Per env: the critics' certified bound (median over seeds) against the final return (IQM,
    95% CI), one line per family, and the unconstrained baseline as a band."""
    envs = list(exp.envs)
    fig, axes = plt.subplots(1, len(envs), figsize=(4.6 * len(envs), 3.6), squeeze=False)
    for ax, env in zip(axes[0], envs, strict=True):
        mine = [row for row in rows if row["env"] == env]
        base = next(row for row in mine if row["arm"] == exp.baseline)
        _baseline_band(ax, base, "final_return_iqm", "ci_low", "ci_high")
        _family_lines(ax, mine, list(exp.families), "critic_lipschitz_upper",
                      "final_return_iqm", "ci_low", "ci_high")
        _log_bound_axis(ax, "critic's certified Lipschitz bound (median over seeds)")
        ax.set(ylabel="final return (IQM, 95% CI)", title=env)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_policy_pareto(exp: DictConfig, rows: list[dict], path: Path) -> None:
    """Per policy env, one panel for the clean return and one per attack radius: the policy's
    certified bound against the return under attack (IQM, 95% CI), one line per family."""
    panels = [("attack_nominal_return", "clean return")] + [
        (f"attack_return_eps{eps:g}", f"return under PGD, eps = {eps:g} std")
        for eps in exp.policies.attack.eps]
    envs = list(exp.policies.envs)
    fig, axes = plt.subplots(len(envs), len(panels), figsize=(4.2 * len(panels), 3.5 * len(envs)),
                             squeeze=False)
    for env, row_axes in zip(envs, axes, strict=True):
        mine = [row for row in rows if row["env"] == env]
        base = next(row for row in mine if row["arm"] == exp.baseline)
        for ax, (column, title) in zip(row_axes, panels, strict=True):
            keys = (f"{column}_iqm", f"{column}_ci_low", f"{column}_ci_high")
            _baseline_band(ax, base, *keys)
            _family_lines(ax, mine, list(exp.policies.families), "policy_lipschitz_upper", *keys)
            _log_bound_axis(ax, "policy's certified bound (action / state units)")
            ax.set(ylabel="return (IQM, 95% CI)", title=f"{env}: {title}")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(exp: DictConfig, out: Path) -> list[dict]:
    """summary.csv and pareto.png (critic section), policies.csv and policies.png (policy
    section), curves.png and lipschitz.png, from out/runs/ alone; and the behaviour-cloning
    section's report in out/bc/."""
    lipschitz_bc.report(bc_experiment(exp), out / "bc")
    view = section_view(exp, "critic")
    runs = variant_sweep.collect(view, out / "runs")
    rows = compared(exp, "critic", described(exp, "critic", variant_sweep.summarize(runs, view)))
    write_csv(out / "summary.csv", rows)
    plot_critic_pareto(exp, rows, out / "pareto.png")
    variant_sweep.plot_curves(runs, view, out / "curves.png")
    variant_sweep.plot_state_lipschitz(runs, out / "lipschitz.png")
    policies = policy_rows(exp, out)
    write_csv(out / "policies.csv", policies)
    plot_policy_pareto(exp, policies, out / "policies.png")
    return rows + policies


def run_benchmark(exp: DictConfig, out: Path, work: Path) -> None:
    """Train every arm (resuming unfinished runs), attack the policies, copy the per-run files,
    then `report`."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    run_jobs(exp, work)
    attack_runs(exp, work)
    copy_runs(exp, work, out)
    lipschitz_bc.run_benchmark(bc_experiment(exp), out / "bc", work / "bc")
    rows = report(exp, out)
    write_bench_record(out / "bench.json", exp, time.perf_counter() - started)
    for row in rows:
        print(f"{row['env']:<18} {row['arm']:<26} return IQM {row['final_return_iqm']:>8.1f} "
              f"[{row['ci_low']:.1f}, {row['ci_high']:.1f}]  certified critic bound "
              f"{row['critic_lipschitz_upper']:.4g}"
              + (f", policy {row['policy_lipschitz_upper']:.4g}"
                 if "policy_lipschitz_upper" in row else ""), flush=True)
