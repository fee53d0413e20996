from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from lipctl.agents.checkpoint import (
    LEARNER_REQUIRED,
    REQUIRED,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)

COMPLETE = {key: {} for key in (*REQUIRED, *LEARNER_REQUIRED)}  # what a reader needs


def test_round_trip_of_data_only_state(tmp_path):
    rng = np.random.default_rng(0)
    state = {**COMPLETE, "step": 7, "weights": torch.arange(3.0), "rng": rng.bit_generator.state,
             "torch_rng": torch.get_rng_state(), "config": {"env": {"id": "Pendulum-v1"}}}
    path = tmp_path / "run" / "checkpoint.pt"
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and loaded["config"] == state["config"]
    torch.testing.assert_close(loaded["weights"], state["weights"])
    restored = np.random.default_rng()
    restored.bit_generator.state = loaded["rng"]
    assert restored.integers(10**9) == rng.integers(10**9)
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]


def test_failed_write_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {**COMPLETE, "step": 1})
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        save_checkpoint(path, {**COMPLETE, "step": 2, "bad": lambda: None})  # not picklable
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


class Payload:
    pass


def test_code_in_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match=r"refused: it is not plain data") as refused:
        load_checkpoint(path)
    assert "weights_only" not in str(refused.value)  # never torch's advice to load it unsafely


def test_a_text_file_and_a_truncated_checkpoint_are_lipctl_errors(tmp_path):
    text = tmp_path / "hostname"
    text.write_text("a-host\n")
    with pytest.raises(CheckpointError, match=r"is not a lipctl checkpoint .*not plain data"):
        load_checkpoint(text)
    whole = tmp_path / "whole.pt"
    torch.save({"format": 1, "weights": torch.zeros(100)}, whole)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(whole.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*corrupt or truncated"):
        load_checkpoint(truncated)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a lipctl checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
