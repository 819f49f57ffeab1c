"""Throughput of jaxq against event-driven simulators in plain Python, SimPy and Ciw.

What is measured: simulated jobs per second on an M/M/1 queue (Poisson arrivals, exponential sizes
of mean 1) at load 0.9, scheduled by sprpt (shortest predicted remaining processing time) with
exponential predictions (y | x ~ Exp(mean x)). Every simulator runs many independent
configurations (one seed each), discards the first `warmup` jobs of each and measures the next
`jobs`; jobs/s counts measured jobs over all configurations, divided by wall time.

How:

* jaxq runs every configuration in one compiled, vmapped program, sharded over one CPU device per
  core. The first call compiles and runs; the second, with a different key, only runs, and its
  time gives the throughput. Compile time is reported on its own.
* The baselines run one process per core, each simulating its share of the configurations one
  after another. A process's clock starts after it has started up and imported its simulator, so
  the time is from the first process beginning to simulate to the last one finishing.
* Python: a heapq event loop, the way one would write it by hand for a paper.
* SimPy: a source process and a server process; an arrival whose prediction is below the served
  job's remaining prediction interrupts the server (SimPy's PreemptiveResource compares priorities
  fixed at request time, while a served job's sprpt rank y - a keeps falling, so it would not be
  sprpt).
* Ciw cannot express ranks that change with service received; it runs its closest native model,
  preemptive-resume priority classes by predicted size, whose exact mean is printed beside it.

The baselines are slow, so by default they run fewer configurations than jaxq (a rate does not
depend on how many). The mean response times (± one standard error over configurations) show that
jaxq, Python and SimPy simulate the same system (about 5.1-5.3; a few percent lower at short runs,
since every run starts empty).

    python scripts/bench_queue.py            # the table, under a minute on 2 cores
    python scripts/bench_queue.py --quick    # smoke run, tiny sizes
    python scripts/bench_queue.py --json     # one JSON object instead of the table
"""

from __future__ import annotations

import argparse
import functools
import heapq
import json
import math
import multiprocessing
import platform
import random
import statistics
import sys
import time

from _machine import cores, cpu_model  # scripts/, beside this file

# Ciw's priority classes: class k holds the jobs with predicted size in [EDGES[k-1], EDGES[k]).
CIW_CLASS_EDGES = (0.25, 1.0, 4.0)


# --------------------------------------------------------------------------------------------------
# jaxq


def init_jax():
    """Import jax with one CPU device per core, so jaxq shards configurations over the cores.
    The device count must be set before jax does any computation."""
    import jax
    jax.config.update("jax_num_cpu_devices", cores())
    return jax


def bench_jaxq(args) -> dict:
    jax = init_jax()
    import jax.numpy as jnp
    import jaxq

    system = jaxq.System(load=args.load, service=jaxq.Exponential(),
                         predictor=jaxq.ExponentialNoise(), policy=jaxq.SPRPT(),
                         seed=jnp.arange(args.configs))

    def run(key):
        start = time.perf_counter()
        result = jaxq.simulate(system, jobs=args.jobs, replicas=1, warmup=args.warmup,
                               capacity=args.capacity, chunk=args.chunk, key=key)
        return result, time.perf_counter() - start

    _, first = run(0)  # compile + run
    result, second = run(1)  # run only: a new key is a new argument, not a new program
    jobs = int(result.jobs.sum())
    devices = jax.devices()
    return {
        "simulator": f"jaxq {jaxq.__version__} (sprpt, {len(devices)} CPU devices)",
        "configs": args.configs, "jobs_per_config": args.jobs,
        **mean_and_stderr(result.mean_response_time.ravel().tolist()),
        "jobs_per_second": jobs / second, "seconds": second,
        "compile_seconds": max(first - second, 0.0), "first_call_seconds": first,
        "sharded": args.configs % len(devices) == 0,
        "max_in_system": int(result.max_in_system.max()),
        "jax_version": jax.__version__, "device_kind": devices[0].device_kind,
        "devices": len(devices),
    }


# --------------------------------------------------------------------------------------------------
# Plain Python


def sprpt_heapq(load: float, jobs: int, warmup: int, seed: int) -> float:
    """Mean response time of jobs warmup .. warmup+jobs-1 of one M/M/1 sprpt run.

    Waiting jobs sit in a heap keyed by (rank y - a, arrival index); a waiting job's rank does not
    change, so the heap stays valid. Only the served job's rank falls (at rate 1), so it is kept
    outside the heap and brought up to date at each arrival.
    """
    rng = random.Random(seed)
    expo = rng.expovariate  # bound once: this loop is the whole cost
    push, pop = heapq.heappush, heapq.heappop
    waiting: list[tuple[float, int, float, float]] = []  # (rank, index, remaining, arrival time)
    last = warmup + jobs
    next_arrival = expo(load)  # mean size 1, so the arrival rate is the load
    arrived = done = 0
    total = 0.0
    busy = False
    # The served job, as of time `since`: rank y - a, index, remaining size, arrival time.
    rank = remaining = born = since = 0.0
    index = 0
    while done < jobs:
        if busy and since + remaining <= next_arrival:  # departure
            now = since + remaining
            if warmup <= index < last:
                total += now - born
                done += 1
            if waiting:
                rank, index, remaining, born = pop(waiting)
                since = now
            else:
                busy = False
        else:  # arrival
            now = next_arrival
            next_arrival = now + expo(load)
            size = expo(1.0)
            prediction = size * expo(1.0)
            if busy:
                elapsed = now - since
                rank -= elapsed
                remaining -= elapsed
                since = now
                # Strictly below: on a tie the earlier arrival (the served job) keeps the server.
                if prediction < rank:
                    push(waiting, (rank, index, remaining, born))
                else:
                    push(waiting, (prediction, arrived, size, now))
                    arrived += 1
                    continue
            rank, index, remaining, born, since = prediction, arrived, size, now, now
            busy = True
            arrived += 1
    return total / jobs


# --------------------------------------------------------------------------------------------------
# SimPy


def sprpt_simpy(load: float, jobs: int, warmup: int, seed: int) -> float:
    """The same run as sprpt_heapq, as SimPy processes: a source, and a server that is interrupted
    when an arrival's prediction is below the served job's remaining prediction."""
    import simpy

    rng = random.Random(seed)
    expo = rng.expovariate
    env = simpy.Environment()
    waiting: list[list] = []  # heap of [rank y - a, index, remaining, arrival time]
    last = warmup + jobs
    stats = {"total": 0.0, "done": 0}
    finished = env.event()
    server = {"job": None, "since": 0.0, "idle": None}  # idle: the event an idle server waits on

    def serve():
        while True:
            if not waiting:
                server["idle"] = env.event()
                yield server["idle"]
                server["idle"] = None
            job = heapq.heappop(waiting)
            server["job"], server["since"] = job, env.now
            try:
                yield env.timeout(job[2])
            except simpy.Interrupt:
                elapsed = env.now - server["since"]
                job[0] -= elapsed
                job[2] -= elapsed
                heapq.heappush(waiting, job)  # the arrival that interrupted is now the heap's top
                server["job"] = None
                continue
            server["job"] = None
            if warmup <= job[1] < last:
                stats["total"] += env.now - job[3]
                stats["done"] += 1
                if stats["done"] == jobs:
                    finished.succeed()

    def source(server_process):
        index = 0
        while True:
            yield env.timeout(expo(load))
            size = expo(1.0)
            job = [size * expo(1.0), index, size, env.now]
            index += 1
            heapq.heappush(waiting, job)
            served = server["job"]
            if server["idle"] is not None and not server["idle"].triggered:
                server["idle"].succeed()
            elif served is not None and job[0] < served[0] - (env.now - server["since"]):
                server_process.interrupt()

    env.process(source(env.process(serve())))
    env.run(until=finished)
    return stats["total"] / jobs


# --------------------------------------------------------------------------------------------------
# Ciw


@functools.lru_cache(maxsize=None)  # Ciw asks for the class rates once per configuration
def _y_moment(power: int, low: float, high: float) -> float:
    """E[x^power ; low <= y < high] for x ~ Exp(1), y | x ~ Exp(mean x).

    P(low <= y < high | x) = exp(-low/x) - exp(-high/x); integrated over x = e^u by the trapezoid
    rule, which converges fast here because the integrand decays doubly exponentially at both ends.
    """
    step, total = 0.005, 0.0
    for i in range(int(45 / step)):
        x = math.exp(-40.0 + i * step)
        within = math.exp(-low / x) - (math.exp(-high / x) if high < math.inf else 0.0)
        total += x ** (power + 1) * math.exp(-x) * within
    return total * step


def ciw_classes() -> list[tuple[float, float]]:
    edges = (0.0, *CIW_CLASS_EDGES, math.inf)
    return list(zip(edges[:-1], edges[1:]))


def priority_theory(load: float) -> float:
    """Exact mean response time of the M/G/1 preemptive-resume priority queue that Ciw runs:
    T_k = E[S_k] / (1 - s_{k-1}) + sum_{i<=k} lambda_i E[S_i^2] / 2 / ((1 - s_{k-1})(1 - s_k)),
    s_k the load of classes 0..k (class 0 first)."""
    mean, above = 0.0, 0.0
    residual = 0.0
    for low, high in ciw_classes():
        p, m1, m2 = (_y_moment(k, low, high) for k in range(3))
        residual += load * m2 / 2  # lambda_k E[S_k^2] / 2, with lambda_k = load * p_k
        below = above + load * m1
        mean += p * (m1 / p / (1 - above) + residual / ((1 - above) * (1 - below)))
        above = below
    return mean


def priority_ciw(load: float, jobs: int, warmup: int, seed: int) -> float:
    """Mean response time of one Ciw run of M/M/1 with preemptive-resume priority classes by
    predicted size (Poisson thinning: class k arrives at rate load * P(y in class k), and its sizes
    are x conditioned on y in class k, drawn by rejection).

    Ciw measures by completion: the mean over the `jobs` departures after the first `warmup` ones
    (it can stop after a number of departures, not after given jobs have left)."""
    import ciw

    class SizeGivenClass(ciw.dists.Distribution):
        def __init__(self, low, high):
            self.low, self.high = low, high

        def sample(self, t=None, ind=None):
            while True:  # ciw.seed seeds the random module
                size = random.expovariate(1.0)
                if self.low <= size * random.expovariate(1.0) < self.high:
                    return size

    classes = ciw_classes()
    names = [f"y in [{low}, {high})" for low, high in classes]
    network = ciw.create_network(
        arrival_distributions={name: [ciw.dists.Exponential(rate=load * _y_moment(0, low, high))]
                               for name, (low, high) in zip(names, classes)},
        service_distributions={name: [SizeGivenClass(low, high)]
                               for name, (low, high) in zip(names, classes)},
        number_of_servers=[1],
        priority_classes=({name: k for k, name in enumerate(names)}, ["resume"]))
    ciw.seed(seed)
    simulation = ciw.Simulation(network)
    simulation.simulate_until_max_customers(warmup + jobs, method="Finish")
    records = sorted((r for r in simulation.get_all_records() if r.record_type == "service"),
                     key=lambda r: r.exit_date)[warmup:warmup + jobs]
    return sum(r.exit_date - r.arrival_date for r in records) / len(records)


# --------------------------------------------------------------------------------------------------
# Running a baseline on all cores

BASELINES = {"python": sprpt_heapq, "simpy": sprpt_simpy, "ciw": priority_ciw}


def _import_simulators(ready):
    """Worker initializer: import the simulators, then wait until every worker (and the parent)
    is ready, so that no worker's share starts while another is still importing."""
    for name in ("simpy", "ciw"):
        try:
            __import__(name)
        except ImportError:
            pass
    ready.wait()


def _run_share(task):
    """One process's share: (means, start, end) with wall-clock times comparable across
    processes."""
    name, load, jobs, warmup, seeds = task
    start = time.time()
    means = [BASELINES[name](load, jobs, warmup, seed) for seed in seeds]
    return means, start, time.time()


def bench_baseline(pool, processes: int, name: str, label: str, configs: int, args) -> dict:
    # Seeds continue after jaxq's, so no two configurations share a seed.
    seeds = list(range(args.configs, args.configs + configs))
    tasks = [(name, args.load, args.jobs, args.warmup, seeds[p::processes])
             for p in range(processes)]
    shares = pool.map(_run_share, [t for t in tasks if t[-1]], chunksize=1)
    seconds = max(end for _, _, end in shares) - min(start for _, start, _ in shares)
    means = [m for share, _, _ in shares for m in share]
    return {"simulator": label, "configs": configs, "jobs_per_config": args.jobs,
            **mean_and_stderr(means), "jobs_per_second": configs * args.jobs / seconds,
            "seconds": seconds}


def module_version(name: str) -> str | None:
    try:
        return __import__(name).__version__
    except ImportError:
        return None


def bench_baselines(args) -> tuple[list[dict], list[str]]:
    rows, notes = [], []
    processes = cores()
    simpy, ciw = module_version("simpy"), module_version("ciw")
    # spawn, not fork: the parent has started jax's threads, and forking a threaded process
    # can deadlock.
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(processes + 1)
    with context.Pool(processes, initializer=_import_simulators, initargs=(ready,)) as pool:
        ready.wait()
        rows.append(bench_baseline(pool, processes, "python",
                                   f"Python heapq event loop (sprpt, {processes} processes)",
                                   args.python_configs, args))
        if simpy is None:
            notes.append("SimPy skipped: not importable (pip install simpy).")
        else:
            rows.append(bench_baseline(
                pool, processes, "simpy",
                f"SimPy {simpy} (sprpt, server interrupted on preemption, {processes} processes)",
                args.simpy_configs, args))
        if ciw is None:
            notes.append("Ciw skipped: not importable (pip install ciw).")
        else:
            rows.append(bench_baseline(
                pool, processes, "ciw",
                f"Ciw {ciw} (not sprpt: preemptive-resume priority, {len(ciw_classes())} classes "
                f"by predicted size; {processes} processes)", args.ciw_configs, args))
            theory = priority_theory(args.load)
            rows[-1]["theory_mean_response_time"] = theory
            notes.append(f"Ciw runs its own model (sprpt's ranks change with service received, "
                         f"which Ciw cannot express): classes y < {CIW_CLASS_EDGES[0]}, "
                         + ", ".join(f"[{a}, {b})" for a, b in ciw_classes()[1:-1])
                         + f", y >= {CIW_CLASS_EDGES[-1]}, "
                         f"smaller predictions first; its exact mean response time is "
                         f"{theory:.2f}.")
    return rows, notes


# --------------------------------------------------------------------------------------------------
# Report


def mean_and_stderr(means: list[float]) -> dict:
    stderr = statistics.stdev(means) / math.sqrt(len(means)) if len(means) > 1 else math.nan
    return {"mean_response_time": statistics.fmean(means), "stderr": stderr}


def machine(jaxq_row: dict) -> dict:
    return {"cpu": cpu_model(), "cores": cores(), "python": platform.python_version(),
            "jax": jaxq_row["jax_version"], "device_kind": jaxq_row["device_kind"],
            "devices": jaxq_row["devices"]}


def table(rows: list[dict], info: dict, jaxq_row: dict, notes: list[str]) -> str:
    lines = [
        f"Machine: {info['cpu']}, {info['cores']} cores; Python {info['python']}, JAX {info['jax']} "
        f"({info['devices']} x {info['device_kind']}).",
        "",
        "| simulator | configurations x jobs | mean response time | jobs/s | ratio |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = jaxq_row["jobs_per_second"] / row["jobs_per_second"]
        lines.append(f"| {row['simulator']} | {row['configs']} x {row['jobs_per_config']} | "
                     f"{row['mean_response_time']:.2f} ± {row['stderr']:.2f} | "
                     f"{row['jobs_per_second']:,.0f} | {ratio:,.1f} |")
    lines += ["", f"jaxq compile time: {jaxq_row['compile_seconds']:.1f} s (first call "
                  f"{jaxq_row['first_call_seconds']:.1f} s, second call {jaxq_row['seconds']:.1f} "
                  f"s; jobs/s is from the second)."]
    if not jaxq_row["sharded"]:
        lines.append(f"Note: {jaxq_row['configs']} configurations do not divide over "
                     f"{jaxq_row['devices']} devices, so jaxq ran them on one device.")
    lines += ["Mean response time: ± one standard error over configurations; ratio: jaxq's jobs/s "
              "divided by the row's.", *notes]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", type=int, default=1024, help="jaxq configurations")
    parser.add_argument("--jobs", type=int, default=5000, help="measured jobs per configuration")
    parser.add_argument("--warmup", type=int, default=None,
                        help="jobs discarded first in each configuration (default jobs // 10)")
    parser.add_argument("--load", type=float, default=0.9)
    parser.add_argument("--capacity", type=int, default=64, help="jaxq job slots")
    parser.add_argument("--chunk", type=int, default=512, help="jaxq arrivals sampled per step")
    parser.add_argument("--python-configs", type=int, default=1024)
    parser.add_argument("--simpy-configs", type=int, default=256)
    parser.add_argument("--ciw-configs", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="smoke run with tiny sizes")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.quick:
        args.configs, args.jobs, args.chunk = 2 * cores(), 200, 64
        args.python_configs = args.simpy_configs = args.ciw_configs = cores()
    if args.warmup is None:
        args.warmup = args.jobs // 10
    return args


def main(argv=None):
    args = parse_args(argv)
    jaxq_row = bench_jaxq(args)
    rows, notes = bench_baselines(args)
    rows.insert(0, jaxq_row)
    info = machine(jaxq_row)
    if args.json:
        for row in rows:
            row["ratio"] = jaxq_row["jobs_per_second"] / row["jobs_per_second"]
        print(json.dumps({"machine": info, "load": args.load, "warmup": args.warmup,
                          "compile_seconds": jaxq_row["compile_seconds"], "rows": rows,
                          "notes": notes}, indent=2))
    else:
        print(table(rows, info, jaxq_row, notes))


if __name__ == "__main__":
    sys.exit(main())
