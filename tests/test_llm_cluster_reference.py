"""Tests of the plain-Python reference of a cluster of LLM engines behind a router
(tests/llm_reference.py, run_cluster_reference) on its own: a one-instance cluster is the engine,
golden cases worked out by hand, invariants on random traces with heterogeneous instances, and
the validation of its arguments."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from fractions import Fraction

import pytest

from llm_reference import (PREEMPTION_MODES, ROUTERS, ReferenceConfig, ReferenceResult,
                           run_cluster_reference, run_reference)
from test_llm_reference import check_invariants, pressured_config, random_trace


def assert_times(result, first, finish):
    # The golden cases below use costs that are binary fractions (1, 0.25, 0.125), so every time
    # is exact and an arrival can fall exactly on a boundary: compared with ==.
    assert result.first_token_time == first
    assert result.finish_time == finish


# dt = 1 + 0.25 * prefill tokens + 0.125 * decoding requests; memory and budgets large.
DYADIC = dict(iter_base=1.0, iter_per_prefill_token=0.25, iter_per_decode_seq=0.125,
              iter_per_kv_token=0.0, swap_per_token=0.0)


def same_instance_result(a: ReferenceResult, b: ReferenceResult) -> bool:
    return dataclasses.asdict(a) == dataclasses.asdict(b)


def all_picks(N, I, seed, d=2):
    rng = random.Random(seed)
    return [[rng.randrange(I) for _ in range(d)] for _ in range(N)]


# --------------------------------------------------------------------------------------------
# One instance is the engine
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preemption", PREEMPTION_MODES)
@pytest.mark.parametrize("router", ROUTERS)
def test_one_instance_is_run_reference(router, preemption):
    # run_reference delivers every request at the start; the cluster delivers each at its
    # arrival, after the boundaries before it. The results must be identical, logs included.
    for seed, variant in itertools.product(range(3), ("fcfs", "sprpt", "onebit-preemptive",
                                                      "linear", "sjf")):
        arrival, prompt, output, prediction = random_trace(seed)
        rng = random.Random(seed)
        draws = {}

        def multiplier(i, m):
            return draws.setdefault((i, m), math.exp(rng.gauss(0.0, 0.5)))

        for admission, cache in (("optimistic", False), ("optimistic", True),
                                 ("reserve-predicted", False)):
            cfg = pressured_config(variant, preemption, admission, prefix_cache=cache,
                                   aging=0.1 * (seed % 2), refine_every=seed % 3,
                                   refine_multiplier=multiplier)
            want = run_reference(arrival, prompt, output, prediction, cfg)
            N = len(arrival)
            for picks in ([[0]] * N, [[0, 0, 0]] * N, None):
                if router == "random" and picks is None:
                    continue
                got = run_cluster_reference(arrival, prompt, output, prediction, [cfg], router,
                                            picks)
                assert same_instance_result(got.instances[0], want)
                assert got.first_token_time == want.first_token_time
                assert got.finish_time == want.finish_time
                assert got.preemptions == want.preemptions
                assert got.instance == [0] * N
                for name in ("iterations", "total_preemptions", "recomputed_tokens",
                             "swapped_tokens", "prefix_hit_tokens", "peak_kv_tokens"):
                    assert getattr(got, name) == getattr(want, name), name


def test_one_instance_arrival_exactly_at_a_boundary():
    # As test_idle_jump_and_arrival_during_iteration of test_llm_reference.py, with D arriving
    # exactly at the end of C's iteration (10 + 1.25 = 11.25, exact): routed before the boundary
    # at 11.25, it enters there.
    cfg = ReferenceConfig(**DYADIC)
    args = ([0.0, 0.5, 10.0, 11.25], [1] * 4, [1] * 4, [1.0] * 4)
    want = run_reference(*args, cfg)
    assert_times(want, [1.25, 2.5, 11.25, 12.5], [1.25, 2.5, 11.25, 12.5])
    for router in ("round-robin", "least-outstanding", "least-kv", "least-predicted-work"):
        got = run_cluster_reference(*args, [cfg], router)
        assert same_instance_result(got.instances[0], want)


# --------------------------------------------------------------------------------------------
# Golden cases
# --------------------------------------------------------------------------------------------

def test_round_robin():
    # Two equal instances. A: 0, P = 2, O = 2; B: 0, P = 3, O = 1; C: 0.5, P = 1, O = 1.
    # Round-robin: A -> 0, B -> 1, C -> 2 mod 2 = 0.
    # Instance 0: t = 0 A prefill 2: dt = 1 + 0.5 = 1.5 -> 1.5 (A's first token). C arrived at
    #   0.5, during that iteration: it enters at 1.5 with A. A decodes, C prefills 1:
    #   dt = 1 + 0.25 + 0.125 = 1.375 -> 2.875: A finished, C's only token.
    # Instance 1: t = 0 B prefill 3: dt = 1.75 -> 1.75, finished.
    cfg = ReferenceConfig(**DYADIC)
    r = run_cluster_reference([0.0, 0.0, 0.5], [2, 3, 1], [2, 1, 1], [1.0, 1.0, 1.0],
                              [cfg, cfg], "round-robin")
    assert r.instance == [0, 1, 0]
    assert r.seen == [None, None, None]
    assert_times(r, [1.5, 1.75, 2.875], [2.875, 1.75, 2.875])
    assert [e["batch"] for e in r.instances[0].log] == [[0], [0, 2]]
    assert [e["batch"] for e in r.instances[1].log] == [[1]]
    # Per instance, the requests it did not serve are None.
    assert r.instances[0].finish_time == [2.875, None, 2.875]
    assert r.instances[1].finish_time == [None, 1.75, None]
    assert r.instances[1].preemptions == [None, 0, None]
    assert r.iterations == 3 and r.instances[0].iterations == 2


def test_least_outstanding_mid_iteration_and_at_boundaries():
    # Two equal instances, fcfs. The router sees each instance after the iteration it is in.
    # A: 0, P = 4, O = 2. Seen [0, 0]: tie, the first -> 0. Instance 0: t = 0 prefill 4:
    #   dt = 1 + 1 = 2 -> 2.0 (A's first token).
    # B: 0.5, P = 1, O = 3. Instance 0 is mid-iteration with A in the system: seen [1, 0] -> 1.
    #   Instance 1: t = 0.5 prefill 1: dt = 1.25 -> 1.75 (B's first token).
    # C: 1.0, P = 1, O = 1. Seen [1 (A), 1 (B)]: tie -> 0. C is pending there until 2.0.
    # D: 1.75, P = 2, O = 1, exactly at instance 1's boundary: routed before it. Seen
    #   [2 (A in the system + C pending), 1 (B)] -> 1, and D enters at that boundary, 1.75:
    #   B decodes, D prefills 2: dt = 1 + 0.5 + 0.125 = 1.625 -> 3.375, D finished (O = 1).
    # Instance 0 at 2.0: A decodes, C prefills 1: dt = 1 + 0.25 + 0.125 = 1.375 -> 3.375:
    #   A and C finished.
    # E: 3.375, P = 1, O = 1, exactly at both instances' boundaries (neither processed yet).
    #   Seen: instance 0 after its iteration to 3.375, where A and C finished and left: 0;
    #   instance 1: B (D left): 1 -> 0. E enters at 3.375 (instance 0 was empty):
    #   dt = 1.25 -> 4.625.
    # Instance 1 at 3.375: B decodes: dt = 1.125 -> 4.5, finished.
    cfg = ReferenceConfig(**DYADIC)
    r = run_cluster_reference([0.0, 0.5, 1.0, 1.75, 3.375], [4, 1, 1, 2, 1], [2, 3, 1, 1, 1],
                              [1.0] * 5, [cfg, cfg], "least-outstanding")
    assert r.seen == [[0, 0], [1, 0], [1, 1], [2, 1], [0, 1]]
    assert r.instance == [0, 1, 0, 1, 0]
    assert_times(r, [2.0, 1.75, 3.375, 3.375, 4.625], [3.375, 4.5, 3.375, 3.375, 4.625])
    assert [e["batch"] for e in r.instances[0].log] == [[0], [0, 2], [4]]
    assert [e["batch"] for e in r.instances[1].log] == [[1], [1, 3], [1]]
    assert [e["time"] for e in r.instances[1].log] == [1.75, 3.375, 4.5]
    assert r.iterations == 6


def test_least_kv_uses_each_instance_capacity():
    # Instance 0: kv_capacity 20, blocks of 2 (C = 10 blocks); instance 1: kv_capacity 8, blocks
    # of 1 (C = 8 blocks). kv = (blocks of the resident requests) / C, exactly.
    # A: 0, P = 6, O = 3. Seen [0, 0] -> 0. Instance 0: t = 0 prefill 6: dt = 2.5 -> 2.5, n = 6.
    # B: 1.0, P = 3, O = 2. Seen [3/10 (A: blk(6) = 3 blocks, after its iteration), 0] -> 1.
    #   Instance 1: t = 1.0 prefill 3: dt = 1.75 -> 2.75 (n = 3); decode: 1.125 -> 3.875, done.
    # C: 2.0, P = 2, O = 1. Seen [3/10, 3/8 (B: 3 blocks of 8)] -> 0 (by tokens, 6 > 3, it
    #   would have been 1). Instance 0 at 2.5: A decodes, C prefills 2:
    #   dt = 1 + 0.5 + 0.125 = 1.625 -> 4.125: C finished, A has n = 7.
    # D: 3.0, P = 1, O = 1. Seen: instance 0 after its iteration to 4.125: A, blk(7) = 4 blocks:
    #   4/10 = 2/5 (C left); instance 1 after its iteration to 3.875, where B finished: 0 -> 1.
    #   D arrived during the iteration that emptied instance 1: it starts at its end, 3.875:
    #   dt = 1.25 -> 5.125.
    # Instance 0 at 4.125: A decodes: 1.125 -> 5.25, finished.
    big = ReferenceConfig(kv_capacity=20, block_size=2, **DYADIC)
    small = ReferenceConfig(kv_capacity=8, block_size=1, **DYADIC)
    r = run_cluster_reference([0.0, 1.0, 2.0, 3.0], [6, 3, 2, 1], [3, 2, 1, 1], [1.0] * 4,
                              [big, small], "least-kv")
    assert r.seen == [[0, 0], [Fraction(3, 10), 0], [Fraction(3, 10), Fraction(3, 8)],
                      [Fraction(2, 5), 0]]
    assert all(isinstance(v, Fraction) for seen in r.seen for v in seen)
    assert r.instance == [0, 1, 0, 1]
    assert_times(r, [2.5, 2.75, 4.125, 5.125], [5.25, 3.875, 4.125, 5.125])
    assert [e["kv_blocks"] for e in r.instances[0].log] == [3, 4, 0]
    assert [e["kv_blocks"] for e in r.instances[1].log] == [3, 0, 0]


def test_least_predicted_work():
    # Two equal instances. work = sum over the system of max(yhat - g, 1) + sum over the pending
    # requests of max(yhat, 1). All P = 1.
    # A: 0, O = 4, yhat 10. Seen [0, 0] -> 0. Instance 0 runs A alone: prefill 1.25 -> 1.25
    #   (g = 1), decodes of 1.125: 2.375 (g = 2), 3.5 (g = 3), 4.625 (finished).
    # B: 0, O = 1, yhat 0.5. Seen [10 (A pending: max(10, 1)), 0] -> 1. Instance 1: t = 0
    #   prefill: 1.25 -> 1.25, finished.
    # C: 0.5, O = 2, yhat 1.5. Seen [9 (A after its first iteration: g = 1, 10 - 1), 0 (B
    #   finishes in the iteration in progress)] -> 1. Enters at 1.25: prefill -> 2.5 (g = 1).
    # D: 1.5, O = 1, yhat 0.25. Seen [8 (A: g = 2 after the iteration to 2.375),
    #   1 (C: g = 1 after the iteration to 2.5: max(1.5 - 1, 1) = 1)] -> 1, pending until 2.5.
    # E: 2.0, O = 1, yhat 1.5. Seen [8, 1 (C) + 1 (D pending: max(0.25, 1))] = [8, 2] -> 1
    #   (counting requests, the router would have seen [1, 2]).
    # Instance 1 at 2.5: C decodes, D and E prefill 1 each: dt = 1 + 0.5 + 0.125 = 1.625
    #   -> 4.125: C, D, E finished.
    args = ([0.0, 0.0, 0.5, 1.5, 2.0], [1] * 5, [4, 1, 2, 1, 1], [10.0, 0.5, 1.5, 0.25, 1.5])
    cfg = ReferenceConfig(**DYADIC)
    r = run_cluster_reference(*args, [cfg, cfg], "least-predicted-work")
    assert r.seen == [[0.0, 0.0], [10.0, 0.0], [9.0, 0.0], [8.0, 1.0], [8.0, 2.0]]
    assert all(isinstance(v, float) for seen in r.seen for v in seen)
    assert r.instance == [0, 1, 1, 1, 1]
    assert_times(r, [1.25, 1.25, 2.5, 4.125, 4.125], [4.625, 1.25, 4.125, 4.125, 4.125])
    assert [e["batch"] for e in r.instances[1].log] == [[1], [2], [2, 3, 4]]


def test_least_predicted_work_sees_refined_predictions():
    # Three equal instances, sprpt; with refinement every token and M = 1, the refined
    # prediction is yhat = g + (O - g) * 1 = O. All P = 1.
    # A (index 0): 0, O = 4, yhat 1, picks [0] -> 0. C (index 1): 0, O = 3, yhat 3.5, picks [2]
    #   -> 2. Each runs alone: first iteration 0 -> 1.25 (g = 1).
    # B (index 2): 0.5, O = 1, yhat 2, picks [0, 2]. Both first iterations are in progress; the
    #   router sees g = 1 after them (and instance 1 empty: 0, not a candidate).
    #   Refined: A yhat = 4, work 4 - 1 = 3; C yhat = 3, work 3 - 1 = 2: [3, 0, 2] -> 2.
    #   Not refined: A max(1 - 1, 1) = 1; C 3.5 - 1 = 2.5: [1, 0, 2.5] -> 0.
    args = ([0.0, 0.0, 0.5], [1, 1, 1], [4, 3, 1], [1.0, 3.5, 2.0])
    picks = [[0], [2], [0, 2]]
    cfg = ReferenceConfig(policy="sprpt", **DYADIC)
    refined = dataclasses.replace(cfg, refine_every=1, refine_multiplier=lambda i, m: 1.0)
    r = run_cluster_reference(*args, [refined] * 3, "least-predicted-work", picks)
    assert r.seen == [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [3.0, 0.0, 2.0]]
    assert r.instance == [0, 2, 2]
    r = run_cluster_reference(*args, [cfg] * 3, "least-predicted-work", picks)
    assert r.seen == [[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 2.5]]
    assert r.instance == [0, 2, 0]


def test_power_of_d_with_picks():
    # Three equal instances, least-outstanding over the given candidates, in order. All P = 1,
    # O = 1 (one prefill iteration each: 1.25 alone, 1.5 for two together).
    # R0: 0, picks [2, 1]: seen [0, 0, 0], tie between 2 and 1 -> the first candidate, 2.
    # R1: 0, picks [2, 0]: seen [0, 0, 1] -> 0.
    # R2: 0, picks [1, 1] (a duplicate): seen [1, 0, 1] -> 1.
    # R3: 0, picks [0, 2]: seen [1, 1, 1], tie -> 0.
    # R4: 0.5, picks [1, 2]: every instance is in its first iteration, after which all its
    #   requests have finished: seen [0, 0, 0] -> 1 (instance 0 is equal but not a candidate).
    # Instance 0: R1 and R3 together: 1.5. Instance 1: R2 1.25, then R4 (pending since 0.5)
    #   1.25 -> 2.5. Instance 2: R0 1.25.
    args = ([0.0, 0.0, 0.0, 0.0, 0.5], [1] * 5, [1] * 5, [1.0] * 5)
    cfg = ReferenceConfig(**DYADIC)
    picks = [[2, 1], [2, 0], [1, 1], [0, 2], [1, 2]]
    r = run_cluster_reference(*args, [cfg] * 3, "least-outstanding", picks)
    assert r.seen == [[0, 0, 0], [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 0, 0]]
    assert r.instance == [2, 0, 1, 0, 1]
    assert_times(r, [1.25, 1.5, 1.25, 1.5, 2.5], [1.25, 1.5, 1.25, 1.5, 2.5])
    # Without picks every instance is a candidate, in order 0, 1, 2.
    r = run_cluster_reference(*args, [cfg] * 3, "least-outstanding")
    assert r.seen == [[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 0, 0]]
    assert r.instance == [0, 1, 2, 0, 0]
    # random takes picks[r][0]; round-robin ignores picks.
    assert run_cluster_reference(*args, [cfg] * 3, "random", picks).instance == [2, 2, 1, 0, 1]
    assert run_cluster_reference(*args, [cfg] * 3, "round-robin",
                                 picks).instance == [0, 1, 2, 0, 1]


# --------------------------------------------------------------------------------------------
# Invariants on random traces, heterogeneous instances
# --------------------------------------------------------------------------------------------

def heterogeneous_configs(I, variant, preemption, admission, **kw):
    limits = [dict(kv_capacity=24, block_size=2, max_seqs=5, max_batched_tokens=16,
                   host_capacity=10, iter_base=0.01),
              dict(kv_capacity=21, block_size=1, max_seqs=3, max_batched_tokens=12,
                   host_capacity=6, iter_base=0.02, iter_per_prefill_token=3e-4),
              dict(kv_capacity=30, block_size=3, max_seqs=8, max_batched_tokens=20,
                   host_capacity=9, iter_base=0.005, iter_per_decode_seq=2e-3, max_output=9)]
    return [pressured_config(variant, preemption, admission, **{**limits[i], **kw})
            for i in range(I)]


def sub_result(res: ReferenceResult, served: list[int]) -> ReferenceResult:
    """An instance's result restricted to the requests it served, renumbered 0..len(served)-1."""
    local = {g: k for k, g in enumerate(served)}
    log = []
    for e in res.log:
        e = dict(e)
        for key in ("batch", "preempted", "swapped_out", "recomputed", "swapped_in",
                    "finished"):
            e[key] = [local[g] for g in e[key]]
        log.append(e)
    return dataclasses.replace(res, first_token_time=[res.first_token_time[g] for g in served],
                               finish_time=[res.finish_time[g] for g in served],
                               preemptions=[res.preemptions[g] for g in served], log=log)


def check_cluster(arrival, prompt, output, prediction, configs, router, picks, r, refine=None):
    N = len(arrival)
    I = len(configs)
    assert len(r.instance) == N and all(0 <= k < I for k in r.instance)
    if router == "random":
        assert r.instance == [p[0] for p in picks]
    if router == "round-robin":
        assert r.instance == [i % I for i in range(N)]
    if router.startswith("least"):
        for i in range(N):
            candidates = picks[i] if picks is not None else range(I)
            best = min(r.seen[i][k] for k in candidates)
            assert r.instance[i] == next(k for k in candidates if r.seen[i][k] == best)
    finished_on = {}
    for k, (cfg, res) in enumerate(zip(configs, r.instances)):
        served = [i for i in range(N) if r.instance[i] == k]
        C = cfg.kv_capacity // cfg.block_size
        for e in res.log:
            assert set(e["batch"]) <= set(served)
            assert e["kv_blocks"] <= C and e["kv_tokens"] <= cfg.kv_capacity
            assert e["kv_tokens_during"] <= cfg.kv_capacity
            for i in e["finished"]:
                assert i not in finished_on  # finishes exactly once
                finished_on[i] = k
        for i in range(N):
            if i in served:
                assert res.finish_time[i] == r.finish_time[i]
                assert res.first_token_time[i] == r.first_token_time[i]
                assert res.preemptions[i] == r.preemptions[i]
                assert r.finish_time[i] >= r.first_token_time[i] >= arrival[i]
            else:
                assert (res.finish_time[i], res.first_token_time[i],
                        res.preemptions[i]) == (None, None, None)
        # The instance on its own requests satisfies every invariant of one engine ...
        sub = sub_result(res, served)
        trace = [[x[i] for i in served] for x in (arrival, prompt, output, prediction)]
        if not served:
            assert res.log == []
            continue
        check_invariants(*trace[:3], cfg, sub)
        # ... and is exactly the engine run on them alone: the instances interact only through
        # the router. (Renumbering keeps the order of the indices, so ranks do not change; the
        # refinement multiplier is called with the global index.)
        sub_cfg = cfg
        if refine is not None:
            sub_cfg = dataclasses.replace(cfg, refine_multiplier=lambda j, m: refine(served[j], m))
        assert same_instance_result(run_reference(*trace, sub_cfg), sub)
    assert finished_on == {i: r.instance[i] for i in range(N)}
    assert r.iterations == sum(res.iterations for res in r.instances)
    for name in ("total_preemptions", "recomputed_tokens", "swapped_tokens",
                 "prefix_hit_tokens"):
        assert getattr(r, name) == sum(getattr(res, name) for res in r.instances)
    assert r.peak_kv_tokens == max(res.peak_kv_tokens for res in r.instances)


@pytest.mark.parametrize("router", ROUTERS)
def test_invariants_random(router):
    preempted = 0
    used = set()
    for seed, variant, preemption in itertools.product(range(3), ("fcfs", "sprpt", "linear"),
                                                       PREEMPTION_MODES):
        arrival, prompt, output, prediction = random_trace(seed, N=18, rate=6.0)
        N = len(arrival)
        I = 2 + seed % 2
        rng = random.Random(seed)
        draws = {}

        def multiplier(i, m):
            return draws.setdefault((i, m), math.exp(rng.gauss(0.0, 0.5)))

        configs = heterogeneous_configs(I, variant, preemption, "optimistic", aging=0.05,
                                        refine_every=2, refine_multiplier=multiplier,
                                        prefix_cache=seed == 1)
        for picks in (all_picks(N, I, seed, d=1 + seed % 2), None):
            if router == "random" and picks is None:
                continue
            r = run_cluster_reference(arrival, prompt, output, prediction, configs, router,
                                      picks)
            check_cluster(arrival, prompt, output, prediction, configs, router, picks, r,
                          refine=multiplier)
            preempted += r.total_preemptions
            used |= set(r.instance)
    assert preempted > 0  # the instances were under memory pressure
    assert used == {0, 1, 2}


def test_everything_to_one_instance_is_that_engine():
    # random with every pick 0: instance 0 is run_reference on the whole trace; the others idle.
    arrival, prompt, output, prediction = random_trace(5)
    N = len(arrival)
    configs = heterogeneous_configs(3, "sprpt", "swap", "optimistic")
    r = run_cluster_reference(arrival, prompt, output, prediction, configs, "random",
                              [[0, 2]] * N)
    assert same_instance_result(r.instances[0],
                                run_reference(arrival, prompt, output, prediction, configs[0]))
    assert r.instances[1].iterations == 0 and r.instances[1].finish_time == [None] * N
    assert r.instances[2].log == [] and r.instances[2].peak_kv_tokens == 0


def test_empty_trace():
    cfg = ReferenceConfig()
    for router in ROUTERS:
        r = run_cluster_reference([], [], [], [], [cfg, cfg], router, [])
        assert r.finish_time == [] and r.iterations == 0 and r.peak_kv_tokens == 0


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

def test_validation():
    args = ([0.0, 1.0], [2, 2], [2, 2], [1.0, 1.0])
    cfg = ReferenceConfig(**DYADIC)
    # Limits and costs may differ ...
    run_cluster_reference(*args, [cfg, dataclasses.replace(cfg, kv_capacity=8, max_seqs=1,
                                                           iter_base=0.5)], "round-robin")
    # ... nothing else.
    for change in (dict(policy="sprpt"), dict(preemption="swap"), dict(aging=0.1),
                   dict(admission="reserve-max"), dict(prefix_cache=True), dict(c=0.7),
                   dict(w_kv=1.0), dict(refine_every=1, refine_multiplier=lambda i, m: 1.0)):
        with pytest.raises(ValueError):
            run_cluster_reference(*args, [cfg, dataclasses.replace(cfg, **change)],
                                  "round-robin")
    with pytest.raises(ValueError):
        run_cluster_reference(*args, [cfg, cfg], "least-loaded")
    with pytest.raises(ValueError):
        run_cluster_reference(*args, [cfg, cfg], "random")  # needs picks
    with pytest.raises(ValueError):
        run_cluster_reference(*args, [cfg, cfg], "random", [[0]])  # one list per request
    with pytest.raises(ValueError):
        run_cluster_reference(*args, [cfg, cfg], "least-kv", [[0], [2]])  # no instance 2
    with pytest.raises(ValueError):
        run_cluster_reference(*args, [cfg, cfg], "least-kv", [[0], []])  # no candidate
    with pytest.raises(ValueError):
        run_cluster_reference(*args, [], "round-robin")
    # Every request must fit alone on every instance: P + O - 1 = 3 tokens > 2.
    with pytest.raises(ValueError):
        run_cluster_reference(*args, [cfg, dataclasses.replace(cfg, kv_capacity=2)],
                              "round-robin")
    # The per-engine checks still apply.
    with pytest.raises(ValueError):
        run_cluster_reference([1.0, 0.0], [2, 2], [2, 2], [1.0, 1.0], [cfg], "round-robin")
    with pytest.raises(ValueError):
        run_cluster_reference(*args, [dataclasses.replace(cfg, policy="nope")], "round-robin")
