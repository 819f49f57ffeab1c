"""Simulation against exact M/G/1 theory (jaxq.theory), within statistical error.

The default run checks every policy at one load and a few service x predictor x load
combinations; the full grid (policies x predictors x services x loads 0.5 to 0.95) is marked
slow: `pytest -m slow`.

Agreement means |sim - theory| <= Z standard errors, the standard error taken across 16
independent replicas (a t distribution with 15 degrees of freedom exceeds 4 with probability
0.0012). The warm-up is long enough at high load that the empty start biases the mean by far less
than one standard error.
"""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

import jaxq
from jaxq import theory

Z = 4.0
REPLICAS = 16


def all_policies():
    return [jaxq.FCFS(), jaxq.LAS(), jaxq.SJF(), jaxq.PSJF(), jaxq.SRPT(), jaxq.SPJF(),
            jaxq.PSPJF(), jaxq.SPRPT(), jaxq.SPRPTLimited(0.5), jaxq.OneBit(1.0, False),
            jaxq.OneBit(1.0, True)]


def check(policy, service, predictor, loads, jobs, key=0):
    loads = tuple(loads)
    system = jaxq.System(jnp.asarray(loads), service, predictor, policy)
    r = jaxq.simulate(system, jobs=jobs, replicas=REPLICAS, warmup=jobs // 4, key=key,
                      capacity=512)
    for i, load in enumerate(loads):
        exact = theory.mean_response_time(policy, service, predictor, load)
        sim, se = r.mean_response_time[i], r.stderr[i]
        assert abs(sim - exact) <= Z * se, (
            f"{policy} {service} {predictor} load {load}: sim {sim:.4f} +- {se:.4f}, "
            f"theory {exact:.4f}, z = {(sim - exact) / se:.2f}")
        assert r.overflow[i] == 0


@pytest.mark.parametrize("policy", all_policies(), ids=lambda p: p.name)
def test_every_policy_mm1_exponential_predictions(policy):
    check(policy, jaxq.Exponential(), jaxq.ExponentialNoise(), [0.5, 0.8], jobs=20_000)


@pytest.mark.parametrize("service, predictor, policy", [
    (jaxq.Weibull(0.5), jaxq.UniformNoise(0.5), jaxq.SPRPT()),
    (jaxq.Deterministic(), jaxq.Perfect(), jaxq.SJF()),
    (jaxq.Lognormal.from_cv(2.0), jaxq.LognormalNoise(1.0), jaxq.PSPJF()),
    (jaxq.Hyperexponential(3.0), jaxq.Perfect(), jaxq.SRPT()),
    (jaxq.Uniform(), jaxq.ExponentialNoise(), jaxq.SPRPTLimited(0.3)),
    (jaxq.BoundedPareto.with_mean(1.5, 100.0), jaxq.LognormalNoise(0.5), jaxq.OneBit(0.8, True)),
], ids=lambda v: getattr(v, "name", None))
def test_services_and_predictors(service, predictor, policy):
    check(policy, service, predictor, [0.7], jobs=20_000)


@pytest.mark.slow
def test_mm1_fcfs_high_load():
    check(jaxq.FCFS(), jaxq.Exponential(), jaxq.Perfect(), [0.95], jobs=100_000)


@pytest.mark.slow
@pytest.mark.parametrize("service, predictor", list(itertools.product(
    [jaxq.Exponential(), jaxq.Weibull(0.5)],
    [jaxq.Perfect(), jaxq.ExponentialNoise(), jaxq.UniformNoise(0.5), jaxq.LognormalNoise(1.0)])),
    ids=lambda v: v.name)
@pytest.mark.parametrize("policy", all_policies(), ids=lambda p: p.name)
def test_full_grid(policy, service, predictor):
    check(policy, service, predictor, [0.5, 0.7, 0.9, 0.95], jobs=200_000, key=1)


def test_size_buckets_match_conditional_theory():
    """E[T | x in bucket] against the exact E[T | x] averaged over the bucket (M/M/1 srpt)."""
    service, policy, load = jaxq.Exponential(), jaxq.SRPT(), 0.7
    r = jaxq.simulate(jaxq.System(load, service, jaxq.Perfect(), policy), jobs=50_000,
                      replicas=REPLICAS, capacity=256)
    edges = np.concatenate([[0.0], r.bucket_edges])
    for b in range(len(edges) - 1):
        lo, hi = edges[b], edges[b + 1]
        x = np.linspace(lo, hi, 401)[1:-1] if hi < 50 else None
        if x is None or r.bucket_jobs[b] < 2000:
            continue
        density = np.exp(-x)
        t = theory.response_time(policy, service, jaxq.Perfect(), load, x, x)
        exact = np.sum(t * density) / np.sum(density)
        assert abs(r.bucket_mean_response_time[b] - exact) / exact < 0.05, (b, lo, hi)
