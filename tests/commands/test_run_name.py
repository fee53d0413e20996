"""Tracking backends name a run by env, variant (or agent and Lipschitz setting) and seed."""

from __future__ import annotations

from pathlib import Path

import pytest

from lipctl.config import check_overrides
from lipctl.logger import Logger, run_name


def name_of(tmp_path: Path, *overrides: str) -> str:
    configs = []
    check_overrides("train", [*overrides, f"hydra.run.dir={tmp_path}/run"], configs.append)
    return run_name(configs[0])


@pytest.mark.slow
def test_run_names_tell_runs_apart(tmp_path):
    runs = [[], ["seed=1"], ["agent=td3"], ["lipschitz=spectral"],
            ["lipschitz=spectral", "lipschitz.L=10"], ["variant=single_spectral"],
            ["env=inverted_pendulum"], ["agent=bc", "lipschitz.L=2"]]
    names = [name_of(tmp_path, *overrides) for overrides in runs]
    assert names[:6] == ["Pendulum-v1/sac-none/seed0", "Pendulum-v1/sac-none/seed1",
                         "Pendulum-v1/td3-none/seed0", "Pendulum-v1/sac-spectral-L50/seed0",
                         "Pendulum-v1/sac-spectral-L10/seed0",
                         "Pendulum-v1/single_spectral-L50/seed0"]
    assert names[6].startswith("InvertedPendulum") and names[7] == "Pendulum-v1/bc-L2-none/seed0"
    assert len(set(names)) == len(names)


@pytest.mark.slow
def test_wandb_offline_run_carries_the_name(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    name = name_of(tmp_path, "seed=4", "lipschitz=spectral")
    logger = Logger(tmp_path / "run", backends=["csv", "wandb"], run_name=name)
    try:
        assert logger.wandb_run.name == name == "Pendulum-v1/sac-spectral-L50/seed4"
    finally:
        logger.close()
