"""Several seeds of the off-policy loop in one process: one stacked learner acts and updates for
all of them, each seed's loop keeps everything else a separate run of it has."""

from __future__ import annotations

import time
from functools import partial

import numpy as np
import torch

from lipctl.agents.buffer import Batch
from lipctl.agents.critic_learner import CriticLearner
from lipctl.agents.trainer import OffPolicyTrainer

LOCKSTEP = ("total_steps", "warmup_steps", "batch_size", "updates_per_step")


class StackedTrainer:
    """Drives one `OffPolicyTrainer` per seed in lockstep.

    Each seed's trainer keeps what a separate run of that seed has: its env, replay buffer,
    batch and reward sources, loop random stream, logger, evaluations and checkpoint, and a
    learner of its own that serves evaluations and checkpoints (before either, it receives the
    seed's slice of `stacked`, `seed_state_dict`). After warm-up the env actions of all seeds
    come from one call of `stacked`, and every update is one stacked update on the seeds'
    batches, each drawn from its own source. A seed that stops early (its target return)
    stops stepping; the others go on. Each seed's update time is the stacked update's / S.
    While the seeds save a step, each keeps its previous checkpoint, so a kill between two
    seeds' saves leaves every seed one at a common step.
    """

    def __init__(self, stacked: CriticLearner, trainers: list[OffPolicyTrainer]):
        if stacked.seeds != len(trainers):
            raise ValueError(f"a learner of {stacked.seeds} stacked seeds needs as many "
                             f"trainers, got {len(trainers)}")
        for key in LOCKSTEP:
            values = {getattr(trainer.settings, key) for trainer in trainers}
            if len(values) > 1:
                raise ValueError(f"stacked seeds run in lockstep: loop.{key} differs "
                                 f"({sorted(values)})")
        if len({trainer.step for trainer in trainers}) > 1:
            raise ValueError("stacked seeds resume together: their checkpoints are at steps "
                             f"{[trainer.step for trainer in trainers]}")
        self.stacked, self.trainers = stacked, trainers
        self._copied_at: list[int | None] = [None] * len(trainers)
        for k, trainer in enumerate(trainers):
            trainer.before_agent_use = partial(self._copy_seed, k)
            trainer.keep_previous_checkpoint = True

    def _copy_seed(self, k: int) -> None:
        """Seed k's slice into its trainer's learner, once per step (an evaluation and a
        checkpoint at the same step share it: nothing updates between them)."""
        trainer = self.trainers[k]
        if self._copied_at[k] != trainer.step:
            trainer.agent.load_state_dict(self.stacked.seed_state_dict(k))
            self._copied_at[k] = trainer.step

    def load_seeds(self) -> None:
        """Stack the seeds' learners' states (new, or as their trainers resumed them)."""
        self.stacked.load_seed_state_dicts([trainer.agent.state_dict()
                                            for trainer in self.trainers])

    def train(self) -> list[float | None]:
        """Run every seed to its end; returns each seed's last mean evaluation return."""
        self.load_seeds()
        for trainer in self.trainers:
            trainer.start()
        seeds = len(self.trainers)
        while not all(trainer.finished for trainer in self.trainers):
            active = [trainer for trainer in self.trainers if not trainer.finished]
            if active[0].warming_up:
                actions = [trainer.random_action() for trainer in self.trainers]
            else:
                actions = self.stacked.act(np.stack([trainer.obs for trainer in self.trainers]))
            for trainer, action in zip(self.trainers, actions, strict=True):
                if not trainer.finished:
                    trainer.env_step(action)
            if not active[0].warming_up:
                started = time.perf_counter()
                for _ in range(active[0].settings.updates_per_step):
                    metrics = self.stacked.update(self._batch())
                    for k, trainer in enumerate(self.trainers):
                        trainer.metrics.update({name: value[k]
                                                for name, value in metrics.items()})
                for trainer in active:
                    trainer.seconds["learner_update"] += (time.perf_counter() - started) / seeds
            for trainer in active:
                trainer.end_step()
            self._drop_previous_checkpoints()
        return [trainer.close() for trainer in self.trainers]

    def _drop_previous_checkpoints(self) -> None:
        """Once every seed has saved this step, the checkpoints before it can go: until then a
        kill leaves each seed a checkpoint at a step all of them have (see `align_checkpoints`
        in the train command)."""
        for trainer in self.trainers:
            if trainer.previous_checkpoint is not None:  # set only on a step that saved
                trainer.previous_checkpoint.unlink(missing_ok=True)
                trainer.previous_checkpoint = None

    def _batch(self) -> Batch:
        """Every seed's batch from its own source, stacked [S, B, ...]."""
        batches = [trainer.sample_batch() for trainer in self.trainers]
        return Batch(*(torch.stack(fields) for fields in zip(*batches, strict=True)))
