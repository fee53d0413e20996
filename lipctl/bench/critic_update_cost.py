"""Cost of the Lipschitz-constrained SAC update against the plain one, side by side in one
process: seconds per update of each arm (a critic regulariser, a Lipschitz layer family of the
critic, the Muon optimiser) at each critic width, and its ratio to the plain update of the same
width.

Updates run on a fixed random batch (state 11, action 3: Hopper-sized), one torch thread, after
a burn-in; the arms alternate in rounds, each round starting one arm later than the last, so a
slow phase of a shared machine hits every arm alike. Reports the median, 25th and 75th
percentile over rounds of the mean seconds per update within a round.
Writes out/<output> (results/layer_cost.json); `report` prints its table.
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
from lipctl.lipschitz import FAMILIES
from lipctl.lipschitz.spectral import MODES as SPECTRAL_MODES

LAYER_BOUND = 50.0  # the critic's certified bound in the layer-family arms


def family_arms(network: str) -> dict[str, dict]:
    """One arm per registered layer family (spectral in each of its modes), the critic
    (`network="critic"`) or the actor ("actor") certified at LAYER_BOUND."""
    arms = {}
    option, prefix = {"critic": ("lipschitz", ""), "actor": ("actor_lipschitz", "actor ")}[network]
    for family in FAMILIES:
        for mode in SPECTRAL_MODES if family == "spectral" else (None,):
            name = f"{prefix}layer={family}" + (f" mode={mode}" if mode else "")
            arms[name] = {option: {"layer": family, "L": LAYER_BOUND,
                                   **({"mode": mode} if mode else {})}}
    return arms


# arm -> SAC options: the critic regularisers as conf/lipschitz/{none,spectral_cap,
# spectral_cap_adversarial} with the MBPO benchmark's FGSM and robust sub-batch, the families
# on the critic and on the actor, then Muon (critics' and actor's hidden matrices) alone and
# with the soft cap
ARMS: dict[str, dict] = {
    "plain": {},
    "spectral_cap": {"lipschitz": {"mode": "cap", "layer_cap": 1.0, "free_output": True}},
    "spectral_cap+adversarial": {"lipschitz": {
        "mode": "cap", "layer_cap": 1.0, "free_output": True, "robust_weight": 1.0,
        "robust_eps": 0.1, "robust_steps": 1, "robust_batch": 64}},
    **family_arms("critic"),
    **family_arms("actor"),
    "optimizer=muon": {"optimizer": "muon"},
    "layer=soft_cap optimizer=muon": {"optimizer": "muon",
                                      "lipschitz": {"layer": "soft_cap", "L": LAYER_BOUND}},
}


def batch(generator: torch.Generator) -> Batch:
    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)
    return Batch(rand(BATCH, OBS_DIM), rand(BATCH, ACT_DIM).tanh(), rand(BATCH),
                 rand(BATCH, OBS_DIM), torch.zeros(BATCH))


def measure(widths: list[int], arms: list[str], rounds: int, updates: int, burn_in: int) -> dict:
    """Seconds per update per (width, arm) over `rounds` interleaved rounds of `updates`."""
    torch.set_num_threads(1)
    data = batch(torch.Generator().manual_seed(0))
    agents = {(width, name): SAC(OBS_DIM, ACT_DIM, hidden=(width, width), **ARMS[name])
              for width in widths for name in arms}
    for agent in agents.values():
        for _ in range(burn_in):
            agent.update(data)
    seconds, record = timed_updates({key: partial(agent.update, data)
                                    for key, agent in agents.items()}, rounds, updates,
                                   burn_in)
    rows = []
    for width in widths:
        plain = statistics.median(seconds[(width, "plain")])
        for name in arms:
            median, p25, p75 = quartiles(seconds[(width, name)])
            rows.append({"hidden": [width, width], "arm": name,
                         "median_s": round(median, 7), "p25_s": round(p25, 7),
                         "p75_s": round(p75, 7), "ratio_to_plain": round(median / plain, 3),
                         "rounds": rounds, "options": ARMS[name]})
    return record | {"results": rows}


def arms_of(exp: DictConfig) -> list[str]:
    """The arms to measure: plain first, then the experiment's (every arm where it names none)."""
    chosen = list(ARMS) if exp.arms is None else list(exp.arms)
    return ["plain", *(arm for arm in dict.fromkeys(chosen) if arm != "plain")]


def validate(exp: DictConfig) -> None:
    require_integers(exp, "widths", 1)
    require_number(exp, "rounds", 1, integer=True)
    require_number(exp, "updates", 1, integer=True)
    require_number(exp, "burn_in", 0, integer=True)
    if exp.arms is not None and (unknown := [a for a in exp.arms if a not in ARMS]):
        raise ConfigError("arms", f"unknown arms {unknown}; the arms: {', '.join(ARMS)}")


def run_benchmark(exp: DictConfig, out: Path, work: Path) -> None:
    """Measure every arm at every width and write out/<output>."""
    result = measure(list(exp.widths), arms_of(exp), exp.rounds, exp.updates, exp.burn_in)
    write_json(out / exp.output, result)
    report(exp, out)


def report(exp: DictConfig, out: Path) -> None:
    """Print the table of out/<output>."""
    for row in json.loads((out / exp.output).read_text())["results"]:
        print(f"{row['hidden']} {row['arm']}: {1e3 * row['median_s']:.3f} ms per update "
              f"(p25-p75 {1e3 * row['p25_s']:.3f}-{1e3 * row['p75_s']:.3f}), "
              f"{row['ratio_to_plain']}x plain")
