"""jaxq.spa: the onebit threshold's derivative on the exact engine, from runs with one job's class
flipped, agrees with finite differences of the exact engine on the same runs; the multiplier
densities it weighs jobs by are those the predictors sample from; what it cannot differentiate is
refused before running."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxq
from jaxq import theory, tune
from jaxq.simulate import _replica_keys
from jaxq.spa import run_spec, threshold_derivative


@pytest.mark.parametrize("predictor", [jaxq.ExponentialNoise(), jaxq.UniformNoise(0.5),
                                       jaxq.LognormalNoise(0.7)], ids=lambda p: p.name)
def test_multiplier_density_is_the_sampled_one(predictor):
    """The density integrates to 1, and P(m < q) from it matches the fraction of 200,000 draws
    below q within 4 binomial standard errors."""
    grid = np.linspace(1e-6, 12.0, 240_001)
    density = np.asarray(predictor.multiplier_density(jnp.asarray(grid)), np.float64)
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2 * np.diff(grid))])
    assert abs(cdf[-1] - 1.0) < 2e-3
    draws = np.asarray(predictor.multiplier(jax.random.key(3), (200_000,)))
    for q in (0.6, 0.9, 1.0, 1.3, 2.0):
        p = np.interp(q, grid, cdf)
        empirical = np.mean(draws < q)
        assert abs(empirical - p) < 4 * np.sqrt(max(p * (1 - p), 1e-4) / draws.size), (q, p,
                                                                                       empirical)


@pytest.mark.parametrize("preemptive", [False, True])
def test_derivative_agrees_with_finite_differences_of_the_exact_engine(preemptive):
    """M/M/1 at load 0.6, exponential prediction noise, T = 0.3: the estimate over 640 runs of
    400 jobs agrees within 3 standard errors with the central difference (h = 0.05) of the exact
    engine's objective on the same runs, and both have the closed form's sign (negative)."""
    service, predictor, load, t, h = jaxq.Exponential(), jaxq.ExponentialNoise(), 0.6, 0.3, 0.05
    spec = run_spec(400, 40, 64)
    terms = (("mean_response_time", 1.0),)
    policy = jaxq.OneBit(jnp.asarray([t - h, t + h, t]), preemptive)
    system = jaxq.System(load, service, predictor, policy)
    flat = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (3,) + jnp.shape(a)[1:]),
                                  system.broadcast())
    step = jax.jit(lambda keys, fkey: threshold_derivative(spec, terms, flat, keys, 8, fkey))
    fd, spa = [], []
    for i in range(10):
        keys = _replica_keys(jax.random.key(i), jnp.zeros(3, jnp.int32), 64)  # the same runs
        value, grad, problems = step(keys, jax.random.key(100 + i))
        assert int(problems.sum()) == 0
        fd.append(float(value[1] - value[0]) / (2 * h))
        spa.append(float(grad[2]))
    se = lambda a: np.std(a, ddof=1) / np.sqrt(len(a))  # noqa: E731
    assert abs(np.mean(spa) - np.mean(fd)) < 3 * np.hypot(se(spa), se(fd)), (spa, fd)
    slope = (theory.mean_response_time(jaxq.OneBit(t + 1e-4, preemptive), service, predictor,
                                       load)
             - theory.mean_response_time(jaxq.OneBit(t - 1e-4, preemptive), service, predictor,
                                         load)) / 2e-4
    assert slope < 0 and np.mean(spa) < -3 * se(spa) and np.mean(fd) < -3 * se(fd)


@pytest.mark.parametrize("system, kwargs, words", [
    (jaxq.System(0.6, predictor=jaxq.Perfect(), policy=jaxq.OneBit(1.0)), {}, "noisy"),
    (jaxq.System(0.6, predictor=jaxq.LognormalNoise(jnp.asarray([0.5, 0.0])),
                 policy=jaxq.OneBit(1.0)), {}, "sigma > 0"),
    (jaxq.System(0.6, predictor=jaxq.ExponentialNoise(), policy=jaxq.OneBit(1.0)),
     {"objective": "p99"}, "objectives mean_response_time"),
    (jaxq.System(0.6, predictor=jaxq.ExponentialNoise(), policy=jaxq.OneBit(1.0)),
     {"spa_flips": 0}, "spa_flips"),
    (jaxq.System(0.6, predictor=jaxq.ExponentialNoise(), policy=jaxq.SPRPTLimited(0.5)),
     {"names": ["c"]}, "threshold alone"),
    (jaxq.System(0.6, predictor=jaxq.ExponentialNoise(),
                 policy=jaxq.policies.Aging(jaxq.OneBit(1.0), 0.1)),
     {"names": ["threshold", "aging"]}, "threshold alone"),
])
def test_what_it_cannot_differentiate_is_refused(system, kwargs, words):
    names = kwargs.pop("names", ["threshold"])
    with pytest.raises(ValueError, match=words):
        tune.tune(system, names, method="spa", steps=1, **kwargs)
