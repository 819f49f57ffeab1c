"""Throughput of the policies whose rank jumps at a level of attained service, against sprpt, on
the same engine in the same run: how much skippredict and delaypredict, the server-time model
of the cost of predictions (prediction work and the rank jumps at its end) and sprpt-bounce
(a jump at a = y) cost per simulated job.

    python scripts/bench_prediction_cost.py [--configs 256] [--jobs 20000] [--quick]

Every case runs `configs` configurations (seeds 0..configs-1) of M/M/1 at load 0.6 with
exponential predictions, one replica each, twice with different keys; the second (compiled)
run is timed. A full prediction costs 0.2, a one-bit one 0.02; threshold and limit 1.
"""

from __future__ import annotations

import argparse
import json
import time

from _machine import cores, cpu_model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=256)
    parser.add_argument("--jobs", type=int, default=20000, help="measured jobs per configuration")
    parser.add_argument("--quick", action="store_true", help="smoke run with tiny sizes")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.quick:
        args.configs, args.jobs = 8, 500

    import jax
    jax.config.update("jax_num_cpu_devices", cores())
    import jax.numpy as jnp
    import jaxq

    cases = [
        ("sprpt (baseline)", jaxq.SPRPT(), None),
        ("skippredict, external cost", jaxq.SkipPredict(1.0), "external"),
        ("delaypredict, external cost", jaxq.DelayPredict(1.0), "external"),
        ("sprpt, server time", jaxq.SPRPT(), "server"),
        ("skippredict, server time", jaxq.SkipPredict(1.0), "server"),
        ("delaypredict, server time", jaxq.DelayPredict(1.0), "server"),
        ("sprpt-bounce, no cost", jaxq.SPRPTBounce(), None),
    ]
    rows = []
    for label, policy, model in cases:
        cost = None if model is None else jaxq.PredictionCost(0.2, 0.02, model)
        system = jaxq.System(0.6, jaxq.Exponential(), jaxq.ExponentialNoise(), policy,
                             seed=jnp.arange(args.configs), prediction_cost=cost)

        def run(key):
            start = time.perf_counter()
            result = jaxq.simulate(system, jobs=args.jobs, replicas=1, capacity=128, key=key)
            return result, time.perf_counter() - start

        run(0)
        result, seconds = run(1)
        rows.append({"case": label, "jobs_per_second": float(result.jobs.sum()) / seconds,
                     "mean_cost": float(result.cost.mean())})
    base = rows[0]["jobs_per_second"]
    for row in rows:
        row["ratio_to_sprpt"] = row["jobs_per_second"] / base
    out = {"machine": f"{cpu_model()}, {cores()} cores", "configs": args.configs,
           "jobs_per_config": args.jobs, "rows": rows}
    if args.json:
        print(json.dumps(out))
        return
    print(f"{out['machine']}; {args.configs} configurations x {args.jobs} jobs")
    print(f"{'case':<30} {'jobs/s':>12} {'vs sprpt':>9} {'mean cost':>10}")
    for row in rows:
        print(f"{row['case']:<30} {row['jobs_per_second']:>12,.0f} {row['ratio_to_sprpt']:>9.2f} "
              f"{row['mean_cost']:>10.4f}")


if __name__ == "__main__":
    main()
