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

import heapq
import json
import random

from _machine import cores  # scripts/, beside this file
from _servers_bench import bench_jaxq, bench_python, machine, options


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


def main():
    args = options(__doc__.splitlines()[0], servers="10,100,1000", configs=128,
                   python_configs=8, capacity=32, quick_servers="10")
    import jax
    jax.config.update("jax_num_cpu_devices", cores())
    import jaxq
    from jaxq import supermarket

    rows = []
    for n in (int(v) for v in args.servers.split(",")):
        rows.append({"servers": n, "jaxq": bench_jaxq(n, args, jaxq.Dispatch("jsq-d", d=2)),
                     "python": bench_python(jsq2_sprpt, n, args)})
    host = machine()
    if args.json:
        print(json.dumps({"machine": host, "rows": rows}))
        return
    print(f"jsq-d (d = 2) to n sprpt servers, exponential predictions, M/M at load {args.load} "
          f"per server; jaxq {args.configs} x {args.jobs} jobs, Python {args.python_configs} x "
          f"{args.jobs}; {host}")
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
