import math

import pytest
import torch
import torch.nn.functional as F

from lipctl.lipschitz import (
    FAMILIES,
    LipschitzLinear,
    certify,
    freeze,
    lipschitz_mlp,
    lower_bound,
    post_step,
)
from lipctl.lipschitz.muon import NS_MAX_GAIN, make_optimizer
from lipctl.lipschitz.projections import (
    MAX_DELTA,
    HammerLinear,
    SoftCapLinear,
    SVDClipLinear,
    grid_strength,
    soft_cap_polynomial,
    soft_cap_strength,
)

NAMES = ("soft_cap", "hammer", "svd_clip")


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)


def sigma(weight: torch.Tensor) -> torch.Tensor:
    return torch.linalg.matrix_norm(weight.detach().double(), ord=2)


def with_singular_values(values: torch.Tensor, out: int, inp: int) -> torch.Tensor:
    """A float64 [out, inp] matrix with the given singular values and random singular vectors."""
    u, _ = torch.linalg.qr(torch.randn(out, len(values), dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(inp, len(values), dtype=torch.float64))
    return (u * values) @ v.T


def regression(ensemble_size: int | None, bound: float, rows: int = 256
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and a target with slopes up to about `bound` (on the data), which a net held to
    `bound` can only fit with every layer at its own bound."""
    lead = () if ensemble_size is None else (ensemble_size,)
    x = torch.randn(*lead, rows, 4)
    return x, bound * (torch.sin(3 * x[..., :1]) + 0.5 * x[..., 1:2] ** 2) / 3


def train(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float,
          after_step=None) -> list[float]:
    """Adam on the squared error, with the projections after every step; the losses."""
    optimizer = make_optimizer(net, "adam", lr=lr)
    losses = []
    for _ in range(steps):
        loss = (net(x) - y).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        post_step(net)
        losses.append(loss.item())
        if after_step is not None:
            after_step()
    return losses


def test_families_are_registered():
    assert FAMILIES["soft_cap"] is SoftCapLinear
    assert FAMILIES["hammer"] is HammerLinear
    assert FAMILIES["svd_clip"] is SVDClipLinear
    net = lipschitz_mlp(3, 1, [8], bound=2.0, layer="hammer")
    assert all(isinstance(m, HammerLinear) for m in net if isinstance(m, LipschitzLinear))


def test_soft_cap_polynomial_is_the_composition_of_two_cubic_steps():
    s = torch.linspace(0, 2.2, 101, dtype=torch.float64)
    for a in (0.01, 0.08, 0.15, 0.19):
        s1 = s * (1 - a * s**2)
        torch.testing.assert_close(soft_cap_polynomial(s, a), s1 * (1 + a * s1**2))


@pytest.mark.parametrize("shape", [(6, 9), (9, 6)])
def test_soft_cap_projection_maps_singular_values_by_the_polynomial(shape):
    layer = SoftCapLinear(shape[1], shape[0], bound=2.0, max_update=0.05 * math.sqrt(54))
    delta = layer.max_update / 2.0
    values = torch.linspace(0.05, 1 + delta, 6, dtype=torch.float64) * 2.0
    weight = with_singular_values(values, *shape)
    projected = torch.linalg.svdvals(layer.project(weight))
    expected = 2.0 * soft_cap_polynomial(values / 2.0, layer.strength)
    torch.testing.assert_close(projected, expected.sort(descending=True).values)
    assert projected.max() <= 2.0 * (1 + 1e-12)


@pytest.mark.parametrize("delta", [0.005, 0.05, 0.3, 1.0, MAX_DELTA])
def test_soft_cap_strength_is_the_smallest_that_caps(delta):
    a = soft_cap_strength(delta)
    s = torch.linspace(0, 1 + delta, 20001, dtype=torch.float64)
    image = soft_cap_polynomial(s, a)
    assert image.min() >= 0 and image.max() <= 1 + 1e-12
    assert soft_cap_polynomial(s, 0.99 * a).max() > 1  # a weaker cap lets some value through


def test_tabulated_strength_is_never_weaker_and_close():
    deltas = torch.cat([torch.tensor([0.0, 1e-12, MAX_DELTA], dtype=torch.float64),
                        torch.logspace(-6, math.log10(MAX_DELTA), 40, dtype=torch.float64)])
    tabulated = grid_strength(deltas)
    exact = torch.tensor([soft_cap_strength(max(float(d), 1e-9)) for d in deltas],
                         dtype=torch.float64)
    assert (tabulated >= exact).all()
    assert (tabulated <= exact * 1.01).all()


def test_soft_cap_strength_follows_the_update_just_made():
    """A small update is projected at the strength for its own size, a large one (or a weight
    changed past max_update) at most at the strength for max_update; loading a weight counts
    as projecting it."""
    layer = SoftCapLinear(8, 6, bound=1.0, max_update=0.5, bias=False)
    for size, expected in [(1e-3, soft_cap_strength(1e-3)), (0.5, layer.strength),
                           (5.0, layer.strength)]:
        with torch.no_grad():
            layer.projected.copy_(layer.weight)
            layer.weight.add_(size * F.normalize(torch.randn(6, 8).flatten(), dim=0).view(6, 8))
        strength = layer.step_strength().item()
        assert expected <= strength <= expected * 1.01
    layer.post_step()
    assert torch.equal(layer.projected, layer.weight)
    other = SoftCapLinear(8, 6, bound=1.0, max_update=0.5, bias=False)
    other.load_state_dict(layer.state_dict())
    assert torch.equal(other.projected, layer.weight)


def test_soft_cap_strength_refuses_updates_it_cannot_absorb():
    with pytest.raises(ValueError, match="max_update"):
        soft_cap_strength(1.01 * MAX_DELTA)
    with pytest.raises(ValueError, match="max_update"):
        SoftCapLinear(64, 64, bound=0.1, max_update=0.64)


@pytest.mark.parametrize("max_update", [0.0, -1.0])
def test_soft_cap_rejects_bad_options(max_update):
    with pytest.raises(ValueError, match="max_update"):
        SoftCapLinear(4, 4, max_update=max_update)


@pytest.mark.parametrize("optimizer", ["adam", "muon"])
def test_soft_cap_couples_its_strength_to_the_optimiser(optimizer):
    """make_optimizer tells each soft cap the largest update of its weight: Adam's entrywise
    bound lr sqrt(out in), or Muon's spectral one on the hidden matrices; a given max_update
    stays fixed."""
    net = lipschitz_mlp(8, 2, [32, 16], bound=4.0, layer="soft_cap")
    fixed = SoftCapLinear(16, 2, bound=1.0, max_update=0.5)
    make_optimizer(net, optimizer, lr=1e-3, muon_lr=0.01)
    make_optimizer(fixed, optimizer, lr=1e-3, muon_lr=0.01)
    first, hidden, head = (m for m in net if isinstance(m, SoftCapLinear))
    assert first.max_update == pytest.approx(1e-3 * math.sqrt(8 * 32))
    hidden_bound = 0.01 * NS_MAX_GAIN if optimizer == "muon" else 1e-3 * math.sqrt(32 * 16)
    assert hidden.max_update == pytest.approx(hidden_bound)
    assert hidden.strength == soft_cap_strength(hidden_bound / hidden.bound)
    assert head.max_update == pytest.approx(1e-3 * math.sqrt(16 * 2))
    assert fixed.max_update == 0.5 and fixed.strength == soft_cap_strength(0.5)


def test_soft_cap_holds_the_cap_under_worst_case_updates():
    """The invariant: a weight inside the ball, moved by any update of spectral norm
    max_update and projected, is inside the ball again, step after step."""
    layer = SoftCapLinear(16, 12, bound=3.0, max_update=0.6, bias=False)
    worst = 0.0
    with torch.no_grad():
        for step in range(300):
            u, _, vh = torch.linalg.svd(layer.weight)
            # half the updates push along the top singular pair, half are random rank one;
            # their sizes cycle up to max_update, so each step's strength is its own
            left = u[:, :1] if step % 2 else F.normalize(torch.randn(12, 1), dim=0)
            right = vh[:1] if step % 2 else F.normalize(torch.randn(1, 16), dim=1)
            layer.weight.add_(0.6 * (1 + step % 5) / 5 * left @ right)
            layer.post_step()
            worst = max(worst, sigma(layer.weight).item())
    assert worst <= 3.0 * (1 + 1e-5)
    assert worst >= 2.85  # the updates did drive the weight to (near) its cap


@torch.no_grad()
def copy_member(layer: LipschitzLinear, single: LipschitzLinear, member: int) -> None:
    """Copy every parameter and buffer (unsaved ones included) of one member into `single`."""
    for name, value in [*layer.named_parameters(), *layer.named_buffers()]:
        getattr(single, name).copy_(value[member])


@pytest.mark.parametrize("name", NAMES)
def test_post_step_projects_every_member_in_place_as_it_would_alone(name):
    family = FAMILIES[name]
    layer = family(10, 7, bound=1.5, ensemble_size=3)
    with torch.no_grad():
        layer.weight.mul_(torch.tensor([0.5, 3.0, 10.0])[:, None, None])
    alone = []
    for member in range(3):
        single = family(10, 7, bound=1.5)
        copy_member(layer, single, member)
        single.post_step()
        alone.append(single.weight.detach())
    parameter, pointer = layer.weight, layer.weight.data_ptr()
    layer.post_step()
    assert layer.weight is parameter and layer.weight.data_ptr() == pointer
    torch.testing.assert_close(layer.weight.detach(), torch.stack(alone))
    assert sigma(layer.weight[0]).item() < 1.5  # a member inside the ball moves little or not
    # the soft cap is built for updates of max_update, not for 3x and 10x jumps
    if name == "svd_clip":
        assert (sigma(layer.weight[1:]) <= 1.5 * (1 + 1e-5)).all()
    elif name == "hammer":  # the estimated top pair is set to the bound
        tracked = torch.einsum("eo,eoi,ei->e", layer.u, layer.weight.detach(), layer.v)
        torch.testing.assert_close(tracked[1:], torch.full((2,), 1.5))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("ensemble_size", [None, 2])
def test_initial_weight_is_inside_the_ball(name, ensemble_size):
    layer = FAMILIES[name](64, 64, bound=0.3, ensemble_size=ensemble_size)
    assert (sigma(layer.weight) <= 0.3 * (1 + 1e-5)).all()
    assert (sigma(layer.weight) >= 0.3 * (1 - 1e-5)).all()  # kaiming init is above 0.3


@pytest.mark.parametrize("name", NAMES)
def test_eval_mode_caps_what_the_projection_leaves_over(name):
    layer = FAMILIES[name](12, 9, bound=2.0, ensemble_size=2)
    with torch.no_grad():
        layer.weight.mul_(torch.tensor([5.0, 0.5])[:, None, None])  # member 0 above the bound
    raw = layer.weight.detach().clone()
    assert torch.equal(layer.train().effective_weight(), layer.weight)
    weight = layer.eval().effective_weight()
    assert sigma(weight[0]).item() == pytest.approx(2.0, rel=1e-5)
    assert sigma(weight[0]).item() <= 2.0
    torch.testing.assert_close(weight[1], raw[1])  # inside the ball: untouched


def test_hammer_sets_the_tracked_top_singular_value_to_the_bound():
    layer = HammerLinear(20, 15, bound=1.0, bias=False)
    values = torch.tensor([4.0, 0.9, 0.5, 0.2], dtype=torch.float64)
    target = with_singular_values(values, 15, 20).float()
    with torch.no_grad():
        layer.weight.copy_(target)
        for _ in range(30):  # the power iteration converges on a fixed weight
            layer.post_step()
            layer.weight.copy_(target)
        layer.post_step()
    assert sigma(layer.weight).item() == pytest.approx(1.0, rel=1e-5)
    s = torch.linalg.svdvals(layer.weight.double())
    torch.testing.assert_close(s[1:4], values[1:], atol=1e-5, rtol=0)  # the rest untouched
    assert {"u", "v"} <= set(layer.state_dict())


TRAIN_STEPS, TRAIN_LR = 200, 1e-2


@pytest.mark.parametrize("name", NAMES)
def test_adam_regression_keeps_the_raw_weight_at_its_bound(name):
    """Raw (training-mode) spectral norms relative to each layer's bound, after every step:
    SVD clip exact (rounding), soft cap inside its invariant (sigma <= bound), hammer: the
    tracked top pair exactly at the bound, the true sigma within 2x (several singular values
    rise above the bound between Adam steps, and the hammer lowers one per step)."""
    net = lipschitz_mlp(4, 1, [32, 32], bound=5.0, level=True, layer=name)
    layers = [m for m in net if isinstance(m, LipschitzLinear)]
    ratios, tracked = [], []

    def record():
        ratios.append(max(sigma(m.weight).item() / m.bound for m in layers))
        if name == "hammer":
            tracked.append(max((m.u @ m.weight.detach() @ m.v).item() / m.bound for m in layers))

    losses = train(net, *regression(None, 5.0), TRAIN_STEPS, TRAIN_LR, record)
    assert losses[-1] < 0.5 * losses[0]
    assert max(ratios[-50:]) >= 0.95  # the bound is active
    if name == "svd_clip":
        assert max(ratios) <= 1 + 1e-5
    elif name == "soft_cap":
        assert max(ratios) <= 1 + 1e-5
    else:
        assert max(tracked) <= 1 + 1e-5
        assert max(ratios) <= 2.0


def pgd_ratio(net: torch.nn.Module, data: torch.Tensor, member: int | None) -> float:
    """Largest sampled ratio over 20 random restarts of the pair-ratio ascent."""
    return max(lower_bound(net, data, steps=40, pairs=32, member=member, seed=seed)
               for seed in range(20))


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bound, level", [(1.0, False), (5.0, True)])
@pytest.mark.parametrize("ensemble_size", [None, 2])
def test_trained_net_certifies_below_its_bound_and_pgd_never_exceeds_it(
        name, bound, level, ensemble_size):
    net = lipschitz_mlp(4, 2, [32, 32], bound=bound, level=level, layer=name,
                        ensemble_size=ensemble_size)
    x, y = regression(ensemble_size, bound, rows=128)
    train(net, x, torch.cat([y, -y], dim=-1), 100, 1e-2)
    members = [None] if ensemble_size is None else list(range(ensemble_size))
    certificates = [{tier: certify(net, tier=tier, member=member).upper
                     for tier in ("product", "eclipse", "lipsdp")} for member in members]
    assert net.training  # certify restores the mode
    net.eval()
    for member, certificate in zip(members, certificates, strict=True):
        assert max(certificate.values()) <= bound
        assert certificate["product"] >= 0.5 * bound  # trained up to the bound, not trivially
        attack = pgd_ratio(net, x if member is None else x[member], member)
        assert 0 < attack <= certificate["lipsdp"]
    if ensemble_size is None:  # an ensemble layer has no single nn.Linear export
        frozen = freeze(net)
        assert not any(isinstance(m, LipschitzLinear) for m in frozen.modules())
        torch.testing.assert_close(frozen(x), net.eval()(x), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_level_soft_cap_mlp_certifies_within_its_level():
    net = lipschitz_mlp(4, 1, [64, 64], bound=50.0, level=True, layer="soft_cap")
    x, y = regression(None, 50.0)
    losses = train(net, x, y, 100, 1e-2)
    assert losses[-1] < 0.5 * losses[0]
    for tier in ("product", "eclipse"):
        assert certify(net, tier=tier).upper <= 50.0
    assert 0 < pgd_ratio(net.eval(), x, None) <= certify(net, tier="eclipse").upper


def test_projected_state_dict_round_trip():
    net = lipschitz_mlp(4, 1, [16], bound=2.0, layer="hammer", ensemble_size=2)
    train(net, *regression(2, 2.0, rows=32), 5, 1e-2)
    clone = lipschitz_mlp(4, 1, [16], bound=2.0, layer="hammer", ensemble_size=2)
    clone.load_state_dict(net.state_dict())
    for a, b in zip(net.modules(), clone.modules(), strict=True):
        if isinstance(a, HammerLinear):
            assert torch.equal(a.u, b.u) and torch.equal(a.v, b.v)
    x = torch.randn(2, 5, 4)
    torch.testing.assert_close(clone.eval()(x), net.eval()(x))
