"""Env steps per second of our SAC loop against stable-baselines3 SAC, same settings.

Each measurement runs in its own subprocess (one torch thread unless told otherwise), the two
implementations alternate, and the median over repeats is reported. Steps are counted after
the warm-up phase, so every measured step is one env step plus one gradient update.
Writes out/<output> (results/sac_throughput.json); `report` prints the ratio.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from omegaconf import DictConfig

from lipctl.bench.kit import machine_info
from lipctl.config import ConfigError, require_number
from lipctl.envs.files import write_json
from lipctl.extras import require_extra


@dataclass(frozen=True)
class Setting:
    env_id: str = "Hopper-v5"
    hidden: int = 256
    batch_size: int = 256
    warmup: int = 1000
    steps: int = 3000
    threads: int = 1
    device: str = "cpu"


class _WindowTimer:
    """Logger stand-in that keeps the loop's steps/s after warm-up."""

    def __init__(self, warmup: int):
        self.warmup, self.seconds, self.steps, self.last = warmup, 0.0, 0, warmup

    def log(self, group, step, metrics):
        if group == "train" and step > self.warmup:
            self.seconds += (step - self.last) / float(metrics["steps_per_s"])
            self.steps += step - self.last
        if group == "train":
            self.last = step


def measure_ours(s: Setting) -> float:
    from lipctl.agents.buffer import ReplayBuffer
    from lipctl.agents.sac import SAC
    from lipctl.agents.trainer import LoopSettings, OffPolicyTrainer
    from lipctl.envs import env_spaces, make_env

    env = make_env(s.env_id, seed=0)
    obs_dim, act_dim, _, _ = env_spaces(env)
    agent = SAC(obs_dim, act_dim, device=s.device, hidden=(s.hidden, s.hidden))
    total = s.warmup + s.steps
    buffer = ReplayBuffer(total, obs_dim, act_dim, s.device)
    window = min(s.warmup, 500)
    settings = LoopSettings(total_steps=total, warmup_steps=s.warmup, batch_size=s.batch_size,
                            eval_every=10 * total, eval_episodes=1, log_every=window)
    timer = _WindowTimer(s.warmup)
    trainer = OffPolicyTrainer(agent, env, make_env(s.env_id), buffer, settings, timer,
                               progress=False)
    trainer.train()  # the final evaluation runs after the last timed window
    return timer.steps / timer.seconds


def measure_sb3(s: Setting) -> float:
    from stable_baselines3 import SAC as SB3SAC
    from stable_baselines3.common.callbacks import BaseCallback

    class Clock(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps == s.warmup:
                self.start = time.perf_counter()
            return True

    clock = Clock()
    model = SB3SAC("MlpPolicy", s.env_id, learning_starts=s.warmup, batch_size=s.batch_size,
                   buffer_size=s.warmup + s.steps, train_freq=1, gradient_steps=1,
                   policy_kwargs={"net_arch": [s.hidden, s.hidden]}, device=s.device, seed=0)
    model.learn(total_timesteps=s.warmup + s.steps, callback=clock)
    return s.steps / (time.perf_counter() - clock.start)


WORKERS = {"ours": measure_ours, "sb3": measure_sb3}


def _worker(name: str, s: Setting) -> float:
    """Run one measurement in a fresh interpreter so neither implementation warms the other."""
    command = [sys.executable, "-m", "lipctl.bench.sac_throughput", name, json.dumps(s.__dict__)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def compare(s: Setting, repeats: int = 3) -> dict:
    """Alternate ours and SB3 `repeats` times each; medians, ratio and every run."""
    runs: dict[str, list[float]] = {name: [] for name in WORKERS}
    for repeat in range(repeats):
        order = list(WORKERS) if repeat % 2 == 0 else list(reversed(WORKERS))
        for name in order:
            runs[name].append(_worker(name, s))
            print(f"repeat {repeat + 1}/{repeats} {name}: {runs[name][-1]:.1f} steps/s",
                  flush=True)
    ours, sb3 = statistics.median(runs["ours"]), statistics.median(runs["sb3"])
    import stable_baselines3

    return {
        "ours_steps_per_s": round(ours, 2),
        "sb3_steps_per_s": round(sb3, 2),
        "ratio": round(ours / sb3, 3),
        "device": s.device,
        "torch_threads": s.threads,
        "env": s.env_id,
        "hidden": [s.hidden, s.hidden],
        "batch_size": s.batch_size,
        "updates_per_step": 1,
        "warmup_steps": s.warmup,
        "measured_steps": s.steps,
        "repeats": repeats,
        "runs": runs,
        "machine": machine_info(stable_baselines3=stable_baselines3.__version__),
    }


def validate(exp: DictConfig) -> None:
    require_extra("sb3", "the SAC throughput benchmark")
    for key in ("steps", "warmup", "repeats", "threads", "hidden", "batch_size"):
        require_number(exp, key, 1, integer=True)
    try:
        torch.device(exp.device)
    except (RuntimeError, TypeError):
        raise ConfigError("device", f"must name a torch device, got {exp.device!r}") from None


def run_benchmark(exp: DictConfig, out: Path, work: Path) -> None:
    """Alternate ours and SB3 `repeats` times in worker processes; write out/<output>."""
    setting = Setting(**{f.name: exp[f.name] for f in fields(Setting)})
    write_json(out / exp.output, compare(setting, exp.repeats))
    report(exp, out)


def report(exp: DictConfig, out: Path) -> None:
    """Print the medians and ratio of out/<output>."""
    result = json.loads((out / exp.output).read_text())
    print(f"ours {result['ours_steps_per_s']} vs SB3 {result['sb3_steps_per_s']} steps/s: "
          f"ratio {result['ratio']}")


if __name__ == "__main__":  # a worker: python -m lipctl.bench.sac_throughput NAME SETTING_JSON
    worker, setting = WORKERS[sys.argv[1]], Setting(**json.loads(sys.argv[2]))
    torch.set_num_threads(setting.threads)
    print(worker(setting))
