import pytest
import torch

import lipctl.lipschitz.aol  # noqa: F401  (registers "aol")
import lipctl.lipschitz.orthogonal  # noqa: F401  (registers "orthogonal")
from lipctl.lipschitz import FAMILIES, certify, freeze, lipschitz_mlp, lower_bound
from lipctl.lipschitz.aol import AOLLinear, aol_rescale
from lipctl.lipschitz.orthogonal import OrthogonalLinear, cayley_semi_orthogonal

FAMILY_NAMES = ("aol", "orthogonal")
SHAPES = [(16, 24), (24, 16), (20, 20)]  # (in, out): wide, tall and square weights
PGD_RESTARTS = 20


def svdvals(weight: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(weight.detach().double())


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def test_families_are_registered():
    assert FAMILIES["aol"] is AOLLinear
    assert FAMILIES["orthogonal"] is OrthogonalLinear


@pytest.mark.parametrize("ensemble_size", [None, 2])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_aol_effective_weight_has_spectral_norm_at_most_bound(shape, ensemble_size, training):
    layer = AOLLinear(*shape, bound=3.0, ensemble_size=ensemble_size).train(training)
    with torch.no_grad():
        layer.weight.mul_(50.0)  # the raw scale must not matter
    sigma = svdvals(layer.effective_weight()).amax(dim=-1)
    assert sigma.shape == (() if ensemble_size is None else (ensemble_size,))
    assert (sigma <= 3.0 * (1 + 1e-6)).all() if training else (sigma <= 3.0).all()


def test_aol_is_tight_for_orthogonal_columns_and_guards_zero_columns():
    scales = torch.tensor([0.5, 2.0, 3.0, 7.0], dtype=torch.float64)
    columns = torch.linalg.qr(torch.randn(10, 4, dtype=torch.float64)).Q * scales
    torch.testing.assert_close(svdvals(aol_rescale(columns)), torch.ones(4, dtype=torch.float64))
    weight = torch.randn(6, 5)
    weight[:, 2] = 0.0
    weight.requires_grad_(True)
    rescaled = aol_rescale(weight)
    rescaled.pow(2).sum().backward()
    assert torch.isfinite(rescaled).all() and (rescaled[:, 2] == 0).all()
    assert torch.isfinite(weight.grad).all()
    assert svdvals(rescaled).max() <= 1.0 + 1e-6


@pytest.mark.parametrize("ensemble_size", [None, 2])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_orthogonal_effective_weight_has_every_singular_value_at_bound(shape, ensemble_size,
                                                                       training):
    layer = OrthogonalLinear(*shape, bound=3.0, ensemble_size=ensemble_size).train(training)
    weight = layer.effective_weight()
    lead = () if ensemble_size is None else (ensemble_size,)
    assert weight.shape == (*lead, shape[1], shape[0])
    values = svdvals(weight)
    assert values.shape == (*lead, min(shape))
    torch.testing.assert_close(values, torch.full_like(values, 3.0), rtol=2e-6, atol=0)
    if not training:
        assert (values <= 3.0).all()


def test_cayley_stays_orthogonal_for_large_parameters_and_differs_per_member():
    weight = 100 * torch.randn(2, 12, 8, dtype=torch.float64)
    q = cayley_semi_orthogonal(weight)
    eye = torch.eye(8, dtype=torch.float64).expand(2, 8, 8)
    torch.testing.assert_close(q.transpose(-2, -1) @ q, eye)
    assert not torch.allclose(q[0], q[1])
    torch.testing.assert_close(cayley_semi_orthogonal(weight[1]), q[1])


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_train_and_eval_weights_agree_and_gradients_reach_the_raw_weight(family):
    layer = FAMILIES[family](12, 8, bound=2.0, ensemble_size=2)
    torch.testing.assert_close(layer.train().effective_weight(),
                               layer.eval().effective_weight(), rtol=1e-5, atol=1e-6)
    layer.train()(torch.randn(2, 5, 12)).pow(2).sum().backward()
    grad = layer.weight.grad
    assert torch.isfinite(grad).all() and (grad.abs().sum((1, 2)) > 0).all()


def test_unbounded_layers_are_plain_linear():
    for family in FAMILY_NAMES:
        layer = FAMILIES[family](6, 4, bound=None)
        x = torch.randn(3, 6)
        torch.testing.assert_close(layer(x), x @ layer.weight.T + layer.bias)


def ensemble_members(ensemble_size):
    return [None] if ensemble_size is None else list(range(ensemble_size))


@pytest.mark.parametrize("ensemble_size", [None, 2])
@pytest.mark.parametrize("bound", [1.0, 5.0])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_network_certifies_below_its_bound_on_every_tier(family, bound, ensemble_size):
    net = lipschitz_mlp(4, 2, [16, 16], bound=bound, layer=family, ensemble_size=ensemble_size)
    for member in ensemble_members(ensemble_size):
        uppers = {tier: certify(net, tier=tier, member=member).upper
                  for tier in ("product", "eclipse", "lipsdp")}
        assert all(upper <= bound for upper in uppers.values()), uppers
        assert uppers["lipsdp"] <= uppers["eclipse"] <= uppers["product"]
        if family == "orthogonal":  # every layer sits at its share of the bound
            assert uppers["product"] == pytest.approx(bound, rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["relu", "groupsort"])
@pytest.mark.parametrize("ensemble_size", [None, 2])
@pytest.mark.parametrize("bound", [1.0, 5.0])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_pgd_with_random_restarts_never_exceeds_the_certificate(family, bound, ensemble_size,
                                                                activation):
    net = lipschitz_mlp(4, 2, [16, 16], bound=bound, layer=family, activation=activation,
                        ensemble_size=ensemble_size).eval()
    data = 2 * torch.randn(64, 4)
    for member in ensemble_members(ensemble_size):
        upper = certify(net, tier="lipsdp", member=member).upper
        ratios = [lower_bound(net, data, steps=40, pairs=32, member=member, seed=seed)
                  for seed in range(PGD_RESTARTS)]
        assert 0 < max(ratios) <= upper <= bound


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_level_network_certifies_at_most_fifty(family):
    net = lipschitz_mlp(3, 1, [32, 32], bound=50.0, layer=family, level=True)
    product = certify(net, tier="product").upper
    assert certify(net, tier="lipsdp").upper <= product <= 50.0
    if family == "orthogonal":
        assert product == pytest.approx(50.0, rel=1e-5)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_frozen_export_matches_eval_and_certifies_the_same(family):
    net = lipschitz_mlp(5, 3, [16, 16], bound=5.0, layer=family, level=True)
    frozen = freeze(net)
    assert not any(isinstance(m, FAMILIES[family]) for m in frozen.modules())
    x = torch.randn(32, 5)
    torch.testing.assert_close(frozen(x), net.eval()(x), rtol=0, atol=0)
    assert certify(frozen, tier="product").upper == certify(net, tier="product").upper


@pytest.mark.slow
@pytest.mark.parametrize("ensemble_size", [None, 2])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_short_regression_learns_through_the_reparametrisation(family, ensemble_size):
    lead = () if ensemble_size is None else (ensemble_size,)
    x = torch.rand(*lead, 256, 2) * 4 - 2
    y = torch.sin(2 * x[..., :1]) + x[..., 1:] ** 2 / 2
    net = lipschitz_mlp(2, 1, [32, 32], bound=10.0, layer=family, level=True,
                        activation="groupsort", ensemble_size=ensemble_size)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(300):
        loss = (net(x) - y).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.2 * losses[0]
    assert certify(net, tier="product", member=None if ensemble_size is None else 1).upper <= 10
