"""The dispatching reference (tests/reference_dispatch.py) and the supermarket model's mean-field
limit (jaxq.supermarket), checked against what must hold exactly:

* one server is the single-server reference, whatever the rule;
* random and round-robin dispatch split the arrivals into independent single-server queues: each
  server's departures are the single-server reference's on the jobs sent to it;
* least-work dispatch to FCFS servers is the central-queue FCFS with as many servers (a job
  starts as soon as a server is free either way);
* golden instances where the three measures (count, predicted work, work) disagree;
* the mean-field fixed point solves the supermarket model's equations.
"""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from jaxq import supermarket

try:
    import test_engine as engine_tests
    from reference import departures_exact as central
    from reference_dispatch import MEASURES, departures_exact as dispatched
except ImportError:  # tests/ imported as a package
    from tests import test_engine as engine_tests
    from tests.reference import departures_exact as central
    from tests.reference_dispatch import MEASURES, departures_exact as dispatched

CASES = engine_tests.CONTINUOUS[:12] + engine_tests.LATTICE[:12]
CONFIGS = [c for c in engine_tests.ALL_CONFIGS if c[0] != "mlp"][::2] + [("las", {})]


@pytest.mark.parametrize("measure", [None, *MEASURES])
def test_one_server_is_the_single_server_reference(measure):
    for name, params in CONFIGS:
        for a, x, y in CASES:
            got, sent = dispatched(name, 1, a, x, y, measure=measure, **params)
            assert got == central(name, a, x, y, **params), (name, params)
            assert set(sent) == {0}


def _split_is_independent(name, params, a, x, y, servers, got, sent):
    for s in range(servers):
        jobs = [i for i in range(len(a)) if sent[i] == s]
        if jobs:
            alone = central(name, [a[i] for i in jobs], [x[i] for i in jobs],
                            [y[i] for i in jobs], **params)
            assert [got[i] for i in jobs] == alone, (name, params, s)


@pytest.mark.parametrize("servers", [2, 3])
def test_random_and_round_robin_are_independent_queues(servers):
    rng = random.Random(servers)
    for name, params in CONFIGS:
        for a, x, y in CASES:
            picks = [[rng.randrange(servers)] for _ in a]
            got, sent = dispatched(name, servers, a, x, y, measure="count", samples=picks,
                                   **params)
            assert sent == [p[0] for p in picks]
            _split_is_independent(name, params, a, x, y, servers, got, sent)
            got, sent = dispatched(name, servers, a, x, y, measure=None, **params)
            assert sent == [i % servers for i in range(len(a))]
            _split_is_independent(name, params, a, x, y, servers, got, sent)


@pytest.mark.parametrize("servers", [2, 3])
def test_least_work_to_fcfs_servers_is_the_central_fcfs_queue(servers):
    for a, x, y in engine_tests.CONTINUOUS:
        got, _ = dispatched("fcfs", servers, a, x, y, measure="work")
        assert got == central("fcfs", a, x, y, servers)


def test_the_measures_disagree_where_they_should():
    # Three jobs at t = 0 on two FCFS servers: job 0 (size 3, predicted 1) and job 1 (size 1,
    # predicted 3) take one server each; job 2 then goes to server 0 by count (a tie: the first
    # server) and by predicted work (1 < 3), so it waits for job 0 and leaves at 3 + 1; by true
    # work it goes to server 1 (1 < 3) and leaves at 1 + 1.
    a, x, y = [0, 0, 0], [3, 1, 1], [1, 3, 1]
    expected = {"count": ([3, 1, 4], [0, 1, 0]), "predicted": ([3, 1, 4], [0, 1, 0]),
                "work": ([3, 1, 2], [0, 1, 1])}
    for measure, (times, sent) in expected.items():
        got, got_sent = dispatched("fcfs", 2, a, x, y, measure=measure)
        assert got == [Fraction(v) for v in times] and got_sent == sent, measure
    # Power of d: the samples decide which servers are compared, in the order drawn.
    got, sent = dispatched("fcfs", 3, a, x, y, measure="count", samples=[[2], [2, 0], [2, 1]])
    assert sent == [2, 0, 1] and got == [3, 1, 1]
    # Predicted work counts only what is left of a prediction: job 0 (predicted 1) has outrun its
    # prediction at t = 2, so its server looks empty to job 2 arriving then, while job 1's
    # (predicted 5, a = 2) looks 3 long.
    got, sent = dispatched("fcfs", 2, [0, 0, 2], [4, 4, 1], [1, 5, 1], measure="predicted")
    assert sent == [0, 1, 0] and got == [4, 4, 5]


def test_bad_reference_input():
    with pytest.raises(ValueError, match="measure"):
        dispatched("fcfs", 2, [0], [1], [1], measure="fastest")
    with pytest.raises(ValueError, match="samples"):
        dispatched("fcfs", 2, [0], [1], [1], measure="count", samples=[[2]])
    with pytest.raises(ValueError, match="sizes"):
        dispatched("fcfs", 2, [0], [0], [1], measure="count")


# ----------------------------------------------------------------------------------------------
# The mean-field limit
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("d", [1, 2, 3, 5])
@pytest.mark.parametrize("load", [0.3, 0.9, 0.99])
def test_mean_field_fixed_point_solves_the_supermarket_equations(d, load):
    # ds_i/dt = load (s_{i-1}^d - s_i^d) - (s_i - s_{i+1}) = 0 for i >= 1, s_0 = 1 (the fraction
    # of servers with >= i jobs gains from arrivals that sample only servers with >= i-1 jobs,
    # not all with >= i, and loses from departures at servers with exactly i)
    s = [supermarket.fraction_with_at_least(i, d, load) for i in range(40)]
    assert s[0] == 1.0
    for i in range(1, 39):
        drift = load * (s[i - 1]**d - s[i]**d) - (s[i] - s[i + 1])
        assert abs(drift) < 1e-15, (i, drift)
    # Little's law: E[T] = E[number per server] / (arrival rate per server)
    expected = sum(s[1:]) / load
    if d >= 2 or load < 0.9:  # the geometric tail of d = 1 at high load is longer than 40 terms
        assert supermarket.jsq_d_mean_response_time(d, load) == pytest.approx(expected, rel=1e-12)


def test_mean_field_special_cases():
    assert supermarket.jsq_d_mean_response_time(1, 0.8, 2.0) == pytest.approx(10.0)  # M/M/1
    t2, t3 = (supermarket.jsq_d_mean_response_time(d, 0.9) for d in (2, 3))
    assert 1.0 < t3 < t2 < 10.0  # more choices, shorter queues; never below one service time
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="d must"):
            supermarket.jsq_d_mean_response_time(bad, 0.5)
    with pytest.raises(ValueError, match="load"):
        supermarket.jsq_d_mean_response_time(2, 1.0)
