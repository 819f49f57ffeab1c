"""Plots of a results folder: `jaxq plot DIR` (the standard plots) and the [[plots]] tables of
`jaxq run FILE.toml`. Each plot is written to DIR/plots/NAME.png and DIR/plots/NAME.svg.

    plot_folder("out/")                                   # standard plots, chosen from the table
    plot_folder("out/", [{"kind": "lines", "x": "load", "y": "mean_response_time",
                          "by": "policy", "theory": True}])

A plot is a table of options with a `kind`:

lines     x (column), y (metric); by (a column or a list: one line per combination of their
          values), where ({column: value}: only the rows that match), theory (queue engine: the
          exact mean response time of each line's configurations, dashed), optimum (a star at
          each line's minimum), logy, title, name (the file stem). Rows sharing a line and an x
          (several seeds, say) are averaged; a point made of one row gets an error bar of 1.96
          times its standard error (stderr, ttft_stderr, latency_stderr) where the table has it.
heatmap   x, y (two columns), z (metric); where, logz, title, name. One cell per pair of values,
          z averaged over the rows that share it; a pair without rows stays blank.
cdf       LLM engine: the empirical CDF of the measured requests' latencies (DIR/latency.npz);
          by, where, logx, title, name. Requests of rows sharing a line are pooled.

matplotlib is optional (`pip install 'jaxq[plot]'`); figures are drawn without pyplot, so no
display or backend is needed.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import os
import re

import numpy as np

from jaxq._files import write_atomic
from jaxq.sweep import results

PLOTS = "plots"  # the subfolder of a results folder that holds the plots
FORMATS = ("png", "svg")
# The standard error of a metric's estimate, where the table has one.
STDERR = {"mean_response_time": "stderr", "ttft_mean": "ttft_stderr",
          "latency_mean": "latency_stderr"}
DEFAULT_METRICS = {"queue": ("mean_response_time",), "llm": ("latency_mean", "ttft_mean")}
# Standard x axes, in this order, wherever the column varies.
DEFAULT_AXES = {"queue": ("load", "sigma", "threshold", "c"),
                "llm": ("rate", "sigma", "threshold", "c")}
OPTIMUM_AXES = ("threshold",)  # standard line plots over these mark each line's minimum
MAX_DEFAULT_HEATMAPS = 8  # standard heatmaps: one per combination of the other varying columns
# LLM columns that the sweep fills in from the --gpu / --model preset (LLMEngine.build): they
# vary with the preset, so they are axes only where they vary on their own.
RESOLVED = ("kv_capacity", "host_capacity", "iter_base", "iter_per_prefill_token",
            "iter_per_decode_seq", "iter_per_kv_token", "swap_per_token")
# The options that jaxq.cli.build_model reads: all an exact mean response time depends on.
THEORY_OPTIONS = ("policy", "predictor", "service", "load", "alpha", "sigma", "threshold",
                  "preemptive", "c", "weights", "shape", "cv", "mean", "low", "high", "samples",
                  "arrival_cv", "servers", "dispatch", "d", "limit", "prediction_cost",
                  "cheap_cost", "cost_model")

_KEYS = {"lines": ("kind", "x", "y", "by", "where", "theory", "optimum", "logy", "title", "name"),
         "heatmap": ("kind", "x", "y", "z", "where", "logz", "title", "name"),
         "cdf": ("kind", "by", "where", "logx", "title", "name")}
_REQUIRED = {"lines": ("x", "y"), "heatmap": ("x", "y", "z"), "cdf": ()}
_SWITCHES = ("theory", "optimum", "logy", "logz", "logx")
MAX_DEFAULT_CDF_LINES = 12  # the standard latency CDF plot, when it has at most this many lines
_NAME = re.compile(r"\w[\w.=+-]*")
_NO_MATPLOTLIB = "plots need matplotlib: pip install 'jaxq[plot]'"


def plot_folder(out: str, specs: list[dict] | None = None) -> list[str]:
    """Draw the plots `specs` (default: the standard plots of the table) of the results folder
    `out` into out/plots/, as PNG and SVG; returns the paths written. Every spec is checked
    before anything is drawn."""
    engine, rows = _load(out)
    if specs is None:
        specs = default_specs(engine, rows, os.path.exists(os.path.join(out, results.LATENCIES)))
    checked = check_specs(specs, engine, rows)
    figure_class, rc_context = _matplotlib()
    paths = []
    for spec in checked:
        fig = figure_class(figsize=(6.4, 4.4), layout="constrained")
        draw = {"lines": _draw_lines, "heatmap": _draw_heatmap,
                "cdf": functools.partial(_draw_cdf, out=out)}[spec["kind"]]
        draw(fig, spec, _filter(rows, spec["where"]))
        paths += _save(fig, os.path.join(out, PLOTS, spec["name"]), rc_context)
    return paths


def _load(out: str) -> tuple[str, list[dict]]:
    """(the folder's engine, its table's typed rows)."""
    try:
        engine = results.read_manifest(out).get("engine")
        rows = results.load_table(out)
    except FileNotFoundError as err:
        raise ValueError(f"{out} is not a results folder (no {os.path.basename(err.filename)}): "
                         "write one with jaxq sweep or jaxq run") from None
    if engine not in DEFAULT_METRICS:
        raise ValueError(f"{out}: the manifest's engine must be one of "
                         f"{', '.join(DEFAULT_METRICS)}, got {engine!r}")
    if not rows:
        raise ValueError(f"{out}: {results.TABLE} has no rows")
    return engine, rows


def _matplotlib():
    """(matplotlib.figure.Figure, matplotlib.rc_context), or the ValueError that says how to
    install it."""
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError(_NO_MATPLOTLIB) from None
    return Figure, matplotlib.rc_context


def _save(fig, stem: str, rc_context) -> list[str]:
    """stem.png and stem.svg, each rendered to bytes and written atomically. The SVG carries no
    date and fixed element ids, so equal plots give equal files."""
    paths = []
    for fmt in FORMATS:
        buffer = io.BytesIO()
        with rc_context({"svg.hashsalt": "jaxq"}):
            fig.savefig(buffer, format=fmt, dpi=150,
                        metadata={"Date": None} if fmt == "svg" else None)
        path = f"{stem}.{fmt}"
        write_atomic(path, buffer.getvalue())
        paths.append(path)
    return paths


# Checking specs -------------------------------------------------------------------------------


def check_specs(specs: list[dict], engine: str, rows: list[dict]) -> list[dict]:
    """Each spec checked against the table and completed with its defaults (by: a list, where: a
    dict, switches: bools, title, name). Raises ValueError naming the plot, the key and what is
    valid."""
    if not isinstance(specs, list):
        raise ValueError(f"plots must be a list of tables, got {type(specs).__name__}")
    checked = [_check(spec, i, engine, rows) for i, spec in enumerate(specs)]
    names = [s["name"] for s in checked]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"several plots are named {', '.join(twice)}: give each its own name")
    return checked


def _check(spec, i: int, engine: str, rows: list[dict]) -> dict:
    where = f"plots[{i}]"
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: a table of options (kind, x, y, ...), got {spec!r}")
    kind = spec.get("kind")
    if kind not in _KEYS:
        raise ValueError(f"{where}: kind must be one of {', '.join(_KEYS)}, got {kind!r}")
    where += f" ({kind})"
    unknown = sorted(set(spec) - set(_KEYS[kind]))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; the keys of a {kind} "
                         f"plot: {', '.join(_KEYS[kind])}")
    missing = [k for k in _REQUIRED[kind] if k not in spec]
    if missing:
        raise ValueError(f"{where}: needs {' and '.join(missing)} (columns of the results)")
    by = spec.get("by", [])
    by = [by] if isinstance(by, str) else by
    filters = spec.get("where", {})
    if not isinstance(by, list):
        raise ValueError(f"{where}: by must be a column or a list of columns, got {by!r}")
    if not isinstance(filters, dict):
        raise ValueError(f"{where}: where must be a table {{column = value}}, got {filters!r}")
    for key, column in [(k, spec[k]) for k in _REQUIRED[kind]] + [("by", c) for c in by] + [
            ("where", c) for c in filters]:
        _check_column(where, key, column, rows)
    if kind == "cdf":
        if engine != "llm":
            raise ValueError(f"{where}: latency CDFs are of the LLM engine's requests; this "
                             f"folder's engine is {engine}")
    elif not _numeric(rows, spec["y" if kind == "lines" else "z"]):
        metric = spec["y" if kind == "lines" else "z"]
        raise ValueError(f"{where}: {metric!r} holds no numbers: give a metric column")
    for key in _SWITCHES:
        if key in spec and not isinstance(spec[key], bool):
            raise ValueError(f"{where}: {key} must be true or false, got {spec[key]!r}")
    for key in ("title", "name"):
        if key in spec and not isinstance(spec[key], str):
            raise ValueError(f"{where}: {key} must be text, got {spec[key]!r}")
    if spec.get("theory"):
        _check_theory(where, engine, spec["y"])
    _check_where(where, filters, rows)
    out = {"kind": kind, **{k: spec[k] for k in _REQUIRED[kind]}, "by": by, "where": filters,
           **{k: spec.get(k, False) for k in _SWITCHES if k in _KEYS[kind]}}
    out["title"] = spec.get("title", _default_title(out))
    out["name"] = spec.get("name", _default_name(out))
    if not _NAME.fullmatch(out["name"]):
        raise ValueError(f"{where}: name must be a file stem of letters, digits and . _ = + - "
                         f"(starting with a letter or digit), got {out['name']!r}")
    return out


def _check_column(where: str, key: str, column, rows: list[dict]):
    if not isinstance(column, str) or column not in rows[0]:
        raise ValueError(f"{where}: {key} = {column!r} is not a column of the results; columns: "
                         f"{', '.join(rows[0])}")


def _check_theory(where: str, engine: str, y: str):
    if engine != "queue":
        raise ValueError(f"{where}: theory is exact for the queue engine only; this folder's "
                         f"engine is {engine}")
    if y not in ("mean_response_time", "cost"):
        raise ValueError(f"{where}: theory is the exact mean response time (or the cost of "
                         f"predictions): it needs y = 'mean_response_time' or 'cost', got {y!r}")


def _check_where(where: str, filters: dict, rows: list[dict]):
    for column, value in filters.items():
        if not any(_matches(r[column], value) for r in rows):
            values = ", ".join(_fmt(v) for v in _distinct(rows, column))
            raise ValueError(f"{where}: where {column} = {value!r} matches no row; {column} "
                             f"takes {values}")
    if not _filter(rows, filters):
        raise ValueError(f"{where}: where {filters!r} matches no row")


def _default_title(spec: dict) -> str:
    what = {"lines": lambda: f"{spec['y']} vs {spec['x']}", "heatmap": lambda: spec["z"],
            "cdf": lambda: "latency CDF"}[spec["kind"]]()
    if spec["where"]:
        what += " (" + ", ".join(f"{k}={_fmt(v)}" for k, v in spec["where"].items()) + ")"
    return what


def _default_name(spec: dict) -> str:
    """lines: Y_vs_X[_by_A_B][_K=V...]; heatmap: Z_over_X_Y[_K=V...]; cdf:
    latency_cdf[_by_A_B][_K=V...]."""
    if spec["kind"] in ("lines", "cdf"):
        stem = f"{spec['y']}_vs_{spec['x']}" if spec["kind"] == "lines" else "latency_cdf"
        if spec["by"]:
            stem += "_by_" + "_".join(spec["by"])
    else:
        stem = f"{spec['z']}_over_{spec['x']}_{spec['y']}"
    stem += "".join(f"_{k}={results.format_value(v)}" for k, v in spec["where"].items())
    return re.sub(r"[^\w.=+-]", "_", stem)


# Standard plots -------------------------------------------------------------------------------


def default_specs(engine: str, rows: list[dict], latencies: bool = False) -> list[dict]:
    """The standard plots of a table: for each default metric, lines over each standard axis that
    varies (load/rate, sigma, threshold with its optimum, c; else the first varying numeric
    column, else the first varying column, else config), one line per combination of the other
    varying columns, with exact theory for the queue engine; and where two numeric columns vary,
    heatmaps over the first two; with the LLM engine's `latencies`, their CDFs, one line per
    combination of the varying columns (if there are few)."""
    varying = _varying(engine, rows)
    numeric = [c for c in varying if _numeric(rows, c)]
    axes = [c for c in DEFAULT_AXES[engine] if c in varying] or (numeric + varying + ["config"])[:1]
    specs = []
    for metric in [m for m in DEFAULT_METRICS[engine] if m in rows[0]]:
        for x in axes:
            spec = {"kind": "lines", "x": x, "y": metric, "by": [c for c in varying if c != x]}
            if engine == "queue":
                spec["theory"] = True
            if x in OPTIMUM_AXES:
                spec["optimum"] = True
            specs.append(spec)
        specs += _default_heatmaps(rows, varying, numeric[:2], metric)
    if latencies and len(_distinct_tuples(rows, varying)) <= MAX_DEFAULT_CDF_LINES:
        specs.append({"kind": "cdf", "by": varying})
    return specs


def _default_heatmaps(rows: list[dict], varying: list[str], xy: list[str], z: str) -> list[dict]:
    """Heatmaps over the columns xy (when there are two), one per combination of the other
    varying columns, so no cell mixes configurations (none if there would be too many)."""
    if len(xy) < 2:
        return []
    others = [c for c in varying if c not in xy]
    combos = _distinct_tuples(rows, others)
    if len(combos) > MAX_DEFAULT_HEATMAPS:
        return []
    specs = [{"kind": "heatmap", "x": xy[0], "y": xy[1], "z": z} for _ in combos]
    for spec, combo in zip(specs, combos):
        if others:
            spec["where"] = dict(zip(others, combo))
    return specs


def _varying(engine: str, rows: list[dict]) -> list[str]:
    """The option columns (seed aside) that take several values, in table order; a preset-filled
    column (RESOLVED) only where the other varying columns do not determine it."""
    from jaxq.sweep.runner import option_parser

    options = {a.dest for a in option_parser(engine)._actions}
    varying = [c for c in rows[0] if c in options and c != "seed" and len(_distinct(rows, c)) > 1]
    free = [c for c in varying if c not in RESOLVED]
    return [c for c in varying if c not in RESOLVED or not _determined(rows, c, free)]


def _determined(rows: list[dict], column: str, others: list[str]) -> bool:
    """Whether rows equal in `others` are equal in `column`."""
    seen = {}
    for r in rows:
        if seen.setdefault(tuple(r[c] for c in others), r[column]) != r[column]:
            return False
    return True


# Lines ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Series:
    """One line of a lines plot: its points in x order, y averaged over the rows at each x."""
    label: str  # "policy=sprpt, load=0.5" ('' without by)
    x: list  # (points,) the distinct x values (numbers ascending; else in table order)
    y: np.ndarray  # (points,) float: the mean of y's finite values at each x (NaN if none)
    err: np.ndarray  # (points,) float: 1.96 x stderr where one row makes the point, else NaN
    rows: list[dict]  # the line's rows


def series(rows: list[dict], x: str, y: str, by: list[str] = ()) -> list[Series]:
    """The lines of a lines plot: one per combination of the `by` columns' values (in table
    order). Rows without an x value are left out."""
    stderr = STDERR.get(y) if STDERR.get(y) in rows[0] else None
    out = []
    for label, members in _lines([r for r in rows if r[x] is not None], by):
        at = _by_x(members, x)
        err = [1.96 * _float(at[v][0][stderr]) if stderr and len(at[v]) == 1 else math.nan
               for v in at]
        out.append(Series(label=label, x=list(at),
                          y=np.array([_mean(r[y] for r in at[v]) for v in at]),
                          err=np.array(err), rows=members))
    return out


def theory_curve(rows: list[dict], x: str, y: str = "mean_response_time"
                 ) -> tuple[list, np.ndarray] | None:
    """(the distinct x values, the exact value of y, mean_response_time or cost, at each: the
    mean over that x's rows) for the rows of one queue-engine line; a point is NaN where theory
    has no formula for its configuration (a non-Poisson arrival process, the linear policy, load
    >= 1, server-time prediction costs, ...), and the curve None where no point has one."""
    if y not in ("mean_response_time", "cost"):
        return None
    at = _by_x([r for r in rows if r[x] is not None], x)
    values = np.array([_mean(_exact(tuple(r.get(k) for k in THEORY_OPTIONS), y) for r in at[v])
                       for v in at])
    return (list(at), values) if np.isfinite(values).any() else None


@functools.lru_cache(maxsize=4096)
def _exact(options: tuple, y: str = "mean_response_time") -> float:
    """The exact mean response time (or cost) of the configuration with these THEORY_OPTIONS
    values, or NaN where the theory has none."""
    import argparse

    from jaxq import theory
    from jaxq.cli import build_dispatch, build_model, build_prediction_cost

    args = argparse.Namespace(**dict(zip(THEORY_OPTIONS, options)))
    if args.arrival_cv != 1.0:
        return math.nan
    # results written before these options existed
    args.limit = 1.0 if args.limit is None else args.limit
    args.cheap_cost = args.cheap_cost or 0.0
    args.cost_model = args.cost_model or "external"
    try:
        service, predictor, policy, _ = build_model(args)
        cost = build_prediction_cost(args)
        servers = 1 if args.servers is None else int(args.servers)  # results before --servers
        if cost is None:
            return theory.mean_response_time(policy, service, predictor, args.load, servers,
                                             build_dispatch(args))
        return theory.cost_terms(policy, service, predictor, args.load, cost, servers,
                                 build_dispatch(args))[y]
    except (ValueError, NotImplementedError, TypeError, ArithmeticError, OSError):
        return math.nan


def _draw_lines(fig, spec: dict, rows: list[dict]):
    ax = fig.subplots()
    x, order = spec["x"], _x_order(rows, spec["x"])
    numeric = _numeric(rows, x)

    def position(values):  # numbers where x is numeric, else the index in `order`
        return np.array([v if numeric else order.index(v) for v in values], dtype=float)

    bars = False
    for s in series(rows, x, spec["y"], spec["by"]):
        has_err = bool(np.isfinite(s.err).any())
        bars |= has_err
        drawn = ax.errorbar(position(s.x), s.y, yerr=s.err if has_err else None, marker="o",
                            ms=4, capsize=3, label=s.label or None)
        color = drawn.lines[0].get_color()
        curve = theory_curve(s.rows, x, spec["y"]) if spec["theory"] else None
        if curve is not None:
            ax.plot(position(curve[0]), curve[1], ls="--", color=color)
        if spec["optimum"] and np.isfinite(s.y).any():
            best = int(np.nanargmin(s.y))
            ax.plot(position(s.x)[best], s.y[best], marker="*", ms=14, color=color, mec="black",
                    ls="none")
    if spec["theory"]:
        ax.plot([], [], ls="--", color="gray", label="exact theory")
    if spec["optimum"]:
        ax.plot([], [], marker="*", ms=10, color="gray", mec="black", ls="none", label="minimum")
    if not numeric:
        ax.set_xticks(range(len(order)), [_fmt(v) for v in order])
    ax.set_xlabel(x)
    ax.set_ylabel(spec["y"] + (" (bars: ±1.96 stderr)" if bars else ""))
    if spec["logy"]:
        ax.set_yscale("log")
    ax.set_title(spec["title"])
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


# Heatmaps -------------------------------------------------------------------------------------


def heatmap_grid(rows: list[dict], x: str, y: str, z: str) -> tuple[list, list, np.ndarray]:
    """(the distinct x values, the distinct y values, z as a (len(ys), len(xs)) float array):
    each cell the mean of z over the rows at that (x, y), NaN where there are none. Values are
    ascending for numeric columns, else in table order; rows without an x or y are left out."""
    rows = [r for r in rows if r[x] is not None and r[y] is not None]
    xs, ys = _x_order(rows, x), _x_order(rows, y)
    cells = {}
    for r in rows:
        cells.setdefault((r[x], r[y]), []).append(r[z])
    grid = np.full((len(ys), len(xs)), math.nan)
    for (vx, vy), values in cells.items():
        grid[ys.index(vy), xs.index(vx)] = _mean(values)
    return xs, ys, grid


def _draw_heatmap(fig, spec: dict, rows: list[dict]):
    from matplotlib.colors import LogNorm

    ax = fig.subplots()
    xs, ys, grid = heatmap_grid(rows, spec["x"], spec["y"], spec["z"])
    mesh = ax.pcolormesh(np.arange(len(xs) + 1) - 0.5, np.arange(len(ys) + 1) - 0.5,
                         np.ma.masked_invalid(grid), norm=LogNorm() if spec["logz"] else None,
                         cmap="viridis")
    fig.colorbar(mesh, ax=ax, label=spec["z"])
    for axis, values in ((ax.xaxis, xs), (ax.yaxis, ys)):
        ticks = range(0, len(values), max(1, math.ceil(len(values) / 12)))
        axis.set_ticks(list(ticks), [_fmt(values[i]) for i in ticks])
    ax.set_xlabel(spec["x"])
    ax.set_ylabel(spec["y"])
    ax.set_title(spec["title"])


def _draw_cdf(fig, spec: dict, rows: list[dict], out: str):
    ax = fig.subplots()
    latencies = results.load_latencies(out)
    for label, values in cdf_lines(rows, spec["by"], latencies):
        ax.step(values, np.arange(1, len(values) + 1) / len(values), where="post",
                label=label or None)
    if spec["logx"]:
        ax.set_xscale("log")
    ax.set_xlabel("latency (s)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(spec["title"])
    ax.grid(alpha=0.3)
    if spec["by"]:
        ax.legend(fontsize="small")


def cdf_lines(rows: list[dict], by: list[str], latencies: dict) -> list[tuple[str, np.ndarray]]:
    """(label, the sorted finished latencies of the line's rows pooled) per combination of the
    `by` columns' values, in table order; requests that did not finish (NaN) are left out."""
    out = []
    for label, members in _lines(rows, by):
        values = np.concatenate([latencies[r["config"]] for r in members])
        out.append((label, np.sort(values[np.isfinite(values)])))
    return out


# Table helpers --------------------------------------------------------------------------------


def _lines(rows: list[dict], by: list[str]) -> list[tuple[str, list[dict]]]:
    """(label "a=1, b=x", its rows) per combination of the `by` columns' values, in table
    order."""
    lines = {}
    for r in rows:
        lines.setdefault(tuple(r[c] for c in by), []).append(r)
    return [(", ".join(f"{c}={_fmt(v)}" for c, v in zip(by, key)), members)
            for key, members in lines.items()]


def _filter(rows: list[dict], where: dict) -> list[dict]:
    return [r for r in rows if all(_matches(r[c], v) for c, v in where.items())]


def _matches(cell, value) -> bool:
    """A cell equals a where value: as a value (0.7 == 0.7) or as the table's text ("0.7")."""
    return cell == value or results.format_value(cell) == str(value)


def _numeric(rows: list[dict], column: str) -> bool:
    """Whether the column holds numbers (ints or floats, not bools), missing values aside."""
    values = [r[column] for r in rows if r[column] is not None]
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                for v in values)


def _distinct(rows: list[dict], column: str) -> list:
    """The column's distinct values in table order."""
    return list(dict.fromkeys(r[column] for r in rows))


def _distinct_tuples(rows: list[dict], columns: list[str]) -> list[tuple]:
    return list(dict.fromkeys(tuple(r[c] for c in columns) for r in rows))


def _x_order(rows: list[dict], column: str) -> list:
    """The column's distinct values, missing ones aside: ascending if numeric, else table order."""
    values = [v for v in _distinct(rows, column) if v is not None]
    return sorted(values) if _numeric(rows, column) else values


def _by_x(rows: list[dict], x: str) -> dict:
    """{x value: its rows}, in _x_order."""
    at = {v: [] for v in _x_order(rows, x)}
    for r in rows:
        at[r[x]].append(r)
    return at


def _float(value) -> float:
    return math.nan if value is None else float(value)


def _mean(values) -> float:
    """The mean of the finite values (None is missing), NaN if there are none."""
    finite = [v for v in map(_float, values) if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    return "none" if value is None else str(value)
