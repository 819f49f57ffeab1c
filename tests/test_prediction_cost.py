"""The cost of predictions (jaxq.PredictionCost) and the policies built around it, skippredict
and delaypredict:

1. server time: the engine equals the exact reference (tests/reference.py, prediction_time) on
   random instances, with one and two servers, and under random dispatch each server equals a
   one-server trace of the jobs sent to it;
2. external cost: the queue is untouched, and the reported cost is E[T] plus the predictions'
   cost, whose mean matches its exact value;
3. SOAP theory (jaxq.theory_prediction_cost): its limits are sprpt and fcfs, and simulation
   agrees with it;
4. bad input is refused with the parameter named.
(skippredict and delaypredict without costs are in tests/test_engine.py's reference comparisons
and tests/golden.py.)
"""

from __future__ import annotations

import random

import jax
import numpy as np
import pytest

import jaxq
from jaxq import theory

try:
    from reference import departures
    from test_cli import run as _cli
except ImportError:  # tests/ imported as a package
    from tests.reference import departures
    from tests.test_cli import run as _cli

TRACE_LENGTH = 24
CHEAP, FULL = 0.125, 0.375  # dyadic: the reference's exact sums are the engine's float sums
SERVER = jaxq.PredictionCost(FULL, CHEAP, "server")


def _instances(seed: int, count: int, *, lattice: bool):
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        n = rng.randint(1, 16)
        t, arrivals, sizes, predictions = 0.0, [], [], []
        for _ in range(n):
            gap, size = rng.expovariate(1.0), max(rng.expovariate(1.0), 1e-3)
            pred = size * rng.lognormvariate(0.0, 0.7)
            if lattice:  # multiples of 1/4: ties of every kind, exact in float64
                gap, size, pred = (round(4 * gap) / 4, max(0.25, round(4 * size) / 4),
                                   round(4 * pred) / 4)
            t += gap
            arrivals.append(t)
            sizes.append(size)
            predictions.append(pred)
        out.append((arrivals, sizes, predictions))
    return out


CONTINUOUS = _instances(20261122, 12, lattice=False)
LATTICE = _instances(20261123, 12, lattice=True)

SERVER_CONFIGS = [
    ("skippredict", {"threshold": 1.0}),
    ("delaypredict", {"limit": 0.5}),
    ("sprpt", {}),
    ("spjf", {}),  # non-preemptive: a job in service is not interrupted by predictions
    ("onebit", {"threshold": 1.0, "preemptive": True}),
    ("fcfs", {}),  # no predictions: unchanged
]


def _padded(arrivals, sizes, predictions):
    """The trace padded to TRACE_LENGTH jobs (one compilation per policy), the padding arriving
    after everything real has left."""
    pad = TRACE_LENGTH - len(arrivals)
    tail = arrivals[-1] + sum(sizes) + len(sizes) * (CHEAP + FULL) + 1.0
    return (arrivals + [tail] * pad, sizes + [1.0] * pad, predictions + [1.0] * pad)


def _engine(name, params, instance, servers=1, cost=SERVER):
    n = len(instance[0])
    with jax.enable_x64(True):
        out = jaxq.trace(jaxq.POLICIES[name](**params), *_padded(*instance), servers=servers,
                         prediction_cost=cost)
    return np.asarray(out)[:n]


@pytest.mark.parametrize("name,params", SERVER_CONFIGS, ids=lambda c: str(c))
def test_server_time_matches_the_reference(name, params):
    for instance in CONTINUOUS + LATTICE:
        expected = departures(name, *instance, prediction_time=(CHEAP, FULL), **params)
        np.testing.assert_allclose(_engine(name, params, instance), expected, rtol=1e-9,
                                   atol=1e-9, err_msg=f"{name} {params} {instance}")


@pytest.mark.parametrize("name,params", SERVER_CONFIGS[:3], ids=lambda c: str(c))
def test_server_time_with_two_servers_matches_the_reference(name, params):
    for instance in CONTINUOUS[:8]:
        expected = departures(name, *instance, servers=2, prediction_time=(CHEAP, FULL),
                              **params)
        np.testing.assert_allclose(_engine(name, params, instance, servers=2), expected,
                                   rtol=1e-9, atol=1e-9, err_msg=f"{name} {params} {instance}")


def test_server_time_golden():
    # skippredict, threshold 1, cheap 1/8, full 3/8: job0 (y = 2.5, long) predicts 0-0.5 and is
    # served 0.5-1 (a = 0.5 of its 1); job1 (y = 0.25, short) arrives at 1 and preempts it for
    # its one-bit prediction 1-1.125, then, short, is served 1.125-1.375; job0 finishes
    # 1.375-1.875.
    got = _engine("skippredict", {"threshold": 1.0}, ([0.0, 1.0], [1.0, 0.25], [2.5, 0.25]))
    assert got.tolist() == [1.875, 1.375]
    # delaypredict, limit 0.5: job0 is served 0-0.5, reaches the limit at once predicting for
    # 0.375 (still first class) until 0.875, is then behind job1 (arrived at 0.75): 0.875-1.125
    # job1, 1.125-1.625 job0.
    got = _engine("delaypredict", {"limit": 0.5}, ([0.0, 0.75], [1.0, 0.25], [2.5, 0.25]))
    assert got.tolist() == [1.625, 1.125]


@pytest.mark.parametrize("policy", [jaxq.SkipPredict(1.0), jaxq.DelayPredict(0.5)],
                         ids=lambda p: p.name)
def test_random_dispatch_is_one_queue_per_server(policy):
    # random dispatch with replayed picks: each server runs the one-server engine on its jobs
    # (rank jumps and prediction work inside the dispatch engine's lazy servers)
    rng = np.random.default_rng(3)
    n = 40
    arrivals = np.cumsum(rng.exponential(0.4, n))
    sizes = rng.exponential(1.0, n)
    predictions = sizes * rng.lognormal(0.0, 0.7, n)
    picks = rng.integers(0, 3, (n, 1))
    with jax.enable_x64(True):
        got, sent = jaxq.trace_dispatch(policy, 3, jaxq.Dispatch("random"), arrivals, sizes,
                                        predictions, picks=picks, prediction_cost=SERVER)
        for server in range(3):
            mine = sent == server
            alone = jaxq.trace(policy, arrivals[mine], sizes[mine], predictions[mine],
                               prediction_cost=SERVER)
            np.testing.assert_allclose(got[mine], alone, rtol=1e-12)
    assert np.array_equal(sent, picks[:, 0])


RUN = dict(jobs=20000, replicas=4, capacity=256)


def test_external_cost_leaves_the_queue_alone():
    base = jaxq.System(0.8, predictor=jaxq.LognormalNoise(0.5), policy=jaxq.SkipPredict(1.0))
    cost = jaxq.PredictionCost(full=0.5, cheap=0.1)
    a = jaxq.simulate(base, **RUN)
    b = jaxq.simulate(jaxq.System(0.8, predictor=jaxq.LognormalNoise(0.5),
                                  policy=jaxq.SkipPredict(1.0), prediction_cost=cost), **RUN)
    assert np.array_equal(a.replica_mean_response_time, b.replica_mean_response_time)
    assert a.mean_prediction_cost == 0.0 and a.cost == a.mean_response_time
    assert b.cost == pytest.approx(b.mean_response_time + b.mean_prediction_cost, rel=1e-12)
    trace_args = ([0.0, 0.5], [1.0, 0.25], [2.0, 0.25])
    assert np.array_equal(jaxq.trace(jaxq.SkipPredict(1.0), *trace_args),
                          jaxq.trace(jaxq.SkipPredict(1.0), *trace_args, prediction_cost=cost))


@pytest.mark.parametrize("policy", [jaxq.FCFS(), jaxq.OneBit(1.0), jaxq.SPRPT(),
                                    jaxq.SkipPredict(0.7), jaxq.DelayPredict(1.3)],
                         ids=lambda p: p.name)
def test_mean_prediction_cost_is_its_exact_value(policy):
    # per job: cheap P(one bit) + full P(full), exact from jaxq.theory; the simulated mean counts
    # each measured job's predictions, so it is a binomial proportion around that value
    service, predictor = jaxq.Exponential(), jaxq.ExponentialNoise()
    cost = jaxq.PredictionCost(full=1.0, cheap=0.25)
    r = jaxq.simulate(jaxq.System(0.5, service, predictor, policy, prediction_cost=cost), **RUN)
    exact = theory.mean_prediction_cost(policy, service, predictor, cost)
    n = RUN["jobs"] * RUN["replicas"]
    stderr = cost.full * np.sqrt(0.25 / n)  # a bound: the full predictions' share is <= 1/4
    assert abs(float(r.mean_prediction_cost) - exact) < 5 * stderr + 1e-12
    assert float(r.cost) == pytest.approx(float(r.mean_response_time) + exact, abs=0.05)


def test_server_time_utilisation_is_the_load_plus_the_prediction_work():
    # the server works lambda (E[X] + E[prediction time]) per unit of time
    load = 0.6
    system = jaxq.System(load, predictor=jaxq.LognormalNoise(0.5),
                         policy=jaxq.SkipPredict(np.array([0.5, 2.0])),
                         prediction_cost=jaxq.PredictionCost(0.3, 0.05, "server"))
    r = jaxq.simulate(system, jobs=40000, replicas=4, capacity=256)
    expected = load * (1.0 + r.mean_prediction_cost)  # lambda = load / E[X], E[X] = 1
    np.testing.assert_allclose(r.utilisation, expected, atol=0.01)
    assert r.mean_prediction_cost[0] > r.mean_prediction_cost[1]  # more jobs long at 0.5
    assert np.array_equal(r.cost, r.mean_response_time)


@pytest.mark.parametrize("service,predictor", [
    (jaxq.Exponential(), jaxq.Perfect()),
    (jaxq.Exponential(), jaxq.LognormalNoise(0.5)),
    (jaxq.Weibull(0.5), jaxq.ExponentialNoise()),
    (jaxq.Lognormal.from_cv(2.0), jaxq.UniformNoise(0.5)),
], ids=["exp-perfect", "exp-lognormal", "weibull-exp", "lognormal-uniform"])
def test_theory_limits_are_sprpt_and_fcfs(service, predictor):
    sprpt = theory.mean_response_time(jaxq.SPRPT(), service, predictor, 0.8)
    fcfs = theory.mean_response_time(jaxq.FCFS(), service, predictor, 0.8)
    skip0 = theory.mean_response_time(jaxq.SkipPredict(0.0), service, predictor, 0.8)
    assert skip0 == pytest.approx(sprpt, rel=1e-9)
    # limit -> 0: sprpt, to the quadrature's accuracy (the two formulas are evaluated on
    # different panels; they differ by 2.5e-7 with Weibull(0.5) sizes, by < 1e-12 otherwise)
    delay0 = theory.mean_response_time(jaxq.DelayPredict(1e-12), service, predictor, 0.8)
    assert delay0 == pytest.approx(sprpt, rel=1e-6)
    for policy in (jaxq.SkipPredict(1e6), jaxq.DelayPredict(1e6)):
        assert theory.mean_response_time(policy, service, predictor, 0.8) == pytest.approx(
            fcfs, rel=1e-7)
    # in between: each is a real mix, strictly between its two ends here
    for policy in (jaxq.SkipPredict(1.0), jaxq.DelayPredict(1.0)):
        value = theory.mean_response_time(policy, service, predictor, 0.8)
        assert min(sprpt, fcfs) * 0.9 < value < fcfs


@pytest.mark.parametrize("policy", [jaxq.SkipPredict(0.7), jaxq.DelayPredict(0.7)],
                         ids=lambda p: p.name)
@pytest.mark.parametrize("predictor", [pytest.param(jaxq.Perfect(), marks=pytest.mark.slow),
                                       jaxq.LognormalNoise(0.8)], ids=["perfect", "lognormal"])
def test_simulation_matches_soap_theory(policy, predictor):
    service = jaxq.Exponential()
    r = jaxq.simulate(jaxq.System(0.8, service, predictor, policy), jobs=50000, replicas=16,
                      capacity=256)
    exact = theory.mean_response_time(policy, service, predictor, 0.8)
    assert abs(float(r.mean_response_time) - exact) < 4 * float(r.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("policy", [jaxq.SkipPredict(1.5), jaxq.DelayPredict(0.4)],
                         ids=lambda p: p.name)
def test_simulation_matches_soap_theory_more_variable_sizes(policy):
    service, predictor = jaxq.Hyperexponential(2.0), jaxq.UniformNoise(0.5)
    r = jaxq.simulate(jaxq.System(0.7, service, predictor, policy), jobs=100000, replicas=16,
                      capacity=256)
    exact = theory.mean_response_time(policy, service, predictor, 0.7)
    assert abs(float(r.mean_response_time) - exact) < 4 * float(r.stderr)


def test_bad_input():
    with pytest.raises(ValueError, match="full"):
        jaxq.PredictionCost(-1.0)
    with pytest.raises(ValueError, match="cheap"):
        jaxq.PredictionCost(1.0, -0.5)
    with pytest.raises(ValueError, match="model"):
        jaxq.PredictionCost(1.0, model="inside")
    with pytest.raises(ValueError, match="threshold"):
        jaxq.SkipPredict(-1.0)
    with pytest.raises(ValueError, match="limit"):
        jaxq.DelayPredict(-1.0)
    with pytest.raises(TypeError, match="prediction_cost"):
        jaxq.System(0.5, prediction_cost=0.3)
    with pytest.raises(ValueError, match="may share"):
        jaxq.simulate(jaxq.System(0.5, policy=jaxq.Linear(), prediction_cost=SERVER), jobs=10)
    with pytest.raises(ValueError, match="external"):
        theory.mean_cost(jaxq.SPRPT(), jaxq.Exponential(), jaxq.Perfect(), 0.5, SERVER)
    with pytest.raises(ValueError, match="density"):
        theory.mean_response_time(jaxq.SkipPredict(1.0), jaxq.Deterministic(1.0),
                                  jaxq.ExponentialNoise(), 0.5)
    with pytest.raises(ValueError, match="mean_response_time"):
        theory.response_time(jaxq.DelayPredict(1.0), jaxq.Exponential(), jaxq.Perfect(), 0.5,
                             1.0, 1.0)
    assert "skippredict" not in jaxq.policies.LLM_POLICIES


def test_cli_theory_and_queue(capsys):
    import json

    code, out, _ = _cli(capsys, "theory", "--policy", "skippredict", "--threshold", "1",
                        "--load", "0.8", "--predictor", "lognormal", "--prediction-cost", "0.5",
                        "--cheap-cost", "0.05", "--json")
    r = json.loads(out)
    assert code == 0 and r["prediction_cost"] == 0.5 and r["cost_model"] == "external"
    assert r["cost"] == pytest.approx(r["mean_response_time"] + r["mean_prediction_cost"])
    assert r["mean_response_time"] == pytest.approx(theory.mean_response_time(
        jaxq.SkipPredict(1.0), jaxq.Exponential(), jaxq.LognormalNoise(0.5), 0.8), rel=1e-12)
    code, out, _ = _cli(capsys, "queue", "--policy", "delaypredict", "--limit", "0.5",
                        "--load", "0.5", "--prediction-cost", "0.25", "--cost-model", "server",
                        "--jobs", "2000", "--replicas", "2", "--json")
    r = json.loads(out)
    assert code == 0 and r["limit"] == 0.5 and r["cost"] == r["mean_response_time"]
    assert 0.0 < r["mean_prediction_cost"] < 0.25


@pytest.mark.parametrize("argv,words", [
    (("queue", "--policy", "sprpt", "--load", "0.5", "--cheap-cost", "0.1"), "--prediction-cost"),
    (("queue", "--policy", "sprpt", "--load", "0.5", "--prediction-cost", "1",
      "--cost-model", "inside"), "cost model"),
    (("queue", "--policy", "skippredict", "--load", "0.5", "--threshold", "-1"), "threshold"),
    (("theory", "--policy", "sprpt", "--load", "0.5", "--prediction-cost", "1",
      "--cost-model", "server"), "no exact theory"),
])
def test_cli_bad_input(capsys, argv, words):
    code, _, err = _cli(capsys, *argv)
    assert code == 2 and words in err
