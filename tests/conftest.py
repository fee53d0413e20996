from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lipctl import cli

# One torch thread per process: on a 2-core machine more threads oversubscribe and crawl.
torch.set_num_threads(1)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A scratch folder to run the CLI in (its runs/ land there)."""
    return tmp_path


@pytest.fixture
def cli_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
              capsys: pytest.CaptureFixture) -> Callable[..., str]:
    """Run `lipctl ARGS` in-process (lipctl.cli.main) in tmp_path and return its stderr line,
    checking the user-error contract: exit code 2, one line, no traceback, no work started."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # the CLI points argv at the command

    def run(*args: str) -> str:
        threads = torch.get_num_threads()
        try:
            with pytest.raises(SystemExit) as stopped:
                cli.main(list(args))
        finally:
            torch.set_num_threads(threads)
        message = capsys.readouterr().err.strip()
        assert stopped.value.code == 2, message
        assert "\n" not in message and "Traceback" not in message, message
        assert not (tmp_path / "runs").exists(), "work started before the config was checked"
        return message

    return run
