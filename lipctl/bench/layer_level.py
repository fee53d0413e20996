"""Can a critic held to a certified bound fit a Pendulum-scale value function? Each layer family
at a Lipschitz level against the unconstrained critic -> out/<output> (results/layer_level.json;
`report` prints its table).

The target is value-like on [-2, 2]^4 (std ~350 over the box, slope up to ~600, as Pendulum's Q);
a 2x64 twin critic is fitted by Adam (lr 3e-4, batch 256) for the same number of steps in every
arm, and the test RMSE of member 0 on 2048 fresh points is reported with its certified bound and
the largest ratio a 20-restart pair ascent finds (which must never exceed the certificate).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor

from lipctl.agents.critic_learner import TwinCritic
from lipctl.bench.kit import machine_info
from lipctl.config import ConfigError, require_number
from lipctl.envs.files import write_json
from lipctl.lipschitz import LipschitzSpec, certify, lower_bound, post_step
from lipctl.lipschitz.muon import make_optimizer

PGD_RESTARTS = 20  # random restarts of the pair ascent that checks each certificate
BOUND = 800.0  # above the target's largest slope (~600), as a critic's bound would be set
# arm -> spec: the unconstrained critic with lipctl's default ReLU and with MaxMin, and every
# family at the level BOUND, with MaxMin (gradient-norm preserving) and, for two, with ReLU;
# the by-construction families (ldl, sandwich) need an elementwise activation: ReLU
ARMS: dict[str, LipschitzSpec] = {
    "free relu": LipschitzSpec(),
    "free maxmin": LipschitzSpec(activation="maxmin"),
    "spectral cap relu": LipschitzSpec(L=BOUND, mode="cap"),
    "spectral cap maxmin": LipschitzSpec(L=BOUND, mode="cap", activation="maxmin"),
    "spectral normalize maxmin": LipschitzSpec(L=BOUND, activation="maxmin"),
    "soft_cap relu": LipschitzSpec(layer="soft_cap", L=BOUND),
    "soft_cap maxmin": LipschitzSpec(layer="soft_cap", L=BOUND, activation="maxmin"),
    "hammer maxmin": LipschitzSpec(layer="hammer", L=BOUND, activation="maxmin"),
    "svd_clip maxmin": LipschitzSpec(layer="svd_clip", L=BOUND, activation="maxmin"),
    "aol maxmin": LipschitzSpec(layer="aol", L=BOUND, activation="maxmin"),
    "orthogonal maxmin": LipschitzSpec(layer="orthogonal", L=BOUND, activation="maxmin"),
    "ldl relu": LipschitzSpec(layer="ldl", L=BOUND),
    "sandwich relu": LipschitzSpec(layer="sandwich", L=BOUND),
}


def pendulum_scale_q(x: Tensor) -> Tensor:
    """A value-like target on [-2, 2]^4: std ~350 over the box, slope up to ~600."""
    return 495.0 * torch.sin(1.2 * x[:, 0]) + 40.0 * x[:, 1] * x[:, 2].tanh()


def fitted_critic(spec: LipschitzSpec, steps: int, seed: int = 0) -> tuple[TwinCritic, Tensor]:
    """A twin critic after `steps` Adam steps on the target (projections after each step), in
    eval mode, and 2048 fresh test points."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    critic = TwinCritic(3, 1, (64, 64), lipschitz=spec)
    optimiser = make_optimizer(critic, "adam", lr=3e-4)
    test = 4 * torch.rand(2048, 4, generator=generator) - 2
    for _ in range(steps):
        x = 4 * torch.rand(256, 4, generator=generator) - 2
        loss = (critic(x[:, :3], x[:, 3:]) - pendulum_scale_q(x)).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        post_step(critic)
    return critic.eval(), test


def rmse_and_bound(critic: TwinCritic, test: Tensor) -> tuple[float, float]:
    """Test RMSE of critic 0 on the test points and its certified upper bound."""
    with torch.no_grad():
        error = critic(test[:, :3], test[:, 3:])[0] - pendulum_scale_q(test)
    return float(error.pow(2).mean().sqrt()), certify(critic.net, member=0).upper


def fitted_rmse(spec: LipschitzSpec, steps: int, seed: int = 0) -> tuple[float, float]:
    """Test RMSE of critic 0 after `steps` steps (`fitted_critic`) and its certified upper
    bound."""
    return rmse_and_bound(*fitted_critic(spec, steps, seed))


def attacked_ratio(critic: TwinCritic, points: Tensor, restarts: int = PGD_RESTARTS) -> float:
    """The largest ||Q(x1) - Q(x2)|| / ||x1 - x2|| of critic 0 found by pair ascent from
    `restarts` random starts over `points` (a sampled lower bound of its constant)."""
    return max(lower_bound(critic.net, points, member=0, seed=seed) for seed in range(restarts))


def validate(exp: DictConfig) -> None:
    require_number(exp, "steps", 1, integer=True)
    if exp.arms is not None and (unknown := [a for a in exp.arms if a not in ARMS]):
        raise ConfigError("arms", f"unknown arms {unknown}; the arms: {', '.join(ARMS)}")


def run_benchmark(exp: DictConfig, out: Path, work: Path) -> None:
    """Fit, certify and attack every arm's critic; write out/<output>."""
    torch.set_num_threads(1)
    rows = []
    for name in list(ARMS) if exp.arms is None else exp.arms:
        started = time.perf_counter()
        critic, test = fitted_critic(ARMS[name], exp.steps)
        rmse, upper = rmse_and_bound(critic, test)
        sampled = attacked_ratio(critic, test)
        rows.append({"arm": name, "test_rmse": round(rmse, 3), "certified_upper": round(upper, 2),
                     "pgd_sampled": round(sampled, 2),
                     "pgd_over_certified": round(sampled / upper, 4),
                     "seconds": round(time.perf_counter() - started, 1)})
        print(f"{name}: test RMSE {rmse:.2f}, certified {upper:.1f}, PGD {sampled:.1f}",
              flush=True)
    write_json(out / exp.output, {"steps": exp.steps, "bound": BOUND, "lr": 3e-4, "batch": 256,
                                  "hidden": [64, 64], "seed": 0, "machine": machine_info(),
                                  "results": rows})


def report(exp: DictConfig, out: Path) -> None:
    """Print the table of out/<output>."""
    for row in json.loads((out / exp.output).read_text())["results"]:
        print(f"{row['arm']}: test RMSE {row['test_rmse']:.2f}, certified "
              f"{row['certified_upper']:.1f}, PGD {row['pgd_sampled']:.1f}")
