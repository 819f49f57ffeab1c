"""Throughput of dispatching (jaxq.System(dispatch=...)) against a plain-Python event loop of the
same system.

What is measured: simulated jobs per second with n servers, each with its own sprpt queue
(exponential predictions, y | x ~ Exp(mean x)), power-of-two dispatching by queue length
(jsq-d, d = 2), Poisson arrivals and exponential sizes of mean 1 at a load of 0.9 per server, for
n = 10, 100, 1000. Every configuration (one seed each) discards the first `warmup` jobs and
measures the next `jobs`; it runs until every measured job has left, so with many servers the
run goes on for the slowest measured job's sojourn (n times more arrivals per unit of time).
jobs/s counts measured jobs over all configurations over wall time.

* jaxq runs every configuration of one n in one compiled call, sharded over one CPU device per
  core; the first call compiles, the second (a new key) is timed.
* Python: an event loop written for this system, lazy as jaxq is (a server's departures are
  processed when it is sampled), one process per core, each running its share of the
  configurations.

    python scripts/bench_dispatch.py            # the table, a few minutes on 2 cores
    python scripts/bench_dispatch.py --quick    # smoke run
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


class _Server:
    """One sprpt server: the job in service as [rank, index, remaining, arrival] as of `since`,
    the waiting ones in a heap by (rank, index) (a waiting job's rank y - a does not change)."""

    __slots__ = ("served", "waiting", "since")

    def __init__(self):
        self.served, self.waiting, self.since = None, [], 0.0

    def advance(self, t, on_departure):
        """Serve until time t, calling on_departure(index, arrival, departure) for each job."""
        while self.served is not None and self.since + self.served[2] <= t:
            self.since += self.served[2]
            on_departure(self.served[1], self.served[3], self.since)
            self.served = list(heapq.heappop(self.waiting)) if self.waiting else None
        if self.served is not None:
            elapsed = t - self.since
            self.served[0] -= elapsed
            self.served[2] -= elapsed
        self.since = t

    def count(self):
        return len(self.waiting) + (self.served is not None)

    def add(self, job):
        if self.served is None:
            self.served = job
        elif (job[0], job[1]) < (self.served[0], self.served[1]):
            heapq.heappush(self.waiting, tuple(self.served))
            self.served = job
        else:
            heapq.heappush(self.waiting, tuple(job))


def jsq2_sprpt(servers: int, load: float, jobs: int, warmup: int, seed: int) -> float:
    """Mean response time of jobs warmup .. warmup+jobs-1 of one run."""
    rng = random.Random(seed)
    expo, pick = rng.expovariate, rng.randrange
    queues = [_Server() for _ in range(servers)]
    rate = servers * load  # mean size 1
    last = warmup + jobs
    total, done, now, arrived = 0.0, 0, 0.0, 0

    def on_departure(index, arrival, departure):
        nonlocal total, done
        if warmup <= index < last:
            total += departure - arrival
            done += 1

    while done < jobs:
        now += expo(rate)
        a, b = queues[pick(servers)], queues[pick(servers)]
        a.advance(now, on_departure)
        b.advance(now, on_departure)
        size = expo(1.0)
        (a if a.count() <= b.count() else b).add([size * expo(1.0), arrived, size, now])
        arrived += 1
        if arrived >= last and arrived % servers == 0:  # measured jobs on servers not sampled
            for q in queues:
                q.advance(now, on_departure)
    return total / jobs


def _python_share(task):
    servers, load, jobs, warmup, seeds = task
    start = time.perf_counter()
    means = [jsq2_sprpt(servers, load, jobs, warmup, s) for s in seeds]
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
                         seed=jnp.arange(args.configs), servers=servers,
                         dispatch=jaxq.Dispatch("jsq-d", d=2))

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
    p.add_argument("--servers", default="10,100,1000")
    p.add_argument("--load", type=float, default=0.9)
    p.add_argument("--configs", type=int, default=128)
    p.add_argument("--python-configs", type=int, default=8)
    p.add_argument("--jobs", type=int, default=20_000)
    p.add_argument("--warmup", type=int, default=2_000)
    p.add_argument("--capacity", type=int, default=32)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.servers, args.configs, args.python_configs, args.jobs, args.warmup = (
            "10", 8, 2, 2000, 200)

    import jax
    jax.config.update("jax_num_cpu_devices", cores())
    from jaxq import supermarket

    rows = []
    for n in (int(v) for v in args.servers.split(",")):
        rows.append({"servers": n, "jaxq": bench_jaxq(n, args), "python": bench_python(n, args)})
    machine = {"cpu": cpu_model(), "cores": cores(), "python": platform.python_version(),
               "jax": jax.__version__}
    if args.json:
        print(json.dumps({"machine": machine, "rows": rows}))
        return
    print(f"jsq-d (d = 2) to n sprpt servers, exponential predictions, M/M at load {args.load} "
          f"per server; jaxq {args.configs} x {args.jobs} jobs, Python {args.python_configs} x "
          f"{args.jobs}; {machine}")
    print("| servers | jaxq jobs/s | Python jobs/s | jaxq / Python | mean T jaxq | "
          "mean T Python | compile s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        j, py = r["jaxq"], r["python"]
        print(f"| {r['servers']} | {j['jobs_per_second']:,.0f} | {py['jobs_per_second']:,.0f} | "
              f"{j['jobs_per_second'] / py['jobs_per_second']:.1f} | {j['mean']:.3f} +- "
              f"{j['stderr']:.3f} | {py['mean']:.3f} +- {py['stderr']:.3f} | "
              f"{j['compile_seconds']:.1f} |")
    print(f"(fcfs servers' mean-field limit at this load: "
          f"{supermarket.jsq_d_mean_response_time(2, args.load):.4f}; sprpt has none)")


if __name__ == "__main__":
    main()
