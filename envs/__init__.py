"""Gymnasium environments, wrappers and demonstration datasets."""

from envs.make import UnknownEnvError, env_spaces, make_env

__all__ = ["UnknownEnvError", "env_spaces", "make_env"]
