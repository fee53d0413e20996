"""Cost of the Lipschitz-regularised SAC update against the plain one, side by side in one
process: median seconds per update at each critic width, and each regulariser's ratio to the
plain update of the same width.

Updates run on a fixed random batch (state 11, action 3: Hopper-sized), one torch thread, after
a burn-in; the settings alternate in rounds, so a slow phase of the machine hits them alike.
Writes results/critic_update_cost.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from lipctl.agents.buffer import Batch
from lipctl.agents.sac import SAC

OBS_DIM, ACT_DIM, BATCH = 11, 3, 256
# regulariser -> SAC options, as conf/lipschitz/{none,spectral_cap,spectral_cap_adversarial} with
# the MBPO benchmark's FGSM and robust sub-batch
REGULARISERS: dict[str, dict] = {
    "plain": {},
    "spectral_cap": {"mode": "cap", "layer_cap": 1.0, "free_output": True},
    "spectral_cap+adversarial": {"mode": "cap", "layer_cap": 1.0, "free_output": True,
                                 "robust_weight": 1.0, "robust_eps": 0.1, "robust_steps": 1,
                                 "robust_batch": 64},
}


def batch(generator: torch.Generator) -> Batch:
    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)
    return Batch(rand(BATCH, OBS_DIM), rand(BATCH, ACT_DIM).tanh(), rand(BATCH),
                 rand(BATCH, OBS_DIM), torch.zeros(BATCH))


def measure(widths: list[int], rounds: int, updates: int, burn_in: int) -> dict:
    """Median seconds per update per (width, regulariser) over `rounds` rounds of `updates`."""
    torch.set_num_threads(1)
    data = batch(torch.Generator().manual_seed(0))
    agents = {(width, name): SAC(OBS_DIM, ACT_DIM, hidden=(width, width), lipschitz=options)
              for width in widths for name, options in REGULARISERS.items()}
    for agent in agents.values():
        for _ in range(burn_in):
            agent.update(data)
    seconds: dict[tuple[int, str], list[float]] = {key: [] for key in agents}
    for _ in range(rounds):
        for key, agent in agents.items():
            start = time.perf_counter()
            for _ in range(updates):
                agent.update(data)
            seconds[key].append((time.perf_counter() - start) / updates)
    rows = []
    for width in widths:
        plain = statistics.median(seconds[(width, "plain")])
        for name in REGULARISERS:
            median = statistics.median(seconds[(width, name)])
            rows.append({"hidden": [width, width], "regulariser": name,
                         "median_ms": round(1e3 * median, 3),
                         "ratio_to_plain": round(median / plain, 3),
                         "options": REGULARISERS[name]})
    return {"batch": BATCH, "obs_dim": OBS_DIM, "act_dim": ACT_DIM, "rounds": rounds,
            "updates_per_round": updates, "burn_in": burn_in, "torch_threads": 1,
            "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "results": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--updates", type=int, default=50)
    parser.add_argument("--burn-in", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("results/critic_update_cost.json"))
    args = parser.parse_args(argv)
    if min(args.rounds, args.updates, *args.widths) < 1 or args.burn_in < 0:
        parser.error("--rounds, --updates and --widths must be >= 1, --burn-in >= 0")
    result = measure(args.widths, args.rounds, args.updates, args.burn_in)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for row in result["results"]:
        print(f"{row['hidden']} {row['regulariser']}: {row['median_ms']} ms per update, "
              f"{row['ratio_to_plain']}x plain")


if __name__ == "__main__":
    main()
