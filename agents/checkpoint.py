"""Atomic checkpoint files that load as data only (torch.load with weights_only=True)."""

from __future__ import annotations

from pathlib import Path

import torch

from lipctl.envs.files import atomic_write, load_data


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or not a lipctl checkpoint."""


FORMAT_VERSION = 2  # 2: SAC keeps a plain target critic, its state scale and the eval probe
# What every reader of a checkpoint needs: the run's config, its certificates and its weights (an
# off-policy learner's `agent`, with the loop state a resume or a planner reads, or behaviour
# cloning's `policy`)
CHECKPOINT_NAME = "checkpoint.pt"  # a run's checkpoint in its folder
REQUIRED = ("config", "certificates")
LEARNER_REQUIRED = ("agent", "step", "episodes", "buffer", "batch_source", "reward_source", "rng")


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write `state` to `path` atomically: a temp file in the same folder, fsync, rename."""
    atomic_write(path, lambda f: torch.save({"format": FORMAT_VERSION, **state}, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by `save_checkpoint`, never executing code from it; one without
    what its readers need is a CheckpointError naming what is missing."""
    state = load_data(path, (FORMAT_VERSION,), CheckpointError, "checkpoint",
                      f"a lipctl checkpoint (format {FORMAT_VERSION})", map_location)
    required = (*REQUIRED, *(LEARNER_REQUIRED if "policy" not in state else ("policy",)))
    missing = [key for key in required if key not in state]
    if missing:
        raise CheckpointError(f"{path} is an incomplete checkpoint: no {', '.join(missing)}")
    if not isinstance(state["config"], dict):
        raise CheckpointError(f"{path} is an incomplete checkpoint: its config is not a mapping")
    return state
