"""The by-construction families (LDL', Sandwich): the LMI holds for any parameters, the network
certifies at its bound, PGD never beats the certificate, and the plain export is the same
function."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from lipctl.lipschitz import (
    LDLLinear,
    LipschitzLinear,
    SandwichLinear,
    certify,
    check_lmi,
    freeze,
    lipschitz_mlp,
    lower_bound,
)
from lipctl.lipschitz.chained import SANDWICH_SLACK
from lipctl.lipschitz.muon import make_optimizer
from lipctl.lipschitz.orthogonal import cayley_semi_orthogonal

NAMES = ("ldl", "sandwich")


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def scrambled(net: torch.nn.Module, std: float = 0.7) -> torch.nn.Module:
    """The net with every parameter moved at random: the construction must hold anywhere."""
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(std * torch.randn_like(parameter))
    return net


def linears(net: torch.nn.Module) -> list[LipschitzLinear]:
    return [m for m in net.modules() if isinstance(m, LipschitzLinear)]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("ensemble_size", [None, 3])
def test_the_lmi_holds_for_any_parameters(name, activation, ensemble_size):
    """In float64, the unit weights satisfy the LipSDP-neuron LMI at rho = 1 with the
    multipliers the layers carry, for random parameters far from their initialisation."""
    for trial in range(5):
        net = lipschitz_mlp(6, 3, [16, 12, 8], bound=1.0, activation=activation, layer=name,
                            level=True, ensemble_size=ensemble_size)
        net = scrambled(net, std=0.3 * (trial + 1)).double()
        layers = linears(net)
        weights = [layer.unit_weight() for layer in layers]
        multipliers = [layer.lmi_multiplier() for layer in layers[:-1]]
        if ensemble_size is None:
            assert check_lmi(weights, multipliers, 1.0)
        for member in range(ensemble_size or 0):
            assert check_lmi([w[member] for w in weights], [m[member] for m in multipliers], 1.0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bound, level", [(1.0, False), (25.0, True), (25.0, False)])
@pytest.mark.parametrize("ensemble_size", [None, 2])
def test_a_network_built_for_a_bound_certifies_within_it_in_every_tier(
        name, bound, level, ensemble_size):
    net = scrambled(lipschitz_mlp(5, 2, [32, 32], bound=bound, layer=name, level=level,
                                  ensemble_size=ensemble_size))
    for member in [None] if ensemble_size is None else range(ensemble_size):
        for tier in ("product", "eclipse", "lipsdp"):
            certificate = certify(net, tier=tier, member=member)
            assert certificate.upper <= bound, (tier, certificate)
        assert certify(net, member=member).method == "construction"


def regression(rows: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(rows, 5)
    return x, 8 * torch.sin(2 * x[:, :2]) + x[:, 2:4] ** 2


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_pgd_with_20_restarts_never_exceeds_the_certificate_of_a_trained_net(name, activation):
    net = lipschitz_mlp(5, 2, [32, 32], bound=10.0, layer=name, activation=activation,
                        level=True)
    x, y = regression()
    optimizer = make_optimizer(net, "adam", lr=1e-2)
    losses = []
    for _ in range(150):
        loss = (net(x) - y).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    certified = certify(net, tier="eclipse").upper
    assert certified <= 10.0
    attack = max(lower_bound(net, x, steps=40, pairs=64, seed=seed) for seed in range(20))
    assert 0 < attack <= certified
    assert attack >= 0.2 * certified  # trained towards its bound, not trivially small


@pytest.mark.parametrize("name", NAMES)
def test_the_plain_export_is_the_same_function(name):
    net = scrambled(lipschitz_mlp(5, 2, [16, 16], bound=4.0, layer=name, level=True)).eval()
    frozen = freeze(net)
    assert not linears(frozen)
    x = torch.randn(64, 5)
    torch.testing.assert_close(frozen(x), net(x), rtol=1e-6, atol=1e-6)


def test_a_sandwich_network_is_the_lbdn_composition_of_its_layers():
    """The MLP form computes Wang & Manchester's layers: h -> sqrt(2) A' Psi
    relu(sqrt(2) Psi^-1 B h + b) in turn, then the semi-orthogonal output map."""
    net = scrambled(lipschitz_mlp(5, 2, [16, 8], bound=1.0, layer="sandwich", level=True))
    *hidden, head = linears(net)
    x = torch.randn(32, 5)
    c = 1 - SANDWICH_SLACK
    h = x
    for layer in hidden:
        a, b = layer.factors()
        psi = layer.psi.exp()
        z = F.relu(c * math.sqrt(2) * (h @ b.T) / psi + layer.bias)
        h = math.sqrt(2) * (z * psi) @ a
    expected = c * h @ cayley_semi_orthogonal(head.weight).T + head.bias
    torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", [LDLLinear, SandwichLinear])
def test_a_layer_built_alone_is_a_contraction_times_its_bound(family):
    layer = scrambled(family(7, 5, bound=3.0))
    sigma = torch.linalg.matrix_norm(layer.effective_weight().detach(), ord=2)
    assert sigma <= 3.0


@pytest.mark.parametrize("name", NAMES)
def test_a_non_elementwise_activation_is_refused(name):
    with pytest.raises(ValueError, match=f"layer family '{name}' needs one of the activations "
                                         "relu, tanh, got 'maxmin'"):
        lipschitz_mlp(4, 1, [8], bound=1.0, layer=name, activation="maxmin")


def test_a_chained_layer_refuses_a_predecessor_of_another_kind():
    with pytest.raises(ValueError, match="follows a hidden layer of its own family"):
        LDLLinear(4, 2).join(SandwichLinear(3, 4), output=True)


@pytest.mark.parametrize("name", NAMES)
def test_a_deep_copy_keeps_its_own_chain(name):
    net = lipschitz_mlp(5, 2, [16, 16], bound=2.0, layer=name)
    twin = copy.deepcopy(net)
    first, *_ = linears(twin)
    with torch.no_grad():
        first.weight.add_(1.0)
    assert linears(twin)[1].previous is first
    x = torch.randn(8, 5)
    assert not torch.allclose(twin(x), net(x))
    twin.load_state_dict(net.state_dict())
    torch.testing.assert_close(twin(x), net(x))
