"""A user's own one-state process, kept outside lipctl (tests/commands/test_user_process.py): a
tank whose level h (m) follows dh/dt = (q - h) / 2 for the inflow q (m3/h), its own gymnasium
env, and a controller builder of its own."""
import gymnasium as gym
import numpy as np

from lipctl.envs.process import Process, join, split
from lipctl.envs.process_env import ProcessEnv

ENV_ID = "toy/Tank-v0"


def rhs(x, u):
    (h,), (q,) = split(x), split(u)
    return join([(q - h) / 2.0], symbolic=not isinstance(h, np.ndarray))


def toy_process() -> Process:
    return Process(
        name="toy_tank", state_names=("h",), input_names=("q",), state_units=("m",),
        input_units=("m3/h",), time_unit="h", sampling_period=0.2,
        input_low=np.array([0.0]), input_high=np.array([3.0]),
        state_low=np.array([0.2]), state_high=np.array([2.5]),
        steady_state=np.array([1.0]), steady_input=np.array([1.0]),
        state_weights=(1.0,), input_weights=(0.01,), target_half_widths=np.array([0.05]),
        rhs=rhs, env_id=ENV_ID, lyapunov_matrix=np.array([[1.0]]), stability_level=4.0,
        operating_points={"low": (np.array([0.5]), np.array([0.5])),
                          "high": (np.array([1.5]), np.array([1.5]))})


class ToyTankEnv(ProcessEnv):
    def __init__(self, x0=None, obs_noise_std=None, disturbance_std=None, setpoint=None):
        super().__init__(toy_process(), x0=x0, obs_noise_std=obs_noise_std,
                         disturbance_std=disturbance_std, setpoint=setpoint)


class Constant:
    """A user's own controller: the same inflow at every step."""

    def __init__(self, level: float):
        self.level = level

    def act(self, observation):
        return np.array([self.level])

    def reset(self):
        pass


def constant_inflow(deployment, level: float = 3.0):
    """The builder `conf/controller/constant_inflow.yaml` names."""
    return Constant(level), deployment.process.env_id


gym.register(id=ENV_ID, entry_point="toy_tank:ToyTankEnv", max_episode_steps=50)
