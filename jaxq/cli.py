"""The `jaxq` command line: `jaxq demo`, `jaxq queue ...`, `jaxq theory ...`, `jaxq llm ...`,
`jaxq sweep queue|llm ...`, `jaxq run FILE.toml`, `jaxq plot DIR`.

Options map one to one onto the Python API (jaxq.System and jaxq.simulate); `--json` prints one
JSON object whose keys are the Result's field names (but `measured_jobs` for its `jobs`, which is
not --jobs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

POLICY_NAMES = ("fcfs", "las", "sjf", "psjf", "srpt", "spjf", "pspjf", "sprpt", "sprpt-bounce",
                "sprpt-limited", "onebit", "linear", "mlp", "skippredict", "delaypredict")
COST_MODELS = ("external", "server")
PREDICTOR_NAMES = ("perfect", "exponential", "uniform", "lognormal")
LINEAR_WEIGHTS = ("w_prediction", "w_remaining", "w_attained", "w_age", "w_prompt", "w_kv",
                  "w_peak")
LINEAR_DEFAULT = "0,1,0,0"  # --weights of linear: sprpt
DISPATCH_NAMES = ("random", "round-robin", "jsq", "jsq-d", "least-predicted-work", "least-work")
SERVICE_NAMES = ("exponential", "deterministic", "uniform", "lognormal", "weibull",
                 "bounded-pareto", "hyperexponential", "empirical")


def _add_model_options(p: argparse.ArgumentParser):
    g = p.add_argument_group("model")
    g.add_argument("--policy", default="fcfs", help=f"one of: {', '.join(POLICY_NAMES)}")
    g.add_argument("--predictor", default="perfect", help=f"one of: {', '.join(PREDICTOR_NAMES)}")
    g.add_argument("--service", default="exponential", help=f"one of: {', '.join(SERVICE_NAMES)}")
    g.add_argument("--load", type=float, required=True,
                   help="load per server, lambda * E[S] / servers, in (0, 1)")
    g.add_argument("--servers", type=int, default=1,
                   help="servers fed by one central queue (default 1); each serves one job at a "
                        "time, and the `servers` best-ranked jobs are in service")
    g.add_argument("--dispatch", default=None,
                   help=f"give each server a queue of its own and send each job to one: "
                        f"{', '.join(DISPATCH_NAMES)} (default: one central queue)")
    g.add_argument("--d", type=int, default=None,
                   help="servers sampled per job: jsq-d (default 2), least-predicted-work and "
                        "least-work (default: all)")
    g.add_argument("--alpha", type=float, default=0.5,
                   help="uniform predictor: y ~ U[(1-alpha)x, (1+alpha)x], alpha in [0, 1)")
    g.add_argument("--sigma", type=float, default=0.5,
                   help="lognormal predictor: y = x exp(sigma Z), sigma >= 0")
    g.add_argument("--threshold", type=float, default=1.0,
                   help="onebit, skippredict: short iff y < threshold")
    g.add_argument("--limit", type=float, default=1.0,
                   help="delaypredict: service each job gets FCFS before it is predicted (>= 0)")
    g.add_argument("--prediction-cost", type=float, default=None,
                   help="cost of one full prediction (>= 0); predictions are free without it")
    g.add_argument("--cheap-cost", type=float, default=0.0,
                   help="cost of one cheap one-bit prediction (>= 0; default 0)")
    g.add_argument("--cost-model", default="external",
                   help="external: the costs add to the objective; server: a prediction takes "
                        "that much server time")
    g.add_argument("--preemptive", action="store_true", help="onebit / linear: preemptive variant")
    g.add_argument("--c", type=float, default=0.5, help="sprpt-limited: c in [0, 1]")
    g.add_argument("--aging", type=float, default=0.0,
                   help="subtract this times the time in system from the rank (>= 0)")
    g.add_argument("--weights", default=None,
                   help="linear: w_prediction,w_remaining,w_attained,w_age (default 0,1,0,0); "
                        "mlp: its 3H + 1 weights w,b,v,c (default: 8 units, equal to sprpt)")
    g.add_argument("--shape", type=float, default=None,
                   help="weibull shape (default 0.5) or bounded-pareto alpha (default 1.5)")
    g.add_argument("--cv", type=float, default=None,
                   help="coefficient of variation of lognormal (default 1) or hyperexponential "
                        "(default 2) sizes")
    g.add_argument("--mean", type=float, default=1.0, help="mean job size (default 1)")
    g.add_argument("--low", type=float, default=None, help="uniform / bounded-pareto lower bound")
    g.add_argument("--high", type=float, default=None, help="uniform / bounded-pareto upper bound")
    g.add_argument("--samples", default=None,
                   help="empirical: file of sizes (.npy, or text with one number per line)")
    g.add_argument("--arrival-cv", type=float, default=1.0,
                   help="coefficient of variation of inter-arrival times (1 = Poisson; else "
                        "gamma-distributed gaps)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def build_model(args):
    """(service, predictor, policy, arrivals) modules from parsed options."""
    import jaxq
    from jaxq._checks import check_choice

    check_choice("predictor", args.predictor, PREDICTOR_NAMES)
    check_choice("service", args.service, SERVICE_NAMES)

    s = args.service
    if s == "exponential":
        service = jaxq.Exponential(args.mean)
    elif s == "deterministic":
        service = jaxq.Deterministic(args.mean)
    elif s == "uniform":
        low = 0.0 if args.low is None else args.low
        high = 2 * args.mean - low if args.high is None else args.high
        service = jaxq.Uniform(low, high)
    elif s == "lognormal":
        service = jaxq.Lognormal.from_cv(1.0 if args.cv is None else args.cv, args.mean)
    elif s == "weibull":
        service = jaxq.Weibull(0.5 if args.shape is None else args.shape, args.mean)
    elif s == "bounded-pareto":
        alpha = 1.5 if args.shape is None else args.shape
        if args.low is None and args.high is None:
            service = jaxq.BoundedPareto.with_mean(alpha, 1000.0, args.mean)
        elif args.low is None or args.high is None:
            raise ValueError("bounded-pareto needs both --low and --high, or neither")
        else:
            service = jaxq.BoundedPareto(alpha, args.low, args.high)
    elif s == "hyperexponential":
        service = jaxq.Hyperexponential(2.0 if args.cv is None else args.cv, args.mean)
    else:
        if args.samples is None:
            raise ValueError("--service empirical needs --samples FILE")
        service = jaxq.Empirical.from_file(args.samples)

    predictor = build_predictor(args)
    policy = build_policy(args)

    arrivals = jaxq.Poisson() if args.arrival_cv == 1.0 else jaxq.Renewal(args.arrival_cv)
    return service, predictor, policy, arrivals


def build_predictor(args):
    import jaxq

    return {
        "perfect": lambda: jaxq.Perfect(),
        "exponential": lambda: jaxq.ExponentialNoise(),
        "uniform": lambda: jaxq.UniformNoise(args.alpha),
        "lognormal": lambda: jaxq.LognormalNoise(args.sigma),
    }[args.predictor]()


def build_policy(args, names=POLICY_NAMES, weight_names=LINEAR_WEIGHTS[:4]):
    """The policy named by --policy with its options (--c, --threshold, --preemptive,
    --weights), wrapped in an aging term if --aging is given and nonzero."""
    import jaxq
    from jaxq._checks import check_choice
    from jaxq.policies import LLM_POLICIES, Aging

    check_choice("policy", args.policy, names)
    p = args.policy
    if p == "sprpt-limited":
        policy = jaxq.SPRPTLimited(args.c)
    elif p == "onebit":
        policy = jaxq.OneBit(args.threshold, args.preemptive)
    elif p == "skippredict":
        policy = jaxq.SkipPredict(args.threshold)
    elif p == "delaypredict":
        policy = jaxq.DelayPredict(args.limit)
    elif p == "linear":
        w = _numbers("weights", args.weights or LINEAR_DEFAULT)
        if not 4 <= len(w) <= len(weight_names):
            raise ValueError(f"--weights must be 4 to {len(weight_names)} numbers "
                             f"{','.join(weight_names)}, got {args.weights!r}")
        policy = jaxq.Linear(**dict(zip(weight_names, w)), preemptive=args.preemptive)
    elif p == "mlp":
        policy = (jaxq.policies.MLP() if args.weights is None
                  else jaxq.policies.MLP(_numbers("weights", args.weights)))
    else:  # policies without options; sjf-prompt is the LLM engine's
        policy = {**jaxq.POLICIES, **LLM_POLICIES}[p]()
    aging = getattr(args, "aging", 0.0)
    return Aging(policy, aging) if aging else policy


def _numbers(name, text) -> list[float]:
    try:
        return [float(v) for v in str(text).split(",")]
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated numbers, got {text!r}") from None


def _parameters(args) -> dict:
    keys = ("policy", "predictor", "service", "load")
    out = {k: getattr(args, k) for k in keys}
    if args.servers != 1:
        out["servers"] = args.servers
    if args.dispatch is not None:
        out["dispatch"] = args.dispatch
        d = build_dispatch(args).d
        if d is not None:
            out["d"] = d
    extra = {"uniform": "alpha", "lognormal": "sigma"}.get(args.predictor)
    if extra:
        out[extra] = getattr(args, extra)
    if args.policy == "onebit":
        out.update(threshold=args.threshold, preemptive=args.preemptive)
    if args.policy == "skippredict":
        out["threshold"] = args.threshold
    if args.policy == "delaypredict":
        out["limit"] = args.limit
    if build_prediction_cost(args) is not None:
        out.update(prediction_cost=args.prediction_cost, cheap_cost=args.cheap_cost,
                   cost_model=args.cost_model)
    if args.policy == "sprpt-limited":
        out["c"] = args.c
    if args.policy == "linear":
        out.update(weights=args.weights or LINEAR_DEFAULT, preemptive=args.preemptive)
    if args.policy == "mlp" and args.weights is not None:
        out["weights"] = args.weights
    if args.aging:
        out["aging"] = args.aging
    return out


# --json key: Result field. `measured_jobs` (over all replicas) is not --jobs (per replica).
QUEUE_METRICS = {"mean_response_time": "mean_response_time", "stderr": "stderr",
                 "mean_slowdown": "mean_slowdown", "p50": "p50", "p90": "p90", "p99": "p99",
                 "utilisation": "utilisation", "mean_number_in_system": "mean_number_in_system",
                 "measured_jobs": "jobs", "overflow": "overflow",
                 "max_in_system": "max_in_system", "unfinished": "unfinished",
                 "mean_prediction_cost": "mean_prediction_cost", "cost": "cost"}


def build_system(args, model=None):
    """The jaxq.System of one configuration from parsed options (--seed is its seed); model:
    what builds its parts (default build_model)."""
    import jaxq

    service, predictor, policy, arrivals = (model or build_model)(args)
    return jaxq.System(args.load, service, predictor, policy, arrivals, seed=args.seed,
                       servers=args.servers, dispatch=build_dispatch(args),
                       prediction_cost=build_prediction_cost(args))


def build_prediction_cost(args):
    """The jaxq.PredictionCost of --prediction-cost, --cheap-cost and --cost-model, or None
    (free predictions)."""
    import jaxq
    from jaxq._checks import check_choice

    check_choice("cost model", getattr(args, "cost_model", "external"), COST_MODELS)
    if getattr(args, "prediction_cost", None) is None:
        if (getattr(args, "cheap_cost", 0.0)
                or getattr(args, "cost_model", "external") != "external"):
            raise ValueError("--cheap-cost and --cost-model need --prediction-cost (the cost of a "
                             "full prediction; 0 for free full predictions)")
        return None
    return jaxq.PredictionCost(args.prediction_cost, args.cheap_cost, args.cost_model)


def build_dispatch(args):
    """The jaxq.Dispatch of --dispatch and --d, or None (one central queue)."""
    import jaxq

    if getattr(args, "dispatch", None) is None:
        if getattr(args, "d", None) is not None:
            raise ValueError("--d needs --dispatch (jsq-d, least-predicted-work or least-work)")
        return None
    return jaxq.Dispatch(args.dispatch, args.d)


def simulate_options(args) -> dict:
    """The keyword arguments of jaxq.simulate that the options set (all static)."""
    return dict(jobs=args.jobs, replicas=args.replicas, warmup=args.warmup,
                capacity=args.capacity, finite_horizon=args.finite_horizon)


def queue_metrics(result, index=()) -> dict:
    """The --json metrics of one configuration of a Result."""
    out = {key: np.asarray(getattr(result, field))[index].item()
           for key, field in QUEUE_METRICS.items()}
    out["bucket_edges"] = result.bucket_edges.tolist()
    for name in ("bucket_mean_response_time", "bucket_jobs"):
        out[name] = np.asarray(getattr(result, name))[index].tolist()
    return out


def cmd_queue(args) -> dict:
    import jaxq

    system = build_system(args)
    progress = None
    if not args.json and sys.stderr.isatty():
        def progress(done, needed):
            print(f"\rchunk {done} (at least {needed})", end="", file=sys.stderr, flush=True)
    r = jaxq.simulate(system, **simulate_options(args), key=0, progress=progress)
    if progress:
        print(file=sys.stderr)
    out = _parameters(args)
    out.update(queue_metrics(r))
    out.update(replicas=args.replicas, seed=args.seed, quantile_resolution=r.quantile_resolution,
               seconds=r.seconds)
    return out


def cmd_theory(args) -> dict:
    from jaxq import supermarket, theory

    service, predictor, policy, arrivals = build_model(args)
    if args.arrival_cv != 1.0:
        raise ValueError("theory is exact for Poisson arrivals only (--arrival-cv 1)")
    out = _parameters(args)
    dispatch = build_dispatch(args)
    if (dispatch is not None and dispatch.rule == "jsq-d" and args.policy == "fcfs"
            and args.service == "exponential"):
        # no exact value for finitely many servers: the supermarket model's limit
        out["mean_field_limit"] = supermarket.jsq_d_mean_response_time(dispatch.d, args.load,
                                                                       args.mean)
        return out
    cost = build_prediction_cost(args)
    if cost is None:
        out["mean_response_time"] = float(theory.mean_response_time(
            policy, service, predictor, args.load, args.servers, dispatch))
    else:
        out.update(theory.cost_terms(policy, service, predictor, args.load, cost, args.servers,
                                     dispatch))
    if args.policy == "onebit" and args.servers == 1:
        t, value = theory.optimal_onebit_threshold(service, predictor, args.load, args.preemptive)
        out.update(optimal_threshold=float(t), optimal_mean_response_time=float(value))
    return out


def cmd_demo(args) -> dict:
    from jaxq.demo import run_demo

    return run_demo(jobs=args.jobs, replicas=args.replicas, seed=args.seed, as_json=args.json)


def _print_table(out: dict):
    width = max(len(k) for k in out)
    for k, v in out.items():
        if isinstance(v, float):
            v = f"{v:.6g}"
        elif isinstance(v, list):
            v = ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in v)
        print(f"{k:<{width}}  {v}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxq", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("queue", help="simulate one M/G/1 (or M/G/k) configuration with replicas")
    add_queue_options(q)

    t = sub.add_parser("theory", help="exact mean response time (M/G/1, and M/M/k fcfs; Poisson "
                                      "arrivals)")
    _add_model_options(t)

    from jaxq.llm.cli import add_llm_parser

    add_llm_parser(sub)

    from jaxq.sweep.cli import add_sweep_parsers

    add_sweep_parsers(sub)

    from jaxq.tune_cli import add_tune_parser

    add_tune_parser(sub)

    d = sub.add_parser("demo", help="sweep every policy over loads and print sim vs theory")
    d.add_argument("--jobs", type=int, default=20000)
    d.add_argument("--replicas", type=int, default=8)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--json", action="store_true")
    return p


def add_queue_options(q: argparse.ArgumentParser):
    """The options of `jaxq queue` (and of `jaxq sweep queue`)."""
    _add_model_options(q)
    g = q.add_argument_group("run")
    g.add_argument("--jobs", type=int, default=20000, help="measured jobs per replica")
    g.add_argument("--replicas", type=int, default=8, help="independent replicas (vmapped)")
    g.add_argument("--warmup", type=int, default=None, help="jobs discarded first (default jobs/10)")
    g.add_argument("--seed", type=int, default=0,
                   help="the configuration's seed: equal seeds see the same jobs")
    g.add_argument("--capacity", type=int, default=256, help="job slots per replica (with --dispatch: per server)")
    g.add_argument("--finite-horizon", action="store_true",
                   help="stop arrivals after the last measured job and drain (allows load >= 1)")


def _use_all_cores():
    """Expose one JAX CPU device per core, so that configurations are spread over them."""
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", os.cpu_count() or 1)
    except Exception:  # backend already initialised (e.g. called from a notebook): keep it
        pass
    cache = os.environ.get("JAXQ_COMPILATION_CACHE",
                           os.path.join(os.path.expanduser("~"), ".cache", "jaxq", "xla"))
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    _use_all_cores()
    from jaxq.llm.cli import cmd_llm
    from jaxq.sweep.cli import cmd_plot, cmd_run, cmd_sweep
    from jaxq.tune_cli import cmd_tune

    command = {"queue": cmd_queue, "theory": cmd_theory, "demo": cmd_demo, "llm": cmd_llm,
               "sweep": cmd_sweep, "run": cmd_run, "plot": cmd_plot,
               "tune": cmd_tune}[args.command]
    from jaxq import CapacityError

    try:
        out = command(args)
    except (ValueError, CapacityError, OSError) as err:
        print(f"jaxq {args.command}: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(_finite_or_null(out), default=_json_default))
    elif args.command != "demo":
        _print_table(out)
    return 0


def _finite_or_null(v):
    """NaN (e.g. the stderr of a single replica) has no JSON spelling: write null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite_or_null(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite_or_null(x) for x in v]
    return v


def _json_default(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    raise TypeError(type(v).__name__)


if __name__ == "__main__":
    sys.exit(main())
