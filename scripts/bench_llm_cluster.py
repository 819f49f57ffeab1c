"""Throughput of LLM clusters (jaxq.llm.Cluster under jaxq.llm.simulate) against the plain-Python
cluster reference (tests/llm_reference.py, run_cluster_reference), and against jaxq's single
engine on the same number of instance-iterations.

What is measured: configuration-iterations per second, the engine iterations simulated summed
over every instance of every configuration, divided by wall seconds (as scripts/bench_llm.py
counts them for one engine).

Workload and configurations: scripts/bench_llm.py's memory-pressured setup (azure-conversation
with capped token laws, a 16,000-token KV cache, sprpt, recompute, lognormal noise sigma evenly
spaced in [0, 2], seed = configuration index), with --instances instances per configuration
behind --router and the arrival rate multiplied by the number of instances.

* jaxq: jaxq.llm.simulate's default windows and workers; the row is the second of two
  identical calls (the first compiles).
* The reference runs --reference-configs of the configurations (same requests, re-sampled with
  simulate's internals), one process per core; each one's iterations, preemptions and the
  instance of every request must equal jaxq's (the script exits with status 1 otherwise).
* The single engine: jaxq.llm.simulate on one instance per configuration at the per-instance
  rate, as many configurations times instances as the cluster run has instances: the rate of
  the engine without a router, in the same run.

    python scripts/bench_llm_cluster.py            # the table, about a minute on 2 cores
    python scripts/bench_llm_cluster.py --quick    # smoke run, tiny sizes
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir, "tests"))

from _machine import cores, cpu_model  # noqa: E402  (scripts/, beside this file)
from bench_llm import (ENGINE_FIELDS, capped_workload, make_system,  # noqa: E402
                       sampled_requests)


def run_jaxq(args, system, workload):
    """(result, wall seconds, CPU seconds) of the second of two identical runs: the first
    compiles every function the run calls (a stub run would skip the drain)."""
    from jaxq.llm.simulate import simulate

    def run(**options):
        cpu, start = time.process_time(), time.perf_counter()
        result = simulate(system, workload, requests=args.requests, slots=args.slots, key=0,
                          lanes=args.lanes, **options)
        return result, time.perf_counter() - start, time.process_time() - cpu

    run()
    return run()


def _run_share(share):
    from llm_reference import (ReferenceConfig, run_cluster_reference,
                               run_disaggregated_reference)

    start, cpu = time.time(), time.process_time()
    out = []
    for index, arrival, prompt, output, prediction, fields, split, router in share:
        if isinstance(split, int):
            configs = [ReferenceConfig(**fields)] * split
            ref = run_cluster_reference(arrival, prompt, output, prediction, configs, router)
            served = ref.instance
        else:
            prefill, decode = split
            ref = run_disaggregated_reference(
                arrival, prompt, output, prediction, [ReferenceConfig(**fields)] * prefill,
                [ReferenceConfig(**fields)] * decode, router, router, 0.0)
            served = [prefill + d if d is not None else p
                      for p, d in zip(ref.prefill_instance, ref.decode_instance)]
        out.append((index, ref.iterations, ref.total_preemptions, served))
    return out, start, time.time(), time.process_time() - cpu


def _ready(barrier):
    import llm_reference  # noqa: F401
    barrier.wait()


def bench_reference(args, one, workload, result, split):
    import numpy as np

    k = min(args.reference_configs, args.configs)
    subset = sorted({int(i) for i in np.round(np.linspace(0, args.configs - 1, k))})
    flat, reqs = sampled_requests(one, workload, args.requests, key=0)
    arrival = np.cumsum(np.asarray(reqs.gap, np.float64), axis=-1)
    if not np.array_equal(np.asarray(result.output_tokens).reshape(args.configs, -1),
                          np.asarray(reqs.output)):
        sys.exit("bench_llm_cluster: the re-sampled requests differ from jaxq's run")
    tasks = []
    for i in subset:
        fields = {name: np.asarray(getattr(flat, name)[i]).item() for name in ENGINE_FIELDS}
        fields.update(policy="sprpt", preemption=one.preemption, admission=one.admission)
        tasks.append((i, arrival[i].tolist(), np.asarray(reqs.prompt[i]).tolist(),
                      np.asarray(reqs.output[i]).tolist(),
                      np.asarray(reqs.prediction[i], np.float64).tolist(), fields,
                      split, args.router))
    processes = min(cores(), len(tasks))
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes + 1)
    with context.Pool(processes, initializer=_ready, initargs=(barrier,)) as pool:
        barrier.wait()
        results = pool.map(_run_share, [tasks[p::processes] for p in range(processes)],
                           chunksize=1)
    seconds = max(r[2] for r in results) - min(r[1] for r in results)
    counts = sorted(c for r in results for c in r[0])
    iterations = np.asarray(result.iterations).reshape(-1)
    preemptions = np.asarray(result.preemptions).reshape(-1)
    sent = np.asarray(result.instance).reshape(args.configs, -1)
    mismatches = [f"configuration {i}" for i, it, pre, inst in counts
                  if it != iterations[i] or pre != preemptions[i]
                  or list(sent[i]) != list(inst)]
    what = "cluster" if isinstance(split, int) else "disaggregated"
    row = dict(engine=f"{what} reference, plain Python ({processes} processes)",
               configs=len(tasks), iterations=sum(c[1] for c in counts), seconds=seconds,
               cpu_seconds=sum(r[3] for r in results))
    return row, mismatches


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", type=int, default=64)
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--router", default="least-kv")
    parser.add_argument("--requests", type=int, default=400, help="requests per configuration")
    parser.add_argument("--rate", type=float, default=0.75, help="arrivals per second and "
                        "instance")
    parser.add_argument("--kv-capacity", type=int, default=16_000)
    parser.add_argument("--slots", type=int, default=48, help="request slots per instance")
    parser.add_argument("--reference-configs", type=int, default=8)
    parser.add_argument("--lanes", type=int, default=None,
                        help="clusters jaxq steps together (default: simulate's)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.configs, args.requests, args.reference_configs = 4, 40, 2

    import jax
    import numpy as np
    import jaxq
    from jaxq.llm import Cluster, Disaggregated, Router

    per_instance_rate = args.rate
    args.rate = per_instance_rate * args.instances
    cluster_workload, _ = capped_workload(args)
    one = make_system(args)
    cluster = Cluster(one, Router(args.router), instances=args.instances)
    result, seconds, cpu = run_jaxq(args, cluster, cluster_workload)
    rows = [dict(engine=f"jaxq {jaxq.__version__} cluster ({args.instances} instances, "
                 f"{args.router}, vmapped)", configs=args.configs,
                 iterations=int(np.sum(result.iterations)), seconds=seconds, cpu_seconds=cpu)]
    ref_row, mismatches = bench_reference(args, one, cluster_workload, result, args.instances)
    rows.append(ref_row)

    # The same GPUs split into a prefill pool and a decode pool (free transfers).
    prefill = max(1, args.instances // 4)
    split = Disaggregated(one, one, prefill_instances=prefill,
                          decode_instances=args.instances - prefill, router=args.router)
    pd_result, pd_seconds, pd_cpu = run_jaxq(args, split, cluster_workload)
    pd_rows = [dict(engine=f"jaxq disaggregated ({prefill} prefill + "
                    f"{args.instances - prefill} decode, {args.router})", configs=args.configs,
                    iterations=int(np.sum(pd_result.iterations)), seconds=pd_seconds,
                    cpu_seconds=pd_cpu)]
    pd_ref, pd_mismatches = bench_reference(args, one, cluster_workload, pd_result,
                                            (prefill, args.instances - prefill))
    pd_rows.append(pd_ref)
    mismatches += pd_mismatches

    # The engine alone: configs x instances configurations at the per-instance rate.
    single = argparse.Namespace(**{**vars(args), "configs": args.configs * args.instances,
                                   "rate": per_instance_rate})
    single_result, s_seconds, s_cpu = run_jaxq(single, make_system(single),
                                               capped_workload(single)[0])
    rows.append(dict(engine=f"jaxq single engine (vmapped, lanes), {single.configs} "
                     f"configurations at the per-instance rate", configs=single.configs,
                     iterations=int(np.sum(single_result.iterations)), seconds=s_seconds,
                     cpu_seconds=s_cpu))

    print(f"Machine: {cpu_model()}, {cores()} cores; JAX {jax.__version__} "
          f"({jax.devices()[0].device_kind}).")
    for table in (rows, pd_rows):
        base = table[0]["iterations"] / table[0]["seconds"]
        print("\n| simulator | configurations | iterations | seconds | CPU seconds "
              "| configuration-iterations/s | first row's rate / the row's |")
        print("|---|---|---|---|---|---|---|")
        for row in table:
            rate = row["iterations"] / row["seconds"]
            print(f"| {row['engine']} | {row['configs']} | {row['iterations']:,} | "
                  f"{row['seconds']:.1f} | {row['cpu_seconds']:.1f} | {rate:,.0f} | "
                  f"{base / rate:.2f} |")
    share = np.asarray(result.instance_share)
    print(f"\nBoundaries computed in full (the other iterations are pure-decode runs advanced "
          f"in closed form): cluster {int(np.sum(result.boundaries)):,} of "
          f"{rows[0]['iterations']:,} iterations; single engine "
          f"{int(np.sum(single_result.boundaries)):,} of {rows[2]['iterations']:,}.")
    print(f"Cluster: {args.requests} requests per configuration at {args.rate:g} requests/s "
          f"({per_instance_rate:g} per instance), {args.slots} slots per instance; "
          f"{int(np.sum(result.preemptions)):,} preemptions; requests per instance (share, "
          f"min / max over configurations and instances) {share.min():.3f} / "
          f"{share.max():.3f}.")
    print("References: " + ("iterations, preemptions and every request's instance equal "
                            "jaxq's on each of their configurations." if not mismatches
                           else "MISMATCH: " + ", ".join(mismatches)))
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
