"""The relaxed LLM engine (jaxq.llm.relaxed) against the exact one: value bias, gradient against
evolution strategies on the exact engine, and the cost of each, with the KV cache ample (few
preemptions) and tight (many).

The problem: azure-conversation (context capped at 8,192 tokens) at 2 requests/s on rtx-4090 /
llama-3.1-8b (KV capacity 42,127 tokens, and 12,000 for the tight case), recompute
preemption, lognormal predictions (sigma 0.5); the policy ranks by predicted remaining output
plus w_prompt times the prompt length (Linear(0, 1, 0, 0, w_prompt=0.3)); objective mean TTFT.

For each KV capacity:
1. The exact engine's mean TTFT and preemptions per request, and the relaxed engine's on the
   same number of fresh runs, per tau (tokens).
2. d(mean TTFT)/d(w_prompt): the relaxed pathwise derivative (one per run, mean +- standard
   error), and evolution strategies on the exact engine (antithetic pairs, common random
   numbers; mean +- standard error over repeated estimates). Where they part is the bias of the
   relaxation, preemptions (hard events the gradient does not see) included.

    python scripts/bench_tune_llm.py                  # about 20 minutes on 2 cores
    python scripts/bench_tune_llm.py --relaxed-only   # the relaxed engine's rows (2 minutes)
    python scripts/bench_tune_llm.py --rate 3 --kv 42127   # a higher load (7 minutes)
    python scripts/bench_tune_llm.py --quick          # smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from _machine import cores, cpu_model  # scripts/, beside this file


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--relaxed-only", action="store_true",
                   help="skip the exact engine and evolution strategies")
    p.add_argument("--rate", type=float, default=2.0, help="requests per second")
    p.add_argument("--kv", default="42127,12000", help="KV capacities (tokens), comma-separated")
    args = p.parse_args()
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxq
    from jaxq import tune
    from jaxq.llm import LLMSystem, WORKLOADS, costs, simulate
    from jaxq.llm.relaxed import RelaxedLLMSpec
    from jaxq.system import flatten

    requests, runs = (500, 32) if not args.quick else (100, 4)
    pairs, repeats, es_replicas = (16, 3, 8) if not args.quick else (2, 2, 2)
    taus = [30.0, 10.0, 3.0, 1.0] if not args.quick else [10.0]
    workload = WORKLOADS["azure-conversation"](rate=args.rate, max_tokens=8192)
    terms = (("ttft_mean", 1.0),)
    se = lambda x: float(np.std(x, ddof=1) / np.sqrt(len(x)))  # noqa: E731
    print(f"{cpu_model()}, {cores()} cores, {platform.python_version()}")
    def exact_and_es(system) -> dict:
        """The exact engine's mean TTFT and preemptions, and the ES estimate of the derivative
        (in the tuner's coordinate: w_prompt = u)."""
        start = time.perf_counter()
        exact = simulate(system, workload, requests=requests, replicas=runs, key=3)
        out = dict(exact_ttft=float(exact.ttft_mean),
                   exact_preemptions=float(np.sum(exact.preemptions)) / (runs * requests),
                   exact_seconds=time.perf_counter() - start)
        print(f"  exact engine: mean TTFT {out['exact_ttft']:.3f} s, "
              f"{out['exact_preemptions']:.3f} preemptions per request "
              f"({out['exact_seconds']:.1f} s)", flush=True)
        flat, _ = flatten(jax.tree_util.tree_map(lambda x: jnp.asarray(x)[None], system))
        batch = tune._Problems(flat, (1,), ("w_prompt",), (1.0,))

        def evaluate(points):
            r = simulate(points, workload, requests=requests, replicas=es_replicas, key=0,
                         on_overflow="ignore")
            return tune.objective_value(r, terms), np.sum(r.unfinished)

        start = time.perf_counter()
        es = np.array([float(tune._es_step(batch, batch.u0, jax.random.key(50 + i), evaluate,
                                           pairs=pairs, sigma=0.1)[1][0, 0])
                       for i in range(repeats)])
        out.update(es=float(es.mean()), es_se=se(es),
                   es_seconds=(time.perf_counter() - start) / repeats)
        print(f"  es on the exact engine: dTTFT/dw_prompt {es.mean():+.4f} +- {se(es):.4f} "
              f"({out['es_seconds']:.1f} s per estimate of {2 * pairs} x {es_replicas} runs)",
              flush=True)
        return out

    rows = []
    for kv in (int(v) for v in args.kv.split(",")):
        system = LLMSystem(jaxq.Linear(0.0, 1.0, 0.0, 0.0, w_prompt=0.3),
                           jaxq.LognormalNoise(0.5), preemption="recompute",
                           **{**costs("rtx-4090", "llama-3.1-8b"), "kv_capacity": kv})
        row = dict(kv_capacity=kv, relaxed=[])
        print(f"kv {kv}:", flush=True)
        if not args.relaxed_only:
            row.update(exact_and_es(system))
        layout = tune.Layout(["w_prompt"])
        spec = RelaxedLLMSpec(slots=128, requests=requests, warmup=requests // 10,
                              steps=6 * requests)
        one = jax.jit(jax.vmap(lambda k, tau: tune.relaxed_llm_gradient(
            spec, terms, system, workload, layout, jnp.asarray([0.3]), k[None], tau),
            in_axes=(0, None)))
        keys = jax.random.split(jax.random.key(9), runs)
        for tau in taus:
            start = time.perf_counter()
            value, grad, problems = (np.asarray(a) for a in one(keys, tau))
            seconds = time.perf_counter() - start
            grad = grad[:, 0]
            row["relaxed"].append(dict(tau=tau, ttft=float(value.mean()), ttft_se=se(value),
                                       gradient=float(grad.mean()), gradient_se=se(grad),
                                       problems=int(problems.sum()), seconds=seconds))
            print(f"  relaxed tau {tau:<5g}: mean TTFT {value.mean():.3f} +- {se(value):.3f}, "
                  f"dTTFT/dw_prompt {grad.mean():+.4f} +- {se(grad):.4f}, problems "
                  f"{int(problems.sum())} ({seconds:.1f} s, compilation included)", flush=True)
        rows.append(row)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
