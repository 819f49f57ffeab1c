"""Throughput of the JAX LLM engine (jaxq.llm.simulate) against the plain-Python reference engine
(tests/llm_reference.py) on a memory-pressured workload.

What is measured: configuration-iterations per second, i.e. the sum over configurations of the
engine iterations simulated (LLMResult.iterations, ReferenceResult.iterations), divided by wall
seconds. An iteration is one step of continuous batching (one batch formed, run, and its tokens
produced), so this counts simulated engine steps, whatever the configuration.

Workload and configurations:

* Requests: the azure-conversation preset (jaxq.llm.WORKLOADS["azure-conversation"](rate=R)),
  whose lognormal token laws are replaced by jaxq.Empirical laws built from 100,000 samples of the
  preset's laws, rounded and capped (prompts at 3/4 of the KV capacity, outputs at 1/4), so that
  no request's peak KV, P + O - 1 tokens, exceeds the KV capacity (simulate refuses such a
  request). The fraction of samples the caps changed is printed.
* Engine: a KV cache of --kv-capacity tokens (default 16,000, blocks of 16; the other limits and
  the iteration costs are LLMSystem's defaults), optimistic admission, preemption by recompute,
  sprpt scheduling. At the default rate memory is the bottleneck: requests are preempted (the count
  is printed, with a warning if there were none).
* --configs configurations (default 256), differing by the prediction noise
  (jaxq.LognormalNoise(sigma), sigma evenly spaced in [0, 2]) and the seed (configuration i has
  seed i, so its own requests), --requests requests each.

How:

* jaxq runs the configurations with one compiled, vmapped program on one CPU device
  (jaxq.llm.simulate does not shard over devices), --lanes of them at a time (default: simulate's,
  8 on a CPU), a finished one's lane going to the next between calls. A first call limited to one
  iteration compiles;
  the second call, on the full run, gives the throughput. --slots (request slots per
  configuration; jaxq's cost per iteration grows with it) must hold the most requests ever in
  system at once, which is printed; the run stops with a message otherwise.
* The reference runs on the same requests: they are re-sampled with simulate's own internals
  (_replica_keys, _requests: the same keys, so the same requests and predictions), checked against the
  arrival times and output lengths that jaxq's result reports, and the reference is run on
  --reference-configs of the configurations, evenly spread over the sigma range. Its iteration
  and preemption counts must equal jaxq's for each of them (otherwise the table says which differ
  and the script exits with status 1). It runs one process per core (spawned, each simulating its
  share one configuration after another); the time is from the first process beginning to
  simulate to the last one finishing.
* Both rates are also given per CPU second (the CPU time of jaxq's process, and of the
  reference's workers summed), which other load on the machine disturbs less than wall time.

    python scripts/bench_llm.py            # the table, about 75 s on 2 cores
    python scripts/bench_llm.py --quick    # smoke run, tiny sizes
    python scripts/bench_llm.py --json     # one JSON object instead of the table
    python scripts/bench_llm.py --tool-calls 2   # requests that pause for tool calls
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
import warnings

# The reference engine lives with the tests (plain Python: no jax, so workers start fast).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))

from _machine import cores, cpu_model  # noqa: E402  (scripts/, beside this file)

ENGINE_FIELDS = ("kv_capacity", "block_size", "max_seqs", "max_batched_tokens", "host_capacity",
                 "max_output", "iter_base", "iter_per_prefill_token", "iter_per_decode_seq",
                 "iter_per_kv_token", "swap_per_token")
LAW_SAMPLES = 100_000
# --tool-calls N: each of N calls present with this probability, exponential seconds of this mean;
# --pause-kv auto keeps a call's KV iff predicted seconds x its tokens <= KEEP_SECONDS x free.
TOOL_CALL_PROBABILITY, TOOL_CALL_SECONDS, KEEP_SECONDS = 0.5, 2.0, 1.0


# --------------------------------------------------------------------------------------------------
# The workload and the configurations


def capped_workload(args):
    """The azure-conversation preset with Empirical token laws whose samples are capped so that
    P + O - 1 <= kv_capacity. Returns (workload, notes on the caps)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import jaxq
    from jaxq.llm import WORKLOADS, LLMWorkload, ToolCalls

    preset = WORKLOADS["azure-conversation"](rate=args.rate)
    prompt_cap = args.kv_capacity * 3 // 4
    output_cap = args.kv_capacity - prompt_cap  # P + O - 1 <= kv_capacity - 1
    laws, capped = {}, {}
    for name, law, key, cap in (("prompt", preset.prompt, 1, prompt_cap),
                                ("output", preset.output, 2, output_cap)):
        raw = jnp.round(law.sample(jax.random.key(key), (LAW_SAMPLES,)))
        capped[name] = {"cap": cap, "fraction_capped": float(np.mean(np.asarray(raw) > cap))}
        laws[name] = jaxq.Empirical(jnp.clip(raw, 1, cap))
    calls = None
    if args.tool_calls:
        calls = ToolCalls(args.tool_calls, TOOL_CALL_PROBABILITY,
                          jaxq.Exponential(TOOL_CALL_SECONDS))
    workload = LLMWorkload(prompt=laws["prompt"], output=laws["output"],
                           arrivals=preset.arrivals, rate=preset.rate, tool_calls=calls)
    return workload, capped


def make_system(args):
    import jax.numpy as jnp
    import jaxq
    from jaxq.llm.simulate import LLMSystem

    return LLMSystem(jaxq.SPRPT(), jaxq.LognormalNoise(jnp.linspace(0.0, 2.0, args.configs)),
                     kv_capacity=args.kv_capacity, preemption="recompute",
                     admission="optimistic", seed=jnp.arange(args.configs),
                     pause_kv=args.pause_kv, keep_seconds=KEEP_SECONDS,
                     host_capacity=args.kv_capacity)


def sampled_requests(system, workload, n: int, key: int):
    """The requests simulate(system, workload, requests=n, key=key) draws, per configuration:
    the same steps as simulate (one replica)."""
    import importlib

    import jax
    import jax.numpy as jnp

    # The module, not the function of the same name that jaxq.llm exports.
    llm = importlib.import_module("jaxq.llm.simulate")
    shape = llm._batch_shape(system)
    flat = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, shape).reshape(-1), system)
    keys = llm._replica_keys(jax.random.key(key), flat.seed, 1).reshape(-1)
    return flat, llm._requests(flat, workload, keys, n, False)


def max_in_system(arrival, latency):
    """Most requests in system at once, per configuration ((B, N) arrays)."""
    import numpy as np

    times = np.concatenate([arrival, arrival + latency], axis=-1)
    steps = np.concatenate([np.ones_like(arrival), -np.ones_like(arrival)], axis=-1)
    # At equal times, count the exit first (a request leaving as another arrives).
    order = np.lexsort((steps, times), axis=-1)
    return np.max(np.cumsum(np.take_along_axis(steps, order, axis=-1), axis=-1), axis=-1)


# --------------------------------------------------------------------------------------------------
# jaxq


def bench_jaxq(args):
    import jax
    import numpy as np
    import jaxq
    import importlib

    from jaxq.llm.simulate import simulate
    from jaxq.simulate import CapacityError

    # The module, not the function of the same name that jaxq.llm exports.
    simulate_module = importlib.import_module("jaxq.llm.simulate")
    workload, capped = capped_workload(args)
    system = make_system(args)

    def run(**options):
        cpu, start = time.process_time(), time.perf_counter()
        result = simulate(system, workload, requests=args.requests, slots=args.slots, key=0,
                          lanes=args.lanes, **options)
        return result, time.perf_counter() - start, time.process_time() - cpu

    # Compile (same shapes and static arguments as the full run) and run one iteration; the
    # metrics of that stub run are empty, which numpy warns about.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _, first, _ = run(max_iterations=1, on_overflow="ignore")
    try:
        result, seconds, cpu = run()
    except CapacityError as err:
        sys.exit(f"bench_llm: {err}; raise --slots (now {args.slots})")
    iterations = np.asarray(result.iterations).reshape(-1)
    boundaries = np.asarray(result.boundaries).reshape(-1)
    preemptions = np.asarray(result.preemptions).reshape(-1)
    arrival = np.asarray(result.arrival_time).reshape(args.configs, -1)
    latency = np.asarray(result.latency).reshape(args.configs, -1)
    devices = jax.devices()
    workers = simulate_module._default_workers()
    lanes = min(args.configs, args.lanes or simulate_module._default_lanes(args.configs, workers))
    workers = max(1, min(workers, args.configs // lanes))  # as simulate's _run_all
    row = {
        "engine": f"jaxq {jaxq.__version__} (vmapped, {lanes} lanes x {workers} worker "
                  f"threads, 1 CPU device)",
        "configs": args.configs, "iterations": int(iterations.sum()), "seconds": seconds,
        "config_iterations_per_second": float(iterations.sum()) / seconds,
        "cpu_seconds": cpu, "preemptions": int(preemptions.sum()),
    }
    stats = {
        "compile_seconds": first,
        "iterations_per_config": {"min": int(iterations.min()), "mean": float(iterations.mean()),
                                  "max": int(iterations.max())},
        "lanes": lanes,
        "boundaries_per_config": {"mean": float(boundaries.mean()), "max": int(boundaries.max())},
        "preemptions_per_config": {"min": int(preemptions.min()),
                                   "mean": float(preemptions.mean()),
                                   "max": int(preemptions.max())},
        "configs_with_preemptions": int(np.sum(preemptions > 0)),
        "pauses": int(np.sum(result.pauses)),
        "peak_kv_tokens": int(np.max(result.peak_kv_tokens)),
        "max_in_system": int(np.max(max_in_system(arrival, latency))),
        "mean_batch_size": float(np.mean(result.mean_batch_size)),
        "capped": capped,
        "jax_version": jax.__version__, "device_kind": devices[0].device_kind,
        "devices": len(devices),
    }
    return row, stats, result, system, workload


# --------------------------------------------------------------------------------------------------
# The reference


def reference_tasks(args, result, system, workload):
    """(subset, tasks): the configurations the reference runs, each with its requests and its
    ReferenceConfig fields, after checking the re-sampled requests against jaxq's result."""
    import numpy as np

    k = min(args.reference_configs, args.configs)
    subset = sorted({int(i) for i in np.round(np.linspace(0, args.configs - 1, k))})
    flat, reqs = sampled_requests(system, workload, args.requests, key=0)
    gap = np.asarray(reqs.gap, np.float64)
    prompt, output = np.asarray(reqs.prompt), np.asarray(reqs.output)
    prediction = np.asarray(reqs.prediction, np.float64)
    arrival = np.cumsum(gap, axis=-1)
    # The same requests as jaxq's run: its arrival times (from the first arrival) and outputs.
    reported_arrival = np.asarray(result.arrival_time).reshape(args.configs, -1)
    reported_output = np.asarray(result.output_tokens).reshape(args.configs, -1)
    if not (np.array_equal(reported_output, output)
            and np.allclose(reported_arrival, arrival, rtol=1e-12, atol=0)):
        sys.exit("bench_llm: the re-sampled requests differ from those of jaxq's run "
                 "(jaxq.llm.simulate's internals changed?)")
    tasks = []
    for i in subset:
        fields = {name: np.asarray(getattr(flat, name)[i]).item() for name in ENGINE_FIELDS}
        fields.update(policy="sprpt", preemption=system.preemption, admission=system.admission,
                      pause_kv=system.pause_kv, keep_seconds=float(flat.keep_seconds[i]))
        tasks.append((i, arrival[i].tolist(), prompt[i].tolist(), output[i].tolist(),
                      prediction[i].tolist(), fields, pauses_of(reqs, i)))
    return subset, tasks


def pauses_of(reqs, i):
    """Configuration i's tool calls as the reference takes them (a list per request of (at,
    seconds, predicted seconds)), or None without calls."""
    import numpy as np

    if reqs.pause_at is None:
        return None
    at, seconds = np.asarray(reqs.pause_at[i]), np.asarray(reqs.pause_for[i], np.float64)
    predicted = np.asarray(reqs.pause_predicted[i], np.float64)
    return [[(int(a), float(t), float(y)) for a, t, y in zip(at[j], seconds[j], predicted[j])
             if a > 0] for j in range(at.shape[0])]


def _ready(barrier):
    """Worker initializer: import the reference, then wait for every worker and the parent."""
    import llm_reference  # noqa: F401
    barrier.wait()


def _run_share(share):
    """One process's share: ([(index, iterations, preemptions)], start, end, CPU seconds), with
    wall-clock times comparable across processes."""
    from llm_reference import ReferenceConfig, run_reference

    start, cpu = time.time(), time.process_time()
    out = []
    for index, arrival, prompt, output, prediction, fields, pauses in share:
        ref = run_reference(arrival, prompt, output, prediction, ReferenceConfig(**fields),
                            pauses=pauses)
        out.append((index, ref.iterations, ref.total_preemptions))
    return out, start, time.time(), time.process_time() - cpu


def bench_reference(args, tasks) -> tuple[dict, list]:
    processes = min(cores(), len(tasks))
    # Spread the subset (ordered by sigma) round-robin, so each share has every noise level.
    shares = [tasks[p::processes] for p in range(processes)]
    # spawn, not fork: the parent has started jax's threads, and forking a threaded process
    # can deadlock.
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes + 1)
    with context.Pool(processes, initializer=_ready, initargs=(barrier,)) as pool:
        barrier.wait()
        results = pool.map(_run_share, shares, chunksize=1)
    seconds = max(r[2] for r in results) - min(r[1] for r in results)
    counts = sorted(c for r in results for c in r[0])
    iterations = sum(c[1] for c in counts)
    row = {"engine": f"reference, plain Python ({processes} processes)", "configs": len(tasks),
           "iterations": iterations, "seconds": seconds,
           "config_iterations_per_second": iterations / seconds,
           "cpu_seconds": sum(r[3] for r in results),
           "preemptions": sum(c[2] for c in counts)}
    return row, counts


def check_same(counts, jaxq_result) -> list[str]:
    """Per configuration of the subset: the reference's iterations and preemptions must equal
    jaxq's. Returns the mismatches (empty: all equal)."""
    import numpy as np

    iterations = np.asarray(jaxq_result.iterations).reshape(-1)
    preemptions = np.asarray(jaxq_result.preemptions).reshape(-1)
    return [f"configuration {i}: reference {it} iterations / {pre} preemptions, jaxq "
            f"{int(iterations[i])} / {int(preemptions[i])}"
            for i, it, pre in counts
            if it != int(iterations[i]) or pre != int(preemptions[i])]


# --------------------------------------------------------------------------------------------------
# Report


def machine(stats: dict) -> dict:
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"cpu": cpu_model(), "cores": cores(), "python": platform.python_version(),
            "jax": stats["jax_version"], "device_kind": stats["device_kind"],
            "devices": stats["devices"], "load_average_1min_at_start": load}


def describe(indices) -> str:
    if len(indices) <= 4:
        return ", ".join(map(str, indices))
    return f"{indices[0]}, {indices[1]}, ..., {indices[-1]}"


def notes(args, rows, stats, subset, mismatches) -> list[str]:
    jaxq_row = rows[0]
    p = stats["preemptions_per_config"]
    it = stats["iterations_per_config"]
    bd = stats["boundaries_per_config"]
    (p_cap, p_frac), (o_cap, o_frac) = (stats["capped"][name].values()
                                         for name in ("prompt", "output"))
    return [
        f"Workload: azure-conversation at {args.rate:g} requests/s, {args.requests} requests per "
        f"configuration; token laws capped so that P + O - 1 <= {args.kv_capacity:,} (prompts at "
        f"{p_cap:,} tokens: {100 * p_frac:.2f}% of samples capped; outputs at {o_cap:,}: "
        f"{100 * o_frac:.3f}%).",
        f"Engine: KV capacity {args.kv_capacity:,} tokens, sprpt, LognormalNoise(sigma) with sigma "
        f"= linspace(0, 2, {args.configs}), seed = configuration index, recompute preemption, "
        f"optimistic admission, {args.slots} slots (at most {stats['max_in_system']} requests "
        f"were in system at once).",
        *([f"Tool calls: up to {args.tool_calls} per request, each with probability "
           f"{TOOL_CALL_PROBABILITY}, exponential with mean {TOOL_CALL_SECONDS} s; pause_kv "
           f"{args.pause_kv} (keep_seconds {KEEP_SECONDS}), host memory {args.kv_capacity:,} "
           f"tokens; {stats['pauses']:,} calls in all."] if args.tool_calls else []),
        f"Memory pressure: {jaxq_row['preemptions']:,} preemptions in all "
        f"({stats['configs_with_preemptions']} of {args.configs} configurations preempted; "
        f"{p['min']} / {p['mean']:.0f} / {p['max']} per configuration, min / mean / max); peak "
        f"KV {stats['peak_kv_tokens']:,} tokens; mean batch {stats['mean_batch_size']:.1f} "
        f"requests.",
        f"Iterations per configuration: {it['min']:,} / {it['mean']:,.0f} / {it['max']:,} "
        f"(min / mean / max); of them, boundaries computed in full (the rest are pure-decode "
        f"runs advanced in closed form): {bd['mean']:,.0f} / {bd['max']:,} (mean / max). jaxq "
        f"steps {stats['lanes']} configurations at a time in one vmapped call, and a lane whose "
        f"configuration has finished takes the next one between calls (simulate's lanes).",
        f"jaxq: first call (compile + 1 iteration) {stats['compile_seconds']:.1f} s; the row is "
        f"the second call.",
        f"Reference: {len(subset)} configurations (indices {describe(subset)}: same requests and "
        f"predictions as jaxq's); "
        + ("their iteration and preemption counts equal jaxq's, configuration by configuration."
           if not mismatches else
           f"MISMATCH: {len(mismatches)} of them differ from jaxq's run: "
           + "; ".join(mismatches) + "."),
        "configuration-iterations/s: the sum over configurations of the engine iterations "
        "simulated, divided by wall seconds; ratio: jaxq's rate divided by the row's. Per CPU "
        "second: the same sum divided by the CPU time of the processes that simulated (jaxq's "
        "process; the reference's workers, summed), less sensitive to other load on the machine.",
    ]


def table(rows, info, note_lines) -> str:
    load = info["load_average_1min_at_start"]
    lines = [
        f"Machine: {info['cpu']}, {info['cores']} cores; Python {info['python']}, "
        f"JAX {info['jax']} ({info['devices']} x {info['device_kind']})"
        + (f"; 1-minute load average at start {load:.2f}." if load is not None else "."),
        "",
        "| engine | configurations | iterations | seconds | CPU seconds "
        "| configuration-iterations/s | ratio | per CPU second | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['engine']} | {row['configs']} | {row['iterations']:,} | "
                     f"{row['seconds']:.1f} | {row['cpu_seconds']:.1f} | "
                     f"{row['config_iterations_per_second']:,.0f} | {row['ratio']:,.2f} | "
                     f"{row['config_iterations_per_cpu_second']:,.0f} | "
                     f"{row['cpu_ratio']:,.2f} |")
    return "\n".join(lines + [""] + note_lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", type=int, default=256, help="jaxq configurations")
    parser.add_argument("--requests", type=int, default=200, help="requests per configuration")
    parser.add_argument("--rate", type=float, default=0.75, help="arrivals per second")
    parser.add_argument("--kv-capacity", type=int, default=16_000, help="KV-cache tokens")
    parser.add_argument("--slots", type=int, default=48,
                        help="jaxq request slots (at least the most requests in system)")
    parser.add_argument("--reference-configs", type=int, default=32,
                        help="configurations the reference runs (a subset of jaxq's)")
    parser.add_argument("--lanes", type=int, default=None,
                        help="configurations jaxq steps together (default: simulate's)")
    parser.add_argument("--tool-calls", type=int, default=0,
                        help=f"tool calls per request at most (each with probability "
                             f"{TOOL_CALL_PROBABILITY}, {TOOL_CALL_SECONDS} s on average)")
    parser.add_argument("--pause-kv", default="auto", choices=("keep", "discard", "swap", "auto"),
                        help="with --tool-calls: a paused request's KV")
    parser.add_argument("--quick", action="store_true", help="smoke run with tiny sizes")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.quick:
        args.configs, args.requests, args.reference_configs = 8, 40, 2
    args.slots = min(args.slots, args.requests)
    return args


def main(argv=None):
    args = parse_args(argv)
    jaxq_row, stats, result, system, workload = bench_jaxq(args)
    subset, tasks = reference_tasks(args, result, system, workload)
    ref_row, counts = bench_reference(args, tasks)
    mismatches = check_same(counts, result)
    if jaxq_row["preemptions"] == 0:
        print("bench_llm: warning: no request was preempted; the workload does not put the KV "
              "cache under pressure (raise --rate or lower --kv-capacity)", file=sys.stderr)
    rows = [jaxq_row, ref_row]
    for row in rows:
        row["config_iterations_per_cpu_second"] = row["iterations"] / row["cpu_seconds"]
        row["ratio"] = (jaxq_row["config_iterations_per_second"]
                        / row["config_iterations_per_second"])
        row["cpu_ratio"] = (jaxq_row["config_iterations_per_cpu_second"]
                            / row["config_iterations_per_cpu_second"])
    info = machine(stats)
    note_lines = notes(args, rows, stats, subset, mismatches)
    if args.json:
        print(json.dumps({
            "machine": info, "rate": args.rate, "requests": args.requests,
            "kv_capacity": args.kv_capacity, "slots": args.slots, "rows": rows,
            "reference_subset": subset, "mismatches": mismatches,
            "jaxq": {k: v for k, v in stats.items()
                     if k not in ("jax_version", "device_kind", "devices")},
            "notes": note_lines}, indent=2))
    else:
        print(table(rows, info, note_lines))
    if mismatches:
        # The table is printed (the rates stand), but the run is not a valid comparison.
        print(f"bench_llm: {len(mismatches)} of {len(subset)} configurations differ between the "
              "reference and jaxq (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
