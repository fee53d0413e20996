"""Critic regularisers of the single-model MBPO variants: capped spectral layers that lower the
critic's Lipschitz constant, spectral weights shared within an update phase, the robust loss in
the states' own scale, and the critics' Lipschitz constant with respect to the state."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from lipctl.agents.critic_learner import TwinCritic
from lipctl.agents.sac import SAC
from lipctl.lipschitz import LipschitzSpec, SpectralLinear, certify, shared_weights
from tests.agents.test_sac import random_batch


def _fit(critic: TwinCritic, steps: int = 400) -> None:
    """Regress both critics on a steep fixed target, the same steps for every critic."""
    generator = torch.Generator().manual_seed(0)
    obs, action = torch.randn(512, 3, generator=generator), torch.rand(512, 1, generator=generator)
    target = 20 * torch.sin(3 * obs[:, 0]) + 10 * obs[:, 1] * action[:, 0]
    optimiser = torch.optim.Adam(critic.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = (critic(obs, action) - target).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


@pytest.mark.slow
def test_capped_critic_ends_smoother_than_the_unregularised_one():
    inputs = torch.cat([torch.randn(256, 3), torch.rand(256, 1)], -1)
    bounds = {}
    for name, options in {"plain": {}, "capped": dict(mode="cap", layer_cap=1.0,
                                                      free_output=True)}.items():
        torch.manual_seed(0)
        critic = TwinCritic(3, 1, (64, 64), lipschitz=LipschitzSpec(**options))
        _fit(critic)
        critic.eval()
        bounds[name] = [certify(critic.net, inputs, member=i) for i in range(2)]
    for plain, capped in zip(bounds["plain"], bounds["capped"], strict=True):
        assert capped.upper < plain.upper and capped.lower < plain.lower
    spec = LipschitzSpec(mode="cap", layer_cap=1.0, free_output=True)
    hidden = [m for m in TwinCritic(3, 1, (8, 8), lipschitz=spec).net
              if isinstance(m, SpectralLinear)]
    assert [layer.bound for layer in hidden] == [1.0, 1.0, None]  # the head is free


def test_shared_weights_give_the_same_forward_with_one_power_iteration():
    torch.manual_seed(0)
    critic = TwinCritic(3, 1, (16, 16), lipschitz=LipschitzSpec(mode="cap", layer_cap=0.5))
    obs, action = torch.randn(8, 3), torch.rand(8, 1)
    first = critic.net[0]
    reference = copy.deepcopy(critic)(obs, action).detach()  # one power iteration, same start
    with shared_weights(critic):
        u = first.u.clone()
        q1, q2 = critic(obs, action), critic(obs, action)
        assert torch.equal(first.u, u)  # no power iteration inside the block
        (q1.sum() + q2.sum()).backward()
    assert first.weight.grad is not None and torch.isfinite(first.weight.grad).all()
    assert first._shared_weight is None  # released
    torch.testing.assert_close(q1, q2)
    torch.testing.assert_close(q1.detach(), reference)


def test_robust_loss_radius_is_in_units_of_the_state_std():
    buffer = random_batch(256)
    agent = SAC(3, 1, hidden=(16, 16), lipschitz={"robust_weight": 1.0, "robust_eps": 0.1,
                                           "robust_batch": 32})
    batch = buffer.sample(256)
    scaled = batch._replace(obs=batch.obs * torch.tensor([1.0, 10.0, 100.0]))
    agent.update(scaled)
    np.testing.assert_allclose(agent.state_scale.numpy(), scaled.obs[:32].std(0).numpy(),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="robust_eps_units"):
        SAC(3, 1, lipschitz={"robust_eps_units": "metres"})


def test_state_lipschitz_of_each_critic_is_below_its_certificate():
    agent = SAC(3, 1, hidden=(32, 32), lipschitz={"mode": "cap", "layer_cap": 1.0})
    buffer = random_batch(128)
    for _ in range(20):
        agent.update(buffer.sample(32))
    probe = buffer.spread(64)
    state = agent.critic_state_lipschitz(probe.obs, probe.action)
    certificates = agent.critic_certificates()
    assert set(state) == set(certificates) == {"critic0", "critic1"}
    for name, value in state.items():
        assert 0 < value <= certificates[name].upper
