"""Scripted experiment files (TOML), run by `jaxq run FILE.toml --out DIR`.

    engine = "queue"                       # or "llm"
    title = "M/G/1 with predictions"
    metrics = ["mean_response_time", "stderr"]   # the summary table's metric columns

    [options]                              # fixed options, as on the command line (dest names)
    jobs = 20000
    service = "exponential"

    [axes]                                 # crossed, first slowest: a list or "start:stop:num"
    policy = ["fcfs", "spjf", "sprpt"]
    load = "0.5:0.95:10"

    zip = [["load", "sigma"]]              # (top level, before the tables) axes that go together

    [[points]]                             # explicit extra points, after the grid's
    policy = "srpt"
    load = 0.99

    [[plots]]                              # see jaxq.sweep.plots
    kind = "lines"
    x = "load"
    y = "mean_response_time"
    by = "policy"
    theory = true
"""

from __future__ import annotations

import dataclasses
import os
import tomllib

from jaxq._files import write_atomic
from jaxq.sweep import results
from jaxq.sweep.engines import ENGINES
from jaxq.sweep.grid import expand, parse_values

_KEYS = {"engine", "title", "metrics", "options", "axes", "zip", "points", "plots"}


@dataclasses.dataclass(frozen=True)
class Experiment:
    engine: str
    title: str
    metrics: tuple[str, ...]
    points: list[dict]
    axes: tuple[str, ...]  # the options that vary (for the summary table)
    plots: list[dict]

    def write_summary(self, out: str) -> str:
        """DIR/summary.md: a Markdown table of the varying options and the chosen metrics."""
        rows = results.load_table(out)
        varying = [a for a in self.axes if len({str(r.get(a)) for r in rows}) > 1]
        columns = varying + [m for m in self.metrics if m not in varying]
        missing = [c for c in columns if rows and c not in rows[0]]
        if missing:
            raise ValueError(f"{self.title}: no column {', '.join(missing)} in the results")
        lines = [f"# {self.title}", "", "| " + " | ".join(columns) + " |",
                 "|" + "---|" * len(columns)]
        for r in rows:
            lines.append("| " + " | ".join(_cell(r[c]) for c in columns) + " |")
        path = os.path.join(out, "summary.md")
        write_atomic(path, ("\n".join(lines) + "\n").encode())
        return path


def load_experiment(path: str) -> Experiment:
    with open(path, "rb") as f:
        try:
            spec = tomllib.load(f)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path}: {err}") from None
    unknown = set(spec) - _KEYS
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; keys: "
                         f"{', '.join(sorted(_KEYS))}")
    engine = spec.get("engine")
    if engine not in ENGINES:
        raise ValueError(f"{path}: engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    base = {k: _text(v) for k, v in spec.get("options", {}).items()}
    axes = {}
    for name, values in spec.get("axes", {}).items():
        if isinstance(values, list):
            axes[name] = [_text(v) for v in values]
        else:
            axes[name] = parse_values(name, _text(values))
    points = [{k: _text(v) for k, v in p.items()} for p in spec.get("points", [])]
    grid = expand(axes, spec.get("zip", []), points, base)
    varying = list(axes) + [k for p in points for k in p if k not in axes]
    return Experiment(engine=engine, title=spec.get("title", os.path.basename(path)),
                      metrics=tuple(spec.get("metrics", ())), points=grid,
                      axes=tuple(dict.fromkeys(varying)), plots=list(spec.get("plots", [])))


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
