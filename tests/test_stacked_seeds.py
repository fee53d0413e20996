"""Stacked seeds: seed k of a stacked learner follows the separate learner of seed k, update for
update, given the same batches (float tolerance), for SAC and TD3, plain and Lipschitz."""

import numpy as np
import pytest
import torch

from lipctl.agents.buffer import Batch
from lipctl.agents.sac import SAC
from lipctl.agents.td3 import TD3

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
