"""Benchmark `lipschitz_bc`: behaviour cloning of an analytic expert under a sweep of certified
Lipschitz bounds L (multiples of the expert's own constant) and unconstrained, each policy and
the expert run in closed loop nominally, under random noise on the measured state and under a
per-step PGD adversary, at several radii eps.

Writes runs.csv (one row per system, policy, seed and eps), summary.csv (medians over seeds, with
the range of the returns), tradeoff.png and summary.json (settings, the experts' Lipschitz
constants, machine, wall time).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from joblib import Parallel, delayed
from omegaconf import DictConfig, OmegaConf

from lipctl.agents.bc import BCPolicy, BCSettings, fit_bc
from lipctl.bench.report import write_csv
from lipctl.config import ConfigError, require_number
from lipctl.control.policy import LinearFeedback, sampled_lower_bound
from lipctl.control.robustness import robustness_sweep
from lipctl.envs import env_spaces, make_env
from lipctl.envs.demos import load_demos
from lipctl.envs.experts import available_experts, make_expert
from lipctl.lipschitz import Certificate
from lipctl.runtime import seed_everything

EXPERT, UNCONSTRAINED = "expert", "unconstrained"
EVAL_SEED = 10_000  # seed k's episodes are reset with seeds EVAL_SEED + 100 k, + 1, ...
MEDIANS = ("nominal_return", "noise_return", "attack_return", "noise_action_change",
           "attack_action_change", "lipschitz_upper", "lipschitz_lower", "train_mse",
           "holdout_mse", "fit_seconds")
RANGES = ("nominal_return", "noise_return", "attack_return")


def validate(exp: DictConfig) -> None:
    """Seeds, systems (env, demonstrations, expert), bounds and radii, before any work."""
    require_number(exp, "jobs", 1, integer=True)
    if not exp.seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0
                            for s in exp.seeds):
        raise ConfigError("experiment.seeds", f"needs integers >= 0, got {list(exp.seeds)}")
    if not exp.systems:
        raise ConfigError("experiment.systems", "needs at least one system")
    for name, system in exp.systems.items():
        key = f"experiment.systems.{name}"
        load_demos(system.demos, env=system.env_id)  # DemosError: missing or another env's
        if system.expert not in available_experts(system.env_id):
            raise ConfigError(f"{key}.expert", f"no analytic expert {system.expert!r} for "
                                               f"{system.env_id}")
        for field in ("bound_ratios", "eps"):
            values = list(system[field])
            if not values or not all(isinstance(v, (int, float)) and v > 0 for v in values):
                raise ConfigError(f"{key}.{field}", f"needs numbers > 0, got {values}")
    for field in ("epochs", "batch_size", "patience"):
        require_number(exp, f"fit.{field}", 1, integer=True)
    for field in ("episodes", "attack_steps"):
        require_number(exp, f"evaluation.{field}", 1, integer=True)


def expert_policy(env_id: str, expert: str) -> tuple[torch.nn.Module, float]:
    """The analytic expert as a torch module and its Lipschitz constant (||K||_2 for a linear
    feedback u = clip(-K x))."""
    env = make_env(env_id)
    controller = make_expert(expert, env)
    env.close()
    gain = np.asarray(controller.gain)
    return (LinearFeedback(gain, controller.low, controller.high).eval(),
            float(np.linalg.norm(gain, 2)))


def evaluate_policy(name: str, system: DictConfig, exp: DictConfig, label: str,
                    bound: float | None, seed: int) -> list[dict]:
    """Fit one policy under `bound` (or take the expert: label EXPERT), certify it and sweep
    eps; one row per eps (0: nominal)."""
    torch.set_num_threads(1)
    seed_everything(seed)
    demos = load_demos(system.demos, env=system.env_id)
    states = torch.as_tensor(demos.observations, dtype=torch.float32)
    expert, expert_constant = expert_policy(system.env_id, system.expert)
    fit = None
    if label == EXPERT:
        policy = expert
        certificate = Certificate(expert_constant, sampled_lower_bound(expert, states),
                                  "exact ||K||", 0.0)
    else:
        env = make_env(system.env_id)
        obs_dim, act_dim, low, high = env_spaces(env)
        env.close()
        policy = BCPolicy(obs_dim, act_dim, low, high, bound=bound,
                          **OmegaConf.to_container(exp.policy))
        fit = fit_bc(policy, demos.observations, demos.actions, demos.episode_index,
                     BCSettings(**OmegaConf.to_container(exp.fit)), seed=seed)
        certificate = policy.certificate(states, exp.evaluation.certificate_tier)
    evaluation = exp.evaluation
    report = robustness_sweep(policy, system.env_id, list(system.eps), evaluation.episodes,
                              evaluation.norm, evaluation.attack_steps,
                              seed=EVAL_SEED + 100 * seed, certificate=certificate)
    fit_columns = dict.fromkeys(("train_mse", "holdout_mse", "epochs", "fit_seconds"))
    if fit is not None:
        fit_columns.update(train_mse=fit.train_mse, holdout_mse=fit.holdout_mse,
                           epochs=fit.epochs, fit_seconds=round(fit.seconds, 2))
    shared = {
        "system": name, "env_id": system.env_id, "policy": label,
        "L": bound, "L_over_expert": None if bound is None else bound / expert_constant,
        "seed": seed, "lipschitz_upper": certificate.upper, "lipschitz_lower": certificate.lower,
        **fit_columns, "nominal_return": report.nominal_mean}
    rows = [{**shared, "eps": 0.0, "noise_return": report.nominal_mean,
             "attack_return": report.nominal_mean, "noise_action_change": 0.0,
             "attack_action_change": 0.0}]
    rows += [{**shared, "eps": row.eps, "noise_return": row.noise_mean,
              "attack_return": row.attack_mean, "noise_action_change": row.noise_action_change,
              "attack_action_change": row.attack_action_change} for row in report.rows]
    print(f"{name} {label} seed {seed}: nominal {report.nominal_mean:.0f}, attacked "
          f"{[round(r.attack_mean) for r in report.rows]}, upper {certificate.upper:.3g}, "
          f"lower {certificate.lower:.3g}", flush=True)
    return rows


def policies(system: DictConfig, expert_constant: float) -> list[tuple[str, float | None]]:
    """(label, bound) of every policy of a system: the expert (its own constant), each L,
    unconstrained."""
    bounded = [(f"L={ratio:g}x", ratio * expert_constant) for ratio in system.bound_ratios]
    return [(EXPERT, expert_constant), *bounded, (UNCONSTRAINED, None)]


def summarise(rows: list[dict]) -> list[dict]:
    """Medians over seeds per system, policy and eps, with the min and max of the returns."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["system"], row["policy"], row["eps"]), []).append(row)
    summary = []
    for (system, policy, eps), members in groups.items():
        first = members[0]
        entry = {"system": system, "policy": policy, "L": first["L"],
                 "L_over_expert": first["L_over_expert"], "eps": eps, "seeds": len(members)}
        for key in MEDIANS:
            values = [m[key] for m in members if m[key] is not None]
            entry[key] = float(np.median(values)) if values else None
        for key in RANGES:
            entry[f"{key}_min"] = min(m[key] for m in members)
            entry[f"{key}_max"] = max(m[key] for m in members)
        summary.append(entry)
    return summary


def plot(summary: list[dict], out: Path) -> None:
    """Per system: attacked return vs eps for every policy, and per policy the nominal return,
    the attacked return at every eps and the noisy return at the largest (medians over seeds)."""
    systems = list(dict.fromkeys(row["system"] for row in summary))
    fig, axes = plt.subplots(len(systems), 2, figsize=(11, 4 * len(systems)), squeeze=False)
    for (left, right), system in zip(axes, systems, strict=True):
        rows = [row for row in summary if row["system"] == system]
        labels = list(dict.fromkeys(row["policy"] for row in rows))
        colours = plt.cm.viridis(np.linspace(0, 0.9, len(labels)))
        for label, colour in zip(labels, colours, strict=True):
            mine = sorted((r for r in rows if r["policy"] == label), key=lambda r: r["eps"])
            style = {EXPERT: dict(color="k", ls="--"), UNCONSTRAINED: dict(color="tab:red")}
            left.plot([r["eps"] for r in mine], [r["attack_return"] for r in mine], marker="o",
                      ms=3, label=label, **style.get(label, dict(color=colour)))
        left.set(xlabel="eps (l2 radius of the measurement perturbation)",
                 ylabel="return under PGD attack (median)", title=f"{system}: attacked return")
        left.legend(fontsize=7)
        radii = sorted({r["eps"] for r in rows})
        positions = np.arange(len(labels))
        for eps, colour in zip(radii, plt.cm.plasma(np.linspace(0, 0.85, len(radii))),
                               strict=True):
            values = [next(r["attack_return"] for r in rows
                           if r["policy"] == label and r["eps"] == eps) for label in labels]
            name = "nominal" if eps == 0 else f"attack eps={eps:g}"
            right.plot(positions, values, "o-", ms=4, color=colour, label=name)
        noisy = [next(r["noise_return"] for r in rows
                      if r["policy"] == label and r["eps"] == radii[-1]) for label in labels]
        right.plot(positions, noisy, "s--", ms=4, color=colour, label=f"noise eps={radii[-1]:g}")
        right.set_xticks(positions, labels, rotation=30, fontsize=8)
        right.set(ylabel="return (median over seeds)",
                  title=f"{system}: nominal vs attacked return per policy")
        right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def run_benchmark(exp: DictConfig, out: Path, work: Path) -> None:
    """Every system x policy x seed in `exp.jobs` processes; results under `out` (nothing is
    kept in `work`: every policy is fitted and evaluated in memory)."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    constants = {name: expert_policy(system.env_id, system.expert)[1]
                 for name, system in exp.systems.items()}
    tasks = [(name, system, label, bound, seed)
             for name, system in exp.systems.items()
             for label, bound in policies(system, constants[name]) for seed in exp.seeds]
    print(f"{len(tasks)} runs ({len(tasks) // len(exp.seeds)} policies x {len(exp.seeds)} seeds) "
          f"in {exp.jobs} processes", flush=True)
    results = Parallel(n_jobs=exp.jobs)(delayed(evaluate_policy)(*task[:2], exp, *task[2:])
                                        for task in tasks)
    rows = [row for result in results for row in result]
    summary = summarise(rows)
    write_csv(out / "runs.csv", rows)
    write_csv(out / "summary.csv", summary)
    plot(summary, out / "tradeoff.png")
    info = {"settings": OmegaConf.to_container(exp, resolve=True),
            "expert_lipschitz": constants,
            "machine": {"processor": platform.processor() or platform.machine(),
                        "torch_threads_per_process": 1, "torch": torch.__version__},
            "wall_seconds": round(time.perf_counter() - started, 1)}
    (out / "summary.json").write_text(json.dumps(info, indent=2) + "\n")
