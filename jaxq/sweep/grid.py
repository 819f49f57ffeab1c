"""Grids of configurations: named axes crossed (Cartesian product), zipped axes, explicit points.

A point is a dict {option: value} keyed by the command-line option names of `jaxq queue` or
`jaxq llm` with dashes as underscores (load, sigma, kv_capacity, ...). The grid's order is fixed:
the first axis varies slowest, as in nested loops written in the order the axes were given, and
explicit points follow, in their order. A point's position in that order is its `config` number.
"""

from __future__ import annotations

import itertools

import numpy as np


def parse_values(name: str, text: str, separator: str = ",") -> list[str]:
    """An option's text as a list of values: `a,b,c` (a list) or `start:stop:num` (num values
    evenly spaced from start to stop, both included), else the one value. Values stay text: the
    option's own type converts them."""
    if separator in text:
        values = [v.strip() for v in text.split(separator)]
        if any(v == "" for v in values):
            raise ValueError(f"--{_dashed(name)}: empty value in the list {text!r}")
        return values
    parts = text.split(":")
    if len(parts) == 3 and all(_is_number(p) for p in parts):
        start, stop, num = float(parts[0]), float(parts[1]), parts[2]
        if not num.isdigit() or int(num) < 1:
            raise ValueError(f"--{_dashed(name)}: a range start:stop:num needs num an integer "
                             f">= 1, got {text!r}")
        values = np.linspace(start, stop, int(num))
        if all(_is_int(p) for p in parts[:2]) and np.all(values == np.round(values)):
            return [str(int(v)) for v in values]
        return [repr(float(v)) for v in values]
    return [text]


def expand(axes: dict[str, list], zipped: list[list[str]] = (),
           points: list[dict] = (), base: dict | None = None) -> list[dict]:
    """Every point of the grid, each with `base` underneath.

    axes: {option: values}, crossed in their order. zipped: groups of option names from `axes`
    whose values go together (equal lengths) as one axis, placed where its first name is.
    points: explicit points, after the grid's (they may set any option).
    """
    base = dict(base or {})
    groups = _axis_groups(axes, zipped)
    out = []
    if groups:
        for combo in itertools.product(*[range(len(axes[g[0]])) for g in groups]):
            point = dict(base)
            for group, i in zip(groups, combo):
                for name in group:
                    point[name] = axes[name][i]
            out.append(point)
    elif not points:
        out.append(dict(base))
    for p in points:
        out.append({**base, **p})
    return out


def _axis_groups(axes, zipped) -> list[list[str]]:
    zipped = [list(z) for z in zipped]
    seen = {}
    for z in zipped:
        for name in z:
            if name not in axes:
                raise ValueError(f"zipped option {name!r} is not an axis of the grid (axes: "
                                 f"{', '.join(axes) or 'none'})")
            if name in seen:
                raise ValueError(f"option {name!r} is in two zipped groups")
            seen[name] = z
        lengths = {name: len(axes[name]) for name in z}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"zipped options need as many values each, got {lengths}")
    groups, placed = [], set()
    for name in axes:
        group = seen.get(name, [name])
        if group[0] in placed:
            continue
        placed.add(group[0])
        groups.append(group)
    return groups


def _dashed(name: str) -> str:
    return name.replace("_", "-")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text.strip() != ""


def _is_int(text: str) -> bool:
    return text.strip().lstrip("+-").isdigit()
