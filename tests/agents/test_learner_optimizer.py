"""The learners' optimiser choice (agent.learner.optimizer): Adam as before, bit for bit, or
Muon on the critics' and actor's hidden weight matrices with Adam on the rest; projections
after the Muon step, checkpoints that resume bit for bit, and one-line config errors."""

from __future__ import annotations

import io

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from torch import nn

import lipctl.lipschitz.projections  # noqa: F401  (registers the projection families)
from lipctl.agents.buffer import Batch, ReplayBuffer
from lipctl.agents.checkpoint import load_checkpoint
from lipctl.agents.critic_learner import CriticLearner
from lipctl.agents.sac import SAC
from lipctl.agents.td3 import TD3
from lipctl.agents.trainer import LoopSettings, OffPolicyTrainer
from lipctl.commands.train import validate
from lipctl.config import ConfigError, check_overrides
from lipctl.envs import make_env
from lipctl.lipschitz import LipschitzLinear
from lipctl.lipschitz.muon import MuonAdam, make_optimizer
from lipctl.logger import Logger
from tests.agents.test_sac import SMALL_LOOP, random_batch


def hidden_matrices(agent: CriticLearner) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The critic's and the actor's hidden weights: every linear layer's but the first and
    last of each network (the actor's trunk, then its head)."""
    critic = [layer.weight for layer in agent.critic.layers()[1:-1]]
    actor = agent.actor.trunk if isinstance(agent, SAC) else agent.actor[0]
    return critic, [m.weight for m in actor if isinstance(m, LipschitzLinear)][1:]


def held(optimizer: MuonAdam, name: str) -> list[int]:
    return [id(p) for group in optimizer.optimizers[name].param_groups for p in group["params"]]


@pytest.mark.parametrize("learner", [SAC, TD3])
def test_muon_holds_the_hidden_matrices_and_updates_run(learner):
    torch.manual_seed(0)
    agent = learner(3, 1, hidden=(16, 16, 16), optimizer="muon", muon_lr=0.03)
    critic_hidden, actor_hidden = hidden_matrices(agent)
    assert len(critic_hidden) == len(actor_hidden) == 2
    assert critic_hidden[0].shape == (2, 16, 16)  # the twin critics' stacked weights
    for optimizer, module, hidden in ((agent.critic_opt, agent.critic, critic_hidden),
                                      (agent.actor_opt, agent.actor, actor_hidden)):
        assert isinstance(optimizer, MuonAdam)
        assert held(optimizer, "muon") == [id(p) for p in hidden]
        assert optimizer.optimizers["muon"].param_groups[0]["lr"] == 0.03
        rest = [id(p) for p in module.parameters() if all(p is not h for h in hidden)]
        assert held(optimizer, "adam") == rest
        assert optimizer.optimizers["adam"].defaults["fused"]
    if isinstance(agent, SAC):  # the temperature stays on Adam
        assert type(agent.alpha_opt) is torch.optim.Adam
        assert agent.alpha_opt.param_groups[0]["params"] == [agent.log_alpha]

    before = [p.detach().clone() for p in (*agent.critic.parameters(), *agent.actor.parameters())]
    buffer = random_batch()
    for _ in range(4):
        metrics = agent.update(buffer.sample(32))
    after = [*agent.critic.parameters(), *agent.actor.parameters()]
    assert all(torch.isfinite(v).all() for v in metrics.values())
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("learner", [SAC, TD3])
def test_default_adam_is_the_hand_built_fused_adam(learner):
    """optimizer=adam (the default) steps exactly as torch.optim.Adam(..., fused=True) over the
    critic's and the actor's parameters, as the learners did before the choice existed."""
    agents = []
    for by_hand in (False, True):
        torch.manual_seed(0)
        agent = learner(3, 1, hidden=(16, 16), critic_lr=1e-3, actor_lr=2e-3)
        if by_hand:
            agent.critic_opt = torch.optim.Adam(agent.critic.parameters(), lr=1e-3, fused=True)
            agent.actor_opt = torch.optim.Adam(agent.actor.parameters(), lr=2e-3, fused=True)
        else:
            assert type(agent.critic_opt) is type(agent.actor_opt) is torch.optim.Adam
        buffer = random_batch()
        torch.manual_seed(1)
        for _ in range(6):
            agent.update(buffer.sample(32))
        agents.append(agent)
    built, by_hand = (agent.state_dict() for agent in agents)
    for key in ("actor", "critic", "critic_target"):
        for name, tensor in built[key].items():
            assert torch.equal(tensor, by_hand[key][name]), (key, name)


def test_make_optimizer_refuses_an_unknown_name():
    with pytest.raises(ValueError, match="optimizer must be one of adam, muon, got 'sgd'"):
        make_optimizer(nn.Linear(2, 2), "sgd", lr=1e-3)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        SAC(3, 1, hidden=(8, 8), optimizer="bogus")


def test_projection_follows_the_muon_step():
    """svd_clip projects exactly after each step: with Muon's large steps (0.1 here) every
    critic layer's raw weight still ends at spectral norm <= its bound (1, at a level)."""
    torch.manual_seed(0)
    agent = SAC(3, 1, hidden=(16, 16), optimizer="muon", muon_lr=0.1,
                lipschitz={"layer": "svd_clip", "L": 10.0})
    buffer = random_batch()
    for _ in range(5):
        agent.update(buffer.sample(32))
    for layer in agent.critic.layers():
        assert torch.linalg.matrix_norm(layer.weight.detach(), ord=2).max() <= 1 + 1e-5


@pytest.mark.parametrize("learner", [SAC, TD3])
def test_muon_state_round_trip_continues_bit_for_bit(learner):
    """A learner restored from a saved state (loaded as data only) continues exactly as the
    one that saved it: Muon's momentum comes back with the weights."""
    torch.manual_seed(0)
    agent = learner(3, 1, hidden=(16, 16), optimizer="muon")
    buffer = random_batch()
    for _ in range(3):
        agent.update(buffer.sample(32))
    file = io.BytesIO()
    torch.save(agent.state_dict(), file)
    file.seek(0)
    state = torch.load(file, weights_only=True)
    assert set(state["critic_opt"]) == set(state["actor_opt"]) == {"muon", "adam"}
    torch.manual_seed(5)
    twin = learner(3, 1, hidden=(16, 16), optimizer="muon")
    twin.load_state_dict(state)
    batches = [buffer.sample(32) for _ in range(4)]
    for model in (agent, twin):
        torch.manual_seed(2)
        for batch in batches:
            model.update(batch)
    for key in ("actor", "critic", "critic_target"):
        for name, tensor in agent.state_dict()[key].items():
            assert torch.equal(tensor, twin.state_dict()[key][name]), (key, name)


def muon_trainer(tmp_path, **loop) -> OffPolicyTrainer:
    settings = LoopSettings(**{**SMALL_LOOP, **loop})
    torch.manual_seed(settings.seed)
    env, eval_env = make_env("Pendulum-v1", seed=settings.seed), make_env("Pendulum-v1")
    agent = SAC(3, 1, hidden=(16, 16), optimizer="muon")
    buffer = ReplayBuffer(settings.total_steps, 3, 1, "cpu", seed=settings.seed)
    return OffPolicyTrainer(agent, env, eval_env, buffer, settings, Logger(tmp_path),
                            checkpoint_path=tmp_path / "checkpoint.pt", progress=False)


@pytest.mark.slow
def test_resume_with_muon_is_deterministic(tmp_path):
    """Two trainers resumed from the same mid-run Muon checkpoint continue identically."""
    mid = muon_trainer(tmp_path / "mid", total_steps=300)
    mid.train()
    results, weights = [], []
    for name in ("a", "b"):
        checkpoint = load_checkpoint(tmp_path / "mid" / "checkpoint.pt")
        assert set(checkpoint["agent"]["critic_opt"]) == {"muon", "adam"}
        resumed = muon_trainer(tmp_path / name, total_steps=500)
        resumed.load_state_dict(checkpoint)
        assert resumed.step == 300
        results.append(resumed.train())
        weights.append(resumed.agent.state_dict()["critic"])
    assert results[0] == results[1]
    assert all(torch.equal(w, weights[1][k]) for k, w in weights[0].items())


@pytest.mark.slow
def test_muon_lowers_a_soft_capped_critic_loss():
    """SAC with Muon and soft-capped critics (L = 50) on a fixed Pendulum-sized batch whose
    rewards oscillate along the state: 150 updates cut the critic loss by at least a fifth."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    obs = torch.randn(256, 3, generator=generator)
    batch = Batch(obs, torch.rand(256, 1, generator=generator) * 2 - 1,
                  10 * torch.sin(6 * obs[:, 0]), obs + 0.05, torch.zeros(256))
    agent = SAC(3, 1, hidden=(32, 32), optimizer="muon",
                lipschitz={"layer": "soft_cap", "L": 50.0})
    losses = torch.stack([agent.update(batch)["critic_loss"] for _ in range(150)])
    first, last = losses[:10].mean(), losses[-10:].mean()
    assert last < 0.8 * first, (float(first), float(last))


def check(run_dir, *overrides: str) -> None:
    """The CLI's check of `lipctl train OVERRIDES`, in this process."""
    check_overrides("train", [*overrides, f"hydra.run.dir={run_dir}"], validate)


@pytest.mark.parametrize(("overrides", "expected"), [
    (["agent.learner.optimizer=bogus"],
     "agent.learner.optimizer: must be one of adam, muon, got 'bogus'"),
    (["agent=td3", "agent.learner.optimizer=sgd"],
     "agent.learner.optimizer: must be one of adam, muon, got 'sgd'"),
    (["agent.learner.optimizer=muon", "agent.learner.muon_lr=0"],
     "agent.learner.muon_lr: must be > 0, got 0"),
    (["agent=mbpo", "agent.learner.muon_lr=abc"],
     "agent.learner.muon_lr: must be a number, got 'abc'"),
])
def test_a_bad_optimizer_setting_is_one_line_naming_its_key(tmp_path, overrides, expected):
    with pytest.raises(ConfigError) as error:
        check(tmp_path / "run", *overrides)
    assert str(error.value) == expected
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("agent", ["sac", "td3"])
def test_the_config_builds_a_muon_learner(tmp_path, agent):
    overrides = [f"agent={agent}", "agent.learner.optimizer=muon", "agent.learner.muon_lr=0.05",
                 "agent.learner.hidden=[8,8,8]"]
    check(tmp_path / "run", *overrides)
    with initialize_config_module(config_module="lipctl.conf", version_base=None):
        cfg = compose("train", overrides=overrides)
        default = compose("train", overrides=[f"agent={agent}"])
    assert default.agent.learner.optimizer == "adam"
    learner = instantiate(cfg.agent.learner, obs_dim=3, act_dim=1)
    assert isinstance(learner.critic_opt, MuonAdam) and isinstance(learner.actor_opt, MuonAdam)
    assert learner.critic_opt.optimizers["muon"].param_groups[0]["lr"] == 0.05
