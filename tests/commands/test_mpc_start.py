"""An MPC start outside the process's state box is refused before any work, naming the states
and the bounds they break."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module

from lipctl.commands import plant_serve
from lipctl.commands.mpc import validate
from lipctl.config import ConfigError
from lipctl.envs.cstr import CSTR
from lipctl.envs.quadtank import quadtank_process
from tests.helpers import config_error


def mpc_config(*overrides: str, command: str = "mpc"):
    with initialize_config_module(config_module="lipctl.conf", version_base=None):
        return compose(command, overrides=list(overrides))


def test_box_violations_name_each_state_and_bound():
    quadtank = quadtank_process()
    assert CSTR.box_violations([1.5, -70.0]) is None
    assert CSTR.box_violations([100.0, -70.0]) == "CA = 100 is above the upper bound 1.697 kmol/m3"
    assert quadtank.box_violations([3.0, 12.0, 1.0, 9.0]) == (
        "h1 = 3 is below the lower bound 4 cm, h4 = 9 is above the upper bound 8 cm")
    assert quadtank.box_violations(quadtank.state_low) is None  # the bounds belong to the box


@pytest.mark.parametrize(("overrides", "message"), [
    (["env=cstr", "start=[100.0,1000.0]"],
     "start: CA = 100 is above the upper bound 1.697 kmol/m3, T = 1000 is above the upper bound "
     "76.6 K of the cstr state box"),
    (["env=quadtank", "start=[12.0,12.0,1.0,-0.5]"],
     "start: h4 = -0.5 is below the lower bound 0 cm of the quadtank state box"),
])
def test_validate_refuses_a_start_outside_the_box(overrides, message):
    with pytest.raises(ConfigError) as error:
        validate(mpc_config(*overrides))
    assert str(error.value) == message


def test_validate_accepts_the_default_starts():
    for env in ("cstr", "quadtank"):
        assert validate(mpc_config(f"env={env}")).name == env


def test_cli_refuses_a_start_outside_the_box_before_any_work(workdir):
    assert config_error("mpc", "env=cstr", "start=[100.0,1000.0]", cwd=workdir).startswith(
        "start: CA = 100 is above the upper bound 1.697 kmol/m3")


def test_plant_serve_refuses_an_initial_state_outside_the_box():
    with pytest.raises(ConfigError) as error:
        plant_serve.validate(mpc_config("env=cstr", "x0=[0.0,500.0]", command="plant_serve"))
    assert str(error.value) == "x0: T = 500 is above the upper bound 76.6 K of the cstr state box"
    plant_serve.validate(mpc_config("env=cstr", "x0=[0.0,5.0]", command="plant_serve"))
