import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipctl.lipschitz import GroupSort, MaxMin, SpectralLinear, lipschitz_mlp, upper_bound


def exact_sigma(weight: torch.Tensor) -> torch.Tensor:
    return torch.linalg.matrix_norm(weight.detach().double(), ord=2)


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("shape", [(16, 24), (64, 64), (8, 3)])
def test_normalize_eval_holds_exact_sigma_at_bound(shape):
    layer = SpectralLinear(*shape, bound=2.0).eval()
    sigma = exact_sigma(layer.effective_weight())
    assert sigma.item() == pytest.approx(2.0, rel=1e-5)
    assert sigma.item() <= 2.0


def test_cap_leaves_small_weights_and_caps_large_ones():
    layer = SpectralLinear(16, 16, bound=10.0, mode="cap").eval()
    assert exact_sigma(layer.weight) < 10.0
    assert torch.equal(layer.effective_weight(), layer.weight)
    with torch.no_grad():
        layer.weight.mul_(100.0)
    sigma = exact_sigma(layer.effective_weight()).item()
    assert sigma == pytest.approx(10.0, rel=1e-5) and sigma <= 10.0


def test_eval_cache_follows_weight_updates():
    layer = SpectralLinear(12, 10, bound=1.0).eval()
    layer(torch.randn(4, 12))
    with torch.no_grad():
        layer.weight.mul_(3.0)
    assert exact_sigma(layer.effective_weight()).item() == pytest.approx(1.0, rel=1e-5)
    layer.load_state_dict({k: v * 0.1 if k == "weight" else v
                           for k, v in layer.state_dict().items()})
    assert exact_sigma(layer.effective_weight()).item() == pytest.approx(1.0, rel=1e-5)


def test_eval_sigma_is_exact_after_fused_optimiser_steps():
    """Fused Adam leaves the weight's version counter alone: the cache must not go stale."""
    torch.manual_seed(0)
    layer = SpectralLinear(12, 10, bound=1.0, ensemble_size=2)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.5, fused=True)
    layer.eval()(torch.randn(2, 4, 12))  # fills the cache
    layer.train()
    for _ in range(5):
        optimizer.zero_grad()
        (-layer(torch.randn(2, 4, 12)).pow(2).sum()).backward()
        optimizer.step()
    sigmas = exact_sigma(layer.eval().effective_weight())
    assert torch.allclose(sigmas, torch.ones(2, dtype=sigmas.dtype), rtol=1e-5)


def test_power_iteration_vectors_persist_and_converge():
    layer = SpectralLinear(32, 24, bound=1.0).train()
    assert {"u", "v"} <= set(layer.state_dict())
    u0 = layer.u.clone()
    layer(torch.randn(5, 32))
    assert not torch.equal(layer.u, u0)
    for _ in range(100):
        layer(torch.randn(5, 32))
    power_sigma = layer.u @ layer.weight.detach() @ layer.v
    assert power_sigma.item() == pytest.approx(exact_sigma(layer.weight).item(), rel=1e-4)
    assert exact_sigma(layer.effective_weight()).item() == pytest.approx(1.0, rel=1e-3)


def test_training_mode_backpropagates_through_sigma():
    layer = SpectralLinear(8, 6, bound=1.0).train()
    layer(torch.randn(4, 8)).pow(2).sum().backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
    # two forwards before one backward must not break the graph
    layer.zero_grad()
    (layer(torch.randn(4, 8)).sum() + layer(torch.randn(4, 8)).sum()).backward()
    assert layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("training", [True, False])
def test_ensemble_members_are_independent_and_match_functional_linear(training):
    layer = SpectralLinear(10, 7, bound=1.5, ensemble_size=3).train(training)
    with torch.no_grad():
        for e in range(3):
            layer.weight[e].mul_(10.0 ** e)  # very different sigmas per member
    if training:
        for _ in range(50):
            layer(torch.randn(3, 2, 10))
    x = torch.randn(3, 5, 10)
    weight = layer.effective_weight()
    out = layer(x)
    assert out.shape == (3, 5, 7)
    for e in range(3):
        expected = F.linear(x[e], weight[e], layer.bias[e])
        torch.testing.assert_close(out[e], expected)
        assert exact_sigma(weight[e]).item() == pytest.approx(1.5, rel=1e-3 if training else 1e-5)


def test_ensemble_rejects_wrong_input_shape():
    layer = SpectralLinear(4, 3, ensemble_size=2)
    with pytest.raises(ValueError, match="ensemble"):
        layer(torch.randn(5, 4))


def test_unbounded_layer_is_plain_linear_without_bias():
    layer = SpectralLinear(6, 4, bound=None, bias=False)
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x), x @ layer.weight.T)


@pytest.mark.parametrize("kwargs, name", [
    (dict(bound=-1.0), "bound"), (dict(bound=0.0), "bound"), (dict(mode="clip"), "mode"),
    (dict(ensemble_size=0), "ensemble_size"), (dict(power_iterations=0), "power_iterations"),
])
def test_spectral_linear_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SpectralLinear(4, 4, **kwargs)


def test_maxmin_sorts_pairs_is_1_lipschitz_and_norm_preserving():
    act = MaxMin()
    torch.testing.assert_close(act(torch.tensor([1.0, 3.0, -2.0, -5.0])),
                               torch.tensor([3.0, 1.0, -2.0, -5.0]))
    a, b = torch.randn(1000, 8), torch.randn(1000, 8)
    assert (act(a) - act(b)).norm(dim=1).le((a - b).norm(dim=1) * (1 + 1e-6)).all()
    torch.testing.assert_close(act(a).norm(dim=1), a.norm(dim=1))
    with pytest.raises(ValueError, match="divisible"):
        act(torch.randn(2, 5))


def test_groupsort_sorts_each_group_descending():
    out = GroupSort(3)(torch.tensor([[1.0, 3.0, 2.0, 0.0, -1.0, 5.0]]))
    torch.testing.assert_close(out, torch.tensor([[3.0, 2.0, 1.0, 5.0, 0.0, -1.0]]))


@pytest.mark.parametrize("activation", ["relu", "tanh", "maxmin", "groupsort"])
@pytest.mark.parametrize("mode", ["normalize", "cap"])
def test_lipschitz_mlp_respects_global_bound(activation, mode):
    net = lipschitz_mlp(5, 2, [32, 32], bound=3.0, activation=activation, mode=mode).eval()
    if mode == "cap":
        with torch.no_grad():
            for layer in net:
                if isinstance(layer, SpectralLinear):
                    layer.weight.mul_(20.0)  # force every layer into its cap
    bound = upper_bound(net)
    assert bound <= 3.0
    assert bound == pytest.approx(3.0, rel=1e-4)
    assert net(torch.randn(7, 5)).shape == (7, 2)


def test_lipschitz_mlp_unbounded_and_ensemble_structure():
    plain = lipschitz_mlp(4, 1, [16, 16], bound=None)
    layers = [m for m in plain if isinstance(m, SpectralLinear)]
    assert len(layers) == 3 and all(layer.bound is None for layer in layers)
    ensemble = lipschitz_mlp(4, 1, [16], bound=2.0, ensemble_size=3)
    assert ensemble(torch.randn(3, 9, 4)).shape == (3, 9, 1)
    assert all(m.bound == pytest.approx(2.0 ** 0.5) for m in ensemble
               if isinstance(m, SpectralLinear))


@pytest.mark.parametrize("kwargs, name", [
    (dict(activation="gelu"), "activation"), (dict(bound=-2.0), "bound"),
    (dict(activation="groupsort", hidden=[6]), "divisible"),
])
def test_lipschitz_mlp_rejects_bad_arguments(kwargs, name):
    args = dict(in_features=3, out_features=1, hidden=[8], bound=1.0) | kwargs
    with pytest.raises(ValueError, match=name):
        lipschitz_mlp(**args)


def test_layers_are_plain_modules_for_torch_tooling():
    net = lipschitz_mlp(3, 2, [8], bound=1.0)
    assert isinstance(net, nn.Sequential)
    clone = lipschitz_mlp(3, 2, [8], bound=1.0)
    clone.load_state_dict(net.state_dict())
    x = torch.randn(4, 3)
    torch.testing.assert_close(clone.eval()(x), net.eval()(x))
