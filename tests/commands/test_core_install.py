"""A fresh virtualenv with lipctl's core only (no extras): training works, and the commands that
need an extra say which one in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import TINY_TRAIN, assert_user_error

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], cwd: Path, timeout: float = 1200) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "HYDRA_FULL_ERROR": "0"}
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory) -> Path:
    """bin/ of a new virtualenv holding lipctl (a regular install, not editable) and its core
    dependencies; torch is the CPU build already installed here, pinned to the same version."""
    import torch

    venv = tmp_path_factory.mktemp("core") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    for step in ([f"torch=={torch.__version__.split('+')[0]}"], [str(ROOT)]):
        result = _run(pip + step, cwd=venv.parent)
        assert result.returncode == 0, result.stderr[-3000:]
    return venv / "bin"


@pytest.mark.slow
def test_core_install_trains_and_names_the_missing_extras(core_venv, tmp_path):
    python = str(core_venv / "python")
    listed = _run([python, "-m", "pip", "list", "--format=freeze"], cwd=tmp_path).stdout.lower()
    for extra_package in ("asyncua", "onnx", "onnxruntime", "wandb", "tensorboard",
                          "stable-baselines3", "hydra-submitit-launcher"):
        assert f"\n{extra_package}==" not in f"\n{listed}", extra_package
    lipctl = str(core_venv / "lipctl")
    trained = _run([lipctl, "train", *TINY_TRAIN], cwd=tmp_path, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (tmp_path / "runs" / "Pendulum-v1" / "sac-none" / "seed0" / "checkpoint.pt").is_file()
    for command, extra in (("deploy", "deploy"), ("export", "export")):
        result = _run([lipctl, command], cwd=tmp_path)
        assert_user_error(result, f"lipctl {command} needs lipctl[{extra}]")
        assert f"pip install 'lipctl[{extra}]'" in result.stderr
    for override, extra in (("logger=wandb", "wandb"), ("logger=tensorboard", "tensorboard"),
                            ("hydra/launcher=slurm", "slurm")):
        assert_user_error(_run([lipctl, "train", override], cwd=tmp_path),
                          f"needs lipctl[{extra}]")
