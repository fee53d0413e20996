"""Progress output: a live bar on a terminal, a few whole lines when stderr is a log or pipe."""

from __future__ import annotations

import fcntl
import math
import os
import re
import struct
import subprocess
import sys
import termios
import time

import numpy as np
import pytest

from lipctl.agents.bc import BCPolicy, BCSettings, fit_bc
from lipctl.agents.progress import LOG_INTERVAL, progress_bar
from tests.helpers import TINY_TRAIN


def most_lines(seconds: float) -> int:
    """Lines a piped bar may write in `seconds`: the first, one per interval, the last."""
    return 2 + math.ceil(seconds / LOG_INTERVAL)


def test_piped_bar_writes_a_few_whole_lines_with_the_figures(capsys):
    start = time.monotonic()
    bar = progress_bar(total=20_000, unit="step", dynamic_ncols=True)
    for step in range(1, 20_001):
        bar.update(1)
        bar.set_postfix(eval_return=f"{-step / 100:.1f}", refresh=False)
    bar.close()
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and all(line.strip() for line in lines)
    assert 2 <= len(lines) <= most_lines(time.monotonic() - start)
    assert "20000/20000" in lines[-1] and "eval_return=-200.0" in lines[-1]


def test_piped_behaviour_cloning_keeps_its_last_line(capsys):
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(200, 2)).astype(np.float32)
    start = time.monotonic()
    fit_bc(BCPolicy(2, 1, [-1.0], [1.0], hidden=(8,)), obs, 0.1 * obs[:, :1],
           np.arange(200) // 20, BCSettings(epochs=60, patience=60), progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert 2 <= len(lines) <= most_lines(time.monotonic() - start)
    assert lines[-1].startswith("bc: 100%") and "60/60" in lines[-1] and "mse=" in lines[-1]


def test_disabled_bar_writes_nothing(capsys):
    for _ in progress_bar(range(1000), enabled=False):
        pass
    assert capsys.readouterr().err == ""


def read_all(leader: int) -> str:
    """Everything written to a pseudo-terminal whose other end is closed: one read may return
    only part of it, so read until the end (Linux reports it as EIO) and close it."""
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return b"".join(chunks).decode()


def test_terminal_bar_redraws_in_place(monkeypatch):
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # 80 columns
    with os.fdopen(follower, "w") as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        bar = progress_bar(total=10, unit="step")
        bar.update(10)
        bar.close()
    output = read_all(leader)
    assert bar.mininterval < 1 and output.startswith("\r") and "10/10" in output


@pytest.mark.slow
def test_piped_train_writes_a_bounded_number_of_progress_lines(workdir):
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "lipctl", "train", *TINY_TRAIN, "progress=true",
         f"hydra.run.dir={workdir / 'run'}"],
        cwd=workdir, capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    progress = [line for line in result.stderr.splitlines() if re.search(r"\d+/300 \[", line)]
    assert "\r" not in result.stderr
    assert 2 <= len(progress) <= most_lines(seconds)
    assert "300/300" in progress[-1] and "step/s" in progress[-1]
    assert "eval_return=" in progress[-1]
