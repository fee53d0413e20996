"""Off-policy adversarial imitation: absorbing states, the discriminator's gradient penalty,
rewards relabelled per sample, preconditioning, and the CLI's checks."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from lipctl.agents.absorbing import AbsorbingIndicator, absorb, is_absorbing, strip, with_indicator
from lipctl.agents.buffer import Batch, ReplayBuffer
from lipctl.agents.checkpoint import load_checkpoint
from lipctl.agents.discriminator import Discriminator, discriminator_loss, penalty_points
from lipctl.agents.gail import GAILReward, GAILSettings, expert_batch
from lipctl.agents.preconditioning import ForwardModel
from lipctl.agents.saved import load_agent
from lipctl.envs import make_env
from lipctl.envs.demos import load_demos
from lipctl.lipschitz import certify, input_gradient_norm
from tests.helpers import TINY_TRAIN, config_error, lipctl

DEMOS = Path(__file__).parents[2] / "demos" / "InvertedPendulum-v5-lqr.npz"


def _batch(done: list[float], obs_dim: int = 3, act_dim: int = 2, seed: int = 0) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    n = len(done)
    obs = with_indicator(torch.randn(n, obs_dim, generator=generator))
    next_obs = with_indicator(torch.randn(n, obs_dim, generator=generator))
    return Batch(obs, torch.rand(n, act_dim, generator=generator) * 2 - 1,
                 torch.randn(n, generator=generator), next_obs, torch.tensor(done))


def test_absorbing_round_trip():
    batch = _batch([0.0, 1.0, 0.0, 1.0, 0.0])
    absorbed = absorb(batch)
    terminal = batch.done > 0.5
    assert len(absorbed.obs) == len(batch.obs) + 2
    assert torch.all(absorbed.done == 0)
    assert torch.all(is_absorbing(absorbed.next_obs[:5]) == terminal)
    loops = slice(5, None)
    assert torch.all(is_absorbing(absorbed.obs[loops]) & is_absorbing(absorbed.next_obs[loops]))
    assert torch.all(absorbed.obs[loops, :-1] == 0) and torch.all(absorbed.action[loops] == 0)
    stripped = strip(absorbed)
    for name in ("obs", "action", "reward", "done"):
        assert torch.equal(getattr(stripped, name), getattr(batch, name)), name
    assert torch.equal(stripped.next_obs[~terminal], batch.next_obs[~terminal])
    assert torch.all(is_absorbing(stripped.next_obs[terminal]))


def test_absorb_leaves_a_batch_without_terminals_as_it_is():
    batch = _batch([0.0, 0.0, 0.0])
    assert absorb(batch) is batch


def test_indicator_wrapper_appends_a_zero_feature():
    env = AbsorbingIndicator(make_env("InvertedPendulum-v5"))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (5,) and obs[-1] == 0.0 and env.observation_space.contains(obs)
    obs, *_ = env.step(env.action_space.sample())
    assert obs[-1] == 0.0 and env.observation_space.contains(obs)
    env.close()


def test_expert_batch_scales_actions_and_absorbs_terminal_episodes():
    demos = load_demos(DEMOS)
    demos.terminated[demos.episode_starts[1] - 1] = True  # the first episode terminates
    low, high = np.array([-3.0]), np.array([3.0])
    batch = expert_batch(demos, low, high, absorbing=True, device="cpu")
    assert len(batch.obs) == len(demos) + 1
    assert torch.allclose(batch.action[: len(demos), 0],
                          torch.as_tensor(demos.actions[:, 0] / 3.0, dtype=torch.float32))
    assert int(is_absorbing(batch.obs).sum()) == 1
    plain = expert_batch(demos, low, high, absorbing=False, device="cpu")
    assert plain.obs.shape == (len(demos), 4) and int(plain.done.sum()) == 1


def _toy_discriminator(penalty: str, steps: int = 400) -> tuple[Discriminator, torch.Tensor]:
    """A discriminator trained to separate two point clouds 1 apart (a steep task)."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    expert = 0.5 + 0.05 * torch.randn(512, 2, generator=generator)
    policy = -0.5 + 0.05 * torch.randn(512, 2, generator=generator)
    discriminator = Discriminator(1, 1, hidden=(64, 64))
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=3e-3)
    for _ in range(steps):
        loss, _ = discriminator_loss(discriminator, expert, policy, penalty=penalty, k=1.0,
                                     weight=10.0, generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    points = torch.cat([penalty_points(expert, policy, "interpolate", 0.0, generator),
                        expert, policy])
    return discriminator, input_gradient_norm(discriminator, points)


@pytest.mark.slow
def test_gradient_penalty_keeps_the_discriminator_near_unit_gradient_norm():
    tolerance = 0.1
    _, penalised = _toy_discriminator("interpolate")
    _, free = _toy_discriminator("none")
    assert penalised.max() <= 1.0 * (1 + tolerance), penalised.max()
    assert free.max() > 1.0 * (1 + tolerance), free.max()
    assert free.mean() > 2 * penalised.mean()


@pytest.mark.parametrize("where", ["expert", "policy"])
def test_noisy_penalty_points_lie_near_their_rows(where):
    expert, policy = torch.zeros(200, 3), torch.ones(200, 3)
    points = penalty_points(expert, policy, where, 0.1, torch.Generator().manual_seed(0))
    centre = expert if where == "expert" else policy
    assert 0.05 < (points - centre).std() < 0.15


def test_spectral_discriminator_is_certified_below_its_bound():
    discriminator = Discriminator(4, 1, hidden=(32, 32), bound=2.0)
    for _ in range(3):  # a few training steps move the weights
        loss, _ = discriminator_loss(discriminator, torch.randn(64, 5), torch.randn(64, 5),
                                     penalty="none")
        loss.backward()
        with torch.no_grad():
            for p in discriminator.parameters():
                p -= 0.1 * p.grad
    certificate = certify(discriminator.net.eval(), torch.randn(256, 5))
    assert certificate.lower <= certificate.upper <= 2.0 * (1 + 1e-5)


def _gail(settings: GAILSettings | None = None) -> GAILReward:
    torch.manual_seed(0)
    expert = _batch([0.0] * 64, seed=1)
    buffer = ReplayBuffer(256, 4, 2, "cpu", seed=0)
    rng = np.random.default_rng(0)
    for i in range(256):
        buffer.add(np.append(rng.normal(size=3), 0.0), rng.uniform(-1, 1, 2), 1234.0,
                   np.append(rng.normal(size=3), 0.0), i % 50 == 49)
    return GAILReward(expert, buffer, Discriminator(4, 2, hidden=(32, 32)),
                      settings or GAILSettings(batch_size=64), seed=0)


def test_rewards_are_recomputed_with_the_current_discriminator():
    gail = _gail()
    batch = gail.buffer.sample(128)
    first = gail.relabel(batch)
    assert torch.equal(gail.relabel(batch).reward, first.reward)  # same D, same rewards
    inputs = torch.cat([first.obs, first.action], dim=-1)
    with torch.no_grad():
        expected = torch.nn.functional.softplus(gail.discriminator(inputs))
    assert torch.allclose(first.reward, expected) and torch.all(first.reward > 0)
    assert not torch.any(first.reward == 1234.0)  # env rewards are never kept
    assert len(first.obs) == 128 + int(batch.done.sum())  # terminal rows were absorbed
    metrics = gail.on_env_step(1)
    assert {"disc_loss", "disc_gradient_penalty"} <= set(metrics)
    second = gail.relabel(batch)
    assert not torch.allclose(second.reward, first.reward)  # D changed: so did every reward


def test_logit_reward_form_and_state_round_trip():
    gail = _gail(GAILSettings(batch_size=64, reward_form="logit", preconditioning=True))
    for step in range(1, 4):
        gail.on_env_step(step)
    batch = gail.buffer.sample(32)
    rewards = gail.relabel(batch).reward
    assert torch.any(rewards < 0)  # log D - log(1 - D) takes both signs
    restored = _gail(GAILSettings(batch_size=64, reward_form="logit", preconditioning=True))
    restored.load_state_dict(gail.state_dict())
    assert torch.equal(restored.relabel(batch).reward, rewards)


def _linear_forward_model(weight: list[list[float]], target: float) -> ForwardModel:
    """One linear layer predicting the state change: d sum f / d(s, a) = 1_s + W^T 1."""
    model = ForwardModel(2, 1, target=target, floor=0.7, hidden=())
    with torch.no_grad():
        model.net[-1].weight.copy_(torch.tensor(weight))
        model.net[-1].bias.zero_()
    return model


def test_preconditioning_scales_rewards_down_only_where_the_model_is_steep():
    inputs = torch.randn(64, 3)
    flat = _linear_forward_model([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], target=2.0)
    assert torch.allclose(flat.gradient_norms(inputs), torch.full((64,), 2 ** 0.5))
    steep = _linear_forward_model([[5.0, 0.0, 3.0], [0.0, 0.0, 4.0]], target=2.0)
    # gradient (1 + 5, 1 + 0, 0 + 3 + 4) has norm sqrt(86)
    assert torch.allclose(steep.gradient_norms(inputs), torch.full((64,), 86 ** 0.5))
    flat_scales = [float(flat.reward_scale(inputs)) for _ in range(5)]
    steep_scales = [float(steep.reward_scale(inputs[i::5])) for i in range(5)]
    assert flat_scales == [1.0] * 5  # no norm above the target: rewards untouched
    # one constant penalty: std 0, penalty / std large, every batch scaled down to the floor
    assert steep.penalty_moments[0] == 5 and steep.penalty_std() == 0.0
    assert steep_scales == pytest.approx([0.7] * 5)


def test_preconditioning_scale_is_reported_and_lowered_by_a_steep_model():
    gail = _gail(GAILSettings(batch_size=64, preconditioning=True, precondition_target=0.5))
    with torch.no_grad():  # a steep forward model: every gradient norm far above the target
        gail.forward_model.net[-1].weight.mul_(0).add_(3.0)
    for step in range(1, 4):
        gail.relabel(gail.buffer.sample(64))
        metrics = gail.on_env_step(step)
    assert metrics["precondition_scale_mean"] < 1.0
    assert metrics["precondition_scale_min"] == pytest.approx(0.7)
    assert metrics["precondition_fraction_scaled"] == 1.0
    assert metrics["precondition_gradient_norm"] > 0.5


def test_discriminator_label_smoothing_and_entropy_bonus_enter_the_loss():
    torch.manual_seed(0)
    discriminator = Discriminator(2, 1, hidden=(16,))
    expert, policy = torch.randn(128, 3), torch.randn(128, 3)
    def loss(**options) -> float:
        value, metrics = discriminator_loss(discriminator, expert, policy, penalty="none",
                                            generator=torch.Generator().manual_seed(0),
                                            **options)
        return float(value.detach()), metrics
    hard, metrics = loss()
    smoothed, _ = loss(expert_labels=(0.7, 1.2))
    bonus, _ = loss(entropy_weight=0.5)
    assert smoothed != hard
    assert bonus == pytest.approx(hard - 0.5 * float(metrics["disc_entropy"]), rel=1e-6)
    assert 0 < float(metrics["disc_entropy"]) <= np.log(2) + 1e-6


def test_hidden_spectral_discriminator_has_normalised_hidden_layers_and_a_free_head():
    torch.manual_seed(0)
    free = Discriminator(4, 1, hidden=(32, 32), hidden_bound=1.0).eval()
    capped = Discriminator(4, 1, hidden=(32, 32), hidden_bound=1.0, head_bound=0.5).eval()
    with torch.no_grad():
        for net in (free, capped):
            net.net[-1].weight.mul_(0).add_(1.0)  # a head of spectral norm sqrt(32)
    data = torch.randn(256, 5)
    free_certificate, capped_certificate = certify(free.net, data), certify(capped.net, data)
    assert free_certificate.upper > 1.0  # the head is free: D is not 1-Lipschitz
    assert capped_certificate.lower <= capped_certificate.upper <= 0.5 * (1 + 1e-5)
    with pytest.raises(ValueError, match="either bound"):
        Discriminator(4, 1, bound=1.0, hidden_bound=1.0)
    with pytest.raises(ValueError, match="give hidden_bound too"):
        Discriminator(4, 1, head_bound=1.0)


GAIL_ERRORS = [
    (["env=inverted_pendulum"], "demos: agent=gail learns from expert demonstrations"),
    ([f"demos={DEMOS}"], "recorded on 'InvertedPendulum-v5', not 'Pendulum-v1'"),
    (["env=inverted_pendulum", f"demos={DEMOS}", "agent.gail.penalty=everywhere"],
     "agent.gail.penalty: must be one of"),
    (["env=inverted_pendulum", f"demos={DEMOS}", "agent.demo_episodes=11"],
     "holds 10 episodes, 11 were asked for"),
    (["env=inverted_pendulum", f"demos={DEMOS}", "agent.gail.precondition_floor=1.5"],
     "agent.gail.precondition_floor: must be in (0, 1]"),
    (["env=inverted_pendulum", f"demos={DEMOS}", "agent.discriminator.bound=1",
      "agent.discriminator.hidden_bound=1"], "agent.discriminator.hidden_bound: give either bound"),
    (["env=inverted_pendulum", f"demos={DEMOS}", "agent.gail.expert_label_min=1.3"],
     "agent.gail.expert_label_min: must be in [0, expert_label_max = 1.2]"),
]


@pytest.mark.parametrize(("args", "expected"), GAIL_ERRORS,
                         ids=[" ".join(a.replace(str(DEMOS), "DEMOS") for a in args)
                              for args, _ in GAIL_ERRORS])
def test_gail_cli_errors(workdir, args, expected):
    assert expected in config_error("train", "agent=gail", *args, cwd=workdir)


GAIL_IP = ["agent=gail", "env=inverted_pendulum", f"demos={DEMOS}", "agent.demo_episodes=4",
           "agent.learner.hidden=[64,64]", "agent.batch_size=128", "agent.learner.actor_lr=1e-3",
           "agent.learner.critic_lr=1e-3", "agent.learner.init_alpha=0.05", "progress=false"]


@pytest.mark.slow
def test_gail_with_gradient_penalty_imitates_the_lqr_expert_on_inverted_pendulum(workdir):
    """From 4 demonstrations (every 20th transition), environment rewards unused: >= 80% of the
    expert's return (1000) within 15k steps (the run stops at the first evaluation that reaches
    it); the checkpoint's policy then evaluates through `lipctl eval`."""
    lipctl("train", *GAIL_IP, "loop.total_steps=15000", "loop.eval_every=1000",
           "loop.eval_episodes=3", "loop.checkpoint_every=15000", "loop.target_return=800",
           "hydra.run.dir=run", cwd=workdir, check=True, timeout=900)
    with (workdir / "run" / "eval.csv").open(newline="") as f:
        returns = [float(row["return_mean"]) for row in csv.DictReader(f)]
    assert max(returns) >= 0.8 * 1000.0, returns
    summary = json.loads((workdir / "run" / "summary.json").read_text())
    discriminator = summary["certificates"]["discriminator"]
    assert discriminator["lower"] <= discriminator["upper"]
    result = lipctl("eval", "checkpoint=run/checkpoint.pt", "episodes=2", cwd=workdir, check=True)
    assert "discriminator: Lipschitz upper" in result.stdout


@pytest.mark.slow
def test_gail_policy_exports_on_the_envs_own_observations(workdir):
    """The absorbing indicator is the learner's business: the exported policy takes the env's
    4 observations, and a resumed run carries the discriminator on."""
    tiny = [*GAIL_IP, *TINY_TRAIN, "agent.learner.hidden=[16,16]", "hydra.run.dir=run"]
    lipctl("train", *tiny, cwd=workdir, check=True)
    first = load_checkpoint(workdir / "run" / "checkpoint.pt")["reward_source"]
    lipctl("train", *tiny, "loop.total_steps=400", "resume=true", cwd=workdir, check=True)
    resumed = load_checkpoint(workdir / "run" / "checkpoint.pt")
    assert resumed["step"] == 400
    assert resumed["reward_source"]["seconds"]["discriminator"] > first["seconds"]["discriminator"]
    result = lipctl("export", "checkpoint=run/checkpoint.pt", "format=onnx", cwd=workdir,
                    check=True)
    description = json.loads((workdir / "run" / "checkpoint.onnx.json").read_text())
    assert description["input"]["shape"] == [1, 4], result.stdout
    module = load_agent(workdir / "run" / "checkpoint.pt").exportable().module
    assert not any(m.training for m in module.modules())  # exported as it acts, in eval mode


def test_the_hard_label_variant_leaves_only_the_classification_loss():
    with initialize_config_module(config_module="lipctl.conf", version_base=None):
        cfg = compose("train", overrides=["variant=gail_no_penalty_hard"])
    settings = instantiate(cfg.agent.gail, batch_size=256)
    assert (settings.penalty, settings.entropy_weight) == ("none", 0.0)
    assert (settings.expert_label_min, settings.expert_label_max) == (1.0, 1.0)
