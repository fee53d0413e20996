"""lipctl plant serve env=NAME: serve a simulated process (the env's process description) over
OPC UA until SIGINT/SIGTERM, secured as `security` says; allow_remote=true requires a security
policy and a user."""

from __future__ import annotations

import signal
import threading

from omegaconf import DictConfig, OmegaConf

from lipctl.config import (
    ConfigError,
    process_of,
    require_in_box,
    require_number,
    require_state_vector,
    user_errors,
)
from lipctl.control.opcua_plant import PlantServer, quiet_asyncua
from lipctl.control.opcua_security import SERVER_URI, Security, SettingError
from lipctl.deployables import security_config
from lipctl.envs import make_env


def _security(cfg: DictConfig) -> Security:
    raw = OmegaConf.select(cfg, "security")
    return security_config(None if raw is None else OmegaConf.to_container(raw, resolve=True),
                           "security", SERVER_URI)


def validate(cfg: DictConfig) -> None:
    process = process_of(cfg)
    if process.env_id is None:
        raise ConfigError("env", f"process {process.name!r} has no simulated plant to serve")
    require_number(cfg, "port", 0, integer=True)
    if cfg.port > 65535:
        raise ConfigError("port", f"must be <= 65535, got {cfg.port}")
    require_number(cfg, "period_s", 0, exclusive=True)
    require_number(cfg, "seed", 0, integer=True, allow_none=True)
    require_state_vector(cfg, "x0", process, allow_none=True)
    if cfg.x0 is not None:
        require_in_box(cfg, "x0", process)
    require_state_vector(cfg, "obs_noise_std", process, minimum=0, allow_none=True)
    require_state_vector(cfg, "disturbance_std", process, minimum=0, allow_none=True)
    security = _security(cfg)
    if cfg.allow_remote and not (security.secure and security.credentials):
        raise ConfigError("allow_remote", "a plant served beyond this machine must be secured: "
                                          "set security.policy (e.g. Basic256Sha256), its "
                                          "certificates and security.username with a password")


def serve(cfg: DictConfig) -> None:
    """Serve until SIGINT/SIGTERM; print `serving <url>` once clients can connect and
    `stopped at CA T` (the last measurement, to restart from) on the way out."""
    quiet_asyncua()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    kwargs = OmegaConf.select(cfg, "env.kwargs", default=None)
    env = make_env(process_of(cfg).env_id, obs_noise_std=cfg.obs_noise_std,
                   disturbance_std=cfg.disturbance_std,
                   **(OmegaConf.to_container(kwargs) if kwargs else {}))
    try:
        server = PlantServer(env, cfg.host, cfg.port, cfg.period_s,
                             None if cfg.x0 is None else list(cfg.x0),
                             allow_remote=cfg.allow_remote, seed=cfg.seed,
                             security=_security(cfg))
    except SettingError as error:
        raise ConfigError(f"security.{error.key}", error.message) from None
    except ValueError as error:
        raise ConfigError("host", str(error)) from None
    try:
        server.start()
    except OSError as error:  # the port is taken, or the host is not an address of this machine
        raise ConfigError("port", f"cannot serve on {cfg.host}:{cfg.port}: {error}") from None
    try:
        print(f"serving {server.url}", flush=True)
        while not stop.wait(0.2):
            pass
    finally:
        server.stop()
        env.close()
    print("stopped at", *(f"{v:.17g}" for v in server.snapshot.measurement), flush=True)


def main(cfg: DictConfig) -> None:
    with user_errors("lipctl plant serve"):
        validate(cfg)
        serve(cfg)
