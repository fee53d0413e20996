"""lipctl train: an off-policy agent through the shared actor-critic loop."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lipctl.agents.critic_learner import EPS_UNITS
from lipctl.agents.saved import is_behaviour_cloning
from lipctl.agents.termination import TERMINATIONS
from lipctl.commands import behaviour_cloning
from lipctl.compute import resolve_device
from lipctl.config import (
    ConfigError,
    instantiate_settings,
    require_choice,
    require_number,
    user_errors,
)
from lipctl.envs import make_env
from lipctl.extras import EXTRAS, require_extra
from lipctl.lipschitz import FAMILIES, TIERS, LipschitzSpec
from lipctl.lipschitz.layers import GROUPSORT_SIZE
from lipctl.lipschitz.muon import OPTIMIZERS
from lipctl.logger import BACKENDS
from lipctl.run_folders import accept_run, previous_state
from lipctl.training import imitation_demos, train, train_seeds


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for any impossible value, before anything is built."""
    make_env(cfg.env.id).close()  # UnknownEnvError: unknown id, or no continuous actions
    require_number(cfg, "seed", 0, integer=True)
    require_number(cfg, "torch_threads", 1, integer=True)
    require_number(cfg, "lipschitz.L", 0, allow_none=True, exclusive=True)
    require_choice(cfg, "lipschitz.mode", ("normalize", "cap"))
    require_choice(cfg, "lipschitz.certificate_tier", TIERS)
    unknown = set(cfg.logger.backends) - set(BACKENDS)
    if unknown:
        raise ConfigError("logger.backends", f"unknown {sorted(unknown)}; choose from {BACKENDS}")
    for backend in set(cfg.logger.backends) & set(EXTRAS):
        require_extra(backend, f"logger backend '{backend}'")
    if cfg.device != "auto":
        resolve_device(cfg.device)
    validate_lipschitz(cfg)
    if cfg.seeds is not None:
        validate_seeds(cfg)
    if is_behaviour_cloning(cfg):
        behaviour_cloning.validate(cfg)
    else:
        validate_off_policy(cfg)


def validate_seeds(cfg: DictConfig) -> None:
    """A seeds list: distinct non-negative integers, for a learner that stacks (SAC, TD3 with
    env rewards and replay, without the robust loss)."""
    seeds = OmegaConf.to_container(cfg, resolve=True)["seeds"]
    if (not isinstance(seeds, list) or not seeds
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)
            or len(set(seeds)) < len(seeds)):
        raise ConfigError("seeds", f"must be a list of distinct non-negative integers, e.g. "
                                   f"[0,1,2], got {seeds!r}")
    reason = stacking_refusal(cfg)
    if reason is not None:
        raise ConfigError("seeds", f"{reason}: run the seeds separately (e.g. seed=0,1,2 "
                                   "--multirun)")


def stacking_refusal(cfg: DictConfig) -> str | None:
    """Why the run of `cfg` cannot be stacked with other seeds (None: it can)."""
    kind = ("behaviour cloning" if is_behaviour_cloning(cfg) else "MBPO"
            if "dynamics" in cfg.agent else "GAIL" if "gail" in cfg.agent else None)
    if kind is not None:
        return f"{kind} runs one seed per process"
    if cfg.lipschitz.robust_weight > 0:
        return "the robust loss is not available with stacked seeds"
    return None


def validate_off_policy(cfg: DictConfig) -> None:
    """The loop schedule, buffer and critic regularisers of an off-policy agent."""
    if "dynamics" in cfg.agent:
        validate_model_based(cfg)
    if "gail" in cfg.agent:
        validate_imitation(cfg)
    for key in ("total_steps", "batch_size", "updates_per_step", "eval_every", "eval_episodes",
                "checkpoint_every", "log_every"):
        require_number(cfg, f"loop.{key}", 1, integer=True)
    require_number(cfg, "loop.warmup_steps", 0, integer=True)
    require_number(cfg, "loop.target_return", allow_none=True)
    require_number(cfg, "agent.buffer_size", 1, integer=True)
    validate_learner(cfg)
    require_number(cfg, "lipschitz.robust_weight", 0)
    require_number(cfg, "lipschitz.robust_eps", 0)
    require_number(cfg, "lipschitz.robust_steps", 1, integer=True)
    require_choice(cfg, "lipschitz.robust_norm", ("l2", "linf"))
    require_choice(cfg, "lipschitz.robust_eps_units", EPS_UNITS)
    require_number(cfg, "lipschitz.robust_batch", 1, integer=True, allow_none=True)
    require_number(cfg, "lipschitz.layer_cap", 0, allow_none=True, exclusive=True)


def validate_lipschitz(cfg: DictConfig, key: str = "lipschitz") -> None:
    """The node at `key` (the `lipschitz` group by default) as a LipschitzSpec: its family,
    bound and options agree."""
    value = OmegaConf.select(cfg, key)
    if not OmegaConf.is_dict(value):
        raise ConfigError(key, f"must be a mapping of lipschitz settings, got {value!r}")
    node = OmegaConf.to_container(value, resolve=True)
    try:
        spec = LipschitzSpec.of(node)
    except (TypeError, ValueError) as error:
        field, _, message = str(error).partition(": ")
        if field in node:
            raise ConfigError(f"{key}.{field}", message) from None
        raise ConfigError(key, str(error)) from None
    try:  # the family's own options (and values such as mode) show only when it is built
        spec.mlp(GROUPSORT_SIZE, 1, [GROUPSORT_SIZE])
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{key}.options", str(error).splitlines()[0]) from None


def validate_learner(cfg: DictConfig) -> None:
    """The SAC or TD3 learner's network widths, optimiser, learning rates, discount, target
    rate and actor's Lipschitz spec."""
    learner = cfg.agent.learner
    require_widths(cfg, "agent.learner.hidden")
    for key in ("actor_lr", "critic_lr", "alpha_lr", "init_alpha"):
        if key in learner:
            require_number(cfg, f"agent.learner.{key}", 0, exclusive=True)
    require_number(cfg, "agent.learner.gamma", 0)
    if learner.gamma >= 1:
        raise ConfigError("agent.learner.gamma", f"must be < 1, got {learner.gamma!r}")
    require_number(cfg, "agent.learner.tau", 0, exclusive=True)
    if learner.tau > 1:
        raise ConfigError("agent.learner.tau", f"must be <= 1, got {learner.tau!r}")
    if "optimizer" in learner:
        require_choice(cfg, "agent.learner.optimizer", OPTIMIZERS)
        require_number(cfg, "agent.learner.muon_lr", 0, exclusive=True)
    if "target_entropy" in learner:  # SAC
        require_number(cfg, "agent.learner.target_entropy", allow_none=True)
    if "policy_delay" in learner:  # TD3
        require_number(cfg, "agent.learner.policy_delay", 1, integer=True)
        for key in ("exploration_noise", "target_noise", "noise_clip"):
            require_number(cfg, f"agent.learner.{key}", 0)
    if learner.get("actor_lipschitz") is not None:
        validate_lipschitz(cfg, "agent.learner.actor_lipschitz")


def require_widths(cfg: DictConfig, key: str) -> None:
    """cfg[key] is a non-empty list of positive integer layer widths."""
    value = OmegaConf.select(cfg, key, throw_on_missing=False)
    widths = OmegaConf.to_container(value) if OmegaConf.is_list(value) else value
    if not (isinstance(widths, list) and widths and all(
            isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths)):
        raise ConfigError(key, f"must be a non-empty list of positive layer widths such as "
                               f"[256, 256], got {widths!r}")


def validate_model_based(cfg: DictConfig) -> None:
    """The dynamics model and MBPO schedule of a model-based agent."""
    if cfg.env.id not in TERMINATIONS:
        raise ConfigError("env.id", f"model-based agents need a termination rule; '{cfg.env.id}' "
                                    f"has none (known: {', '.join(TERMINATIONS)})")
    if "mbpo" not in cfg.env:
        raise ConfigError("env.mbpo", f"the env config of '{cfg.env.id}' has no mbpo section "
                                      "(total_steps, warmup_steps, updates_per_step, ...)")
    require_widths(cfg, "agent.dynamics.hidden")
    require_number(cfg, "agent.dynamics.ensemble_size", 1, integer=True)
    require_number(cfg, "agent.dynamics.elites", 1, integer=True)
    if cfg.agent.dynamics.elites > cfg.agent.dynamics.ensemble_size:
        raise ConfigError("agent.dynamics.elites", "must be <= agent.dynamics.ensemble_size, got "
                          f"{cfg.agent.dynamics.elites} > {cfg.agent.dynamics.ensemble_size}")
    for key in ("model_train_every", "min_real_steps", "rollouts_per_retrain", "retain_epochs",
                "model_batch_size", "model_patience"):
        require_number(cfg, f"agent.mbpo.{key}", 1, integer=True)
    require_number(cfg, "agent.mbpo.model_max_epochs", 1, integer=True, allow_none=True)
    for key in ("real_ratio", "model_lr", "model_weight_decay", "model_holdout_ratio"):
        require_number(cfg, f"agent.mbpo.{key}")  # ranges: MBPOSettings
    instantiate_settings(cfg, "agent.mbpo")


def validate_imitation(cfg: DictConfig) -> None:
    """The demonstrations and discriminator settings of an adversarial-imitation agent."""
    if cfg.demos is None:
        raise ConfigError("demos", f"agent={cfg.agent.name} learns from expert demonstrations: "
                                   "pass demos=PATH (a file written by `lipctl demos`)")
    require_number(cfg, "agent.demo_episodes", 1, integer=True, allow_none=True)
    require_number(cfg, "agent.demo_subsample", 1, integer=True)
    require_widths(cfg, "agent.discriminator.hidden")
    for key in ("bound", "hidden_bound", "head_bound"):
        require_number(cfg, f"agent.discriminator.{key}", 0, allow_none=True, exclusive=True)
    require_choice(cfg, "agent.discriminator.layer", tuple(FAMILIES))
    discriminator = cfg.agent.discriminator
    if discriminator.bound is not None and discriminator.hidden_bound is not None:
        raise ConfigError("agent.discriminator.hidden_bound", "give either bound (every layer) "
                                                               "or hidden_bound, not both")
    if discriminator.head_bound is not None and discriminator.hidden_bound is None:
        raise ConfigError("agent.discriminator.head_bound", "caps the head of a network whose "
                                                             "hidden layers are normalised: set "
                                                             "hidden_bound too")
    for key in ("lr", "model_lr", "penalty_k", "penalty_weight", "penalty_noise_std",
                "entropy_weight", "expert_label_min", "expert_label_max",
                "precondition_target", "precondition_floor"):
        require_number(cfg, f"agent.gail.{key}")  # ranges: GAILSettings
    for key in ("batch_size", "update_every"):
        require_number(cfg, f"agent.gail.{key}", 1, integer=True)
    instantiate_settings(cfg, "agent.gail")
    imitation_demos(cfg)


def main(cfg: DictConfig) -> float | list[float | None] | None:
    """Check the config and the run folder, and only then write to it and train."""
    with user_errors("lipctl train"):
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        validate(cfg)
        if is_behaviour_cloning(cfg):
            behaviour_cloning.require_new(run_dir)
            accept_run(cfg, run_dir, resumed=False)
            return behaviour_cloning.train(cfg, run_dir)
        if cfg.seeds is not None:
            return train_seeds(cfg)
        state = previous_state(cfg, run_dir)
        accept_run(cfg, run_dir, resumed=state is not None)
        return train(cfg, run_dir, state)
