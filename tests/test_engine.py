"""Tests of the JAX engine (jaxq/queue.py, driven through jaxq.trace and jaxq.simulate).

1. jaxq.trace against the exact reference (tests/reference.py) on random instances, for every
   policy and parameter setting, in float64; continuous instances and lattice instances (every
   value a multiple of 1/2, many exact ties).
2. Hand-computed golden instances (tests/golden.py).
3. simulate: determinism, vmapped == single, independence of the other configurations in a batch,
   one compilation per static shape, statistical invariants, overflow handling, bad input.
4. Kahan summation in float32.

Speed: jaxq.trace compiles once per (policy class, trace length), so every trace here is padded to
one fixed length (TRACE_LENGTH) with jobs that arrive after the system has drained, which cannot
change the departures of the real jobs.
"""

from __future__ import annotations

import random
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxq
from jaxq.metrics import Kahan

try:
    from golden import GOLDEN
    from reference import departures
except ImportError:  # tests/ imported as a package
    from tests.golden import GOLDEN
    from tests.reference import departures


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

TRACE_LENGTH = 24  # every trace is padded to this many jobs: one compilation per policy class
RTOL = 1e-9
ATOL = 1e-9


def make_policy(name: str, params: dict) -> jaxq.policies.Policy:
    return jaxq.POLICIES[name](**params)


def engine_departures(name: str, params: dict, arrivals, sizes, predictions,
                      length: int = TRACE_LENGTH) -> np.ndarray:
    """Departure times from jaxq.trace in float64, for a trace padded to `length` jobs.

    The padding jobs arrive strictly after the last real job could possibly leave (last arrival
    plus all the work), so the system is empty when they come and they change nothing."""
    n = len(arrivals)
    assert 1 <= n <= length
    pad = length - n
    tail = float(arrivals[-1]) + float(sum(sizes)) + 1.0
    a = [float(v) for v in arrivals] + [tail] * pad
    x = [float(v) for v in sizes] + [1.0] * pad
    y = [float(v) for v in predictions] + [1.0] * pad
    with jax.enable_x64(True):
        policy = make_policy(name, params)
        out = jaxq.trace(policy, a, x, y)
    return np.asarray(out, dtype=np.float64)[:n]


def random_instance(rng: random.Random, *, lattice: bool, n_max: int = 20):
    """n jobs with exponential gaps and sizes and lognormally noisy predictions. lattice=True
    rounds every value to a multiple of 1/2 (gaps may be 0, predictions may be 0), so ties of
    every kind (simultaneous arrivals, equal ranks, departures at arrival instants) are common."""
    n = rng.randint(1, n_max)
    t = 0.0
    arrivals, sizes, predictions = [], [], []
    for _ in range(n):
        gap = rng.expovariate(1.2)
        size = rng.expovariate(1.0)
        pred = size * rng.lognormvariate(0.0, 0.7)
        if lattice:
            gap = round(2 * gap) / 2
            size = max(0.5, round(2 * size) / 2)
            pred = round(2 * pred) / 2
        else:
            size = max(size, 1e-3)
        t += gap
        arrivals.append(t)
        sizes.append(size)
        predictions.append(pred)
    return arrivals, sizes, predictions


def instances(seed: int, count: int, *, lattice: bool):
    rng = random.Random(seed)
    return [random_instance(rng, lattice=lattice) for _ in range(count)]


CONTINUOUS = instances(20240601, 30, lattice=False)
LATTICE = instances(20240602, 40, lattice=True)


def _shares(name: str, params: dict) -> bool:
    """Whether tied jobs share the server (las; linear, preemptive, w_attained > w_remaining)."""
    if name == "las":
        return True
    if name != "linear":
        return False
    return (params.get("preemptive", True)
            and params.get("w_attained", 0.0) > params.get("w_remaining", 1.0))


def _mismatch_message(name, params, k, arrivals, sizes, predictions, expected, got):
    bad = [i for i in range(len(expected))
           if not np.isclose(got[i], expected[i], rtol=RTOL, atol=ATOL)]
    return (f"{name} {params}, instance {k}: arrivals={arrivals} sizes={sizes} "
            f"predictions={predictions}\n expected={expected}\n got={got.tolist()}\n"
            f" differing jobs: {bad}")


# ----------------------------------------------------------------------------------------------
# 1. Engine == reference on random instances
# ----------------------------------------------------------------------------------------------

NONPREEMPTIVE_RISING = ("linear", {"w_prediction": 0.5, "w_remaining": 1.0, "w_attained": 2.0,
                                   "preemptive": False})
# Every policy and parameter setting; all of them on continuous instances.
ALL_CONFIGS = [
    ("fcfs", {}),
    ("las", {}),
    ("sjf", {}),
    ("psjf", {}),
    ("srpt", {}),
    ("spjf", {}),
    ("pspjf", {}),
    ("sprpt", {}),
    ("sprpt-bounce", {}),  # a rank jump at a = y: an internal event
    ("sprpt-limited", {"c": 0.0}),
    ("sprpt-limited", {"c": 0.3}),
    ("sprpt-limited", {"c": 0.5}),
    ("sprpt-limited", {"c": 1.0}),
    ("onebit", {"threshold": 1.0, "preemptive": False}),
    ("onebit", {"threshold": 1.0, "preemptive": True}),
    ("onebit", {"threshold": 0.5, "preemptive": True}),
    # linear, slope = w_attained - w_remaining
    ("linear", {}),  # = sprpt, slope -1
    ("linear", {"w_prediction": 0.5, "w_remaining": 1.0, "w_attained": 0.25, "w_age": -0.5}),
    ("linear", {"w_prediction": 1.0, "w_remaining": 1.0, "w_attained": 1.0}),  # slope 0
    ("linear", {"w_remaining": 0.0, "w_age": 1.0}),  # preemptive lcfs
    ("linear", {"w_remaining": 0.0, "w_age": -1.0}),  # fcfs
    # slope > 0: sharing groups and merge events
    ("linear", {"w_remaining": 0.0, "w_attained": 1.0}),  # = las
    ("linear", {"w_prediction": 0.5, "w_remaining": 1.0, "w_attained": 2.0, "w_age": 0.5}),
    ("linear", {"w_prediction": 0.3, "w_remaining": 0.7, "w_attained": 1.9, "w_age": -0.1}),
    # non-preemptive linear
    ("linear", {"w_prediction": 1.0, "w_remaining": 0.0, "preemptive": False}),  # = spjf
    ("linear", {"w_prediction": 0.5, "w_remaining": 1.0, "w_attained": 0.25, "w_age": 0.5,
                "preemptive": False}),
    NONPREEMPTIVE_RISING,  # slope > 0 but locked once started: never shares
    ("mlp", {"weights": (1.0, 0.0, 0.0, 0.0)}),  # v = c = 0: sprpt
    # h(y) = y exp(m(log y)) with three units: non-monotone in places, so it reorders jobs
    ("mlp", {"weights": (0.8, -0.3, 1.2, 0.5, 0.2, -0.1, -0.7, 0.4, 0.6, 0.1)}),
    ("skippredict", {"threshold": 1.0}),
    ("skippredict", {"threshold": 0.5}),
    ("delaypredict", {"limit": 0.5}),  # a rank jump at the limit: an internal event
    ("delaypredict", {"limit": 1.5}),
]

# On lattice instances only parameters that keep float arithmetic exact (dyadic weights and c),
# so that every tie of the exact reference is a tie in float64 too. (c = 0.3 and weights like 0.7
# are not dyadic: the reference compares their exact binary values, which float64 products round.)
def _dyadic(value) -> bool:
    if isinstance(value, tuple):  # the MLP's weights: exact only when its output is exp(0) = 1
        h = (len(value) - 1) // 3
        return not any(value[2 * h:])
    return isinstance(value, bool) or float(value * 4).is_integer()


LATTICE_CONFIGS = [(name, params) for name, params in ALL_CONFIGS
                   if all(_dyadic(v) for v in params.values())]


def _config_id(config) -> str:
    name, params = config
    return name + ("-" + ",".join(f"{k}={v}" for k, v in params.items()) if params else "")


def _params(configs):
    return [pytest.param(c, id=_config_id(c)) for c in configs]


def test_lattice_configs_cover_every_policy():
    assert {c[0] for c in ALL_CONFIGS} == set(jaxq.POLICIES)
    assert {c[0] for c in LATTICE_CONFIGS} == set(jaxq.POLICIES)
    assert any(_shares(*c) for c in LATTICE_CONFIGS if c[0] == "linear")


def test_trace_runs_in_float64():
    # 1 + 2^-40 is not a float32: the result is exact only if the engine runs in float64.
    x = 1.0 + 2.0**-40
    got = engine_departures("fcfs", {}, [0.0, 0.0], [x, x], [1.0, 1.0])
    assert got.tolist() == [x, 2 * x]


def _diverges_at_a_departure_arrival_tie(arrivals, expected, got, tol) -> bool:
    """Whether the first wrong departure is one the reference puts exactly at an arrival instant,
    and the engine let nobody leave before it: the signature of a departure that the engine
    computed a rounding error late, so that the arrival was processed first."""
    expected = np.asarray(expected)
    bad = ~np.isclose(got, expected, rtol=tol, atol=tol)
    first = expected[bad].min()
    return first in set(arrivals) and bool(np.all(got[bad] >= first - tol))


def check_against_reference(name, params, cases, *, tol=RTOL, allow_tie_rounding=False):
    """Engine == reference on every instance. With allow_tie_rounding, an instance whose first
    divergence is a departure at an arrival instant is skipped (see the lattice test); returns how
    many instances were compared."""
    compared = 0
    for k, (a, x, y) in enumerate(cases):
        expected = departures(name, a, x, y, **params)
        got = engine_departures(name, params, a, x, y)
        if np.allclose(got, expected, rtol=tol, atol=tol):
            compared += 1
            continue
        if allow_tie_rounding and _diverges_at_a_departure_arrival_tie(a, expected, got, tol):
            continue
        raise AssertionError(_mismatch_message(name, params, k, a, x, y, expected, got))
    return compared


@pytest.mark.parametrize("config", _params(ALL_CONFIGS))
def test_engine_matches_reference_on_continuous_instances(config):
    check_against_reference(*config, CONTINUOUS)


@pytest.mark.parametrize("config", _params(LATTICE_CONFIGS))
def test_engine_matches_reference_on_lattice_instances(config):
    """Exact ties: departures before merges before arrivals; an arrival whose primary equals a
    sharing group's joins it; equal primaries go to the lower tiebreak.

    Sharing policies divide service by the group size (1/3, ...), so their state is not exact in
    float even on the lattice. When such a group's exact departure falls at the very instant of an
    arrival, the float departure may come a rounding error late, the arrival is processed first
    and preempts a job with ~1e-16 work left (test_float_rounding_at_exact_ties, xfailed). For
    sharing policies an instance whose first divergence is exactly that is skipped (the rest
    must still match); every other policy must match on every instance."""
    name, params = config
    shares = _shares(name, params)
    compared = check_against_reference(name, params, LATTICE, allow_tie_rounding=shares)
    assert compared >= 0.75 * len(LATTICE)


def test_processor_sharing_of_three_is_exact_in_float64():
    # las with all jobs at time 0 is processor sharing: three share until job0 is done (each
    # a = 1, t = 3), two share until job1 is done (each gets 1 more, t = 5), job2 has 1 left: t = 6.
    got = engine_departures("las", {}, [0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(got, [3.0, 5.0, 6.0], rtol=1e-12, atol=0)


# ----------------------------------------------------------------------------------------------
# 2. Golden instances, computed by hand (tests/golden.py, shared with tests/test_reference.py).
# ----------------------------------------------------------------------------------------------

def _golden_id(case) -> str:
    return f"{_config_id(case[:2])}-{case[2]}-{case[3]}-{case[4]}"


@pytest.mark.parametrize("case", GOLDEN, ids=_golden_id)
def test_golden(case):
    name, params, arrivals, sizes, predictions, expected = case
    got = engine_departures(name, params, arrivals, sizes, predictions)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


# Exact ties that the engine gets wrong because of float64 rounding (found on lattice instances,
# then minimised). In each one an arrival comes at the exact instant a job's remaining work (or
# its lock threshold) reaches a boundary, but the float value is a rounding error off, so the
# arrival preempts a job that the reference lets finish (or keeps locked).
FLOAT_TIES = [
    # las: three jobs share from t=0 (a = 1/6 each at t=0.5); job3 (a = 0) alone 0.5-2/3; four
    # share; job2 and job3 (1/3 left each) are done after 4/3, at t = 2 exactly, when job4
    # arrives. Departures come first, so they leave at 2 and job4 runs 2-2.5 alone. The engine's
    # attained service (sums of 1/6, 1/3) is a rounding error short, job4 arrives first and
    # (a = 0) preempts them: the engine gives [6.5, 3.5, 2.5, 2.5, 2.5].
    pytest.param("las", {}, [0.0, 0.0, 0.0, 0.5, 2.0], [4.0, 1.0, 0.5, 0.5, 0.5],
                 [1.0, 1.0, 1.0, 1.0, 1.0], [6.5, 3.5, 2.0, 2.0, 2.5], id="las-shared-departure"),
    # linear, primary = y + 1.2 a - 0.1 age (slope 1.2): job1 (primary 0) runs 0-0.5; job2
    # alone until its primary 1 + 1.2 a meets job0's 2, a2 = 5/6 at t = 4/3; they share, job2
    # leaves at t = 5/3; job0 (11/6 left) leaves at t = 3.5 exactly, when job3 arrives, which then
    # runs 3.5-4.5. The engine gives job0 4.5, job3 4.5 (job3 preempts a job with ~1e-16 left).
    pytest.param("linear", {"w_prediction": 0.3, "w_remaining": 0.7, "w_attained": 1.9,
                            "w_age": -0.1},
                 [0.0, 0.0, 0.0, 3.5], [2.0, 0.5, 1.0, 1.0], [2.0, 0.0, 1.0, 0.5],
                 [3.5, 0.5, 5.0 / 3.0, 4.5], id="linear-slope-1.2-departure"),
    # sprpt-limited, c = 0.3 (the double 0.299999999999999988898): job0 (y = 5) locks when
    # a0 > c * y0 = 1.49999999999999994449 (exactly). At t = 1.5, a0 = 1.5 > that, so job0 is
    # locked and job1 (y = 0) waits: 0-2 job0, 2-2.5 job1. The engine rounds c * y to 1.5, so it
    # sees a0 = 1.5 = c * y, unlocked, and job1 preempts: the engine gives [2.5, 2.0].
    pytest.param("sprpt-limited", {"c": 0.3}, [0.0, 1.5], [2.0, 0.5], [5.0, 0.0], [2.0, 2.5],
                 id="sprpt-limited-lock-threshold"),
]


@pytest.mark.xfail(strict=True, reason=(
    "float64 rounding at an exact tie: the engine decides departure-vs-arrival (or a > c*y) on "
    "rounded values, so a job with ~1e-16 work left is preempted (or a job exactly at its lock "
    "threshold is not locked) and departures move by O(1)"))
@pytest.mark.parametrize("name, params, arrivals, sizes, predictions, expected", FLOAT_TIES)
def test_float_rounding_at_exact_ties(name, params, arrivals, sizes, predictions, expected):
    assert departures(name, arrivals, sizes, predictions, **params) == pytest.approx(expected)
    got = engine_departures(name, params, arrivals, sizes, predictions)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


def test_float_tie_expectations_match_the_reference():
    # The expected values of the xfailed cases above are the reference's (so the xfail is the
    # engine's, not a wrong expectation).
    for case in FLOAT_TIES:
        name, params, arrivals, sizes, predictions, expected = case.values
        assert departures(name, arrivals, sizes, predictions, **params) == pytest.approx(
            expected, rel=1e-12)


def test_trace_compiles_once_per_policy_class_and_length(simulate_module):
    # Different weights (and preemptive flags) of one class share one compiled program.
    trace_fn = simulate_module._trace
    length = 7  # used nowhere else in this file
    arrivals, sizes, predictions = [0, 0, 1, 2, 2, 3, 5], [1, 2, 1, 3, 1, 1, 2], [1, 1, 2, 2, 0, 1, 3]
    before = trace_fn._cache_size()
    for params in ({}, {"w_prediction": 0.5, "w_attained": 2.0, "w_age": 0.5},
                   {"w_remaining": 0.0, "preemptive": False}):
        got = engine_departures("linear", params, arrivals, sizes, predictions, length=length)
        np.testing.assert_allclose(got, departures("linear", arrivals, sizes, predictions,
                                                   **params), rtol=RTOL, atol=ATOL)
    assert trace_fn._cache_size() == before + 1


# ----------------------------------------------------------------------------------------------
# 3. simulate
# ----------------------------------------------------------------------------------------------

BIG = dict(jobs=20_000, replicas=4)


def _sprpt_system(load=0.7, sigma=0.5):
    return jaxq.System(load=load, policy=jaxq.SPRPT(), predictor=jaxq.LognormalNoise(sigma))


# The per-configuration fields of a Result.
FLOAT_FIELDS = ("mean_response_time", "stderr", "mean_slowdown", "p50", "p90", "p99",
                "bucket_mean_response_time", "utilisation", "mean_number_in_system",
                "replica_mean_response_time")
INT_FIELDS = ("jobs", "overflow", "max_in_system", "unfinished", "bucket_jobs")


def _assert_results_equal(a, b, rtol=0.0):
    """Equal per-configuration results: floats to rtol (0: bitwise), counts exactly."""
    for field in FLOAT_FIELDS:
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=rtol, atol=0,
                                   equal_nan=True, err_msg=field)
    for field in INT_FIELDS:
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


@pytest.fixture(scope="module")
def big_run():
    return jaxq.simulate(_sprpt_system(), key=1, **BIG)


def test_invariants(big_run):
    r = big_run
    load = 0.7
    assert r.overflow == 0 and r.unfinished == 0
    assert r.jobs == BIG["replicas"] * BIG["jobs"]
    assert r.bucket_jobs.sum() == r.jobs
    assert abs(r.utilisation - load) < 0.02
    # Little's law: L = lambda W, with lambda = load / E[S] = load.
    assert r.mean_number_in_system == pytest.approx(load * r.mean_response_time, rel=0.03)
    assert np.all(np.isfinite(r.replica_mean_response_time))
    assert r.mean_response_time == pytest.approx(r.replica_mean_response_time.mean(), rel=1e-6)
    assert 0 < r.p50 < r.p90 < r.p99
    assert r.max_in_system <= 128


def test_same_key_is_identical_different_key_differs(big_run):
    again = jaxq.simulate(_sprpt_system(), key=1, **BIG)
    _assert_results_equal(big_run, again)
    other = jaxq.simulate(_sprpt_system(), key=2, **BIG)
    assert not np.array_equal(big_run.replica_mean_response_time,
                              other.replica_mean_response_time)
    assert big_run.mean_response_time != other.mean_response_time


SMALL = dict(jobs=3000, replicas=2, key=7, chunk=256, capacity=256)


def _linear_system(load, w_remaining, w_age, sigma, w_attained=0.0):
    return jaxq.System(
        load=load, predictor=jaxq.LognormalNoise(sigma=sigma),
        policy=jaxq.Linear(w_remaining=w_remaining, w_attained=w_attained, w_age=w_age))


def _select(result, i):
    """The per-configuration fields of configuration i of a batch result."""
    return types.SimpleNamespace(**{f: getattr(result, f)[i] for f in FLOAT_FIELDS + INT_FIELDS})


# Configurations: (load, w_remaining, w_age, sigma, w_attained)
CONFIG_A = (0.5, 1.0, 0.0, 0.3, 0.0)  # sprpt
CONFIG_B = (0.8, 0.0, -1.0, 1.0, 0.0)  # fcfs
CONFIG_HEAVY = (0.98, 0.0, 0.0, 1.0, 1.0)  # las near saturation: runs more chunks
CONFIG_LIGHT = (0.2, 1.0, -0.5, 0.0, 0.25)


def _batch(configs):
    cols = [jnp.asarray(col) for col in zip(*configs)]
    return _linear_system(cols[0], cols[1], cols[2], cols[3], cols[4])


def test_vmapped_equals_single():
    batch = jaxq.simulate(_batch([CONFIG_A, CONFIG_B]), **SMALL)
    assert batch.mean_response_time.shape == (2,)
    for i, config in enumerate([CONFIG_A, CONFIG_B]):
        alone = jaxq.simulate(_linear_system(*config), **SMALL)
        assert alone.mean_response_time.shape == ()
        _assert_results_equal(alone, _select(batch, i), rtol=1e-6)
    # common random numbers: both configurations saw the same jobs, yet the policies differ
    assert batch.mean_response_time[0] != batch.mean_response_time[1]


def test_result_does_not_depend_on_the_other_configurations():
    with_heavy = jaxq.simulate(_batch([CONFIG_A, CONFIG_HEAVY]), **SMALL)
    with_light = jaxq.simulate(_batch([CONFIG_LIGHT, CONFIG_A]), **SMALL)
    alone = jaxq.simulate(_linear_system(*CONFIG_A), **SMALL)
    # A was frozen while the heavy configuration ran on for more chunks
    assert with_heavy.chunks > alone.chunks
    assert with_light.chunks == alone.chunks
    _assert_results_equal(_select(with_heavy, 0), _select(with_light, 1))
    _assert_results_equal(alone, _select(with_heavy, 0), rtol=1e-6)


def test_one_compilation_per_spec(simulate_module, monkeypatch):
    calls = []
    original = simulate_module.run_chunk

    def counting_run_chunk(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(simulate_module, "run_chunk", counting_run_chunk)
    kwargs = dict(jobs=500, replicas=2, histogram_bins=97)  # a spec used nowhere else
    before = simulate_module._advance._cache_size()
    first = jaxq.simulate(_linear_system(0.5, 1.0, 0.0, 0.3), key=0, **kwargs)
    assert len(calls) == 1
    second = jaxq.simulate(_linear_system(0.9, 0.0, -1.0, 1.5, 2.0), key=3, **kwargs)
    assert len(calls) == 1, "simulate re-traced the engine for new parameter values"
    assert simulate_module._advance._cache_size() == before + 1
    assert first.mean_response_time != second.mean_response_time


def test_capacity_overflow():
    kwargs = dict(jobs=2000, replicas=2, capacity=2)
    system = jaxq.System(load=0.9)
    with pytest.raises(jaxq.CapacityError, match="capacity"):
        jaxq.simulate(system, **kwargs)
    r = jaxq.simulate(system, on_overflow="ignore", **kwargs)
    assert r.overflow > 0
    assert r.max_in_system == 2
    with pytest.warns(RuntimeWarning, match="capacity"):
        jaxq.simulate(system, on_overflow="warn", **kwargs)


def test_finite_horizon_allows_overload():
    r = jaxq.simulate(jaxq.System(load=1.2), jobs=500, replicas=2, finite_horizon=True,
                      capacity=1024)
    assert r.overflow == 0 and r.unfinished == 0
    assert r.jobs == 1000
    assert np.isfinite(r.mean_response_time) and r.mean_response_time > 0
    assert r.utilisation > 0.9


# ----------------------------------------------------------------------------------------------
# Bad input: ValueError naming the parameter, before anything is traced.
# ----------------------------------------------------------------------------------------------

BAD_SIMULATE = [
    (lambda: (jaxq.System(load=1.0), {}), "load"),
    (lambda: (jaxq.System(load=1.5), {}), "load"),
    (lambda: (jaxq.System(load=jnp.array([0.5, 1.0])), {}), "load"),
    (lambda: (jaxq.System(load=0.5), {"jobs": 0}), "jobs"),
    (lambda: (jaxq.System(load=0.5), {"replicas": 0}), "replicas"),
    (lambda: (jaxq.System(load=0.5), {"capacity": 0}), "capacity"),
    (lambda: (jaxq.System(load=0.5), {"on_overflow": "explode"}), "on_overflow"),
]


@pytest.mark.parametrize("make, name", BAD_SIMULATE, ids=[
    "load=1", "load=1.5", "load=[0.5,1]", "jobs=0", "replicas=0", "capacity=0",
    "on_overflow=explode"])
def test_bad_simulate_arguments(make, name, simulate_module, monkeypatch):
    def no_tracing(*args, **kwargs):
        raise AssertionError("the engine was traced before validation")

    monkeypatch.setattr(simulate_module, "run_chunk", no_tracing)
    system, override = make()
    kwargs = {"jobs": 100, **override}
    with pytest.raises(ValueError, match=name):
        jaxq.simulate(system, **kwargs)


@pytest.mark.parametrize("make, name", [
    (lambda: jaxq.UniformNoise(alpha=1.0), "alpha"),
    (lambda: jaxq.UniformNoise(alpha=-0.1), "alpha"),
    (lambda: jaxq.OneBit(threshold=-1.0), "threshold"),
    (lambda: jaxq.SPRPTLimited(c=1.5), "c"),
    (lambda: jaxq.SPRPTLimited(c=-0.1), "c"),
    (lambda: jaxq.LognormalNoise(sigma=-0.1), "sigma"),
    (lambda: jaxq.Weibull(shape=0.0), "shape"),
    (lambda: jaxq.System(load=0.0), "load"),
], ids=["alpha=1", "alpha=-0.1", "threshold<0", "c=1.5", "c<0", "sigma<0", "weibull-shape=0",
        "load=0"])
def test_bad_parameters(make, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        make()


# ----------------------------------------------------------------------------------------------
# 4. Kahan sums in float32
# ----------------------------------------------------------------------------------------------

def test_kahan_sum_in_float32_matches_float64():
    # 2^20 response times of order 1 in float32: a plain float32 running sum (which reaches ~1e6,
    # where one ulp is 0.06) loses ~1e-4 relative; the compensated sum must stay at float32
    # precision of the total.
    n = 2**20
    values = jax.random.exponential(jax.random.key(0), (n,), dtype=jnp.float32) * 2.0
    assert values.dtype == jnp.float32
    exact = float(np.sum(np.asarray(values, np.float64)))

    def step(carry, v):
        acc, naive = carry
        return (acc.add(v), naive + v), None

    (acc, naive), _ = jax.lax.scan(step, (Kahan.zeros(), jnp.zeros((), jnp.float32)), values)
    assert acc.total.dtype == jnp.float32
    kahan_error = abs(float(acc.value()) - exact) / exact
    naive_error = abs(float(naive) - exact) / exact
    assert kahan_error < 2e-7
    assert kahan_error < naive_error / 10  # the test can tell the two apart


@pytest.mark.parametrize("service", [jaxq.Exponential(), jaxq.Weibull(0.5), jaxq.Uniform(0.0, 2.0),
                                     jaxq.Hyperexponential(3.0)], ids=lambda d: d.name)
def test_no_size_is_exactly_zero(service):
    """2^25 float32 sizes, none 0. jax.random.exponential with this key gives one 0 in as many
    draws (once in 2^23 on average): a 16M-job M/M/1 run had one, and its slowdown 0 / 0 made
    the mean slowdown NaN."""
    x = np.asarray(service.sample(jax.random.key(0), (1 << 25,)))
    assert x.min() > 0 and np.isfinite(x.max())
