"""What the sweep layer costs over one vmapped call, and how long a 10,000-configuration queue
sweep takes.

Two measurements on the M/M/1 queue (sprpt, lognormal predictions, one replica each):

1. Overhead: the same B configurations (loads x sigmas) run once as one batched jaxq.simulate
   call on a System built directly with arrays (the baseline), and once through the sweep layer
   (`run_sweep`: parsing and validating every point, building and stacking its System, writing
   the chunk and the table), in one chunk of B. Both after a first, compiling call; the ratio is
   sweep seconds over baseline seconds. Also reported: the sweep with its default chunk size.
2. Scale: a grid of 10,000 configurations (100 loads x 100 sigmas) of --jobs measured jobs each,
   through `run_sweep` with its default chunks, from an empty folder (compilation included).

    python scripts/bench_sweep.py            # both, a few minutes on 2 cores
    python scripts/bench_sweep.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time

from _machine import cores, cpu_model  # scripts/, beside this file


def init_jax():
    import jax

    jax.config.update("jax_num_cpu_devices", cores())
    return jax


def grid(loads, sigmas, jobs):
    from jaxq.sweep import expand

    return expand({"load": [repr(float(x)) for x in loads],
                   "sigma": [repr(float(s)) for s in sigmas]},
                  base={"policy": "sprpt", "predictor": "lognormal", "jobs": str(jobs),
                        "replicas": "1", "capacity": "128"})


def baseline(loads, sigmas, jobs):
    """One batched simulate call over the same configurations, built directly."""
    import jax.numpy as jnp

    import jaxq

    load, sigma = jnp.meshgrid(jnp.asarray(loads), jnp.asarray(sigmas), indexing="ij")
    system = jaxq.System(load.ravel(), predictor=jaxq.LognormalNoise(sigma.ravel()),
                         policy=jaxq.SPRPT())
    return jaxq.simulate(system, jobs=jobs, replicas=1, capacity=128, key=0)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def measure_overhead(n_loads, n_sigmas, jobs, folder):
    import numpy as np

    from jaxq.sweep import run_sweep

    loads = np.linspace(0.5, 0.95, n_loads)
    sigmas = np.linspace(0.0, 2.0, n_sigmas)
    points = grid(loads, sigmas, jobs)
    b = len(points)
    baseline(loads, sigmas, jobs)  # compile
    base_s, base = timed(lambda: baseline(loads, sigmas, jobs))
    run_sweep("queue", points, os.path.join(folder, "warm"), chunk_size=b, progress=False)
    one_s, _ = timed(lambda: run_sweep("queue", points, os.path.join(folder, "one"),
                                       chunk_size=b, progress=False))
    default_s, summary = timed(lambda: run_sweep("queue", points, os.path.join(folder, "dflt"),
                                                 progress=False))
    # The sweep's rows are the baseline's numbers.
    from jaxq.sweep.results import load_table
    rows = load_table(os.path.join(folder, "one"))
    same = bool(np.array_equal(np.array([r["mean_response_time"] for r in rows]),
                               np.asarray(base.mean_response_time, np.float64)))
    return {"configurations": b, "jobs": jobs, "baseline_s": base_s, "sweep_one_chunk_s": one_s,
            "sweep_default_chunks_s": default_s, "default_chunks": summary.chunks,
            "ratio_one_chunk": one_s / base_s, "ratio_default": default_s / base_s,
            "rows_equal_baseline": same}


def measure_scale(n_loads, n_sigmas, jobs, folder):
    import numpy as np

    from jaxq.sweep import run_sweep
    from jaxq.sweep.runner import plan

    points = grid(np.linspace(0.5, 0.95, n_loads), np.linspace(0.0, 2.0, n_sigmas), jobs)
    plan_s, _ = timed(lambda: plan("queue", points))
    total_s, summary = timed(lambda: run_sweep("queue", points, os.path.join(folder, "scale"),
                                               progress=False))
    return {"configurations": len(points), "jobs": jobs, "seconds": total_s,
            "plan_seconds": plan_s, "chunks": summary.chunks, "flagged": summary.flagged,
            "configurations_per_second": len(points) / total_s}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000, help="measured jobs per configuration")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    jax = init_jax()
    import jaxq

    folder = tempfile.mkdtemp(prefix="jaxq-bench-sweep-")
    try:
        if args.quick:
            overhead = measure_overhead(4, 4, 200, folder)
            scale = measure_scale(10, 10, 200, folder)
        else:
            overhead = measure_overhead(32, 32, args.jobs, folder)
            scale = measure_scale(100, 100, args.jobs, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    info = {"machine": f"{cpu_model()}, {cores()} cores", "python": platform.python_version(),
            "jax": f"{jax.__version__} ({jax.device_count()} x {jax.default_backend()})",
            "jaxq": jaxq.__version__, "overhead": overhead, "scale": scale}
    if args.json:
        print(json.dumps(info))
        return
    o, s = overhead, scale
    print(f"Machine: {info['machine']}; Python {info['python']}, JAX {info['jax']}.\n")
    print("| run | configurations | seconds | ratio to one simulate call |")
    print("|---|---|---|---|")
    print(f"| one jaxq.simulate call (baseline) | {o['configurations']:,} | "
          f"{o['baseline_s']:.2f} | 1.00 |")
    print(f"| run_sweep, one chunk | {o['configurations']:,} | {o['sweep_one_chunk_s']:.2f} | "
          f"{o['ratio_one_chunk']:.2f} |")
    print(f"| run_sweep, default chunks ({o['default_chunks']}) | {o['configurations']:,} | "
          f"{o['sweep_default_chunks_s']:.2f} | {o['ratio_default']:.2f} |")
    print(f"\nRows equal the baseline's numbers: {o['rows_equal_baseline']}. M/M/1, sprpt, "
          f"lognormal predictions, {o['jobs']:,} measured jobs per configuration, one replica; "
          "both after a compiling call.")
    print(f"\n10,000-configuration sweep: {s['configurations']:,} configurations x "
          f"{s['jobs']:,} jobs in {s['seconds']:.1f} s ({s['configurations_per_second']:.0f} "
          f"configurations/s, {s['chunks']} chunks, compilation included; planning "
          f"{s['plan_seconds']:.1f} s of it); {s['flagged']} flagged.")


if __name__ == "__main__":
    main()
