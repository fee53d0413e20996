"""Analytic experts: controllers (`act(observation) -> action`, `reset()`) built from an env's
known dynamics, for recording demonstrations without training anything."""

from __future__ import annotations

import copy
from collections.abc import Callable

import gymnasium as gym
import mujoco
import numpy as np
import scipy.linalg


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
