"""Experiment grids over both engines: resumable results folders, sharding, plots.

    from jaxq.sweep import expand, run_sweep
    points = expand({"policy": ["fcfs", "sprpt"], "load": ["0.5", "0.7", "0.9"]})
    run_sweep("queue", points, "out/")   # out/results.csv: one row per configuration
"""

from jaxq.sweep.grid import expand, parse_values
from jaxq.sweep.runner import Summary, run_sweep

__all__ = ["Summary", "expand", "parse_values", "run_sweep"]
