"""Running the `lipctl` CLI (in this process, or as a process of its own), and the tiny run
settings tests share."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
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
    """`lipctl ARGS` run in `cwd` by the CLI's own `main`, in this process (no interpreter
    start-up and imports per call), its exit code and output captured as a CompletedProcess; a
    run over `timeout` seconds is stopped with a TimeoutError. What the run changes in the
    process (working folder, argv, environment, logging, warning filters) is put back after it.
    The exit code and stderr of a real process are checked through `lipctl_process`."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with _restored_process_state(), contextlib.chdir(cwd), _deadline(timeout), \
            contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        os.environ.update(WANDB_SILENT="true", HYDRA_FULL_ERROR="0")
        try:
            cli.main(list(args))
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
            if isinstance(exit_.code, str):  # the interpreter would print it on exit
                print(exit_.code, file=sys.stderr)
    result = subprocess.CompletedProcess(["lipctl", *args], code, stdout.getvalue(),
                                         stderr.getvalue())
    if check and result.returncode != 0:
        raise AssertionError(f"lipctl {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


@contextlib.contextmanager
def _restored_process_state() -> Iterator[None]:
    loggers = [logging.getLogger(), *(logger for logger in logging.root.manager.loggerDict.values()
                                      if isinstance(logger, logging.Logger))]
    saved = [(logger, logger.handlers[:], logger.level, logger.propagate, logger.disabled)
             for logger in loggers]
    argv, environ = sys.argv[:], dict(os.environ)
    try:
        with warnings.catch_warnings():
            yield
    finally:
        for logger in logging.root.manager.loggerDict.values():  # loggers the run made
            if isinstance(logger, logging.Logger) and logger not in loggers:
                logger.handlers.clear()
        for logger, handlers, level, propagate, disabled in saved:
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate, logger.disabled = propagate, disabled
        sys.argv = argv
        os.environ.clear()
        os.environ.update(environ)


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    def expire(*_: object) -> None:
        raise TimeoutError(f"lipctl ran over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def lipctl_process(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m lipctl ARGS` in `cwd` as a process of its own and capture its output."""
    env = {**os.environ, "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "lipctl", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


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
