"""lipctl train: an off-policy agent through the shared actor-critic loop."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lipctl.agents.buffer import ReplayBuffer
from lipctl.agents.checkpoint import load_checkpoint
from lipctl.agents.critic_learner import EPS_UNITS
from lipctl.agents.gail import GAILReward, GAILSettings, expert_batch
from lipctl.agents.mbpo import MBPOSettings, MBPOSource
from lipctl.agents.saved import is_behaviour_cloning, make_agent_env
from lipctl.agents.sources import BatchSource, RewardSource
from lipctl.agents.stacked_trainer import StackedTrainer
from lipctl.agents.termination import TERMINATIONS, termination_fn
from lipctl.agents.trainer import PREVIOUS_CHECKPOINT, Learner, LoopSettings, OffPolicyTrainer
from lipctl.commands import behaviour_cloning
from lipctl.compute import (
    peak_rss_mb,
    reset_peak_rss,
    resolve_device,
    seed_everything,
)
from lipctl.config import (
    ConfigError,
    instantiate_settings,
    require_choice,
    require_number,
    user_errors,
)
from lipctl.envs import env_spaces, make_env
from lipctl.envs.demos import Demos, load_demos
from lipctl.envs.files import atomic_write
from lipctl.extras import EXTRAS, require_extra
from lipctl.lipschitz import FAMILIES, TIERS, LipschitzSpec
from lipctl.lipschitz.layers import GROUPSORT_SIZE
from lipctl.lipschitz.muon import OPTIMIZERS
from lipctl.logger import BACKENDS, Logger, run_name

log = logging.getLogger(__name__)
CHECKPOINT_NAME = "checkpoint.pt"
# Keys a resumed run may change: they affect neither the learning nor the files' meaning.
RESUMABLE_KEYS = ("resume", "progress", "logger", "device", "torch_threads")
# Keys that reach a run only through loop.total_steps (checked there).
BUDGET_SOURCES = ("env.total_steps", "env.mbpo.total_steps", "agent.total_steps")
SHOWN_KEYS = 4  # changed keys a refused resume names (then a count of the others)
# What a run writes besides its checkpoint and Hydra's job log; an earlier attempt's copies are
# moved aside when a new run starts in the same folder.
RUN_OUTPUTS = ("*.csv", "tensorboard", "wandb", "summary.json", ".hydra")


class _Unset:
    """A key one config has and the other lacks."""

    def __repr__(self) -> str:
        return "unset"


_UNSET = _Unset()
NULL_DEFAULTS = ((_UNSET, None), (None, _UNSET))  # a key one config lacks, null in the other


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


def write_summary(path: Path, trainer: OffPolicyTrainer) -> None:
    """The run's end state in one JSON file: return, time breakdown, memory, certificates."""
    seconds = {f"{name}_seconds": value for name, value in trainer.time_breakdown().items()}
    peak = peak_rss_mb()
    if path.exists():  # a resumed run: the peak may have been reached before the restart
        peak = max(peak, json.loads(path.read_text()).get("peak_rss_mb", 0.0))
    summary = {"env_steps": trainer.step, "eval_return": trainer.last_eval,
               **seconds, "peak_rss_mb": peak, "certificates": trainer.certificates,
               "critic_state_lipschitz": trainer.state_lipschitz}
    atomic_write(path, lambda f: f.write(json.dumps(summary, indent=2).encode()))


def previous_state(cfg: DictConfig, run_dir: Path) -> dict | None:
    """The checkpoint `cfg` resumes (None: a new run); ConfigError if the folder holds a run
    and resume=false, or if `cfg` changes the checkpoint's config (`check_resumable`)."""
    path = run_dir / CHECKPOINT_NAME
    if not path.exists():
        if cfg.resume:
            log.warning("resume=true but %s holds no checkpoint: starting a new run", run_dir)
        return None
    if not cfg.resume:
        raise ConfigError("resume", f"{run_dir} already holds a run; pass resume=true to "
                                    "continue it or set hydra.run.dir to start another")
    state = load_checkpoint(path)
    check_resumable(state["config"], OmegaConf.to_container(cfg, resolve=True), run_dir)
    return state


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as {dotted key: leaf value}; lists are leaves."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for name, child in tree.items():
        flat.update(_flat(child, f"{prefix}.{name}" if prefix else str(name)))
    return flat


def check_resumable(saved: dict, config: dict, run_dir: Path) -> None:
    """ConfigError naming the keys where the resolved `config` differs from the `saved` one of
    the checkpoint it would resume. Free to change: RESUMABLE_KEYS, and loop.total_steps upwards
    (the replay buffer grows with it, its rows kept in order); a key the saved config lacks is
    unchanged where it is null (a setting added since, at its default)."""
    old, new = _flat(saved), _flat(config)
    free = RESUMABLE_KEYS + BUDGET_SOURCES
    changed = [key for key in sorted(old.keys() | new.keys())
               if old.get(key, _UNSET) != new.get(key, _UNSET)
               and not any(key == k or key.startswith(f"{k}.") for k in free)
               and (old.get(key, _UNSET), new.get(key, _UNSET)) not in NULL_DEFAULTS]
    total = "loop.total_steps"
    if total in changed and isinstance(old.get(total), int) and new[total] > old[total]:
        changed.remove(total)
    if changed:
        shown, more = changed[:SHOWN_KEYS], len(changed) - SHOWN_KEYS
        values = ", ".join(f"{key} {old.get(key, _UNSET)!r} -> {new.get(key, _UNSET)!r}"
                           for key in shown)
        keys = ", ".join(shown) + (f" and {more} more" if more > 0 else "")
        raise ConfigError(keys, f"resume=true cannot change the config of the run in {run_dir} "
                                f"({values}); only {', '.join(RESUMABLE_KEYS)} may change, and "
                                f"loop.total_steps grow (set hydra.run.dir for a new run)")


def accept_run(cfg: DictConfig, run_dir: Path, resumed: bool) -> None:
    """Make `run_dir` the accepted run's folder: a new run moves an earlier attempt's outputs
    aside (`set_aside`), then the config is written to .hydra/ as Hydra would have."""
    if not resumed:
        aside = set_aside(run_dir)
        if aside is not None:
            log.warning("%s held the logs of an earlier attempt but no checkpoint: moved them "
                        "to %s; starting a new run", run_dir, aside)
    hydra = HydraConfig.get()
    folder = run_dir / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    for name, node in (("config.yaml", cfg), ("hydra.yaml", {"hydra": hydra}),
                       ("overrides.yaml", hydra.overrides.task)):
        text = OmegaConf.to_yaml(node)
        atomic_write(folder / name, lambda f, text=text: f.write(text.encode()))


def set_aside(run_dir: Path) -> Path | None:
    """Move the RUN_OUTPUTS in `run_dir` into a new `previous-<n>/` inside it (nothing is
    deleted); returns that folder, or None when there was nothing to move."""
    outputs = sorted({path for pattern in RUN_OUTPUTS for path in run_dir.glob(pattern)})
    if not outputs:
        return None
    n = 1
    while (run_dir / f"previous-{n}").exists():
        n += 1
    aside = run_dir / f"previous-{n}"
    aside.mkdir()
    for path in outputs:
        os.replace(path, aside / path.name)
    return aside


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


def seed_config(cfg: DictConfig, seed: int) -> DictConfig:
    """The config of the separate run of `seed`: `cfg` with seed=seed and no seeds list."""
    config = OmegaConf.to_container(cfg, resolve=False)
    config.update(seed=seed, seeds=None)
    return OmegaConf.create(config)


def seed_run_dir(cfg: DictConfig) -> Path:
    """The folder Hydra would give the separate run of `cfg`: hydra.run.dir, or in a multirun
    hydra.sweep.dir/hydra.sweep.subdir, resolved for its seed."""
    hydra = HydraConfig.get()
    raw = OmegaConf.to_container(hydra, resolve=False)
    multirun = hydra.mode == RunMode.MULTIRUN
    pattern = (f"{raw['sweep']['dir']}/{raw['sweep']['subdir']}" if multirun
               else raw["run"]["dir"])
    node = OmegaConf.create({**OmegaConf.to_container(cfg, resolve=False), "hydra": raw,
                             "_run_dir": pattern})
    path = Path(str(OmegaConf.select(node, "_run_dir")))
    return path if path.is_absolute() else Path(hydra.runtime.cwd) / path


def stacked_runs(cfg: DictConfig) -> list[tuple[DictConfig, Path, dict | None]]:
    """Each seed's config, run folder and checkpoint to resume (None: a new run); ConfigError
    if the folders coincide or only some seeds have a checkpoint."""
    configs = [seed_config(cfg, seed) for seed in cfg.seeds]
    folders = [seed_run_dir(config) for config in configs]
    if len(set(folders)) < len(folders):
        raise ConfigError("seeds", f"hydra.run.dir gives the seeds the same folder "
                                   f"({folders[0]}); put ${{seed}} in it")
    if cfg.resume:
        align_checkpoints(folders)
    states = [previous_state(config, folder) for config, folder in zip(configs, folders,
                                                                        strict=True)]
    resumed = [state is not None for state in states]
    if any(resumed) and not all(resumed):
        have = [seed for seed, r in zip(cfg.seeds, resumed, strict=True) if r]
        raise ConfigError("seeds", f"only seeds {have} have a checkpoint to resume: stacked "
                                   "seeds resume together (run the others separately)")
    return list(zip(configs, folders, states, strict=True))


def align_checkpoints(folders: list[Path]) -> None:
    """After a stacked run was killed while its seeds saved a step, put back the previous
    checkpoint of each seed that had saved it, so that all resume from the same step."""
    steps = {folder: load_checkpoint(folder / CHECKPOINT_NAME)["step"] for folder in folders
             if (folder / CHECKPOINT_NAME).exists()}
    if len(set(steps.values())) < 2:
        return
    common = min(steps.values())
    for folder, step in steps.items():
        previous = folder / PREVIOUS_CHECKPOINT
        if step > common and previous.exists() and load_checkpoint(previous)["step"] == common:
            os.replace(previous, folder / CHECKPOINT_NAME)
            log.warning("%s: its checkpoint at step %d was saved after the other seeds' last "
                        "one; resuming it from step %d with them", folder, step, common)


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
