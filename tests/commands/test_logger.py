from __future__ import annotations

import csv

import pytest
import torch

from lipctl.logger import Logger


def read(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_csv_rows_accept_tensors_and_new_columns(tmp_path):
    logger = Logger(tmp_path)
    logger.log("train", 10, {"loss": torch.tensor(0.5), "alpha": 0.1, "skip": None})
    logger.log("train", 20, {"loss": torch.tensor(0.25), "q": torch.tensor(3.0)})
    logger.close()
    rows = read(tmp_path / "train.csv")
    assert [r["step"] for r in rows] == ["10", "20"]
    assert float(rows[0]["loss"]) == 0.5 and rows[0]["q"] == "" and "skip" not in rows[0]
    assert float(rows[1]["q"]) == 3.0


def test_resume_drops_rows_after_the_checkpoint(tmp_path):
    logger = Logger(tmp_path)
    for step in (100, 200, 300):
        logger.log("eval", step, {"return": float(step)})
    logger.close()
    resumed = Logger(tmp_path, resume_step=200)
    resumed.log("eval", 300, {"return": 3.0})
    resumed.close()
    rows = read(tmp_path / "eval.csv")
    assert [(r["step"], r["return"]) for r in rows] == [("100", "100.0"), ("200", "200.0"),
                                                        ("300", "3.0")]


def test_tensorboard_backend_writes_events(tmp_path):
    logger = Logger(tmp_path, backends=["csv", "tensorboard"])
    logger.log("eval", 1, {"return": 1.0})
    logger.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_wandb_offline_backend_writes_a_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = Logger(tmp_path, backends=["csv", "wandb"], config={"seed": 0}, run_name="t")
    run_id = logger.wandb_id
    logger.log("eval", 5, {"return": 2.0})
    logger.close()
    runs = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_unknown_backend_is_an_error(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="unknown logger backend"):
        Logger(tmp_path, backends=["csv", "mlflow"])
