"""Benchmark `lipschitz_bc`: the regret-robustness trade-off of Lipschitz behaviour cloning (Al
Makdah, Krishnan & Pasqualetti) on linear systems, where every quantity is exact.

Per system (envs/lti.py): the LQR expert u = -Kx, its demonstrations (trajectories from a box
of initial states plus DART-style labelled noisy copies of every state), and the critical L
below which no clone can stabilise the loop. Per seed: new demonstrations and initial states;
clones under a sweep of certified bounds L (multiples of ||K||_2 and of the critical L) and
unconstrained, each certified and run from the same initial states nominally, under random
noise and under a PGD adversary over the whole perturbation sequence, at every eps (a fraction
of the demonstrated states' per-dimension std). Regret: J(clone) - J(expert); deterioration:
J(clone, perturbed) - J(clone).

Writes runs/<system>.csv (one row per policy, seed and eps), and from those files alone
(`report`) summary.csv (medians over seeds with stratified-bootstrap 95% CIs from rliable),
tradeoff_<system>.png and summary.json (settings, coverage, constants, machine, wall time).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from joblib import Parallel, delayed
from omegaconf import DictConfig, OmegaConf

from lipctl.agents.bc import BCPolicy, BCSettings, fit_bc
from lipctl.bench.kit import machine_info, write_bench_record
from lipctl.bench.report import interval_estimate
from lipctl.compute import seed_everything
from lipctl.config import ConfigError, require_number, require_seeds
from lipctl.control.lti_bounds import deterioration_bound, linearity_residual, regret_bound
from lipctl.control.lti_robustness import LTILoop, sequence_attack, sphere_deltas
from lipctl.control.policy import LinearFeedback, sampled_lower_bound
from lipctl.envs.files import read_csv, write_csv
from lipctl.envs.lti import (
    LTI_SYSTEMS,
    LTISystem,
    demonstrations,
    least_stabilising_gain,
    smallest_stabilising_multiple,
)
from lipctl.lipschitz import LipschitzSpec

EXPERT, UNCONSTRAINED = "expert", "unconstrained"
METRICS = ("regret", "relative_regret", "attack_deterioration", "noise_deterioration",
           "lipschitz_upper", "lipschitz_lower", "failed_fraction", "regret_bound",
           "relative_regret_bound", "attack_deterioration_bound", "jacobian_norm",
           "closed_loop_radius", "closed_loop_gain", "expert_loop_gain", "linearity_residual")
FAILED_COST_RATIO = 100  # a run "failed" where J(clone) > this multiple of J(expert)


def validate(exp: DictConfig) -> None:
    """Seeds, systems, bounds and radii, before any work."""
    require_number(exp, "jobs", 1, integer=True)
    require_number(exp, "initial_states", 1, integer=True)
    require_seeds(exp.seeds)
    if not exp.systems:
        raise ConfigError("experiment.systems", "needs at least one system")
    for name, system in exp.systems.items():
        key = f"experiment.systems.{name}"
        if name not in LTI_SYSTEMS:
            raise ConfigError(key, f"unknown system; choose from {', '.join(LTI_SYSTEMS)}")
        for field in ("expert_multiples", "critical_multiples"):
            values = list(system[field])
            if not all(isinstance(v, (int, float)) and v > 0 for v in values):
                raise ConfigError(f"{key}.{field}", f"needs numbers > 0, got {values}")
    if not exp.families:
        raise ConfigError("experiment.families", "needs at least one clone family")
    for family, fields in exp.families.items():
        try:
            LipschitzSpec.of({**fields, "L": 1.0}).mlp(2, 1, [4])
        except (TypeError, ValueError) as error:
            raise ConfigError(f"experiment.families.{family}", str(error)) from None
    eps = list(exp.eps)
    if not eps or not all(isinstance(v, (int, float)) and v > 0 for v in eps):
        raise ConfigError("experiment.eps", f"needs numbers > 0, got {eps}")
    require_number(exp, "demos.episodes", 2, integer=True)
    require_number(exp, "demos.noise_radius", 0)
    if exp.demos.noise_radius < max(eps):
        raise ConfigError("experiment.demos.noise_radius", f"must cover the largest eps "
                                                           f"{max(eps)}, got "
                                                           f"{exp.demos.noise_radius}")
    for field in ("epochs", "batch_size", "patience"):
        require_number(exp, f"fit.{field}", 1, integer=True)
    require_number(exp, "attack_steps", 1, integer=True)


def constants(system: LTISystem) -> dict[str, float]:
    """||K||_2 of the expert, the critical L, and the least fraction of K that stabilises."""
    gain = system.lqr_gain()
    critical, _ = least_stabilising_gain(system.a, system.b)
    return {"expert_lipschitz": float(np.linalg.norm(gain, 2)), "critical_L": critical,
            "expert_ray_critical_fraction": smallest_stabilising_multiple(system.a, system.b,
                                                                          gain)}


def policies(exp_system: DictConfig, known: dict[str, float], families: list[str]
             ) -> list[tuple[str, str | None, float | None]]:
    """(label, family, bound) of every policy: the expert, each family's clones at multiples
    of the critical L and of ||K|| (bounds sorted), and the unconstrained clone (family
    None)."""
    bounds = {f"L={m:g}x crit": m * known["critical_L"] for m in exp_system.critical_multiples
              if known["critical_L"] > 0}
    bounds |= {f"L={m:g}x K": m * known["expert_lipschitz"] for m in exp_system.expert_multiples}
    ordered = sorted(bounds.items(), key=lambda item: item[1])
    clones = [(label, family, bound) for family in families for label, bound in ordered]
    return [(EXPERT, None, known["expert_lipschitz"]), *clones, (UNCONSTRAINED, None, None)]


def evaluate(name: str, exp: DictConfig, known: dict[str, float], label: str,
             family: str | None, bound: float | None, seed: int) -> list[dict]:
    """Fit (or take the expert) under `bound` with the layers of `exp.families[family]` (None:
    the unconstrained clone, plain layers), certify, and measure J nominally and perturbed at
    every eps from this seed's initial states; one row per eps."""
    torch.set_num_threads(1)
    seed_everything(seed)
    system = LTI_SYSTEMS[name]()
    rng = np.random.default_rng(seed)
    gain = system.lqr_gain()
    states, actions, episodes, coverage = demonstrations(
        system, gain, exp.demos.episodes, exp.demos.noise_radius, rng)
    x0 = torch.as_tensor(system.initial_states(rng, exp.initial_states))
    scale = torch.as_tensor(coverage["scale"])
    expert = LinearFeedback(gain, [-np.inf] * system.input_dim, [np.inf] * system.input_dim)
    probe = torch.as_tensor(states, dtype=torch.float32)
    fit_columns = dict.fromkeys(("train_mse", "holdout_mse", "epochs"))
    if label == EXPERT:
        policy, upper = expert, known["expert_lipschitz"]
        lower = sampled_lower_bound(expert, probe)
    else:
        spec = {"activation": exp.policy.activation, **(
            {} if family is None else OmegaConf.to_container(exp.families[family])), "L": bound}
        policy = BCPolicy(system.state_dim, system.input_dim, [-np.inf] * system.input_dim,
                          [np.inf] * system.input_dim, exp.policy.hidden, spec["activation"],
                          lipschitz=spec)
        fit = fit_bc(policy, states, actions, episodes,
                     BCSettings(**OmegaConf.to_container(exp.fit)), seed=seed)
        fit_columns.update(train_mse=fit.train_mse, holdout_mse=fit.holdout_mse,
                           epochs=fit.epochs)
        certificate = policy.certificate(probe, exp.certificate_tier)
        upper, lower = certificate.upper, certificate.lower
    loop, reference = LTILoop(policy, system), LTILoop(expert, system)
    with torch.no_grad():
        nominal, clone_states, clone_actions = loop.rollout(x0)
        expert_cost, expert_states, _ = reference.rollout(x0)
        demo_errors = torch.linalg.vector_norm(
            loop.policy(torch.as_tensor(states, dtype=torch.float64))
            - torch.as_tensor(actions, dtype=torch.float64), dim=-1).numpy()
    failed = float((nominal > FAILED_COST_RATIO * expert_cost).float().mean())
    regret = regret_bound(system, expert_states.numpy(), clone_states.numpy(), upper, states,
                          demo_errors)
    deterioration = deterioration_bound(system, loop.policy, clone_states.numpy(),
                                        clone_actions.numpy(), scale.numpy())
    shared = {"system": name, "family": family or "", "policy": label, "L": bound,
              "L_over_expert": None if bound is None else bound / known["expert_lipschitz"],
              "seed": seed, "lipschitz_upper": upper, "lipschitz_lower": lower, **fit_columns,
              "expert_cost": float(expert_cost.mean()), "nominal_cost": float(nominal.mean()),
              "regret": float((nominal - expert_cost).mean()),
              "relative_regret": float(((nominal - expert_cost) / expert_cost).mean()),
              "failed_fraction": failed, "regret_bound": float(regret.bound.mean()),
              "relative_regret_bound": float((regret.bound / expert_cost.numpy()).mean()),
              "jacobian_norm": float(np.linalg.norm(deterioration.jacobian, 2)),
              "closed_loop_radius": deterioration.closed_loop_radius,
              "closed_loop_gain": deterioration.gain, "expert_loop_gain": regret.expert_gain}
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for eps in exp.eps:
        attack = sequence_attack(loop, x0, eps, scale, exp.attack_steps, generator)
        noise = sphere_deltas(attack.shape, eps, scale, generator)
        with torch.no_grad():
            attacked, states_seen, actions_seen = loop.rollout(x0, attack)
            noisy = loop.cost(x0, noise)
            clean_actions = loop.policy(states_seen)
        change = torch.linalg.vector_norm(actions_seen - clean_actions, dim=-1)
        delta = torch.linalg.vector_norm(attack, dim=-1)
        measured = torch.cat([clone_states, states_seen + attack]).reshape(-1, x0.shape[-1])
        rows.append({**shared, "eps": eps, "attacked_cost": float(attacked.mean()),
                     "attack_deterioration_bound": float(deterioration.bound(eps).mean()),
                     "linearity_residual": linearity_residual(
                         loop.policy, deterioration.offset, deterioration.jacobian, measured),
                     "noisy_cost": float(noisy.mean()),
                     "attack_deterioration": float((attacked - nominal).mean()),
                     "noise_deterioration": float((noisy - nominal).mean()),
                     "max_action_change_over_delta": float((change / delta).max())})
    print(f"{name} {family or ''} {label} seed {seed}: regret {shared['regret']:.3g}, "
          f"deterioration at eps {exp.eps[-1]:g} {rows[-1]['attack_deterioration']:.3g} (noise "
          f"{rows[-1]['noise_deterioration']:.3g}), upper {upper:.3g}", flush=True)
    return rows


def run_benchmark(exp: DictConfig, out: Path, work: Path) -> None:
    """Every system x policy x seed in `exp.jobs` processes, into out/runs/, then `report`."""
    started = time.perf_counter()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    systems = {name: LTI_SYSTEMS[name]() for name in exp.systems}
    known = {name: constants(system) for name, system in systems.items()}
    info = {"constants": known, "coverage": {}}
    for name, system in systems.items():
        coverage = demonstrations(system, system.lqr_gain(), exp.demos.episodes,
                                  exp.demos.noise_radius, np.random.default_rng(exp.seeds[0]))[3]
        info["coverage"][name] = coverage
        print(f"{name}: ||K|| {known[name]['expert_lipschitz']:.4g}, critical L "
              f"{known[name]['critical_L']:.4g}; demonstrations (seed {exp.seeds[0]}) "
              f"{coverage['states']} states, per-dimension range "
              f"{np.round(coverage['min'], 3).tolist()}..{np.round(coverage['max'], 3).tolist()}"
              f", std {np.round(coverage['std'], 3).tolist()}", flush=True)
    tasks = [(name, label, family, bound, seed) for name in exp.systems
             for label, family, bound in policies(exp.systems[name], known[name],
                                                  list(exp.families))
             for seed in exp.seeds]
    print(f"{len(tasks)} runs in {exp.jobs} processes", flush=True)
    results = Parallel(n_jobs=exp.jobs)(
        delayed(evaluate)(name, exp, known[name], label, family, bound, seed)
        for name, label, family, bound, seed in tasks)
    for name in exp.systems:
        write_csv(out / "runs" / f"{name}.csv",
                  [row for rows in results for row in rows if row["system"] == name])
    write_bench_record(out / "summary.json", exp, time.perf_counter() - started,
                       machine_info(processes=exp.jobs, torch_threads_per_process=1), **info)
    report(exp, out)


def _read_runs(path: Path) -> list[dict]:
    """A runs/<system>.csv with its numbers as floats (empty cells: None)."""
    rows = read_csv(path)
    for row in rows:
        for key, value in row.items():
            if key not in ("system", "family", "policy"):
                row[key] = None if value == "" else float(value)
        row.setdefault("family", "")  # runs written before clones had families
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Per system, family, policy and eps: medians over seeds with 95% CIs of every metric."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["system"], row["family"], row["policy"], row["eps"]),
                          []).append(row)
    summary = []
    for (system, family, policy, eps), members in groups.items():
        entry = {"system": system, "family": family, "policy": policy, "L": members[0]["L"],
                 "L_over_expert": members[0]["L_over_expert"], "eps": eps,
                 "seeds": len(members)}
        for key in (key for key in METRICS if members[0].get(key) is not None):
            median, low, high = interval_estimate([m[key] for m in members])
            entry |= {key: median, f"{key}_ci_low": low, f"{key}_ci_high": high}
        entry["max_action_change_over_delta"] = max(m["max_action_change_over_delta"]
                                                    for m in members)
        summary.append(entry)
    return summary


def plot(summary: list[dict], system: str, family: str, known: dict[str, float],
         path: Path) -> None:
    """One family's clones on one system. Left: relative regret against L, and its bound
    (dashed). Right: deterioration under attack (solid) and noise (dashed) per eps, and the
    attack's bound (dotted), as multiples of the expert's attack deterioration at the same eps.
    Medians, 95% CIs."""
    rows = [r for r in summary if r["system"] == system and r["family"] in ("", family)]
    clones = sorted((r for r in rows if r["policy"] not in (EXPERT, UNCONSTRAINED)),
                    key=lambda r: r["L"])
    radii = sorted({r["eps"] for r in rows})
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    mine = [r for r in clones if r["eps"] == radii[0]]
    left.errorbar([r["L"] for r in mine], [r["relative_regret"] for r in mine],
                  yerr=_errors(mine, "relative_regret"), marker="o", capsize=3, label="clones")
    if "relative_regret_bound" in mine[0]:
        left.plot([r["L"] for r in mine], [r["relative_regret_bound"] for r in mine], ls="--",
                  color="tab:blue", alpha=0.6, label="bound (Lipschitz generalisation)")
    free = next(r for r in rows if r["policy"] == UNCONSTRAINED and r["eps"] == radii[0])
    left.axhline(free["relative_regret"], color="tab:red", ls=":", label="unconstrained")
    left.set(xscale="log", yscale="log", xlabel="certified bound L",
             ylabel="regret / J(expert)", title=f"{system}: nominal regret")
    for eps, colour in zip(radii, plt.cm.plasma(np.linspace(0, 0.85, len(radii))), strict=True):
        expert = next(r for r in rows if r["policy"] == EXPERT and r["eps"] == eps)
        mine = [r for r in clones if r["eps"] == eps]
        bounds = [r["L"] for r in mine]
        for key, style in (("attack_deterioration", "-"), ("noise_deterioration", "--")):
            scale = expert[key]
            values = np.array([r[key] for r in mine]) / scale
            errors = _errors(mine, key) / scale
            right.errorbar(bounds, values, yerr=errors if style == "-" else None, ls=style,
                           marker="o" if style == "-" else None, ms=3, capsize=2, color=colour,
                           label=f"{key.split('_')[0]} eps={eps:g}")
        if "attack_deterioration_bound" in mine[0]:
            right.plot(bounds, [r["attack_deterioration_bound"] / expert["attack_deterioration"]
                                for r in mine], ls=":", color=colour, lw=1.5,
                       label=f"bound eps={eps:g} (linearised)")
    right.axhline(1.0, color="k", lw=0.8, label="expert")
    right.set(xscale="log", yscale="log", ylim=(0.05, 50), xlabel="certified bound L",
              ylabel="deterioration / the expert's (same eps)",
              title=f"{system}: deterioration (above 50: off-scale)")
    right.legend(fontsize=6, ncol=2)
    for axis in (left, right):
        for x, label in ((known["expert_lipschitz"], "||K||"), (known["critical_L"], "critical")):
            if x > 0:
                axis.axvline(x, color="grey", ls="--", lw=0.8)
                axis.annotate(label, (x, 0.97), xycoords=("data", "axes fraction"), fontsize=7)
    left.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _errors(rows: list[dict], key: str) -> np.ndarray:
    return np.array([[r[key] - r[f"{key}_ci_low"] for r in rows],
                     [r[f"{key}_ci_high"] - r[key] for r in rows]]).clip(min=0)


def report(exp: DictConfig, out: Path) -> None:
    """summary.csv and one figure per system, from out/runs/*.csv and out/summary.json."""
    info = json.loads((out / "summary.json").read_text())
    rows = [row for path in sorted((out / "runs").glob("*.csv")) for row in _read_runs(path)]
    summary = summarise(rows)
    write_csv(out / "summary.csv", summary)
    families = list(dict.fromkeys(row["family"] for row in rows if row["family"]))
    for system in dict.fromkeys(row["system"] for row in rows):
        for family in families or [""]:
            suffix = f"_{family}" if len(families) > 1 else ""
            plot(summary, system, family, info["constants"][system],
                 out / f"tradeoff_{system}{suffix}.png")
