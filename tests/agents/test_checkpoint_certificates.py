"""Checkpoints written between evaluations carry the certificates of the weights they hold."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lipctl.agents.buffer import ReplayBuffer
from lipctl.agents.checkpoint import load_checkpoint, save_checkpoint
from lipctl.agents.trainer import certificate_inputs
from lipctl.lipschitz import lower_bound
from tests.helpers import TINY_TRAIN, lipctl

EVAL_EVERY = 150
TOTAL_STEPS = 600


@pytest.fixture(scope="module")
def mid_run_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A short SAC run on Pendulum-v1 that checkpoints every 70 steps and evaluates every 150:
    a copy of each checkpoint it writes at a step with no evaluation, after the warmup."""
    workdir = tmp_path_factory.mktemp("run")
    run_dir = workdir / "run"
    checkpoint, errors = run_dir / "checkpoint.pt", workdir / "stderr.txt"
    with errors.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "lipctl", "train", *TINY_TRAIN,
             f"loop.total_steps={TOTAL_STEPS}", f"loop.eval_every={EVAL_EVERY}",
             "loop.checkpoint_every=70", f"hydra.run.dir={run_dir}"],
            cwd=workdir, stdout=subprocess.DEVNULL, stderr=stderr)
    copies, seen, deadline = [], None, time.monotonic() + 600
    while time.monotonic() < deadline:  # copy each checkpoint as it lands (renamed into place)
        finished = process.poll() is not None
        stamp = checkpoint.stat().st_mtime_ns if checkpoint.exists() else None
        if stamp is not None and stamp != seen:
            seen, copy = stamp, workdir / f"copy{len(copies)}.pt"
            copy.write_bytes(checkpoint.read_bytes())
            copies.append(copy)
        if finished:
            break
        time.sleep(0.01)
    process.kill()
    assert process.wait() == 0, errors.read_text()
    steps = {load_checkpoint(copy)["step"]: copy for copy in copies}
    assert TOTAL_STEPS in steps
    return [copy for step, copy in sorted(steps.items()) if step % EVAL_EVERY and step > 100]


def restored(state: dict):
    """The SAC learner and replay buffer rebuilt from a checkpoint's weights and rows."""
    run_cfg = OmegaConf.create(state["config"])
    agent = instantiate(run_cfg.agent.learner, obs_dim=3, act_dim=1, device="cpu")
    agent.load_state_dict(state["agent"])
    buffer = ReplayBuffer(state["buffer"]["size"], 3, 1, "cpu")
    buffer.load_state_dict(state["buffer"])
    return agent, buffer


@pytest.mark.slow
def test_mid_run_checkpoint_certifies_the_weights_it_saves(mid_run_checkpoints):
    assert mid_run_checkpoints, "no checkpoint was written between evaluations"
    for path in mid_run_checkpoints:
        state = load_checkpoint(path)
        assert state["measured_step"] == state["step"]
        agent, buffer = restored(state)
        inputs = certificate_inputs(buffer)
        recomputed = agent.critic_certificates(inputs)
        assert set(state["certificates"]) == set(recomputed) == {"critic0", "critic1"}
        net = agent.critic.net.eval()
        sampled = buffer.sample(512)
        starts = torch.cat([inputs, torch.cat([sampled.obs, sampled.action], dim=-1)])
        for name, certificate in recomputed.items():
            stored = state["certificates"][name]
            assert stored["method"] == certificate.method
            assert stored["upper"] == pytest.approx(certificate.upper, rel=1e-9)
            assert stored["lower"] == pytest.approx(certificate.lower, rel=1e-9)
            # a stronger attack than the stored lower bound's: more pairs, steps, other starts
            member = int(name.removeprefix("critic"))
            attack = max(lower_bound(net, starts, steps=300, pairs=512, member=member,
                                     seed=seed) for seed in (1, 2))
            assert 0 < attack <= stored["upper"]


@pytest.mark.slow
def test_eval_prints_the_checkpoints_own_certificates(mid_run_checkpoints, tmp_path):
    path = mid_run_checkpoints[-1]
    state = load_checkpoint(path)
    result = lipctl("eval", f"checkpoint={path}", "episodes=1", cwd=tmp_path, check=True)
    for name, certificate in state["certificates"].items():
        assert (f"{name}: Lipschitz upper {certificate['upper']:.4g} ({certificate['method']})"
                f", sampled lower {certificate['lower']:.4g}") in result.stdout

    # a file from before checkpoints carried their own figures: the critics' are recomputed
    older = {key: value for key, value in state.items() if key not in ("format", "measured_step")}
    older["certificates"] = {name: {**certificate, "upper": 1e-3}
                             for name, certificate in state["certificates"].items()}
    save_checkpoint(tmp_path / "older.pt", older)
    result = lipctl("eval", f"checkpoint={tmp_path / 'older.pt'}", "episodes=1", cwd=tmp_path,
                    check=True)
    agent, _ = restored(state)
    for name, certificate in agent.critic_certificates().items():
        assert f"{name}: Lipschitz upper {certificate.upper:.4g} ({certificate.method})\n" \
            in result.stdout
    assert "upper 0.001" not in result.stdout
