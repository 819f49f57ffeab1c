"""k servers fed by one central queue (jaxq.System(servers=k)).

1. Hand-computed golden instances on two servers, run through both the engine and the reference.
2. The engine (jaxq.trace) against the exact reference (tests/reference.py) on random instances,
   for every policy and parameter setting, with 2 and 3 servers (lattice instances: 2).
3. k = 1 inside a batch that has more servers runs the k-server code and gives bit for bit the
   single-server result.
4. M/M/k fcfs against Erlang C (jaxq.erlang), and the statistical invariants.
5. Bad input.
"""

from __future__ import annotations

import math
from fractions import Fraction

import jax
import numpy as np
import pytest

import jaxq
from jaxq import erlang, theory
from jaxq.tune import tune

try:
    import test_engine as engine_tests
    from reference import departures, departures_exact
except ImportError:  # tests/ imported as a package
    from tests import test_engine as engine_tests
    from tests.reference import departures, departures_exact


def engine_departures(name, params, arrivals, sizes, predictions, servers):
    """jaxq.trace in float64 on k servers, padded like tests/test_engine.py (one compilation per
    policy class): the padding jobs come after the system has drained."""
    n = len(arrivals)
    pad = engine_tests.TRACE_LENGTH - n
    tail = float(arrivals[-1]) + float(sum(sizes)) + 1.0
    with jax.enable_x64(True):
        out = jaxq.trace(engine_tests.make_policy(name, params),
                         list(arrivals) + [tail] * pad, list(sizes) + [1.0] * pad,
                         list(predictions) + [1.0] * pad, servers=servers)
    return np.asarray(out, np.float64)[:n]


# ----------------------------------------------------------------------------------------------
# 1. Golden instances on two servers, computed by hand
# ----------------------------------------------------------------------------------------------

# (policy, arrivals, sizes, expected departures)
GOLDEN_TWO_SERVERS = [
    # job 0 and job 1 start at once; job 2 takes the server job 1 frees at t = 1
    ("fcfs", [0, 0, 0], [2, 1, 1], [2, 1, 2]),
    # three jobs share two servers (rate 2/3 each) until job 0 is done (a = 1 at t = 1.5); then
    # jobs 1 and 2 have a server each: 1 and 2 left
    ("las", [0, 0, 0], [1, 2, 3], [Fraction(3, 2), Fraction(5, 2), Fraction(7, 2)]),
    # job 2 (remaining 1) arrives at 0.5 and preempts job 0 (remaining 2.5), not job 1 (0.5 left);
    # job 0 is back at t = 1 with 2.5 left
    ("srpt", [0, 0, Fraction(1, 2)], [3, 1, 1], [Fraction(7, 2), 1, Fraction(3, 2)]),
    # las: job 0 runs alone until job 1 arrives at t = 1 (a0 = 1); each has a server. Job 2
    # arrives at t = 1.5 (a0 = 1.5, a1 = 0.5) and takes job 0's server. At t = 2.5 job 1 reaches
    # a = 1.5 and shares one server with job 0 (rate 1/2 each) while job 2 (a = 1) has the other;
    # job 2 catches them up at t = 3.5, a = 2, when jobs 1 and 2 are done; job 0 has 1 left
    ("las", [0, 1, Fraction(3, 2)], [3, 2, 2], [Fraction(9, 2), Fraction(7, 2), Fraction(7, 2)]),
]


@pytest.mark.parametrize("case", GOLDEN_TWO_SERVERS, ids=lambda c: c[0])
def test_golden_two_servers(case):
    name, arrivals, sizes, expected = case
    expected = [Fraction(e) for e in expected]
    assert departures_exact(name, arrivals, sizes, sizes, servers=2) == expected
    got = engine_departures(name, {}, [float(a) for a in arrivals], [float(s) for s in sizes],
                            [float(s) for s in sizes], servers=2)
    np.testing.assert_allclose(got, [float(e) for e in expected], rtol=1e-12, atol=1e-12)


def test_jobs_finishing_together_leave_together_after_a_rank_jump():
    # delaypredict, limit 1/2, two servers, all four jobs at 0. Jobs 0 and 1 reach the limit
    # and their size together at t = 1/2: both leave then, although once job 0 has left, job 1
    # (past the limit) ranks behind jobs 2 and 3 (still in the first class). Jobs 2 and 3 run
    # next; job 3 is done at 1, job 2 reaches the limit there and runs alone until 3/2.
    arrivals, sizes, predictions = [0, 0, 0, 0], [0.5, 0.5, 1, 0.5], [0.5, 0, 0.5, 0.5]
    expected = [Fraction(1, 2), Fraction(1, 2), Fraction(3, 2), Fraction(1)]
    assert departures_exact("delaypredict", arrivals, sizes, predictions, servers=2,
                            limit=0.5) == expected
    got = engine_departures("delaypredict", {"limit": 0.5}, arrivals, sizes, predictions, 2)
    np.testing.assert_allclose(got, [float(e) for e in expected], rtol=1e-12, atol=1e-12)


def test_one_server_reference_is_unchanged():
    for a, x, y in engine_tests.CONTINUOUS[:10]:
        assert departures("las", a, x, y, servers=1) == departures("las", a, x, y)


# ----------------------------------------------------------------------------------------------
# 2. Engine == reference on random instances
# ----------------------------------------------------------------------------------------------

def check(name, params, cases, servers, allow_tie_rounding=False) -> int:
    compared = 0
    for k, (a, x, y) in enumerate(cases):
        expected = departures(name, a, x, y, servers, **params)
        got = engine_departures(name, params, a, x, y, servers)
        if np.allclose(got, expected, rtol=engine_tests.RTOL, atol=engine_tests.ATOL):
            compared += 1
        elif not (allow_tie_rounding and engine_tests._diverges_at_a_departure_arrival_tie(
                a, expected, got, engine_tests.RTOL)):
            raise AssertionError(f"servers={servers} " + engine_tests._mismatch_message(
                name, params, k, a, x, y, expected, got))
    return compared


@pytest.mark.parametrize("servers", [2, pytest.param(3, marks=pytest.mark.slow)])
@pytest.mark.parametrize("config", engine_tests._params(engine_tests.ALL_CONFIGS))
def test_engine_matches_reference_on_continuous_instances(config, servers):
    """Every policy setting with 2 servers; with 3 in the long suite (-m slow)."""
    assert check(*config, engine_tests.CONTINUOUS, servers) == len(engine_tests.CONTINUOUS)


@pytest.mark.parametrize("servers", [2])
@pytest.mark.parametrize("config", engine_tests._params(engine_tests.LATTICE_CONFIGS))
def test_engine_matches_reference_on_lattice_instances(config, servers):
    """Exact ties, as in tests/test_engine.py: sharing groups may finish a rounding error late
    at an arrival instant; every other policy must match on every instance."""
    name, params = config
    shares = engine_tests._shares(name, params)
    compared = check(name, params, engine_tests.LATTICE, servers, allow_tie_rounding=shares)
    assert compared >= (0.75 if shares else 1.0) * len(engine_tests.LATTICE)


def test_more_servers_change_the_departures():
    # the instances are busy enough that a second server matters: a check that the tests above
    # compare k-server runs, not single-server ones
    changed = sum(departures("las", a, x, y, 2) != departures("las", a, x, y)
                  for a, x, y in engine_tests.CONTINUOUS)
    assert changed >= len(engine_tests.CONTINUOUS) // 2


# ----------------------------------------------------------------------------------------------
# 3. One server in a batch with more: the k-server code path, the single-server result
# ----------------------------------------------------------------------------------------------

RUN = dict(jobs=3000, replicas=2, key=5, capacity=64)


@pytest.mark.parametrize("policy", [jaxq.SPRPT(), jaxq.LAS(), jaxq.FCFS()],
                         ids=lambda p: p.name)
def test_one_server_in_a_mixed_batch_is_the_single_server_engine(policy):
    system = jaxq.System(load=0.8, predictor=jaxq.LognormalNoise(0.5), policy=policy)
    alone = jaxq.simulate(system, **RUN)
    mixed = jaxq.simulate(jaxq.System(load=0.8, predictor=jaxq.LognormalNoise(0.5),
                                      policy=policy, servers=np.array([1, 3])), **RUN)
    for field in ("mean_response_time", "mean_slowdown", "utilisation", "mean_number_in_system",
                  "p99", "max_in_system", "jobs"):
        assert getattr(mixed, field)[0] == getattr(alone, field), field
    np.testing.assert_array_equal(mixed.replica_mean_response_time[0],
                                  alone.replica_mean_response_time)
    assert mixed.mean_response_time[1] < alone.mean_response_time


# ----------------------------------------------------------------------------------------------
# 4. Theory and invariants
# ----------------------------------------------------------------------------------------------

def test_erlang_c_closed_forms():
    for rho in (0.1, 0.5, 0.93):
        assert erlang.erlang_c(1, rho) == pytest.approx(rho, rel=1e-14)  # M/M/1: P(wait) = rho
        # M/M/2: C = 2 rho^2 / (1 + rho)
        assert erlang.erlang_c(2, rho) == pytest.approx(2 * rho**2 / (1 + rho), rel=1e-14)
        assert erlang.mmk_mean_response_time(1, rho, 2.0) == pytest.approx(2.0 / (1 - rho))
    # the textbook sum, for k = 5 at a = 4
    a, k = 4.0, 5
    top = a**k / math.factorial(k) * k / (k - a)
    expected = top / (sum(a**n / math.factorial(n) for n in range(k)) + top)
    assert erlang.erlang_c(k, a / k) == pytest.approx(expected, rel=1e-13)
    # many servers stay finite and tend to no wait at a fixed load below 1
    assert 0.0 < erlang.erlang_c(2000, 0.9) < erlang.erlang_c(20, 0.9) < 1.0


def test_theory_with_servers():
    fcfs, exp, perfect = jaxq.FCFS(), jaxq.Exponential(2.0), jaxq.Perfect()
    assert theory.mean_response_time(fcfs, exp, perfect, 0.7, 3) == (
        erlang.mmk_mean_response_time(3, 0.7, 2.0))
    assert theory.mean_response_time(fcfs, exp, perfect, 0.7, 1) == pytest.approx(2.0 / 0.3)
    with pytest.raises(ValueError, match="fcfs only"):
        theory.mean_response_time(jaxq.LAS(), exp, perfect, 0.7, 2)
    with pytest.raises(ValueError, match="exponential sizes"):
        theory.mean_response_time(fcfs, jaxq.Deterministic(1.0), perfect, 0.7, 2)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="servers"):
            erlang.erlang_c(bad, 0.5)
    with pytest.raises(ValueError, match="load"):
        erlang.erlang_c(2, 1.0)


def test_mmk_fcfs_matches_erlang_c():
    """Independent seeds per configuration, so the checks are independent."""
    servers, load = np.array([2, 4, 8]), 0.8
    r = jaxq.simulate(jaxq.System(load=load, servers=servers, seed=np.arange(3)), jobs=20_000,
                      replicas=8, key=11)
    for i, k in enumerate(servers):
        expected = erlang.mmk_mean_response_time(int(k), load)
        assert abs(r.mean_response_time[i] - expected) < 4 * r.stderr[i], (k, expected)
        # utilisation is the busy servers' share, the load per server
        assert r.utilisation[i] == pytest.approx(load, abs=0.02)
        # Little's law with lambda = k * load
        assert r.mean_number_in_system[i] == pytest.approx(k * load * r.mean_response_time[i],
                                                           rel=0.03)
    assert np.all(r.overflow == 0) and np.all(r.unfinished == 0)


def test_more_servers_at_equal_load_per_server_wait_less():
    r = jaxq.simulate(jaxq.System(load=0.9, policy=jaxq.SPRPT(), servers=np.array([1, 2, 4])),
                      jobs=5000, replicas=4, key=3)
    assert r.mean_response_time[0] > r.mean_response_time[1] > r.mean_response_time[2]


# ----------------------------------------------------------------------------------------------
# 5. Bad input
# ----------------------------------------------------------------------------------------------

def test_bad_servers():
    for bad in (0, -2, 1.5, [1, 0]):
        with pytest.raises(ValueError, match="servers"):
            jaxq.System(load=0.5, servers=bad)
    with pytest.raises(ValueError, match="capacity must be at least the number of servers"):
        jaxq.simulate(jaxq.System(load=0.5, servers=8), jobs=100, capacity=4)
    with pytest.raises(ValueError, match="servers"):
        jaxq.trace(jaxq.FCFS(), [0.0], [1.0], servers=0)
    with pytest.raises(ValueError, match="method 'gradient' models one server"):
        tune(jaxq.System(load=0.5, policy=jaxq.OneBit(), servers=2), ["threshold"])


def test_command_line(capsys):
    import json

    from jaxq.cli import main

    def run(*argv):
        code = main(list(argv) + ["--json"])
        out = capsys.readouterr()
        return code, (json.loads(out.out) if code == 0 else out.err)

    code, theory_out = run("theory", "--servers", "4", "--load", "0.8")
    assert code == 0 and theory_out["servers"] == 4
    assert theory_out["mean_response_time"] == erlang.mmk_mean_response_time(4, 0.8)
    code, sim = run("queue", "--servers", "4", "--load", "0.8", "--jobs", "4000",
                    "--replicas", "4")
    assert code == 0 and sim["servers"] == 4 and sim["overflow"] == 0
    assert abs(sim["mean_response_time"] - theory_out["mean_response_time"]) < 5 * sim["stderr"]
    code, err = run("theory", "--servers", "2", "--load", "0.8", "--policy", "sprpt")
    assert code == 2 and "fcfs only" in err
    code, err = run("queue", "--servers", "0", "--load", "0.8")
    assert code == 2 and "servers must be >= 1" in err


def test_sweep_over_servers_and_its_theory_curve(tmp_path, capsys):
    """`jaxq sweep queue --servers 1,2,4` runs as one stack, and the plot's theory curve is
    Erlang C for each row's number of servers."""
    from jaxq.cli import main
    from jaxq.sweep.plots import theory_curve
    from jaxq.sweep.results import load_table

    assert main(["sweep", "queue", "--servers", "1,2,4", "--load", "0.8", "--jobs", "2000",
                 "--replicas", "2", "--out", str(tmp_path), "--json"]) == 0
    capsys.readouterr()
    rows = load_table(str(tmp_path))
    assert [r["servers"] for r in rows] == [1, 2, 4]
    times = [r["mean_response_time"] for r in rows]
    assert times[0] > times[1] > times[2]
    for row in rows:
        _, values = theory_curve([row], "load")
        assert values[0] == pytest.approx(erlang.mmk_mean_response_time(row["servers"], 0.8))
