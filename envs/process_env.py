"""Any process with a first-principles model as a gymnasium plant, sampled every sampling period."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from lipctl.envs.process import Process


def _std(process: Process, name: str, value: Sequence[float] | None) -> np.ndarray:
    if value is None:
        return np.zeros(process.state_size)
    std = np.asarray(value, dtype=np.float64)
    if std.shape != (process.state_size,) or not np.all(std >= 0):
        raise ValueError(f"{name} must be {process.state_size} non-negative numbers "
                         f"[{', '.join(process.state_names)}], got {value}")
    return std


class ProcessEnv(gym.Env):
    """A `Process` stepped by its own ODE (RK4, `Process.step`).

    Observation: the state plus N(0, obs_noise_std^2) measurement noise (the true state is
    info["state"]). Action: the process inputs, clipped to their bounds; info["clipped"] flags a
    clipped step and info["clip_count"] counts them in the episode. Each step adds
    N(0, disturbance_std^2) to dx/dt, held over the period. Reward: minus the stage cost of the
    true state at the start of the step and the applied action, around the current setpoint.
    Episodes start at options["x0"], else at the constructor's `x0`, else uniformly in the
    process's region; options["setpoint"] (an operating point's name, or None for the steady
    state) picks the setpoint, which `set_setpoint` changes mid-episode. Episodes never terminate
    (truncation comes from the registered time limit). `state_limits` (low, high), if given, are
    physical limits the state is clipped to after each step (a tank that overflows or empties).
    """

    metadata = {"render_modes": []}

    def __init__(self, process: Process, x0: Sequence[float] | None = None,
                 obs_noise_std: Sequence[float] | None = None,
                 disturbance_std: Sequence[float] | None = None,
                 setpoint: str | None = None,
                 state_limits: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        if not process.has_model:
            raise ValueError(f"process {process.name!r} has no first-principles model to "
                             "simulate")
        self.process = process
        self._x0 = None if x0 is None else process.check_state(x0, "x0")
        self.obs_noise_std = _std(process, "obs_noise_std", obs_noise_std)
        self.disturbance_std = _std(process, "disturbance_std", disturbance_std)
        self.state_limits = state_limits
        self.action_space = gym.spaces.Box(process.input_low, process.input_high,
                                           dtype=np.float64)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(process.state_size,),
                                                dtype=np.float64)
        self.set_setpoint(setpoint)
        self._state = process.steady_state.copy()
        self._clip_count = 0

    def set_setpoint(self, setpoint: str | None) -> None:
        """Make the named operating point (None: the steady state) the reward's reference."""
        self.setpoint = setpoint
        self.x_ref, self.u_ref = self.process.reference(setpoint)

    def _observe(self) -> np.ndarray:
        noise = self.np_random.standard_normal(self.process.state_size)
        return self._state + self.obs_noise_std * noise

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        if "setpoint" in options:
            self.set_setpoint(options["setpoint"])
        if "x0" in options:
            self._state = self.process.check_state(options["x0"], "x0")
        elif self._x0 is not None:
            self._state = self._x0.copy()
        else:
            self._state = self.process.sample_states(self.np_random)
        self._clip_count = 0
        return self._observe(), {"state": self._state.copy(), "clip_count": 0}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        process = self.process
        command = np.asarray(action, dtype=np.float64).reshape(process.input_size)
        if not np.all(np.isfinite(command)):
            raise ValueError(f"action must be finite, got {command}")
        applied = np.clip(command, process.input_low, process.input_high)
        clipped = bool(np.any(applied != command))
        self._clip_count += clipped
        cost = float(process.stage_cost(self._state, applied, self.x_ref, self.u_ref))
        disturbance = self.disturbance_std * self.np_random.standard_normal(process.state_size)
        self._state = process.step(self._state, applied, disturbance=disturbance)
        if self.state_limits is not None:
            self._state = np.clip(self._state, *self.state_limits)
        info = {"state": self._state.copy(), "action": applied, "cost": cost,
                "clipped": clipped, "clip_count": self._clip_count}
        return self._observe(), -cost, False, False, info
