"""A stable-baselines3 .zip is read as data: its pickled entries never run, its policy acts as
stable-baselines3's own predict does."""

from __future__ import annotations

import base64
import contextlib
import json
import pathlib
import pickle
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import stable_baselines3
import torch

from lipctl.envs.demos import load_demos
from lipctl.envs.experts import read_sb3_policy
from tests.helpers import assert_user_error, lipctl

ENV_ID = "Pendulum-v1"


class Payload:
    """Unpickling it creates `marker`: what a hostile pickle in a .zip would do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


@pytest.fixture(scope="module")
def genuine(tmp_path_factory) -> tuple[Path, stable_baselines3.SAC]:
    """A SAC trained a few steps on Pendulum-v1 and saved by stable-baselines3; its Tanh
    activation makes stable-baselines3 pickle its policy kwargs."""
    env = gym.make(ENV_ID)
    model = stable_baselines3.SAC("MlpPolicy", env, learning_starts=10, batch_size=16, seed=0,
                                  policy_kwargs={"net_arch": [16, 16],
                                                 "activation_fn": torch.nn.Tanh})
    model.learn(30)
    env.close()
    path = tmp_path_factory.mktemp("sb3") / "sac.zip"
    model.save(path)
    return path, model


def craft(source: Path, target: Path, marker: Path, policy_kwargs: dict | None = None) -> None:
    """`source` with every pickled entry of its `data` replaced by a `Payload` for `marker` (the
    readable items beside each pickle kept), and `policy_kwargs`' readable items overridden."""
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    data = json.loads(members["data"])
    payload = base64.b64encode(pickle.dumps(Payload(marker))).decode()
    for entry in data.values():
        if isinstance(entry, dict) and ":serialized:" in entry:
            entry[":serialized:"] = payload
    data["policy_kwargs"].update(policy_kwargs or {})
    members["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(target, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)


def test_genuine_policy_acts_as_stable_baselines3_predicts(genuine):
    """The policy read as data gives the actions of the model loaded by stable-baselines3."""
    path, model = genuine
    env = gym.make(ENV_ID)
    policy = read_sb3_policy(path, "sac", env)
    env.close()
    assert isinstance(policy.actor.latent_pi[1], torch.nn.Tanh)
    observations = np.random.default_rng(0).uniform(-1, 1, (64, 3)).astype(np.float32)
    observations[:, 2] *= 8
    loaded = stable_baselines3.SAC.load(path, device="cpu")
    expected = loaded.predict(observations, deterministic=True)[0]
    np.testing.assert_allclose(policy.predict(observations, deterministic=True)[0], expected,
                               atol=1e-6)
    np.testing.assert_allclose(expected, model.predict(observations, deterministic=True)[0],
                               atol=1e-6)


@pytest.mark.slow
def test_crafted_zip_runs_no_code(genuine, workdir):
    """Every pickle of the crafted .zip would create a file when stable-baselines3 loads it;
    `lipctl demos expert=sb3` records its policy without creating it, and refuses a policy
    kwarg that only a pickle could restore in one line that names the trust flag."""
    path, model = genuine
    marker = workdir / "pwned"
    craft(path, workdir / "crafted.zip", marker)
    with contextlib.suppress(Exception):  # whatever it does after running the payload
        stable_baselines3.SAC.load(workdir / "crafted.zip", device="cpu")
    assert marker.exists(), "the crafted file must carry a live payload"
    marker.unlink()

    result = lipctl("demos", "env=pendulum", "expert=sb3", "expert_checkpoint=crafted.zip",
                    "episodes=1", "max_steps=20", "out=crafted.npz", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    recorded = load_demos(workdir / "crafted.npz", env=ENV_ID)
    expected = model.predict(recorded.observations.astype(np.float32), deterministic=True)[0]
    np.testing.assert_allclose(recorded.actions, expected, atol=1e-6)

    craft(path, workdir / "opaque.zip", marker,
          policy_kwargs={"activation_fn": "<class 'payload.Activation'>"})
    assert_user_error(lipctl("demos", "env=pendulum", "expert=sb3",
                             "expert_checkpoint=opaque.zip", cwd=workdir),
                      "policy_kwargs.activation_fn = <class 'payload.Activation'> can only be "
                      "restored by running code from the file; pass sb3_trust=true")
    assert not marker.exists()
    assert not (workdir / "demos").exists()
