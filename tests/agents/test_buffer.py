from __future__ import annotations

import numpy as np
import pytest
import torch

from lipctl.agents.buffer import ReplayBuffer


def fill(buffer: ReplayBuffer, n: int) -> None:
    for i in range(n):
        buffer.add(np.full(3, i), np.full(1, -i), float(i), np.full(3, i + 1), i % 5 == 4)


def test_ring_overwrites_oldest_and_keeps_float32():
    buffer = ReplayBuffer(4, obs_dim=3, act_dim=1, device="cpu")
    fill(buffer, 6)
    assert len(buffer) == 4 and buffer.position == 2
    stored = sorted(buffer._fields["reward"].tolist())
    assert stored == [2.0, 3.0, 4.0, 5.0]
    assert all(t.dtype == torch.float32 for t in buffer._fields.values())
    assert buffer.megabytes == pytest.approx(4 * (3 + 1 + 1 + 3 + 1) * 4 / 2**20)


def test_sample_returns_consistent_transitions():
    buffer = ReplayBuffer(100, obs_dim=3, act_dim=1, device="cpu")
    fill(buffer, 20)
    batch = buffer.sample(64)
    assert batch.obs.shape == (64, 3) and batch.reward.shape == (64,)
    torch.testing.assert_close(batch.next_obs, batch.obs + 1)
    torch.testing.assert_close(batch.action[:, 0], -batch.reward)
    torch.testing.assert_close(batch.done, (batch.reward % 5 == 4).float())


def test_state_dict_round_trip_continues_the_same_samples():
    buffer = ReplayBuffer(50, obs_dim=3, act_dim=1, device="cpu", seed=3)
    fill(buffer, 30)
    state = buffer.state_dict()
    expected = buffer.sample(8).reward
    restored = ReplayBuffer(50, obs_dim=3, act_dim=1, device="cpu", seed=99)
    restored.load_state_dict(state)
    assert len(restored) == 30 and restored.position == 30
    torch.testing.assert_close(restored.sample(8).reward, expected)


def test_empty_buffer_and_bad_capacity_are_errors():
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0, 3, 1, "cpu")
    with pytest.raises(RuntimeError, match="empty"):
        ReplayBuffer(5, 3, 1, "cpu").sample(2)
