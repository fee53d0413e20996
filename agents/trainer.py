"""The shared off-policy actor-critic loop: env interaction, updates, evaluation, checkpoints."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from lipctl.agents.buffer import Batch, ReplayBuffer
from lipctl.agents.checkpoint import save_checkpoint
from lipctl.agents.progress import progress_bar
from lipctl.agents.sources import BatchSource, EnvironmentReward, ReplaySource, RewardSource
from lipctl.control import Controller, returns, run
from lipctl.envs import env_spaces
from lipctl.envs.action_scale import ActionScale
from lipctl.lipschitz import Certificate

PREVIOUS_CHECKPOINT = "checkpoint.previous.pt"  # kept while a stacked run saves its seeds
PROBE_STATES = 256  # buffer rows, evenly spaced at the first measurement, for the state constant
CERTIFICATE_ROWS = 256  # buffer rows the sampled lower bounds start from
EARLIER_TIMES = {"sac_update": "learner_update"}  # names of `seconds` in earlier checkpoints


def certificate_inputs(buffer: ReplayBuffer) -> Tensor:
    """Critic inputs [B, n + m] the sampled lower bounds start from: `CERTIFICATE_ROWS` stored
    transitions evenly spaced over the buffer, so no random stream is drawn from."""
    rows = buffer.spread(CERTIFICATE_ROWS)
    return torch.cat([rows.obs, rows.action], dim=-1)


class Learner(Protocol):
    """An off-policy learner the loop can drive (SAC is the reference one)."""

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray: ...

    def policy(self) -> nn.Module:
        """The deterministic policy: observations [B, n] -> actions in [-1, 1] [B, m]; its
        `mlp` attribute is the un-squashed network whose certified bound bounds it."""
        ...

    def explore(self, obs: Tensor) -> Tensor:
        """Exploratory actions in [-1, 1] for observations [B, n] (model rollouts use them)."""
        ...

    def value(self, obs: Tensor, action: Tensor) -> Tensor:
        """The learner's action value [B] (planners take it as terminal value)."""
        ...

    def update(self, batch: Batch) -> dict[str, Tensor]: ...

    def controller(self, action_low: np.ndarray, action_high: np.ndarray,
                   deterministic: bool = True) -> Controller: ...

    def critic_certificates(self, inputs: Tensor | None = None) -> dict[str, Certificate]: ...

    def critic_state_lipschitz(self, obs: Tensor, action: Tensor) -> dict[str, float]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class MetricsLogger(Protocol):
    """Where the loop sends its numbers (lipctl's logger facade implements it)."""

    def log(self, group: str, step: int, metrics: Mapping[str, float | Tensor]) -> None: ...


@dataclass(frozen=True)
class LoopSettings:
    """Schedule of the off-policy loop, in env steps."""

    total_steps: int
    warmup_steps: int = 1000
    batch_size: int = 256
    updates_per_step: int = 1
    eval_every: int = 1000
    eval_episodes: int = 5
    checkpoint_every: int = 5000
    log_every: int = 250
    seed: int = 0
    target_return: float | None = None  # stop at the first evaluation that reaches it


class OffPolicyTrainer:
    """Runs an off-policy learner against an env through the batch and reward seams."""

    def __init__(
        self,
        agent: Learner,
        env: gym.Env,
        eval_env: gym.Env,
        buffer: ReplayBuffer,
        settings: LoopSettings,
        logger: MetricsLogger,
        checkpoint_path: str | Path | None = None,
        run_config: dict | None = None,
        batch_source: BatchSource | None = None,
        reward_source: RewardSource | None = None,
        extra_state: dict | None = None,
        progress: bool = True,
    ):
        self.agent, self.env, self.eval_env, self.buffer = agent, env, eval_env, buffer
        self.settings, self.logger = settings, logger
        self.checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
        self.run_config = run_config or {}
        self.extra_state = extra_state or {}
        self.batch_source = batch_source or ReplaySource(buffer)
        self.reward_source = reward_source or EnvironmentReward()
        self.progress = progress
        _, self.act_dim, self.action_low, self.action_high = env_spaces(env)
        self.action_scale = ActionScale(self.action_low, self.action_high)
        self.rng = np.random.default_rng(settings.seed)
        self.step = 0
        self.episodes = 0
        self.last_eval: float | None = None
        self.certificates: dict[str, dict] = {}
        self.state_lipschitz: dict[str, float] = {}
        self.measured_step: int | None = None  # the step the two above were measured at
        self.probe: dict[str, Tensor] | None = None  # fixed states for the critics' state constant
        self.seconds = {"wall": 0.0, "learner_update": 0.0}  # cumulative, kept across resumes
        self._wall_origin = time.perf_counter()
        # called before the loop evaluates or saves its agent (a stacked run copies its seed in)
        self.before_agent_use: Callable[[], None] | None = None
        # a stacked run keeps each seed's last checkpoint until every seed has saved its next;
        # `previous_checkpoint` is where save moved it (None: nothing kept)
        self.keep_previous_checkpoint = False
        self.previous_checkpoint: Path | None = None

    def _reset_env(self) -> np.ndarray:
        obs, _ = self.env.reset(seed=int(self.rng.integers(2**31)))
        return obs

    def train(self) -> float | None:
        """Run until `total_steps` env steps, or until an evaluation reaches `target_return`;
        returns the last mean evaluation return."""
        self.start()
        while not self.finished:
            unit_action = self.random_action() if self.warming_up else self.agent.act(self.obs)
            self.env_step(unit_action)
            if not self.warming_up:
                update_start = time.perf_counter()
                for _ in range(self.settings.updates_per_step):
                    self.metrics.update(self.agent.update(self.sample_batch()))
                self.seconds["learner_update"] += time.perf_counter() - update_start
            self.end_step()
        return self.close()

    # The loop in phases, so that a stacked run can drive several of them in lockstep.

    def start(self) -> None:
        """Begin (or resume) the loop: reset the env, start the progress bar and the clocks."""
        self.obs, self.episode_return, self.metrics = self._reset_env(), 0.0, {}
        self.finished = self.step >= self.settings.total_steps
        self._bar = progress_bar(total=self.settings.total_steps, initial=self.step,
                                 enabled=self.progress, unit="step", dynamic_ncols=True)
        self._clock, self._clock_step = time.perf_counter(), self.step
        self._wall_origin = self._clock - self.seconds["wall"]

    @property
    def warming_up(self) -> bool:
        """Whether the next env step still takes random actions (and no update follows)."""
        return self.step < self.settings.warmup_steps

    def random_action(self) -> np.ndarray:
        """A uniform random action in [-1, 1], from the loop's own stream."""
        return self.rng.uniform(-1.0, 1.0, self.act_dim).astype(np.float32)

    def env_step(self, unit_action: np.ndarray) -> None:
        """One env step with an action in [-1, 1]: store it, end the episode where it ends, and
        let the batch and reward sources see the step."""
        next_obs, reward, terminated, truncated, _ = self.env.step(
            self.action_scale.to_env(unit_action))
        self.buffer.add(self.obs, unit_action, reward, next_obs, terminated)
        self.obs, self.step = next_obs, self.step + 1
        self.episode_return += float(reward)
        if terminated or truncated:
            self.episodes += 1
            self.logger.log("episode", self.step, {"return": self.episode_return,
                                                   "episodes": self.episodes})
            self.obs, self.episode_return = self._reset_env(), 0.0
        self.metrics = {**self.metrics, **self.batch_source.on_env_step(self.step),
                        **self.reward_source.on_env_step(self.step)}

    def sample_batch(self) -> Batch:
        """A training batch from the batch source, relabelled by the reward source."""
        return self.reward_source.relabel(self.batch_source.sample(self.settings.batch_size))

    def end_step(self) -> None:
        """Log, evaluate and checkpoint on schedule after an env step and its updates; sets
        `finished` at the last step or once an evaluation reaches `target_return`."""
        s = self.settings
        if self.step % s.log_every == 0:
            now = time.perf_counter()
            self._clock_wall()
            self.metrics["steps_per_s"] = (self.step - self._clock_step) / (now - self._clock)
            self.metrics.update({f"{name}_seconds_total": value
                                 for name, value in self.time_breakdown().items()})
            self._clock, self._clock_step = now, self.step
            self.logger.log("train", self.step, self.metrics)
            self.metrics = {}
        reached = False
        if self.step % s.eval_every == 0 or self.step == s.total_steps:
            self.evaluate()
            self._bar.set_postfix(eval_return=f"{self.last_eval:.1f}", refresh=False)
            reached = s.target_return is not None and self.last_eval >= s.target_return
        if self.checkpoint_path and (reached or self.step % s.checkpoint_every == 0
                                     or self.step == s.total_steps):
            self._clock_wall()
            self.save(self.checkpoint_path)
        self._bar.update(1)
        self.finished = reached or self.step >= s.total_steps

    def close(self) -> float | None:
        """End the loop: bring the wall clock up to date and close the progress bar; returns
        the last mean evaluation return."""
        self._clock_wall()
        self._bar.close()
        return self.last_eval

    def _clock_wall(self) -> None:
        """Bring the cumulative wall time (which resumed runs carry on from) up to now."""
        self.seconds["wall"] = time.perf_counter() - self._wall_origin

    def time_breakdown(self) -> dict[str, float]:
        """Cumulative seconds by kind of work: wall, learner updates and the sources' own work."""
        return {**self.seconds, **self.batch_source.seconds, **self.reward_source.seconds}

    def evaluate(self) -> float:
        """Deterministic episodes through the closed-loop runner; logs returns and certificates."""
        if self.before_agent_use is not None:
            self.before_agent_use()
        controller = self.agent.controller(self.action_low, self.action_high, deterministic=True)
        episode_returns = returns(run(controller, self.eval_env, self.settings.eval_episodes,
                                      seed=self.settings.seed + 10_000))
        self.last_eval = float(episode_returns.mean())
        lipschitz = {}
        for name, c in self.measure_lipschitz().items():
            lipschitz[f"{name}_upper"] = c.upper
            lipschitz[f"{name}_lower"] = c.lower
        lipschitz |= {f"{name}_state_lipschitz": value
                      for name, value in self.state_lipschitz.items()}
        self.logger.log("eval", self.step, {"return_mean": self.last_eval,
                                            "return_std": float(episode_returns.std()),
                                            **lipschitz})
        return self.last_eval

    def measure_lipschitz(self) -> dict[str, Certificate]:
        """Certificates of the critics and of the reward source's networks, and the critics'
        state constant on the probe, for the weights as they are now; kept in `certificates`,
        `state_lipschitz` and `measured_step`. The critics' figures draw from none of the run's
        random streams, so measuring does not change the run."""
        inputs = certificate_inputs(self.buffer)
        certificates = {**self.agent.critic_certificates(inputs),
                        **self.reward_source.certificates(inputs)}
        self.certificates = {name: c.to_dict() for name, c in certificates.items()}
        if self.probe is None:  # chosen at the first measurement, kept for the whole run
            spread = self.buffer.spread(PROBE_STATES)
            self.probe = {"obs": spread.obs, "action": spread.action}
        self.state_lipschitz = self.agent.critic_state_lipschitz(self.probe["obs"],
                                                                 self.probe["action"])
        self.measured_step = self.step
        return certificates

    def state_dict(self) -> dict:
        """Everything a resume needs, with the Lipschitz figures last measured (`save` measures
        them for the weights it writes)."""
        return {
            "step": self.step,
            "episodes": self.episodes,
            "last_eval": self.last_eval,
            "agent": self.agent.state_dict(),
            "buffer": self.buffer.state_dict(),
            "batch_source": self.batch_source.state_dict(),
            "reward_source": self.reward_source.state_dict(),
            "certificates": self.certificates,
            "state_lipschitz": self.state_lipschitz,
            "measured_step": self.measured_step,
            "probe": self.probe,
            "seconds": self.seconds,
            "rng": {"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state()},
            "config": self.run_config,
            "extra": self.extra_state,
        }

    def load_state_dict(self, state: dict) -> None:
        self.step, self.episodes = state["step"], state["episodes"]
        self.last_eval = state["last_eval"]
        self.agent.load_state_dict(state["agent"])
        self.buffer.load_state_dict(state["buffer"])
        self.batch_source.load_state_dict(state["batch_source"])
        self.reward_source.load_state_dict(state["reward_source"])
        self.certificates = state["certificates"]
        self.state_lipschitz = state["state_lipschitz"]
        self.measured_step = state.get("measured_step")  # None: an older file, measure anew
        probe = state["probe"]
        self.probe = None if probe is None else {k: v.to(self.buffer.device)
                                                 for k, v in probe.items()}
        self.seconds = {EARLIER_TIMES.get(name, name): value
                        for name, value in state["seconds"].items()}
        self.rng.bit_generator.state = state["rng"]["numpy"]
        torch.set_rng_state(state["rng"]["torch"])

    def save(self, path: str | Path) -> None:
        """A checkpoint whose Lipschitz figures belong to exactly the weights it holds
        (measured now unless they were measured at this step)."""
        if self.before_agent_use is not None:
            self.before_agent_use()
        if self.measured_step != self.step:
            self.measure_lipschitz()
        path = Path(path)
        if self.keep_previous_checkpoint and path.exists():
            self.previous_checkpoint = path.with_name(PREVIOUS_CHECKPOINT)
            os.replace(path, self.previous_checkpoint)
        save_checkpoint(path, self.state_dict())
