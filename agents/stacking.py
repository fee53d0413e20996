"""Between a stacked learner's state (S seeds as [S, ...] or [2S, ...] tensors) and the states
the separate runs of its seeds hold: seed k's slice, and the stack of S such states.

A learner says how each top-level entry of its `state_dict` stacks (`Stacking`): "seed" (one
row per seed along the leading dimension: actors, temperatures, their optimisers), "twin" (two
rows per seed: twin critics and their optimiser), "list" (a list with one item per seed: random
streams) or "shared" (the same for every seed: counters, unused statistics).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor

Stacking = Literal["seed", "twin", "list", "shared"]
ROWS: dict[str, int] = {"seed": 1, "twin": 2}
SHARED_STATE = frozenset({"step"})  # optimiser state every seed has in common (its step count)


def _take(tree: Any, k: int, rows: int) -> Any:
    """Seed k's part: its rows of every tensor; scalars (only shared step counts are scalars
    in a stacked state) as they are."""
    if isinstance(tree, Tensor):
        if tree.dim() == 0:
            return tree.clone()
        part = tree[k * rows:(k + 1) * rows]
        return part[0].clone() if rows == 1 else part.clone()
    if isinstance(tree, Mapping):
        return {key: _take(value, k, rows) for key, value in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_take(value, k, rows) for value in tree)
    return tree


def _stack(trees: list[Any], rows: int, where: str) -> Any:
    """Stack per-seed values: tensors along a new (rows=1) or the leading dimension, except
    optimiser step counts (SHARED_STATE), which every seed must share, as it must share every
    value that is not a tensor."""
    first = trees[0]
    if isinstance(first, Tensor):
        if where.rpartition(".")[2] in SHARED_STATE:
            _require_equal(trees, where)
            return first.clone()
        return torch.stack(trees) if rows == 1 else torch.cat(trees)
    if isinstance(first, Mapping):
        return {key: _stack([tree[key] for tree in trees], rows, f"{where}.{key}")
                for key in first}
    if isinstance(first, list | tuple):
        return type(first)(_stack(list(items), rows, f"{where}[{i}]")
                           for i, items in enumerate(zip(*trees, strict=True)))
    _require_equal(trees, where)
    return first


def _require_equal(values: list[Any], where: str) -> None:
    first = values[0]
    for value in values[1:]:
        same = torch.equal(first, value) if isinstance(first, Tensor) else first == value
        if not same:
            raise ValueError(f"{where} differs between the seeds' states ({first!r} vs "
                             f"{value!r}); only states that stepped together stack")


def seed_state(state: Mapping[str, Any], stacking: Mapping[str, Stacking], k: int
               ) -> dict[str, Any]:
    """Seed k's state, as the separate run of that seed would hold it."""
    out = {}
    for key, value in state.items():
        kind = stacking[key]
        if kind == "shared":
            out[key] = value
        elif kind == "list":
            out[key] = [value[k]]
        else:
            out[key] = _take(value, k, ROWS[kind])
    return out


def stack_states(states: list[Mapping[str, Any]], stacking: Mapping[str, Stacking]
                 ) -> dict[str, Any]:
    """The stacked state of the seeds whose separate states are `states` (seed order)."""
    out = {}
    for key in states[0]:
        values = [state[key] for state in states]
        kind = stacking[key]
        if kind == "shared":
            _require_equal(values, key)
            out[key] = values[0]
        elif kind == "list":
            out[key] = [item for value in values for item in value]
        else:
            out[key] = _stack(values, ROWS[kind], key)
    return out
