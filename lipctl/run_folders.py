"""A training run's folder: what resumes it (the checkpoint, under an unchanged config), how a
new run takes it over (an earlier attempt's outputs set aside, the config written as Hydra
would), and the folders of seeds trained side by side."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lipctl.agents.checkpoint import CHECKPOINT_NAME, load_checkpoint
from lipctl.agents.trainer import PREVIOUS_CHECKPOINT
from lipctl.config import ConfigError
from lipctl.envs.files import atomic_write

log = logging.getLogger(__name__)
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
