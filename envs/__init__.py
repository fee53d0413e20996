"""Gymnasium environments, wrappers and demonstration datasets."""

from lipctl.envs import cstr, quadtank  # noqa: F401  (register lipctl/CSTR-v0, QuadTank-v0)
from lipctl.envs.make import UnknownEnvError, env_spaces, make_env

__all__ = ["UnknownEnvError", "env_spaces", "make_env"]
