"""The adversarial-imitation discriminator D(s, a), its loss (label smoothing, entropy bonus,
gradient penalty) and the rewards it gives."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipctl.lipschitz import (
    gradient_penalty,
    interpolate,
    layer_family,
    lipschitz_mlp,
    takes_option,
)

# reward(logit of D): -log(1 - D) = softplus(logit) > 0; log D - log(1 - D) = logit
REWARD_FORMS = {"minus_log_one_minus_d": F.softplus, "logit": lambda logits: logits}
# where the gradient penalty is evaluated
PENALTY_POINTS = ("none", "interpolate", "expert", "policy")


class Discriminator(nn.Module):
    """Logit of the probability that (s, a) is the expert's.

    Its layers are of the Lipschitz layer family `layer` (a registered name, e.g. "spectral",
    "soft_cap"; projection families need `lipschitz.post_step` after each optimiser step).
    `bound` holds the whole network to a certified global Lipschitz bound (every layer held to
    bound**(1/layers)). `hidden_bound` holds the hidden layers only, each to that spectral norm,
    as spectral normalisation is used in adversarial imitation: the head stays free, or is held
    to spectral norm `head_bound` by the same family (capped, where the family has a mode).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (100, 100),
                 bound: float | None = None, activation: str = "tanh",
                 hidden_bound: float | None = None, head_bound: float | None = None,
                 layer: str = "spectral"):
        super().__init__()
        if bound is not None and hidden_bound is not None:
            raise ValueError("give either bound (every layer) or hidden_bound (hidden layers), "
                             "not both")
        if head_bound is not None and hidden_bound is None:
            raise ValueError("head_bound caps the head of a network whose hidden layers are "
                             "normalised: give hidden_bound too")
        if hidden_bound is not None and not hidden:
            raise ValueError("hidden_bound needs at least one hidden layer")
        self.net = lipschitz_mlp(obs_dim + act_dim, 1, hidden, bound=bound,
                                 layer_bound=hidden_bound, free_output=hidden_bound is not None,
                                 activation=activation, layer=layer)
        if head_bound is not None:
            family = layer_family(layer)
            cap = {"mode": "cap"} if takes_option(family, "mode") else {}
            head = family(hidden[-1], 1, bound=head_bound, **cap)
            head.join(self.net[-3], output=True)  # after the last hidden layer (chained families)
            self.net[-1] = head

    def forward(self, inputs: Tensor) -> Tensor:
        """Logits [B] of concatenated (observation, action) rows [B, n + m]."""
        return self.net(inputs).squeeze(-1)


def penalty_points(expert: Tensor, policy: Tensor, where: str, noise_std: float,
                   generator: torch.Generator | None = None) -> Tensor:
    """Points to hold the gradient penalty at: random interpolates of paired expert and policy
    rows, or expert / policy rows with Gaussian noise of `noise_std` added."""
    if where == "interpolate":
        rows = min(len(expert), len(policy))
        return interpolate(expert[:rows], policy[:rows], generator)
    if where not in ("expert", "policy"):
        raise ValueError(f"penalty points must be one of {PENALTY_POINTS[1:]}, got {where!r}")
    points = expert if where == "expert" else policy
    noise = torch.randn(points.shape, generator=generator, device=points.device,
                        dtype=points.dtype)
    return points + noise_std * noise


def bernoulli_entropy(logits: Tensor) -> Tensor:
    """Mean entropy (nats) of the Bernoulli distributions with these logits."""
    return F.binary_cross_entropy_with_logits(logits, torch.sigmoid(logits))


def discriminator_loss(discriminator: Discriminator, expert: Tensor, policy: Tensor,
                       penalty: str = "interpolate", k: float = 1.0, weight: float = 10.0,
                       one_sided: bool = True, noise_std: float = 0.1,
                       entropy_weight: float = 0.0,
                       expert_labels: tuple[float, float] = (1.0, 1.0),
                       generator: torch.Generator | None = None,
                       ) -> tuple[Tensor, dict[str, Tensor]]:
    """Binary cross-entropy (expert rows labelled uniformly in `expert_labels`, one-sided label
    smoothing; policy rows 0), minus `entropy_weight` times the entropy of D's outputs, plus
    `weight` times the gradient penalty on the input-gradient norm (target `k`, one- or
    two-sided) at the penalty points; returns the loss and detached metrics."""
    expert_logits, policy_logits = discriminator(expert), discriminator(policy)
    low, high = expert_labels
    labels = low + (high - low) * torch.rand(expert_logits.shape, generator=generator,
                                             device=expert.device, dtype=expert_logits.dtype)
    classification = (F.binary_cross_entropy_with_logits(expert_logits, labels)
                      + F.binary_cross_entropy_with_logits(policy_logits,
                                                           torch.zeros_like(policy_logits)))
    entropy = bernoulli_entropy(torch.cat([expert_logits, policy_logits]))
    loss = classification - entropy_weight * entropy
    metrics = {"disc_loss": classification.detach(), "disc_entropy": entropy.detach(),
               "disc_expert_accuracy": (expert_logits > 0).float().mean().detach(),
               "disc_policy_accuracy": (policy_logits < 0).float().mean().detach()}
    if penalty != "none" and weight > 0:
        points = penalty_points(expert, policy, penalty, noise_std, generator)
        grad_penalty = gradient_penalty(discriminator, points, k=k, one_sided=one_sided)
        loss = loss + weight * grad_penalty
        metrics["disc_gradient_penalty"] = grad_penalty.detach()
    return loss, metrics
