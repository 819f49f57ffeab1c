"""Tests of the plain-Python reference of prefill/decode disaggregation (tests/llm_reference.py,
run_disaggregated_reference, choices 20 to 26) on its own: golden cases worked out by hand, big
pools with a free transfer are the colocated cluster, the interleaved event loop equals running
the prefill pool first, invariants on random traces with heterogeneous instances, and the
validation of its arguments."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random

import pytest

import llm_reference as ref
from llm_reference import (PREEMPTION_MODES, ROUTERS, ReferenceConfig,
                           run_cluster_reference, run_disaggregated_reference)
from test_llm_cluster_reference import all_picks, heterogeneous_configs, same_instance_result
from test_llm_reference import random_trace

# dt = 1 + 0.25 * prefill tokens + 0.125 * decoding requests; memory and budgets large. Every
# time below is a binary fraction, exact: compared with ==.
DYADIC = dict(iter_base=1.0, iter_per_prefill_token=0.25, iter_per_decode_seq=0.125,
              iter_per_kv_token=0.0, swap_per_token=0.0)

TOTALS = ("iterations", "total_preemptions", "recomputed_tokens", "swapped_tokens",
          "prefix_hit_tokens")


# --------------------------------------------------------------------------------------------
# Golden cases
# --------------------------------------------------------------------------------------------

def test_one_prefill_one_decode_instance():
    # One prefill and one decode instance, equal, fcfs; transfer 0.25 s per prompt token.
    # R0: 0, P = 2, O = 3, yhat 3. R1: 0, P = 2, O = 2, yhat 4. R2: 0.5, P = 1, O = 1, yhat 1.
    # Prefill pool (least-predicted-work, one instance): R0 sees [0]; R1 sees [max(3 - 0, 1)]
    #   = [3] (R0 pending, g = 0).
    # Prefill instance: t = 0 R0 and R1 prefill 2 each: dt = 1 + 0.25 * 4 = 2 -> 2.0: both first
    #   tokens; both leave (g = 1 < O) with n = 2, and reach the decode pool at
    #   2.0 + 2 * 0.25 = 2.5, the same time: index order there.
    # R2 arrived at 0.5, during that iteration; the router sees the instance after it: R0 and
    #   R1 have left: [0]. R2 enters at 2.0: prefill 1: dt = 1.25 -> 3.25, its first token and,
    #   with O = 1, its finish: it never goes to the decode pool.
    # Decode pool (least-predicted-work): R0 (k = 0) at 2.5 sees [0]; R1 (k = 1) at 2.5 sees R0
    #   pending with g = 1: [max(3 - 1, 1)] = [2].
    # Decode instance: t = 2.5 R0 and R1 landed, n = 2, q = 1 each, both decoding, no swap:
    #   dt = 1 + 0.125 * 2 = 1.25 -> 3.75: R0 g = 2; R1 g = 2 = O, finished. t = 3.75 R0 decodes:
    #   1.125 -> 4.875, g = 3 = O, finished.
    cfg = ReferenceConfig(**DYADIC)
    r = run_disaggregated_reference([0.0, 0.0, 0.5], [2, 2, 1], [3, 2, 1], [3.0, 4.0, 1.0],
                                    [cfg], [cfg], "least-predicted-work",
                                    "least-predicted-work", 0.25)
    assert r.first_token_time == [2.0, 2.0, 3.25]
    assert r.decode_arrival == [2.5, 2.5, None]
    assert r.finish_time == [4.875, 3.75, 3.25]
    assert r.prefill_instance == [0, 0, 0] and r.decode_instance == [0, 0, None]
    assert r.prefill_seen == [[0.0], [3.0], [0.0]]
    assert r.decode_seen == [[0.0], [2.0], None]
    assert r.decode_order == [0, 1]
    assert r.preemptions == [0, 0, 0]
    pre, dec = r.prefill_instances[0], r.decode_instances[0]
    # The prefill instance: the leavers count as finished there, at their first-token time.
    assert [e["batch"] for e in pre.log] == [[0, 1], [2]]
    assert [e["finished"] for e in pre.log] == [[0, 1], [2]]
    assert [e["kv_tokens"] for e in pre.log] == [0, 0]
    assert [e["kv_tokens_during"] for e in pre.log] == [4, 1]
    assert pre.finish_time == pre.first_token_time == [2.0, 2.0, 3.25]
    # The decode instance: landed requests decode at once (n + q = 3 attended each), placed
    # without swapping; it records no first-token time.
    assert [e["batch"] for e in dec.log] == [[0, 1], [0]]
    assert [e["decode_seqs"] for e in dec.log] == [2, 1]
    assert [e["prefill_tokens"] for e in dec.log] == [0, 0]
    assert [e["kv_attended"] for e in dec.log] == [6, 4]
    assert [e["kv_tokens"] for e in dec.log] == [3, 0]
    assert [e["swapped_in"] for e in dec.log] == [[], []] and dec.swapped_tokens == 0
    assert dec.first_token_time == [None, None, None]
    assert dec.finish_time == [4.875, 3.75, None]
    assert r.iterations == 4 and r.peak_kv_tokens == 6 and r.swapped_tokens == 0


def test_landed_request_waits_until_its_blocks_fit():
    # Prefill instance large; decode instance kv_capacity 6 (blocks of 1); fcfs; transfer 0.25.
    # R0: 0, P = 3, O = 4 (peak 6: it fits alone). R1: 1.0, P = 2, O = 2.
    # Prefill: t = 0 R0 prefill 3: dt = 1.75 -> 1.75, leaves; at the decode pool at
    #   1.75 + 0.75 = 2.5. R1 enters at 1.75: prefill 2: dt = 1.5 -> 3.25; at 3.25 + 0.5 = 3.75.
    # Decode: t = 2.5 R0 placed (n 3 -> 4): 1.125 -> 3.625, g = 2. t = 3.625: n 4 -> 5:
    #   -> 4.75, g = 3. R1 arrived at 3.75, during that iteration.
    # t = 4.75: fcfs, R0 (resident, locked) first: n = 5, q = 1: D = 1, H = 5: 6 <= 6. R1, landed,
    #   n = 2, q = 1: D = 1 + blk(3) = 4, H = 5: 9 > 6: R1 waits, not placed (and being not
    #   resident, it cannot be preempted). R0: -> 5.875, g = 4 = O, finished.
    # t = 5.875: R1 placed, decodes: 1.125 -> 7.0, finished.
    big = ReferenceConfig(**DYADIC)
    small = ReferenceConfig(kv_capacity=6, **DYADIC)
    r = run_disaggregated_reference([0.0, 1.0], [3, 2], [4, 2], [4.0, 2.0], [big], [small],
                                    "round-robin", "round-robin", 0.25)
    assert r.first_token_time == [1.75, 3.25]
    assert r.decode_arrival == [2.5, 3.75]
    assert r.finish_time == [5.875, 7.0]
    dec = r.decode_instances[0]
    assert [e["batch"] for e in dec.log] == [[0], [0], [0], [1]]
    assert [e["time"] for e in dec.log] == [3.625, 4.75, 5.875, 7.0]
    assert [e["kv_tokens_during"] for e in dec.log] == [4, 5, 6, 3]
    assert all(e["preempted"] == [] for e in dec.log) and r.total_preemptions == 0


def test_landed_request_reserves_like_any_waiting_request():
    # reserve-max, max_output 4; decode instance kv_capacity 8; fcfs; transfer 0.25.
    # R0: 0, P = 2, O = 4; R1: 0, P = 2, O = 2. Prefill (large): both at 0, prefill 4:
    #   dt = 2 -> 2.0, both leave, at the decode pool at 2.0 + 0.5 = 2.5.
    # Decode at 2.5: R0 (landed) at position 1: D = blk(3) = 3, R = min(blk(2 + 4 - 1), 8) = 5.
    #   R1 (landed) at position 2: D = 6 <= 8 and its sequence fits, but R = 5 + 5 = 10 > 8: it
    #   waits, as any non-resident request. R0 alone: -> 3.625 (g = 2); at 3.625 R1 again
    #   reserves 10 > 8; -> 4.75 -> 5.875 (g = 4, finished). R1: 5.875 -> 7.0.
    # Optimistic: both at 2.5: dt = 1.25 -> 3.75, R1 finished; R0 -> 4.875 -> 6.0.
    big = ReferenceConfig(admission="reserve-max", max_output=4, **DYADIC)
    small = dataclasses.replace(big, kv_capacity=8)
    args = ([0.0, 0.0], [2, 2], [4, 2], [4.0, 2.0])
    r = run_disaggregated_reference(*args, [big], [small], "round-robin", "round-robin", 0.25)
    assert r.decode_arrival == [2.5, 2.5]
    assert [e["batch"] for e in r.decode_instances[0].log] == [[0], [0], [0], [1]]
    assert r.finish_time == [5.875, 7.0]
    big, small = (dataclasses.replace(c, admission="optimistic") for c in (big, small))
    r = run_disaggregated_reference(*args, [big], [small], "round-robin", "round-robin", 0.25)
    assert [e["batch"] for e in r.decode_instances[0].log] == [[0, 1], [0], [0]]
    assert r.finish_time == [6.0, 3.75]


@pytest.mark.parametrize("preemption", PREEMPTION_MODES)
def test_landed_request_outranks_a_resident_one(preemption):
    # As above, sprpt, swap cost 1/16 s per token, decode host_capacity 6, yhat R0 5, R1 2.
    # Prefill as above: R0 at the decode pool at 2.5, R1 at 3.75. Decode as above up to 4.75.
    # t = 4.75: sprpt ranks R1 (yhat - g = 2 - 1 = 1) before R0 (5 - 3 = 2). R1, landed, at
    #   position 1: D = blk(2 + 1) = 3 <= 6, placed. R0: D = 4, H = 5: 9 > 6; it is resident
    #   with a token to process: it cannot grow and is preempted.
    # swap: R0's 5 blocks fit the host: 5 tokens out. R1 is placed, not swapped in: swap tokens 5
    #   (not 5 + 2). dt = 1 + 0.125 + 5 / 16 = 1.4375 -> 6.1875: R1 finished.
    #   t = 6.1875: R0 swapped in (5 tokens) and decodes: 1.4375 -> 7.625, finished.
    # recompute: R0 drops its n = 5; dt = 1.125 -> 5.875: R1 finished. t = 5.875: R0 recomputes
    #   P + g = 6 tokens at this instance, a prefill request: dt = 1 + 6 / 4 = 2.5 -> 8.375,
    #   g = 4, finished (its first-token time stays the prefill instance's, 1.75).
    costs = dict(DYADIC, swap_per_token=0.0625)
    big = ReferenceConfig(policy="sprpt", preemption=preemption, host_capacity=6, **costs)
    small = dataclasses.replace(big, kv_capacity=6)
    r = run_disaggregated_reference([0.0, 1.0], [3, 2], [4, 2], [5.0, 2.0], [big], [small],
                                    "round-robin", "round-robin", 0.25)
    dec = r.decode_instances[0]
    assert r.first_token_time == [1.75, 3.25] and r.decode_arrival == [2.5, 3.75]
    assert [e["batch"] for e in dec.log] == [[0], [0], [1], [0]]
    assert [e["preempted"] for e in dec.log] == [[], [], [0], []]
    assert dec.log[2]["swapped_in"] == [] and dec.log[2]["decode_seqs"] == 1
    assert dec.log[2]["kv_attended"] == 3
    assert r.preemptions == [1, 0] and r.total_preemptions == 1
    if preemption == "swap":
        assert r.finish_time == [7.625, 6.1875]
        assert [e["swap_tokens"] for e in dec.log] == [0, 0, 5, 5]
        assert dec.log[3]["swapped_in"] == [0]
        assert r.swapped_tokens == 10 and r.recomputed_tokens == 0
    else:
        assert r.finish_time == [8.375, 5.875]
        assert dec.log[3]["prefill_tokens"] == 6 and dec.log[3]["decode_seqs"] == 0
        assert r.swapped_tokens == 0 and r.recomputed_tokens == 5
    assert dec.first_token_time == [None, None]


def test_two_decode_instances_least_outstanding():
    # One prefill instance, two equal decode instances, least-outstanding on both pools, fcfs,
    # transfer 0.25. R0: 0, P = 1, O = 4. R1: 0, P = 1, O = 2. R2: 0.25, P = 2, O = 1.
    # R3: 0.5, P = 2, O = 2.
    # Prefill: t = 0 R0 and R1: dt = 1 + 0.5 = 1.5 -> 1.5, both leave, at the decode pool at
    #   1.5 + 0.25 = 1.75. R2 (seen [0]: R0, R1 left by the end of the iteration in progress)
    #   and R3 (seen [1]: R2 pending) enter at 1.5: prefill 4: dt = 2 -> 3.5. R2 finishes
    #   (O = 1); R3 leaves, at the decode pool at 3.5 + 0.5 = 4.0.
    # Decode, every instance a candidate: R0 (k = 0) at 1.75: [0, 0] -> 0. R1 (k = 1): [1 (R0
    #   pending), 0] -> 1. Instance 0: R0 1.75 -> 2.875 (g = 2) -> 4.0 (g = 3) -> 5.125 (g = 4,
    #   finished). Instance 1: R1 1.75 -> 2.875, finished. R3 (k = 2) at 4.0: instance 0 has
    #   processed its boundaries before 4.0 and is seen after its iteration to 4.0, R0 in the
    #   system: [1, 0] -> 1: 4.0 -> 5.125, finished.
    cfg = ReferenceConfig(**DYADIC)
    args = ([0.0, 0.0, 0.25, 0.5], [1, 1, 2, 2], [4, 2, 1, 2], [1.0] * 4)
    r = run_disaggregated_reference(*args, [cfg], [cfg, cfg], "least-outstanding",
                                    "least-outstanding", 0.25)
    assert r.prefill_seen == [[0], [1], [0], [1]]
    assert r.first_token_time == [1.5, 1.5, 3.5, 3.5]
    assert r.decode_arrival == [1.75, 1.75, None, 4.0]
    assert r.decode_order == [0, 1, 3]
    assert r.decode_seen == [[0, 0], [1, 0], None, [1, 0]]
    assert r.decode_instance == [0, 1, None, 1]
    assert r.finish_time == [5.125, 2.875, 3.5, 5.125]
    # With decode_picks, indexed by k (the order of arrival at the decode pool), not by request:
    #   k = 0 (R0) [1]: -> 1, seen [0, 0]. k = 1 (R1) [1, 0]: seen [0, 1 (R0 pending)] -> 0.
    #   k = 2 (R3) [1]: seen [0 (R1 finished at 2.875), 1] -> 1, exactly at instance 1's
    #   boundary 4.0: routed first, R3 enters there with R0: both decode:
    #   dt = 1 + 0.25 = 1.25 -> 5.25, both finished. Instance 0: R1 1.75 -> 2.875.
    # A list of length N works too: only its first K = 3 entries are used (R2 never gets one).
    for decode_picks in ([[1], [1, 0], [1]], [[1], [1, 0], [1], [0]]):
        r = run_disaggregated_reference(*args, [cfg], [cfg, cfg], "least-outstanding",
                                        "least-outstanding", 0.25, decode_picks=decode_picks)
        assert r.decode_seen == [[0, 0], [0, 1], None, [0, 1]]
        assert r.decode_instance == [1, 0, None, 1]
        assert r.finish_time == [5.25, 2.875, 3.5, 5.25]
        assert [e["batch"] for e in r.decode_instances[1].log] == [[0], [0], [0, 3]]
        assert [e["time"] for e in r.decode_instances[1].log] == [2.875, 4.0, 5.25]
    # round-robin at the decode pool goes by k: k mod 2 = 0, 1, 0 for R0, R1, R3.
    r = run_disaggregated_reference(*args, [cfg], [cfg, cfg], "round-robin", "round-robin",
                                    0.25)
    assert r.decode_instance == [0, 1, None, 0]
    assert r.finish_time == [5.25, 2.875, 3.5, 5.25]


def test_rank_age_at_the_decode_pool():
    # sprpt with aging 1: primary = yhat - g - age, age counted at the decode instance from the
    # arrival at the decode pool. Three prefill instances (round-robin), one decode instance
    # with max_seqs 1; transfer free.
    # A (0): 0, P = 8, O = 2, yhat 10.5: prefill 0, dt = 1 + 2 = 3 -> 3.0, at the decode pool 3.0.
    # C (1): 0, P = 1, O = 4, yhat 1: prefill 1, 1.25 -> 1.25, at the decode pool 1.25.
    # B (2): 1.0, P = 1, O = 2, yhat 10: prefill 2, 1.0 -> 2.25, at the decode pool 2.25.
    # Decode: C alone at 1.25 -> 2.375 (g = 2); C ranks first at 2.375 (1 - 2 - 1.125 against
    #   B's 10 - 1 - 0.125) and at 3.5: -> 3.5 -> 4.625, finished. At 4.625 A and B wait:
    #   A: 10.5 - 1 - (4.625 - 3.0) = 7.875; B: 10 - 1 - (4.625 - 2.25) = 6.625: B first, -> 5.75;
    #   then A -> 6.875. (Aged from their first arrivals, A: 10.5 - 1 - 4.625 = 4.875 and
    #   B: 10 - 1 - 3.625 = 5.375 would put A first.)
    cfg = ReferenceConfig(policy="sprpt", aging=1.0, **DYADIC)
    r = run_disaggregated_reference([0.0, 0.0, 1.0], [8, 1, 1], [2, 4, 2], [10.5, 1.0, 10.0],
                                    [cfg] * 3, [dataclasses.replace(cfg, max_seqs=1)],
                                    "round-robin", "round-robin", 0.0)
    assert r.decode_arrival == [3.0, 1.25, 2.25]
    assert [e["batch"] for e in r.decode_instances[0].log] == [[1], [1], [1], [2], [0]]
    assert r.finish_time == [6.875, 4.625, 5.75]


def test_refined_prediction_reaches_the_decode_pool():
    # Refinement every token, M = 1: at g = 1 yhat becomes 1 + (O - 1) * 1 = O, before the request
    # leaves its prefill instance (choice 21). R0: P = 1, O = 3, yhat 10; R1: P = 1, O = 2,
    # yhat 10; both at 0: prefill 2: dt = 1.5 -> 1.5, both leave, at the decode pool at 1.75.
    # R1 sees R0 pending with g = 1: max(3 - 1, 1) = 2 (not refined: 10 - 1 = 9).
    cfg = ReferenceConfig(policy="sprpt", **DYADIC)
    refined = dataclasses.replace(cfg, refine_every=1, refine_multiplier=lambda i, m: 1.0)
    args = ([0.0, 0.0], [1, 1], [3, 2], [10.0, 10.0])
    r = run_disaggregated_reference(*args, [refined], [refined], "round-robin",
                                    "least-predicted-work", 0.25)
    assert r.decode_seen == [[0.0], [2.0]]
    r = run_disaggregated_reference(*args, [cfg], [cfg], "round-robin", "least-predicted-work",
                                    0.25)
    assert r.decode_seen == [[0.0], [9.0]]


def test_every_request_done_at_prefill():
    # With O == 1 everywhere nothing reaches the decode pool: the prefill pool is the cluster.
    arrival, prompt, _, prediction = random_trace(3)
    N = len(arrival)
    output = [1] * N
    configs = heterogeneous_configs(2, "sprpt", "swap", "optimistic")
    r = run_disaggregated_reference(arrival, prompt, output, prediction, configs, configs,
                                    "least-kv", "random", 0.5, decode_picks=[])
    c = run_cluster_reference(arrival, prompt, output, prediction, configs, "least-kv")
    assert r.first_token_time == r.finish_time == c.finish_time
    assert r.prefill_instance == c.instance and r.prefill_seen == c.seen
    assert r.decode_order == [] and r.decode_instance == [None] * N
    assert all(res.iterations == 0 for res in r.decode_instances)
    for a, b in zip(r.prefill_instances, c.instances):
        assert same_instance_result(a, b)


def test_empty_trace():
    cfg = ReferenceConfig()
    for router in ROUTERS:
        r = run_disaggregated_reference([], [], [], [], [cfg], [cfg, cfg], router, router, 1.0,
                                        [], [])
        assert r.finish_time == [] and r.iterations == 0 and r.peak_kv_tokens == 0


# --------------------------------------------------------------------------------------------
# Pools big enough, zero transfer cost: the colocated cluster
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preemption", PREEMPTION_MODES)
def test_big_pools_and_free_transfer_are_colocated(preemption):
    # N prefill and N decode instances, round-robin on both, transfer 0: every request is alone
    # at its prefill instance and alone at its decode instance, reaching it when its first
    # token is produced; the decode instance's first iteration is the colocated one's second
    # (n = P, q = 1, decoding, P + 1 attended). Colocated: run_cluster_reference with N
    # instances, round-robin, each request alone. Instance i of the cluster and prefill
    # instance i have the same config, and so does the decode instance each request reaches
    # (the k-th to arrive, ordered by first token and index), so times are equal as floats.
    rng = random.Random(7)
    draws = {}

    def multiplier(i, m):
        return draws.setdefault((i, m), math.exp(rng.gauss(0.0, 0.5)))

    for seed, variant in itertools.product(range(4), ("fcfs", "sprpt", "linear", "srpt")):
        arrival, prompt, output, prediction = random_trace(seed, N=10, rate=6.0)
        N = len(arrival)
        kinds = heterogeneous_configs(3, variant, preemption, "optimistic", aging=0.1,
                                      refine_every=seed % 2, refine_multiplier=multiplier,
                                      prefix_cache=seed == 2)
        configs = [kinds[(i + seed) % 3] for i in range(N)]
        c = run_cluster_reference(arrival, prompt, output, prediction, configs, "round-robin")
        order = sorted((c.first_token_time[i], i) for i in range(N) if output[i] >= 2)
        decode_configs = [configs[i] for _, i in order] + [configs[0]] * (N - len(order))
        r = run_disaggregated_reference(arrival, prompt, output, prediction, configs,
                                        decode_configs, "round-robin", "round-robin", 0.0)
        assert r.first_token_time == c.first_token_time
        assert r.finish_time == c.finish_time
        assert r.preemptions == c.preemptions == [0] * N
        assert r.prefill_instance == c.instance == list(range(N))
        assert r.decode_order == [i for _, i in order]
        assert r.decode_arrival == [c.first_token_time[i] if output[i] >= 2 else None
                                    for i in range(N)]
        for name in TOTALS + ("peak_kv_tokens",):
            assert getattr(r, name) == getattr(c, name), name


# --------------------------------------------------------------------------------------------
# The interleaved event loop equals the prefill pool first, then the decode pool
# --------------------------------------------------------------------------------------------

def sequential_reference(arrival, prompt, output, prediction, prefill_configs, decode_configs,
                         prefill_router, decode_router, tpt, prefill_picks, decode_picks):
    """Choice 23's other reading, built from the reference's own parts: the prefill pool run to
    its end as a cluster of prefill-only instances, then the decode pool as a cluster on the
    transfers sorted by (decode arrival, index)."""
    N = len(arrival)

    def run_pool(instances, arrivals, router, picks):
        def earliest():
            return min(instances, key=lambda inst: inst.next_boundary())

        routed = []
        for k, r in enumerate(arrivals):
            while (inst := earliest()).next_boundary() < r.arrival:
                inst.step()
            choice, values = ref._route(router, instances, k,
                                        picks[k] if picks is not None else None)
            routed.append((choice, values))
            instances[choice].deliver(r)
        while (inst := earliest()).has_work():
            inst.step()
        return routed

    requests = ref._make_requests(arrival, prompt, output, prediction)
    prefill = [ref._Instance(cfg, prefill_only=True) for cfg in prefill_configs]
    pre = run_pool(prefill, requests, prefill_router, prefill_picks)
    transfers = sorted((r.first_token_time + r.P * tpt, r.index) for r in requests if r.O >= 2)
    landed = [ref._Request(index=i, arrival=t, P=requests[i].P, O=requests[i].O,
                           yhat=requests[i].yhat, g=1, n=requests[i].P, where=ref.LANDED)
              for t, i in transfers]
    decode = [ref._Instance(cfg) for cfg in decode_configs]
    dec = run_pool(decode, landed, decode_router, decode_picks)
    finish = [r.finish_time for r in requests]
    preemptions = [r.preemptions for r in requests]
    decode_instance = [None] * N
    for d, (choice, _) in zip(landed, dec):
        finish[d.index] = d.finish_time
        preemptions[d.index] += d.preemptions
        decode_instance[d.index] = choice
    return dict(first_token_time=[r.first_token_time for r in requests], finish_time=finish,
                preemptions=preemptions, prefill_instance=[k for k, _ in pre],
                prefill_seen=[v for _, v in pre], decode_instance=decode_instance,
                decode_order=[i for _, i in transfers],
                prefill_instances=[inst.result(N) for inst in prefill],
                decode_instances=[inst.result(N) for inst in decode])


@pytest.mark.parametrize("preemption", PREEMPTION_MODES)
def test_interleaved_equals_prefill_pool_first(preemption):
    for seed, (prefill_router, decode_router), tpt in itertools.product(
            range(2), (("least-outstanding", "least-predicted-work"), ("random", "least-kv"),
                       ("least-kv", "round-robin")), (0.0, 0.01)):
        arrival, prompt, output, prediction = random_trace(seed, N=16, rate=8.0)
        N = len(arrival)
        configs = heterogeneous_configs(3, "sprpt", preemption, "optimistic",
                                        prefix_cache=seed == 1)
        args = (arrival, prompt, output, prediction, configs[:2], configs[1:], prefill_router,
                decode_router, tpt, all_picks(N, 2, seed), all_picks(N, 2, seed + 1, d=1))
        r = run_disaggregated_reference(*args)
        want = sequential_reference(*args)
        for name, value in want.items():
            if name.endswith("_instances"):
                assert all(same_instance_result(a, b)
                           for a, b in zip(getattr(r, name), value)), name
            else:
                assert getattr(r, name) == value, name


# --------------------------------------------------------------------------------------------
# Invariants on random traces, 2 + 2 heterogeneous instances
# --------------------------------------------------------------------------------------------

def check_routing(router, I, seen, chosen, picks):
    """The router's rule (choice 18) for one pool: the n-th request routed there (in the pool's
    own order) went to chosen[n], having seen seen[n], with picks[n]."""
    for n, (k, values) in enumerate(zip(chosen, seen)):
        assert 0 <= k < I
        if router == "round-robin":
            assert k == n % I and values is None
        elif router == "random":
            assert k == picks[n][0] and values is None
        else:
            candidates = picks[n] if picks is not None else range(I)
            best = min(values[c] for c in candidates)
            assert k == next(c for c in candidates if values[c] == best)


def replay(cfg, res, served, start, end, where0):
    """Replays one instance's log: n and location of each request it served, from `start[i]`
    tokens at `where0` to `end[i]` when it leaves. Returns (preemptions, dropped tokens)."""
    b = cfg.block_size
    n = {i: start[i] for i in served}
    where = {i: where0 for i in served}
    last_dropped = {i: 0 for i in served}
    processed = {i: 0 for i in served}
    hits = {i: 0 for i in served}
    preempted = {i: 0 for i in served}
    swap_total = 0
    last = -math.inf
    for e in res.log:
        assert e["time"] > last
        last = e["time"]
        assert set(e["batch"]) <= set(served)
        assert e["kv_blocks"] <= cfg.kv_capacity // b and e["kv_tokens"] <= cfg.kv_capacity
        assert e["kv_tokens_during"] <= cfg.kv_capacity
        assert e["host_blocks"] <= cfg.host_capacity // b
        swapped = 0
        for i in e["swapped_out"]:
            assert where[i] == "resident"
            where[i] = "swapped"
            swapped += n[i]
        for i, dropped_n in zip(e["recomputed"], e["recomputed_n"]):
            assert where[i] == "resident" and n[i] == dropped_n  # landed: never preempted
            n[i], where[i], last_dropped[i] = 0, "nowhere", dropped_n
        for i in e["preempted"]:
            preempted[i] += 1
        for i, q, h in zip(e["batch"], e["q"], e["prefix_hit"]):
            if where[i] == "landed":
                # Placed on the GPU at no cost: one token, no hit, not a swap-in.
                assert q == 1 and h == 0 and i not in e["swapped_in"]
            if where[i] == "swapped":
                assert i in e["swapped_in"]
                swapped += n[i]
            assert h == 0 or (where[i] == "nowhere" and h <= last_dropped[i])
            n[i] += h + q
            processed[i] += q
            hits[i] += h
            where[i] = "resident"
        assert e["swap_tokens"] == swapped
        swap_total += swapped
        for i in e["finished"]:
            assert n[i] == end[i] and res.finish_time[i] == e["time"]
            where[i] = "done"
        resident = [i for i in served if where[i] == "resident"]
        assert e["kv_tokens"] == sum(n[i] for i in resident)
        assert e["kv_blocks"] == sum(-(-n[i] // b) for i in resident)
        assert e["host_blocks"] == sum(-(-n[i] // b) for i in served if where[i] == "swapped")
    assert all(where[i] == "done" for i in served)  # each leaves exactly once
    dropped = {i: 0 for i in served}
    for e in res.log:
        for i, dn in zip(e["recomputed"], e["recomputed_n"]):
            dropped[i] += dn
    for i in served:
        assert processed[i] + hits[i] == end[i] - start[i] + dropped[i]
        assert res.preemptions[i] == preempted[i]
    assert res.swapped_tokens == swap_total
    assert res.recomputed_tokens == sum(dropped.values())
    assert res.prefix_hit_tokens == sum(hits.values())
    if cfg.preemption == "recompute":
        assert res.swapped_tokens == 0
    return preempted


def check_disaggregated(arrival, prompt, output, prediction, prefill_configs, decode_configs,
                        prefill_router, decode_router, tpt, prefill_picks, decode_picks, r):
    N = len(arrival)
    Ip, Id = len(prefill_configs), len(decode_configs)
    reaching = [i for i in range(N) if output[i] >= 2]
    # Routing, in each pool's own order.
    check_routing(prefill_router, Ip, r.prefill_seen, r.prefill_instance, prefill_picks)
    assert sorted(r.decode_order) == reaching
    assert r.decode_order == sorted(reaching, key=lambda i: (r.decode_arrival[i], i))
    check_routing(decode_router, Id, [r.decode_seen[i] for i in r.decode_order],
                  [r.decode_instance[i] for i in r.decode_order], decode_picks)
    # Per request.
    for i in range(N):
        assert arrival[i] <= r.first_token_time[i] <= r.finish_time[i]
        if output[i] == 1:
            assert r.finish_time[i] == r.first_token_time[i]
            assert (r.decode_instance[i], r.decode_arrival[i], r.decode_seen[i]) == (None,) * 3
        else:
            assert r.decode_arrival[i] == r.first_token_time[i] + prompt[i] * tpt
            assert r.decode_arrival[i] < r.finish_time[i]
    # Per instance: the log replayed; prefill instances take requests from 0 to P tokens, decode
    # instances from P (landed) to P + O - 1.
    preemptions = [0] * N
    for k, (cfg, res) in enumerate(zip(prefill_configs, r.prefill_instances)):
        served = [i for i in range(N) if r.prefill_instance[i] == k]
        got = replay(cfg, res, served, [0] * N, prompt, "nowhere")
        for i in range(N):
            if i in served:
                assert res.first_token_time[i] == res.finish_time[i] == r.first_token_time[i]
                preemptions[i] += got[i]
            else:
                assert (res.first_token_time[i], res.finish_time[i]) == (None, None)
        for e in res.log:
            for i in e["batch"]:
                assert e["time"] > arrival[i]
    for k, (cfg, res) in enumerate(zip(decode_configs, r.decode_instances)):
        served = [i for i in range(N) if r.decode_instance[i] == k]
        got = replay(cfg, res, served, prompt,
                     [p + o - 1 for p, o in zip(prompt, output)], "landed")
        assert res.first_token_time == [None] * N  # a decode instance never records one
        for i in range(N):
            if i in served:
                assert res.finish_time[i] == r.finish_time[i]
                preemptions[i] += got[i]
            else:
                assert res.finish_time[i] is None
        for e in res.log:
            for i in e["batch"]:
                assert e["time"] > r.decode_arrival[i]
    assert r.preemptions == preemptions
    results = r.prefill_instances + r.decode_instances
    for name in TOTALS:
        assert getattr(r, name) == sum(getattr(res, name) for res in results), name
    assert r.peak_kv_tokens == max(res.peak_kv_tokens for res in results)
    if prefill_configs[0].preemption == "recompute":
        assert r.swapped_tokens == 0


@pytest.mark.parametrize("decode_router", ROUTERS)
@pytest.mark.parametrize("prefill_router", ROUTERS)
def test_invariants_random(prefill_router, decode_router):
    preempted = {"prefill": 0, "decode": 0}
    ties = 0
    for seed, variant, preemption, slow_prefill in itertools.product(
            range(2), ("fcfs", "sprpt", "srpt"), PREEMPTION_MODES, (False, True)):
        if slow_prefill:
            arrival, prompt, output, prediction = random_trace(seed, N=18, rate=12.0,
                                                               max_prompt=16, max_output=6)
        else:
            arrival, prompt, output, prediction = random_trace(seed, N=18, rate=8.0)
        N = len(arrival)
        rng = random.Random(seed)
        draws = {}

        def multiplier(i, m):
            return draws.setdefault((i, m), math.exp(rng.gauss(0.0, 0.5)))

        kinds = heterogeneous_configs(3, variant, preemption, "optimistic", aging=0.05,
                                      refine_every=2, refine_multiplier=multiplier,
                                      prefix_cache=seed == 1)
        prefill_configs, decode_configs = kinds[:2], kinds[1:]
        if slow_prefill:
            # Long prompts on slow, chunked prefill instances: requests queue and batch there,
            # are preempted there too, and some leave in the same iteration: with a free
            # transfer they tie at the decode pool.
            prefill_configs = [
                dataclasses.replace(kinds[0], iter_per_prefill_token=0.02, max_batched_tokens=8),
                dataclasses.replace(kinds[1], iter_per_prefill_token=0.03, max_batched_tokens=7)]
        tpt = 0.0 if slow_prefill else 0.004 * (seed + 1)
        K = sum(o >= 2 for o in output)
        for prefill_picks, decode_picks in ((all_picks(N, 2, seed), all_picks(K, 2, seed + 9)),
                                            (None, None)):
            if "random" in (prefill_router, decode_router) and prefill_picks is None:
                continue
            args = (arrival, prompt, output, prediction, prefill_configs, decode_configs,
                    prefill_router, decode_router, tpt, prefill_picks, decode_picks)
            r = run_disaggregated_reference(*args)
            check_disaggregated(*args, r)
            preempted["prefill"] += sum(res.total_preemptions for res in r.prefill_instances)
            preempted["decode"] += sum(res.total_preemptions for res in r.decode_instances)
            arrivals = [t for t in r.decode_arrival if t is not None]
            ties += len(arrivals) - len(set(arrivals))
            if variant != "srpt":
                # The prefill pool reads no O here (fcfs, sprpt; refinement at g = 1 only acts
                # after the request left): it is the cluster run with O = 1 for everyone.
                c = run_cluster_reference(arrival, prompt, [1] * N, prediction, prefill_configs,
                                          prefill_router, prefill_picks)
                assert r.prefill_instance == c.instance and r.prefill_seen == c.seen
                assert r.first_token_time == c.first_token_time
                assert all(same_instance_result(a, b)
                           for a, b in zip(r.prefill_instances, c.instances))
    # Both pools were under memory pressure; some requests reached the decode pool together.
    assert preempted["prefill"] > 0 and preempted["decode"] > 0, preempted
    assert ties > 0


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

def test_validation():
    args = ([0.0, 1.0], [2, 2], [2, 1], [1.0, 1.0])  # K = 1 request reaches the decode pool
    cfg = ReferenceConfig(**DYADIC)

    def run(prefill=(cfg,), decode=(cfg,), routers=("round-robin", "round-robin"), tpt=0.5,
            prefill_picks=None, decode_picks=None, trace=args):
        return run_disaggregated_reference(*trace, list(prefill), list(decode), *routers, tpt,
                                           prefill_picks, decode_picks)

    # Limits and costs may differ, within a pool and across the pools ...
    other = dataclasses.replace(cfg, kv_capacity=8, max_seqs=1, iter_base=0.5)
    run(prefill=(cfg, other), decode=(other,))
    run(tpt=0.0)
    # ... nothing else: within the prefill pool, within the decode pool, or across them.
    for change in (dict(policy="sprpt"), dict(preemption="swap"), dict(aging=0.1),
                   dict(admission="reserve-max"), dict(prefix_cache=True), dict(c=0.7),
                   dict(w_kv=1.0), dict(refine_every=1, refine_multiplier=lambda i, m: 1.0)):
        changed = dataclasses.replace(cfg, **change)
        for prefill, decode in (((cfg, changed), (cfg,)), ((cfg,), (cfg, changed)),
                                ((cfg,), (changed,)), ((changed,), (cfg,))):
            with pytest.raises(ValueError):
                run(prefill=prefill, decode=decode)
    # Each pool needs an instance.
    with pytest.raises(ValueError):
        run(prefill=())
    with pytest.raises(ValueError):
        run(decode=())
    # transfer_per_token: finite and >= 0.
    for tpt in (-0.25, math.inf, math.nan):
        with pytest.raises(ValueError):
            run(tpt=tpt)
    # Routers and picks, per pool.
    for routers in (("least-loaded", "round-robin"), ("round-robin", "least-loaded")):
        with pytest.raises(ValueError):
            run(routers=routers)
    with pytest.raises(ValueError):
        run(routers=("random", "round-robin"))  # needs prefill_picks
    with pytest.raises(ValueError):
        run(routers=("round-robin", "random"))  # needs decode_picks
    with pytest.raises(ValueError):
        run(routers=("random", "round-robin"), prefill_picks=[[0]])  # one per request
    with pytest.raises(ValueError):
        run(prefill_picks=[[0], [1]])  # no prefill instance 1
    with pytest.raises(ValueError):
        run(prefill_picks=[[0], []])  # no candidate
    # decode_picks: K = 1 or N = 2 entries, each a non-empty list of decode instances.
    run(decode=(cfg, cfg), routers=("round-robin", "random"), decode_picks=[[1]])
    run(decode=(cfg, cfg), routers=("round-robin", "random"), decode_picks=[[1], [0]])
    for decode_picks in ([], [[0]] * 3, [[2]], [[]], [[0], [5]]):
        with pytest.raises(ValueError):
            run(decode=(cfg, cfg), routers=("round-robin", "random"), decode_picks=decode_picks)
    # Every request must fit alone on every instance of both pools: P + O - 1 = 3 > 2.
    small = dataclasses.replace(cfg, kv_capacity=2)
    for prefill, decode in (((cfg, small), (cfg,)), ((cfg,), (small,))):
        with pytest.raises(ValueError):
            run(prefill=prefill, decode=decode)
    # The per-engine checks still apply.
    with pytest.raises(ValueError):
        run(trace=([1.0, 0.0], [2, 2], [2, 2], [1.0, 1.0]))
    with pytest.raises(ValueError):
        run(prefill=(dataclasses.replace(cfg, policy="nope"),),
            decode=(dataclasses.replace(cfg, policy="nope"),))
