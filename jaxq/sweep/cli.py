"""`jaxq sweep queue|llm ...`, `jaxq run FILE.toml`, `jaxq plot DIR`.

`jaxq sweep` takes the options of `jaxq queue` / `jaxq llm`, each of which may be a list
(`--load 0.5,0.7,0.9`) or a range (`--load 0.5:0.95:10`, both ends included): every listed
option is an axis of the grid, crossed with the others in the order given, unless `--zip`
pairs some of them up. A switch takes true/false (`--preemptive true,false`).
"""

from __future__ import annotations

import argparse
import os
import sys

from jaxq.sweep.engines import ENGINES
from jaxq.sweep.grid import expand, parse_values

# Options whose one value already holds commas: their lists are separated by ';'.
_SEPARATORS = {"weights": ";"}


def add_sweep_parsers(sub):
    s = sub.add_parser("sweep", help="run a grid of configurations into a results folder")
    engines = s.add_subparsers(dest="engine", required=True)
    for name, engine in ENGINES.items():
        p = engines.add_parser(name, help=f"a grid of `jaxq {name}` configurations")
        _add_listable_options(p, engine)
        p.add_argument("--zip", action="append", default=[], metavar="A,B",
                       help="options whose lists go together (equal lengths) as one axis")
        _add_output_options(p)

    r = sub.add_parser("run", help="run a scripted experiment file (grid, metrics, plots)")
    r.add_argument("file", help="experiment file (TOML)")
    _add_output_options(r)

    p = sub.add_parser("plot", help="draw the standard plots of a results folder")
    p.add_argument("out", metavar="DIR", help="a folder written by jaxq sweep or jaxq run")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _add_listable_options(parser, engine):
    """The engine's options, taking text (a value, a list or a range), None when not given."""
    template = argparse.ArgumentParser(add_help=False)
    engine.add_options(template)
    for action in template._actions:
        if not action.option_strings or action.dest == "json":
            continue
        help_text = (action.help or "").replace("%", "%%")
        if action.nargs == 0:  # a switch: alone it means true
            parser.add_argument(*action.option_strings, dest=action.dest, nargs="?",
                                const="true", default=None, help=help_text)
        else:
            parser.add_argument(*action.option_strings, dest=action.dest, default=None,
                                help=help_text)


def _add_output_options(p):
    p.add_argument("--out", required=True, metavar="DIR", help="results folder (resumable)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="configurations per chunk (default: from the device's memory)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    g = p.add_argument_group("several hosts (jax.distributed; all three, or --distributed)")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address")
    g.add_argument("--num-processes", type=int, default=None)
    g.add_argument("--process-id", type=int, default=None)
    g.add_argument("--distributed", action="store_true",
                   help="jax.distributed.initialize() from the cluster's environment "
                        "(SLURM, TPU pod, ...)")


_NOT_OPTIONS = {"command", "engine", "zip", "out", "chunk_size", "no_progress", "json",
                "coordinator", "num_processes", "process_id", "distributed"}


def grid_from_options(args) -> list[dict]:
    """The points of `jaxq sweep` options: single values form the base, lists the axes."""
    base, axes = {}, {}
    for name, text in vars(args).items():
        if text is None or name in _NOT_OPTIONS:
            continue
        values = parse_values(name, text, _SEPARATORS.get(name, ","))
        if len(values) == 1:
            base[name] = values[0]
        else:
            axes[name] = values
    zipped = [[n.strip().lstrip("-").replace("-", "_") for n in z.split(",")] for z in args.zip]
    return expand(axes, zipped, base=base)


def cmd_sweep(args) -> dict:
    _start_distributed(args)
    return _run(args.engine, grid_from_options(args), args, sys.argv)


def cmd_run(args) -> dict:
    import jax

    from jaxq.sweep.experiment import load_experiment

    _start_distributed(args)
    experiment = load_experiment(args.file)
    out = _run(experiment.engine, experiment.points, args, sys.argv)
    if jax.process_index() == 0:  # the one that wrote the table
        out["summary"] = experiment.write_summary(args.out)
        if experiment.plots:
            from jaxq.sweep.plots import plot_folder

            out["plots"] = plot_folder(args.out, experiment.plots)
    return out


def cmd_plot(args) -> dict:
    from jaxq.sweep.plots import plot_folder

    return {"out": args.out, "plots": plot_folder(args.out)}


def _run(engine, points, args, command) -> dict:
    from jaxq.sweep.runner import run_sweep

    progress = False if (args.json or args.no_progress) else None
    summary = run_sweep(engine, points, args.out, chunk_size=args.chunk_size,
                        command=list(command), progress=progress)
    if summary.flagged:
        print(f"jaxq: {summary.flagged} configuration(s) overflowed their slots or hit the "
              "iteration limit; their rows are kept and flagged (overflow, unfinished > 0): "
              "raise --capacity / --slots", file=sys.stderr)
    return {"out": summary.out, "configurations": summary.configurations,
            "chunks": summary.chunks, "chunks_run": summary.chunks_run,
            "chunks_reused": summary.chunks_reused, "flagged": summary.flagged,
            "files": [os.path.join(summary.out, f) for f in summary.files],
            "seconds": summary.seconds}


def _start_distributed(args):
    given = [args.coordinator, args.num_processes, args.process_id]
    if any(v is not None for v in given):
        if any(v is None for v in given):
            raise ValueError("--coordinator, --num-processes and --process-id go together")
        if not 0 <= args.process_id < args.num_processes:
            raise ValueError(f"--process-id must be in [0, {args.num_processes}), got "
                             f"{args.process_id}")
    if any(v is not None for v in given) or args.distributed:
        import jax

        # Processes on CPUs need a collectives backend for the barrier before the table.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        if args.coordinator is not None:
            jax.distributed.initialize(coordinator_address=args.coordinator,
                                       num_processes=args.num_processes,
                                       process_id=args.process_id)
        else:
            jax.distributed.initialize()
