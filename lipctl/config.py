"""Checking a command's configuration before any work starts: one clear line per mistake."""

from __future__ import annotations

import errno
import logging
import math
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from lipctl.agents.checkpoint import CheckpointError
from lipctl.control.mpc import SolverOptions
from lipctl.control.planner import PlannerFactory, stand_in_dynamics
from lipctl.envs import UnknownEnvError
from lipctl.envs.demos import DemosError
from lipctl.envs.files import WriteError
from lipctl.envs.process import Process
from lipctl.exit_codes import USAGE_EXIT_CODE
from lipctl.extras import LAUNCHER_EXTRAS, MissingExtra, require_extra


class ConfigError(ValueError):
    """An impossible configuration value, reported with the key it belongs to."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@contextmanager
def keys_under(prefix: str) -> Iterator[None]:
    """Re-raise a ConfigError whose key is relative to the config at `prefix` (a section checked on
    its own) with the key as the user writes it, `prefix.key`."""
    try:
        yield
    except ConfigError as error:
        if error.key == prefix or error.key.startswith(f"{prefix}."):
            raise
        raise ConfigError(f"{prefix}.{error.key}", error.message) from None


USER_ERRORS = (ConfigError, CheckpointError, UnknownEnvError, DemosError, MissingExtra,
               WriteError)
# Failures of the storage itself, reported in one line even where no file name comes with them
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


@contextmanager
def user_errors(prog: str) -> Iterator[None]:
    """Turn a user's mistake into one line on stderr and exit code 2, never a traceback; so too
    an operating-system failure on a named file or of the storage (disk full, read-only). While
    it runs, a log handler that cannot write (a full disk) drops the record without printing a
    traceback of its own: the write of lipctl's that fails says it in one line."""
    raise_exceptions, logging.raiseExceptions = logging.raiseExceptions, False
    try:
        yield
    except USER_ERRORS as error:
        _exit(prog, str(error))
    except OSError as error:
        if error.filename is not None:
            _exit(prog, f"{error.filename}: {error.strerror}")
        if error.errno in STORAGE_ERRNOS:
            _exit(prog, f"a file could not be written: {error.strerror}")
        raise
    finally:
        logging.raiseExceptions = raise_exceptions


def _exit(prog: str, message: str) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(USAGE_EXIT_CODE)


def _one_line(message: str) -> str:
    """Condense Hydra's multi-line composition errors into one readable line."""
    match = re.search(r"Could not override '([^']+)'.*?To append to your config use", message, re.S)
    if match:
        key = match.group(1)
        return f"unknown key '{key}' (to add a new key use +{key}=...)"
    lines = [ln.strip() for ln in message.splitlines()
             if ln.strip() and not ln.startswith(("Set the environment variable", "See https"))]
    options = re.search(r"Available options in '([^']+)':\n((?:\t.*\n?)*)", message)
    if options:
        head = next(ln for ln in lines if ln.startswith(("In ", "Could not")))
        names = ", ".join(options.group(2).split())
        return f"{head.split(': ', 1)[-1]}; available options in '{options.group(1)}': {names}"
    return "; ".join(lines)


def _override_variants(overrides: list[str]) -> list[list[str]]:
    """The override lists to check: each sweep value once, the other sweeps at their first."""
    base: list[str] = []
    sweeps: list[tuple[int, list[str]]] = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if not override.is_sweep_override():
            base.append(override.input_line)
            continue
        try:
            values = list(override.sweep_string_iterator())
        except Exception:  # glob and other sweeps that Hydra expands itself
            continue
        sweeps.append((len(base), [f"{override.get_key_element()}={v}" for v in values]))
        base.append(sweeps[-1][1][0])
    variants = [base]
    for position, options in sweeps:
        for option in options[1:]:
            variants.append(base[:position] + [option] + base[position + 1:])
    return variants


def check_overrides(config_name: str, overrides: list[str],
                    validate: Callable[[DictConfig], None], multirun: bool = False) -> None:
    """Compose the config for every sweep value, check that its run folder (and `out`, where the
    command has one) can be written, and validate it; raise ConfigError on a mistake."""
    try:
        variants = _override_variants(overrides)
    except Exception as error:  # Hydra's OverrideParseException
        raise ConfigError("overrides", _one_line(str(error))) from None
    outer = get_gh_backup()  # reentrant: a running Hydra app may check another command's config
    outer_hydra_config = HydraConfig.instance().cfg
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="lipctl.conf", version_base=None):
            for variant in variants:
                _check_launcher(variant)
                try:
                    cfg = compose(config_name, overrides=variant, return_hydra_config=True)
                except Exception as error:  # ConfigCompositionException, MissingConfig...
                    raise ConfigError("overrides", _one_line(str(error))) from None
                _check_output_paths(cfg, multirun)
                validate(cfg)
    finally:
        restore_gh_from_backup(outer)
        HydraConfig.instance().cfg = outer_hydra_config


def _check_launcher(overrides: list[str]) -> None:
    """A launcher whose plugin comes with an extra needs that extra (checked before composing:
    without its plugin, the launcher's config does not compose)."""
    for override in overrides:
        key, _, launcher = override.partition("=")
        if key.lstrip("+~") == "hydra/launcher" and launcher in LAUNCHER_EXTRAS:
            require_extra(LAUNCHER_EXTRAS[launcher], f"hydra/launcher={launcher}")


def _check_output_paths(cfg: DictConfig, multirun: bool) -> None:
    """The run (or sweep) folder Hydra will create and the command's `out` must be writable; the
    Hydra node is then removed, so `validate` sees the config the command will get."""
    HydraConfig.instance().set_config(cfg)  # resolves ${hydra:...} and ${now:...} in the paths
    run_dir_key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    require_writable(run_dir_key, OmegaConf.select(cfg, run_dir_key))
    if OmegaConf.select(cfg, "out", default=None) is not None:
        require_writable("out", cfg.out)
    with open_dict(cfg):
        del cfg["hydra"]


def require_writable(key: str, path: str | Path) -> None:
    """ConfigError unless the file or folder `path` can be created (or overwritten) there."""
    path = Path(path).absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if existing == path and not path.is_dir():
        existing = path.parent  # an existing file, to be replaced
    if not existing.is_dir():
        raise ConfigError(key, f"cannot create {path}: {existing} is not a folder")
    try:
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as error:
        raise ConfigError(key, f"cannot create {path}: {existing} is not writable "
                               f"({error.strerror})") from None


def require_seeds(seeds: object, key: str = "experiment.seeds") -> None:
    """Check that `seeds` is a non-empty list of integers >= 0."""
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        shown = list(seeds) if isinstance(seeds, Iterable) else seeds
        raise ConfigError(key, f"must be a non-empty list of integers >= 0, got {shown!r}")


def require_number(cfg: DictConfig, key: str, minimum: float | None = None,
                   integer: bool = False, allow_none: bool = False,
                   exclusive: bool = False) -> None:
    """Check that cfg[key] is a finite (integer) number at or above `minimum`."""
    value = OmegaConf.select(cfg, key, throw_on_missing=False)
    if value is None and allow_none:
        return
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise ConfigError(key, f"must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(key, f"must be finite, got {value!r}")
    if minimum is not None and (value <= minimum if exclusive else value < minimum):
        relation = ">" if exclusive else ">="
        raise ConfigError(key, f"must be {relation} {minimum}, got {value!r}")


def require_choice(cfg: DictConfig, key: str, choices: tuple[str, ...]) -> None:
    value = OmegaConf.select(cfg, key, throw_on_missing=False)
    if value not in choices:
        raise ConfigError(key, f"must be one of {', '.join(choices)}, got {value!r}")


def instantiate_settings(cfg: DictConfig, key: str) -> object:
    """Instantiate the settings object at `key`; a ValueError its constructor raises (its message
    starting with the parameter's name) becomes a ConfigError naming `key.parameter`."""
    try:
        return instantiate(OmegaConf.select(cfg, key), _convert_="all")
    except InstantiationException as error:
        if not isinstance(error.__cause__, ValueError):
            raise
        name, _, message = str(error.__cause__).partition(" ")
        raise ConfigError(f"{key}.{name}", message) from None


def planner_factory(cfg: DictConfig, key: str) -> PlannerFactory:
    """The planner factory configured at `key` (conf/planner: a `_target_` with `_partial_`),
    checked by building one planner on a stand-in one-state model; a bad setting is a
    ConfigError naming `key` (and the setting, where the error starts with its name)."""
    node = OmegaConf.select(cfg, key)
    try:
        factory = instantiate(node, _convert_="all")
    except InstantiationException as error:
        raise ConfigError(key, str(error).splitlines()[0]) from None
    if not callable(factory):
        raise ConfigError(key, f"must name a planner factory (`_target_` with `_partial_: true`)"
                               f", got {type(factory).__name__}")
    try:
        factory(dynamics=stand_in_dynamics, action_low=[-1.0], action_high=[1.0])
    except (TypeError, ValueError) as error:
        name, _, message = str(error).partition(" ")
        if isinstance(error, ValueError) and name in node:
            raise ConfigError(f"{key}.{name}", message) from None
        raise ConfigError(key, str(error)) from None
    return factory


def planner_name(planner: DictConfig) -> str:
    """The planner as the config names it: its method (or factory) and main settings."""
    name = planner.get("method") or planner._target_.rsplit(".", 1)[-1]
    settings = [f"{label}={planner[key]}" for key, label in (("horizon", "H"),
                                                             ("samples", "samples"))
                if key in planner]
    return " ".join([name, *settings])


def solver_options(cfg: DictConfig, key: str) -> SolverOptions | None:
    """The MPC solver options at `key` (a mapping of SolverOptions fields), None where unset;
    an unknown field or a bad value is a ConfigError naming `key`."""
    node = OmegaConf.select(cfg, key, throw_on_missing=False)
    if node is None:
        return None
    try:
        return SolverOptions(**OmegaConf.to_container(node))
    except (TypeError, ValueError) as error:
        raise ConfigError(key, str(error).removeprefix("SolverOptions.__init__() ")) from None


def process_of(cfg: DictConfig, key: str = "env.process") -> Process:
    """The process description configured at `key` (a `_target_` returning a Process); a
    missing node, a constructor's ValueError or another type is a ConfigError naming `key`."""
    node = OmegaConf.select(cfg, key, throw_on_missing=False)
    if node is None:
        raise ConfigError(key, "this env has no process description (process: {_target_: ...})")
    try:
        process = instantiate(node, _convert_="all")
    except InstantiationException as error:
        cause = error.__cause__
        raise ConfigError(key, str(cause or error).splitlines()[0]) from None
    if not isinstance(process, Process):
        raise ConfigError(key, f"must build a lipctl.envs.process.Process, got "
                               f"{type(process).__name__}")
    return process


def require_state_vector(cfg: DictConfig, key: str, process: Process,
                         minimum: float | None = None, allow_none: bool = False) -> None:
    """cfg[key] holds one finite number (>= minimum) per state of `process`, or is null where
    `allow_none`."""
    value = OmegaConf.select(cfg, key, throw_on_missing=False)
    if value is None and allow_none:
        return
    names = ", ".join(process.state_names)
    if value is None or isinstance(value, str | int | float) or len(value) != process.state_size:
        shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        raise ConfigError(key, f"must hold {process.state_size} numbers [{names}], got {shown}")
    for i in range(process.state_size):
        require_number(cfg, f"{key}.{i}", minimum)


def require_in_box(cfg: DictConfig, key: str, process: Process) -> None:
    """cfg[key], a state vector of `process` (checked by `require_state_vector`), lies inside
    the process's state box; ConfigError naming each state outside and the bound it breaks."""
    outside = process.box_violations(list(OmegaConf.select(cfg, key)))
    if outside:
        raise ConfigError(key, f"{outside} of the {process.name} state box")
