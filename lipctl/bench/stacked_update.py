"""The SAC update alone, S seeds stacked against one: seconds per stacked update per seed, side
by side in one process -> out/<output> (results/stacked_update.json; `report` prints its table).

For each width and seed count S, a SAC learner with `seeds=S` updates on a fixed random
Hopper-sized batch per seed (state 11, action 3, 256 rows), one torch thread, after a burn-in;
the (width, S) pairs alternate in rounds, each round starting one pair later than the last, so
a slow phase of a shared machine hits every pair alike. Reports the median, 25th and 75th
percentile over rounds of the seconds per stacked update, per seed, and the ratio of one seed's
update alone to that (how many times more seed-updates per second stacking gives).
"""

from __future__ import annotations

import json
import statistics
from functools import partial
from pathlib import Path

import torch
from omegaconf import DictConfig

from lipctl.agents.buffer import Batch
from lipctl.agents.sac import SAC
from lipctl.bench.kit import require_integers
from lipctl.bench.timing import ACT_DIM, BATCH, OBS_DIM, quartiles, timed_updates
from lipctl.config import ConfigError, require_number
from lipctl.envs.files import write_json


def batch(seeds: int, generator: torch.Generator) -> Batch:
    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(seeds, BATCH, *shape, generator=generator)
    return Batch(rand(OBS_DIM), rand(ACT_DIM).tanh(), rand(), rand(OBS_DIM),
                 torch.zeros(seeds, BATCH))


def measure(widths: list[int], seed_counts: list[int], rounds: int, updates: int,
            burn_in: int) -> dict:
    """Seconds per stacked update per (width, S) over `rounds` interleaved rounds."""
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    pairs = [(width, count) for width in widths for count in seed_counts]
    learners = {pair: SAC(OBS_DIM, ACT_DIM, hidden=(pair[0], pair[0]), seeds=pair[1])
                for pair in pairs}
    data = {pair: batch(pair[1], generator) for pair in pairs}
    for pair, learner in learners.items():
        for _ in range(burn_in):
            learner.update(data[pair])
    seconds, record = timed_updates({pair: partial(learners[pair].update, data[pair])
                                    for pair in pairs}, rounds, updates, burn_in)
    rows = []
    for width in widths:
        one = statistics.median(seconds[(width, 1)])
        for count in seed_counts:
            median, p25, p75 = quartiles(seconds[(width, count)])
            rows.append({"hidden": [width, width], "seeds": count,
                         "median_s": round(median, 7), "p25_s": round(p25, 7),
                         "p75_s": round(p75, 7), "per_seed_s": round(median / count, 7),
                         "gain_over_one": round(one * count / median, 3)})
    return record | {"results": rows}


def validate(exp: DictConfig) -> None:
    require_integers(exp, "widths", 1)
    if 1 not in require_integers(exp, "seed_counts", 1):
        raise ConfigError("seed_counts", f"must include 1 (the gain's reference), got "
                                         f"{list(exp.seed_counts)}")
    require_number(exp, "rounds", 2, integer=True)
    require_number(exp, "updates", 1, integer=True)
    require_number(exp, "burn_in", 0, integer=True)


def run_benchmark(exp: DictConfig, out: Path, work: Path) -> None:
    """Measure every (width, S) pair and write out/<output>."""
    result = measure(list(exp.widths), list(exp.seed_counts), exp.rounds, exp.updates,
                     exp.burn_in)
    write_json(out / exp.output, result)
    report(exp, out)


def report(exp: DictConfig, out: Path) -> None:
    """Print the table of out/<output>."""
    for row in json.loads((out / exp.output).read_text())["results"]:
        print(f"{row['hidden']} S={row['seeds']}: {row['per_seed_s'] * 1e3:.2f} ms per seed "
              f"(x{row['gain_over_one']} seed-updates per second)", flush=True)
