"""Running the `lipctl` CLI in a subprocess, and the tiny run settings tests share."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from lipctl import cli

# A tiny SAC run: small nets and budgets so learning code paths run in seconds.
TINY_TRAIN = [
    "agent.learner.hidden=[32,32]", "agent.warmup_steps=50", "agent.batch_size=32",
    "loop.total_steps=300", "loop.eval_every=150", "loop.eval_episodes=1",
    "loop.checkpoint_every=100", "loop.log_every=50", "progress=false",
]
# Tiny benchmarks' tables: fewer bootstrap resamples per interval (coarser intervals, faster).
REPS = "bootstrap_reps=200"

def lipctl(*args: str, cwd: Path, timeout: float = 300, check: bool = False
           ) -> subprocess.CompletedProcess:
    """Run `python -m lipctl ARGS` in `cwd` and capture its output."""
    env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    result = subprocess.run([sys.executable, "-m", "lipctl", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"lipctl {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def lipctl_with_user_code(folder: Path, *args: str, timeout: float = 600
                          ) -> subprocess.CompletedProcess:
    """`lipctl ARGS` in `folder` as a user with code of their own there runs it: their modules on
    the PYTHONPATH and their configs (folder/conf) on Hydra's search path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get(
        "PYTHONPATH", "")]), "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    command = [sys.executable, "-m", "lipctl", *args,
               f"hydra.searchpath=[file://{folder / 'conf'}]"]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True,
                          timeout=timeout)


def assert_user_error(result: subprocess.CompletedProcess, expected: str) -> None:
    """A user's mistake: exit code 2 and one stderr line holding `expected`, no traceback."""
    message = result.stderr.strip()
    assert result.returncode == 2, (result.args, result.stdout, message)
    assert "\n" not in message and "Traceback" not in message, message
    assert expected in message, message


def config_error(*args: str, cwd: Path) -> str:
    """The one-line error `lipctl ARGS` (run in `cwd`) stops with before any work, found in this
    process by the check the CLI runs first (`cli.check_config`); AssertionError if it passes.
    The exit code and the stderr line of a user error are tested once, by subprocess, in
    tests/commands/test_cli_errors.py."""
    from lipctl.config import USER_ERRORS

    command, name, rest = cli.resolve(list(args))
    with contextlib.chdir(cwd):
        try:
            cli.check_config(command, name, rest)
        except USER_ERRORS as error:
            message = str(error)
            assert "\n" not in message, message
            return message
    raise AssertionError(f"lipctl {' '.join(args)} passed its config check")
