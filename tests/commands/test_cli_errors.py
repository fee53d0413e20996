"""Every user mistake is one clear stderr line and exit code 2, before any work starts."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_user_error, config_error, lipctl, lipctl_process

BAD_INPUTS = [
    (["train", "env.id=NoSuchEnv-v0"], "unknown environment 'NoSuchEnv-v0'"),
    (["train", "env=nosuch"], "env/nosuch"),
    (["train", "lipschitz.L=-1"], "lipschitz.L: must be > 0"),
    (["train", "lipschitz=spectral", "lipschitz.L=0"], "lipschitz.L: must be > 0"),
    (["train", "no_such_key=1"], "unknown key 'no_such_key'"),
    (["train", "loop.total_steps=0"], "loop.total_steps: must be >= 1"),
    (["train", "loop.batch_size=abc"], "loop.batch_size: must be an integer"),
    (["train", "lipschitz.robust_norm=l3"], "lipschitz.robust_norm: must be one of"),
    (["train", "logger.backends=[csv,nope]"], "logger.backends: unknown"),
    (["train", "-m", "lipschitz.L=1,-2"], "lipschitz.L: must be > 0"),
    (["train", "seed=="], "overrides"),
    (["eval", "checkpoint=missing.pt"], "checkpoint not found: missing.pt"),
    (["eval", "checkpoint=garbage.pt"],
     "garbage.pt is not a lipctl checkpoint (format 2) (refused: it is not plain data)"),
    (["eval", "checkpoint=garbage.pt", "episodes=0"], "episodes: must be >= 1"),
    (["frobnicate"], "unknown command 'frobnicate'"),
    (["train", "hydra.run.dir=/proc/x"], "hydra.run.dir: cannot create /proc/x"),
    (["train", "-m", "seed=0,1", "hydra.sweep.dir=garbage.pt/x"],
     "hydra.sweep.dir: cannot create"),
    (["fit", "out=/proc/model.pt"], "out: cannot create /proc/model.pt"),
    (["bench", "experiment=cstr_mpc", "out=garbage.pt/results"], "out: cannot create"),
    (["train", "agent=mbpo", "agent.mbpo.real_ratio=1.5"],
     "agent.mbpo.real_ratio: must be in [0, 1], got 1.5"),
    (["train", "agent=mbpo", "agent.mbpo.rollout_schedule=[1,2,3]"],
     "agent.mbpo.rollout_schedule: must be [start_step, end_step, min_length, max_length]"),
    (["train", "agent=mbpo", "env=cstr"], "env.id: model-based agents need a termination rule"),
    (["train", "agent=mbpo", "agent.mbpo.model_lr=abc"], "agent.mbpo.model_lr: must be a number"),
    (["train", "variant=bogus"], "Could not find 'variant/bogus'"),
    (["bench", "experiment=mbpo_vs_ensemble", "experiment.variants=[single,bogus]"],
     "experiment.variants: unknown variant(s) ['bogus']"),
    (["bench", "experiment=mbpo_vs_ensemble", "experiment.overrides=['env.mbpo.real_ratio=2']"],
     "agent.mbpo.real_ratio: must be in [0, 1], got 2"),
]
if not torch.cuda.is_available():
    BAD_INPUTS.append((["train", "device=cuda"], "CUDA is not available"))


# The exit-code contract, by subprocess: a usage error, a composition error, a multirun sweep
# value, an output path and a file read at run time; the rest is the same check in-process.
BY_SUBPROCESS = {"frobnicate", "seed==", "lipschitz.L=1,-2", "hydra.run.dir=/proc/x",
                 "checkpoint=garbage.pt"}


def by_subprocess(args: list[str]) -> bool:
    return args[-1] in BY_SUBPROCESS


@pytest.mark.slow
@pytest.mark.parametrize(("args", "expected"), [case for case in BAD_INPUTS
                                                if by_subprocess(case[0])],
                         ids=lambda a: " ".join(a) if isinstance(a, list) else None)
def test_bad_input_is_one_line_and_exit_code_2(workdir, args, expected):
    (workdir / "garbage.pt").write_bytes(b"not a checkpoint")
    assert_user_error(lipctl_process(*args, cwd=workdir, timeout=120), expected)
    assert not (workdir / "runs").exists(), "work started before the config was checked"


@pytest.mark.parametrize(("args", "expected"), [case for case in BAD_INPUTS
                                                if not by_subprocess(case[0])],
                         ids=lambda a: " ".join(a) if isinstance(a, list) else None)
def test_bad_input_is_refused_before_any_work(workdir, args, expected):
    (workdir / "garbage.pt").write_bytes(b"not a checkpoint")
    assert expected in config_error(*args, cwd=workdir)
    assert not (workdir / "runs").exists(), "work started before the config was checked"


def test_help_lists_commands(workdir):
    result = lipctl("--help", cwd=workdir, check=True)
    assert "train" in result.stdout and "eval" in result.stdout


@pytest.mark.slow
def test_train_cfg_job_prints_resolved_groups(workdir):
    result = lipctl("train", "--cfg", "job", "env=hopper", "lipschitz=spectral_adversarial",
                    cwd=workdir, check=True)
    assert "id: Hopper-v5" in result.stdout
    assert "name: spectral+adversarial" in result.stdout
    assert "lipschitz: ${lipschitz}" in result.stdout
