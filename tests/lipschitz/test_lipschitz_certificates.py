import io
import math
import time

import pytest
import torch
from torch import nn

from lipctl.lipschitz import (
    Certificate,
    GroupSort,
    MaxMin,
    SpectralLinear,
    certified_rho,
    certify,
    check_lmi,
    eclipse_fast_bound,
    eclipse_fast_multipliers,
    lipschitz_mlp,
    lipsdp_bound,
    lipsdp_matrix,
    lipsdp_multipliers,
    lower_bound,
    mlp_layers,
    upper_bound,
)
from lipctl.lipschitz.lipsdp import _rho_and_gradient

FAST_LIPSDP = 100  # iterations used in tests; the default (300) is measured in the report test


def mlp(sizes, activation=nn.ReLU, seed=0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(n_in, n_out), activation()]
    return nn.Sequential(*layers[:-1])


def largest_sampled_ratio(net: nn.Module, n_in: int, seed: int = 0) -> float:
    """Largest ||f(a) - f(b)|| / ||a - b|| over random far and near pairs (float64)."""
    generator = torch.Generator().manual_seed(seed)
    net = net.double()
    a = 2 * torch.randn(4000, n_in, generator=generator, dtype=torch.float64)
    near = a + 1e-3 * torch.randn(a.shape, generator=generator, dtype=torch.float64)
    far = 2 * torch.randn(a.shape, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        ratios = [(net(a) - net(b)).norm(dim=1) / (a - b).norm(dim=1) for b in (near, far)]
    return torch.cat(ratios).max().item()


def test_certificate_round_trips_through_a_weights_only_checkpoint():
    certificate = Certificate(upper=2.5, lower=None, method="eclipse", seconds=0.1)
    buffer = io.BytesIO()
    torch.save({"certificate": certificate.to_dict()}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["certificate"]
    assert Certificate.from_dict(loaded) == certificate
    with_lower = Certificate(upper=2.5, lower=1.25, method="product", seconds=0.2)
    assert Certificate.from_dict(with_lower.to_dict()) == with_lower


def test_mlp_layers_walks_nested_sequentials_and_ensembles():
    net = nn.Sequential(nn.Sequential(nn.Linear(3, 8), nn.Tanh()), nn.Linear(8, 6),
                        nn.Sequential(nn.LeakyReLU(0.1), nn.Sigmoid()), nn.Linear(6, 2),
                        nn.Linear(2, 2), nn.ReLU())
    weights, kinds = mlp_layers(net)
    assert [tuple(w.shape) for w in weights] == [(8, 3), (6, 8), (2, 6), (2, 2)]
    assert kinds == ["tanh", "leaky_relu+sigmoid", "identity"]
    assert all(w.dtype == torch.float64 for w in weights)
    ensemble = lipschitz_mlp(3, 1, [8], bound=1.0, ensemble_size=2).eval()
    w0, _ = mlp_layers(ensemble, member=0)
    w1, _ = mlp_layers(ensemble, member=1)
    assert not torch.equal(w0[0], w1[0])
    torch.testing.assert_close(w1[0], ensemble[0].effective_weight()[1].double())
    with pytest.raises(ValueError, match="member"):
        mlp_layers(ensemble)


def test_mlp_layers_accepts_a_list_of_weights():
    weights = [torch.randn(5, 3), torch.randn(2, 5)]
    listed, kinds = mlp_layers(weights)
    assert kinds == ["elementwise"]
    assert eclipse_fast_bound(weights) <= upper_bound(weights)
    with pytest.raises(ValueError, match="expects"):
        mlp_layers([torch.randn(5, 3), torch.randn(2, 4)])


def test_upper_bound_is_exact_for_a_single_linear_layer():
    net = nn.Sequential(nn.Linear(7, 5))
    sigma = torch.linalg.svdvals(net[0].weight.double())[0].item()
    assert upper_bound(net) == pytest.approx(sigma, rel=1e-12)
    assert eclipse_fast_bound(net) == pytest.approx(sigma, rel=1e-6)
    assert lipsdp_bound(net, iterations=FAST_LIPSDP) == pytest.approx(sigma, rel=1e-6)


@pytest.mark.parametrize("activation", [nn.ReLU, nn.Tanh])
@pytest.mark.parametrize("sizes", [(3, 24, 2), (4, 32, 32, 1), (2, 16, 16, 16, 3)])
@pytest.mark.parametrize("seed", [0, 1])
def test_no_sampled_pair_violates_any_tier(activation, sizes, seed):
    net = mlp(sizes, activation, seed)
    product = upper_bound(net)
    eclipse = eclipse_fast_bound(net)
    lipsdp = lipsdp_bound(net, iterations=FAST_LIPSDP)
    lower = lower_bound(net, 2 * torch.randn(64, sizes[0]), steps=30, pairs=64)
    sampled = largest_sampled_ratio(net, sizes[0], seed)
    assert max(sampled, lower) <= lipsdp <= eclipse <= product
    assert lipsdp < eclipse < product  # the tighter tiers do tighten on random nets


@pytest.mark.parametrize("solver", ["eclipse", "lipsdp"])
def test_lmi_check_accepts_the_certificate_and_rejects_a_smaller_rho(solver):
    weights, _ = mlp_layers(mlp((4, 32, 32, 2), seed=3))
    if solver == "eclipse":
        multipliers, rho = eclipse_fast_multipliers(weights)
    else:
        multipliers, rho = lipsdp_multipliers(weights, iterations=FAST_LIPSDP)
    rho_checked = certified_rho(weights, multipliers, rho)
    assert rho_checked is not None and rho <= rho_checked <= rho * (1 + 1e-2)
    assert check_lmi(weights, multipliers, rho_checked)
    assert not check_lmi(weights, multipliers, 0.9 * rho)
    assert not check_lmi(weights, [-m for m in multipliers], rho_checked)


def test_lipsdp_matrix_encodes_the_quadratic_form():
    weights, _ = mlp_layers(mlp((3, 6, 5, 2), seed=4))
    multipliers = [torch.rand(6, dtype=torch.float64), torch.rand(5, dtype=torch.float64)]
    rho = 1.7
    m = lipsdp_matrix(weights, multipliers, rho)
    torch.testing.assert_close(m, m.T)
    dz = [torch.randn(n, dtype=torch.float64) for n in (3, 6, 5)]
    lam = [rho * mult for mult in multipliers]
    expected = rho * dz[0].dot(dz[0]) - (weights[2] @ dz[2]).pow(2).sum()
    for i in (1, 2):
        expected -= 2 * (dz[i] * lam[i - 1]).dot(weights[i - 1] @ dz[i - 1] - dz[i])
    z = torch.cat(dz)
    assert (z @ m @ z).item() == pytest.approx(expected.item(), rel=1e-10)


def test_lipsdp_gradient_matches_finite_differences():
    weights, _ = mlp_layers(mlp((3, 10, 8, 2), seed=5))
    multipliers, rho_eclipse = eclipse_fast_multipliers(weights)
    # the full-matrix rho agrees with the layer-by-layer Schur chain
    assert _rho_and_gradient(weights, multipliers)[0] == pytest.approx(rho_eclipse, rel=1e-9)
    multipliers = [m * (1 + 0.2 * torch.rand_like(m)) for m in multipliers]
    _, gradient = _rho_and_gradient(weights, multipliers)
    for layer, neuron in [(0, 0), (0, 7), (1, 3)]:
        step = 1e-6
        shifted = [[m.clone() for m in multipliers] for _ in range(2)]
        shifted[0][layer][neuron] += step
        shifted[1][layer][neuron] -= step
        numeric = (_rho_and_gradient(weights, shifted[0])[0]
                   - _rho_and_gradient(weights, shifted[1])[0]) / (2 * step)
        assert gradient[layer][neuron].item() == pytest.approx(numeric, rel=1e-4, abs=1e-9)


@pytest.mark.parametrize("activation, label", [(MaxMin, "maxmin"), (lambda: GroupSort(4),
                                                                     "groupsort")])
def test_sort_activations_fall_back_to_the_product_bound(activation, label):
    net = mlp((4, 16, 16, 2), activation)
    product = upper_bound(net)
    assert eclipse_fast_bound(net) == product
    assert lipsdp_bound(net) == product
    certificate = certify(net, tier="lipsdp")
    assert certificate.method == f"product ({label})" and certificate.upper == product
    assert largest_sampled_ratio(net, 4) <= product


@pytest.mark.parametrize("tier", ["product", "eclipse", "lipsdp"])
def test_certify_reports_method_time_and_restores_modes(tier):
    net = lipschitz_mlp(4, 2, [32, 32], bound=2.0).train()
    net[1].eval()  # a mixed mode must come back as it was
    modes = [m.training for m in net.modules()]
    certificate = certify(net, torch.randn(64, 4), tier=tier)
    assert [m.training for m in net.modules()] == modes
    assert certificate.method == tier
    assert certificate.seconds > 0
    assert 0 < certificate.lower <= certificate.upper <= 2.0


def test_certify_each_ensemble_member():
    net = lipschitz_mlp(3, 1, [16, 16], bound=1.5, ensemble_size=2)
    with torch.no_grad():
        net[0].weight[1].mul_(0.01)  # member 1 is no longer normalised to the same weights
    members = [certify(net, torch.randn(32, 3), member=i) for i in range(2)]
    assert all(c.upper <= 1.5 and c.lower <= c.upper for c in members)
    assert members[0].upper != members[1].upper


def test_lower_bound_is_tight_but_never_above_a_single_layer_norm():
    net = lipschitz_mlp(6, 4, [], bound=3.0).eval()
    lower = lower_bound(net, torch.randn(32, 6))
    assert 0.99 * upper_bound(net) <= lower <= upper_bound(net)


@pytest.mark.parametrize("tier", ["product", "eclipse", "lipsdp"])
def test_unsupported_modules_are_rejected(tier):
    for bad in (nn.SiLU(), nn.LeakyReLU(2.0), nn.Dropout()):
        net = nn.Sequential(nn.Linear(3, 8), bad, nn.Linear(8, 1))
        with pytest.raises(ValueError, match="not supported by the certificate"):
            certify(net, tier=tier)


def test_bad_tier_and_empty_nets_are_rejected():
    with pytest.raises(ValueError, match="tier"):
        certify(mlp((2, 4, 1)), tier="exact")
    with pytest.raises(ValueError, match="no linear layer"):
        upper_bound(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="one multiplier vector per hidden layer"):
        check_lmi(mlp_layers(mlp((2, 4, 1)))[0], [], 1.0)


def test_spectral_layers_are_certified_with_exact_sigma():
    net = lipschitz_mlp(5, 1, [32, 32], bound=1.0, activation="tanh")
    for _ in range(3):
        net(torch.randn(8, 5))  # training-mode power iteration has not converged
    certificate = certify(net, tier="product")
    assert certificate.upper <= 1.0
    assert isinstance(net[0], SpectralLinear) and net.training


@pytest.mark.slow
def test_report_tiers_on_a_2x256_relu_mlp():
    """Prints what each tier gives on a random 2x256 ReLU MLP with 8 inputs (run with -s)."""
    net = mlp((8, 256, 256, 1), seed=0)
    data = torch.randn(512, 8)
    results = {}
    for name, bound in [("product", upper_bound), ("eclipse", eclipse_fast_bound),
                        ("lipsdp", lipsdp_bound), ("lower", lambda n: lower_bound(n, data))]:
        start = time.perf_counter()
        results[name] = bound(net)
        print(f"2x256 relu, 8 inputs: {name:8s} {results[name]:.4f} "
              f"({time.perf_counter() - start:.3f} s)")
    assert results["lower"] <= results["lipsdp"] <= results["eclipse"] <= results["product"]
    assert math.isfinite(results["lipsdp"])
