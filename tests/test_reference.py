"""Tests of the reference simulator (tests/reference.py) itself.

Golden instances (tests/golden.py): every expected departure time was worked out by hand, and
every number in them is dyadic, so the float results must match exactly. Then invariants on
seeded random instances, checked in exact rational arithmetic.
"""

from __future__ import annotations

from fractions import Fraction
import random

import pytest

try:
    from golden import GOLDEN
    from reference import POLICY_NAMES, departures, departures_exact
except ImportError:  # tests/ imported as a package
    from tests.golden import GOLDEN
    from tests.reference import POLICY_NAMES, departures, departures_exact


@pytest.mark.parametrize("case", GOLDEN, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-{c[3]}-{c[4]}")
def test_golden(case):
    policy, params, arrivals, sizes, predictions, expected = case
    assert departures(policy, arrivals, sizes, predictions, **params) == expected


def test_golden_covers_every_policy():
    assert {c[0] for c in GOLDEN} == set(POLICY_NAMES)


def test_empty_and_single():
    for policy, params in CONFIGS:
        assert departures(policy, [], [], [], **params) == []
        assert departures(policy, [1.5], [2.0], [7.0], **params) == [3.5]


def test_zero_size_job_departs_on_arrival():
    # job1 has no work: it leaves at its arrival time even under fcfs, with job0 in service.
    assert departures("fcfs", [0, 1], [3, 0], [1, 1]) == [3, 1]
    # las: job0 alone 0-1; at t=1 job1 leaves at once, job2 (a = 0) is served alone until it
    # catches up at t = 2, a = 1 = its size, so it leaves then; job0 has 2 left: t = 4.
    assert departures("las", [0, 1, 1], [3, 0, 1], [1, 1, 1]) == [4, 1, 2]


def test_bad_input():
    with pytest.raises(ValueError):
        departures("nope", [0], [1], [1])
    with pytest.raises(ValueError):
        departures("fcfs", [1, 0], [1, 1], [1, 1])  # not sorted
    with pytest.raises(ValueError):
        departures("fcfs", [0], [1], [1], c=0.5)  # fcfs takes no parameter
    with pytest.raises(ValueError):
        departures("sprpt-limited", [0], [1], [1], c=1.5)
    with pytest.raises(ValueError):
        departures("fcfs", [0], [float("inf")], [1])
    with pytest.raises(ValueError):
        departures("sprpt-limited", [0], [1], [-1])


# ----------------------------------------------------------------------------------------------
# Invariants on random instances.
# ----------------------------------------------------------------------------------------------

CONFIGS = [
    ("fcfs", {}),
    ("las", {}),
    ("sjf", {}),
    ("psjf", {}),
    ("srpt", {}),
    ("spjf", {}),
    ("pspjf", {}),
    ("sprpt", {}),
    ("sprpt-limited", {"c": 0.5}),
    ("sprpt-limited", {"c": 0.25}),
    ("onebit", {"threshold": 1.0, "preemptive": False}),
    ("onebit", {"threshold": 1.0, "preemptive": True}),
    ("linear", {"w_prediction": 0.5, "w_remaining": 1.0, "w_attained": 0.25, "w_age": -0.5}),
    ("linear", {"w_prediction": 0.5, "w_remaining": 1.0, "w_attained": 2.0, "w_age": 0.5}),
    ("linear", {"w_prediction": 0.3, "w_remaining": 0.7, "w_attained": 1.9, "w_age": -0.1}),
    ("linear", {"w_prediction": 1.0, "w_remaining": 1.0, "w_attained": 1.0}),  # slope 0
    ("linear", {"w_prediction": 0.5, "w_remaining": 1.0, "w_attained": 2.0, "preemptive": False}),
    ("skippredict", {"threshold": 1.0}),
    ("delaypredict", {"limit": 0.5}),
]

NON_PREEMPTIVE = [c for c in CONFIGS
                  if c[0] in ("fcfs", "sjf", "spjf") or
                  (c[0] in ("onebit", "linear") and c[1].get("preemptive") is False)]


def random_instance(rng: random.Random, *, lattice: bool, n_min: int = 1, n_max: int = 25,
                    load: float = 1.2, simultaneous: bool = True):
    """n jobs with exponential gaps and sizes and noisy predictions. With lattice=True every value
    is a multiple of 1/2 (and gaps may be 0), so ties of every kind are frequent."""
    n = rng.randint(n_min, n_max)
    t = 0.0
    arrivals, sizes, predictions = [], [], []
    for _ in range(n):
        gap = rng.expovariate(load)
        size = rng.expovariate(1.0)
        pred = size * rng.lognormvariate(0.0, 0.7)
        if lattice:
            gap = round(2 * gap) / 2
            size = max(0.5, round(2 * size) / 2)
            pred = round(2 * pred) / 2
        if not simultaneous and arrivals:
            gap = max(gap, 0.5 if lattice else 1e-3)
        t += gap
        arrivals.append(t)
        sizes.append(size)
        predictions.append(pred)
    return arrivals, sizes, predictions


def instances(seed: int, count: int = 60, **kwargs):
    rng = random.Random(seed)
    return [random_instance(rng, lattice=(k % 2 == 0), **kwargs) for k in range(count)]


def exact(values):
    return [Fraction(v) for v in values]


def busy_periods(arrivals, sizes):
    """[(first job, last job + 1, end time)] of each busy period, exactly, from the work alone."""
    arrivals, sizes = exact(arrivals), exact(sizes)
    periods = []
    end = None
    for i, (a, x) in enumerate(zip(arrivals, sizes)):
        # A new busy period starts when the system is empty at this arrival; a job arriving at
        # the very instant the last work is done also starts a new one (departures come first).
        if end is None or a >= end:
            periods.append([i, i + 1, a + x])
        else:
            periods[-1][1] = i + 1
            periods[-1][2] += x
        end = periods[-1][2]
    return [tuple(p) for p in periods]


def response_sum(arrivals, deps):
    return sum(d - a for d, a in zip(deps, exact(arrivals)))


def test_departs_after_arrival_plus_size_and_work_conservation():
    for arrivals, sizes, predictions in instances(1):
        periods = busy_periods(arrivals, sizes)
        for policy, params in CONFIGS:
            deps = departures_exact(policy, arrivals, sizes, predictions, **params)
            for a, x, d in zip(exact(arrivals), exact(sizes), deps):
                assert d >= a + x, (policy, params)
            # Work conservation: within each busy period (which depends only on the work), every
            # job leaves by its end and the last one leaves exactly at its end.
            for first, stop, end in periods:
                assert max(deps[first:stop]) == end, (policy, params)


def test_float_output_is_the_rounded_exact_output():
    for arrivals, sizes, predictions in instances(2, count=10):
        for policy, params in CONFIGS:
            exact_deps = departures_exact(policy, arrivals, sizes, predictions, **params)
            assert departures(policy, arrivals, sizes, predictions, **params) == [
                float(d) for d in exact_deps]


def test_fcfs_is_the_lindley_recursion():
    for arrivals, sizes, predictions in instances(3):
        expected, d = [], None
        for a, x in zip(exact(arrivals), exact(sizes)):
            d = (a if d is None else max(a, d)) + x
            expected.append(d)
        assert departures_exact("fcfs", arrivals, sizes, predictions) == expected


def test_srpt_minimises_total_response_time():
    # SRPT is optimal for the sum of response times on every instance (Schrage 1968), so no
    # policy can beat it: compared exactly.
    for arrivals, sizes, predictions in instances(4):
        best = response_sum(arrivals, departures_exact("srpt", arrivals, sizes, predictions))
        for policy, params in CONFIGS:
            other = response_sum(
                arrivals, departures_exact(policy, arrivals, sizes, predictions, **params))
            assert best <= other, (policy, params)


def test_las_with_equal_sizes_finishes_everyone_at_the_end_of_the_busy_period():
    # Nobody can finish while another job present has less attained service (that job is served
    # first and catches up), and all jobs need the same service, so every job present finishes
    # at the same moment, which leaves the system empty: the end of its busy period. (A job that
    # arrives at that very instant belongs to the next busy period: departures come first.)
    rng = random.Random(5)
    for k in range(60):
        arrivals, _, predictions = random_instance(rng, lattice=(k % 2 == 0))
        size = rng.choice([0.5, 1.0, 1.5, rng.uniform(0.2, 2.0)])
        sizes = [size] * len(arrivals)
        deps = departures_exact("las", arrivals, sizes, predictions)
        for first, stop, end in busy_periods(arrivals, sizes):
            assert deps[first:stop] == [end] * (stop - first)


def test_las_with_simultaneous_arrivals_is_processor_sharing():
    # All jobs at time 0: the k-th smallest job (1-based, sizes sorted) leaves at
    # x_(1) + ... + x_(k) + (n - k) x_(k).
    rng = random.Random(6)
    for k in range(40):
        n = rng.randint(1, 12)
        sizes = [rng.choice([0.5, 1.0, 2.0]) if k % 2 else rng.expovariate(1.0) for _ in range(n)]
        deps = departures_exact("las", [0.0] * n, sizes, [1.0] * n)
        xs = sorted(exact(sizes))
        ps = {}
        for j, x in enumerate(xs):
            ps[x] = sum(xs[: j + 1]) + (n - j - 1) * x
        assert deps == [ps[x] for x in exact(sizes)]


def test_non_preemptive_policies_serve_each_job_in_one_piece():
    # A job once started runs to completion: its service interval is [d - x, d], it starts no
    # earlier than its arrival and the intervals of different jobs do not overlap.
    for arrivals, sizes, predictions in instances(7):
        for policy, params in NON_PREEMPTIVE:
            deps = departures_exact(policy, arrivals, sizes, predictions, **params)
            intervals = sorted((d - x, d) for d, x in zip(deps, exact(sizes)))
            for (start, _), a in zip(((d - x, d) for d, x in zip(deps, exact(sizes))),
                                     exact(arrivals)):
                assert start >= a, (policy, params)
            for (_, end1), (start2, _) in zip(intervals, intervals[1:]):
                assert end1 <= start2, (policy, params)


def test_equivalent_policies_agree_exactly():
    for arrivals, sizes, predictions in instances(8):
        def run(policy, preds=predictions, **params):
            return departures_exact(policy, arrivals, sizes, preds, **params)

        # the special cases named in the docstrings of jaxq/policies.py
        assert run("linear", w_prediction=1.0, w_remaining=0.0, preemptive=False) == run("spjf")
        assert run("linear", w_remaining=1.0) == run("sprpt")
        assert run("linear", w_remaining=0.0, w_age=-1.0) == run("fcfs")
        assert run("linear", w_remaining=0.0, w_attained=1.0) == run("las")
        assert run("sprpt-limited", c=1.0) == run("sprpt")  # predictions are >= 0
        assert run("sprpt-limited", c=0.0) == run("spjf")
        # perfect predictions turn the prediction policies into the oracle ones
        assert run("sprpt", sizes) == run("srpt")
        assert run("pspjf", sizes) == run("psjf")
        assert run("spjf", sizes) == run("sjf")
        # onebit with no short job (y < 0 never holds) is fcfs, preemptive or not; with every job
        # short and non-preemptive it is fcfs too
        for preemptive in (False, True):
            assert run("onebit", threshold=0.0, preemptive=preemptive) == run("fcfs")
        assert run("onebit", threshold=1e9, preemptive=False) == run("fcfs")


def test_preemptive_onebit_all_short_is_preemptive_lcfs():
    # With distinct arrival times, all-short preemptive onebit (tiebreak -index) and linear with
    # primary = age are both preemptive LCFS. (With simultaneous arrivals they differ: onebit
    # serves the later index first, linear the earlier.)
    for arrivals, sizes, predictions in instances(9, simultaneous=False):
        assert departures_exact("onebit", arrivals, sizes, predictions, threshold=1e9,
                                preemptive=True) == departures_exact(
            "linear", arrivals, sizes, predictions, w_remaining=0.0, w_age=1.0)


def test_large_instance_runs():
    rng = random.Random(10)
    arrivals, sizes, predictions = random_instance(rng, lattice=False, n_min=200, n_max=200, load=1.1)
    for policy, params in CONFIGS:
        deps = departures(policy, arrivals, sizes, predictions, **params)
        assert len(deps) == len(arrivals)
