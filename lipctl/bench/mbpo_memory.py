"""Peak resident memory of ensemble MBPO as the rollouts per retrain grow.

Each setting is one `lipctl train` process (its summary.json's `peak_rss_mb`), at the settings of
the side-by-side run against mbrl-lib 0.2.0: InvertedPendulum-v5, 1000 exploration + 2000
training steps, 10 SAC updates per step with 256x256 nets, 7-member ensemble with 5 elites,
rollouts of length 1, a retrain every 250 steps. Rollouts are branched in chunks of
`rollout_chunk`, so the peak should not grow with the rollouts per retrain.
Writes results/mbpo_memory.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from lipctl.bench.kit import machine_info

ROLLOUTS = (25_000, 100_000, 400_000)
SETTINGS = ["env=inverted_pendulum", "variant=ensemble", "env.mbpo.warmup_steps=1000",
            "env.mbpo.total_steps=3000", "env.mbpo.updates_per_step=10",
            "agent.learner.hidden=[256,256]", "env.mbpo.rollout_schedule=[0,0,1,1]",
            "agent.mbpo.model_train_every=250", "loop.eval_every=1000", "loop.eval_episodes=5",
            "progress=false"]
MBRL_LIB_PEAK_MB = 860  # mbrl-lib 0.2.0 at the same settings and 100000 rollouts, measured here


def peak_rss(rollouts: int, work: Path) -> dict:
    """Run one training process; its peak RSS and times from summary.json."""
    run_dir = work / f"rollouts{rollouts}"
    subprocess.run([sys.executable, "-m", "lipctl", "train", *SETTINGS,
                    f"env.mbpo.rollouts_per_retrain={rollouts}", f"hydra.run.dir={run_dir}"],
                   check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"rollouts_per_retrain": rollouts, "peak_rss_mb": round(summary["peak_rss_mb"], 1),
            "wall_seconds": round(summary["wall_seconds"], 1),
            "rollout_seconds": round(summary["rollout_seconds"], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/mbpo_memory.json"))
    parser.add_argument("--rollouts", type=int, nargs="+", default=list(ROLLOUTS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        rows = []
        for rollouts in args.rollouts:
            rows.append(peak_rss(rollouts, Path(work)))
            print(rows[-1], flush=True)
    result = {"settings": SETTINGS, "mbrl_lib_peak_rss_mb": MBRL_LIB_PEAK_MB,
              "machine": machine_info(),
              "runs": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
