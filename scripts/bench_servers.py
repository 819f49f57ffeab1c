"""Throughput of the k-server central queue (jaxq.System(servers=k)) against a plain-Python event
loop of the same system, and against jaxq's own single server.

What is measured: simulated jobs per second on M/M/k (Poisson arrivals, exponential sizes of mean
1) at a load of 0.9 per server, scheduled by sprpt with exponential predictions (y | x ~ Exp(mean
x)), for k = 1, 2, 4, 8, 16. Every configuration (one seed each) discards the first `warmup` jobs
and measures the next `jobs`; jobs/s counts measured jobs over all configurations over wall time.

* jaxq runs every configuration of one k in one compiled call, sharded over one CPU device per
  core; the first call compiles, the second (a new key) is timed.
* Python: a heapq event loop written for k servers (the served jobs in a list, the waiting ones in
  a heap by rank), one process per core, each running its share of the configurations.

    python scripts/bench_servers.py            # the table, a few minutes on 2 cores
    python scripts/bench_servers.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import heapq
import json
import multiprocessing
import platform
import random
import statistics
import time

from _machine import cores, cpu_model  # scripts/, beside this file


def sprpt_servers(servers: int, load: float, jobs: int, warmup: int, seed: int) -> float:
    """Mean response time of jobs warmup .. warmup+jobs-1 of one M/M/k sprpt run.

    A waiting job's rank y - a does not change, so waiting jobs sit in a heap by (rank, index).
    Served jobs' ranks all fall at rate 1, so they are kept as (rank, index, remaining, arrival)
    as of time `since` and brought up to date at each event. An arrival takes a free server, or
    preempts the served job of highest rank if its own is lower."""
    rng = random.Random(seed)
    expo = rng.expovariate
    waiting: list[tuple[float, int, float, float]] = []
    served: list[list] = []
    rate = servers * load  # mean size 1
    next_arrival = expo(rate)
    arrived = done = 0
    last = warmup + jobs
    total = 0.0
    since = 0.0
    while done < jobs:
        first = min(served, key=lambda s: s[2]) if served else None
        if first is not None and since + first[2] <= next_arrival:  # a departure
            now = since + first[2]
            elapsed = now - since
            for s in served:
                s[0] -= elapsed
                s[2] -= elapsed
            served.remove(first)
            if warmup <= first[1] < last:
                total += now - first[3]
                done += 1
            if waiting:
                served.append(list(heapq.heappop(waiting)))
        else:  # an arrival
            now = next_arrival
            elapsed = now - since
            for s in served:
                s[0] -= elapsed
                s[2] -= elapsed
            next_arrival = now + expo(rate)
            size = expo(1.0)
            job = [size * expo(1.0), arrived, size, now]
            arrived += 1
            if len(served) < servers:
                served.append(job)
            else:
                worst = max(served, key=lambda s: (s[0], s[1]))
                if (job[0], job[1]) < (worst[0], worst[1]):
                    served.remove(worst)
                    heapq.heappush(waiting, tuple(worst))
                    served.append(job)
                else:
                    heapq.heappush(waiting, tuple(job))
        since = now
    return total / jobs


def _python_share(task):
    servers, load, jobs, warmup, seeds = task
    start = time.perf_counter()
    means = [sprpt_servers(servers, load, jobs, warmup, s) for s in seeds]
    return means, start, time.perf_counter()


def bench_python(servers, args) -> dict:
    n = cores()
    seeds = list(range(args.python_configs))
    tasks = [(servers, args.load, args.jobs, args.warmup, seeds[i::n]) for i in range(n)]
    with multiprocessing.get_context("spawn").Pool(n) as pool:
        parts = pool.map(_python_share, tasks)
    means = [m for part in parts for m in part[0]]
    seconds = max(p[2] for p in parts) - min(p[1] for p in parts)
    return {"mean": statistics.fmean(means),
            "stderr": statistics.stdev(means) / len(means) ** 0.5 if len(means) > 1 else 0.0,
            "jobs_per_second": len(means) * args.jobs / seconds}


def bench_jaxq(servers, args) -> dict:
    import jax.numpy as jnp
    import jaxq

    system = jaxq.System(load=args.load, predictor=jaxq.ExponentialNoise(), policy=jaxq.SPRPT(),
                         seed=jnp.arange(args.configs), servers=servers)

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


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--servers", default="1,2,4,8,16")
    p.add_argument("--load", type=float, default=0.9)
    p.add_argument("--configs", type=int, default=256)
    p.add_argument("--python-configs", type=int, default=16)
    p.add_argument("--jobs", type=int, default=20_000)
    p.add_argument("--warmup", type=int, default=2_000)
    p.add_argument("--capacity", type=int, default=128)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.servers, args.configs, args.python_configs, args.jobs, args.warmup = (
            "1,4", 8, 2, 2000, 200)

    import jax
    jax.config.update("jax_num_cpu_devices", cores())
    rows = []
    for k in (int(v) for v in args.servers.split(",")):
        rows.append({"servers": k, "jaxq": bench_jaxq(k, args), "python": bench_python(k, args)})
    machine = {"cpu": cpu_model(), "cores": cores(), "python": platform.python_version(),
               "jax": jax.__version__}
    if args.json:
        print(json.dumps({"machine": machine, "rows": rows}))
        return
    base = rows[0]["jaxq"]["jobs_per_second"]
    print(f"M/M/k sprpt, exponential predictions, load {args.load} per server; jaxq "
          f"{args.configs} x {args.jobs} jobs, Python {args.python_configs} x {args.jobs}; "
          f"{machine}")
    print("| servers | jaxq jobs/s | vs jaxq k=1 | Python jobs/s | jaxq / Python | mean T jaxq | "
          "mean T Python | compile s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        j, py = r["jaxq"], r["python"]
        print(f"| {r['servers']} | {j['jobs_per_second']:,.0f} | "
              f"{j['jobs_per_second'] / base:.2f} | {py['jobs_per_second']:,.0f} | "
              f"{j['jobs_per_second'] / py['jobs_per_second']:.1f} | {j['mean']:.3f} +- "
              f"{j['stderr']:.3f} | {py['mean']:.3f} +- {py['stderr']:.3f} | "
              f"{j['compile_seconds']:.1f} |")


if __name__ == "__main__":
    main()
