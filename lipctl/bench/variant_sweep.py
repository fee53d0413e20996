"""Benchmarks that compare `lipctl train` variants (conf/variant) over seeds and envs, through one
Hydra multirun per env: `mbpo_vs_ensemble` (MBPO with one dynamics model against the ensemble)
and `gail_lipschitz` (off-policy GAIL with and without a Lipschitz discriminator).

The experiment config names the variants, seeds (`seeds`, or a variant's own list in
`variant_seeds`; a variant whose learner stacks, SAC or TD3 without the robust loss, trains its
seeds in one process unless `stack_seeds: false`), envs and overrides, the `baseline` variant that
times are compared with, the summary.json figures reported as medians over seeds (`medians`), the
train.csv columns whose last value (`last_train_metrics`) or mean over training
(`mean_train_metrics`) is reported. `arms` names runs of a variant with overrides of their own
(`arm: {variant: V, overrides: [...], env_overrides: {env: [...]}}`, e.g. a critic bound per env;
`bound_fraction: f` sets the critic's certified bound `lipschitz.L` to f times the baseline's critic
constant on that env: the median over its seeds of the final sampled state-Lipschitz constant, the
baseline's runs trained first) that `variants` lists beside plain variants. Where an env's runs
imitate demonstrations (a `demos=PATH` override), returns are also reported as fractions of the mean
episode return in that file (IQM and CI of the final evaluation, of the best, and of the mean over
all evaluations, the area under the learning curve; how many runs reached 0.9 of it and after how
many steps); elsewhere `solved: {env: return}` gives the level runs are timed to. `ablation` names
variants whose rows are also written to ablation.csv.

Writes, under the output folder: runs/<env>/<variant>/seed<k>/ (each run's eval.csv, summary.json
and downsampled train.csv), and from those files alone (`report`, also `lipctl bench ...
replot=true`) summary.csv (one row per env x variant), curves.png (returns), lipschitz.png (the
critics' Lipschitz constant w.r.t. the state) and, for runs with a discriminator,
discriminator_lipschitz.png (its sampled Lipschitz constant); bench.json (settings, machine, wall
time).
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from omegaconf import DictConfig

from lipctl.bench.kit import write_bench_record
from lipctl.bench.report import interval_estimate, probability_of_improvement
from lipctl.commands import train
from lipctl.config import ConfigError, check_overrides, require_number, require_seeds
from lipctl.envs.demos import load_demos
from lipctl.envs.files import read_csv, write_csv
from lipctl.training import read_summary

TRAIN_ROWS = 200  # train.csv rows kept per run under out/runs/
SOLVED_FRACTION = 0.9  # of the expert's return: the level imitation runs are timed to


def known_variants() -> list[str]:
    """The agent + regulariser pairs of conf/variant."""
    return sorted(path.name.removesuffix(".yaml")
                  for path in resources.files("lipctl.conf").joinpath("variant").iterdir()
                  if path.name.endswith(".yaml"))


def validate(exp: DictConfig) -> None:
    """Names, seeds and the composed train config of every run, before any training starts."""
    require_number(exp, "jobs", 1, integer=True)
    arms = exp.get("arms") or {}
    for name, arm in arms.items():  # the arms the experiment runs
        if name not in exp.variants:
            continue
        if not isinstance(arm, DictConfig) or arm.get("variant") not in known_variants():
            raise ConfigError(f"experiment.arms.{name}", "needs `variant:` one of "
                                                         f"{', '.join(known_variants())}")
        fraction = arm.get("bound_fraction")
        if fraction is not None:
            if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not (
                    0 < fraction < math.inf):
                raise ConfigError(f"experiment.arms.{name}.bound_fraction",
                                  f"must be a finite number > 0, got {fraction!r}")
            if exp.baseline in arms or exp.baseline not in exp.variants:
                raise ConfigError(f"experiment.arms.{name}.bound_fraction", "needs the baseline "
                                  "to be a plain variant of experiment.variants")
        if strays := [env for env in arm.get("env_overrides") or {} if env not in exp.envs]:
            raise ConfigError(f"experiment.arms.{name}.env_overrides",
                              f"env(s) {strays} are not in experiment.envs")
    names = list(dict.fromkeys([*known_variants(), *arms]))
    unknown = [v for v in exp.variants if v not in names]
    if unknown or not exp.variants:
        raise ConfigError("experiment.variants", f"unknown variant(s) {unknown}; choose from "
                                                 f"{', '.join(names)}")
    own = exp.get("variant_seeds") or {}
    if strays := [v for v in own if v not in names]:
        raise ConfigError("experiment.variant_seeds", f"unknown variant(s) {strays}")
    for variant in exp.variants:
        key = f"experiment.variant_seeds.{variant}" if variant in own else "experiment.seeds"
        require_seeds(seeds_of(exp, variant), key)
    if not exp.envs:
        raise ConfigError("experiment.envs", "needs at least one env")
    for env in exp.get("solved") or {}:
        if env not in exp.envs:
            raise ConfigError("experiment.solved", f"env {env!r} is not in experiment.envs")
        require_number(exp, f"solved.{env}")
    plain = [v for v in exp.variants if v not in arms]
    for env in exp.envs:
        if plain:
            check_overrides("train", [f"env={env}", f"variant={','.join(plain)}",
                                      *run_overrides(exp, env)], train.validate)
        for name in (v for v in exp.variants if v in arms):
            bound = ["lipschitz.L=1.0"] if arms[name].get("bound_fraction") is not None else []
            check_overrides("train", [f"env={env}", f"variant={arms[name].variant}",
                                      *run_overrides(exp, env, name), *bound], train.validate)


def run_overrides(exp: DictConfig, env: str, variant: str | None = None) -> list[str]:
    """The overrides of every run, then the env's own, then (for an arm) the arm's and the
    arm's on that env; later ones win where two set a key."""
    arm = arm_settings(exp, variant)
    merged = {override.split("=", 1)[0]: override
              for override in [*exp.overrides, *exp.envs[env], *arm.get("overrides", []),
                               *(arm.get("env_overrides") or {}).get(env, [])]}
    return list(merged.values())


def arm_settings(exp: DictConfig, name: str | None) -> DictConfig | dict:
    """The arm of that name in `arms` (empty for a plain variant)."""
    arms = exp.get("arms") or {}
    return arms[name] if name is not None and name in arms else {}


def variant_of(exp: DictConfig, name: str) -> str:
    """The conf/variant config a name of `variants` runs (an arm's variant, or itself)."""
    return arm_settings(exp, name).get("variant", name)


def seeds_of(exp: DictConfig, variant: str) -> list[int]:
    """A variant's seeds: its own list in `variant_seeds`, else the experiment's `seeds`."""
    return list((exp.get("variant_seeds") or {}).get(variant, exp.seeds))


def seed_groups(exp: DictConfig) -> list[tuple[list[str], list[int]]]:
    """(variants, seeds) groups: plain variants that share a seed list sweep together; each arm
    sweeps alone, arms whose bound follows the baseline's critic last."""
    groups: dict[tuple, list[str]] = {}
    arms = exp.get("arms") or {}
    for variant in exp.variants:
        key = (variant if variant in arms else None, *seeds_of(exp, variant))
        groups.setdefault(key, []).append(variant)
    order = sorted(groups.items(), key=lambda item: arm_settings(exp, item[0][0]).get(
        "bound_fraction") is not None)
    return [(variants, list(key[1:])) for key, variants in order]


def reference_lipschitz(runs: list[Path]) -> float:
    """The median over runs of the final sampled state-Lipschitz constant of the critics (the
    larger of each run's), from their eval.csv."""
    finals = [_state_lipschitz(read_csv(run / "eval.csv"))[-1] for run in runs]
    return float(np.median(finals))


def bound_overrides(exp: DictConfig, sweep_dir: Path, arm: str | None) -> list[str]:
    """`lipschitz.L=` of an arm with a `bound_fraction`, from the baseline's finished runs in
    `sweep_dir` (none for other arms)."""
    fraction = arm_settings(exp, arm).get("bound_fraction")
    if fraction is None:
        return []
    runs = [sweep_dir / exp.baseline / f"seed{seed}" for seed in seeds_of(exp, exp.baseline)]
    return [f"lipschitz.L={fraction * reference_lipschitz(runs):.3f}"]


def seed_chunks(seeds: list[int], variants: int, jobs: int) -> list[list[int]]:
    """The seeds split into as many contiguous stacks as keep `jobs` processes busy when
    `variants` variants stack theirs (one stack per variant when they are enough)."""
    count = min(len(seeds), max(1, -(-jobs // variants)))
    size = -(-len(seeds) // count)
    return [seeds[i:i + size] for i in range(0, len(seeds), size)]


def sweep_command(env: str, exp: DictConfig, sweep_dir: Path, variants: list[str],
                  seeds: list[int], stacked: bool) -> list[str]:
    """`lipctl train -m` over variants x seeds on one env config (or over the seeds of one arm);
    `stacked`: over variants x stacks of seeds (`seed_chunks`), each run training its stack in
    one process (`seeds=[...]`), in the same folders as separate runs."""
    arm = variants[0] if variants[0] in (exp.get("arms") or {}) else None
    subdir = (arm or "${variant}") + "/seed${seed}"
    if stacked:
        stacks = seed_chunks(seeds, len(variants), exp.jobs)
        seed_arg = "seeds=" + ",".join(f"[{','.join(map(str, stack))}]" for stack in stacks)
    else:
        seed_arg = f"seed={','.join(map(str, seeds))}"
    return [
        sys.executable, "-m", "lipctl", "train", "-m", f"env={env}",
        f"variant={variant_of(exp, arm) if arm else ','.join(variants)}", seed_arg,
        "hydra/launcher=local", f"hydra.launcher.n_jobs={exp.jobs}",
        f"hydra.sweep.dir={sweep_dir}", f"hydra.sweep.subdir={subdir}",
        "progress=false", "resume=true", *run_overrides(exp, env, arm),
        *bound_overrides(exp, sweep_dir, arm),
    ]


def stacking_variants(exp: DictConfig, env: str) -> set[str]:
    """The variants whose runs on `env` stack their seeds in one process (SAC and TD3 without
    the robust loss; see `lipctl train seeds=`), unless the experiment sets stack_seeds=false."""
    found: set[str] = set()
    if not exp.get("stack_seeds", True):
        return found
    for variant in exp.variants:
        def record(cfg: DictConfig, variant: str = variant) -> None:
            if train.stacking_refusal(cfg) is None:
                found.add(variant)
        check_overrides("train", [f"env={env}", f"variant={variant_of(exp, variant)}",
                                  *run_overrides(exp, env, variant)], record)
    return found


def expert_return(exp: DictConfig, env: str) -> float | None:
    """Mean episode return of the demonstrations an env's runs imitate (None if they do not)."""
    paths = [o.split("=", 1)[1] for o in run_overrides(exp, env) if o.startswith("demos=")]
    return float(load_demos(paths[0]).episode_returns.mean()) if paths else None


def run_sweeps(exp: DictConfig, work: Path) -> None:
    """One multirun per env and seed group; finished runs are kept, interrupted ones resume
    from their checkpoints."""
    for env in exp.envs:
        stacking = stacking_variants(exp, env)
        for variants, seeds in seed_groups(exp):
            for stacked in (True, False):
                group = [v for v in variants if (v in stacking) == stacked]
                if not group:
                    continue
                command = sweep_command(env, exp, work / env, group, seeds, stacked)
                print(f"[{env}] {len(group) * len(seeds)} runs"
                      f"{' (seeds stacked)' if stacked else ''}: {' '.join(command[3:])}",
                      flush=True)
                started = time.perf_counter()
                subprocess.run(command, check=True)
                print(f"[{env}] done in {time.perf_counter() - started:.0f} s", flush=True)


def _values(rows: list[dict[str, str]], column: str) -> list[float]:
    return [float(row[column]) for row in rows if row.get(column)]


def _last(rows: list[dict[str, str]], column: str) -> float:
    values = _values(rows, column)
    return values[-1] if values else float("nan")


def _mean(rows: list[dict[str, str]], column: str) -> float:
    values = _values(rows, column)
    return float(np.mean(values)) if values else float("nan")


def copy_runs(exp: DictConfig, work: Path, out: Path) -> None:
    """Each run's eval.csv and summary.json, and its train.csv downsampled to at most
    TRAIN_ROWS rows (the last one kept), under out/runs/<env>/<variant>/seed<k>/."""
    for env in exp.envs:
        for variant in exp.variants:
            for seed in seeds_of(exp, variant):
                source = work / env / variant / f"seed{seed}"
                target = out / "runs" / env / variant / f"seed{seed}"
                target.mkdir(parents=True, exist_ok=True)
                for name in ("eval.csv", "summary.json"):
                    shutil.copy2(source / name, target / name)
                rows = read_csv(source / "train.csv")
                keep = sorted(set(np.linspace(0, len(rows) - 1, TRAIN_ROWS).astype(int)))
                if rows:
                    write_csv(target / "train.csv", [rows[i] for i in keep])


def collect(exp: DictConfig, runs_dir: Path) -> dict[tuple[str, str], list[dict]]:
    """Read the runs under `runs_dir` (as `copy_runs` writes them): (env, variant) -> one dict
    per seed."""
    runs: dict[tuple[str, str], list[dict]] = {}
    for env in exp.envs:
        for variant in exp.variants:
            for seed in seeds_of(exp, variant):
                source = runs_dir / env / variant / f"seed{seed}"
                evals = read_csv(source / "eval.csv")
                summary = read_summary(source / "summary.json")
                train_rows = read_csv(source / "train.csv")
                runs.setdefault((env, variant), []).append({
                    "seed": seed,
                    "steps": np.array([int(row["step"]) for row in evals]),
                    "returns": np.array([float(row["return_mean"]) for row in evals]),
                    "state_lipschitz": _state_lipschitz(evals),
                    "discriminator_lipschitz": np.array(_values(evals, "discriminator_lower")),
                    **{name: _last(train_rows, name) for name in exp.last_train_metrics},
                    **{f"{name}_mean": _mean(train_rows, name)
                       for name in exp.get("mean_train_metrics", [])},
                    **summary,
                })
    return runs


def _state_lipschitz(evals: list[dict[str, str]]) -> np.ndarray:
    """Per evaluation, the largest of the critics' Lipschitz constants w.r.t. the state (empty
    for runs without them)."""
    columns = [c for c in (evals[0] if evals else {}) if c.endswith("_state_lipschitz")]
    return np.array([max(float(row[c]) for c in columns) for row in evals] if columns else [])


def _certificate_groups(run: dict) -> dict[str, list[dict]]:
    """A run's certificates grouped by network kind: critic0, critic1 -> critic."""
    groups: dict[str, list[dict]] = {}
    for name, certificate in run["certificates"].items():
        groups.setdefault(name.rstrip("0123456789"), []).append(certificate)
    return groups


def _lipschitz_columns(seeds: list[dict]) -> dict[str, float]:
    """Per network kind, medians over seeds of the largest certified upper and sampled lower
    bound among its networks."""
    columns: dict[str, float] = {}
    groups = [_certificate_groups(run) for run in seeds]
    for group in groups[0]:
        for bound in ("upper", "lower"):
            values = [max(c[bound] for c in run_groups[group]) for run_groups in groups]
            columns[f"{group}_lipschitz_{bound}"] = round(float(np.median(values)), 3)
    return columns


def summarize(runs: dict[tuple[str, str], list[dict]], exp: DictConfig) -> list[dict]:
    """One row per env x variant: the final return, the best evaluation and the mean over all
    evaluations (the area under the learning curve, over its length) as IQMs over seeds with
    stratified-bootstrap CIs; times (per 1k env steps), memory and the `exp.medians` figures
    are medians over seeds; returns are also given as fractions of the expert's for runs that
    imitate one."""
    rows = []
    for (env, variant), seeds in runs.items():
        expert = expert_return(exp, env)
        final = np.array([run["returns"][-1] for run in seeds])
        steps = int(np.median([run["env_steps"] for run in seeds]))
        point, low, high = interval_estimate(final, "iqm")
        averaged = [f"{name}_mean" for name in exp.get("mean_train_metrics", [])]
        median = {key: float(np.median([run.get(key, np.nan) for run in seeds]))
                  for key in (*exp.medians, *exp.last_train_metrics, *averaged)}
        row = {
            "env": env, "variant": variant, "seeds": len(seeds), "env_steps": steps,
            "final_return_mean": round(float(final.mean()), 1),
            "final_return_iqm": round(point, 1),
            "ci_low": round(low, 1), "ci_high": round(high, 1),
        }
        best = np.array([run["returns"].max() for run in seeds])
        area = np.array([run["returns"].mean() for run in seeds])  # area under the curve
        for name, values in (("best", best), ("auc", area)):
            point, low, high = interval_estimate(values, "iqm")
            row |= {f"{name}_return_iqm": round(point, 1),
                    f"{name}_return_ci_low": round(low, 1),
                    f"{name}_return_ci_high": round(high, 1)}
        if expert is not None:
            row.update(expert_return=round(expert, 1),
                       final_normalized_mean=round(float(final.mean()) / expert, 3),
                       best_normalized_mean=round(float(best.mean()) / expert, 3))
            for name, values in (("final", final), ("best", best), ("auc", area)):
                point, low, high = interval_estimate(values / expert, "iqm")
                row |= {f"{name}_normalized_iqm": round(point, 3),
                        f"{name}_normalized_ci_low": round(low, 3),
                        f"{name}_normalized_ci_high": round(high, 3)}
            row |= _steps_to_reach(seeds, SOLVED_FRACTION * expert)
        elif env in (exp.get("solved") or {}):
            row |= {"solved_return": exp.solved[env], **_steps_to_reach(seeds, exp.solved[env])}
        row["seconds_per_1k_steps"] = round(1000 * median.pop("wall_seconds") / steps, 1)
        for key in [key for key in median if key.endswith("_seconds")]:  # the time's split
            row[f"{key}_per_1k_steps"] = round(1000 * median.pop(key) / steps, 1)
        row.update({key: round(value, 4 if value < 1 else 1) for key, value in median.items()})
        row.update(_lipschitz_columns(seeds))
        row.update(_state_lipschitz_columns(seeds))
        rows.append(row)
    for row in rows:
        baseline = next((r for r in rows if r["env"] == row["env"]
                         and r["variant"] == exp.baseline), None)
        row[f"time_vs_{exp.baseline}"] = (None if baseline is None else round(
            row["seconds_per_1k_steps"] / baseline["seconds_per_1k_steps"], 2))
        row |= _critic_ratios(row, baseline, exp.baseline)
        reference = runs.get((row["env"], exp.baseline))
        estimate = (None, None, None)
        if reference is not None and row["variant"] != exp.baseline:
            mine = [run["returns"][-1] for run in runs[(row["env"], row["variant"])]]
            estimate = tuple(round(value, 3) for value in probability_of_improvement(
                mine, [run["returns"][-1] for run in reference]))
        row |= dict(zip((f"p_improvement_vs_{exp.baseline}", "p_improvement_ci_low",
                         "p_improvement_ci_high"), estimate, strict=True))
    return rows


def _critic_ratios(row: dict, baseline: dict | None, name: str) -> dict[str, float]:
    """The row's critic constants, certified and sampled (final IQM), over the baseline's
    sampled one (empty without both)."""
    reference = (baseline or {}).get("critic_state_lipschitz_final")
    if not reference or "critic_state_lipschitz_final" not in row:
        return {}
    return {f"critic_state_lipschitz_final_vs_{name}": round(
                row["critic_state_lipschitz_final"] / reference, 3),
            f"critic_lipschitz_upper_vs_{name}_sampled": round(
                row.get("critic_lipschitz_upper", float("nan")) / reference, 3)}


def _steps_to_reach(seeds: list[dict], level: float) -> dict[str, float | int]:
    """How many runs had an evaluation at or above `level`, and the median over those runs of
    the env steps of the first such evaluation (NaN if none did)."""
    first = [int(run["steps"][np.argmax(run["returns"] >= level)]) for run in seeds
             if np.any(run["returns"] >= level)]
    return {"runs_reaching_solved": len(first),
            "steps_to_solved_median": float(np.median(first)) if first else float("nan")}


def _state_lipschitz_columns(seeds: list[dict]) -> dict[str, float]:
    """IQM over seeds, with 95% CIs, of the critics' state Lipschitz constant: its mean over
    the evaluations of a run and its final value."""
    if any(not len(run["state_lipschitz"]) for run in seeds):
        return {}
    columns = {}
    for name, values in (("mean", [run["state_lipschitz"].mean() for run in seeds]),
                         ("final", [run["state_lipschitz"][-1] for run in seeds])):
        point, low, high = interval_estimate(values, "iqm")
        columns |= {f"critic_state_lipschitz_{name}": round(point, 3),
                    f"critic_state_lipschitz_{name}_ci_low": round(low, 3),
                    f"critic_state_lipschitz_{name}_ci_high": round(high, 3)}
    return columns


def plot_over_training(runs: dict[tuple[str, str], list[dict]], key: str, path: Path,
                       ylabels: dict[str, str], divisors: dict[str, float] | None = None,
                       yscale: str = "linear") -> None:
    """The per-evaluation series `key` of every run against env steps (divided by the env's
    divisor): IQM over seeds and its stratified-bootstrap 95% band (rliable), one panel per env;
    variants whose runs lack the series are left out."""
    envs = list(dict.fromkeys(env for env, _ in runs))
    fig, axes = plt.subplots(1, len(envs), figsize=(4.2 * len(envs), 3.4), squeeze=False)
    for ax, env in zip(axes[0], envs, strict=True):
        for (run_env, variant), seeds in runs.items():
            if run_env != env or any(not len(run[key]) for run in seeds):
                continue
            length = min(len(run[key]) for run in seeds)
            values = np.stack([run[key][:length] for run in seeds]) / (divisors or {}).get(env, 1)
            steps = seeds[0]["steps"][:length]
            estimates = np.array([interval_estimate(values[:, i], "iqm") for i in range(length)])
            ax.plot(steps, estimates[:, 0], label=variant)
            ax.fill_between(steps, estimates[:, 1], estimates[:, 2], alpha=0.2)
        ax.set_title(env, fontsize=9)
        ax.set(xlabel="env steps", ylabel=ylabels[env], yscale=yscale)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(runs: dict[tuple[str, str], list[dict]], exp: DictConfig, path: Path) -> None:
    """Eval return against env steps, as a fraction of the expert's for runs that imitate one."""
    experts = {env: expert_return(exp, env) for env, _ in runs}
    plot_over_training(
        runs, "returns", path,
        {env: f"{'expert-normalised ' if e else ''}eval return (IQM, 95% CI)"
         for env, e in experts.items()},
        {env: e or 1.0 for env, e in experts.items()})


def plot_state_lipschitz(runs: dict[tuple[str, str], list[dict]], path: Path) -> None:
    """The critics' Lipschitz constant w.r.t. the state over training (the larger of the two
    critics')."""
    plot_over_training(runs, "state_lipschitz", path,
                       {env: "critic Lipschitz w.r.t. state (IQM, 95% CI)" for env, _ in runs},
                       yscale="log")


def plot_discriminator_lipschitz(runs: dict[tuple[str, str], list[dict]], path: Path) -> None:
    """The discriminator's sampled Lipschitz constant (lower bound) over training."""
    plot_over_training(runs, "discriminator_lipschitz", path,
                       {env: "D's sampled Lipschitz constant (IQM, 95% CI)" for env, _ in runs},
                       yscale="log")


def report(exp: DictConfig, out: Path) -> list[dict]:
    """summary.csv, curves.png, lipschitz.png (and discriminator_lipschitz.png, ablation.csv
    where the runs have them) from out/runs/ alone."""
    runs = collect(exp, out / "runs")
    rows = summarize(runs, exp)
    write_csv(out / "summary.csv", rows)
    plot_curves(runs, exp, out / "curves.png")
    plot_state_lipschitz(runs, out / "lipschitz.png")
    if any(len(run["discriminator_lipschitz"]) for seeds in runs.values() for run in seeds):
        plot_discriminator_lipschitz(runs, out / "discriminator_lipschitz.png")
    ablation = exp.get("ablation")
    if ablation:
        write_csv(out / "ablation.csv", [row for row in rows if row["variant"] in ablation])
    return rows


def run_benchmark(exp: DictConfig, out: Path, work: Path) -> None:
    """Train every run (resuming unfinished ones), copy its files to out/runs, then `report`."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    run_sweeps(exp, work)
    copy_runs(exp, work, out)
    rows = report(exp, out)
    write_bench_record(out / "bench.json", exp, time.perf_counter() - started)
    for row in rows:
        print(f"{row['env']:<18} {row['variant']:<28} return IQM {row['final_return_iqm']:>8.1f} "
              f"[{row['ci_low']:.1f}, {row['ci_high']:.1f}]  {row['seconds_per_1k_steps']:.0f} "
              f"s/1k steps ({row[f'time_vs_{exp.baseline}']}x {exp.baseline})", flush=True)
