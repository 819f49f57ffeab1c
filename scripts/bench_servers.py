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

import heapq
import json
import random

from _machine import cores  # scripts/, beside this file
from _servers_bench import bench_jaxq, bench_python, machine, options


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


def main():
    args = options(__doc__.splitlines()[0], servers="1,2,4,8,16", configs=256,
                   python_configs=16, capacity=128, quick_servers="1,4")
    import jax
    jax.config.update("jax_num_cpu_devices", cores())
    rows = []
    for k in (int(v) for v in args.servers.split(",")):
        rows.append({"servers": k, "jaxq": bench_jaxq(k, args),
                     "python": bench_python(sprpt_servers, k, args)})
    host = machine()
    if args.json:
        print(json.dumps({"machine": host, "rows": rows}))
        return
    base = rows[0]["jaxq"]["jobs_per_second"]
    print(f"M/M/k sprpt, exponential predictions, load {args.load} per server; jaxq "
          f"{args.configs} x {args.jobs} jobs, Python {args.python_configs} x {args.jobs}; "
          f"{host}")
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
