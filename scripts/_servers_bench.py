"""What bench_servers.py and bench_dispatch.py share: jaxq timed against a plain-Python loop on
systems of many servers (sprpt, exponential predictions, M/M at a load per server), and their
options."""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import statistics
import time

from _machine import cores, cpu_model  # scripts/, beside this file


def options(description: str, *, servers: str, configs: int, python_configs: int,
            capacity: int, quick_servers: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--servers", default=servers)
    p.add_argument("--load", type=float, default=0.9)
    p.add_argument("--configs", type=int, default=configs)
    p.add_argument("--python-configs", type=int, default=python_configs)
    p.add_argument("--jobs", type=int, default=20_000)
    p.add_argument("--warmup", type=int, default=2_000)
    p.add_argument("--capacity", type=int, default=capacity)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.servers, args.configs, args.python_configs, args.jobs, args.warmup = (
            quick_servers, 8, 2, 2000, 200)
    return args


def _python_share(task):
    run_one, servers, load, jobs, warmup, seeds = task
    start = time.perf_counter()
    means = [run_one(servers, load, jobs, warmup, s) for s in seeds]
    return means, start, time.perf_counter()


def bench_python(run_one, servers: int, args) -> dict:
    """run_one(servers, load, jobs, warmup, seed) -> mean response time, over
    args.python_configs seeds, one process per core."""
    n = cores()
    seeds = list(range(args.python_configs))
    tasks = [(run_one, servers, args.load, args.jobs, args.warmup, seeds[i::n]) for i in range(n)]
    with multiprocessing.get_context("spawn").Pool(n) as pool:
        parts = pool.map(_python_share, tasks)
    means = [m for part in parts for m in part[0]]
    seconds = max(p[2] for p in parts) - min(p[1] for p in parts)
    return {"mean": statistics.fmean(means),
            "stderr": statistics.stdev(means) / len(means) ** 0.5 if len(means) > 1 else 0.0,
            "jobs_per_second": len(means) * args.jobs / seconds}


def bench_jaxq(servers: int, args, dispatch=None) -> dict:
    """args.configs configurations (one seed each) in one compiled call: the first call
    compiles, the second (a new key) is timed."""
    import jax.numpy as jnp
    import jaxq

    system = jaxq.System(load=args.load, predictor=jaxq.ExponentialNoise(), policy=jaxq.SPRPT(),
                         seed=jnp.arange(args.configs), servers=servers, dispatch=dispatch)

    def run(key):
        start = time.perf_counter()
        r = jaxq.simulate(system, jobs=args.jobs, replicas=1, warmup=args.warmup,
                          capacity=args.capacity, key=key)
        return r, time.perf_counter() - start

    _, first = run(0)
    result, second = run(1)
    means = result.mean_response_time
    return {"mean": float(means.mean()), "stderr": float(means.std(ddof=1) / len(means) ** 0.5),
            "jobs_per_second": float(result.jobs.sum()) / second,
            "compile_seconds": max(first - second, 0.0),
            "overflow": int(result.overflow.sum())}


def machine() -> dict:
    """The machine, after jax_num_cpu_devices is set to one device per core."""
    import jax

    return {"cpu": cpu_model(), "cores": cores(), "python": platform.python_version(),
            "jax": jax.__version__}
