"""Behaviour cloning of a deterministic feedback policy under a certified Lipschitz bound."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipctl.agents.progress import progress_bar
from lipctl.agents.trainer import MetricsLogger
from lipctl.control.policy import sampled_lower_bound
from lipctl.lipschitz import Certificate, LipschitzSpec, certify, post_step
from lipctl.lipschitz.muon import make_optimizer

KIND = "behaviour_cloning"  # the `agent.kind` of a behaviour-cloning config and checkpoint


class BCPolicy(nn.Module):
    """obs [B, n] -> action [B, m] in the env's units,

        clip(action_center + scale * mlp((obs - obs_center) / scale), low, high),

    where mlp is built from the `lipschitz` spec (a LipschitzSpec or a mapping of its fields,
    e.g. the `lipschitz` config group): its layer family held to the l2 Lipschitz bound `L`
    (None: unconstrained, same structure). One scalar `scale` divides the inputs and
    multiplies the outputs, so the two affine maps change the Lipschitz constant by 1/scale
    and scale: the policy's constant (clipping is 1-Lipschitz) is at most the MLP's, and the
    MLP's certificate is the policy's. The scalers are fixed buffers, set from the training
    data (`fit_scalers`) so that the MLP sees inputs of unit spread.
    """

    def __init__(self, obs_dim: int, act_dim: int, action_low: Sequence[float],
                 action_high: Sequence[float], hidden: Sequence[int] = (64, 64),
                 activation: str = "relu",
                 lipschitz: LipschitzSpec | Mapping[str, Any] | None = None):
        super().__init__()
        low = torch.as_tensor(np.asarray(action_low, dtype=np.float32))
        high = torch.as_tensor(np.asarray(action_high, dtype=np.float32))
        if low.shape != (act_dim,) or high.shape != (act_dim,) or not torch.all(low < high):
            raise ValueError(f"action bounds must have shape ({act_dim},) with low < high, got "
                             f"{low.tolist()} and {high.tolist()}")
        self.net = LipschitzSpec.of(lipschitz).mlp(obs_dim, act_dim, list(hidden), activation)
        self.register_buffer("low", low)
        self.register_buffer("high", high)
        self.register_buffer("obs_center", torch.zeros(obs_dim))
        self.register_buffer("action_center", torch.zeros(act_dim))
        self.register_buffer("scale", torch.ones(()))

    @torch.no_grad()
    def fit_scalers(self, observations: Tensor, actions: Tensor) -> None:
        """Centers: the mean observation and action; scale: the spread of the observations
        (standard deviation over all their entries; 1 if they do not vary)."""
        self.obs_center.copy_(observations.mean(0))
        self.action_center.copy_(actions.mean(0))
        spread = observations.std() if observations.numel() > 1 else observations.new_zeros(())
        self.scale.copy_(torch.where(spread > 0, spread, torch.ones_like(spread)))

    def forward(self, obs: Tensor) -> Tensor:
        action = self.action_center + self.scale * self.net((obs - self.obs_center) / self.scale)
        return torch.clamp(action, self.low, self.high)

    def certificate(self, observations: Tensor, tier: str = "eclipse") -> Certificate:
        """The MLP's certified upper bound at `tier` (the policy's, see the class docstring) and
        a sampled lower bound of the whole policy, started from `observations` [N, n]."""
        start = time.perf_counter()
        upper = certify(self.net, tier=tier)
        lower = sampled_lower_bound(self, observations)
        return Certificate(upper.upper, lower, upper.method, time.perf_counter() - start)


@dataclass(frozen=True)
class BCSettings:
    """Adam on the mean squared action error; early stopping on a holdout of whole episodes."""

    epochs: int = 300
    batch_size: int = 256
    lr: float = 1e-3
    holdout_ratio: float = 0.2  # fraction of the episodes held out (at least one, if two or more)
    patience: int = 30          # epochs without a 1e-4 relative improvement before stopping

    def __post_init__(self):
        for name in ("epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0 <= self.holdout_ratio < 1:
            raise ValueError(f"holdout_ratio must be in [0, 1), got {self.holdout_ratio!r}")


@dataclass(frozen=True)
class BCFit:
    """Mean squared action errors of the returned (best holdout) policy, in eval mode."""

    train_mse: float
    holdout_mse: float | None
    epochs: int
    best_epoch: int
    seconds: float

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def holdout_split(episode_index: np.ndarray, ratio: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, holdout): a random `ratio` of the episodes held out, at least one
    when there are two or more episodes and the ratio is positive; none otherwise."""
    episodes = np.unique(episode_index)
    count = 0 if ratio == 0 or len(episodes) < 2 else max(1, round(ratio * len(episodes)))
    held = rng.permutation(episodes)[:count]
    mask = np.isin(episode_index, held)
    return np.flatnonzero(~mask), np.flatnonzero(mask)


@torch.no_grad()
def _mse(policy: BCPolicy, obs: Tensor, actions: Tensor) -> Tensor:
    return F.mse_loss(policy(obs), actions)


def fit_bc(policy: BCPolicy, observations: np.ndarray, actions: np.ndarray,
           episode_index: np.ndarray, settings: BCSettings, seed: int = 0,
           logger: MetricsLogger | None = None, progress: bool = False) -> BCFit:
    """Fit `policy` to (observation, action) pairs by minibatch Adam on the MSE, applying its
    layers' post-step (projection families) after every optimiser step.

    Whole episodes are held out (`holdout_split`) and the policy's scalers are fitted on the
    training rows. After every epoch the policy is scored in eval mode (the map that is
    certified and deployed) on the holdout, or on the training rows when there is none; the
    best snapshot is kept, and training stops after `patience` epochs without improvement.
    `logger` gets one "train" row per epoch. The policy is returned in eval mode with the best
    weights loaded.
    """
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    device = policy.low.device
    obs = torch.as_tensor(observations, dtype=torch.float32, device=device)
    act = torch.as_tensor(actions, dtype=torch.float32, device=device).reshape(len(obs), -1)
    train_rows, holdout_rows = (torch.as_tensor(rows, device=device) for rows in
                                holdout_split(episode_index, settings.holdout_ratio, rng))
    policy.fit_scalers(obs[train_rows], act[train_rows])
    optimiser = make_optimizer(policy, "adam", lr=settings.lr)
    best, best_state, best_epoch, epoch = float("inf"), None, 0, 0
    bar = progress_bar(range(1, settings.epochs + 1), enabled=progress, desc="bc", leave=False)
    for epoch in bar:
        policy.train()
        order = train_rows[torch.randperm(len(train_rows), generator=generator).to(device)]
        for batch in order.split(settings.batch_size):
            # in the MLP's units (divided by scale^2), so Adam's epsilon stays negligible
            loss = F.mse_loss(policy(obs[batch]), act[batch]) / policy.scale.square()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            post_step(policy)
        policy.eval()
        metrics = {"train_mse": _mse(policy, obs[train_rows], act[train_rows])}
        if len(holdout_rows):
            metrics["holdout_mse"] = _mse(policy, obs[holdout_rows], act[holdout_rows])
        if logger is not None:
            logger.log("train", epoch, metrics)
        score = float(metrics.get("holdout_mse", metrics["train_mse"]))
        if score < best * (1 - 1e-4):
            best, best_state, best_epoch = score, copy.deepcopy(policy.state_dict()), epoch
        bar.set_postfix(mse=f"{float(metrics['train_mse']):.3g}", score=f"{score:.3g}",
                        refresh=False)
        if epoch - best_epoch >= settings.patience:
            break
    bar.close()
    policy.load_state_dict(best_state)
    holdout = _mse(policy, obs[holdout_rows], act[holdout_rows]) if len(holdout_rows) else None
    return BCFit(float(_mse(policy, obs[train_rows], act[train_rows])),
                 None if holdout is None else float(holdout), epoch, best_epoch,
                 time.perf_counter() - start)
