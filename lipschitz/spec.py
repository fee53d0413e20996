"""One object that says how a network is held Lipschitz (the `lipschitz` config group), handed to
whichever network it constrains: a critic, a behaviour-cloning policy, a discriminator."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from torch import nn

from lipctl.lipschitz.family import check_bound, layer_family, takes_option
from lipctl.lipschitz.layers import ACTIVATIONS, lipschitz_mlp


@dataclass(frozen=True)
class LipschitzSpec:
    """How a network's layers are constrained.

    `layer`: the layer family (a registered name, e.g. "spectral", "soft_cap"); `L`: the certified
    global bound of the network (None: unconstrained, unless `layer_cap` is set); `level`: the
    bound is carried by a fixed output scale over unit layers, so the network can use it from
    the first update (otherwise `L` is split evenly over the layers, and a family whose layers
    cap rather than normalise must grow its raw weights to reach it); `layer_cap`: instead of
    `L`, every layer's own bound, with `free_output` leaving the output layer unconstrained
    (the old "spectral cap with a free head"). `activation`: the hidden activation ("maxmin" or
    "groupsort" keep gradient norms, so a network near its bound stays expressive; "relu"
    loses rank wherever units are off). `mode` and `options` go to the family's constructor
    (`mode` only to families that take it: "spectral" normalises or caps).
    The robust loss and certificate tier are a critic's: `robust_*` and `certificate_tier` (a
    spec for an actor, a BC policy or a discriminator carries them unused).
    """

    name: str = "none"
    layer: str = "spectral"
    L: float | None = None
    level: bool = True
    mode: str = "normalize"
    layer_cap: float | None = None
    free_output: bool = False
    activation: str = "relu"
    options: Mapping[str, Any] = field(default_factory=dict)
    robust_weight: float = 0.0
    robust_eps: float = 0.0
    robust_eps_units: str = "std"
    robust_norm: str = "l2"
    robust_steps: int = 1
    robust_batch: int | None = None
    certificate_tier: str = "eclipse"

    def __post_init__(self) -> None:
        """ValueError "<field>: <what is wrong>" for an impossible setting."""
        for key in ("L", "layer_cap"):
            try:
                check_bound(getattr(self, key), key)
            except ValueError as error:
                raise ValueError(f"{key}: {str(error).removeprefix(key + ' ')}") from None
        if self.L is not None and self.layer_cap is not None:
            raise ValueError("layer_cap: give either L (a global bound split over the layers) "
                             "or layer_cap, not both")
        if self.free_output and self.L is not None:
            raise ValueError("free_output: a global bound L needs every layer constrained; "
                             "use layer_cap")
        try:
            family = layer_family(self.layer)
        except ValueError as error:
            raise ValueError(f"layer: {error}") from None
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation: must be one of {', '.join(ACTIVATIONS)}, got "
                             f"{self.activation!r}")
        if self.mode != "normalize" and not takes_option(family, "mode"):
            raise ValueError(f"mode: layer family {self.layer!r} takes no mode")

    @classmethod
    def of(cls, config: LipschitzSpec | Mapping[str, Any] | None) -> LipschitzSpec:
        """A spec from itself, a mapping of its fields (a config node; unknown keys are an
        error), or None (unconstrained)."""
        if config is None:
            return cls()
        if isinstance(config, cls):
            return config
        known = {f.name for f in fields(cls)}
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"unknown lipschitz setting(s) {sorted(unknown)}; known: "
                             f"{', '.join(sorted(known))}")
        return cls(**{key: dict(value) if key == "options" else value
                      for key, value in config.items()})

    @property
    def constrained(self) -> bool:
        """Whether the layers are held to any bound."""
        return self.L is not None or self.layer_cap is not None

    def family_options(self) -> dict[str, Any]:
        """The keyword arguments for the family's constructor."""
        takes_mode = takes_option(layer_family(self.layer), "mode")
        return {**({"mode": self.mode} if takes_mode else {}), **self.options}

    def mlp(self, in_features: int, out_features: int, hidden: Sequence[int],
            activation: str | None = None, ensemble_size: int | None = None) -> nn.Sequential:
        """An MLP held to this spec (see `lipschitz_mlp`), with the spec's activation unless
        `activation` is given."""
        return lipschitz_mlp(in_features, out_features, hidden, bound=self.L,
                             activation=activation or self.activation, layer=self.layer,
                             ensemble_size=ensemble_size, layer_bound=self.layer_cap,
                             free_output=self.free_output,
                             level=self.level and self.L is not None, **self.family_options())
