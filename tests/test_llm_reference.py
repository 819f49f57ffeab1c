"""Tests of the plain-Python LLM reference engine (tests/llm_reference.py) on its own: golden
instances worked out by hand, invariants on random small traces, a Lindley recursion, and
equivalences between policies that the model implies."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random

import pytest

from llm_reference import (ADMISSION_MODES, POLICIES, PREEMPTION_MODES, ReferenceConfig,
                           run_reference)


def close(a, b):
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


def assert_times(result, first, finish):
    assert len(result.first_token_time) == len(first)
    for i, (got, want) in enumerate(zip(result.first_token_time, first)):
        assert close(got, want), (i, "first token", got, want)
    for i, (got, want) in enumerate(zip(result.finish_time, finish)):
        assert close(got, want), (i, "finish", got, want)


# Simple costs for the hand computations: dt = 1 + 0.1 * prefill tokens + 0.01 * decoding
# requests (+ 0.001 * kv tokens attended where stated).
SIMPLE = dict(iter_base=1.0, iter_per_prefill_token=0.1, iter_per_decode_seq=0.01,
              iter_per_kv_token=0.0, swap_per_token=0.0)


# --------------------------------------------------------------------------------------------
# Golden instances
# --------------------------------------------------------------------------------------------

def test_single_request_default_costs():
    # One request, arrival 1.0, P = 4, O = 3, default costs
    # (base 0.01, 1e-4 per prefill token, 1e-3 per decoding request, 1e-6 per kv token).
    # Boundary 1.0 (the engine is empty: jump to the arrival). Prefill of 4 tokens, kv = 0 + 4:
    #   dt = 0.01 + 4e-4 + 0 + 4e-6 = 0.010404 -> t = 1.010404, g = 1 (first token), n = 4.
    # Decode (g = 1, u = 1), kv = 4 + 1 = 5: dt = 0.01 + 1e-3 + 5e-6 = 0.011005 -> 1.021409.
    # Decode, kv = 5 + 1 = 6: dt = 0.011006 -> 1.032415, g = 3 = O: finished.
    r = run_reference([1.0], [4], [3], [3.0], ReferenceConfig())
    assert_times(r, [1.010404], [1.032415])
    assert r.iterations == 3
    assert r.total_preemptions == 0 and r.recomputed_tokens == 0 and r.swapped_tokens == 0
    assert [e["q"] for e in r.log] == [[4], [1], [1]]
    assert [e["kv_tokens"] for e in r.log] == [4, 5, 0]  # freed at the end of the last iteration
    assert [e["kv_tokens_during"] for e in r.log] == [4, 5, 6]
    assert r.peak_kv_tokens == 6  # the last iteration holds 6 tokens while it runs


def test_fcfs_chunked_prefill():
    # T = 4, fcfs, kv cost 0.001 per token. A: arrival 0, P = 6, O = 2; B: arrival 0, P = 3, O = 2.
    # t = 0: order A, B (class 1, primary 0, index). q_A = min(6, 4) = 4;
    #   q_B = min(3, 4 - 6) = -2 -> not admissible. Batch [A:4]. Prefill 4, kv 0 + 4 = 4:
    #   dt = 1 + 0.4 + 0 + 0.004 = 1.404 -> t = 1.404. A: n = 4 < 6, no token.
    # t = 1.404: A resident, locked (class 0). q_A = u_A = 2; q_B = min(3, 4 - 2) = 2.
    #   Both prefill (g = 0): 4 tokens; kv (4 + 2) + (0 + 2) = 8: dt = 1 + 0.4 + 0.008 = 1.408
    #   -> t = 2.812. A: n = 6 = P -> g = 1 (first token 2.812). B: n = 2.
    # t = 2.812: A decode (g = 1, u = 1); B: u = 1 but g = 0 -> prefill, 1 token.
    #   kv (6 + 1) + (2 + 1) = 10: dt = 1 + 0.1 + 0.01 + 0.010 = 1.12 -> t = 3.932.
    #   A: g = 2 = O, finished 3.932. B: n = 3 = P -> g = 1 (first token 3.932).
    # t = 3.932: B decode, kv 3 + 1 = 4: dt = 1 + 0.01 + 0.004 = 1.014 -> 4.946, finished.
    cfg = ReferenceConfig(max_batched_tokens=4, **{**SIMPLE, "iter_per_kv_token": 0.001})
    r = run_reference([0.0, 0.0], [6, 3], [2, 2], [1.0, 1.0], cfg)
    assert_times(r, [2.812, 3.932], [3.932, 4.946])
    assert [e["batch"] for e in r.log] == [[0], [0, 1], [0, 1], [1]]
    assert [e["q"] for e in r.log] == [[4], [2, 2], [1, 1], [1]]
    assert [e["prefill_tokens"] for e in r.log] == [4, 4, 1, 0]
    assert [e["decode_seqs"] for e in r.log] == [0, 0, 1, 1]


def _two_growing_requests(**kw):
    # A and B: arrival 0, P = 2, O = 3 (peak 4 tokens each), kv_capacity 6, block size 1, fcfs.
    cfg = ReferenceConfig(kv_capacity=6, **{**SIMPLE, **kw})
    return run_reference([0.0, 0.0], [2, 2], [3, 3], [3.0, 3.0], cfg)


def test_recompute_preemption():
    # C = 6. t = 0: A q = 2 (D 2 + H 0 = 2), B q = 2 (D 4 + H 0 = 4 <= 6). Prefill 4 tokens:
    #   dt = 1.4 -> t = 1.4, both g = 1 (first tokens 1.4), n = 2.
    # t = 1.4: both resident and locked. A: D = 3 - 2 = 1, H = 2 -> 3; B: D = 2, H = 4 -> 6 <= 6.
    #   Two decodes: dt = 1.02 -> 2.42, both n = 3, g = 2.
    # t = 2.42: A: D = 1, H = 3 -> 4. B: D = 2, H = 6 -> 8 > 6: B is resident with q = 1, at
    #   position 2 <= S: it cannot grow and is preempted (recompute: drops n = 3).
    #   Batch [A], decode: dt = 1.01 -> 3.43. A: g = 3 = O, finished 3.43.
    # t = 3.43: B has nothing: u = P + g = 4 tokens, a prefill (recompute): dt = 1.4 -> 4.83.
    #   n = 4 = P + g -> g = 3 = O: finished 4.83.
    r = _two_growing_requests(preemption="recompute")
    assert_times(r, [1.4, 1.4], [3.43, 4.83])
    assert r.preemptions == [0, 1] and r.total_preemptions == 1
    assert r.recomputed_tokens == 3 and r.swapped_tokens == 0
    assert r.iterations == 4
    assert r.log[2]["preempted"] == [1] and r.log[2]["recomputed"] == [1]
    assert r.log[3]["q"] == [4] and r.log[3]["prefill_tokens"] == 4
    assert r.peak_kv_tokens == 6


def test_waiting_request_needs_its_whole_sequence_to_fit():
    # kv_capacity 10 (block size 1), budget T = 4. A: P = 2, O = 5; B: P = 9, O = 1; both at 0.
    # t = 0: A takes q = 2 (D = 2). B's chunk q = 2 would fit (D = 4), but its whole prompt does
    #   not: D_1 + blk(9) + H = 2 + 9 + 0 = 11 > 10, so B waits. A prefills alone: 1.2.
    # A then decodes (dt = 1.01) at 2.21, 3.22, 4.23 and 5.24 (its 5th token: it leaves); at
    #   each boundary B still fails, e.g. at 1.2: D_1 + blk(9) + H = 1 + 9 + 2 = 12 > 10.
    # t = 5.24: B alone, in chunks of 4, 4, 1: 6.64, 8.04, 9.14 (first and last token).
    cfg = ReferenceConfig(kv_capacity=10, max_batched_tokens=4, **SIMPLE)
    r = run_reference([0.0, 0.0], [2, 9], [5, 1], [5.0, 1.0], cfg)
    assert_times(r, [1.2, 9.14], [5.24, 9.14])
    assert [e["batch"] for e in r.log[:5]] == [[0]] * 5 and r.total_preemptions == 0


def test_prefix_cache_reuses_the_blocks_recompute_dropped():
    # As test_recompute_preemption, with the prefix cache: the free queue is explicit.
    # t = 0: two prefills take 4 of the 6 free blocks; t = 1.4: two decodes take the last 2.
    # t = 2.42: B is preempted (n = 3, block size 1: three full blocks), pushed last block first:
    #   queue [B2, B1, B0]. A's decode pops B2 from the front: [B1, B0]; A finishes at 3.43 and
    #   frees 4 plain blocks: [B1, B0, -, -, -, -].
    # t = 3.43: B finds blocks 0 and 1 intact (block 2 is gone): hit h = 2, so n = 2 and
    #   u = P + g - n = 2 + 2 - 2 = 2 tokens to prefill: dt = 1.2 -> 4.63, n = 4 = P + g: done.
    r = _two_growing_requests(preemption="recompute", prefix_cache=True)
    assert_times(r, [1.4, 1.4], [3.43, 4.63])
    assert r.recomputed_tokens == 3 and r.prefix_hit_tokens == 2
    assert r.log[3]["prefix_hit"] == [2] and r.log[3]["prefill_tokens"] == 2
    # Without the cache B recomputes all 4 tokens (test_recompute_preemption): 4.83.
    assert _two_growing_requests(preemption="recompute").prefix_hit_tokens == 0


def test_prefix_cache_hit_that_leaves_one_token_to_decode():
    # Blocks of 2, kv_capacity 6: C = 3 blocks. A and B: P = 2, O = 3, fcfs.
    # t = 0: prefills of 2 + 2 tokens (1 block each): dt = 1.4 -> 1.4, n = 2, g = 1.
    # t = 1.4: A: D = blk(3) - blk(2) = 1, H = 1. B: D = 2, H = 2 -> 4 > 3 and B cannot grow:
    #   preempted (n = 2: one full block): queue [-, B0]. A's new block pops "-": [B0].
    #   dt = 1.01 -> 2.41, A: n = 3, g = 2.
    # t = 2.41: B's hit is 2 tokens, so n = 2 and u = P + g - n = 1 with g = 1: decoding, but its
    #   D = blk(3) = 2 with A's H = 2 exceeds 3. A decodes alone: 3.42, finished (frees 2).
    # t = 3.42: B decodes from its cached prefix (1.01 -> 4.43, g = 2) and again (5.44).
    #   Without the cache it would prefill u = 3 tokens at 3.42 (1.3 -> 4.72), then 5.73.
    cfg = ReferenceConfig(kv_capacity=6, block_size=2, prefix_cache=True, **SIMPLE)
    r = run_reference([0.0, 0.0], [2, 2], [3, 3], [3.0, 3.0], cfg)
    assert_times(r, [1.4, 1.4], [3.42, 5.44])
    assert r.prefix_hit_tokens == 2 and r.log[3]["prefix_hit"] == [2]
    assert r.log[3]["decode_seqs"] == 1 and r.log[3]["prefill_tokens"] == 0
    r = run_reference([0.0, 0.0], [2, 2], [3, 3], [3.0, 3.0],
                      dataclasses.replace(cfg, prefix_cache=False))
    assert_times(r, [1.4, 1.4], [3.42, 5.73])


def test_swap_preemption():
    # As test_recompute_preemption, with swap, host_capacity 3 and swap_per_token 0.05.
    # t = 2.42: B (n = 3, 3 blocks) is preempted; 3 host blocks are free: swapped out.
    #   Batch [A] decode, 3 tokens moved: dt = 1 + 0.01 + 0.05 * 3 = 1.16 -> 3.58, A finished.
    # t = 3.58: B swapped, n = 3, g = 2, u = 1: q = 1, D = blk(4) = 4 <= 6. It is decoding
    #   (g >= 1, u = 1) and swaps its 3 tokens in: dt = 1 + 0.01 + 0.15 = 1.16 -> 4.74, finished.
    r = _two_growing_requests(preemption="swap", host_capacity=3, swap_per_token=0.05)
    assert_times(r, [1.4, 1.4], [3.58, 4.74])
    assert r.preemptions == [0, 1]
    assert r.recomputed_tokens == 0 and r.swapped_tokens == 6
    assert r.log[2]["swapped_out"] == [1] and r.log[2]["host_blocks"] == 3
    assert r.log[3]["swapped_in"] == [1] and r.log[3]["host_blocks"] == 0
    assert r.log[3]["decode_seqs"] == 1


def test_swap_falls_back_to_recompute_when_host_is_full():
    # Same, but the host holds only 2 blocks: B (3 blocks) does not fit and is recomputed; nothing
    # moves, so the times are those of test_recompute_preemption.
    r = _two_growing_requests(preemption="swap", host_capacity=2, swap_per_token=0.05)
    assert_times(r, [1.4, 1.4], [3.43, 4.83])
    assert r.recomputed_tokens == 3 and r.swapped_tokens == 0
    assert r.log[2]["swapped_out"] == [] and r.log[2]["recomputed"] == [1]


def test_swap_walks_preempted_in_order_and_stops_at_first_misfit():
    # fcfs, kv_capacity 6, b = 1, swap_per_token 0.05. A: P = 1, B: P = 4, C: P = 1, all O = 2,
    # arrival 0.
    # t = 0: prefill of all three (D = 1, 5, 6 <= 6): 6 tokens, dt = 1.6 -> 1.6, all g = 1,
    #   n = 1, 4, 1.
    # t = 1.6: all resident and locked, order A, B, C. A: D = 1, H = 1 -> 2. B: D = 2, H = 5
    #   -> 7 > 6: B cannot grow, so B and C (every resident request after it) are preempted.
    # host 3 blocks: B (4 blocks) does not fit -> recomputed, and so is C (from the first misfit
    #   on, even though C's single block would fit). A decodes: 1.01 -> 2.61, finished.
    #   t = 2.61: B recomputes P + g = 5 tokens (C would make D = 7): 1.5 -> 4.11, finished.
    #   t = 4.11: C recomputes 2 tokens: 1.2 -> 5.31.
    # host 5 blocks: B (4) and C (4 + 1 = 5) both swapped, 5 tokens out: dt = 1.01 + 0.25
    #   -> 2.86. t = 2.86: B swapped in (4 tokens), decode, D = blk(5) = 5; C: 5 + 2 = 7 > 6.
    #   dt = 1.01 + 0.2 -> 4.07 B finished. t = 4.07: C in (1 token), decode: 1.06 -> 5.13.
    # host 4 blocks: B swapped (4 <= 4), C recomputed (5 > 4): 4 out: 1.21 -> 2.81; B back in
    #   and decodes: 1.21 -> 4.02; C prefill 2: 1.2 -> 5.22.
    args = ([0.0, 0.0, 0.0], [1, 4, 1], [2, 2, 2], [2.0, 2.0, 2.0])
    base = ReferenceConfig(kv_capacity=6, preemption="swap", **{**SIMPLE, "swap_per_token": 0.05})
    r = run_reference(*args, dataclasses.replace(base, host_capacity=3))
    assert_times(r, [1.6] * 3, [2.61, 4.11, 5.31])
    assert r.log[1]["preempted"] == [1, 2] and r.log[1]["recomputed"] == [1, 2]
    assert r.recomputed_tokens == 5 and r.swapped_tokens == 0
    r = run_reference(*args, dataclasses.replace(base, host_capacity=5))
    assert_times(r, [1.6] * 3, [2.86, 4.07, 5.13])
    assert r.log[1]["swapped_out"] == [1, 2] and r.log[1]["host_blocks"] == 5
    assert r.recomputed_tokens == 0 and r.swapped_tokens == 10
    r = run_reference(*args, dataclasses.replace(base, host_capacity=4))
    assert_times(r, [1.6] * 3, [2.81, 4.02, 5.22])
    assert r.log[1]["swapped_out"] == [1] and r.log[1]["recomputed"] == [2]
    assert r.recomputed_tokens == 1 and r.swapped_tokens == 8
    assert r.preemptions == [0, 1, 1]


def test_reserve_max_admission():
    # A, B: arrival 0, P = 2, O = 2, kv_capacity 8, max_output 4. The reservation of each is
    # min(blk(2 + max(4, g + 1) - 1), 8) = 5 blocks.
    # reserve-max: t = 0: A (position 1, no condition) R_1 = 5; B (not resident, position 2)
    #   R_2 = 10 > 8: not admissible. Batch [A], prefill 2: dt = 1.2 -> 1.2 (A first token).
    # t = 1.2: A decode (R_1 = 5, B still R_2 = 10): dt = 1.01 -> 2.21, A finished.
    # t = 2.21: B prefill: 1.2 -> 3.41 (first token); decode: 1.01 -> 4.42, finished.
    args = ([0.0, 0.0], [2, 2], [2, 2], [2.0, 2.0])
    r = run_reference(*args, ReferenceConfig(kv_capacity=8, max_output=4,
                                             admission="reserve-max", **SIMPLE))
    assert_times(r, [1.2, 3.41], [2.21, 4.42])
    # optimistic: both at once. Prefill 4 tokens: dt = 1.4 -> 1.4; two decodes: 1.02 -> 2.42.
    r = run_reference(*args, ReferenceConfig(kv_capacity=8, max_output=4,
                                             admission="optimistic", **SIMPLE))
    assert_times(r, [1.4, 1.4], [2.42, 2.42])
    # reserve-max with max_output 3: reservation blk(2 + 3 - 1) = 4 each, R_2 = 8 <= 8: together.
    r = run_reference(*args, ReferenceConfig(kv_capacity=8, max_output=3,
                                             admission="reserve-max", **SIMPLE))
    assert_times(r, [1.4, 1.4], [2.42, 2.42])


def test_reserve_predicted_admission():
    # As test_reserve_max_admission with reserve-predicted: the reservation uses ceil(yhat).
    # yhat = 3.2: ceil 4 -> blk(2 + 4 - 1) = 5 each, R_2 = 10 > 8: one after the other.
    # yhat = 1.5: ceil 2 -> blk(2 + 2 - 1) = 3 each, R_2 = 6 <= 8: together.
    cfg = ReferenceConfig(kv_capacity=8, admission="reserve-predicted", **SIMPLE)
    r = run_reference([0.0, 0.0], [2, 2], [2, 2], [3.2, 3.2], cfg)
    assert_times(r, [1.2, 3.41], [2.21, 4.42])
    r = run_reference([0.0, 0.0], [2, 2], [2, 2], [1.5, 1.5], cfg)
    assert_times(r, [1.4, 1.4], [2.42, 2.42])


def test_block_size_four():
    # b = 4, kv_capacity 10: C = floor(10 / 4) = 2 blocks. A: P = 5, O = 3 (peak 7 tokens = 2
    # blocks); B: P = 3, O = 2 (peak 4 = 1 block). Both arrive at 0, fcfs.
    # t = 0: A q = 5, D = blk(5) = 2 <= 2. B: D = 2 + blk(3) = 3 > 2: not admissible.
    #   Batch [A], prefill 5: dt = 1.5 -> 1.5, A first token, n = 5.
    # t = 1.5: A: D = blk(6) - blk(5) = 0, H = 2 -> 2. B: 0 + 1 + 2 = 3 > 2. A decodes:
    #   1.01 -> 2.51 (n = 6); again D = blk(7) - blk(6) = 0: 1.01 -> 3.52, A finished (g = 3).
    # t = 3.52: B prefill 3: 1.3 -> 4.82 (first token); decode: 1.01 -> 5.83 finished.
    # With b = 1 and the same 10 tokens both would run together.
    cfg = ReferenceConfig(kv_capacity=10, block_size=4, **SIMPLE)
    r = run_reference([0.0, 0.0], [5, 3], [3, 2], [1.0, 1.0], cfg)
    assert_times(r, [1.5, 4.82], [3.52, 5.83])
    # After each iteration (A freed at the end of its last one):
    assert [e["kv_blocks"] for e in r.log] == [2, 2, 0, 1, 0]
    assert [e["kv_tokens"] for e in r.log] == [5, 6, 0, 3, 0]
    # b = 1: t = 0 prefill 8 tokens: dt = 1.8; then two decodes (1.02) -> 2.82, B finished;
    # A decodes alone: 1.01 -> 3.83.
    r = run_reference([0.0, 0.0], [5, 3], [3, 2], [1.0, 1.0],
                      dataclasses.replace(cfg, block_size=1))
    assert_times(r, [1.8, 1.8], [3.83, 2.82])


def test_validation_uses_blocks():
    # P + O - 1 = 9 tokens: 3 blocks of 4 > C = floor(10 / 4) = 2; with b = 1, 9 <= 10.
    with pytest.raises(ValueError):
        run_reference([0.0], [5], [5], [1.0], ReferenceConfig(kv_capacity=10, block_size=4))
    run_reference([0.0], [5], [5], [1.0], ReferenceConfig(kv_capacity=10, block_size=1))
    # Exactly the capacity is fine: P + O - 1 = 10.
    run_reference([0.0], [5], [6], [1.0], ReferenceConfig(kv_capacity=10, block_size=1))
    with pytest.raises(ValueError):
        run_reference([0.0], [5], [7], [1.0], ReferenceConfig(kv_capacity=10, block_size=1))


def test_sprpt_short_request_overtakes_resident_long_one():
    # sprpt, max_seqs 1, large memory. A: arrival 0, P = 2, O = 5, yhat = 5. B: arrival 1.5,
    # P = 2, O = 2, yhat = 2.
    # t = 0: A prefill 2: 1.2 -> 1.2 (first token, g = 1). t = 1.2: B not yet there; A decodes:
    #   1.01 -> 2.21 (g = 2, n = 3).
    # t = 2.21: B enters. Ranks: A 5 - 2 = 3, B 2 - 0 = 2, both class 1 (sprpt never locks).
    #   Order B, A. B q = 2; A at position 2 > S = 1: not admissible. L = 1, and A fails on S, so
    #   the keep rule applies: D_1 + H_2 = 2 + 3 fits: A keeps its KV (no preemption).
    #   B prefill: 1.2 -> 3.41 (first token). t = 3.41: B 2 - 1 = 1 < 3: B decodes: 1.01 -> 4.42,
    #   B finished.
    # t = 4.42: A: u = 2 + 2 - 3 = 1, decode: 5.43 (g = 3), 6.44 (g = 4), 7.45 (g = 5) finished.
    cfg = ReferenceConfig(policy="sprpt", max_seqs=1, **SIMPLE)
    args = ([0.0, 1.5], [2, 2], [5, 2], [5.0, 2.0])
    r = run_reference(*args, cfg)
    assert_times(r, [1.2, 3.41], [7.45, 4.42])
    assert r.total_preemptions == 0
    # fcfs (non-preemptive) runs A to the end first: A decodes at 2.21, 3.22, 4.23, 5.24;
    # B prefill 6.44, decode 7.45.
    r = run_reference(*args, dataclasses.replace(cfg, policy="fcfs"))
    assert_times(r, [1.2, 6.44], [5.24, 7.45])
    # spjf (non-preemptive on resident requests) also keeps A: same as fcfs.
    r = run_reference(*args, dataclasses.replace(cfg, policy="spjf"))
    assert_times(r, [1.2, 6.44], [5.24, 7.45])


def test_sprpt_overtaking_forces_recompute_of_the_long_one():
    # sprpt, kv_capacity 4, max_seqs large. A: arrival 0, P = 2, O = 3 (peak 4), yhat 5.
    # B: arrival 1.5, P = 2, O = 1, yhat 1.
    # t = 0: A prefill: 1.2 -> 1.2 (g = 1, n = 2); t = 1.2: decode: 1.01 -> 2.21 (g = 2, n = 3).
    # t = 2.21: ranks A 5 - 2 = 3, B 1 - 0 = 1: order B, A. B: q = 2, D = 2, H = 0: fits.
    #   A: resident, q = 1, D = 2 + (4 - 3) = 3, H = 3: 6 > 4. It is resident with q >= 1 and
    #   position 2 <= S: preempted (recompute, drops 3 tokens).
    #   B prefill 2: 1.2 -> 3.41, g = 1 = O: first token and finish.
    # t = 3.41: A recomputes P + g = 4 tokens: 1.4 -> 4.81, g = 3 = O: finished.
    cfg = ReferenceConfig(policy="sprpt", kv_capacity=4, **SIMPLE)
    r = run_reference([0.0, 1.5], [2, 2], [3, 1], [5.0, 1.0], cfg)
    assert_times(r, [1.2, 3.41], [4.81, 3.41])
    assert r.preemptions == [1, 0] and r.recomputed_tokens == 3


def test_refinement():
    # sprpt, max_seqs 1. A: arrival 0, P = 1, O = 4, yhat 1 (under-predicted). B: arrival 0.5,
    # P = 1, O = 2, yhat 2.5.
    # No refinement: t = 0 A prefill 1: 1.1 -> 1.1 (g = 1). At 1.1: A 1 - 1 = 0 < B 2.5: A keeps
    #   going: 2.11, 3.12, 4.13 (finished). B: 5.23 (first), 6.24 (finished).
    # refine_every 1, M = 1: after A's first token yhat = 1 + 3 * 1 = 4. At 1.1: A 4 - 1 = 3 >
    #   B 2.5: B first, A keeps its KV (fails on max_seqs only). B prefill: 1.1 -> 2.2, g = 1,
    #   refined yhat = 1 + 1 * 1 = 2: rank 1 < 3. B decode: 1.01 -> 3.21 finished.
    #   A decodes: 4.22, 5.23, 6.24 finished.
    cfg = ReferenceConfig(policy="sprpt", max_seqs=1, **SIMPLE)
    args = ([0.0, 0.5], [1, 1], [4, 2], [1.0, 2.5])
    r = run_reference(*args, cfg)
    assert_times(r, [1.1, 5.23], [4.13, 6.24])
    calls = []

    def one(i, m):
        calls.append((i, m))
        return 1.0

    r = run_reference(*args, dataclasses.replace(cfg, refine_every=1, refine_multiplier=one))
    assert_times(r, [1.1, 2.2], [6.24, 3.21])
    # Calls: A after g = 1; B after g = 1; A after g = 2 and 3 (never at g = O).
    assert calls == [(0, 1), (1, 1), (0, 2), (0, 3)]
    calls.clear()
    run_reference(*args, dataclasses.replace(cfg, refine_every=2, refine_multiplier=one))
    assert calls == [(0, 1)]  # A at g = 2 only (B reaches g = 2 = O)


def test_refined_prediction_formula():
    # yhat = g + (O - g) * M ** ((O - g) / O). A: O = 4, M = 16, refined at g = 1 (m = 1):
    # yhat = 1 + 3 * 16 ** 0.75 = 1 + 3 * 8 = 25, rank 24. B: yhat 23.5, P = 1, O = 1, arrives
    # 0.5: rank 23.5 < 24, so B overtakes at 1.1 (max_seqs 1): B prefill 1.1 -> 2.2, finished.
    # With M = 8: yhat = 1 + 3 * 8 ** 0.75 = 1 + 3 * 4.7568 = 15.27 < 23.5: A keeps going.
    cfg = ReferenceConfig(policy="sprpt", max_seqs=1, refine_every=1, **SIMPLE)
    args = ([0.0, 0.5], [1, 1], [4, 1], [1.0, 23.5])
    r = run_reference(*args, dataclasses.replace(cfg, refine_multiplier=lambda i, m: 16.0))
    assert close(r.finish_time[1], 2.2)
    r = run_reference(*args, dataclasses.replace(cfg, refine_multiplier=lambda i, m: 8.0))
    assert close(r.finish_time[0], 4.13) and close(r.finish_time[1], 5.23)


def test_onebit_tiebreak():
    # onebit, threshold 2, max_seqs 1, all arrive at 0 with P = 1, O = 1 (one iteration of 1.1
    # each). yhat: [5 (long), 1 (short), 1 (short)].
    # preemptive: shorts first, LIFO among them (tiebreak -index): 2, 1, then 0.
    # non-preemptive: shorts first in index order: 1, 2, then 0.
    cfg = ReferenceConfig(policy="onebit", threshold=2.0, max_seqs=1, **SIMPLE)
    args = ([0.0, 0.0, 0.0], [1, 1, 1], [1, 1, 1], [5.0, 1.0, 1.0])
    r = run_reference(*args, dataclasses.replace(cfg, preemptive=True))
    assert_times(r, [3.3, 2.2, 1.1], [3.3, 2.2, 1.1])
    r = run_reference(*args, dataclasses.replace(cfg, preemptive=False))
    assert_times(r, [3.3, 1.1, 2.2], [3.3, 1.1, 2.2])


def test_aging():
    # sjf, max_seqs 1. X: arrival 0, P = 1, O = 1 (1.1 -> 1.1). Long: arrival 0.1, O = 3;
    # Short: arrival 0.5, O = 1 (P = 1 for all).
    # At 1.1 without aging: Short (1) before Long (3): Short 1.1 -> 2.2; Long 3.3, 4.31, 5.32.
    # aging 10: Long 3 - 10 * 1.0 = -7, Short 1 - 10 * 0.6 = -5: Long first: 2.2, 3.21, 4.22;
    #   then Short 5.32.
    cfg = ReferenceConfig(policy="sjf", max_seqs=1, **SIMPLE)
    args = ([0.0, 0.1, 0.5], [1, 1, 1], [1, 3, 1], [1.0, 1.0, 1.0])
    r = run_reference(*args, cfg)
    assert_times(r, [1.1, 3.3, 2.2], [1.1, 5.32, 2.2])
    r = run_reference(*args, dataclasses.replace(cfg, aging=10.0))
    assert_times(r, [1.1, 2.2, 5.32], [1.1, 4.22, 5.32])


def test_idle_jump_and_arrival_during_iteration():
    # fcfs, A: arrival 0, P = 1, O = 1 -> 1.1. B arrives at 0.5 (during A's iteration): considered
    # at the boundary 1.1: 1.1 -> 2.2. C arrives at 10: the engine is empty at 2.2, time jumps to
    # 10: finished at 11.1. D arrives exactly at 11.1 (a boundary): enters then, 11.1 -> 12.2.
    cfg = ReferenceConfig(**SIMPLE)
    r = run_reference([0.0, 0.5, 10.0, 11.1], [1] * 4, [1] * 4, [1.0] * 4, cfg)
    assert_times(r, [1.1, 2.2, 11.1, 12.2], [1.1, 2.2, 11.1, 12.2])
    assert r.iterations == 4


# --------------------------------------------------------------------------------------------
# Lindley recursion
# --------------------------------------------------------------------------------------------

def test_lindley_max_seqs_one():
    # max_seqs 1, only iter_base = 0.25 nonzero, memory and token budget huge, fcfs. A request
    # takes exactly O iterations (prefill gives token 1, then O - 1 decodes). The running request
    # is resident and locked, so the next request starts at the boundary where the previous one
    # finishes (if it has arrived by then), else the engine is empty and jumps to its arrival:
    #   finish_i = max(arrival_i, finish_{i-1}) + O_i * base, first_i = start_i + base.
    rng = random.Random(7)
    N = 60
    t, arrival = 0.0, []
    for _ in range(N):
        t += rng.expovariate(1.0)
        arrival.append(t)
    prompt = [rng.randint(1, 50) for _ in range(N)]
    output = [rng.randint(1, 8) for _ in range(N)]
    base = 0.25
    cfg = ReferenceConfig(max_seqs=1, kv_capacity=10**6, max_batched_tokens=10**6,
                          iter_base=base, iter_per_prefill_token=0.0, iter_per_decode_seq=0.0,
                          iter_per_kv_token=0.0, swap_per_token=0.0)
    r = run_reference(arrival, prompt, output, [1.0] * N, cfg)
    prev = -math.inf
    for i in range(N):
        start = max(arrival[i], prev)
        finish = start + output[i] * base
        assert math.isclose(r.first_token_time[i], start + base, rel_tol=1e-12), i
        assert math.isclose(r.finish_time[i], finish, rel_tol=1e-12), i
        prev = finish
    # Some requests must have waited (otherwise the test is vacuous).
    assert sum(arrival[i] < r.finish_time[i - 1] for i in range(1, N)) > 5
    assert r.iterations == sum(output)


# --------------------------------------------------------------------------------------------
# Invariants on random traces
# --------------------------------------------------------------------------------------------

def random_trace(seed, N=14, rate=3.0, max_prompt=12, max_output=10):
    rng = random.Random(seed)
    t, arrival = 0.0, []
    for k in range(N):
        if k == 0 or rng.random() > 0.2:  # some simultaneous arrivals
            t += rng.expovariate(rate)
        arrival.append(t)
    prompt = [rng.randint(1, max_prompt) for _ in range(N)]
    output = [rng.randint(1, max_output) for _ in range(N)]
    prediction = [o * math.exp(rng.gauss(0.0, 0.7)) for o in output]
    return arrival, prompt, output, prediction


POLICY_VARIANTS = {
    "fcfs": {}, "las": {}, "sjf": {}, "psjf": {}, "srpt": {}, "spjf": {}, "pspjf": {},
    "sprpt": {}, "sprpt-bounce": {}, "sprpt-limited": {"c": 0.5}, "sjf-prompt": {},
    "onebit": {"threshold": 5.0, "preemptive": False},
    "onebit-preemptive": {"threshold": 5.0, "preemptive": True},
    "linear": {"w_prediction": 0.3, "w_remaining": 1.0, "w_attained": 0.2, "w_age": 0.1,
               "w_prompt": 0.05, "w_kv": 0.01, "w_peak": 0.02, "preemptive": False},
    "linear-preemptive": {"w_prediction": 0.3, "w_remaining": 1.0, "w_attained": 0.2,
                          "w_age": -0.1, "w_prompt": 0.05, "w_kv": 0.01, "w_peak": 0.02,
                          "preemptive": True},
}
assert {v.split("-preemptive")[0] for v in POLICY_VARIANTS} == set(POLICIES)


def pressured_config(variant, preemption, admission, **kw):
    params = dict(kv_capacity=24, block_size=2, max_seqs=5, max_batched_tokens=16,
                  host_capacity=10, max_output=8, **POLICY_VARIANTS[variant])
    return ReferenceConfig(policy=variant.replace("-preemptive", ""), preemption=preemption,
                           admission=admission, **{**params, **kw})


def check_invariants(arrival, prompt, output, cfg, r):
    N = len(arrival)
    b = cfg.block_size
    C = cfg.kv_capacity // b
    C_host = cfg.host_capacity // b
    assert r.iterations == len(r.log)
    processed = [0] * N
    dropped = [0] * N
    hits = [0] * N
    preempted = [0] * N
    last = -math.inf
    for e in r.log:
        assert e["kv_blocks"] <= C
        assert e["kv_tokens"] <= C * b
        assert e["host_blocks"] <= C_host
        assert 1 <= len(e["batch"]) <= cfg.max_seqs
        assert len(set(e["batch"])) == len(e["batch"])
        assert 1 <= e["tokens"] == sum(e["q"]) <= cfg.max_batched_tokens
        assert all(q >= 1 for q in e["q"])
        assert e["dt"] > 0 and e["time"] > last
        last = e["time"]
        assert not set(e["preempted"]) & set(e["batch"])
        assert sorted(e["swapped_out"] + e["recomputed"]) == sorted(e["preempted"])
        if cfg.preemption == "recompute":
            assert e["swapped_out"] == [] and e["swapped_in"] == []
        for i, q, h in zip(e["batch"], e["q"], e["prefix_hit"]):
            processed[i] += q
            hits[i] += h
            assert arrival[i] <= e["time"]
            assert h == 0 or (cfg.prefix_cache and h % b == 0)
        for i, n in zip(e["recomputed"], e["recomputed_n"]):
            dropped[i] += n
        for i in e["preempted"]:
            preempted[i] += 1
    for i in range(N):
        assert r.finish_time[i] is not None and r.first_token_time[i] is not None
        assert r.finish_time[i] >= r.first_token_time[i] >= arrival[i]
        assert processed[i] + hits[i] == prompt[i] + output[i] - 1 + dropped[i], i
        if output[i] == 1:
            assert r.finish_time[i] == r.first_token_time[i]
    assert r.preemptions == preempted
    assert r.total_preemptions == sum(preempted)
    assert r.recomputed_tokens == sum(dropped)
    assert r.prefix_hit_tokens == sum(hits) <= r.recomputed_tokens
    assert r.swapped_tokens == sum(e["swap_tokens"] for e in r.log)
    if cfg.preemption == "recompute":
        assert r.swapped_tokens == 0
    assert r.peak_kv_tokens == max(e["kv_tokens_during"] for e in r.log)
    assert r.peak_kv_tokens <= cfg.kv_capacity
    # Each finish time is the end of the iteration where the request is listed as finished.
    for e in r.log:
        for i in e["finished"]:
            assert r.finish_time[i] == e["time"]
    # Replay every request's n and location from the log alone and compare the memory figures.
    n = [0] * N
    where = ["nowhere"] * N
    last_dropped = [0] * N
    for e in r.log:
        for i in e["swapped_in"]:
            assert where[i] == "swapped"
        for i in e["swapped_out"]:
            assert where[i] == "resident"
            where[i] = "swapped"
        for i, dropped_n in zip(e["recomputed"], e["recomputed_n"]):
            assert where[i] == "resident" and n[i] == dropped_n
            n[i], where[i], last_dropped[i] = 0, "nowhere", dropped_n
        for i, q, h in zip(e["batch"], e["q"], e["prefix_hit"]):
            # A hit is a leading part of the KV the request's last recompute dropped.
            assert h == 0 or (where[i] == "nowhere" and h <= last_dropped[i])
            n[i] += h + q
            where[i] = "resident"
        for i in e["finished"]:
            assert n[i] == prompt[i] + output[i] - 1
            where[i] = "done"
        resident = [i for i in range(N) if where[i] == "resident"]
        swapped = [i for i in range(N) if where[i] == "swapped"]
        assert e["kv_tokens"] == sum(n[i] for i in resident)
        assert e["kv_blocks"] == sum(-(-n[i] // b) for i in resident)
        assert e["host_blocks"] == sum(-(-n[i] // b) for i in swapped)
    assert where == ["done"] * N


@pytest.mark.parametrize("variant", list(POLICY_VARIANTS))
def test_invariants_random(variant):
    totals = {}
    for preemption, admission in itertools.product(PREEMPTION_MODES, ADMISSION_MODES):
        n_preempt = n_swapped = 0
        for seed in range(4):
            arrival, prompt, output, prediction = random_trace(seed)
            cfg = pressured_config(variant, preemption, admission)
            r = run_reference(arrival, prompt, output, prediction, cfg)
            check_invariants(arrival, prompt, output, cfg, r)
            n_preempt += r.total_preemptions
            n_swapped += r.swapped_tokens
        totals[preemption, admission] = (n_preempt, n_swapped)
    # Memory pressure: optimistic admission overcommits, so preemptions happen.
    for preemption in PREEMPTION_MODES:
        assert totals[preemption, "optimistic"][0] > 0, totals
    assert totals["swap", "optimistic"][1] > 0, totals


def test_invariants_with_refinement_aging_and_blocks():
    hit_tokens = 0
    for seed, variant in itertools.product(range(3), POLICY_VARIANTS):
        arrival, prompt, output, prediction = random_trace(100 + seed, N=12)
        rng = random.Random(seed)
        draws = {}

        def multiplier(i, m):
            return draws.setdefault((i, m), math.exp(rng.gauss(0.0, 0.5)))

        for preemption, admission, cache in itertools.product(PREEMPTION_MODES, ADMISSION_MODES,
                                                              (False, True)):
            cfg = pressured_config(variant, preemption, admission, block_size=3, kv_capacity=25,
                                   host_capacity=7, aging=0.3, refine_every=2,
                                   refine_multiplier=multiplier, prefix_cache=cache)
            r = run_reference(arrival, prompt, output, prediction, cfg)
            check_invariants(arrival, prompt, output, cfg, r)
            hit_tokens += r.prefix_hit_tokens
    assert hit_tokens > 0  # the prefix cache was exercised


def test_reserve_modes_reduce_preemption_for_fcfs():
    # fcfs puts resident requests first; with reserve-max and max_output >= every O, a waiting
    # request is admitted only if the peaks of everyone ahead plus its own fit, so nothing is ever
    # preempted. Optimistic admission on the same traces does preempt.
    opt = 0
    for seed in range(6):
        arrival, prompt, output, prediction = random_trace(seed)
        r = run_reference(arrival, prompt, output, prediction,
                          pressured_config("fcfs", "recompute", "reserve-max", max_output=10))
        assert r.total_preemptions == 0
        r = run_reference(arrival, prompt, output, prediction,
                          pressured_config("fcfs", "recompute", "optimistic"))
        opt += r.total_preemptions
    assert opt > 0


# --------------------------------------------------------------------------------------------
# Equivalences implied by the model
# --------------------------------------------------------------------------------------------

def same_result(a, b):
    return (a.first_token_time == b.first_token_time and a.finish_time == b.finish_time
            and a.preemptions == b.preemptions and a.iterations == b.iterations)


@pytest.mark.parametrize("preemption", PREEMPTION_MODES)
def test_policy_equivalences(preemption):
    for seed in range(5):
        arrival, prompt, output, prediction = random_trace(seed)
        exact = [float(o) for o in output]

        def run(policy, pred=prediction, prm=prompt, **kw):
            cfg = pressured_config("fcfs", preemption, "optimistic", **kw)
            cfg = dataclasses.replace(cfg, policy=policy)
            return run_reference(arrival, prm, output, pred, cfg)

        # Perfect predictions turn the prediction policies into their clairvoyant versions.
        assert same_result(run("spjf", exact), run("sjf", exact))
        assert same_result(run("pspjf", exact), run("psjf", exact))
        assert same_result(run("sprpt", exact), run("srpt", exact))
        # linear with the weights of sprpt (preemptive) and spjf (non-preemptive).
        assert same_result(run("linear", preemptive=True), run("sprpt"))
        assert same_result(run("linear", w_prediction=1.0, w_remaining=0.0, preemptive=False),
                           run("spjf"))
        # sjf-prompt with equal prompts is fcfs.
        flat = [5] * len(prompt)
        assert same_result(run("sjf-prompt", prm=flat), run("fcfs", prm=flat))
        # onebit with everything long (non-preemptive) is fcfs.
        assert same_result(run("onebit", threshold=0.0), run("fcfs"))
        # sprpt-limited with c huge never locks: sprpt.
        assert same_result(run("sprpt-limited", c=1e9), run("sprpt"))


def test_empty_and_bad_inputs():
    r = run_reference([], [], [], [], ReferenceConfig())
    assert r.iterations == 0 and r.finish_time == []
    with pytest.raises(ValueError):
        run_reference([1.0, 0.0], [1, 1], [1, 1], [1.0, 1.0], ReferenceConfig())
    with pytest.raises(ValueError):
        run_reference([0.0], [1], [1], [0.0], ReferenceConfig())
    with pytest.raises(ValueError):
        run_reference([0.0], [0], [1], [1.0], ReferenceConfig())
    with pytest.raises(ValueError):
        run_reference([0.0], [1], [1], [1.0], ReferenceConfig(policy="nope"))
