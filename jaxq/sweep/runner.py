"""Run a grid of configurations through one engine, chunk by chunk, resumably.

    summary = run_sweep("queue", points, "out/", base={"jobs": "20000"})

Points are {option: value} with the options of `jaxq queue` / `jaxq llm` (dest names). Each point
is parsed and built exactly as that command would, so a row equals the command's --json output
for the same options. Configurations that share their pytree structure and every static option
form a group, run by one compiled, vmapped call per chunk of at most `chunk_size`; a chunk's file
is named by a hash of its configurations, so a rerun finds what is done and runs the rest. With
several JAX processes (jax.distributed) chunk j is run by process j mod the process count, and
process 0 writes the table once all are done.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time

import numpy as np

from jaxq._files import write_atomic
from jaxq.sweep import results
from jaxq.sweep.engines import ENGINES, stack, structure
from jaxq.sweep.memo import PointParser
from jaxq.sweep.progress import ProgressBar

# Configurations per chunk and device at most: a chunk is also the unit of progress and resume.
MAX_CHUNK_PER_DEVICE = 1024
# Options that are not part of a configuration.
_NOT_PARAMETERS = ("json", "per_request")


@dataclasses.dataclass(frozen=True)
class Chunk:
    id: str
    group: int
    configs: tuple[int, ...]  # grid positions


@dataclasses.dataclass(frozen=True)
class Summary:
    out: str
    configurations: int
    chunks: int
    chunks_run: int  # by this process, this time
    chunks_reused: int  # found finished from an earlier run
    seconds: float
    files: tuple[str, ...]  # written into `out` by this process (the table: process 0 only)
    flagged: int  # configurations with overflow or unfinished work (rows kept, flagged)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise ValueError(message)


def option_parser(engine: str) -> argparse.ArgumentParser:
    parser = _Parser(prog=f"jaxq sweep {engine}", add_help=False)
    ENGINES[engine].add_options(parser)
    return parser


def point_argv(parser: argparse.ArgumentParser, point: dict) -> list[str]:
    """The command line of a point: values are text (or TOML values)."""
    actions = {a.dest: a for a in parser._actions}
    argv = []
    for name, value in point.items():
        action = actions.get(name)
        if action is None or name in _NOT_PARAMETERS:
            raise ValueError(f"unknown option {name!r}; options: "
                             f"{', '.join(d for d in actions if d not in _NOT_PARAMETERS)}")
        flag = action.option_strings[0]
        if action.nargs == 0:  # a switch: --preemptive, --prefix-cache, ...
            if _truth(name, value):
                argv.append(flag)
        else:
            argv += [flag, str(value)]
    return argv


def _truth(name, value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"--{name.replace('_', '-')} is a switch: give true or false, got {value!r}")


def plan(engine: str, points: list[dict], chunk_size: int | None = None):
    """(parsed options per point, built configurations, their groups' static options, chunks).
    Every point is validated here, before anything is traced."""
    parser = option_parser(engine)
    parse = PointParser(parser, lambda point: point_argv(parser, point))
    build = ENGINES[engine].builder()
    parsed, systems, keys = [], [], []
    for i, point in enumerate(points):
        try:
            args = parse(point)
            system, static = build(args)
        except (ValueError, TypeError, OSError) as err:
            raise ValueError(f"configuration {i} ({_describe(point)}): {err}") from None
        parsed.append(args)
        systems.append(system)
        keys.append((structure(system), static))
    groups, statics = {}, []
    for i, key in enumerate(keys):
        if key not in groups:
            groups[key] = []
            statics.append(key[1])
        groups[key].append(i)
    chunks = []
    for g, members in enumerate(groups.values()):
        size = chunk_size or default_chunk_size(engine, parsed[members[0]])
        for start in range(0, len(members), size):
            configs = tuple(members[start:start + size])
            chunks.append(Chunk(_chunk_id(engine, [_parameters(parsed[i]) for i in configs]),
                                g, configs))
    return parsed, systems, statics, chunks


def run_sweep(engine: str, points: list[dict], out: str, *, chunk_size: int | None = None,
              command: list[str] | None = None, progress: bool | None = None) -> Summary:
    """Run every point not already finished in `out`; write the table. progress: a bar on
    standard error (default: when it is a terminal)."""
    import jax

    import jaxq

    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    if not points:
        raise ValueError("the grid has no points")
    start = time.perf_counter()
    parsed, systems, statics, chunks = plan(engine, points, chunk_size)
    process, processes = jax.process_index(), jax.process_count()
    mine = [c for j, c in enumerate(chunks) if j % processes == process]
    manifest = {
        "command": command, "engine": engine, "jaxq_version": jaxq.__version__,
        "jax_version": jax.__version__, "device_kind": jax.local_devices()[0].device_kind,
        "platform": jax.default_backend(), "devices_per_process": jax.local_device_count(),
        "processes": processes, "configurations": len(points),
        "seeds": sorted({int(a.seed) for a in parsed}),
        "chunks": [{"id": c.id, "configs": len(c.configs)} for c in chunks],
        "complete": False,
    }
    if process == 0:
        os.makedirs(out, exist_ok=True)
        results.write_manifest(out, manifest)
    bar = ProgressBar(len(mine), sum(len(c.configs) for c in mine),
                      enabled=sys.stderr.isatty() if progress is None else progress)
    ran = reused = 0
    for chunk in mine:
        path = results.chunk_path(out, chunk.id)
        latencies_path = results.chunk_path(out, chunk.id, "npz")
        if os.path.exists(path) and (not ENGINES[engine].latencies
                                     or os.path.exists(latencies_path)):
            reused += 1
            bar.update(len(chunk.configs), reused=True)
            continue
        batch = stack([systems[i] for i in chunk.configs])
        metrics, latencies = ENGINES[engine].run(batch, statics[chunk.group])
        rows = [{"config": i, **_parameters(parsed[i]), **m}
                for i, m in zip(chunk.configs, metrics)]
        if latencies is not None:  # first: a chunk whose table exists is complete
            results.write_latencies(latencies_path, latencies)
        write_atomic(path, results.rows_to_csv(list(rows[0]), rows))
        ran += 1
        bar.update(len(chunk.configs))
    bar.close()
    if processes > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jaxq sweep: every chunk written")
    files, flagged = [], 0
    if process == 0:
        columns, table = _gather(out, chunks)
        files = results.write_table(out, columns, table)
        if ENGINES[engine].latencies:
            files.append(_gather_latencies(out, chunks))
        for name in os.listdir(os.path.join(out, "chunks")):
            if name.endswith(".tmp"):  # left by a process killed while writing
                os.remove(os.path.join(out, "chunks", name))
        flagged = _flagged(columns, table)
        manifest.update(complete=True, flagged_configurations=flagged,
                        seconds=time.perf_counter() - start)
        results.write_manifest(out, manifest)
        files.append(results.MANIFEST)
    return Summary(out=out, configurations=len(points), chunks=len(chunks), chunks_run=ran,
                   chunks_reused=reused, seconds=time.perf_counter() - start,
                   files=tuple(files), flagged=flagged)


def default_chunk_size(engine: str, args) -> int:
    """Configurations per chunk: on each device, a quarter of its memory over the engine's
    per-configuration footprint, at most MAX_CHUNK_PER_DEVICE; times the device count."""
    import jax

    devices = jax.local_devices()
    budget = _device_memory(devices) // 4
    per_device = int(np.clip(budget // ENGINES[engine].footprint(args), 1,
                             MAX_CHUNK_PER_DEVICE))
    return per_device * len(devices)


def _device_memory(devices) -> int:
    """Bytes one of these devices may use: an accelerator's own memory; for CPU devices, which
    share the host's memory, their share of it."""
    stats = devices[0].memory_stats() if hasattr(devices[0], "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    try:
        host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        host = 8 << 30
    return host // len(devices)


def _gather(out, chunks) -> tuple[list[str], list[list[str]]]:
    """Every chunk's rows, in grid order."""
    columns, rows = None, []
    for chunk in chunks:
        path = results.chunk_path(out, chunk.id)
        if not os.path.exists(path):
            raise RuntimeError(f"chunk {chunk.id} ({len(chunk.configs)} configurations) has no "
                               f"results in {out}: a process stopped before writing it; run the "
                               "same command again to finish")
        cols, chunk_rows = results.read_csv(path)
        columns = columns or cols
        if cols != columns or len(chunk_rows) != len(chunk.configs):
            raise RuntimeError(f"{path} does not hold this sweep's chunk: remove it and run the "
                               "same command again")
        # Rows in the chunk's order; two chunks of equal configurations share one file.
        rows += [[str(config)] + row[1:] for config, row in zip(chunk.configs, chunk_rows)]
    rows.sort(key=lambda r: int(r[0]))
    return columns, rows


def _gather_latencies(out, chunks) -> str:
    """DIR/latency.npz: one array per configuration (key: its config number), its measured
    requests' latencies."""
    arrays = {}
    for chunk in chunks:
        per_config = results.read_latencies(results.chunk_path(out, chunk.id, "npz"))
        arrays.update(zip(chunk.configs, per_config))
    configs = sorted(arrays)
    results.write_latencies(os.path.join(out, results.LATENCIES), [arrays[c] for c in configs],
                            configs)
    return results.LATENCIES


def _flagged(columns, rows) -> int:
    """Rows whose run overflowed its slots or stopped with work left."""
    flags = [columns.index(c) for c in ("overflow", "unfinished") if c in columns]
    return sum(any(r[i] not in ("", "0") for i in flags) for r in rows)


def _parameters(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k not in _NOT_PARAMETERS}


def _chunk_id(engine, parameters: list[dict]) -> str:
    import jaxq

    text = json.dumps([engine, jaxq.__version__, parameters], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _describe(point: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items()) or "all defaults"
