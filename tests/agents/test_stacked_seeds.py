"""Stacked seeds: seed k of a stacked learner follows the separate learner of seed k, update for
update, given the same batches (float tolerance), for SAC and TD3, plain and Lipschitz."""

import json

import numpy as np
import pytest
import torch

from lipctl.agents.buffer import Batch
from lipctl.agents.checkpoint import load_checkpoint
from lipctl.agents.sac import SAC
from lipctl.agents.td3 import TD3
from lipctl.envs.files import read_csv
from tests.helpers import TINY_TRAIN, assert_user_error, config_error, lipctl

OBS, ACT, HIDDEN, SEEDS, UPDATES = 5, 2, (32, 32), 3, 25
RTOL, ATOL = 1e-4, 1e-5  # bmm over members and mm per learner round differently

VARIANTS = {
    "plain": {},
    "spectral": {"lipschitz": {"layer": "spectral", "L": 20.0}},
    "soft_cap actor, muon": {"actor_lipschitz": {"layer": "soft_cap", "L": 5.0,
                                                 "activation": "maxmin"},
                             "optimizer": "muon"},
    "ldl": {"lipschitz": {"layer": "ldl", "L": 20.0}},
}


def learners(cls, options: dict) -> tuple[list, object]:
    """SEEDS separate learners (seed k built under torch seed k) and one stacked learner that
    holds their states."""
    separate = []
    for seed in range(SEEDS):
        torch.manual_seed(seed)
        separate.append(cls(OBS, ACT, hidden=HIDDEN, **options))
    torch.manual_seed(1234)
    stacked = cls(OBS, ACT, hidden=HIDDEN, seeds=SEEDS, **options)
    stacked.load_seed_state_dicts([learner.state_dict() for learner in separate])
    return separate, stacked


def batches(seed: int) -> list[Batch]:
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=generator)

    return [Batch(obs=rand(64, OBS), action=rand(64, ACT).tanh(), reward=rand(64),
                  next_obs=rand(64, OBS), done=(rand(64) > 1.5).float())
            for _ in range(UPDATES)]


def stack(batch_list: list[Batch]) -> Batch:
    return Batch(*(torch.stack(fields) for fields in zip(*batch_list, strict=True)))


def assert_states_close(actual, expected, where=""):
    if isinstance(expected, torch.Tensor):
        if expected.dtype == torch.uint8:  # a generator state
            assert torch.equal(actual, expected), where
        else:
            torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL, msg=where)
    elif isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key in expected:
            assert_states_close(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_states_close(a, e, f"{where}[{i}]")
    else:
        assert actual == expected, where


@pytest.mark.slow
@pytest.mark.parametrize("cls", [SAC, TD3])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_seed_k_of_a_stacked_learner_follows_its_separate_run(cls, variant):
    separate, stacked = learners(cls, VARIANTS[variant])
    per_seed = [batches(100 + k) for k in range(SEEDS)]
    obs = np.random.default_rng(0).normal(size=(SEEDS, OBS)).astype(np.float32)
    for step in range(UPDATES):
        metrics = stacked.update(stack([per_seed[k][step] for k in range(SEEDS)]))
        for k, learner in enumerate(separate):
            own = learner.update(per_seed[k][step])
            torch.testing.assert_close(metrics["critic_loss"][k], own["critic_loss"],
                                       rtol=RTOL, atol=ATOL)
    explored = stacked.act(obs)  # exploration noise: each seed from its own stream
    for k, learner in enumerate(separate):
        np.testing.assert_allclose(explored[k], learner.act(obs[k]), rtol=RTOL, atol=ATOL)
        assert_states_close(stacked.seed_state_dict(k), learner.state_dict(), f"seed {k}")


def test_seed_states_round_trip_through_the_stack():
    separate, stacked = learners(SAC, VARIANTS["spectral"])
    for k, learner in enumerate(separate):  # per-seed temperatures must not collapse to one
        with torch.no_grad():
            learner.log_alpha.fill_(0.1 * k)
    stacked.load_seed_state_dicts([learner.state_dict() for learner in separate])
    states = [stacked.seed_state_dict(k) for k in range(SEEDS)]
    torch.manual_seed(7)
    again = SAC(OBS, ACT, hidden=HIDDEN, seeds=SEEDS, **VARIANTS["spectral"])
    again.load_seed_state_dicts(states)
    for k in range(SEEDS):
        assert_states_close(again.seed_state_dict(k), separate[k].state_dict(), f"seed {k}")


def test_states_that_did_not_step_together_do_not_stack():
    separate, stacked = learners(TD3, {})
    separate[1].update(batches(0)[0])  # one more update: its counter and Adam step differ
    with pytest.raises(ValueError, match="differs between the seeds' states"):
        stacked.load_seed_state_dicts([learner.state_dict() for learner in separate])


def test_the_robust_loss_is_refused_with_stacked_seeds():
    with pytest.raises(ValueError, match="robust loss is not available with stacked seeds"):
        SAC(OBS, ACT, hidden=HIDDEN, seeds=2,
            lipschitz={"robust_weight": 1.0, "robust_eps": 0.1})


def eval_rows(path) -> np.ndarray:
    return np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)


@pytest.mark.slow
def test_lipctl_train_seeds_writes_what_the_separate_runs_write(workdir):
    """Each seed of `lipctl train seeds=[0,1]` lands in the folder its separate run uses, with
    the same config, evaluations and weights (float tolerance)."""
    lipctl("train", "seeds=[0,1]", "hydra.run.dir=stacked/seed${seed}", *TINY_TRAIN,
           cwd=workdir, check=True)
    lipctl("train", "seed=1", "hydra.run.dir=separate/seed${seed}", *TINY_TRAIN, cwd=workdir,
           check=True)
    stacked, separate = (load_checkpoint(workdir / kind / "seed1" / "checkpoint.pt")
                         for kind in ("stacked", "separate"))
    assert stacked["config"] == separate["config"] and stacked["config"]["seed"] == 1
    assert stacked["step"] == separate["step"] == 300
    assert_states_close(stacked["agent"], separate["agent"], "agent")
    np.testing.assert_allclose(eval_rows(workdir / "stacked/seed1/eval.csv"),
                               eval_rows(workdir / "separate/seed1/eval.csv"), rtol=1e-4,
                               atol=1e-4)
    assert (workdir / "stacked/seed0/checkpoint.pt").exists()
    assert load_checkpoint(workdir / "stacked/seed0/checkpoint.pt")["config"]["seed"] == 0


@pytest.mark.slow
def test_stacked_seeds_resume_together(workdir):
    args = ["seeds=[0,1]", "hydra.run.dir=run/seed${seed}", *TINY_TRAIN]
    lipctl("train", *args, cwd=workdir, check=True)
    lipctl("train", *args, "loop.total_steps=450", "resume=true", cwd=workdir, check=True)
    for seed in (0, 1):
        assert load_checkpoint(workdir / f"run/seed{seed}/checkpoint.pt")["step"] == 450
        steps = eval_rows(workdir / f"run/seed{seed}/train.csv")[:, 0]
        assert (np.diff(steps) > 0).all() and steps[-1] == 450
    (workdir / "run/seed1/checkpoint.pt").unlink()
    assert_user_error(lipctl("train", *args, "loop.total_steps=600", "resume=true",
                             cwd=workdir),
                      "lipctl train: error: seeds: only seeds [0] have a checkpoint to resume")


@pytest.mark.slow
def test_a_kill_between_two_seeds_saves_resumes_from_their_common_step(workdir):
    """Seed 0 had saved step 300 and seed 1 not yet (its checkpoint is at 200): seed 0's
    previous checkpoint goes back in place and both resume from 200."""
    args = ["seeds=[0,1]", "hydra.run.dir=run/seed${seed}", *TINY_TRAIN]
    lipctl("train", *args, "loop.total_steps=200", cwd=workdir, check=True)
    at_200 = {seed: (workdir / f"run/seed{seed}/checkpoint.pt").read_bytes() for seed in (0, 1)}
    lipctl("train", *args, "resume=true", cwd=workdir, check=True)
    assert not list(workdir.glob("run/seed*/checkpoint.previous.pt"))  # dropped once all saved
    (workdir / "run/seed0/checkpoint.previous.pt").write_bytes(at_200[0])
    (workdir / "run/seed1/checkpoint.pt").write_bytes(at_200[1])
    lipctl("train", *args, "loop.total_steps=400", "resume=true", cwd=workdir, check=True)
    for seed in (0, 1):
        assert load_checkpoint(workdir / f"run/seed{seed}/checkpoint.pt")["step"] == 400
        steps = eval_rows(workdir / f"run/seed{seed}/train.csv")[:, 0]
        assert (np.diff(steps) > 0).all() and steps[-1] == 400


@pytest.mark.parametrize("overrides, message", [
    (["seeds=[0,0]"], "seeds: must be a list of distinct non-negative integers"),
    (["seeds=[0,1]", "agent=mbpo"], "seeds: MBPO runs one seed per process"),
    (["seeds=[0,1]", "lipschitz=spectral_adversarial"],
     "seeds: the robust loss is not available with stacked seeds"),
])
def test_a_seeds_list_that_cannot_stack_is_a_config_error(workdir, overrides, message):
    assert config_error("train", *overrides, *TINY_TRAIN, cwd=workdir).startswith(message)


@pytest.mark.slow
def test_seeds_sharing_a_run_folder_are_refused_in_one_line(workdir):
    """Found once the seeds' run folders are resolved, at the start of the run."""
    result = lipctl("train", "seeds=[0,1]", "hydra.run.dir=run", *TINY_TRAIN, cwd=workdir)
    assert_user_error(result, "lipctl train: error: seeds: hydra.run.dir gives the seeds the same")


@pytest.mark.slow
def test_the_stacked_seeds_benchmark_times_every_way_and_replots(workdir):
    out = workdir / "out"
    lipctl("bench", "experiment=stacked_seeds", f"out={out}", f"work={workdir / 'work'}",
           "experiment.seed_counts=[1,2]", "experiment.widths=[16]", "experiment.steps=150",
           "experiment.warmup_steps=100", "~experiment.envs", "+experiment.envs={pendulum:[]}",
           cwd=workdir, check=True, timeout=600)
    rows = {int(row["seeds"]): row for row in read_csv(out / "summary.csv")}
    assert set(rows) == {1, 2} and float(rows[1]["stacked_1core_gain"]) == 1.0
    for row in rows.values():
        for way in ("stacked_1core", "stacked_2core", "separate"):
            assert float(row[f"{way}_steps_per_s_per_seed"]) > 0
            assert float(row[f"{way}_wall_s"]) > 0 and float(row[f"{way}_peak_rss_mb"]) > 0
    assert (out / "runs/pendulum/w16/separate_S2/seed1/train.csv").exists()
    before = (out / "summary.csv").read_text()
    (out / "summary.csv").unlink()
    lipctl("bench", "experiment=stacked_seeds", f"out={out}", "replot=true", cwd=workdir,
           check=True)
    assert (out / "summary.csv").read_text() == before
    assert (out / "throughput.png").stat().st_size > 0


@pytest.mark.slow
def test_stacked_sac_learns_pendulum_within_10k_steps_on_every_seed(workdir):
    """The SAC learning test's budget and threshold (tests/agents/test_sac.py), two seeds
    stacked; each seed stops at its first evaluation that reaches the level."""
    lipctl("train", "seeds=[0,1]", "hydra.run.dir=run/seed${seed}",
           "agent.learner.hidden=[128,128]", "loop.total_steps=10000", "agent.warmup_steps=1000",
           "agent.batch_size=128", "loop.eval_every=2000", "loop.eval_episodes=10",
           "loop.checkpoint_every=10000", "loop.log_every=1000", "loop.target_return=-250",
           "progress=false", cwd=workdir, check=True, timeout=1200)
    for seed in (0, 1):
        final = json.loads((workdir / f"run/seed{seed}/summary.json").read_text())["eval_return"]
        assert final >= -250, f"seed {seed}: mean deterministic eval return {final:.1f}"
