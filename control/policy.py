"""A learned policy's deterministic map as a torch module in the plant's action units, its
Lipschitz certificate, and any such module as a Controller."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from lipctl.envs.action_scale import ActionScale
from lipctl.lipschitz.certificates import Certificate, certify, pair_ratio_ascent


class ScaledPolicy(nn.Module):
    """obs [B, n] -> action [B, m] = center + half_range * module(obs), where the module
    answers in [-1, 1] (e.g. a learner's tanh-squashed deterministic policy) and center,
    half_range come from the action bounds."""

    def __init__(self, module: nn.Module, action_low: Sequence[float] | np.ndarray,
                 action_high: Sequence[float] | np.ndarray):
        super().__init__()
        center, half_range = ActionScale(action_low, action_high).tensors()
        self.module = module
        self.register_buffer("center", center)
        self.register_buffer("half_range", half_range)
        self.train(module.training)

    def forward(self, obs: Tensor) -> Tensor:
        return self.center + self.half_range * self.module(obs)


class LinearFeedback(nn.Module):
    """The state-feedback law u = clip(-K x) (e.g. an LQR expert's) as a torch module:
    obs [B, n] -> action [B, m]; its l2 Lipschitz constant is at most ||K||_2."""

    def __init__(self, gain: np.ndarray, action_low: Sequence[float] | np.ndarray,
                 action_high: Sequence[float] | np.ndarray):
        super().__init__()
        gain = torch.as_tensor(np.asarray(gain, dtype=np.float32))
        self.linear = nn.Linear(gain.shape[1], gain.shape[0], bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(-gain)
        self.register_buffer("low", torch.as_tensor(np.asarray(action_low, dtype=np.float32)))
        self.register_buffer("high", torch.as_tensor(np.asarray(action_high, dtype=np.float32)))

    def forward(self, obs: Tensor) -> Tensor:
        return torch.clamp(self.linear(obs), self.low, self.high)


def sampled_lower_bound(policy: nn.Module, observations: Tensor, steps: int = 100,
                        pairs: int = 128, seed: int = 0) -> float:
    """Sampled lower bound of a policy's l2 Lipschitz constant: pair-ratio ascent on a float64
    copy of `policy`, started from pairs of `observations` [N, n] and from nearby points."""
    net = copy.deepcopy(policy).double().eval().requires_grad_(False)
    points = observations.detach().to("cpu", torch.float64).reshape(len(observations), -1)
    generator = torch.Generator().manual_seed(seed)
    x1 = points[torch.randint(len(points), (pairs,), generator=generator)]
    x2 = points[torch.randint(len(points), (pairs,), generator=generator)]
    spread = float(points.std()) if points.numel() > 1 else 0.0
    spread = spread if spread > 0 else 1.0
    nearby = x1 + 0.1 * spread * torch.randn(x1.shape, generator=generator, dtype=x1.dtype)
    x2 = torch.where(torch.arange(pairs)[:, None] % 2 == 0, nearby, x2)
    return pair_ratio_ascent(net, x1, x2, steps=steps, lr=3e-2 * spread,
                             min_gap=1e-3 * spread, generator=generator)


def policy_certificate(mlp: nn.Module, policy: ScaledPolicy, observations: Tensor,
                       tier: str = "eclipse", steps: int = 100, pairs: int = 128,
                       seed: int = 0) -> Certificate:
    """Certificate of `policy`, whose [-1, 1] answer is tanh of a slice of `mlp`'s output.

    Upper: the largest half range times the MLP's certified bound (taking a slice of the output
    and tanh are 1-Lipschitz). Lower: `sampled_lower_bound` of the policy."""
    start = time.perf_counter()
    upper = certify(mlp, tier=tier)
    scale = float(policy.half_range.abs().max())
    lower = sampled_lower_bound(policy, observations, steps, pairs, seed)
    return Certificate(scale * upper.upper, lower, f"{upper.method} x action range",
                       time.perf_counter() - start)


class ModuleController:
    """A torch module mapping observations [1, n] to actions [1, m], as a Controller: float32
    in, float64 out, no gradients."""

    def __init__(self, module: nn.Module):
        self.module = module.eval()
        self._dtype = next(module.parameters()).dtype

    @torch.no_grad()
    def act(self, observation: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.asarray(observation), dtype=self._dtype).reshape(1, -1)
        return self.module(x)[0].double().numpy()

    def reset(self) -> None:
        pass
