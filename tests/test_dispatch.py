"""Servers with queues of their own behind a dispatcher (jaxq.System(dispatch=...)).

1. The engine (jaxq.trace_dispatch) against the exact reference (tests/reference_dispatch.py) on
   random instances, with the engine's samples replayed there: every policy setting, and every
   rule for a few policies.
2. Against the central queue and theory: one server is the one-server engine; least-work
   dispatch to FCFS servers is the central FCFS queue, run by run; random dispatch splits a
   Poisson stream, so each server is an M/G/1 queue of its own (any policy's exact formula).
3. Invariants: a configuration's result does not depend on its batch; Little's law holds
   exactly over a drained finite horizon; the mean-field limit is approached as n grows.
4. Bad input.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxq
from jaxq import supermarket, theory

try:
    import test_engine as engine_tests
    from reference_dispatch import departures_exact
except ImportError:  # tests/ imported as a package
    from tests import test_engine as engine_tests
    from tests.reference_dispatch import departures_exact

# (rule, d) -> the reference's measure and whether candidates are sampled
RULES = [("random", None), ("round-robin", None), ("jsq", None), ("jsq-d", 2),
         ("least-predicted-work", None), ("least-predicted-work", 2), ("least-work", None),
         ("least-work", 3)]


def reference(name, params, servers, dispatch, a, x, y, picks):
    samples = [list(p) for p in picks] if dispatch.sampled else None
    got, sent = departures_exact(name, servers, a, x, y, measure=dispatch.measure,
                                 samples=samples, **params)
    return np.array([float(t) for t in got]), np.array(sent)


def engine(name, params, servers, dispatch, a, x, y, picks):
    """jaxq.trace_dispatch in float64, padded to TRACE_LENGTH jobs that come after the system
    has drained (one compilation per policy class and rule)."""
    n = len(a)
    pad = engine_tests.TRACE_LENGTH - n
    tail = float(a[-1]) + float(sum(x)) + 1.0
    picks = np.concatenate([picks, np.zeros((pad, dispatch.sampled), np.int64)])
    with jax.enable_x64(True):
        got, sent = jaxq.trace_dispatch(engine_tests.make_policy(name, params), servers, dispatch,
                                        list(a) + [tail] * pad, list(x) + [1.0] * pad,
                                        list(y) + [1.0] * pad, picks=picks)
    return got[:n], sent[:n]


def check(name, params, servers, dispatch, cases, seed, allow_tie_rounding=False) -> int:
    rng = np.random.default_rng(seed)
    compared = 0
    for k, (a, x, y) in enumerate(cases):
        picks = rng.integers(0, servers, (len(a), dispatch.sampled))
        expected, expected_sent = reference(name, params, servers, dispatch, a, x, y, picks)
        got, sent = engine(name, params, servers, dispatch, a, x, y, picks)
        if (np.allclose(got, expected, rtol=engine_tests.RTOL, atol=engine_tests.ATOL)
                and np.array_equal(sent, expected_sent)):
            compared += 1
        elif not (allow_tie_rounding and engine_tests._diverges_at_a_departure_arrival_tie(
                a, expected, got, engine_tests.RTOL)):
            raise AssertionError(
                f"{dispatch} on {servers} servers, sent {sent.tolist()} expected "
                f"{expected_sent.tolist()}\n" + engine_tests._mismatch_message(
                    name, params, k, a, x, y, expected, got))
    return compared


# ----------------------------------------------------------------------------------------------
# 1. Engine == reference
# ----------------------------------------------------------------------------------------------

def _every_sixth_in_the_default_suite(configs):
    """The default suite runs every sixth setting; the rest run with -m slow (each compiles
    its own engine: a second or two apiece)."""
    return [pytest.param(c, id=engine_tests._config_id(c),
                         marks=() if i % 6 == 0 else pytest.mark.slow)
            for i, c in enumerate(configs)]


@pytest.mark.parametrize("config", _every_sixth_in_the_default_suite(engine_tests.ALL_CONFIGS))
def test_every_policy_matches_the_reference(config):
    """Each policy setting under a rule that samples (so a server may be sampled twice) on 3
    servers: power-of-2 by count for half of them, by predicted work for the other half."""
    i = engine_tests.ALL_CONFIGS.index(config)
    dispatch = jaxq.Dispatch("jsq-d") if i % 2 else jaxq.Dispatch("least-predicted-work", d=2)
    cases = engine_tests.CONTINUOUS[:15]
    assert check(*config, 3, dispatch, cases, seed=i) == len(cases)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: f"{r[0]}-{r[1]}")
@pytest.mark.parametrize("config", [
    pytest.param(("sprpt", {}), id="sprpt"),
    pytest.param(("las", {}), id="las", marks=pytest.mark.slow),
    pytest.param(("fcfs", {}), id="fcfs", marks=pytest.mark.slow),
    pytest.param(("spjf", {}), id="spjf", marks=pytest.mark.slow)])
def test_every_rule_matches_the_reference(config, rule):
    dispatch = jaxq.Dispatch(*rule)
    cases = engine_tests.CONTINUOUS
    assert check(*config, 2, dispatch, cases, seed=7) == len(cases)


@pytest.mark.parametrize("rule", [("round-robin", None), ("jsq", None), ("jsq-d", 2)],
                         ids=lambda r: r[0])
@pytest.mark.parametrize("config", [
    pytest.param(("srpt", {}), id="srpt", marks=pytest.mark.slow),
    pytest.param(("las", {}), id="las"),
    pytest.param(("fcfs", {}), id="fcfs", marks=pytest.mark.slow),
    pytest.param(("onebit", {"threshold": 1.0, "preemptive": True}), id="onebit",
                 marks=pytest.mark.slow)])
def test_counting_rules_match_on_lattice_instances(config, rule):
    """Exact ties everywhere (equal counts: the first candidate wins). Queue lengths are whole
    numbers, so the rules that count see the ties the reference sees; sharing groups may finish
    a rounding error late at an arrival instant, as with one server."""
    name, params = config
    shares = engine_tests._shares(name, params)
    compared = check(name, params, 2, jaxq.Dispatch(*rule), engine_tests.LATTICE, seed=3,
                     allow_tie_rounding=shares)
    assert compared >= (0.75 if shares else 1.0) * len(engine_tests.LATTICE)


def test_golden_measures():
    # Three jobs at t = 0 on two FCFS servers (tests/test_dispatch_reference.py): job 2 follows
    # job 0 (size 3) by count and by predicted work, and job 1 (size 1) by true work.
    a, x, y = [0.0, 0.0, 0.0], [3.0, 1.0, 1.0], [1.0, 3.0, 1.0]
    for rule, sent, leaves in [("jsq", [0, 1, 0], [3, 1, 4]),
                               ("least-predicted-work", [0, 1, 0], [3, 1, 4]),
                               ("least-work", [0, 1, 1], [3, 1, 2])]:
        got, to = engine("fcfs", {}, 2, jaxq.Dispatch(rule), a, x, y,
                         np.zeros((3, 0), np.int64))
        assert to.tolist() == sent and got.tolist() == leaves, rule


def test_a_server_sampled_twice_is_read_once():
    # Job 1 samples server 0 twice while it holds job 0: both copies say one job, and the job
    # joins it; job 2 samples (1, 0) and takes the empty server 1.
    got, sent = engine("fcfs", {}, 2, jaxq.Dispatch("jsq-d", d=2), [0.0, 0.0, 0.0],
                       [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], np.array([[0, 0], [0, 0], [1, 0]]))
    assert sent.tolist() == [0, 0, 1] and got.tolist() == [1.0, 2.0, 1.0]


# ----------------------------------------------------------------------------------------------
# 2. Against the central queue and theory
# ----------------------------------------------------------------------------------------------

RUN = dict(jobs=4000, replicas=2, key=3, capacity=64)
SHORT = dict(RUN, jobs=1500)  # for checks of exact equality, which need no long run
FIELDS = ("mean_response_time", "mean_slowdown", "utilisation", "mean_number_in_system")


@pytest.mark.parametrize("policy", [
    pytest.param(jaxq.SPRPT(), id="sprpt"),
    pytest.param(jaxq.LAS(), id="las", marks=pytest.mark.slow),
    pytest.param(jaxq.FCFS(), id="fcfs", marks=pytest.mark.slow)])
def test_one_server_is_the_one_server_engine(policy):
    """Every arrival reads the one server; only the rounding of the times differs (x64)."""
    system = dict(load=0.8, predictor=jaxq.LognormalNoise(0.5), policy=policy)
    with jax.enable_x64(True):
        alone = jaxq.simulate(jaxq.System(**system), **RUN)
        for rule in ("random", "jsq", "least-work"):
            one = jaxq.simulate(jaxq.System(**system, dispatch=jaxq.Dispatch(rule)), **RUN)
            for field in FIELDS:
                np.testing.assert_allclose(getattr(one, field), getattr(alone, field),
                                           rtol=1e-9, err_msg=f"{rule} {field}")
            assert one.max_in_system == alone.max_in_system and one.jobs == alone.jobs


def test_least_work_to_fcfs_servers_is_the_central_fcfs_queue():
    """A job goes where it starts soonest, as in the central FCFS queue: the same jobs (same
    seed) leave at the same times, so every metric agrees to rounding (x64)."""
    with jax.enable_x64(True):
        central = jaxq.simulate(jaxq.System(load=0.85, servers=4), **RUN)
        dispatched = jaxq.simulate(
            jaxq.System(load=0.85, servers=4, dispatch=jaxq.Dispatch("least-work")), **RUN)
    for field in FIELDS + ("p99",):
        np.testing.assert_allclose(getattr(dispatched, field), getattr(central, field),
                                   rtol=1e-9, err_msg=field)


def test_random_dispatch_is_independent_mg1_queues():
    """A Poisson stream split at random is n Poisson streams: each server is an M/G/1 queue at
    the load per server, whatever its policy. Independent seeds per configuration."""
    service, predictor, load = jaxq.Lognormal.from_cv(1.5), jaxq.LognormalNoise(1.0), 0.7
    policies = [jaxq.SPRPT(), jaxq.FCFS()]
    for i, policy in enumerate(policies):
        r = jaxq.simulate(jaxq.System(load=load, service=service, predictor=predictor,
                                      policy=policy, servers=np.array([3, 16]),
                                      dispatch=jaxq.Dispatch("random"), seed=[2 * i, 2 * i + 1]),
                          jobs=20_000, replicas=8, key=5, capacity=128)
        expected = theory.mean_response_time(policy, service, predictor, load)
        for j in range(2):
            assert abs(r.mean_response_time[j] - expected) < 4 * r.stderr[j], (policy.name, j)
            assert r.utilisation[j] == pytest.approx(load, abs=0.02)
        assert np.all(r.overflow == 0) and np.all(r.unfinished == 0)


@pytest.mark.slow
def test_better_information_dispatches_better():
    # at equal load: random > power of two > join the shortest queue > least work (FCFS)
    rules = [("random", None), ("jsq-d", 2), ("jsq", None), ("least-work", None)]
    means = [jaxq.simulate(jaxq.System(load=0.9, servers=8, dispatch=jaxq.Dispatch(*rule)),
                           **RUN).mean_response_time for rule in rules]
    assert means[0] > means[1] > means[2] > means[3], means


# ----------------------------------------------------------------------------------------------
# 3. Invariants
# ----------------------------------------------------------------------------------------------

def test_a_configuration_does_not_depend_on_its_batch():
    """Lazy servers: each configuration's servers are read at its own arrivals, so a batch
    mate with other loads and other draws changes nothing, bit for bit."""
    dispatch = jaxq.Dispatch("jsq-d", d=2)
    both = jaxq.simulate(jaxq.System(load=np.array([0.6, 0.95]), servers=np.array([5, 9]),
                                     policy=jaxq.SPRPT(), predictor=jaxq.LognormalNoise(1.0),
                                     dispatch=dispatch, seed=[0, 1]), **SHORT)
    alone = jaxq.simulate(jaxq.System(load=0.6, servers=5, policy=jaxq.SPRPT(),
                                      predictor=jaxq.LognormalNoise(1.0), dispatch=dispatch,
                                      seed=0), **SHORT)
    for field in FIELDS + ("p99", "max_in_system", "jobs"):
        assert getattr(both, field)[0] == getattr(alone, field), field


@pytest.mark.parametrize("rule", ["random", "round-robin", "jsq-d"])
def test_littles_law_holds_exactly_over_a_drained_horizon(rule):
    """Unit sizes, a finite horizon from the first arrival to the last departure, all jobs
    measured: the area under the number in system is the sum of the response times, and the
    busy time is the work, n * utilisation * window = jobs. So the mean number over n times the
    utilisation is the mean response time, up to rounding."""
    r = jaxq.simulate(jaxq.System(load=0.9, service=jaxq.Deterministic(1.0), servers=7,
                                  dispatch=jaxq.Dispatch(rule)),
                      jobs=3000, warmup=0, replicas=2, finite_horizon=True, capacity=64)
    assert r.mean_number_in_system / (7 * r.utilisation) == pytest.approx(
        r.mean_response_time, rel=1e-5)


def test_deterministic_for_a_key():
    system = jaxq.System(load=0.9, servers=6, policy=jaxq.LAS(),
                         dispatch=jaxq.Dispatch("least-predicted-work", d=2),
                         predictor=jaxq.ExponentialNoise())
    a, b = (jaxq.simulate(system, **SHORT) for _ in range(2))
    assert a.replica_mean_response_time.tolist() == b.replica_mean_response_time.tolist()


def test_capacity_is_per_server():
    # 3 slots per server at load 0.95 on random dispatch: arrivals are dropped and reported
    system = jaxq.System(load=0.95, servers=4, dispatch=jaxq.Dispatch("random"))
    with pytest.raises(jaxq.CapacityError):
        jaxq.simulate(system, jobs=2000, replicas=1, capacity=3)
    r = jaxq.simulate(system, jobs=2000, replicas=1, capacity=3, on_overflow="ignore")
    assert r.overflow > 0 and r.max_in_system == 3


def test_power_of_two_approaches_the_mean_field_limit():
    """JSQ(2) to FCFS servers at load 0.9: the mean falls towards the n -> oo limit 2.6141 as
    n grows (the README's table has the values), from above: a finite system's sampled
    servers are correlated with the ones that just received jobs."""
    limit = supermarket.jsq_d_mean_response_time(2, 0.9)
    r = jaxq.simulate(jaxq.System(load=0.9, servers=np.array([2, 20]),
                                  dispatch=jaxq.Dispatch("jsq-d", d=2), seed=[0, 1]),
                      jobs=20_000, replicas=4, key=1, capacity=64)
    gaps = r.mean_response_time - limit
    assert gaps[0] > gaps[1] > 0, r.mean_response_time
    assert gaps[1] < 0.1 * limit


# ----------------------------------------------------------------------------------------------
# 4. Bad input
# ----------------------------------------------------------------------------------------------

def test_bad_input():
    with pytest.raises(ValueError, match="unknown dispatch .shortest.; valid: random"):
        jaxq.Dispatch("shortest")
    with pytest.raises(ValueError, match="d applies to"):
        jaxq.Dispatch("random", d=2)
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="d must be"):
            jaxq.Dispatch("jsq-d", d=bad)
    with pytest.raises(TypeError, match="dispatch must be a jaxq.Dispatch"):
        jaxq.System(load=0.5, servers=2, dispatch="jsq")
    with pytest.raises(ValueError, match=r"picks must be \(2, 2\)"):
        jaxq.trace_dispatch(jaxq.FCFS(), 3, jaxq.Dispatch("jsq-d"), [0.0, 1.0], [1.0, 1.0],
                            picks=[[0, 3], [1, 1]])


# ----------------------------------------------------------------------------------------------
# 5. The command line and sweeps
# ----------------------------------------------------------------------------------------------

def test_command_line(capsys):
    import json

    from jaxq.cli import main

    def run(*argv):
        code = main([*argv, "--json"])
        out = capsys.readouterr()
        return code, (json.loads(out.out) if code == 0 else out.err)

    code, sim = run("queue", "--servers", "3", "--dispatch", "random", "--policy", "sprpt",
                    "--predictor", "exponential", "--load", "0.7", "--jobs", "4000",
                    "--replicas", "2")
    assert code == 0 and sim["dispatch"] == "random" and "d" not in sim
    code, exact = run("theory", "--servers", "3", "--dispatch", "random", "--policy", "sprpt",
                      "--predictor", "exponential", "--load", "0.7")
    assert exact["mean_response_time"] == theory.mean_response_time(
        jaxq.SPRPT(), jaxq.Exponential(), jaxq.ExponentialNoise(), 0.7)
    code, limit = run("theory", "--servers", "50", "--dispatch", "jsq-d", "--load", "0.9")
    assert code == 0 and limit["d"] == 2
    assert limit["mean_field_limit"] == supermarket.jsq_d_mean_response_time(2, 0.9)
    code, err = run("queue", "--load", "0.5", "--d", "2")
    assert code != 0 and "--d needs --dispatch" in err
    code, err = run("theory", "--servers", "4", "--dispatch", "jsq", "--load", "0.5")
    assert code != 0 and "no exact theory" in err


def test_sweep_over_dispatch_rules(tmp_path, capsys):
    """Each rule compiles its own engine, so the sweep runs one stack per rule; the plot's theory
    curve is each row's own: M/M/1 for random, Erlang C for least-work, none for jsq."""
    from jaxq import erlang
    from jaxq.cli import main
    from jaxq.sweep.plots import theory_curve
    from jaxq.sweep.results import load_table

    assert main(["sweep", "queue", "--servers", "4", "--dispatch", "random,jsq,least-work",
                 "--load", "0.8", "--jobs", "2000", "--replicas", "2", "--out", str(tmp_path),
                 "--json"]) == 0
    capsys.readouterr()
    rows = load_table(str(tmp_path))
    assert [r["dispatch"] for r in rows] == ["random", "jsq", "least-work"]
    times = [r["mean_response_time"] for r in rows]
    assert times[0] > times[1] > times[2]
    curves = [theory_curve([row], "load") for row in rows]
    assert curves[0][1][0] == pytest.approx(1 / 0.2)
    assert curves[1] is None
    assert curves[2][1][0] == pytest.approx(erlang.mmk_mean_response_time(4, 0.8))
