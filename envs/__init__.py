"""Gymnasium environments, wrappers and demonstration datasets."""

from lipctl.envs import cstr  # noqa: F401  (registers lipctl/CSTR-v0)
from lipctl.envs.make import UnknownEnvError, env_spaces, make_env

__all__ = ["UnknownEnvError", "env_spaces", "make_env"]
