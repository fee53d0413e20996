"""Peak resident memory of ensemble MBPO as the rollouts per retrain grow.

Each setting is one `lipctl train` process (its summary.json's `peak_rss_mb`), at the settings of
the side-by-side run against mbrl-lib 0.2.0 (the experiment's `overrides`): InvertedPendulum-v5,
1000 exploration + 2000 training steps, 10 SAC updates per step with 256x256 nets, 7-member
ensemble with 5 elites, rollouts of length 1, a retrain every 250 steps. Rollouts are branched in
chunks of `rollout_chunk`, so the peak should not grow with the rollouts per retrain.
Writes out/<output> (results/mbpo_memory.json); `report` prints its table.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig

from lipctl.bench.kit import machine_info, require_integers
from lipctl.envs.files import write_json

MBRL_LIB_PEAK_MB = 860  # mbrl-lib 0.2.0 at the same settings and 100000 rollouts, measured here


def validate(exp: DictConfig) -> None:
    require_integers(exp, "rollouts", 1)


def peak_rss(exp: DictConfig, rollouts: int, work: Path) -> dict:
    """Run one training process; its peak RSS and times from summary.json."""
    run_dir = work / f"rollouts{rollouts}"
    shutil.rmtree(run_dir, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "lipctl", "train", *exp.overrides,
                    f"env.mbpo.rollouts_per_retrain={rollouts}", f"hydra.run.dir={run_dir}"],
                   check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"rollouts_per_retrain": rollouts, "peak_rss_mb": round(summary["peak_rss_mb"], 1),
            "wall_seconds": round(summary["wall_seconds"], 1),
            "rollout_seconds": round(summary["rollout_seconds"], 1)}


def run_benchmark(exp: DictConfig, out: Path, work: Path) -> None:
    """One training process per rollouts setting (in work/); write out/<output>."""
    rows = [peak_rss(exp, rollouts, work) for rollouts in exp.rollouts]
    write_json(out / exp.output, {"settings": list(exp.overrides),
                                  "mbrl_lib_peak_rss_mb": MBRL_LIB_PEAK_MB,
                                  "machine": machine_info(), "runs": rows})
    report(exp, out)


def report(exp: DictConfig, out: Path) -> None:
    """Print the table of out/<output>."""
    result = json.loads((out / exp.output).read_text())
    for row in result["runs"]:
        print(f"{row['rollouts_per_retrain']} rollouts per retrain: peak RSS "
              f"{row['peak_rss_mb']} MB (mbrl-lib {result['mbrl_lib_peak_rss_mb']} MB at "
              f"100000), {row['wall_seconds']} s")
