"""Off-policy training from a config: env, learner, replay, batch and reward sources and logger
of one seed's run (or of seeds stacked in one process), run through the shared loop, with the
run's summary written at the end."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import gymnasium as gym
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lipctl.agents.buffer import ReplayBuffer
from lipctl.agents.gail import GAILReward, GAILSettings, expert_batch
from lipctl.agents.mbpo import MBPOSettings, MBPOSource
from lipctl.agents.saved import make_agent_env
from lipctl.agents.sources import BatchSource, RewardSource
from lipctl.agents.stacked_trainer import StackedTrainer
from lipctl.agents.termination import termination_fn
from lipctl.agents.trainer import EARLIER_TIMES, Learner, LoopSettings, OffPolicyTrainer
from lipctl.compute import peak_rss_mb, reset_peak_rss, resolve_device, seed_everything
from lipctl.config import instantiate_settings
from lipctl.envs import env_spaces
from lipctl.envs.demos import Demos, load_demos
from lipctl.envs.files import write_json
from lipctl.logger import Logger, run_name
from lipctl.run_folders import CHECKPOINT_NAME, accept_run, stacked_runs

log = logging.getLogger(__name__)


def imitation_demos(cfg: DictConfig) -> Demos:
    """The configured demonstrations, checked against the env (DemosError if they disagree)."""
    return load_demos(cfg.demos, env=cfg.env.id, subsample=cfg.agent.demo_subsample,
                      seed=cfg.seed, episodes=cfg.agent.demo_episodes)


def batch_source(cfg: DictConfig, agent: Learner, buffer: ReplayBuffer, obs_dim: int,
                 act_dim: int) -> BatchSource | None:
    """MBPO's model-rollout source for model-based agents; None (real replay) otherwise."""
    if "dynamics" not in cfg.agent:
        return None
    model = instantiate(cfg.agent.dynamics, obs_dim=obs_dim, act_dim=act_dim)
    settings: MBPOSettings = instantiate_settings(cfg, "agent.mbpo")
    return MBPOSource(buffer, model, termination_fn(cfg.env.id), agent, settings,
                      seed=cfg.seed)


def reward_source(cfg: DictConfig, buffer: ReplayBuffer, env: gym.Env) -> RewardSource | None:
    """The discriminator's rewards for adversarial-imitation agents; None (env rewards) else."""
    if "gail" not in cfg.agent:
        return None
    obs_dim, act_dim, low, high = env_spaces(env)
    settings: GAILSettings = instantiate_settings(cfg, "agent.gail")
    expert = expert_batch(imitation_demos(cfg), low, high, settings.absorbing, buffer.device)
    discriminator = instantiate(cfg.agent.discriminator, obs_dim=obs_dim, act_dim=act_dim)
    return GAILReward(expert, buffer, discriminator, settings, seed=cfg.seed)


def read_summary(path: Path) -> dict:
    """A run's summary.json, its times named as now (an earlier run's sac_update_seconds is
    learner_update_seconds)."""
    earlier = {f"{old}_seconds": f"{new}_seconds" for old, new in EARLIER_TIMES.items()}
    return {earlier.get(key, key): value for key, value in json.loads(path.read_text()).items()}


def write_summary(path: Path, trainer: OffPolicyTrainer) -> None:
    """The run's end state in one JSON file: return, time breakdown, memory, certificates."""
    seconds = {f"{name}_seconds": value for name, value in trainer.time_breakdown().items()}
    peak = peak_rss_mb()
    if path.exists():  # a resumed run: the peak may have been reached before the restart
        peak = max(peak, json.loads(path.read_text()).get("peak_rss_mb", 0.0))
    summary = {"env_steps": trainer.step, "eval_return": trainer.last_eval,
               **seconds, "peak_rss_mb": peak, "certificates": trainer.certificates,
               "critic_state_lipschitz": trainer.state_lipschitz}
    write_json(path, summary)


def build_run(cfg: DictConfig, run_dir: Path, state: dict | None, device: torch.device,
              progress: bool) -> tuple[OffPolicyTrainer, Logger]:
    """Env, agent, buffer, sources and logger of one seed's run in `run_dir`, and its loop,
    resumed from the checkpoint `state` where given."""
    seed_everything(cfg.seed)
    env, eval_env = make_agent_env(cfg, seed=cfg.seed), make_agent_env(cfg)
    obs_dim, act_dim, _, _ = env_spaces(env)
    agent = instantiate(cfg.agent.learner, obs_dim=obs_dim, act_dim=act_dim, device=device)
    settings = LoopSettings(**OmegaConf.to_container(cfg.loop, resolve=True))
    capacity = min(cfg.agent.buffer_size, settings.total_steps)
    buffer = ReplayBuffer(capacity, obs_dim, act_dim, device, seed=cfg.seed)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    logger = Logger(run_dir, cfg.logger.backends, resume_step=state and state["step"],
                    config=resolved, run_name=run_name(cfg),
                    wandb_project=cfg.logger.wandb_project, wandb_mode=cfg.logger.wandb_mode,
                    wandb_id=state and state["extra"].get("wandb_id"))
    trainer = OffPolicyTrainer(agent, env, eval_env, buffer, settings, logger,
                               checkpoint_path=run_dir / CHECKPOINT_NAME, run_config=resolved,
                               batch_source=batch_source(cfg, agent, buffer, obs_dim, act_dim),
                               reward_source=reward_source(cfg, buffer, env),
                               extra_state={"wandb_id": logger.wandb_id}, progress=progress)
    if state is not None:
        trainer.load_state_dict(state)
        log.info("%s: resumed from step %d (%d transitions in the buffer)", run_dir,
                 trainer.step, len(buffer))
    return trainer, logger


def close_run(trainer: OffPolicyTrainer, logger: Logger) -> None:
    logger.close()
    trainer.env.close()
    trainer.eval_env.close()


def train(cfg: DictConfig, run_dir: Path, state: dict | None = None) -> float | None:
    """Build env, agent, buffer and logger from `cfg` and run the loop in `run_dir`, from the
    checkpoint `state` where given."""
    reset_peak_rss()
    torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg.device)
    trainer, logger = build_run(cfg, run_dir, state, device, cfg.progress)
    log.info("%s on %s | device %s, %d torch thread(s) | replay buffer %.1f MB | run dir %s",
             cfg.agent.name, cfg.env.id, device, torch.get_num_threads(),
             trainer.buffer.megabytes, run_dir)
    try:
        final = trainer.train()
    finally:
        close_run(trainer, logger)
    write_summary(run_dir / "summary.json", trainer)
    log.info("finished at step %d: eval return %.1f", trainer.step, final)
    return final


def train_seeds(cfg: DictConfig) -> list[float | None]:
    """The seeds of `cfg.seeds` trained stacked in one process (`StackedTrainer`), each in the
    folder, files and checkpoint its separate run would have."""
    runs = stacked_runs(cfg)
    for config, folder, state in runs:
        folder.mkdir(parents=True, exist_ok=True)
        accept_run(config, folder, resumed=state is not None)
    reset_peak_rss()
    torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg.device)
    built = [build_run(config, folder, state, device, cfg.progress and i == 0)
             for i, (config, folder, state) in enumerate(runs)]
    trainers = [trainer for trainer, _ in built]
    obs_dim, act_dim, _, _ = env_spaces(trainers[0].env)
    stacked = instantiate(cfg.agent.learner, obs_dim=obs_dim, act_dim=act_dim, device=device,
                          seeds=len(runs))
    log.info("%s on %s, seeds %s stacked | device %s, %d torch thread(s) | run dirs %s",
             cfg.agent.name, cfg.env.id, list(cfg.seeds), device, torch.get_num_threads(),
             ", ".join(str(folder) for _, folder, _ in runs))
    try:
        finals = StackedTrainer(stacked, trainers).train()
    finally:
        for trainer, logger in built:
            close_run(trainer, logger)
    for trainer, (_, folder, _) in zip(trainers, runs, strict=True):
        write_summary(folder / "summary.json", trainer)
    log.info("finished: eval returns %s", ", ".join(f"{value:.1f}" for value in finals))
    return finals
