"""Units a plant's data may come in, and their conversion to a process's units.

A small explicit table: each unit is a quantity and an affine map to that quantity's base unit
(base = scale * value + offset). Only absolute temperatures carry an offset (degC, degF); a
temperature difference, such as a deviation from a steady state, is in K or delta_degC
(delta_degF), which convert without one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class UnitError(ValueError):
    """An unknown unit, or one that cannot become the unit asked for; the message is one line."""


@dataclass(frozen=True)
class Unit:
    """A unit of `quantity`: base = scale * value + offset."""

    quantity: str
    scale: float
    offset: float = 0.0


UNITS: dict[str, Unit] = {
    "mm": Unit("length", 1e-3), "cm": Unit("length", 1e-2), "m": Unit("length", 1.0),
    "K": Unit("temperature", 1.0), "degC": Unit("temperature", 1.0, 273.15),
    "degF": Unit("temperature", 5 / 9, 273.15 - 32 * 5 / 9),
    "delta_degC": Unit("temperature", 1.0), "delta_degF": Unit("temperature", 5 / 9),
    "s": Unit("time", 1.0), "min": Unit("time", 60.0), "h": Unit("time", 3600.0),
    "mL": Unit("volume", 1e-6), "L": Unit("volume", 1e-3), "m3": Unit("volume", 1.0),
    "L/s": Unit("flow", 1e-3), "L/min": Unit("flow", 1e-3 / 60), "L/h": Unit("flow", 1e-3 / 3600),
    "m3/s": Unit("flow", 1.0), "m3/min": Unit("flow", 1 / 60), "m3/h": Unit("flow", 1 / 3600),
    "mol/m3": Unit("concentration", 1.0), "mmol/L": Unit("concentration", 1.0),
    "mol/L": Unit("concentration", 1e3), "kmol/m3": Unit("concentration", 1e3),
    "W": Unit("power", 1.0), "kW": Unit("power", 1e3), "MW": Unit("power", 1e6),
    "kJ/h": Unit("power", 1e3 / 3600), "MJ/h": Unit("power", 1e6 / 3600),
    "mV": Unit("voltage", 1e-3), "V": Unit("voltage", 1.0),
}


def same_quantity(name: str) -> list[str]:
    """The table's units of the quantity of unit `name` (none for a unit not in the table)."""
    quantity = UNITS[name].quantity if name in UNITS else None
    return [other for other, unit in UNITS.items() if unit.quantity == quantity]


def check_convertible(source: str, target: str) -> None:
    """UnitError unless values in `source` can become values in `target` (a unit is always
    convertible to itself, also one the table lacks)."""
    if source == target:
        return
    if target not in UNITS:
        raise UnitError(f"{target!r} is not a unit lipctl converts, so the data must be in "
                        f"{target!r} already")
    choices = ", ".join(same_quantity(target))
    if source not in UNITS:
        raise UnitError(f"unknown unit {source!r}; {UNITS[target].quantity} units: {choices}")
    if UNITS[source].quantity != UNITS[target].quantity:
        raise UnitError(f"{source!r} is a {UNITS[source].quantity} unit, not a "
                        f"{UNITS[target].quantity} unit like {target!r}; use one of {choices}")


def convert(values: np.ndarray, source: str, target: str) -> np.ndarray:
    """`values` in `source` as values in `target`; UnitError if they cannot be converted."""
    check_convertible(source, target)
    values = np.asarray(values, dtype=np.float64)
    if source == target:
        return values
    a, b = UNITS[source], UNITS[target]
    return (a.scale * values + a.offset - b.offset) / b.scale
