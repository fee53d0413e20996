"""Optional dependencies: which extra of lipctl brings which modules, and one clear line when a
feature needs an extra that is not installed. Light on purpose: the CLI checks extras before it
imports torch."""

from __future__ import annotations

from importlib.util import find_spec

# extra -> the modules it brings (the names in pyproject.toml's [project.optional-dependencies])
EXTRAS: dict[str, tuple[str, ...]] = {
    "deploy": ("asyncua",),
    "export": ("onnx", "onnxruntime", "onnxscript"),
    "wandb": ("wandb",),
    "tensorboard": ("tensorboard",),
    "slurm": ("hydra_plugins.hydra_submitit_launcher",),
    "sb3": ("stable_baselines3",),
}


# Hydra launchers (conf/hydra/launcher) whose plugin comes with an extra
LAUNCHER_EXTRAS = {"slurm": "slurm", "submitit_local": "slurm"}


class MissingExtra(RuntimeError):
    """A feature needs an optional dependency that is not installed."""

    def __init__(self, feature: str, extra: str, missing: list[str]):
        super().__init__(f"{feature} needs lipctl[{extra}] ({', '.join(missing)} not installed): "
                         f"pip install 'lipctl[{extra}]'")
        self.extra = extra


def missing_modules(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here."""
    missing = []
    for module in EXTRAS[extra]:
        try:
            found = find_spec(module) is not None
        except ModuleNotFoundError:  # a missing parent package (hydra_plugins)
            found = False
        if not found:
            missing.append(module.split(".")[-1])
    return missing


def require_extra(extra: str, feature: str) -> None:
    """Raise MissingExtra naming `extra` when any of its modules is missing."""
    missing = missing_modules(extra)
    if missing:
        raise MissingExtra(feature, extra, missing)
