"""`jaxq tune queue`: learn a queue policy's parameters (jaxq.tune) from the command line.

    jaxq tune queue --policy onebit --predictor exponential --load 0.6,0.8 --tune threshold --json

The options are `jaxq queue`'s, except that --load and --sigma may be comma-separated lists: one
tuning problem per value (their product), all run side by side. --jobs, --replicas and --seed
set the exact engine's final measurement of the learned policy.
"""

from __future__ import annotations

import copy
import itertools
import sys

import numpy as np

TUNE_DEFAULTS = dict(steps=100, lr=0.05, tau="0.3:0.03", tune_jobs=500, tune_replicas=16,
                     tune_capacity=64, es_pairs=8, es_sigma=0.1)


def add_tune_parser(sub):
    from jaxq.cli import add_queue_options
    from jaxq.tune import OBJECTIVES, TUNABLE

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
    g = q.add_argument_group("tuning")
    g.add_argument("--tune", required=True,
                   help=f"parameters to learn, comma-separated: {', '.join(TUNABLE)}")
    g.add_argument("--method", default="gradient", choices=("gradient", "es"),
                   help="gradient: through the relaxed engine; es: evolution strategies on "
                        "the exact engine")
    g.add_argument("--objective", default="mean_response_time", choices=OBJECTIVES)
    g.add_argument("--steps", type=int, default=TUNE_DEFAULTS["steps"], help="optimiser steps")
    g.add_argument("--lr", type=float, default=TUNE_DEFAULTS["lr"], help="Adam learning rate")
    g.add_argument("--tau", default=TUNE_DEFAULTS["tau"],
                   help="temperature START:END, geometric over the steps (gradient)")
    g.add_argument("--mode", default="forward", choices=("forward", "reverse"),
                   help="forward-mode (few parameters) or reverse-mode gradients")
    g.add_argument("--tune-jobs", type=int, default=TUNE_DEFAULTS["tune_jobs"],
                   help="jobs per run in each step")
    g.add_argument("--tune-replicas", type=int, default=TUNE_DEFAULTS["tune_replicas"],
                   help="runs per step and problem")
    g.add_argument("--tune-capacity", type=int, default=TUNE_DEFAULTS["tune_capacity"],
                   help="job slots of the relaxed engine")
    g.add_argument("--es-pairs", type=int, default=TUNE_DEFAULTS["es_pairs"],
                   help="antithetic pairs per step (es)")
    g.add_argument("--es-sigma", type=float, default=TUNE_DEFAULTS["es_sigma"],
                   help="perturbation scale in the unconstrained coordinate (es)")


def _floats(name, text) -> list[float]:
    try:
        return [float(v) for v in str(text).split(",")]
    except ValueError:
        raise ValueError(f"--{name} must be a number or a comma-separated list, got "
                         f"{text!r}") from None


def build_problems(args):
    """(one batched System, the (load, sigma) of each problem): the product of the lists."""
    from jaxq.cli import build_system
    from jaxq.sweep.engines import stack

    pairs = list(itertools.product(_floats("load", args.load), _floats("sigma", args.sigma)))
    systems = []
    for load, sigma in pairs:
        one = copy.copy(args)
        one.load, one.sigma = load, sigma
        systems.append(build_system(one))
    return stack(systems), pairs


def _tau(text) -> tuple[float, float]:
    try:
        start, end = (float(v) for v in str(text).split(":"))
    except ValueError:
        raise ValueError(f"--tau must be START:END, got {text!r}") from None
    return start, end


def cmd_tune(args) -> dict:
    from jaxq.tune import tune

    system, pairs = build_problems(args)
    names = [n.strip() for n in args.tune.split(",") if n.strip()]
    progress = None
    if not args.json and sys.stderr.isatty():
        def progress(done, total):
            print(f"\rstep {done}/{total}", end="", file=sys.stderr, flush=True)
    r = tune(system, names, method=args.method, steps=args.steps, learning_rate=args.lr,
             tau=_tau(args.tau), jobs=args.tune_jobs, replicas=args.tune_replicas,
             capacity=args.tune_capacity, mode=args.mode, objective=args.objective,
             es_pairs=args.es_pairs, es_sigma=args.es_sigma, eval_jobs=args.jobs,
             eval_replicas=args.replicas, key=args.seed, progress=progress)
    if progress:
        print(file=sys.stderr)
    one = len(pairs) == 1

    def out(a):
        a = np.asarray(a, np.float64).reshape(len(pairs), *np.shape(a)[1:])
        return a[0].tolist() if one else a.tolist()

    def out_int(a):
        a = np.asarray(a, np.int64).reshape(len(pairs))
        return int(a[0]) if one else a.tolist()

    def per_step(a):  # (steps, problems) -> per problem, or one list
        a = np.asarray(a, np.float64).reshape(a.shape[0], len(pairs))
        return a[:, 0].tolist() if one else a.T.tolist()

    result = {"policy": args.policy, "predictor": args.predictor, "service": args.service,
              "load": out([p[0] for p in pairs]), "method": r.method, "tuned": list(r.names),
              "objective": args.objective}
    if args.predictor == "lognormal":
        result["sigma"] = out([p[1] for p in pairs])
    result.update({n: out(v) for n, v in r.values.items()})
    result.update(mean_response_time=out(r.hard.mean_response_time),
                  stderr=out(r.hard.stderr), mean_slowdown=out(r.hard.mean_slowdown),
                  measured_jobs=out_int(r.hard.jobs), overflow=out_int(r.hard.overflow),
                  relaxed_problems=r.problems, seconds=r.seconds)
    if args.json:  # the optimisation's trace: too long for the table
        result["trace"] = {"objective": per_step(r.trace_objective),
                           "tau": [None if np.isnan(t) else float(t) for t in r.trace_tau],
                           **{n: per_step(v) for n, v in r.trace_values.items()}}
    return result
