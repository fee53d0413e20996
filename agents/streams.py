"""A learner's own random streams: one torch generator per seed, so that seed k of a stacked run
draws exactly what the separate run of seed k draws."""

from __future__ import annotations

import torch
from torch import Tensor


class SeedStreams:
    """Gaussian noise from one generator per seed.

    `seeds=None` is a single run: `randn(shape)` draws `shape` from its one generator. With
    `seeds=S`, `randn([S, ...])` draws row k from generator k. Each generator is seeded from the
    global torch stream at construction (so `seed_everything` fixes it), and its state is part
    of the learner's checkpoint (`state` / `set_state`, one entry per seed).
    """

    def __init__(self, seeds: int | None, device: torch.device | str = "cpu"):
        if seeds is not None and seeds < 1:
            raise ValueError(f"seeds must be a positive integer or None, got {seeds!r}")
        self.stacked, self.device = seeds is not None, torch.device(device)
        self.generators = [torch.Generator(device=self.device) for _ in range(seeds or 1)]
        for generator in self.generators:
            generator.manual_seed(int(torch.randint(2**62, ())))

    def randn(self, shape: torch.Size | tuple[int, ...]) -> Tensor:
        """Standard normal noise of `shape` (leading dimension: the seeds, when stacked)."""
        if not self.stacked:
            return torch.randn(shape, generator=self.generators[0], device=self.device)
        if shape[0] != len(self.generators):
            raise ValueError(f"stacked noise needs a leading dimension of {len(self.generators)}"
                             f" seeds, got shape {list(shape)}")
        return torch.stack([torch.randn(shape[1:], generator=generator, device=self.device)
                            for generator in self.generators])

    def state(self) -> list[Tensor]:
        """Each generator's state, seed order."""
        return [generator.get_state() for generator in self.generators]

    def set_state(self, states: list[Tensor]) -> None:
        if len(states) != len(self.generators):
            raise ValueError(f"expected {len(self.generators)} generator states, got "
                             f"{len(states)}")
        for generator, state in zip(self.generators, states, strict=True):
            generator.set_state(state)
