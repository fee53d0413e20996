"""Learned dynamics for model-based RL: an ensemble of MLPs predicting (reward, state change).

One module holds E members as batched LipschitzLinear layers (unconstrained, `bound=None`), so the
whole ensemble trains and predicts in one batched call. Probabilistic members output a Gaussian
(mean and a log-variance softly held between learned bounds, as in PETS/MBPO) and train on its
negative log-likelihood; deterministic members output the mean and train on MSE. E = 1 gives the
single probabilistic or single deterministic model through the same code.

Inputs are [state, action]; targets are [reward, next_state - state]. Both are normalised with
statistics fitted on each training set; losses and holdout errors are in normalised target units.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipctl.lipschitz import LipschitzLinear

MAX_HOLDOUT = 5000  # holdout rows are capped, as in MBPO, so validation stays cheap on big buffers
MIN_IMPROVEMENT = 0.01  # relative holdout-MSE drop that counts as progress for early stopping
LOGVAR_BOUND_WEIGHT = 0.01  # pull of the loss on the learned log-variance bounds
INIT_LOGVAR_BOUNDS = (-10.0, 0.5)


def transition_pairs(obs: Tensor, action: Tensor, reward: Tensor, next_obs: Tensor
                     ) -> tuple[Tensor, Tensor]:
    """Model inputs [state, action] and targets [reward, next_state - state] of transitions."""
    return torch.cat([obs, action], -1), torch.cat([reward.unsqueeze(-1), next_obs - obs], -1)


def check_training_args(holdout_ratio: float, batch_size: int, max_epochs: int | None,
                        patience: int, prefix: str = "") -> None:
    """Raise ValueError naming (with `prefix`) the first impossible model-training setting."""
    if not 0 < holdout_ratio < 1:
        raise ValueError(f"{prefix}holdout_ratio must be in (0, 1), got {holdout_ratio}")
    if batch_size < 1:
        raise ValueError(f"{prefix}batch_size must be >= 1, got {batch_size}")
    if max_epochs is not None and max_epochs < 1:
        raise ValueError(f"{prefix}max_epochs must be >= 1 or None, got {max_epochs}")
    if patience < 1:
        raise ValueError(f"{prefix}patience must be >= 1, got {patience}")


def _fit_scale(data: Tensor) -> tuple[Tensor, Tensor]:
    """Per-column mean and standard deviation (1 where a column is constant)."""
    std = data.std(0, correction=0)
    return data.mean(0), torch.where(std < 1e-6, torch.ones_like(std), std)


class DynamicsEnsemble(nn.Module):
    """E dynamics MLPs in one batched module; `elite_index` names the members used to sample.

    Every parameter has the member as its leading dimension, so members stay independent under
    one optimiser and can be snapshotted row by row.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        ensemble_size: int = 7,
        elites: int = 5,
        hidden: Sequence[int] = (200, 200, 200, 200),
        probabilistic: bool = True,
    ):
        super().__init__()
        if ensemble_size < 1:
            raise ValueError(f"ensemble_size must be >= 1, got {ensemble_size}")
        if not 1 <= elites <= ensemble_size:
            raise ValueError(f"elites must be in [1, ensemble_size={ensemble_size}], got {elites}")
        if any(width < 1 for width in hidden):
            raise ValueError(f"hidden widths must be positive, got {list(hidden)}")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.ensemble_size, self.probabilistic = ensemble_size, probabilistic
        in_dim, self.out_dim = obs_dim + act_dim, 1 + obs_dim
        sizes = [in_dim, *hidden]
        layers: list[nn.Module] = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [LipschitzLinear(n_in, n_out, bound=None, ensemble_size=ensemble_size),
                       nn.SiLU()]
        heads = 2 if probabilistic else 1
        layers.append(LipschitzLinear(sizes[-1], heads * self.out_dim, bound=None,
                                      ensemble_size=ensemble_size))
        self.net = nn.Sequential(*layers)
        if probabilistic:
            low, high = INIT_LOGVAR_BOUNDS
            self.min_logvar = nn.Parameter(torch.full((ensemble_size, 1, self.out_dim), low))
            self.max_logvar = nn.Parameter(torch.full((ensemble_size, 1, self.out_dim), high))
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_std", torch.ones(in_dim))
        self.register_buffer("target_mean", torch.zeros(self.out_dim))
        self.register_buffer("target_std", torch.ones(self.out_dim))
        self.register_buffer("elite_index", torch.arange(elites))

    def fit_normalizers(self, inputs: Tensor, targets: Tensor) -> None:
        """Set input and target normalisation from training data [N, in] and [N, out]."""
        for (mean, std), data in (((self.input_mean, self.input_std), inputs),
                                  ((self.target_mean, self.target_std), targets)):
            fitted_mean, fitted_std = _fit_scale(data)
            mean.copy_(fitted_mean)
            std.copy_(fitted_std)

    def forward(self, inputs: Tensor) -> tuple[Tensor, Tensor | None]:
        """Every member's mean and log-variance (None if deterministic), [E, B, out], in
        normalised target units; `inputs` are raw, [B, in] (shared) or [E, B, in]."""
        x = (inputs - self.input_mean) / self.input_std
        if x.dim() == 2:
            x = x.expand(self.ensemble_size, *x.shape)
        out = self.net(x)
        if not self.probabilistic:
            return out, None
        mean, raw_logvar = out.chunk(2, dim=-1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - raw_logvar)
        return mean, self.min_logvar + F.softplus(logvar - self.min_logvar)

    def loss(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """Sum over members of each member's mean Gaussian NLL (or MSE) on its own rows,
        [E, B, in] and [E, B, out]; members' gradients do not mix."""
        y = (targets - self.target_mean) / self.target_std
        mean, logvar = self(inputs)
        if logvar is None:
            return (mean - y).pow(2).mean((1, 2)).sum()
        nll = ((mean - y).pow(2) * torch.exp(-logvar) + logvar).mean((1, 2)).sum()
        return nll + LOGVAR_BOUND_WEIGHT * (self.max_logvar.sum() - self.min_logvar.sum())

    @torch.no_grad()
    def member_mse(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """Each member's MSE of its mean on shared rows [B, in], [B, out], in normalised target
        units, [E]."""
        y = (targets - self.target_mean) / self.target_std
        return (self(inputs)[0] - y).pow(2).mean((1, 2))

    @torch.no_grad()
    def predict(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """Every member's mean and variance in target units, [E, B, out] (variance 0 if
        deterministic)."""
        mean, logvar = self(inputs)
        variance = torch.zeros_like(mean) if logvar is None else logvar.exp()
        return (self.target_mean + self.target_std * mean,
                self.target_std.pow(2) * variance)

    @torch.no_grad()
    def sample_step(self, obs: Tensor, action: Tensor, generator: torch.Generator | None = None
                    ) -> tuple[Tensor, Tensor]:
        """Next states [B, obs] and rewards [B], each row from a random elite member (and a
        draw from its Gaussian when probabilistic)."""
        mean, variance = self.predict(torch.cat([obs, action], -1))
        rows = torch.arange(len(obs), device=obs.device)
        pick = torch.randint(len(self.elite_index), (len(obs),), generator=generator,
                             device=obs.device)
        mean, variance = mean[self.elite_index[pick], rows], variance[self.elite_index[pick], rows]
        if self.probabilistic:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device)
            mean = mean + variance.sqrt() * noise
        return obs + mean[:, 1:], mean[:, 0]


def train_model(
    model: DynamicsEnsemble,
    optimizer: torch.optim.Optimizer,
    inputs: Tensor,
    targets: Tensor,
    holdout_ratio: float = 0.2,
    batch_size: int = 256,
    max_epochs: int | None = None,
    patience: int = 5,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Fit every member at once, each on its own bootstrap of the non-holdout rows (a single
    model on all of them), reshuffled every epoch.

    A random holdout (ratio of the rows, at most MAX_HOLDOUT) is set aside and the normalisers
    are fitted on the rest. After each epoch each member's holdout MSE is compared with its best;
    a member whose MSE fell by MIN_IMPROVEMENT below its best (the first epoch always counts, as
    in MBPO) keeps a snapshot of its weights. Training stops when no member improved for
    `patience` epochs (or at `max_epochs`); every member then returns to its best snapshot and
    the `elites` members with the lowest holdout MSE become the ones `sample_step` draws from.

    Returns tensors: holdout_mse (mean over elites), holdout_mse_members [E], epochs,
    train_seconds.
    """
    check_training_args(holdout_ratio, batch_size, max_epochs, patience)
    start = time.perf_counter()
    n_rows = len(inputs)
    n_holdout = min(max(1, int(n_rows * holdout_ratio)), MAX_HOLDOUT)
    if n_rows - n_holdout < 1:
        raise ValueError(f"need at least 2 transitions to train a model, got {n_rows}")
    device = inputs.device
    order = torch.randperm(n_rows, generator=generator, device=device)
    holdout, train = order[:n_holdout], order[n_holdout:]
    model.fit_normalizers(inputs[train], targets[train])
    x_holdout, y_holdout = inputs[holdout], targets[holdout]
    n_train, members = len(train), model.ensemble_size
    if members == 1:  # a single model sees every training row each epoch
        member_rows = train.unsqueeze(0)
    else:
        member_rows = train[torch.randint(n_train, (members, n_train), generator=generator,
                                          device=device)]

    params = list(model.parameters())
    best = [p.detach().clone() for p in params]
    best_mse = torch.full((members,), torch.inf, device=device)
    epochs, stale = 0, 0
    while stale < patience and (max_epochs is None or epochs < max_epochs):
        shuffle = torch.rand(members, n_train, generator=generator, device=device).argsort(1)
        epoch_rows = member_rows.gather(1, shuffle)
        for first in range(0, n_train, batch_size):
            rows = epoch_rows[:, first:first + batch_size]
            loss = model.loss(inputs[rows], targets[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        epochs += 1
        mse = model.member_mse(x_holdout, y_holdout)
        improved = mse < best_mse * (1 - MIN_IMPROVEMENT)
        with torch.no_grad():
            for snapshot, p in zip(best, params, strict=True):
                snapshot[improved] = p[improved]
        best_mse = torch.where(improved, mse, best_mse)
        stale = 0 if bool(improved.any()) else stale + 1

    with torch.no_grad():
        for snapshot, p in zip(best, params, strict=True):
            p.copy_(snapshot)
        model.elite_index.copy_(best_mse.argsort()[: len(model.elite_index)])
    return {
        "holdout_mse": best_mse[model.elite_index].mean(),
        "holdout_mse_members": best_mse,
        "epochs": torch.tensor(epochs),
        "train_seconds": torch.tensor(time.perf_counter() - start),
    }
