"""Closed-loop robustness of a policy to bounded perturbations of the measured state: random
noise and a PGD adversary on the policy's input, swept over the perturbation radius."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from lipctl.control.loop import Trajectory, returns, run
from lipctl.control.policy import ModuleController
from lipctl.envs import make_env
from lipctl.envs.perturbation import (
    Perturb,
    PerturbedObservation,
    ScaledObservation,
    SphereNoise,
    check_perturbation,
)
from lipctl.lipschitz import Certificate, adversarial_perturbation


class PGDAttack:
    """At every call, delta with ||delta|| <= eps that pushes policy(obs + delta) away from
    policy(obs): k-step PGD on the policy's input (lipschitz.adversarial_perturbation).

    `policy` maps observations [B, n] to actions [B, m] (a torch module, used in eval mode).
    The ascent starts from a random point drawn with torch's global generator.
    """

    def __init__(self, policy: nn.Module, eps: float, norm: str = "l2", steps: int = 10):
        check_perturbation(eps, norm)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        self.policy, self.eps, self.norm, self.steps = policy.eval(), float(eps), norm, steps
        self._dtype = next(policy.parameters()).dtype

    def __call__(self, observation: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.asarray(observation), dtype=self._dtype).reshape(1, -1)
        delta = adversarial_perturbation(self.policy, x, self.eps, self.norm, self.steps)
        return delta[0].double().numpy()


@dataclass(frozen=True)
class RobustnessRow:
    """Closed-loop returns at one radius eps, under random noise on the sphere of radius eps
    and under the PGD adversary, with the mean action change ||a - policy(clean obs)|| per
    step that each caused."""

    eps: float
    noise_mean: float
    noise_std: float
    attack_mean: float
    attack_std: float
    noise_action_change: float
    attack_action_change: float


@dataclass(frozen=True)
class RobustnessReport:
    """A policy's nominal return, its rows per eps, and its certified Lipschitz bound."""

    env_id: str
    norm: str
    episodes: int
    attack_steps: int
    nominal_mean: float
    nominal_std: float
    lipschitz_upper: float | None
    lipschitz_lower: float | None
    rows: list[RobustnessRow]

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def action_change(policy: nn.Module, trajectories: Sequence[Trajectory]) -> float:
    """Mean over steps of ||action - policy(clean observation)||_2 in perturbed episodes."""
    dtype = next(policy.parameters()).dtype
    clean = np.concatenate([[info["clean_observation"] for info in t.infos[:-1]]
                            for t in trajectories])
    actions = np.concatenate([t.actions for t in trajectories]).reshape(len(clean), -1)
    reference = policy(torch.as_tensor(clean, dtype=dtype)).double().numpy()
    return float(np.linalg.norm(actions - reference, axis=-1).mean())


class ScaledInput(nn.Module):
    """policy(scale * z): the policy on observations given in units of `scale` per dimension."""

    def __init__(self, policy: nn.Module, scale: np.ndarray):
        super().__init__()
        self.policy = policy
        self.register_buffer("scale", torch.as_tensor(np.asarray(scale, dtype=np.float64)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.policy(z * self.scale.to(z.dtype))


def _plant(env_id: str, env_kwargs: dict, scale: np.ndarray | None) -> gym.Env:
    plant = make_env(env_id, **env_kwargs)
    return plant if scale is None else ScaledObservation(plant, scale)


def _perturbed_returns(policy: nn.Module, env_id: str, perturb: Perturb, eps: float, norm: str,
                       episodes: int, seed: int, env_kwargs: dict,
                       scale: np.ndarray | None) -> tuple[np.ndarray, float]:
    plant = PerturbedObservation(_plant(env_id, env_kwargs, scale), perturb, eps, norm)
    try:
        trajectories = run(ModuleController(policy), plant, episodes, seed=seed)
    finally:
        plant.close()
    return returns(trajectories), action_change(policy, trajectories)


def robustness_sweep(policy: nn.Module, env_id: str, eps: Sequence[float], episodes: int = 10,
                     norm: str = "l2", attack_steps: int = 10, seed: int = 0,
                     certificate: Certificate | None = None,
                     env_kwargs: dict | None = None,
                     state_scale: Sequence[float] | np.ndarray | None = None
                     ) -> RobustnessReport:
    """Nominal return of `policy` (observations [B, n] -> actions [B, m] in the env's units) on
    `env_id`, and per eps the return under random noise (`SphereNoise`, seeded by `seed`) and
    under the PGD adversary (`PGDAttack`, `attack_steps` steps). Every setting runs the same
    `episodes` episodes (reset seeds seed, seed + 1, ...) through control.run.

    eps is in the observation's units, or with `state_scale` (e.g. the states' per-dimension
    std) in units of it: the perturbation is scale * v with ||v|| <= eps, and the reported
    action changes are those of the same actions."""
    for radius in eps:
        check_perturbation(radius, norm)
    env_kwargs = env_kwargs or {}
    scale = None if state_scale is None else np.asarray(state_scale, dtype=np.float64)
    policy = policy.eval() if scale is None else ScaledInput(policy, scale).eval()
    plant = _plant(env_id, env_kwargs, scale)
    try:
        nominal = returns(run(ModuleController(policy), plant, episodes, seed=seed))
    finally:
        plant.close()
    rows = []
    for radius in eps:
        noise, noise_change = _perturbed_returns(policy, env_id, SphereNoise(radius, norm, seed),
                                                 radius, norm, episodes, seed, env_kwargs, scale)
        attack, attack_change = _perturbed_returns(
            policy, env_id, PGDAttack(policy, radius, norm, attack_steps), radius, norm,
            episodes, seed, env_kwargs, scale)
        rows.append(RobustnessRow(float(radius), float(noise.mean()), float(noise.std()),
                                  float(attack.mean()), float(attack.std()), noise_change,
                                  attack_change))
    return RobustnessReport(
        env_id, norm, episodes, attack_steps, float(nominal.mean()), float(nominal.std()),
        None if certificate is None else certificate.upper,
        None if certificate is None else certificate.lower, rows)
