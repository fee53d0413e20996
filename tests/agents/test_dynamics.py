from __future__ import annotations

import pytest
import torch

from lipctl.agents.dynamics import DynamicsEnsemble, train_model, transition_pairs


def toy_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    """1-D inputs on [-2, 2] and targets sin(2x) plus noise whose std grows with |x|."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=generator) * 4 - 2
    y = torch.sin(2 * x) + (0.05 + 0.25 * x.abs()) * torch.randn(n, 1, generator=generator)
    return x, y, generator


def test_transition_pairs_put_reward_first_and_state_change_after():
    obs, action = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5]])
    inputs, targets = transition_pairs(obs, action, torch.tensor([3.0]), torch.tensor([[1.5, 1.0]]))
    torch.testing.assert_close(inputs, torch.tensor([[1.0, 2.0, 0.5]]))
    torch.testing.assert_close(targets, torch.tensor([[3.0, 0.5, -1.0]]))


def test_members_differ_and_train_together_in_one_batched_call():
    torch.manual_seed(0)
    model = DynamicsEnsemble(2, 1, ensemble_size=4, elites=2, hidden=(32, 32))
    assert model.net[0].weight.shape == (4, 32, 3)
    inputs = torch.randn(300, 3)
    targets = torch.cat([inputs.sum(-1, keepdim=True), inputs[:, :2].sin()], -1)
    mean, _ = model.predict(inputs)
    assert mean.shape == (4, 300, 3) and not torch.allclose(mean[0], mean[1])

    batch_shapes = []
    model.net.register_forward_hook(lambda module, args, out: batch_shapes.append(args[0].shape))
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)  # one optimiser, one module
    result = train_model(model, optimizer, inputs, targets, batch_size=64, max_epochs=3,
                         patience=3)
    # 240 training rows: 4 minibatches per epoch plus one holdout evaluation, all members at once
    assert int(result["epochs"]) == 3 and len(batch_shapes) == 3 * (4 + 1)
    assert all(shape[0] == 4 for shape in batch_shapes)
    for old, new in zip(before, model.parameters(), strict=True):
        change = (new.detach() - old).flatten(1)
        assert change.abs().sum(1).gt(0).all()  # every member moved ...
        assert not torch.allclose(change[0], change[1])  # ... each in its own way
    assert result["holdout_mse_members"].shape == (4,)
    assert float(result["train_seconds"]) > 0


def test_early_stopping_and_elites_are_the_best_holdout_members():
    torch.manual_seed(1)
    x, y, generator = toy_data(1000)
    model = DynamicsEnsemble(0, 1, ensemble_size=4, elites=2, hidden=(32, 32),
                             probabilistic=False)
    frozen = torch.tensor([1.0, 0.0, 1.0, 0.0])  # members 1 and 3 never learn: worst holdout
    for p in model.parameters():
        p.register_hook(lambda grad: grad * frozen.view(-1, *[1] * (grad.dim() - 1)))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    result = train_model(model, optimizer, x, y, max_epochs=500, patience=5,
                         generator=generator)
    assert int(result["epochs"]) < 500  # the noise floor is reached well before
    members = result["holdout_mse_members"]
    assert sorted(model.elite_index.tolist()) == [0, 2]
    assert members[[0, 2]].max() < members[[1, 3]].min()
    torch.testing.assert_close(result["holdout_mse"], members[[0, 2]].mean())

    # sampling draws every row from an elite, deterministically when not probabilistic
    inputs = torch.linspace(-1, 1, 200)[:, None]
    _, reward = model.sample_step(torch.zeros(200, 0), inputs, generator)
    mean = model.predict(inputs)[0][..., 0]
    from_member = (reward[None] == mean).T  # [rows, members]
    assert from_member[:, [0, 2]].any(1).all() and not from_member[:, [1, 3]].any()
    assert from_member[:, 0].any() and from_member[:, 2].any()


@pytest.mark.slow
def test_probabilistic_model_learns_mean_and_variance_of_noisy_toy():
    torch.manual_seed(0)
    x, y, generator = toy_data(4000)
    model = DynamicsEnsemble(0, 1, ensemble_size=1, elites=1, hidden=(64, 64))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_model(model, optimizer, x, y, max_epochs=80, patience=80, generator=generator)
    grid = torch.linspace(-1.8, 1.8, 37)[:, None]
    mean, variance = model.predict(grid)
    assert (mean[0] - torch.sin(2 * grid)).abs().mean() < 0.05
    true_std = 0.05 + 0.25 * grid.abs()
    assert ((variance[0].sqrt() - true_std).abs() / true_std).mean() < 0.25

    next_obs, reward = model.sample_step(torch.zeros(20_000, 0), torch.ones(20_000, 1),
                                         generator)
    assert next_obs.shape == (20_000, 0)
    assert abs(float(reward.mean()) - torch.sin(torch.tensor(2.0))) < 0.05
    assert abs(float(reward.std()) - 0.3) < 0.05


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="elites"):
        DynamicsEnsemble(3, 1, ensemble_size=3, elites=5)
    with pytest.raises(ValueError, match="ensemble_size"):
        DynamicsEnsemble(3, 1, ensemble_size=0, elites=1)
    model = DynamicsEnsemble(1, 1, ensemble_size=1, elites=1, hidden=(8,))
    optimizer = torch.optim.Adam(model.parameters())
    data = torch.zeros(10, 2), torch.zeros(10, 2)
    with pytest.raises(ValueError, match="holdout_ratio"):
        train_model(model, optimizer, *data, holdout_ratio=1.0)
    with pytest.raises(ValueError, match="patience"):
        train_model(model, optimizer, *data, patience=0)
