"""`lipctl <command> [hydra overrides]`: one entry point for every command."""

from __future__ import annotations

import importlib
import sys
from typing import Any

from lipctl.exit_codes import USAGE_EXIT_CODE

# Light on purpose: `lipctl --help` and `lipctl <command> --help` import neither torch nor mujoco
# nor casadi; a command's module is imported only when it runs.

COMMANDS = {
    "train": ("train", "train an agent (default: SAC on Pendulum-v1)"),
    "eval": ("eval", "run episodes of a checkpoint's policy: eval checkpoint=PATH"),
    "plan": ("plan", "MPPI or CEM on an MBPO checkpoint's model and critic: plan checkpoint=PATH"),
    "robustness": ("robustness", "returns under noise and PGD attack: robustness checkpoint=PATH"),
    "demos": ("demos", "record expert demonstrations: demos env=inverted_pendulum expert=lqr"),
    "data": ("data", "generate process-model training data: data env=cstr"),
    "fit": ("fit", "train a process model: fit model=iclrnn|icrnn|rnn|lstm"),
    "bench": ("bench", "run a benchmark into results/: bench experiment=cstr_mpc|mbpo_vs_ensemble"),
    "mpc": ("mpc", "closed-loop MPC of a process (IPOPT, or planner=mppi|cem): mpc env=NAME"),
    "export": ("export", "policy or process model to ONNX/TorchScript: export checkpoint=PATH"),
    "deploy": ("deploy", "controller vs plant with fallbacks: deploy controller=mpc plant=opcua"),
    "plant": ("plant", "a simulated process as an OPC UA server: plant serve env=cstr"),
}
# Commands that need an optional extra of lipctl as a whole (lipctl/extras.py)
COMMAND_EXTRAS = {"export": "export", "deploy": "deploy", "plant": "deploy"}
# Commands whose first argument is an action word: `lipctl plant serve ...` runs the module and
# config `plant_serve`.
ACTIONS = {"plant": ("serve",)}
HYDRA_FLAGS_WITHOUT_CHECK = {"--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion",
                             "-sc"}
HYDRA_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp",
                          "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun"}


def usage() -> str:
    lines = ["usage: lipctl <command> [hydra overrides] [--help] [--cfg job] [-m]", "", "commands:"]
    width = max(map(len, COMMANDS))
    lines += [f"  {name:<{width}} {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "Each command is a Hydra app: `lipctl <command> --help` shows its config groups."]
    return "\n".join(lines)


def _overrides(args: list[str]) -> list[str]:
    """The key=value overrides among a command's arguments (Hydra's own flags left out)."""
    overrides, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in HYDRA_FLAGS_WITH_VALUE:
            skip = True
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if args else USAGE_EXIT_CODE)
    command, name, rest = resolve(args)
    if not HYDRA_FLAGS_WITHOUT_CHECK.intersection(rest):
        from lipctl.config import user_errors

        with user_errors(f"lipctl {command}"):
            check_config(command, name, rest)
    sys.argv = [f"lipctl {command}", *rest]
    hydra_app(name)()


def resolve(args: list[str]) -> tuple[str, str, list[str]]:
    """(command as the user writes it, its module and config name, its arguments) of a command
    line; an unknown command or action is a usage error."""
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"lipctl: error: unknown command '{command}'; choose from {', '.join(COMMANDS)}",
              file=sys.stderr)
        sys.exit(USAGE_EXIT_CODE)
    if command in ACTIONS:
        return _action(command, rest)
    return command, COMMANDS[command][0], rest


def check_config(command: str, name: str, rest: list[str]) -> None:
    """What runs before any work: the command's extra is installed, its config composes for
    every sweep value, its outputs can be written and its module's `validate` passes; a user's
    mistake raises (ConfigError and the other errors `user_errors` reports in one line)."""
    from lipctl.config import check_overrides
    from lipctl.extras import require_extra

    extra = COMMAND_EXTRAS.get(command.split()[0])
    if extra is not None:
        require_extra(extra, f"lipctl {command}")
    module = importlib.import_module(f"lipctl.commands.{name}")
    check_overrides(name, _overrides(rest), module.validate,
                    multirun=bool({"-m", "--multirun"}.intersection(rest)))


def hydra_app(name: str) -> Any:
    """The Hydra app of command `name` (config conf/<name>.yaml): its task function imports
    lipctl.commands.<name> and calls its `main(cfg)`, so Hydra's --help needs neither."""
    import hydra

    def task(cfg: Any) -> Any:
        return importlib.import_module(f"lipctl.commands.{name}").main(cfg)

    task.__module__ = f"lipctl.commands.{name}"  # Hydra names the job, and its .log, after it
    return hydra.main(config_path="pkg://lipctl.conf", config_name=name, version_base=None)(task)


def _action(command: str, rest: list[str]) -> tuple[str, str, list[str]]:
    """`plant serve ARGS` -> ("plant serve", "plant_serve", ARGS); a missing or unknown action
    word is a usage error."""
    actions = ACTIONS[command]
    word = rest[0] if rest else None
    if word in ("-h", "--help"):
        print(f"usage: lipctl {command} {{{'|'.join(actions)}}} [hydra overrides]")
        sys.exit(0)
    if word not in actions:
        problem = "missing action" if word is None else f"unknown action '{word}'"
        print(f"lipctl {command}: error: {problem}; choose from {', '.join(actions)}",
              file=sys.stderr)
        sys.exit(USAGE_EXIT_CODE)
    return f"{command} {word}", f"{command}_{word}", rest[1:]
