"""Muon: batched Newton-Schulz orthogonalisation, the optimiser on plain and stacked weights,
the Muon/Adam split of a Lipschitz network, and the combined optimiser's checkpoints."""

import io

import pytest
import torch
from torch import nn

from lipctl.lipschitz.certificates import certify
from lipctl.lipschitz.layers import lipschitz_mlp
from lipctl.lipschitz.muon import (
    NS_COEFFICIENTS,
    NS_MAX_GAIN,
    Muon,
    MuonAdam,
    muon_param_groups,
    orthogonalize,
    update_scale,
)

BAND = (0.68, NS_MAX_GAIN)  # 5 steps: singular values >= 2e-3 of the Frobenius norm end here


def _with_singular_values(s: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n = s.numel()
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return (u * s) @ v.T


def test_quintic_keeps_its_band():
    """The iteration's fixed interval: [0, NS_MAX_GAIN] maps into itself."""
    a, b, c = NS_COEFFICIENTS
    x = torch.linspace(0, NS_MAX_GAIN, 100_001, dtype=torch.float64)
    y = a * x + b * x**3 + c * x**5
    assert y.min() >= 0 and y.max() <= NS_MAX_GAIN
    assert y.max() > NS_MAX_GAIN - 1e-3  # and the bound is tight


@pytest.mark.parametrize("shape", [(48, 48), (32, 96), (96, 32), (3, 40, 24), (2, 3, 16, 20)])
def test_orthogonalize_singular_values_in_band(shape):
    g = torch.Generator().manual_seed(0)
    G = torch.randn(*shape, generator=g)
    s = torch.linalg.svdvals(orthogonalize(G))
    s_in = torch.linalg.svdvals(G) / torch.linalg.matrix_norm(G)[..., None]
    assert s.max() <= BAND[1] + 1e-4
    assert s[s_in >= 2e-3].min() >= BAND[0]
    if shape[-1] != shape[-2]:  # rectangular Gaussian matrices are well conditioned
        assert s.min() >= BAND[0]


@pytest.mark.parametrize("condition", [1e2, 1e3])
def test_orthogonalize_ill_conditioned(condition):
    """Condition 100 reaches the band in 5 steps; at 1000 the smallest singular values (5e-4
    of the Frobenius norm) need more steps, and 8 are enough."""
    g = torch.Generator().manual_seed(1)
    G = _with_singular_values(torch.logspace(0, -torch.log10(torch.tensor(condition)), 64),
                              g).float()
    s5 = torch.linalg.svdvals(orthogonalize(G, steps=5))
    s8 = torch.linalg.svdvals(orthogonalize(G, steps=8))
    assert s8.min() >= BAND[0] and s8.max() <= BAND[1]
    assert s5.max() <= BAND[1]
    assert (s5.min() >= BAND[0]) == (condition < 500)


def test_orthogonalize_stack_equals_members_and_transpose():
    g = torch.Generator().manual_seed(2)
    for shape in [(4, 24, 40), (4, 40, 24)]:
        G = torch.randn(*shape, generator=g)
        stacked = orthogonalize(G)
        members = torch.stack([orthogonalize(m) for m in G])
        torch.testing.assert_close(stacked, members, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(orthogonalize(G.mT), stacked.mT, atol=1e-5, rtol=1e-5)
    assert orthogonalize(G.double()).dtype == torch.float64
    assert orthogonalize(G.bfloat16()).dtype == torch.bfloat16
    assert torch.equal(orthogonalize(torch.zeros(3, 5)), torch.zeros(3, 5))


def test_orthogonalize_in_bfloat16():
    """The bfloat16 iteration (Muon's usual GPU setting) stays in the band up to ~1% rounding
    and returns the input's dtype."""
    G = torch.randn(2, 96, 64, generator=torch.Generator().manual_seed(5))
    fast = orthogonalize(G, dtype=torch.bfloat16)
    assert fast.dtype == torch.float32
    s = torch.linalg.svdvals(fast)
    assert s.min() >= BAND[0] * 0.99 and s.max() <= BAND[1] * 1.01
    assert (fast - orthogonalize(G)).norm() < 0.03 * orthogonalize(G).norm()


@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (48, 48), (3, 48, 24)])
def test_one_step_has_spectral_norm_lr_times_scale(shape):
    g = torch.Generator().manual_seed(3)
    p = nn.Parameter(torch.randn(*shape, generator=g))
    before = p.detach().clone()
    lr = 0.05
    opt = Muon([p], lr=lr)
    p.grad = torch.randn(*shape, generator=g)
    opt.step()
    norms = torch.linalg.matrix_norm(p.detach() - before, ord=2)
    expected = lr * update_scale(shape)
    assert update_scale(shape) == max(1.0, shape[-2] / shape[-1]) ** 0.5
    assert norms.min() >= expected * 0.9 and norms.max() <= expected * BAND[1] * (1 + 1e-4)


def test_matches_torch_muon_on_matrices():
    """Same convention as torch.optim.Muon (momentum, Nesterov, scale, decoupled decay); torch
    orthogonalises in bfloat16, so the two agree to about 1%."""
    g = torch.Generator().manual_seed(4)
    for shape in [(64, 32), (32, 64)]:
        start = torch.randn(*shape, generator=g)
        ours, theirs = nn.Parameter(start.clone()), nn.Parameter(start.clone())
        opts = [Muon([ours], lr=0.02, weight_decay=0.1),
                torch.optim.Muon([theirs], lr=0.02, weight_decay=0.1)]
        for _ in range(3):
            grad = torch.randn(*shape, generator=g)
            for p, opt in zip((ours, theirs), opts, strict=True):
                p.grad = grad.clone()
                opt.step()
        moved = (theirs.detach() - start).norm()
        assert (ours.detach() - theirs.detach()).norm() < 0.03 * moved


def test_refuses_non_matrix_parameters():
    with pytest.raises(ValueError, match="1-D parameter"):
        Muon([nn.Parameter(torch.zeros(3))])
    opt = Muon([nn.Parameter(torch.zeros(3, 3))])
    with pytest.raises(ValueError, match="4-D parameter"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2, 2, 3, 3))]})
    with pytest.raises(ValueError, match="momentum"):
        Muon([nn.Parameter(torch.zeros(3, 3))], momentum=1.0)


def test_param_groups_hidden_matrices_only():
    net = lipschitz_mlp(5, 2, [32, 32, 32], bound=4.0, ensemble_size=2)
    linears = [m for m in net if hasattr(m, "weight")]
    muon, adam = muon_param_groups(net)
    assert [id(p) for p in muon] == [id(m.weight) for m in linears[1:-1]]
    assert {id(p) for p in muon}.isdisjoint(id(p) for p in adam)
    assert len(muon) + len(adam) == len(list(net.parameters()))

    class TwoHeads(nn.Module):  # two networks in one module: each has its own first and last
        def __init__(self):
            super().__init__()
            self.a = lipschitz_mlp(3, 1, [16, 16], bound=None)
            self.b = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                                   nn.Linear(16, 1))
            self.head = nn.Linear(16, 16)  # outside any Sequential: Adam
            self.log_scale = nn.Parameter(torch.zeros(()))

    model = TwoHeads()
    muon, adam = muon_param_groups(model)
    assert [id(p) for p in muon] == [id(model.a[2].weight), id(model.b[2].weight)]
    assert len(adam) == len(list(model.parameters())) - 2


def _regression_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 4, generator=g)
    return x, torch.sin(x @ torch.randn(4, 3, generator=g)).sum(-1, keepdim=True)


def _fit(make_opt, bound: float | None, ensemble_size: int | None, steps: int = 200
         ) -> tuple[float, nn.Module]:
    torch.manual_seed(0)
    net = lipschitz_mlp(4, 1, [64, 64], bound=bound, layer="spectral",
                        ensemble_size=ensemble_size)
    opt = make_opt(net)
    x, y = _regression_data()
    if ensemble_size is not None:
        x = x.expand(ensemble_size, *x.shape)
    for _ in range(steps):
        loss = (net(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        return (net(x) - y).pow(2).mean().item(), net


@pytest.mark.slow
@pytest.mark.parametrize("bound, ensemble_size", [(None, None), (10.0, None), (10.0, 2)])
def test_muon_trains_as_well_as_adam(bound, ensemble_size):
    """200 full-batch steps on a smooth regression (target variance 1.3): Muon (0.02) on the
    hidden matrix with Adam (3e-3) on the rest ends within 1.5x of Adam (3e-3) alone, and below
    a tenth of the target's variance; a bounded network still certifies its bound."""
    adam_loss, _ = _fit(lambda net: torch.optim.Adam(net.parameters(), lr=3e-3), bound,
                        ensemble_size)
    muon_loss, net = _fit(lambda net: MuonAdam(net, lr=3e-3, muon_lr=0.02), bound,
                          ensemble_size)
    assert muon_loss < 1.5 * adam_loss
    assert muon_loss < 0.1 * _regression_data()[1].var().item()
    if bound is not None:
        for member in range(ensemble_size or 1):
            m = None if ensemble_size is None else member
            assert certify(net, tier="product", member=m).upper <= bound * (1 + 1e-5)


def test_state_dict_round_trip_gives_identical_next_steps():
    torch.manual_seed(0)
    net = lipschitz_mlp(4, 2, [16, 16, 16], bound=3.0, ensemble_size=2)
    options = dict(lr=1e-3, muon_lr=0.02, weight_decay=0.01, ns_dtype=torch.bfloat16)
    opt = MuonAdam(net, **options)
    x = torch.randn(2, 32, 4)

    def step(model: nn.Module, optimiser: MuonAdam) -> None:
        optimiser.zero_grad()
        model(x).pow(2).mean().backward()
        optimiser.step()

    for _ in range(3):
        step(net, opt)
    buffer = io.BytesIO()
    torch.save({"net": net.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    twin = lipschitz_mlp(4, 2, [16, 16, 16], bound=3.0, ensemble_size=2)
    twin.load_state_dict(saved["net"])
    twin_opt = MuonAdam(twin, **options)
    twin_opt.load_state_dict(saved["opt"])
    for _ in range(2):
        step(net, opt)
        step(twin, twin_opt)
    for a, b in zip(net.state_dict().values(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert set(opt.state_dict()) == {"muon", "adam"}
    with pytest.raises(ValueError, match="optimiser state"):
        twin_opt.load_state_dict({"adam": saved["opt"]["adam"]})


def test_no_hidden_matrix_means_adam_alone():
    net = lipschitz_mlp(3, 1, [8], bound=None)
    opt = MuonAdam(net, lr=1e-2)
    assert set(opt.state_dict()) == {"adam"}
    before = [p.detach().clone() for p in net.parameters()]
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    opt.zero_grad()
    assert all(p.grad is None for p in net.parameters())
