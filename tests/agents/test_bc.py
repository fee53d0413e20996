"""Lipschitz behaviour cloning: certified bounds that hold, learning from the committed LQR
demonstrations, checkpoints the other commands read, and clear CLI errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lipctl.agents.bc import BCPolicy, BCSettings, fit_bc, holdout_split
from lipctl.control import returns, run
from lipctl.control.policy import ModuleController
from lipctl.envs import make_env
from lipctl.envs.demos import load_demos
from lipctl.envs.experts import make_expert
from lipctl.lipschitz import SpectralLinear, freeze
from tests.helpers import config_error, lipctl

ROOT = Path(__file__).resolve().parents[2]
DEMOS = ROOT / "demos" / "InvertedPendulum-v5-lqr.npz"
ENV_ID = "InvertedPendulum-v5"


@pytest.fixture(scope="module")
def demos():
    return load_demos(DEMOS, env=ENV_ID)


def make_policy(bound: float | None, activation: str = "relu", hidden=(32, 32)) -> BCPolicy:
    return BCPolicy(4, 1, [-3.0], [3.0], hidden=hidden, activation=activation,
                    lipschitz={"L": bound})


def fitted(demos, bound: float | None, epochs: int, activation: str = "relu",
           seed: int = 0) -> BCPolicy:
    torch.manual_seed(seed)
    policy = make_policy(bound, activation)
    fit_bc(policy, demos.observations, demos.actions, demos.episode_index,
           BCSettings(epochs=epochs, patience=epochs), seed=seed)
    return policy


def pair_ratios(policy: BCPolicy, x1: torch.Tensor, x2: torch.Tensor,
                min_gap: float) -> torch.Tensor:
    """||policy(x1) - policy(x2)|| / ||x1 - x2|| of the pairs at least min_gap apart, in float64
    (the certificate bounds the function, not float32 rounding)."""
    exact = copy.deepcopy(policy).double()
    x1, x2 = x1.double(), x2.double()
    gap = torch.linalg.vector_norm(x1 - x2, dim=-1)
    with torch.no_grad():
        change = torch.linalg.vector_norm(exact(x1) - exact(x2), dim=-1)
    return (change / gap)[gap >= min_gap]


@pytest.mark.slow
@pytest.mark.parametrize("bound,activation", [(2.0, "relu"), (15.0, "relu"), (15.0, "maxmin"),
                                              (None, "relu")])
def test_certified_bound_holds_and_no_sampled_pair_exceeds_it(demos, bound, activation):
    policy = fitted(demos, bound, epochs=3, activation=activation)
    states = torch.as_tensor(demos.observations, dtype=torch.float32)
    certificate = policy.certificate(states)
    if bound is not None:
        assert certificate.upper <= bound
    assert certificate.lower <= certificate.upper
    generator = torch.Generator().manual_seed(1)
    spread = float(states.std())
    x1 = states[torch.randint(len(states), (4000,), generator=generator)]
    x2 = states[torch.randint(len(states), (4000,), generator=generator)]
    nearby = x1 + 1e-2 * spread * torch.randn(x1.shape, generator=generator)
    far = 100 * spread * torch.randn(x1.shape, generator=generator)  # well off the demos
    ratios = torch.cat([pair_ratios(policy, a, b, 1e-3 * spread)
                        for a, b in ((x1, x2), (x1, nearby), (far, far.flip(0)))])
    assert len(ratios) > 6000 and torch.isfinite(ratios).all()
    assert ratios.max() <= certificate.upper * (1 + 1e-4)


def test_policy_acts_in_the_action_bounds_and_freezes_to_the_same_function(demos):
    policy = fitted(demos, 15.0, epochs=2)
    far = 10 * torch.randn(256, 4)  # large states drive the unclipped MLP past the bounds
    with torch.no_grad():
        actions = policy(far)
        assert actions.abs().max() <= 3.0
        frozen = freeze(policy)
        assert torch.equal(frozen(far), actions)
    assert not any(isinstance(m, SpectralLinear) for m in frozen.modules())
    assert frozen.certificate(far).upper == pytest.approx(policy.certificate(far).upper)


def test_holdout_split_holds_out_whole_episodes():
    episode_index = np.repeat(np.arange(10), 7)
    train, holdout = holdout_split(episode_index, 0.2, np.random.default_rng(0))
    assert len(np.unique(episode_index[holdout])) == 2
    assert not set(episode_index[train]) & set(episode_index[holdout])
    assert len(train) + len(holdout) == len(episode_index)
    _, none = holdout_split(np.zeros(5, dtype=int), 0.2, np.random.default_rng(0))
    assert len(none) == 0  # one episode: nothing to hold out


@pytest.mark.slow
@pytest.mark.parametrize("bound", [15.0, None])
def test_bc_from_lqr_demos_balances_the_pendulum(demos, bound):
    """A moderate bound (the LQR gain's norm is 12.6) and the unconstrained baseline both clone
    the expert well enough to hold the pole for the whole episode."""
    env = make_env(ENV_ID)
    gain = np.linalg.norm(make_expert("lqr", env).gain, 2)
    policy = fitted(demos, bound, epochs=40)
    certificate = policy.certificate(torch.as_tensor(demos.observations, dtype=torch.float32))
    episode_returns = returns(run(ModuleController(policy), env, 3, seed=500))
    env.close()
    assert episode_returns.min() >= 900, episode_returns
    if bound is not None:
        assert certificate.upper <= bound
    assert certificate.lower >= 0.5 * gain  # it learned the expert's feedback, not a constant


@pytest.mark.slow
def test_train_agent_bc_end_to_end_then_eval_and_robustness(workdir):
    run_dir = workdir / "run"
    lipctl("train", "agent=bc", "env=inverted_pendulum", f"demos={DEMOS}", "lipschitz.L=15",
           "agent.fit.epochs=40", "agent.eval_episodes=2", "progress=false",
           f"hydra.run.dir={run_dir}", cwd=workdir, check=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["L"] == 15 and summary["within_bound"]
    assert summary["lipschitz_lower"] <= summary["lipschitz_upper"] <= 15
    assert summary["eval_return"] >= 900
    assert summary["fit"]["holdout_mse"] < 0.1 * float(np.var(load_demos(DEMOS).actions))
    checkpoint = run_dir / "checkpoint.pt"

    evaluated = lipctl("eval", f"checkpoint={checkpoint}", "episodes=1", cwd=workdir, check=True)
    assert f"{ENV_ID} | 1 episodes | return" in evaluated.stdout
    assert "policy: Lipschitz upper" in evaluated.stdout

    report_path = workdir / "robustness.json"
    result = lipctl("robustness", f"checkpoint={checkpoint}", "eps=[0,0.1]", "episodes=1",
                    "attack_steps=3", f"out={report_path}", cwd=workdir, check=True)
    assert "nominal return" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["lipschitz_upper"] == pytest.approx(summary["lipschitz_upper"])
    zero, large = report["rows"]
    assert zero["attack_mean"] == zero["noise_mean"] == report["nominal_mean"]
    assert large["attack_action_change"] > large["noise_action_change"] > 0
    assert large["attack_action_change"] <= 15 * 0.1


@pytest.mark.parametrize("args,expected", [
    (["env=inverted_pendulum"], "demos: agent=bc learns from expert demonstrations"),
    (["env=inverted_pendulum", "demos=missing.npz"], "demonstrations file not found"),
    ([f"demos={DEMOS}"], "was recorded on 'InvertedPendulum-v5', not 'Pendulum-v1'"),
    (["env=inverted_pendulum", f"demos={DEMOS}", "lipschitz.L=-1"], "lipschitz.L: must be > 0"),
    (["env=inverted_pendulum", f"demos={DEMOS}", "agent.fit.holdout_ratio=1"],
     "agent.fit.holdout_ratio: must be < 1"),
    (["env=inverted_pendulum", f"demos={DEMOS}", "lipschitz=adversarial"],
     "lipschitz.robust_weight"),
    (["env=inverted_pendulum", f"demos={DEMOS}", "lipschitz.layer=nope"],
     "lipschitz.layer: unknown layer family 'nope'"),
])
def test_train_bc_config_errors_are_one_line(workdir, args, expected):
    assert expected in config_error("train", "agent=bc", *args, cwd=workdir)
    assert not (workdir / "runs").exists(), "work started before the config was checked"


@pytest.mark.parametrize("args,expected", [
    (["experiment.seeds=[]"], "experiment.seeds: must be a non-empty list of integers >= 0"),
    (["+experiment.systems.cartpole={critical_multiples:[],expert_multiples:[1]}"],
     "experiment.systems.cartpole: unknown system; choose from double_integrator"),
    (["experiment.systems.double_integrator.expert_multiples=[0.1,-1]"],
     "experiment.systems.double_integrator.expert_multiples: needs numbers > 0"),
    (["experiment.eps=[0.5,2]"], "experiment.demos.noise_radius: must cover the largest eps 2"),
    (["replot=true", "experiment=cstr_mpc"], "replot: no per-run files in"),
    (["replot=true"], "replot: no per-run files in"),
])
def test_bench_lipschitz_bc_config_errors_are_one_line(workdir, args, expected):
    assert expected in config_error("bench", "experiment=lipschitz_bc", f"out={workdir / 'out'}",
                                    *args, cwd=ROOT)
    assert not (workdir / "out").exists()
