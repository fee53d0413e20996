"""The layer seam: a family defined in this file alone trains a critic, and a Lipschitz level
lets a constrained critic fit a Pendulum-scale value function as well as a free one."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor

from lipctl.agents.checkpoint import load_checkpoint
from lipctl.agents.sac import SAC
from lipctl.agents.saved import learner_config
from lipctl.bench import layer_level
from lipctl.bench.layer_level import ARMS, fitted_rmse
from lipctl.commands.train import validate
from lipctl.config import ConfigError
from lipctl.lipschitz import (
    FAMILIES,
    LipschitzLinear,
    LipschitzSpec,
    certify,
    lower_bound,
    register_family,
)
from tests.agents.test_sac import random_batch
from tests.helpers import TINY_TRAIN, lipctl


class FrobeniusLinear(LipschitzLinear):
    """A toy family: the weight divided by max(1, ||W||_F / bound); the Frobenius norm bounds
    the spectral norm, so the layer is bound-Lipschitz."""

    def constrained_weight(self) -> Tensor:
        norm = torch.linalg.matrix_norm(self.weight, ord="fro")
        return self.weight / (norm / self.bound).clamp_min(1.0)[..., None, None]


@pytest.fixture
def toy_family():
    """FrobeniusLinear registered as "test_frobenius" for one test (other tests list the
    registered families)."""
    register_family("test_frobenius")(FrobeniusLinear)
    yield FrobeniusLinear
    del FAMILIES["test_frobenius"]


@pytest.mark.slow
def test_a_family_defined_in_a_test_file_trains_a_certified_critic(toy_family):
    assert FAMILIES["test_frobenius"] is toy_family
    torch.manual_seed(0)
    agent = SAC(3, 1, hidden=(16, 16), lipschitz={"layer": "test_frobenius", "L": 5.0})
    assert all(isinstance(m, FrobeniusLinear) for m in agent.critic.layers())
    before = [p.detach().clone() for p in agent.critic.parameters()]
    buffer = random_batch()
    for _ in range(50):
        agent.update(buffer.sample(32))
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.critic.parameters(),
                                                     strict=True))
    inputs = torch.randn(256, 4)
    for name, certificate in agent.critic_certificates(inputs).items():
        assert certificate.upper <= 5.0 * (1 + 1e-6), name
        member = int(name.removeprefix("critic"))
        attacks = [lower_bound(agent.critic.net.eval(), inputs, member=member, seed=restart)
                   for restart in range(20)]  # 20 random restarts
        assert max(attacks) <= certificate.upper, name


def test_an_unknown_or_ill_fitting_family_setting_is_refused():
    with pytest.raises(ValueError, match="^layer: unknown layer family 'nope'"):
        LipschitzSpec(layer="nope")
    with pytest.raises(ValueError, match="^mode: layer family 'aol' takes no mode"):
        LipschitzSpec(layer="aol", mode="cap")
    with pytest.raises(ValueError, match="^L: must be a positive number"):
        LipschitzSpec(L=-1.0)
    with pytest.raises(ValueError, match="unknown lipschitz setting"):
        LipschitzSpec.of({"layers": "spectral"})


def test_level_puts_the_bound_on_a_fixed_output_scale():
    spec = LipschitzSpec(layer="spectral", L=800.0, mode="cap")
    net = spec.mlp(4, 1, [32, 32])
    layers = [m for m in net if isinstance(m, LipschitzLinear)]
    assert [layer.bound for layer in layers] == [1.0, 1.0, 1.0]
    assert [layer.scale for layer in layers] == [1.0, 1.0, 800.0]
    assert certify(net).upper <= 800.0 * (1 + 1e-6)
    even = LipschitzSpec(layer="spectral", L=800.0, mode="cap", level=False).mlp(4, 1, [32, 32])
    assert [m.bound for m in even if isinstance(m, LipschitzLinear)] == \
        pytest.approx([800.0 ** (1 / 3)] * 3)


@pytest.fixture(scope="module")
def free_critic_rmse() -> float:
    """The unconstrained critic as lipctl builds it by default (ReLU)."""
    return fitted_rmse(ARMS["free relu"], REGRESSION_STEPS)[0]


REGRESSION_STEPS = 25_000  # the layer_level benchmark's steps: these tests re-derive its claims


@pytest.mark.full_size
@pytest.mark.parametrize("arm", ["spectral cap maxmin", "orthogonal maxmin", "ldl relu",
                                 "sandwich relu"])
def test_a_critic_at_a_level_fits_as_well_as_a_free_one(free_critic_rmse, arm):
    constrained, upper = fitted_rmse(ARMS[arm], REGRESSION_STEPS)
    assert upper <= 800.0 * (1 + 1e-6)
    assert constrained <= 2 * free_critic_rmse, (constrained, free_critic_rmse)


@pytest.mark.full_size
def test_a_soft_capped_critic_at_a_level_fits_within_three_times_a_free_one(free_critic_rmse):
    """The soft cap shrinks every large singular value at each step by about the update just
    made, so under Adam it fits slower than the other families: 2.1-2.7x the free critic's
    RMSE measured on three seeds, short of 2x; this guards the measured level."""
    constrained, upper = fitted_rmse(ARMS["soft_cap maxmin"], REGRESSION_STEPS)
    assert upper <= 800.0 * (1 + 1e-6)
    assert constrained <= 3 * free_critic_rmse, (constrained, free_critic_rmse)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["spectral", "soft_cap", "hammer", "svd_clip", "aol",
                                    "orthogonal", "ldl", "sandwich"])
def test_train_with_every_family_checkpoints_a_certificate_within_its_bound(workdir, family):
    lipctl("train", f"lipschitz={family}", "lipschitz.L=20", "hydra.run.dir=run", *TINY_TRAIN,
           cwd=workdir, check=True)
    state = load_checkpoint(workdir / "run" / "checkpoint.pt")
    assert state["config"]["lipschitz"]["layer"] == family
    for name in ("critic0", "critic1"):
        certificate = state["certificates"][name]
        assert certificate["upper"] <= 20.0 * (1 + 1e-6), (name, certificate)
        assert certificate["lower"] <= certificate["upper"], (name, certificate)


def test_a_learner_config_from_before_the_lipschitz_spec_still_builds():
    old = OmegaConf.create({
        "_target_": "lipctl.agents.sac.SAC", "hidden": [16, 16], "critic_bound": 5.0,
        "critic_mode": "cap", "critic_layer_bound": None, "critic_free_output": False,
        "robust_weight": 0.5, "robust_eps": 0.1, "robust_eps_units": "std",
        "robust_norm": "l2", "robust_steps": 1, "robust_batch": None,
        "certificate_tier": "product"})
    agent = instantiate(learner_config(old), obs_dim=3, act_dim=1)
    layers = agent.critic.layers()
    assert [layer.bound for layer in layers] == pytest.approx([5.0 ** (1 / 3)] * 3)
    assert all(layer.mode == "cap" and layer.scale == 1.0 for layer in layers)
    assert agent.robust_weight == 0.5 and agent.certificate_tier == "product"
    current = OmegaConf.create({"_target_": "lipctl.agents.sac.SAC", "hidden": [16, 16]})
    assert learner_config(current) is current


@pytest.mark.parametrize(("overrides", "message"), [
    (["+lipschitz.options.foo=1"], "lipschitz.options: SpectralLinear.__init__() got an "
                                   "unexpected keyword argument 'foo'"),
    (["lipschitz=soft_cap", "+lipschitz.options.max_update=2.0"],
     "lipschitz.options: the soft cap absorbs updates of at most 1.263 x bound"),
    (["lipschitz.layer=nope"], "lipschitz.layer: unknown layer family 'nope'"),
])
def test_a_family_option_it_cannot_take_is_a_config_error(overrides, message):
    with initialize_config_module(config_module="lipctl.conf", version_base=None):
        cfg = compose("train", overrides=overrides)
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    assert str(error.value).startswith(message)


@pytest.mark.slow
def test_the_level_benchmark_writes_every_arm_it_runs(tmp_path):
    with initialize_config_module(config_module="lipctl.conf", version_base=None):
        exp = compose("bench", overrides=["experiment=layer_level", "experiment.steps=3",
                                          "experiment.arms=['free relu','soft_cap maxmin']"]
                      ).experiment
    layer_level.run_benchmark(exp, tmp_path, tmp_path / "work")
    result = json.loads((tmp_path / "layer_level.json").read_text())
    assert [row["arm"] for row in result["results"]] == ["free relu", "soft_cap maxmin"]
    constrained = result["results"][1]
    assert constrained["certified_upper"] <= layer_level.BOUND * (1 + 1e-6)
    assert all(row["test_rmse"] > 0 for row in result["results"])
