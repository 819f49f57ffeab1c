"""The derivative of a onebit threshold on the exact engine, by smoothed perturbation analysis
(conditional Monte Carlo): unbiased, where the relaxed engine's pathwise derivative is not.

Why. The relaxed engine turns onebit's class into a sigmoid, but a job crossing the threshold
changes the order of many others at once; its pathwise derivative sees that only through the
few jobs whose prediction lies within tau of T, and is biased at large tau and heavy-tailed at
small tau (scripts/bench_tune.py measures both). Here the derivative is taken where it lives: in
the probability that a job's class flips.

The estimator. Under onebit a job's prediction y enters the run only through its class
(short iff y < T): within a class the order is by arrival. Write y_i = x_i m_i, the multiplier
m_i drawn independently of everything else with density p_m (jaxq.predictors). Conditioned on all
sizes, gaps and the other jobs' multipliers, job i is short with probability P(m_i < T / x_i),
whose derivative in T is w_i = p_m(T / x_i) / x_i. So for the objective f of a run (the mean
response time or slowdown of its measured jobs),

    dE[f]/dT = sum_i E[ w_i (f(i short) - f(i long)) ],

the other jobs' classes as drawn. One run gives an unbiased estimate of the sum from `flips`
indices I drawn with probability w_I / sum(w) (jobs whose prediction could have fallen on
either side of T): sum(w) times the mean over the draws of f(I short) - f(I long), each
difference from the run itself and the same run with job I's class flipped (common random
numbers: only that class differs). That costs 1 + flips exact runs of the N jobs per replica.

A run is N jobs from an empty system that then drains (the relaxed engine's run): the first W
are warmup, the objective is over the rest. Predictors with no density (perfect predictions, or
noise with sigma = 0 or alpha = 0) have no such derivative and are refused before tracing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxq.policies import OneBit, without_aging
from jaxq.predictors import Perfect
from jaxq.queue import Chunk, EngineSpec, init_state, run_chunk
from jaxq.simulate import DEFAULT_SIZE_BUCKETS, sample_chunk
from jaxq.system import System

SPA_OBJECTIVES = ("mean_response_time", "mean_slowdown")  # means over a run's measured jobs


def check_spa(system: System, names, terms):
    """Refuse, before tracing, what the estimator does not cover."""
    if tuple(names) != ("threshold",):
        raise ValueError(f"method 'spa' learns the onebit threshold alone, got {list(names)}")
    if not isinstance(without_aging(system.policy), OneBit):
        raise ValueError("method 'spa' needs policy 'onebit'")
    bad = [n for n, _ in terms if n not in SPA_OBJECTIVES]
    if bad:
        raise ValueError(f"method 'spa' takes objectives {', '.join(SPA_OBJECTIVES)}, got {bad} "
                         f"(a quantile moves by jumps; use method 'es')")
    predictor = system.predictor
    if isinstance(predictor, Perfect):
        raise ValueError("method 'spa' needs noisy predictions (a density of y given x): "
                         "lognormal, exponential or uniform noise, not perfect")
    for field in ("sigma", "alpha"):
        value = getattr(predictor, field, None)
        if value is not None and not np.all(np.asarray(value) > 0):
            raise ValueError(f"method 'spa' needs {field} > 0 (no density at {field} = 0), got "
                             f"{np.asarray(value).min()}")


def run_spec(jobs: int, warmup: int, capacity: int) -> EngineSpec:
    """The exact engine on N = jobs arrivals from empty, drained, the first `warmup` unmeasured."""
    return EngineSpec(capacity=capacity, chunk=jobs, warmup=warmup, jobs=jobs - warmup,
                      finite_horizon=True, bucket_edges=DEFAULT_SIZE_BUCKETS, histogram_bins=1)


def _per_run(tree, b, m):
    """Each configuration's leaves (b, ...) repeated for its m runs: (b * m, ...)."""
    return jax.tree_util.tree_map(
        lambda a: jnp.repeat(jnp.broadcast_to(a, (b,) + jnp.shape(a)[1:]), m, axis=0), tree)


def threshold_derivative(spec: EngineSpec, terms, flat: System, keys, flips: int, flip_key):
    """(objective (b,), d objective / dT (b,), jobs dropped or unfinished (b,)) of a flat batch
    of b configurations (every leaf of `flat` has the batch axis b in front) over their replicas
    (keys: (b, R)); the objective is the weighted mix `terms` of SPA_OBJECTIVES, averaged over
    replicas. All b * R * (1 + flips) exact runs go to the engine as one batch."""
    b, r = keys.shape
    n, f = spec.warmup + spec.jobs, flips
    threshold = without_aging(flat.policy).threshold  # (b,)

    def replica(system, t, key, fkey):
        """(the 1 + F runs' jobs (1 + F, N) each, sum_i w_i, which flips shorten (F,))"""
        chunk = sample_chunk(system, key, 0, n)
        y, x = chunk.prediction, chunk.size
        # (N,) d P(job i short) / dT; a size drawn as exactly 0 (float32 can) is always short
        safe = jnp.where(x > 0, x, 1.0)
        w = jnp.where(x > 0, system.predictor.multiplier_density(t / safe) / safe, 0.0)
        picked = jax.random.categorical(fkey, jnp.log(w + 1e-30), shape=(f,))  # (F,)
        was_short = y[picked] < t
        # The flipped prediction lands on the other side of T: T itself is long (y < T short).
        preds = jnp.broadcast_to(y, (f, n)).at[jnp.arange(f), picked].set(
            jnp.where(was_short, t, 0.0))
        runs = Chunk(gap=jnp.broadcast_to(chunk.gap, (1 + f, n)),
                     size=jnp.broadcast_to(x, (1 + f, n)),
                     prediction=jnp.concatenate([y[None], preds]))
        return runs, jnp.sum(w), was_short

    fkeys = jax.random.split(flip_key, b * r).reshape(b, r)
    over_replicas = jax.vmap(replica, in_axes=(None, None, 0, 0))
    runs, total, was_short = jax.vmap(over_replicas)(flat, threshold, keys, fkeys)
    runs = jax.tree_util.tree_map(lambda a: a.reshape(b * r * (1 + f), n), runs)

    m = r * (1 + f)
    state = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (b * m,) + a.shape),
                                   init_state(spec))
    state = run_chunk(spec, _per_run(flat.policy, b, m),
                      _per_run(flat.service.mean(), b, m), runs, state)
    count = state.metrics.count.astype(runs.size.dtype)
    means = {"mean_response_time": state.metrics.response.value() / count,
             "mean_slowdown": state.metrics.slowdown.value() / count}
    value = sum(wt * means[name] for name, wt in terms).reshape(b, r, 1 + f)
    problems = (state.overflow + spec.jobs - state.finished).reshape(b, r * (1 + f))
    short_minus_long = jnp.where(was_short, value[..., :1] - value[..., 1:],
                                 value[..., 1:] - value[..., :1])  # (b, R, F)
    grad = total * jnp.mean(short_minus_long, axis=-1)  # (b, R)
    return value[..., 0].mean(1), grad.mean(1), problems.sum(1)
