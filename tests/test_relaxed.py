"""The relaxed queue and its gradients (jaxq.relaxed, jaxq.tune):

* the exact engine's derivative with respect to an ordering-only parameter is exactly zero (why
  the relaxation exists);
* as tau -> 0 the relaxed engine gives the exact engine's response times on traces;
* the relaxed pathwise gradient equals central finite differences of the same relaxed engine
  with the same jobs (float64);
* it points where the gradient-free estimate on the exact engine points.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxq
from jaxq.policies import MLP, Aging
from jaxq.queue import Chunk
from jaxq.relaxed import RelaxedSpec, run_one
from jaxq.simulate import sample_chunk

POLICIES = {
    "fcfs": jaxq.FCFS(), "las": None, "sjf": jaxq.SJF(), "psjf": jaxq.PSJF(), "srpt": jaxq.SRPT(),
    "spjf": jaxq.SPJF(), "pspjf": jaxq.PSPJF(), "sprpt": jaxq.SPRPT(),
    "sprpt-limited": jaxq.SPRPTLimited(0.5), "onebit": jaxq.OneBit(1.0),
    "onebit-preemptive": jaxq.OneBit(1.0, True), "linear": jaxq.Linear(0.5, 1.0, 0.0, 0.0),
    "linear-locked": jaxq.Linear(1.0, 0.0, 0.0, 0.0, preemptive=False),
    "aging": Aging(jaxq.SPRPT(), 0.3),
    "mlp": MLP([0.8, -0.3, 1.2, 0.5, 0.2, -0.1, -0.7, 0.4, 0.6, 0.1]),
}
POLICIES.pop("las")  # its ranks rise with service: needs max_step re-ranking, tested below


def _jobs(n, seed, load=0.8):
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1 / load, n)
    sizes = rng.exponential(1.0, n)
    return gaps, sizes, sizes * rng.lognormal(0.0, 0.5, n)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_tends_to_the_exact_engine_as_tau_falls(name):
    policy = POLICIES[name]
    n = 30
    with jax.enable_x64(True):
        for seed in range(3):
            gaps, sizes, predictions = _jobs(n, seed)
            arrivals = np.cumsum(gaps)
            exact = jaxq.trace(policy, arrivals, sizes, predictions) - arrivals
            spec = RelaxedSpec(capacity=n, jobs=n, warmup=0, steps=2 * n)
            chunk = Chunk(*(jnp.asarray(a) for a in (gaps, sizes, predictions)))
            errors = [float(np.max(np.abs(np.asarray(run_one(spec, policy, tau, chunk).response)
                                          - exact))) for tau in (1e-1, 1e-6)]
            assert errors[1] < 1e-9, (name, seed, errors)


def test_las_tends_to_the_exact_engine_with_re_ranking():
    n = 20
    with jax.enable_x64(True):
        gaps, sizes, predictions = _jobs(n, 0)
        arrivals = np.cumsum(gaps)
        exact = jaxq.trace(jaxq.LAS(), arrivals, sizes, predictions) - arrivals
        chunk = Chunk(*(jnp.asarray(a) for a in (gaps, sizes, predictions)))
        error = {}
        for max_step in (np.inf, 0.05, 0.005):
            spec = RelaxedSpec(capacity=n, jobs=n, warmup=0, steps=20_000, max_step=max_step)
            run = run_one(spec, jaxq.LAS(), 1e-3, chunk)
            assert int(run.unfinished) == 0
            error[max_step] = float(np.max(np.abs(np.asarray(run.response) - exact)))
        assert error[0.005] < error[0.05] < error[np.inf] and error[0.005] < 0.02, error


def test_every_job_is_accounted_for():
    n = 50
    gaps, sizes, predictions = _jobs(n, 1, load=0.95)
    chunk = Chunk(*(jnp.asarray(a, jnp.float32) for a in (gaps, sizes, predictions)))
    run = run_one(RelaxedSpec(capacity=2, jobs=n, warmup=0, steps=2 * n), jaxq.SPRPT(), 0.1,
                  chunk)
    finished = int(np.sum(~np.isnan(np.asarray(run.response))))
    assert int(run.overflow) > 0  # 2 slots are too few at this load: drops are counted
    assert finished + int(run.overflow) + int(run.unfinished) == n
    short = run_one(RelaxedSpec(capacity=n, jobs=n, warmup=0, steps=n), jaxq.SPRPT(), 0.1, chunk)
    assert int(short.unfinished) > 0  # too few steps: the jobs left are counted


def _relaxed_mean(policy_of, theta, tau, chunks, spec):
    def one(chunk):
        return jnp.nanmean(run_one(spec, policy_of(theta), tau, chunk).response[spec.warmup:])
    return jnp.mean(jax.vmap(one)(chunks))


CASES = {
    "threshold": (lambda t: jaxq.OneBit(t[0]), [0.8]),
    "c": (lambda t: jaxq.SPRPTLimited(t[0]), [0.4]),
    "aging": (lambda t: Aging(jaxq.SPRPT(), t[0]), [0.2]),
    "linear": (lambda t: jaxq.Linear(t[0], t[1], t[2], t[3]), [0.3, 1.0, 0.1, 0.05]),
    # 10 weights, every one of which moves the mean
    "mlp": (MLP, [0.8, -0.3, 1.2, 0.5, 0.2, -0.1, -0.7, 0.4, 0.6, 0.1]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_equals_finite_differences_of_the_relaxed_engine(name):
    policy_of, theta = CASES[name]
    with jax.enable_x64(True):
        system = jaxq.System(0.8, predictor=jaxq.LognormalNoise(0.5))
        chunks = jax.vmap(lambda k: sample_chunk(system, k, 0, 120))(
            jax.random.split(jax.random.key(3), 4))
        spec = RelaxedSpec(capacity=64, jobs=120, warmup=10, steps=240)
        theta = jnp.asarray(theta, jnp.float64)
        f = lambda t: _relaxed_mean(policy_of, t, 0.2, chunks, spec)  # noqa: E731
        forward = jax.jacfwd(f)(theta)
        reverse = jax.grad(f)(theta)
        h = 1e-7  # small: the objective is continuous but has kinks where two events swap
        fd = np.array([(f(theta.at[i].add(h)) - f(theta.at[i].add(-h))) / (2 * h)
                       for i in range(theta.shape[0])])
        np.testing.assert_allclose(forward, reverse, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(forward, fd, rtol=1e-4, atol=1e-6)
        assert np.all(np.abs(fd) > 1e-4)  # a real dependence, not 0 == 0


def test_checkpointed_reverse_mode_equals_forward_mode():
    """Reverse mode with every step recomputed in the backward pass (RelaxedSpec(checkpoint=True),
    what `tune(mode="reverse")` uses for many parameters) gives forward mode's gradient."""
    policy_of, theta = CASES["mlp"]
    with jax.enable_x64(True):
        system = jaxq.System(0.8, predictor=jaxq.LognormalNoise(0.5))
        chunks = jax.vmap(lambda k: sample_chunk(system, k, 0, 120))(
            jax.random.split(jax.random.key(4), 2))
        theta = jnp.asarray(theta, jnp.float64)

        def f(checkpoint):
            spec = RelaxedSpec(capacity=64, jobs=120, warmup=10, steps=240,
                               checkpoint=checkpoint)
            return lambda t: _relaxed_mean(policy_of, t, 0.2, chunks, spec)

        np.testing.assert_allclose(jax.grad(f(True))(theta), jax.jacfwd(f(False))(theta),
                                   rtol=1e-8, atol=1e-10)


def test_exact_engine_derivative_of_an_ordering_parameter_is_zero():
    """d(departures)/d(threshold) through the exact engine: zero, although the mean response
    time depends on the threshold."""
    gaps, sizes, predictions = _jobs(40, 2)
    from jaxq.simulate import DEFAULT_SIZE_BUCKETS, EngineSpec, _trace

    spec = EngineSpec(capacity=40, chunk=40, warmup=0, jobs=40, finite_horizon=True,
                      bucket_edges=DEFAULT_SIZE_BUCKETS, histogram_bins=1, record_jobs=40)
    chunk = Chunk(*(jnp.asarray(a, jnp.float32) for a in (gaps, sizes, predictions)))

    def mean_response(threshold):
        return jnp.mean(_trace(spec, jaxq.OneBit(threshold), chunk).responses)

    _, tangent = jax.jvp(mean_response, (jnp.asarray(0.8),), (jnp.asarray(1.0),))
    assert float(tangent) == 0.0
    values = [float(mean_response(jnp.asarray(t))) for t in (0.3, 0.8, 2.0)]
    assert len(set(values)) == 3
