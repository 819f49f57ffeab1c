"""The relaxed gradient's bias against temperature, and what tuning by gradient costs against the
gradient-free baseline, on a problem whose answer is known in closed form.

The problem: non-preemptive onebit on M/M/1 with exponential prediction noise (jaxq.theory gives
the mean response time for every threshold T, and the optimum).

1. Bias vs tau, at load 0.6 and T in {0.3, 1.5}: the relaxed engine's mean response time and its
   pathwise derivative dE[T]/dT (forward mode, 64 runs of 1,000 jobs from an empty system, mean
   +- standard error across runs). The value is compared with the same runs at tau = 1e-6,
   which is the exact engine (tests/test_relaxed.py), so that the runs' start from empty is not
   counted as bias; the slope with the closed form's central difference (h = 1e-4).
   Beside it, the exact engine's derivative by class flips (method "spa", jaxq.spa), mean +-
   standard error over estimates of 8 runs each.
2. Time to objective, at load 0.6 from T = 0.3: `jaxq.tune.tune` by gradient, by class flips
   and by evolution strategies (the baseline), the same number of steps each; after every step
   the current T's exact mean response time (theory, so no measurement noise enters) is
   compared with the optimum. Reported: seconds (compilation included) and steps until it is within 1% of the
   optimum and stays there, and the ratio of each method to the baseline.

3. A learned rank with many parameters: the MLP rank h(y) - a (25 weights, jaxq.policies.MLP) on
   hyperexponential sizes (cv 4) with lognormal predictions (sigma 1) at load 0.8, where sprpt is
   far from the best rank of this form. (a) The pathwise derivative of the relaxed engine's mean
   response time in the output bias c (which scales h) against the same engine's central
   difference with h = 0.1 on the same runs, per tau: where they part, the relaxed objective
   changes in windows too narrow for any sample to land in. (b) Seconds per gradient, forward
   mode against checkpointed reverse mode. (c) Time to objective from sprpt's weights: by
   gradient (reverse mode, tau = 1) and by evolution strategies, the same steps each; the
   exact engine measures the rank of every step (fresh seeds), and "reached" is within 5% of
   pspjf's mean response time (the best hand-written rank of this family here).

    python scripts/bench_tune.py             # about 5 minutes on 2 cores
    python scripts/bench_tune.py --quick     # smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from _machine import cores, cpu_model  # scripts/, beside this file

LOAD = 0.6


def problem():
    import jaxq

    return jaxq.Exponential(), jaxq.ExponentialNoise()


def bias_table(args):
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxq
    from jaxq import theory, tune
    from jaxq.relaxed import RelaxedSpec
    from jaxq.simulate import _replica_keys
    from jaxq.spa import run_spec, threshold_derivative

    service, predictor = problem()
    spec = RelaxedSpec(capacity=64, jobs=args.jobs, warmup=args.jobs // 10, steps=2 * args.jobs)
    terms = (("mean_response_time", 1.0),)
    se = lambda x: x.std(ddof=1) / np.sqrt(len(x))  # noqa: E731
    # One run per vmapped lane: the spread across runs gives the standard errors. The system
    # (its threshold) and tau are arguments, so each function compiles once for the whole table.
    per_run = jax.jit(jax.vmap(lambda k, system, u, tau: tune.relaxed_gradient(
        spec, terms, system, tune.Layout(["threshold"]), u, k[None], tau)[:2], in_axes=(0, None, None, None)))
    spa = jax.jit(lambda flat, keys, fkey: threshold_derivative(
        run_spec(args.jobs, args.jobs // 10, 256), terms, flat, keys, 8, fkey))
    rows = []
    for t in (0.3, 1.5):
        exact = theory.mean_response_time(jaxq.OneBit(t), service, predictor, LOAD)
        h = 1e-4
        slope = (theory.mean_response_time(jaxq.OneBit(t + h), service, predictor, LOAD)
                 - theory.mean_response_time(jaxq.OneBit(t - h), service, predictor, LOAD)) / (2 * h)
        system = jaxq.System(LOAD, service, predictor, jaxq.OneBit(t))
        keys = _replica_keys(jax.random.key(11), jnp.asarray([0]), args.runs)[0]
        hard = None
        # The tuner's coordinate u (T = softplus(u)); dE/dT = dE/du / sigmoid(u).
        u = float(tune._to_u("positive", t))
        for tau in [1e-6] + args.taus:
            value, grad = per_run(keys, system, jnp.asarray([u]), tau)
            value = np.asarray(value)
            grad = np.asarray(grad)[:, 0] / float(jax.nn.sigmoid(u))
            if hard is None:
                hard = value
                continue
            bias = value - hard  # paired: the same runs
            rows.append(dict(T=t, tau=tau, relaxed=float(value.mean()),
                             exact_engine=float(hard.mean()), bias=float(bias.mean()),
                             bias_se=float(se(bias)), theory=float(exact),
                             slope=float(grad.mean()), slope_se=float(se(grad)),
                             theory_slope=float(slope)))
            print(f"T={t:<4g} tau={tau:<6g} E[T]: relaxed {value.mean():.4f}, exact engine "
                  f"{hard.mean():.4f}, bias {bias.mean():+.4f} +- {se(bias):.4f} (theory "
                  f"{exact:.4f}) | dE/dT: relaxed {grad.mean():+.4f} +- {se(grad):.4f}, theory "
                  f"{slope:+.4f}", flush=True)
        # The exact engine's derivative by class flips (jaxq.spa), on runs of as many jobs.
        flat = jax.tree_util.tree_map(lambda a: jnp.reshape(a, (1,)), system.broadcast())
        grad = np.array([float(spa(flat, _replica_keys(jax.random.key(11 + i),
                                                       jnp.asarray([0]), 8),
                                   jax.random.key(7 + i))[1][0])
                         for i in range(max(2, args.runs // 8))])  # 8 runs per estimate
        rows.append(dict(T=t, tau=None, method="spa", slope=float(grad.mean()),
                         slope_se=float(se(grad)), theory_slope=float(slope)))
        print(f"T={t:<4g} spa (8 flips per run, {8 * len(grad)} runs) dE/dT: "
              f"{grad.mean():+.4f} +- {se(grad):.4f}, theory {slope:+.4f}", flush=True)
    return rows


def time_to_objective(args):
    import numpy as np

    import jaxq
    from jaxq import theory, tune

    service, predictor = problem()
    best_t, best = theory.optimal_onebit_threshold(service, predictor, LOAD, False)
    out = {}
    for method in ("es", "gradient", "spa"):  # the baseline first
        stamps = []
        start = time.perf_counter()
        r = tune.tune(jaxq.System(LOAD, service, predictor, jaxq.OneBit(0.3)), ["threshold"],
                      method=method, steps=args.steps, learning_rate=0.1, tau=(0.1, 0.005),
                      jobs=400, replicas=16, eval_jobs=1000, eval_replicas=2,
                      progress=lambda done, total: stamps.append(time.perf_counter() - start))
        exact = np.array([theory.mean_response_time(jaxq.OneBit(float(t)), service, predictor,
                                                    LOAD)
                          for t in r.trace_values["threshold"]])
        # Step s's trace holds T before its update; T after the last update is r.values.
        after = np.append(exact[1:], theory.mean_response_time(
            jaxq.OneBit(float(r.values["threshold"])), service, predictor, LOAD))
        within = after <= best * 1.01
        reached = next((i for i in range(len(within)) if within[i:].all()), None)
        out[method] = dict(steps=None if reached is None else reached + 1,
                           seconds=None if reached is None else stamps[reached],
                           final_t=float(r.values["threshold"]), final=float(after[-1]),
                           total_seconds=stamps[-1])
        print(f"{method:8s}: within 1% of the optimum after "
              f"{out[method]['steps']} steps, {out[method]['seconds']} s; final T "
              f"{out[method]['final_t']:.3f} (optimum {best_t:.3f}), E[T] "
              f"{out[method]['final']:.4f} (optimum {best:.4f})", flush=True)
    es = out["es"]["seconds"]
    for method in ("gradient", "spa"):
        mine = out[method]["seconds"]
        out[method]["ratio"] = None if es is None or mine is None else mine / es
    out["optimum"] = dict(T=best_t, mean_response_time=best)
    return out


def mlp_table(args):
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxq
    from jaxq import tune
    from jaxq.policies import MLP
    from jaxq.relaxed import RelaxedSpec, run_one
    from jaxq.simulate import sample_chunk

    problem = dict(load=0.8, service=jaxq.Hyperexponential(cv=4.0),
                   predictor=jaxq.LognormalNoise(1.0))
    system = jaxq.System(policy=MLP(), **problem)
    se = lambda x: x.std(ddof=1) / np.sqrt(len(x))  # noqa: E731
    u0 = MLP().weights
    out = {"slopes": [], "cost": {}, "time_to_objective": {}}

    # (a) d E / d c: pathwise against the same engine's finite difference, on the same runs.
    n = args.mlp_jobs
    spec = RelaxedSpec(capacity=128, jobs=n, warmup=n // 10, steps=2 * n)
    chunks = jax.vmap(lambda k: sample_chunk(system, k, 0, n))(
        jax.random.split(jax.random.key(7), args.mlp_runs))

    def mean_at(c, tau, chunk):
        run = run_one(spec, MLP(u0.at[-1].set(c)), tau, chunk)
        return jnp.nanmean(run.response[spec.warmup:])

    value_and_slope = jax.jit(jax.vmap(
        lambda chunk, c, tau: jax.jvp(lambda c: mean_at(c, tau, chunk), (c,), (1.0,)),
        in_axes=(0, None, None)))
    for tau in args.mlp_taus:
        _, slope = (np.asarray(a) for a in value_and_slope(chunks, 0.0, tau))
        low, _ = value_and_slope(chunks, -0.1, tau)
        high, _ = value_and_slope(chunks, 0.1, tau)
        fd = (np.asarray(high) - np.asarray(low)) / 0.2
        out["slopes"].append(dict(tau=tau, pathwise=float(slope.mean()),
                                  pathwise_se=float(se(slope)), difference=float(fd.mean()),
                                  difference_se=float(se(fd))))
        print(f"mlp tau={tau:<6g} dE/dc: pathwise {slope.mean():+.3f} +- {se(slope):.3f}, "
              f"central difference (h 0.1) {fd.mean():+.3f} +- {se(fd):.3f}", flush=True)

    # (b) seconds per gradient of the 25 weights, 16 runs of 1,000 jobs.
    keys = jax.random.split(jax.random.key(3), 16)
    terms = (("mean_response_time", 1.0),)
    layout = tune.Layout(["mlp"], sizes=(u0.shape[0],))
    for mode in ("forward", "reverse"):
        spec = RelaxedSpec(capacity=128, jobs=1000, warmup=100, steps=2000,
                           checkpoint=mode == "reverse")
        grad = jax.jit(lambda u, k, spec=spec, mode=mode: tune.relaxed_gradient(
            spec, terms, system, layout, u, k, 1.0, mode)[1])
        jax.block_until_ready(grad(u0, keys))  # compile
        start = time.perf_counter()
        for _ in range(3):
            jax.block_until_ready(grad(u0, keys))
        out["cost"][mode] = (time.perf_counter() - start) / 3
        print(f"mlp gradient, {mode} mode: {out['cost'][mode]:.2f} s per gradient "
              f"(16 runs x 1,000 jobs, 25 weights)", flush=True)
    out["cost"]["reverse / forward"] = out["cost"]["reverse"] / out["cost"]["forward"]

    # (c) time to objective, from sprpt's weights.
    fresh = dict(problem, seed=1_000_003)
    target = 1.05 * float(jaxq.simulate(jaxq.System(policy=jaxq.PSPJF(), **fresh),
                                        jobs=args.mlp_eval_jobs, replicas=8,
                                        key=1).mean_response_time)
    for method in ("es", "gradient"):  # the baseline first
        stamps = []
        start = time.perf_counter()
        r = tune.tune(system, ["mlp"], method=method, mode="reverse", tau=(1.0, 1.0),
                      steps=args.mlp_steps, learning_rate=0.05, jobs=1000, capacity=128,
                      replicas=16, es_pairs=16, eval_jobs=1000, eval_replicas=2,
                      progress=lambda done, total: stamps.append(time.perf_counter() - start))
        after = np.concatenate([r.trace_values["mlp"][1:], r.values["mlp"][None]])
        exact = jaxq.simulate(jaxq.System(policy=MLP(after), **fresh), jobs=args.mlp_eval_jobs,
                              replicas=8, key=1, on_overflow="ignore").mean_response_time
        within = exact <= target
        reached = next((i for i in range(len(within)) if within[i:].all()), None)
        out["time_to_objective"][method] = dict(
            steps=None if reached is None else reached + 1,
            seconds=None if reached is None else stamps[reached], final=float(exact[-1]),
            total_seconds=stamps[-1])
        print(f"mlp {method:8s}: within 5% of pspjf ({target / 1.05:.3f}) after "
              f"{out['time_to_objective'][method]['steps']} steps, "
              f"{out['time_to_objective'][method]['seconds']} s; final E[T] {exact[-1]:.3f}",
              flush=True)
    es, mine = (out["time_to_objective"][m]["seconds"] for m in ("es", "gradient"))
    out["time_to_objective"]["ratio"] = None if es is None or mine is None else mine / es
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    args.taus = [1.0, 0.3, 0.1, 0.03, 0.01] if not args.quick else [0.1]
    args.jobs, args.runs = (1000, 64) if not args.quick else (200, 4)
    args.steps = 60 if not args.quick else 3
    args.mlp_taus = [1.0, 0.3, 0.1, 0.01] if not args.quick else [1.0]
    args.mlp_jobs, args.mlp_runs = (300, 512) if not args.quick else (100, 4)
    args.mlp_steps, args.mlp_eval_jobs = (40, 20_000) if not args.quick else (2, 1000)
    print(f"{cpu_model()}, {cores()} cores, {platform.python_version()}")
    rows = bias_table(args)
    cost = time_to_objective(args)
    for method in ("gradient", "spa"):
        ratio = cost[method]["ratio"]
        print(f"time to 1% of the optimum, {method} / evolution strategies: "
              f"{'never reached' if ratio is None else f'{ratio:.2f}'}")
    mlp = mlp_table(args)
    ratio = mlp["time_to_objective"]["ratio"]
    print(f"mlp: time to 5% of pspjf, gradient / evolution strategies: "
          f"{'never reached' if ratio is None else f'{ratio:.2f}'}")
    print(json.dumps({"bias": rows, "cost": cost, "mlp": mlp}))


if __name__ == "__main__":
    main()
