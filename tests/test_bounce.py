"""sprpt-bounce (jaxq.SPRPTBounce): robust scheduling with predictions in [beta x, alpha x].

The engine against the exact reference is in tests/test_engine.py, test_servers.py and
test_dispatch*.py (every policy) and in tests/golden.py (a hand-worked case). Here:

1. The theory (jaxq.theory_bounce) against two limits computed another way: perfect predictions
   (srpt) and vanishing uniform noise, where every underestimated job is served like pspjf and
   every other like srpt.
2. The simulation against the theory, within 4 standard errors (heavy-tailed sizes and
   predictions down to 0.01 x, for sprpt too, in the long suite).
3. What the policy is for: with heavy-tailed sizes and predictions down to beta x, sprpt's mean
   response time is several times srpt's and sprpt-bounce's is not.
"""

from __future__ import annotations

import numpy as np
import pytest

import jaxq
from jaxq import theory


def _srpt_parts(load):
    """For Exp(1) sizes: E[R(X)] and E[X / (1 - rho(X))], rho(v) = load (1 - e^-v (1 + v)), by
    an independent quadrature (a fine trapezoid rule on [0, 60], where e^-60 is negligible)."""
    v = np.linspace(0.0, 60.0, 600001)
    rho = load * (1.0 - np.exp(-v) * (1.0 + v))
    inv = 1.0 / (1.0 - rho)
    R = np.concatenate([[0.0], np.cumsum(0.5 * (inv[1:] + inv[:-1]) * np.diff(v))])
    f = np.exp(-v)
    return np.trapezoid(f * R, v), np.trapezoid(f * v * inv, v)


def test_theory_with_perfect_predictions_is_srpt():
    for service in (jaxq.Exponential(), jaxq.Weibull(0.5), jaxq.Lognormal.from_cv(2.0)):
        srpt = theory.mean_response_time(jaxq.SRPT(), service, jaxq.Perfect(), 0.8)
        bounce = theory.mean_response_time(jaxq.SPRPTBounce(), service, jaxq.Perfect(), 0.8)
        assert bounce == pytest.approx(srpt, rel=1e-12)


@pytest.mark.parametrize("load", [0.5, 0.9])
def test_theory_with_vanishing_noise(load):
    # y = x (1 +- eps): the wait is srpt's; an overestimated job's residence is srpt's R(x), an
    # underestimated one's is x / (1 - rho(x)) (it is back at rank ~x for all of it). Half each.
    r_mean, psjf_mean = _srpt_parts(load)
    srpt = theory.mean_response_time(jaxq.SRPT(), jaxq.Exponential(), jaxq.Perfect(), load)
    expected = srpt + 0.5 * (psjf_mean - r_mean)
    got = theory.mean_response_time(jaxq.SPRPTBounce(), jaxq.Exponential(),
                                    jaxq.UniformNoise(1e-7), load)
    assert got == pytest.approx(expected, rel=1e-5)
    assert got > srpt * 1.01  # the limit is not srpt: the test can tell them apart


def test_theory_refuses_sizes_without_a_density():
    with pytest.raises(ValueError, match="density"):
        theory.mean_response_time(jaxq.SPRPTBounce(), jaxq.Deterministic(1.0),
                                  jaxq.UniformNoise(0.5), 0.5)
    with pytest.raises(ValueError, match="response_time does not cover"):
        theory.response_time(jaxq.SPRPTBounce(), jaxq.Exponential(), jaxq.UniformNoise(0.5),
                             0.5, 1.0, 1.0)


@pytest.mark.parametrize("predictor", [jaxq.LognormalNoise(1.0), jaxq.UniformNoise(0.9)],
                         ids=["lognormal", "uniform"])
def test_simulation_matches_theory(predictor):
    service = jaxq.Exponential()
    r = jaxq.simulate(jaxq.System(0.8, service, predictor, jaxq.SPRPTBounce()), jobs=50000,
                      replicas=16, capacity=256)
    exact = theory.mean_response_time(jaxq.SPRPTBounce(), service, predictor, 0.8)
    assert abs(float(r.mean_response_time) - exact) < 4 * float(r.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("service, load", [(jaxq.Weibull(0.5), 0.7),
                                           (jaxq.BoundedPareto.with_mean(1.5, 100.0), 0.9)],
                         ids=["weibull", "bounded-pareto"])
@pytest.mark.parametrize("policy", [jaxq.SPRPTBounce(), jaxq.SPRPT()], ids=lambda p: p.name)
def test_simulation_matches_theory_heavy_tailed_sizes(service, load, policy):
    # predictions down to 0.01 x: where sprpt and sprpt-bounce differ most
    predictor = jaxq.UniformNoise(0.99)
    r = jaxq.simulate(jaxq.System(load, service, predictor, policy), jobs=200000,
                      replicas=16, capacity=1024)
    exact = theory.mean_response_time(policy, service, predictor, load)
    assert abs(float(r.mean_response_time) - exact) < 4 * float(r.stderr)


def test_naive_sprpt_degrades_and_bounce_does_not():
    # bounded Pareto sizes (shape 1.5, range 1e4), predictions in [0.01 x, 1.99 x], load 0.9
    service, predictor = jaxq.BoundedPareto.with_mean(1.5, 1e4), jaxq.UniformNoise(0.99)
    srpt = theory.mean_response_time(jaxq.SRPT(), service, jaxq.Perfect(), 0.9)
    naive = theory.mean_response_time(jaxq.SPRPT(), service, predictor, 0.9)
    bounce = theory.mean_response_time(jaxq.SPRPTBounce(), service, predictor, 0.9)
    assert naive > 3.0 * srpt
    assert bounce < 1.5 * srpt
