"""Closed-loop cost of a feedback policy on an LTI system, nominal and with the measured state
perturbed at every step: by random noise, or by a PGD adversary over the whole perturbation
sequence that maximises the cost (differentiable through the linear dynamics).

Perturbations are in the data's own scale: delta_t = scale * v_t with ||v_t||_2 <= eps, where
`scale` is the per-dimension standard deviation of the demonstrated states.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from lipctl.envs.lti import LTISystem
from lipctl.lipschitz import freeze, project_to_ball


class LTILoop:
    """Batched rollouts of u_t = policy(x_t + delta_t) on `system`, in float64."""

    def __init__(self, policy: nn.Module, system: LTISystem):
        self.policy = freeze(copy.deepcopy(policy)).double().eval().requires_grad_(False)
        self.a, self.b, self.q, self.r = (torch.as_tensor(m, dtype=torch.float64)
                                          for m in (system.a, system.b, system.q, system.r))
        self.horizon = system.horizon

    def rollout(self, x0: Tensor, deltas: Tensor | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """(J [N], states [N, T, n], actions [N, T, m]) from x0 [N, n]; deltas [N, T, n] are
        added to the state the policy measures (None: nominal)."""
        x, cost, states, actions = x0, x0.new_zeros(len(x0)), [], []
        for t in range(self.horizon):
            measured = x if deltas is None else x + deltas[:, t]
            u = self.policy(measured)
            cost = cost + ((x @ self.q) * x).sum(-1) + ((u @ self.r) * u).sum(-1)
            states.append(x)
            actions.append(u)
            x = x @ self.a.T + u @ self.b.T
        return cost, torch.stack(states, 1), torch.stack(actions, 1)

    def cost(self, x0: Tensor, deltas: Tensor | None = None) -> Tensor:
        return self.rollout(x0, deltas)[0]


def sphere_deltas(shape: tuple[int, ...], eps: float, scale: Tensor,
                  generator: torch.Generator) -> Tensor:
    """Perturbations scale * v with v uniform on the sphere ||v||_2 = eps, independently per
    row and step: [N, T, n]."""
    v = torch.randn(shape, generator=generator, dtype=torch.float64)
    return scale * eps * v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)


def sequence_attack(loop: LTILoop, x0: Tensor, eps: float, scale: Tensor, steps: int = 50,
                    generator: torch.Generator | None = None) -> Tensor:
    """The perturbation sequence (delta_t = scale * v_t, ||v_t||_2 <= eps at every step) that
    maximises the closed-loop cost from each x0, by projected normalised-gradient ascent on v
    started on the sphere; the best iterate per initial state is returned: [N, T, n]."""
    generator = generator or torch.Generator().manual_seed(0)
    shape = (len(x0), loop.horizon, x0.shape[-1])
    v = sphere_deltas(shape, eps, torch.ones(()), generator)
    best_v, best_cost = v.clone(), torch.full((len(x0),), -torch.inf, dtype=torch.float64)
    step_size = 2.5 * eps / steps
    for _ in range(steps + 1):
        v.requires_grad_(True)
        cost = loop.cost(x0, scale * v)
        (grad,) = torch.autograd.grad(cost.sum(), v)
        with torch.no_grad():
            better = cost > best_cost
            best_cost = torch.where(better, cost, best_cost)
            best_v[better] = v[better]
            direction = grad / torch.linalg.vector_norm(grad, dim=-1, keepdim=True).clamp_min(
                1e-300)
            v = project_to_ball(v + step_size * direction, eps)
    return scale * best_v.detach()
