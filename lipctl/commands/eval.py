"""lipctl eval: deterministic episodes of a trained policy, built from its checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lipctl.agents.checkpoint import CheckpointError, load_checkpoint
from lipctl.config import require_number, user_errors
from lipctl.control import returns, run
from lipctl.control.policy import ModuleController
from lipctl.envs import env_spaces
from lipctl.networks import bc_policy, is_behaviour_cloning, learner_config
from lipctl.runtime import make_agent_env, resolve_device


def validate(cfg: DictConfig) -> None:
    if not Path(cfg.checkpoint).is_file():
        raise CheckpointError(f"checkpoint not found: {cfg.checkpoint}")
    require_number(cfg, "episodes", 1, integer=True)
    require_number(cfg, "seed", 0, integer=True)
    require_number(cfg, "torch_threads", 1, integer=True)
    if cfg.device != "auto":
        resolve_device(cfg.device)


def evaluate(cfg: DictConfig) -> tuple[float, float]:
    """Mean and standard deviation of the episode return; prints them with the certificates."""
    torch.set_num_threads(cfg.torch_threads)
    device = resolve_device(cfg.device)
    state = load_checkpoint(cfg.checkpoint, map_location=device)
    run_cfg = OmegaConf.create(state["config"])
    env = make_agent_env(run_cfg)
    certificates = state["certificates"]  # measured for the weights in the file
    if is_behaviour_cloning(run_cfg):  # a small MLP: acts on the CPU
        controller = ModuleController(bc_policy(run_cfg, env, state["policy"]))
    else:
        obs_dim, act_dim, low, high = env_spaces(env)
        agent = instantiate(learner_config(run_cfg.agent.learner), obs_dim=obs_dim, act_dim=act_dim,
                            device=device)
        agent.load_state_dict(state["agent"])
        controller = agent.controller(low, high)
        if state.get("measured_step") != state["step"]:
            # written by an older lipctl, whose figures are an earlier evaluation's: the
            # critics' certificates recomputed for these weights
            certificates = {name: c.to_dict()
                            for name, c in agent.critic_certificates().items()}
    episode_returns = returns(run(controller, env, cfg.episodes, seed=cfg.seed))
    env.close()
    mean, std = float(episode_returns.mean()), float(episode_returns.std())
    step = f" | step {state['step']}" if "step" in state else ""  # behaviour cloning has none
    print(f"{run_cfg.env.id}{step} | {cfg.episodes} episodes | return {mean:.1f} +- {std:.1f}")
    for name, certificate in certificates.items():
        lower = certificate["lower"]
        print(f"{name}: Lipschitz upper {certificate['upper']:.4g} ({certificate['method']})"
              + ("" if lower is None else f", sampled lower {lower:.4g}"))
    return mean, std


def main(cfg: DictConfig) -> tuple[float, float]:
    with user_errors("lipctl eval"):
        validate(cfg)
        return evaluate(cfg)
