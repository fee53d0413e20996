"""Experts for recording demonstrations: controllers (`act(observation) -> action`, `reset()`)
built from an env's known dynamics without training anything, and stable-baselines3 policies read
from their .zip files without running code from them."""

from __future__ import annotations

import copy
import inspect
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
import scipy.linalg
import torch


def linearise_mujoco(env: gym.Env, substeps: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Discrete-time (A, B) of one env step of a MuJoCo env at its model's qpos0, zero velocity
    and zero control, in the state [qpos-tangent, qvel].

    mjd_transitionFD does not support RK4, so the derivative is taken on a copy of the model
    stepped with semi-implicit Euler at 1/substeps of the env step, and composed over the step.
    The env's own model is left untouched.
    """
    unwrapped = env.unwrapped
    model = copy.copy(unwrapped.model)
    step = unwrapped.frame_skip * unwrapped.model.opt.timestep
    model.opt.integrator = mujoco.mjtIntegrator.mjINT_EULER
    model.opt.timestep = step / substeps
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    n = 2 * model.nv + model.na
    a, b = np.zeros((n, n)), np.zeros((n, model.nu))
    mujoco.mjd_transitionFD(model, data, 1e-6, True, a, b, None, None)
    a_step, b_step = np.eye(n), np.zeros_like(b)
    for _ in range(substeps):
        a_step, b_step = a @ a_step, a @ b_step + b
    return a_step, b_step


class LQRExpert:
    """Discrete-time LQR state feedback u = clip(-K x) around the upright equilibrium.

    For MuJoCo envs whose observation is [qpos, qvel] with hinge/slide joints (then the
    observation is the linearisation state), e.g. InvertedPendulum-v5.
    """

    def __init__(self, env: gym.Env, state_cost: list[float] | None = None,
                 action_cost: float = 0.1):
        a, b = linearise_mujoco(env)
        n = a.shape[0]
        if env.observation_space.shape != (n,):
            raise ValueError(f"LQR needs the observation to be the {n}-dim MuJoCo state, "
                             f"got shape {env.observation_space.shape}")
        q = np.diag(state_cost if state_cost is not None else [1.0] * (n // 2) + [0.1] * (n // 2))
        r = action_cost * np.eye(b.shape[1])
        p = scipy.linalg.solve_discrete_are(a, b, q, r)
        self.gain = np.linalg.solve(r + b.T @ p @ b, b.T @ p @ a)
        self.low, self.high = env.action_space.low, env.action_space.high
        self.dtype = env.action_space.dtype

    def act(self, observation: np.ndarray) -> np.ndarray:
        action = -self.gain @ np.asarray(observation, dtype=np.float64)
        return np.clip(action, self.low, self.high).astype(self.dtype)

    def reset(self) -> None:
        """Stateless: nothing to reset."""


def _inverted_pendulum_lqr(env: gym.Env) -> LQRExpert:
    # cart position, pole angle (weighted most), their velocities
    return LQRExpert(env, state_cost=[1.0, 10.0, 0.1, 0.1], action_cost=0.1)


EXPERTS: dict[str, dict[str, Callable[[gym.Env], object]]] = {
    "InvertedPendulum-v5": {"lqr": _inverted_pendulum_lqr},
}


def available_experts(env_id: str) -> tuple[str, ...]:
    """The analytic experts `make_expert` can build for `env_id`."""
    return tuple(EXPERTS.get(env_id, {}))


def make_expert(name: str, env: gym.Env) -> object:
    """The analytic expert `name` for `env`; ValueError when there is none."""
    env_id = env.spec.id if env.spec is not None else None
    experts = EXPERTS.get(env_id, {})
    if name not in experts:
        have = ", ".join(experts) or "none"
        raise ValueError(f"no '{name}' expert for '{env_id}' (available: {have})")
    return experts[name](env)


# Class-valued policy kwargs that a stable-baselines3 .zip keeps only pickled, recovered from the
# class names it writes beside the pickle; the optimiser's do not matter for acting.
SB3_ACTIVATIONS = ("ReLU", "Tanh", "ELU", "LeakyReLU", "GELU", "SiLU", "Sigmoid", "Softplus",
                   "Mish", "SELU", "CELU", "Hardtanh")
SB3_INFERENCE_IRRELEVANT = ("optimizer_class", "optimizer_kwargs")


class SB3Expert:
    """A stable-baselines3 policy's deterministic action as a Controller."""

    def __init__(self, policy: Any):  # a stable_baselines3 BasePolicy
        self.policy = policy

    def act(self, observation: np.ndarray) -> np.ndarray:
        return self.policy.predict(observation, deterministic=True)[0]

    def reset(self) -> None:
        """Feed-forward policy: nothing to reset."""


def _sb3_class_names() -> dict[str, dict[str, type]]:
    """For each class-valued policy kwarg that can be recovered: its allowed classes by the
    name stable-baselines3 writes for them (`str(cls)`)."""
    from stable_baselines3.common.torch_layers import FlattenExtractor

    activations = [getattr(torch.nn, name) for name in SB3_ACTIVATIONS]
    return {"activation_fn": {str(cls): cls for cls in activations},
            "features_extractor_class": {str(FlattenExtractor): FlattenExtractor}}


def _sb3_policy_kwargs(entry: Any, path: str) -> dict[str, Any]:
    """The policy kwargs of a .zip's `data` entry, without unpickling: a JSON dict as it is, or
    the first-level items stable-baselines3 writes beside a pickled dict, class names mapped
    through `_sb3_class_names`. ValueError for anything that only the pickle could restore."""
    if entry is None:
        return {}
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: policy_kwargs is not a mapping")
    if ":serialized:" not in entry:
        return dict(entry)
    if entry.get(":type:") != str(dict):
        raise ValueError(f"{path}: policy_kwargs is a pickled {entry.get(':type:')}, not a dict")
    recoverable = _sb3_class_names()
    kwargs = {}
    for key, value in entry.items():
        if key in (":type:", ":serialized:") or key in SB3_INFERENCE_IRRELEVANT:
            continue
        if key in recoverable and value in recoverable[key]:
            kwargs[key] = recoverable[key][value]
        elif isinstance(value, str):  # stable-baselines3 wrote str() of an object it pickled
            raise ValueError(f"{path}: policy_kwargs.{key} = {value} can only be restored by "
                             "running code from the file; pass sb3_trust=true if you trust it")
        else:
            kwargs[key] = value
    return kwargs


def _check_sb3_shape(data: dict[str, Any], key: str, space: gym.Space, path: str,
                     env_id: str, verb: str) -> None:
    """ValueError unless the shape the .zip records for its `key` space is the env's."""
    entry = data.get(key)
    shape = entry.get("_shape") if isinstance(entry, dict) else None
    if not isinstance(shape, list) or tuple(shape) != space.shape:
        shown = "unknown" if not isinstance(shape, list) else tuple(shape)
        raise ValueError(f"{path} {verb} shape {shown}, {env_id} gives {space.shape}")


def read_sb3_policy(path: str | Path, algorithm: str, env: gym.Env) -> Any:
    """The MlpPolicy of the stable-baselines3 `algorithm` (sac, td3, ddpg, ppo, a2c) saved at
    `path`, for `env`'s observation and action spaces, without running code from the file.

    stable-baselines3 writes the entries of a model's `data` that JSON cannot hold as cloudpickle
    bytes; loading those runs whatever code the file carries, so they are never unpickled here.
    The policy is built from the algorithm's policy class, the policy kwargs that the JSON holds
    (`_sb3_policy_kwargs`) and the env's spaces (their shapes checked against the file's), then
    given `policy.pth`, read with torch.load(weights_only=True). ValueError for an unusable file.
    """
    import stable_baselines3

    path = str(path)
    policy_class = getattr(stable_baselines3, algorithm.upper()).policy_aliases["MlpPolicy"]
    env_id = env.spec.id if env.spec is not None else "the env"
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data").decode())
            state = torch.load(io.BytesIO(archive.read("policy.pth")), map_location="cpu",
                               weights_only=True)
    except (OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError, json.JSONDecodeError,
            RuntimeError) as error:  # also torch's refusal of a pickle that is not weights
        raise ValueError(f"{path} is not a readable stable-baselines3 model: "
                         f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
                         ) from None
    if not isinstance(data, dict) or not isinstance(state, dict):
        raise ValueError(f"{path} is not a stable-baselines3 model: no data or policy weights")
    _check_sb3_shape(data, "observation_space", env.observation_space, path, env_id, "observes")
    _check_sb3_shape(data, "action_space", env.action_space, path, env_id, "acts with")
    kwargs = _sb3_policy_kwargs(data.get("policy_kwargs"), path)
    if "use_sde" in inspect.signature(policy_class.__init__).parameters:
        kwargs.setdefault("use_sde", data.get("use_sde", False))
    try:
        policy = policy_class(env.observation_space, env.action_space, lambda _: 0.0, **kwargs)
        policy.load_state_dict(state, strict=True)
    except (TypeError, ValueError, RuntimeError, AssertionError) as error:
        reason = " ".join(line.strip() for line in str(error).splitlines()[:2])
        reason = reason if len(reason) <= 200 else reason[:200] + "..."
        raise ValueError(f"{path} does not hold a stable-baselines3 {algorithm.upper()} MlpPolicy "
                         f"for {env_id} (is sb3_algorithm right?): {reason}") from None
    policy.set_training_mode(False)
    return policy
