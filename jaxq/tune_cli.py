"""`jaxq tune queue|llm`: learn a policy's parameters (jaxq.tune) from the command line.

    jaxq tune queue --policy onebit --predictor exponential --load 0.6,0.8 --tune threshold --json
    jaxq tune llm --workload azure-conversation --rate 2.4 --policy sprpt-limited --aging 10 \
        --predictor lognormal --tune c,aging:20 --objective latency_p99 --json

The options are those of `jaxq queue` and `jaxq llm`, except that --sigma (and, for the queue,
--load) may be a comma-separated list: one tuning problem per value (their product), all run
side by side. --jobs / --requests, --replicas and --seed set the exact engine's final
measurement of the learned policy. --tune NAME:SCALE sets the unit of the optimiser's steps for
that parameter (jaxq.tune).
"""

from __future__ import annotations

import copy
import itertools
import sys

import numpy as np

TUNE_DEFAULTS = dict(steps=100, lr=0.05, tau="0.3:0.03", tune_jobs=500, tune_replicas=16,
                     tune_capacity=64, es_pairs=8, es_sigma=0.1, spa_flips=8)
LLM_TUNE_DEFAULTS = dict(steps=30, lr=0.1, tune_requests=1000, tune_replicas=2, es_pairs=4,
                         es_sigma=0.1, tau="30:30", tune_slots=128)


def add_tune_parser(sub):
    from jaxq.cli import add_queue_options
    from jaxq.llm.cli import add_llm_options
    from jaxq.tune import LLM_OBJECTIVES, METHODS, OBJECTIVES

    t = sub.add_parser("tune", help="learn policy parameters by gradient (or evolution "
                                    "strategies)")
    engines = t.add_subparsers(dest="engine", required=True)
    q = engines.add_parser("queue", conflict_handler="resolve",
                           help="tune an M/G/1 policy; measured on the exact engine")
    add_queue_options(q)
    q.add_argument("--load", required=True,
                   help="lambda * E[S] in (0, 1); a comma-separated list tunes each load")
    q.add_argument("--sigma", default="0.5",
                   help="lognormal predictor noise; a comma-separated list tunes each value")
    g = _add_common(q, TUNE_DEFAULTS, OBJECTIVES, "mean_response_time", tau_unit="")
    g.add_argument("--method", default="gradient", choices=METHODS,
                   help="gradient: through the relaxed engine; spa: the onebit threshold's "
                        "derivative on the exact engine from runs with one job's class "
                        "flipped; es: evolution strategies on the exact engine")
    g.add_argument("--spa-flips", type=int, default=TUNE_DEFAULTS["spa_flips"],
                   help="class flips per run and step (spa)")
    g.add_argument("--tune-jobs", type=int, default=TUNE_DEFAULTS["tune_jobs"],
                   help="jobs per run in each step")
    g.add_argument("--tune-capacity", type=int, default=TUNE_DEFAULTS["tune_capacity"],
                   help="job slots of the relaxed engine")

    m = engines.add_parser("llm", conflict_handler="resolve",
                           help="tune an LLM engine policy by evolution strategies on the exact "
                                "engine, or by gradient through the relaxed one")
    add_llm_options(m)
    m.add_argument("--sigma", default="0.5",
                   help="lognormal predictor noise; a comma-separated list tunes each value")
    g = _add_common(m, LLM_TUNE_DEFAULTS, LLM_OBJECTIVES, "latency_mean", tau_unit=" in tokens")
    g.add_argument("--tune-requests", type=int, default=LLM_TUNE_DEFAULTS["tune_requests"],
                   help="requests per run in each step")
    g.add_argument("--method", default="es", choices=("es", "gradient"),
                   help="es: evolution strategies on the exact engine; gradient: through the "
                        "relaxed LLM engine (recompute preemption, optimistic admission)")
    g.add_argument("--tune-slots", type=int, default=LLM_TUNE_DEFAULTS["tune_slots"],
                   help="request slots of the relaxed engine (gradient)")


def _add_common(p, defaults, objectives, objective, tau_unit):
    from jaxq.tune import OPTIMIZERS, TUNABLE

    g = p.add_argument_group("tuning")
    g.add_argument("--tune", required=True,
                   help=f"parameters to learn, NAME[:SCALE] comma-separated: "
                        f"{', '.join(TUNABLE)}")
    g.add_argument("--objective", default=objective,
                   help=f"a metric or a weighted mix NAME:W,NAME:W of: {', '.join(objectives)} "
                        f"(goodput is maximised)")
    g.add_argument("--steps", type=int, default=defaults["steps"], help="optimiser steps")
    g.add_argument("--optimizer", default="adam", choices=tuple(OPTIMIZERS),
                   help="optax optimiser")
    g.add_argument("--lr", type=float, default=defaults["lr"], help="learning rate")
    g.add_argument("--tune-replicas", type=int, default=defaults["tune_replicas"],
                   help="runs per step and problem")
    g.add_argument("--es-pairs", type=int, default=defaults["es_pairs"],
                   help="antithetic pairs per step (es)")
    g.add_argument("--es-sigma", type=float, default=defaults["es_sigma"],
                   help="perturbation scale in the unconstrained coordinate (es)")
    g.add_argument("--tau", default=defaults["tau"],
                   help=f"temperature{tau_unit} START:END, geometric over the steps (gradient)")
    g.add_argument("--mode", default="forward", choices=("forward", "reverse"),
                   help="forward-mode (few parameters) or reverse-mode gradients")
    return g


def _floats(name, text) -> list[float]:
    try:
        return [float(v) for v in str(text).split(",")]
    except ValueError:
        raise ValueError(f"--{name} must be a number or a comma-separated list, got "
                         f"{text!r}") from None


def _problems(args, build, axes):
    """(one batched system, the values of `axes` of each problem, the workload): one problem per
    element of the product of the axes' lists; build(args) -> (system, workload or None)."""
    from jaxq.sweep.engines import stack

    points = list(itertools.product(*(_floats(a, getattr(args, a)) for a in axes)))
    built = []
    for point in points:
        one = copy.copy(args)
        for a, v in zip(axes, point):
            setattr(one, a, v)
        built.append(build(one))
    return stack([system for system, _ in built]), points, built[0][1]


def _names_and_scales(text) -> tuple[list[str], dict]:
    names, scales = [], {}
    for part in str(text).split(","):
        name, _, scale = part.strip().partition(":")
        if not name:
            continue
        names.append(name)
        if scale:
            try:
                scales[name] = float(scale)
            except ValueError:
                raise ValueError(f"--tune {part.strip()}: the scale must be a number") from None
    return names, scales


def _tau(text) -> tuple[float, float]:
    try:
        start, end = (float(v) for v in str(text).split(":"))
    except ValueError:
        raise ValueError(f"--tau must be START:END, got {text!r}") from None
    return start, end


def cmd_tune(args) -> dict:
    from jaxq import tune

    names, scales = _names_and_scales(args.tune)
    optimizer = tune.OPTIMIZERS[args.optimizer](args.lr)
    progress = _print_progress if not args.json and sys.stderr.isatty() else None
    common = dict(steps=args.steps, learning_rate=args.lr, optimizer=optimizer,
                  objective=args.objective, scales=scales, replicas=args.tune_replicas,
                  es_pairs=args.es_pairs, es_sigma=args.es_sigma, key=args.seed,
                  progress=progress)
    if args.engine == "queue":
        from jaxq.cli import build_system

        system, points, _ = _problems(args, lambda a: (build_system(a), None),
                                      ("load", "sigma"))
        r = tune.tune(system, names, method=args.method, tau=_tau(args.tau),
                      jobs=args.tune_jobs, capacity=args.tune_capacity, mode=args.mode,
                      spa_flips=args.spa_flips,
                      eval_jobs=args.jobs, eval_replicas=args.replicas, **common)
    else:
        from jaxq.llm.cli import build_llm_system

        if args.trace is not None:
            raise ValueError("jaxq tune llm needs --workload: a trace is one sample of "
                             "requests, and each step draws fresh ones")
        system, points, workload = _problems(args, build_llm_system, ("sigma",))
        args.rate = float(workload.rate)
        r = tune.tune_llm(system, workload, names, requests=args.tune_requests,
                          eval_requests=args.requests, eval_replicas=args.replicas,
                          slots=args.slots, ttft_slo=args.ttft_slo, tpot_slo=args.tpot_slo,
                          max_iterations=args.max_iterations, method=args.method,
                          tau=_tau(args.tau), mode=args.mode, relaxed_slots=args.tune_slots,
                          **common)
    if progress:
        print(file=sys.stderr)
    return _report(args, r, points)


def _print_progress(done, total):
    print(f"\rstep {done}/{total}", end="", file=sys.stderr, flush=True)


def _report(args, r, points) -> dict:
    one = len(points) == 1

    def out(a):
        a = np.asarray(a, np.float64).reshape(len(points), *np.shape(a)[1:])
        return a[0].tolist() if one else a.tolist()

    def out_int(a):
        a = np.asarray(a, np.int64).reshape(len(points))
        return int(a[0]) if one else a.tolist()

    batch_ndim = np.ndim(r.objective)

    def per_step(a):  # (steps,) + S [+ (D,)] -> per problem, or one list
        a = np.asarray(a, np.float64)
        data = a.shape[1 + batch_ndim:]  # () or (D,) for a vector (the MLP's weights)
        a = np.moveaxis(a.reshape(a.shape[0], len(points), *data), 1, 0)
        return a[0].tolist() if one else a.tolist()

    result = {"engine": args.engine, "policy": args.policy, "predictor": args.predictor,
              "method": r.method, "tuned": list(r.names), "objective": args.objective}
    if args.engine == "queue":
        result.update(service=args.service, load=out([p[0] for p in points]))
    else:
        result.update(workload=args.workload, rate=args.rate)
    if args.predictor == "lognormal":
        result["sigma"] = out([p[-1] for p in points])
    result.update({n: out(v) for n, v in r.values.items()})
    result["objective_value"] = out(r.objective)
    if args.engine == "queue":
        result.update(mean_response_time=out(r.hard.mean_response_time),
                      stderr=out(r.hard.stderr), mean_slowdown=out(r.hard.mean_slowdown),
                      p99=out(r.hard.p99), measured_jobs=out_int(r.hard.jobs),
                      overflow=out_int(r.hard.overflow))
    else:
        from jaxq.llm.cli import JSON_KEYS

        for k in JSON_KEYS:
            v = getattr(r.hard, k)
            result[k] = out_int(v) if np.issubdtype(np.asarray(v).dtype, np.integer) else out(v)
    result.update(problems=r.problems, seconds=r.seconds)
    if args.json:  # the optimisation's trace: too long for the table
        result["trace"] = {"objective": per_step(r.trace_objective),
                           "tau": [None if np.isnan(t) else float(t) for t in r.trace_tau],
                           **{n: per_step(v) for n, v in r.trace_values.items()}}
    return result
