"""Tuning a policy's parameters: by gradient through the relaxed queue engine (jaxq.relaxed), or
by a gradient-free baseline on the exact queue or LLM engine, with one API.

    system = jaxq.System(load=[0.5, 0.7, 0.9], predictor=jaxq.ExponentialNoise(),
                         policy=jaxq.OneBit(1.0))
    result = jaxq.tune.tune(system, ["threshold"], method="spa", steps=60, learning_rate=0.1)
    result.values["threshold"]           # (3,) the learned threshold of each load
    result.hard.mean_response_time       # (3,) measured with the exact engine on fresh seeds

Every configuration of a batched System is its own tuning problem, run side by side (vmapped):
one call finds the best threshold for each load. Parameters are optimised in an unconstrained
coordinate u: a threshold or an aging weight is scale * softplus(u) (>= 0), sprpt-limited's c is
sigmoid(u) (in [0, 1]), a linear weight is scale * u. The scale (1 by default) is the unit in
which the optimiser's steps are taken: an LLM rank is in tokens and an age in seconds, so an
aging weight worth learning there is tens of tokens per second, and scale 10 or 100 takes it
there in as many steps as scale 1 takes a queue threshold to its optimum.

Methods:
* "gradient": optax on the pathwise gradient of the relaxed engine's objective, at a
  temperature that falls geometrically from tau[0] to tau[1]; forward mode (jax.jacfwd, cheap
  for a few parameters) or reverse mode with checkpointed steps (for many).
* "spa": the onebit threshold only: optax on an unbiased estimate of the exact engine's
  derivative, from runs with one job's class flipped (smoothed perturbation analysis, jaxq.spa);
  `spa_flips` flips per replica and step.
* "es": Gaussian smoothing on the exact engine with antithetic pairs and common random numbers:
  g = mean_k (f(u + s e_k) - f(u - s e_k)) / (2 s) e_k, e_k ~ N(0, I). It estimates the gradient
  of the smoothed exact objective without bias, which is what the gradient method is checked
  against.
Each step draws fresh jobs (seeds folded with the step), so all three are stochastic gradient
methods.

The objective is one metric or a weighted mix, "latency_p99" or "latency_p99:1,ttft_mean:0.5"
(or a dict {name: weight}); a metric to be maximised (goodput) enters with a minus sign.
`tune_llm` offers "es" and "gradient", the latter through the relaxed LLM engine
(jaxq.llm.relaxed, a fluid model: recompute preemption and optimistic admission only).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxq._checks import check_count
from jaxq.policies import MLP, Aging, Linear, OneBit, SPRPTLimited, without_aging
from jaxq.llm.relaxed import RelaxedLLMSpec
from jaxq.llm.relaxed import run_one as run_llm
from jaxq.relaxed import RelaxedSpec, run_one
from jaxq.simulate import _replica_keys, sample_chunk, simulate
from jaxq.spa import check_spa, run_spec, threshold_derivative
from jaxq.system import System, flatten

OBJECTIVES = ("mean_response_time", "mean_slowdown", "p99")  # queue: jaxq.simulate.Result
LLM_OBJECTIVES = ("latency_mean", "latency_p90", "latency_p99", "ttft_mean", "ttft_p99",
                  "tpot_mean", "tpot_p99", "latency_per_token_mean", "latency_per_token_p99",
                  "goodput")  # jaxq.llm.LLMResult
MAXIMISED = ("goodput",)
METHODS = ("gradient", "spa", "es")
REQUEST_WEIGHTS = ("w_prompt", "w_kv", "w_peak")  # read request features: LLM engine only
# Below this temperature the MLP rank's relaxed gradient loses the effect of reorderings
# (scripts/bench_tune.py: at tau 0.3 the pathwise dE/dc is -0.16 +- 0.11 where the same
# engine's central difference is -1.40 +- 0.10; at tau 1, -1.34 +- 0.39 against -1.43 +- 0.10).
MLP_MIN_TAU = 1.0
OPTIMIZERS = {"adam": optax.adam, "sgd": optax.sgd, "rmsprop": optax.rmsprop}


@dataclasses.dataclass(frozen=True)
class Tunable:
    policy: type  # the policy class that has the field (Aging: the wrapper)
    field: str
    constraint: str  # "positive", "unit" or "real"


TUNABLE = {
    "threshold": Tunable(OneBit, "threshold", "positive"),
    "c": Tunable(SPRPTLimited, "c", "unit"),
    "aging": Tunable(Aging, "w", "positive"),
    **{w: Tunable(Linear, w, "real")
       for w in ("w_prediction", "w_remaining", "w_attained", "w_age")},
    **{w: Tunable(Linear, w, "real") for w in REQUEST_WEIGHTS},
    "mlp": Tunable(MLP, "weights", "real"),  # a vector: all 3H + 1 weights of the MLP rank
}


def _to_value(constraint, u, scale=1.0):
    if constraint == "positive":
        return scale * jax.nn.softplus(u)
    if constraint == "unit":
        return jax.nn.sigmoid(u)
    return scale * u


def _to_u(constraint, value, scale=1.0):
    value = np.asarray(value, np.float64)
    if constraint == "positive":
        v = np.maximum(value / scale, 1e-6)
        return v + np.log(-np.expm1(-v))  # inverse softplus
    if constraint == "unit":
        v = np.clip(value, 1e-3, 1 - 1e-3)
        return np.log(v) - np.log1p(-v)
    return value / scale


def _getter(system: System, name: str) -> Callable:
    """A function system -> the leaf that parameter `name` lives in (for eqx.tree_at)."""
    t = TUNABLE[name]
    cost = getattr(system, "prediction_cost", None)  # an LLMSystem has none
    if cost is not None and cost.model == "server":
        raise ValueError("tuning does not model predictions that take server time (the relaxed "
                         "engine has no prediction work); use cost model 'external'")
    if t.policy is Aging:
        if not isinstance(system.policy, Aging):
            raise ValueError("--tune aging needs a policy with an aging term (Aging(policy, w), "
                             "or --aging with any value)")
        return lambda s: s.policy.w
    if not isinstance(without_aging(system.policy), t.policy):
        raise ValueError(f"--tune {name} needs policy {t.policy.name!r}, got "
                         f"{without_aging(system.policy).name!r}")
    if isinstance(system.policy, Aging):
        return lambda s: getattr(s.policy.base, t.field)
    return lambda s: getattr(s.policy, t.field)


def check_names(system, names) -> tuple[str, ...]:
    names = tuple(names)
    if not names:
        raise ValueError("tune: name at least one parameter to learn")
    for name in names:
        if name not in TUNABLE:
            raise ValueError(f"cannot tune {name!r}; tunable: {', '.join(TUNABLE)}")
        _getter(system, name)
    if len(set(names)) != len(names):
        raise ValueError(f"tune: a parameter is named twice in {names}")
    return names


def check_scales(names, scales) -> tuple[float, ...]:
    """One scale per name (1 where `scales`, a dict, has none)."""
    scales = dict(scales or {})
    unknown = set(scales) - set(names)
    if unknown:
        raise ValueError(f"scales: {sorted(unknown)} are not tuned (tuned: {list(names)})")
    out = []
    for name in names:
        s = scales.get(name, 1.0)
        if not (isinstance(s, (int, float)) and math.isfinite(s) and s > 0):
            raise ValueError(f"the scale of {name} must be a finite number > 0, got {s!r}")
        if TUNABLE[name].constraint == "unit" and s != 1.0:
            raise ValueError(f"{name} lies in [0, 1] (a sigmoid of u) and takes no scale")
        out.append(float(s))
    return tuple(out)


def parse_objective(objective, valid) -> tuple[tuple[str, float], ...]:
    """((metric, weight), ...) from "name", "name:w,name:w" or a dict {name: weight}."""
    if isinstance(objective, dict):
        terms = list(objective.items())
    else:
        terms = []
        for part in str(objective).split(","):
            name, _, weight = part.strip().partition(":")
            try:
                terms.append((name.strip(), float(weight) if weight else 1.0))
            except ValueError:
                raise ValueError(f"objective: the weight of {name!r} must be a number, got "
                                 f"{weight!r}") from None
    for name, weight in terms:
        if name not in valid:
            raise ValueError(f"objective must be made of {', '.join(valid)}; got {name!r}")
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"objective: the weight of {name} must be > 0 and finite, got "
                             f"{weight}")
    if not terms or len({n for n, _ in terms}) != len(terms):
        raise ValueError(f"objective: name each metric once, at least one; got {objective!r}")
    return tuple((n, float(w)) for n, w in terms)


def objective_value(result, terms) -> np.ndarray:
    """The weighted mix of a Result's (or LLMResult's) metrics: what the tuner minimises."""
    return sum(w * (-1.0 if n in MAXIMISED else 1.0) * np.asarray(getattr(result, n), np.float64)
               for n, w in terms)


def with_values(system: System, names, values) -> System:
    """The system with each named parameter set to values[i] (broadcast to the batch)."""
    for name, value in zip(names, values):
        system = eqx.tree_at(_getter(system, name), system, jnp.asarray(value, dtype=float))
    return system


def current_values(flat, names) -> list[np.ndarray]:
    """Each named parameter of a flattened system (b problems): (b,), or (b, D) for a vector."""
    return [np.asarray(_getter(flat, n)(flat), np.float64) for n in names]


# ---------------------------------------------------------------------------- relaxed objective

def _relaxed_metric(response, size, name):
    """One metric over the pooled (R, N - W) responses of a configuration's relaxed runs."""
    if name == "mean_slowdown":
        return jnp.nanmean(response / size)
    if name == "p99":
        return jnp.nanquantile(response, 0.99)
    return jnp.nanmean(response)


def relaxed_objective(spec: RelaxedSpec, terms, system: System, keys, tau):
    """(objective, problems) of one configuration (a System without batch axes) over its
    replicas (keys: (R,)): the weighted mix of the relaxed engine's metrics over the pooled runs
    (terms: parse_objective's)."""
    def one(key):
        chunk = sample_chunk(system, key, 0, spec.jobs)
        return run_one(spec, system.policy, tau, chunk)

    runs = jax.vmap(one)(keys)
    response, size = runs.response[:, spec.warmup:], runs.size[:, spec.warmup:]
    value = sum(w * _relaxed_metric(response, size, n) for n, w in terms)
    return value, jnp.sum(runs.unfinished + runs.overflow)


def relaxed_gradient(spec: RelaxedSpec, terms, system: System, layout: "Layout", u, keys, tau,
                     mode: str = "forward"):
    """(objective, d objective / du (P,), problems) for one configuration: u (P,) unconstrained,
    laid out as `layout` says."""
    return _value_and_gradient(lambda u: relaxed_objective(
        spec, terms, with_values(system, layout.names, layout.values(u)), keys, tau), u, mode)


def _value_and_gradient(f, u, mode):
    """(value, d value / du, problems) of f: u -> (value, problems), in forward mode
    (jax.jacfwd: a pass per parameter) or reverse mode (one backward pass)."""
    if mode == "forward":
        value, problems = f(u)
        return value, jax.jacfwd(lambda u: f(u)[0])(u), problems
    (value, problems), grad = jax.value_and_grad(f, has_aux=True)(u)
    return value, grad, problems


def _relaxed_llm_metric(runs, reqs, warmup, name):
    """One metric over the pooled (R, N - W) requests of a configuration's relaxed LLM runs."""
    base, _, stat = name.rpartition("_")
    latency, ttft = runs.latency[:, warmup:], runs.ttft[:, warmup:]
    output = reqs.output[:, warmup:].astype(latency.dtype)
    if base == "latency":
        x = latency
    elif base == "ttft":
        x = ttft
    elif base == "tpot":  # requests with O >= 2 only
        x = jnp.where(output >= 2, (latency - ttft) / jnp.maximum(output - 1.0, 1.0), jnp.nan)
    else:  # latency_per_token
        x = latency / output
    quantile = {"mean": None, "p90": 0.90, "p99": 0.99}[stat]
    return jnp.nanmean(x) if quantile is None else jnp.nanquantile(x, quantile)


def relaxed_llm_objective(spec: RelaxedLLMSpec, terms, system, workload, keys, tau):
    """(objective, problems) of one LLM configuration (an LLMSystem without batch axes) over its
    replicas (keys: (R,)): requests sampled as the exact engine samples them."""
    from jaxq.llm.simulate import _requests

    per = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, keys.shape + jnp.shape(x)),
                                 system)
    reqs = _requests(per, workload, keys, spec.requests, False)
    params = system.params()
    runs = jax.vmap(lambda r: run_llm(spec, params, system.policy, tau, r))(reqs)
    value = sum(w * _relaxed_llm_metric(runs, reqs, spec.warmup, n) for n, w in terms)
    return value, jnp.sum(runs.unfinished + runs.overflow)


def relaxed_llm_gradient(spec: RelaxedLLMSpec, terms, system, workload, layout: "Layout", u,
                         keys, tau, mode: str = "forward"):
    """(objective, d objective / du (P,), problems) for one LLM configuration."""
    return _value_and_gradient(lambda u: relaxed_llm_objective(
        spec, terms, with_values(system, layout.names, layout.values(u)), workload, keys, tau),
        u, mode)


# ---------------------------------------------------------------------------- the tuning loop

@dataclasses.dataclass(frozen=True)
class TuneResult:
    """Learned values and how they were found; S is the system's batch shape."""

    names: tuple[str, ...]
    values: dict  # name -> S (S + (D,) for a vector), the learned value
    hard: object  # the exact engine's Result (LLMResult) of the learned policies on fresh seeds
    objective: np.ndarray  # S, the objective of `hard` (objective_value)
    trace_objective: np.ndarray  # (steps,) + S: the objective the method saw at each step
    trace_values: dict  # name -> (steps,) + S [+ (D,)]
    trace_tau: np.ndarray  # (steps,) temperature (NaN for spa and es)
    problems: int  # jobs dropped or left unfinished in the runs the optimiser saw (relaxed or
    #   exact), over all steps (0: none)
    method: str
    seconds: float


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where each tuned parameter lives in the unconstrained coordinates u (..., P): a scalar
    takes one column, a vector (the MLP's weights) as many as it has entries (D)."""

    names: tuple[str, ...]
    scales: tuple[float, ...] = ()  # default: 1 each
    sizes: tuple[int | None, ...] = ()  # None: a scalar; D: a vector of D entries (default: all
    #   scalars)

    def __post_init__(self):
        object.__setattr__(self, "names", tuple(self.names))
        n = len(self.names)
        object.__setattr__(self, "scales", tuple(self.scales) or (1.0,) * n)
        object.__setattr__(self, "sizes", tuple(self.sizes) or (None,) * n)

    def values(self, u) -> list:
        """The parameter values at u (..., P): one array (...) or (..., D) per name."""
        out, at = [], 0
        for name, scale, size in zip(self.names, self.scales, self.sizes):
            part = u[..., at] if size is None else u[..., at:at + size]
            out.append(_to_value(TUNABLE[name].constraint, part, scale))
            at += 1 if size is None else size
        return out

    def coordinates(self, values) -> np.ndarray:
        """u (b, P) at the given values (each (b,) or (b, D))."""
        return np.concatenate([
            np.reshape(_to_u(TUNABLE[n].constraint, v, s), (len(v), -1))
            for n, s, v in zip(self.names, self.scales, values)], axis=-1)


class _Problems:
    """The batch of tuning problems: the flattened system (b configurations) and where the
    optimiser stands in the unconstrained coordinates u (b, P)."""

    def __init__(self, flat, shape, names, scales):
        self.flat, self.shape, self.names = flat, shape, names
        start = current_values(flat, names)
        self.layout = Layout(names, scales, tuple(None if v.ndim == 1 else v.shape[-1]
                                                  for v in start))
        self.u0 = jnp.asarray(self.layout.coordinates(start), float)

    def values(self, u) -> list:
        return self.layout.values(u)

    def shaped(self, values, lead=()) -> list:
        """Values (lead..., b[, D]) reshaped to (lead..., S[, D]), S the system's batch shape."""
        return [np.reshape(v, lead + self.shape + np.shape(v)[len(lead) + 1:]) for v in values]


def _optimise(problems: _Problems, opt, steps, step_fn, progress):
    """(final u, objectives (steps, b), u (steps, b, P), jobs dropped or unfinished): `steps`
    optimiser steps, step_fn(step, u) -> (objective (b,), gradient (b, P), dropped or
    unfinished jobs) giving the direction at each."""
    u = problems.u0
    opt_state = opt.init(u)
    trace_obj, trace_u, bad = [], [], 0
    for step in range(steps):
        value, grad, step_bad = step_fn(step, u)
        bad += int(np.sum(step_bad))
        trace_obj.append(np.asarray(value))
        trace_u.append(np.asarray(u))
        updates, opt_state = opt.update(grad, opt_state, u)
        u = optax.apply_updates(u, updates)
        if progress:
            progress(step + 1, steps)
    return u, np.stack(trace_obj), np.stack(trace_u), bad


def _result(problems, u, trace_obj, trace_u, taus, hard, terms, bad, method, start):
    steps = trace_obj.shape[0]
    learned = problems.shaped(problems.values(u))
    traced = problems.shaped(problems.values(trace_u), (steps,))
    return TuneResult(
        names=problems.names, values=dict(zip(problems.names, learned)), hard=hard,
        objective=objective_value(hard, terms),
        trace_objective=trace_obj.reshape((steps,) + problems.shape),
        trace_values=dict(zip(problems.names, traced)),
        trace_tau=taus, problems=bad, method=method, seconds=time.perf_counter() - start)


def _fresh_seeds(system):
    """The system on seeds no optimiser step used: each seed shifted by a large odd offset."""
    return eqx.tree_at(lambda s: s.seed, system, system.seed + 1_000_003)


def tune(system: System, names, *, method: str = "gradient", steps: int = 100,
         learning_rate: float = 0.05, optimizer: optax.GradientTransformation | None = None,
         tau: tuple[float, float] = (0.3, 0.03), jobs: int = 500, warmup: int | None = None,
         replicas: int = 16, capacity: int = 64, mode: str = "forward",
         objective="mean_response_time", scales: dict | None = None, es_pairs: int = 8,
         es_sigma: float = 0.1, es_jobs: int | None = None, spa_flips: int = 8,
         eval_jobs: int = 20_000,
         eval_replicas: int = 8, key: int = 0,
         progress: Callable[[int, int], None] | None = None) -> TuneResult:
    """Learn `names` for every configuration of the queue `system`; see the module docstring.
    optimizer: any optax transformation (default Adam at learning_rate)."""
    if not isinstance(system, System):
        raise TypeError(f"system must be a jaxq.System (tune_llm tunes an LLMSystem), got "
                        f"{type(system).__name__}")
    names = check_names(system, names)
    if set(names) & set(REQUEST_WEIGHTS):
        raise ValueError(f"{', '.join(REQUEST_WEIGHTS)} weigh request features: tune them with "
                         f"tune_llm (jaxq tune llm), not in the queue engine")
    scales = check_scales(names, scales)
    terms = parse_objective(objective, OBJECTIVES)
    _check(method=method, steps=steps, learning_rate=learning_rate, tau=tau, mode=mode,
           es_pairs=es_pairs, es_sigma=es_sigma)
    if method != "es" and int(np.max(system.servers)) > 1:
        raise ValueError(f"method {method!r} models one server; with servers > 1 use method='es' "
                         f"(which runs the exact engine)")
    unreliable = [n for n in names if n in ("threshold", "c")]
    if method == "gradient" and "mlp" in names and min(tau) < MLP_MIN_TAU:
        warnings.warn(f"the relaxed gradient of mlp is measured reliable only at tau >= "
                      f"{MLP_MIN_TAU} (README, 'When to trust the gradient'); tau={tau} goes "
                      f"below it", RuntimeWarning, stacklevel=2)
    if method == "gradient" and unreliable:
        # Measured, not assumed: scripts/bench_tune.py and tests/test_tune.py (README).
        warnings.warn(f"the relaxed gradient of {', '.join(unreliable)} is not reliable: it "
                      f"misses most of the effect of a threshold or a lock (README, 'When to "
                      f"trust the gradient'); use method='spa' for a onebit threshold, or "
                      f"method='es'", RuntimeWarning, stacklevel=2)
    if method == "spa":
        check_spa(system, names, terms)
        if not isinstance(spa_flips, int) or spa_flips < 1:
            raise ValueError(f"spa_flips must be an integer >= 1, got {spa_flips!r}")
    start = time.perf_counter()
    flat, shape = flatten(system)
    problems = _Problems(flat, shape, names, scales)
    warmup = jobs // 10 if warmup is None else warmup
    spec = RelaxedSpec(capacity=capacity, jobs=jobs, warmup=warmup, steps=2 * jobs,
                       checkpoint=mode == "reverse")
    seeds = jnp.asarray(flat.seed).reshape(-1)
    taus = np.geomspace(tau[0], tau[1], steps) if method == "gradient" else np.full(steps, np.nan)
    grad_step = _gradient_step(lambda s, u, k, tau: relaxed_gradient(
        spec, terms, s, problems.layout, u, k, tau, mode))
    spa_step = _spa_step(run_spec(jobs, warmup, capacity), terms, spa_flips)

    def evaluate(points):
        r = simulate(points, jobs=es_jobs or jobs, replicas=replicas, key=0,
                     on_overflow="ignore")
        return objective_value(r, terms), np.sum(r.overflow) + np.sum(r.unfinished)

    def step_fn(step, u):
        step_key = jax.random.fold_in(jax.random.key(key), step)
        if method == "gradient":
            return grad_step(flat, u, _replica_keys(step_key, seeds, replicas), taus[step])
        if method == "spa":
            # threshold(u) elementwise, so its jvp along ones is d threshold / du per problem
            [threshold], [d_threshold_du] = jax.jvp(problems.values, (u,), (jnp.ones_like(u),))
            value, d_threshold, bad = spa_step(with_values(flat, names, [threshold]),
                                               _replica_keys(step_key, seeds, replicas),
                                               jax.random.fold_in(step_key, 1))
            return value, (d_threshold * d_threshold_du)[:, None], bad
        return _es_step(problems, u, step_key, evaluate, pairs=es_pairs, sigma=es_sigma)

    u, trace_obj, trace_u, bad = _optimise(problems, optimizer or optax.adam(learning_rate), steps,
                                      step_fn, progress)
    tuned = with_values(system, names, problems.shaped(problems.values(u)))
    hard = simulate(_fresh_seeds(tuned), jobs=eval_jobs, replicas=eval_replicas, key=key + 1,
                    on_overflow="ignore")
    return _result(problems, u, trace_obj, trace_u, taus, hard, terms, bad, method, start)


def tune_llm(system, workload, names, *, steps: int = 30, learning_rate: float = 0.1,
             optimizer: optax.GradientTransformation | None = None,
             objective="latency_mean", scales: dict | None = None, requests: int = 1000,
             replicas: int = 2, es_pairs: int = 4, es_sigma: float = 0.1,
             eval_requests: int = 2000, eval_replicas: int = 4, slots: int | None = None,
             ttft_slo: float = math.inf, tpot_slo: float = math.inf,
             max_iterations: int | None = None, method: str = "es",
             tau: tuple[float, float] = (30.0, 30.0), mode: str = "forward",
             relaxed_slots: int = 128, key: int = 0,
             progress: Callable[[int, int], None] | None = None) -> TuneResult:
    """Learn `names` for every configuration of the LLMSystem `system` on `workload` (an
    LLMWorkload) by evolution strategies on the exact LLM engine (method "es"), or by the
    pathwise gradient of the relaxed LLM engine (method "gradient", jaxq.llm.relaxed: recompute
    preemption and optimistic admission only; tau in tokens, the unit of LLM ranks;
    relaxed_slots requests in system at most, arrivals beyond them dropped and counted); `hard`
    is the learned policies' LLMResult on eval_requests x eval_replicas fresh requests.
    max_iterations bounds every exact run (jaxq.llm.simulate): a point the search tries may
    rank requests so that they swap forever (README: a rank that rises as a request
    generates), and its unfinished requests are then counted in `problems` instead of stalling
    the step."""
    from jaxq.llm.simulate import LLMSystem
    from jaxq.llm.simulate import simulate as simulate_llm
    from jaxq.llm.workloads import LLMWorkload

    if not isinstance(system, LLMSystem):
        raise TypeError(f"system must be a jaxq.llm.LLMSystem, got {type(system).__name__}")
    if not isinstance(workload, LLMWorkload):
        raise TypeError("workload must be a synthetic jaxq.llm.LLMWorkload (a trace has one "
                        f"sample of requests, nothing to draw fresh ones from), got "
                        f"{type(workload).__name__}")
    names = check_names(system, names)
    scales = check_scales(names, scales)
    terms = parse_objective(objective, LLM_OBJECTIVES)
    _check(method=method, steps=steps, learning_rate=learning_rate, tau=tau, mode=mode,
           es_pairs=es_pairs, es_sigma=es_sigma)
    if method == "spa":
        raise ValueError("method 'spa' tunes a queue's onebit threshold; the LLM engine takes "
                         "'es' or 'gradient'")
    if method == "gradient":
        _check_relaxed_llm(system, terms)
        check_count("relaxed_slots", relaxed_slots, 1)
        # Measured, not assumed: scripts/bench_tune_llm.py (README, "The relaxed LLM engine").
        warnings.warn("the relaxed LLM engine's gradient is not reliable: under memory "
                      "pressure it missed a slope that evolution strategies on the exact "
                      "engine measured clearly (README, 'The relaxed LLM engine'); use "
                      "method='es'", RuntimeWarning, stacklevel=2)
    for name, value, low in (("requests", requests, 2), ("replicas", replicas, 1),
                             ("eval_requests", eval_requests, 2),
                             ("eval_replicas", eval_replicas, 1)):
        check_count(name, value, low)  # all before the first step, eval_* included
    if max_iterations is not None:
        check_count("max_iterations", max_iterations, 1)
    start = time.perf_counter()
    flat, shape = flatten(system)
    problems = _Problems(flat, shape, names, scales)
    options = dict(slots=slots, ttft_slo=ttft_slo, tpot_slo=tpot_slo, on_overflow="ignore",
                   max_iterations=max_iterations)

    def evaluate(points):
        r = simulate_llm(points, workload, requests=requests, replicas=replicas, key=0,
                         **options)
        return objective_value(r, terms), np.sum(r.overflow) + np.sum(r.unfinished)

    taus = np.geomspace(tau[0], tau[1], steps) if method == "gradient" else np.full(steps, np.nan)
    spec = RelaxedLLMSpec(slots=relaxed_slots, requests=requests, warmup=requests // 10,
                          steps=6 * requests, checkpoint=mode == "reverse")
    seeds = jnp.asarray(flat.seed).reshape(-1)

    grad_step = _gradient_step(lambda s, u, k, tau: relaxed_llm_gradient(
        spec, terms, s, workload, problems.layout, u, k, tau, mode))

    def step_fn(step, u):
        step_key = jax.random.fold_in(jax.random.key(key), step)
        if method == "gradient":
            return grad_step(flat, u, _replica_keys(step_key, seeds, replicas), taus[step])
        return _es_step(problems, u, step_key, evaluate, pairs=es_pairs, sigma=es_sigma)

    u, trace_obj, trace_u, bad = _optimise(problems, optimizer or optax.adam(learning_rate), steps,
                                      step_fn, progress)
    tuned = with_values(system, names, problems.shaped(problems.values(u)))
    hard = simulate_llm(_fresh_seeds(tuned), workload, requests=eval_requests,
                        replicas=eval_replicas, key=key + 1, **options)
    return _result(problems, u, trace_obj, trace_u, taus, hard, terms, bad, method, start)


def _check_relaxed_llm(system, terms):
    """What the relaxed LLM engine models: refuse the rest by name, before tracing."""
    if system.preemption != "recompute":
        raise ValueError("method 'gradient' needs preemption='recompute' (the relaxed LLM "
                         "engine has no swap yet); use method 'es' for swap")
    if system.admission != "optimistic":
        raise ValueError("method 'gradient' needs admission='optimistic' (the relaxed LLM "
                         "engine has no reservations)")
    if system.refine or system.prefix_cache:
        raise ValueError("method 'gradient' supports neither refinement nor the prefix cache")
    if any(n == "goodput" for n, _ in terms):
        raise ValueError("method 'gradient' cannot differentiate goodput (a count of requests "
                         "meeting SLOs); use method 'es'")


def _gradient_step(gradient):
    """One compiled call for all b problems: gradient(system, u (P,), keys (R,), tau) ->
    (objective, gradient (P,), problems), vmapped over the flattened system, u (b, P) and keys
    (b, R)."""
    @jax.jit
    def step(flat, u, keys, tau):
        return jax.vmap(lambda s, u, k: gradient(s, u, k, tau))(flat, u, keys)
    return step


def _spa_step(spec, terms, flips):
    return jax.jit(lambda flat, keys, flip_key: threshold_derivative(spec, terms, flat, keys,
                                                                     flips, flip_key))


def _es_step(problems: _Problems, u, key, evaluate, *, pairs, sigma):
    """(objective at u (b,), gradient estimate (b, P), problems) from 2 * pairs exact runs per
    configuration, all with one seed per configuration and step (common random numbers).
    evaluate: a batched system of shape (b, 2 pairs + 1) -> (its objectives (b, 2 pairs + 1),
    the jobs its runs dropped or left unfinished)."""
    b, p = u.shape
    eps = jax.random.normal(jax.random.fold_in(key, 1), (b, pairs, p))
    points = jnp.concatenate([u[:, None] + sigma * eps, u[:, None] - sigma * eps,
                              u[:, None]], axis=1)  # (b, 2 pairs + 1, P)
    m = points.shape[1]
    grown = jax.tree_util.tree_map(
        lambda a: jnp.broadcast_to(a[:, None], (b, m) + a.shape[1:]), problems.flat)
    step_seed = jax.random.randint(jax.random.fold_in(key, 2), (), 0, 2**30)
    grown = eqx.tree_at(lambda s: s.seed, grown, grown.seed + step_seed)
    f, bad = evaluate(with_values(grown, problems.names, problems.values(points)))
    f = jnp.asarray(f)
    diff = (f[:, :pairs] - f[:, pairs:2 * pairs]) / (2 * sigma)  # (b, pairs)
    grad = jnp.mean(diff[..., None] * eps, axis=1)
    return f[:, -1], grad, bad


def _check(*, method, steps, learning_rate, tau, mode, es_pairs, es_sigma):
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if mode not in ("forward", "reverse"):
        raise ValueError(f"mode must be 'forward' or 'reverse', got {mode!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
    if len(tau) != 2 or not all(t > 0 for t in tau):
        raise ValueError(f"tau must be (start, end), both > 0, got {tau!r}")
    if not isinstance(es_pairs, int) or es_pairs < 1:
        raise ValueError(f"es_pairs must be an integer >= 1, got {es_pairs!r}")
    if not es_sigma > 0:
        raise ValueError(f"es_sigma must be > 0, got {es_sigma!r}")
