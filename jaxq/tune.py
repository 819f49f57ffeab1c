"""Tuning a queue policy's parameters: by gradient through the relaxed engine (jaxq.relaxed), or
by a gradient-free baseline on the exact engine, with one API.

    result = jaxq.tune.tune(jaxq.System(load=[0.5, 0.7, 0.9], policy=jaxq.OneBit(1.0)),
                            ["threshold"], steps=100)
    result.values["threshold"]           # (3,) the learned threshold of each load
    result.hard.mean_response_time       # (3,) measured with the exact engine on fresh seeds

Every configuration of a batched System is its own tuning problem, run side by side (vmapped):
one call finds the best threshold for each load. Parameters are optimised in an unconstrained
coordinate u: a threshold or an aging weight is softplus(u) (>= 0), sprpt-limited's c is
sigmoid(u) (in [0, 1]), a linear weight is u itself.

Methods:
* "gradient": optax on the pathwise gradient of the relaxed engine's objective, at a
  temperature that falls geometrically from tau[0] to tau[1]; forward mode (jax.jacfwd, cheap
  for a few parameters) or reverse mode with checkpointed steps (for many).
* "es": Gaussian smoothing on the exact engine with antithetic pairs and common random numbers:
  g = mean_k (f(u + s e_k) - f(u - s e_k)) / (2 s) e_k, e_k ~ N(0, I). It estimates the gradient
  of the smoothed exact objective without bias, which is what the gradient method is checked
  against.
Each step draws fresh jobs (seeds folded with the step), so both are stochastic gradient methods.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxq.policies import Aging, Linear, OneBit, SPRPTLimited, without_aging
from jaxq.relaxed import RelaxedSpec, run_one
from jaxq.simulate import _replica_keys, sample_chunk, simulate
from jaxq.system import System

OBJECTIVES = ("mean_response_time", "mean_slowdown")


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
}


def _to_value(constraint, u):
    if constraint == "positive":
        return jax.nn.softplus(u)
    if constraint == "unit":
        return jax.nn.sigmoid(u)
    return u


def _to_u(constraint, value):
    value = np.asarray(value, np.float64)
    if constraint == "positive":
        v = np.maximum(value, 1e-6)
        return v + np.log(-np.expm1(-v))  # inverse softplus
    if constraint == "unit":
        v = np.clip(value, 1e-3, 1 - 1e-3)
        return np.log(v) - np.log1p(-v)
    return value


def _getter(system: System, name: str) -> Callable:
    """A function system -> the leaf that parameter `name` lives in (for eqx.tree_at)."""
    t = TUNABLE[name]
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


def check_names(system: System, names) -> tuple[str, ...]:
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


def with_values(system: System, names, values) -> System:
    """The system with each named parameter set to values[i] (broadcast to the batch)."""
    for name, value in zip(names, values):
        system = eqx.tree_at(_getter(system, name), system, jnp.asarray(value, dtype=float))
    return system


def current_values(system: System, names) -> list[np.ndarray]:
    shape = system.batch_shape
    return [np.broadcast_to(np.asarray(_getter(system, n)(system), np.float64), shape)
            for n in names]


# ---------------------------------------------------------------------------- relaxed objective

def _run_metric(run, warmup, objective):
    """(objective of one run, its unfinished or dropped jobs)."""
    response = run.response[warmup:]
    if objective == "mean_slowdown":
        response = response / run.size[warmup:]
    return jnp.nanmean(response), run.unfinished + run.overflow


def relaxed_objective(spec: RelaxedSpec, objective: str, system: System, keys, tau):
    """(objective, problems) of one configuration (a System without batch axes) over its
    replicas (keys: (R,)): the relaxed engine's mean over the runs."""
    def one(key):
        chunk = sample_chunk(system, key, 0, spec.jobs)
        return _run_metric(run_one(spec, system.policy, tau, chunk), spec.warmup, objective)

    values, problems = jax.vmap(one)(keys)
    return jnp.mean(values), jnp.sum(problems)


def relaxed_gradient(spec: RelaxedSpec, objective: str, system: System, names, u, keys, tau,
                     mode: str = "forward"):
    """(objective, d objective / du (P,), problems) for one configuration: u (P,) unconstrained."""
    constraints = [TUNABLE[n].constraint for n in names]

    def f(u):
        values = [_to_value(c, u[i]) for i, c in enumerate(constraints)]
        value, problems = relaxed_objective(spec, objective, with_values(system, names, values),
                                            keys, tau)
        return value, problems

    if mode == "forward":
        value, problems = f(u)
        grad = jax.jacfwd(lambda u: f(u)[0])(u)
    else:
        (value, problems), grad = jax.value_and_grad(f, has_aux=True)(u)
    return value, grad, problems


# ---------------------------------------------------------------------------- the tuning loop

@dataclasses.dataclass(frozen=True)
class TuneResult:
    """Learned values and how they were found; S is the System's batch shape."""

    names: tuple[str, ...]
    values: dict  # name -> S, the learned value
    hard: object  # jaxq.simulate Result of the learned policies on fresh seeds
    trace_objective: np.ndarray  # (steps,) + S: the objective the method saw at each step
    trace_values: dict  # name -> (steps,) + S
    trace_tau: np.ndarray  # (steps,) temperature (NaN for es)
    problems: int  # relaxed runs' jobs left unfinished or dropped, over all steps (0: none)
    method: str
    seconds: float


def tune(system: System, names, *, method: str = "gradient", steps: int = 100,
         learning_rate: float = 0.05, optimizer: optax.GradientTransformation | None = None,
         tau: tuple[float, float] = (0.3, 0.03), jobs: int = 500, warmup: int | None = None,
         replicas: int = 16, capacity: int = 64, mode: str = "forward",
         objective: str = "mean_response_time", es_pairs: int = 8, es_sigma: float = 0.1,
         es_jobs: int | None = None, eval_jobs: int = 20_000, eval_replicas: int = 8,
         key: int = 0, progress: Callable[[int, int], None] | None = None) -> TuneResult:
    """Learn `names` for every configuration of `system`; see the module docstring."""
    names = check_names(system, names)
    _check(method=method, steps=steps, learning_rate=learning_rate, tau=tau, mode=mode,
           objective=objective, es_pairs=es_pairs, es_sigma=es_sigma)
    start = time.perf_counter()
    system = system.broadcast()
    shape = system.batch_shape
    flat = jax.tree_util.tree_map(lambda a: jnp.reshape(a, (-1,) + jnp.shape(a)[len(shape):]),
                                  system)
    b = math.prod(shape)
    warmup = jobs // 10 if warmup is None else warmup
    spec = RelaxedSpec(capacity=capacity, jobs=jobs, warmup=warmup, steps=2 * jobs,
                       checkpoint=mode == "reverse")
    constraints = [TUNABLE[n].constraint for n in names]
    u = jnp.stack([jnp.asarray(_to_u(c, v).reshape(b), float)
                   for c, v in zip(constraints, current_values(system, names))], axis=-1)
    opt = optimizer or optax.adam(learning_rate)
    opt_state = opt.init(u)
    seeds = jnp.asarray(flat.seed).reshape(b)
    taus = np.geomspace(tau[0], tau[1], steps) if method == "gradient" else np.full(steps, np.nan)
    grad_step = _gradient_step(spec, objective, names, mode)
    trace_obj, trace_u, problems = [], [], 0
    for step in range(steps):
        step_key = jax.random.fold_in(jax.random.key(key), step)
        if method == "gradient":
            keys = _replica_keys(step_key, seeds, replicas)
            value, grad, bad = grad_step(flat, u, keys, taus[step])
            problems += int(jnp.sum(bad))
        else:
            value, grad = _es_step(flat, names, constraints, u, step_key, pairs=es_pairs,
                                   sigma=es_sigma, jobs=es_jobs or jobs, replicas=replicas,
                                   objective=objective)
        trace_obj.append(np.asarray(value))
        trace_u.append(np.asarray(u))
        updates, opt_state = opt.update(grad, opt_state, u)
        u = optax.apply_updates(u, updates)
        if progress:
            progress(step + 1, steps)
    learned = [np.asarray(_to_value(c, u[:, i])).reshape(shape) for i, c in enumerate(constraints)]
    tuned = with_values(system, names, [jnp.asarray(v) for v in learned])
    # Measured on seeds no step used: each configuration's seed shifted by a large odd offset.
    fresh = eqx.tree_at(lambda s: s.seed, tuned, tuned.seed + 1_000_003)
    hard = simulate(fresh, jobs=eval_jobs, replicas=eval_replicas, key=key + 1,
                    on_overflow="ignore")
    trace_u = np.stack(trace_u)  # (steps, b, P)
    return TuneResult(
        names=names, values=dict(zip(names, learned)), hard=hard,
        trace_objective=np.stack(trace_obj).reshape((steps,) + shape),
        trace_values={n: np.asarray(_to_value(c, trace_u[..., i])).reshape((steps,) + shape)
                      for i, (n, c) in enumerate(zip(names, constraints))},
        trace_tau=taus, problems=problems, method=method,
        seconds=time.perf_counter() - start)


def _gradient_step(spec, objective, names, mode):
    @jax.jit
    def step(flat, u, keys, tau):
        return jax.vmap(lambda s, u, k: relaxed_gradient(spec, objective, s, names, u, k, tau,
                                                         mode))(flat, u, keys)
    return step


def _es_step(flat, names, constraints, u, key, *, pairs, sigma, jobs, replicas, objective):
    """(objective at u (b,), gradient estimate (b, P)) from 2 * pairs exact runs per
    configuration, all with one seed per configuration and step (common random numbers)."""
    b, p = u.shape
    eps = jax.random.normal(jax.random.fold_in(key, 1), (b, pairs, p))
    points = jnp.concatenate([u[:, None] + sigma * eps, u[:, None] - sigma * eps,
                              u[:, None]], axis=1)  # (b, 2 pairs + 1, P)
    m = points.shape[1]
    grown = jax.tree_util.tree_map(
        lambda a: jnp.broadcast_to(a[:, None], (b, m) + a.shape[1:]), flat)
    step_seed = jax.random.randint(jax.random.fold_in(key, 2), (), 0, 2**30)
    grown = eqx.tree_at(lambda s: s.seed, grown, grown.seed + step_seed)
    values = [_to_value(c, points[..., i]) for i, c in enumerate(constraints)]
    result = simulate(with_values(grown, names, values), jobs=jobs, replicas=replicas, key=0,
                      on_overflow="ignore")
    f = jnp.asarray(getattr(result, objective))  # (b, m)
    diff = (f[:, :pairs] - f[:, pairs:2 * pairs]) / (2 * sigma)  # (b, pairs)
    grad = jnp.mean(diff[..., None] * eps, axis=1)
    return f[:, -1], grad


def _check(*, method, steps, learning_rate, tau, mode, objective, es_pairs, es_sigma):
    if method not in ("gradient", "es"):
        raise ValueError(f"method must be 'gradient' or 'es', got {method!r}")
    if mode not in ("forward", "reverse"):
        raise ValueError(f"mode must be 'forward' or 'reverse', got {mode!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
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
