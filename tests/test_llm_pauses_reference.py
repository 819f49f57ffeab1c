"""Tests of the plain-Python reference of requests that pause for a tool call (augmented LLMs;
tests/llm_reference.py, choices 27 to 34): golden cases worked out by hand for every pause_kv
mode, invariants on random traces with random pauses, a one-instance cluster with pauses, and the
validation of the pause arguments."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from fractions import Fraction

import pytest

from llm_reference import (PAUSE_KV_MODES, PREEMPTION_MODES, ROUTERS, ReferenceConfig,
                           run_cluster_reference, run_reference)
from test_llm_reference import pressured_config, random_trace


# dt = 1 + 0.25 * prefill tokens + 0.125 * decoding requests (+ swap_per_token * swapped tokens
# where stated); memory and budgets large unless stated. Every figure below is a binary fraction,
# so times and paused_kv_token_seconds are exact and compared with ==.
DYADIC = dict(iter_base=1.0, iter_per_prefill_token=0.25, iter_per_decode_seq=0.125,
              iter_per_kv_token=0.0, swap_per_token=0.0)


def assert_times(result, first, finish):
    assert result.first_token_time == first
    assert result.finish_time == finish


# --------------------------------------------------------------------------------------------
# Golden cases: one request, one pause
# --------------------------------------------------------------------------------------------

def _one_pause(pause_kv, **kw):
    # A: arrival 0, P = 2, O = 3, one pause after its first token: (at 1, 4 s, predicted 4 s).
    cfg = ReferenceConfig(pause_kv=pause_kv, **{**DYADIC, **kw})
    return run_reference([0.0], [2], [3], [3.0], cfg, [[(1, 4.0, 4.0)]])


def test_one_pause_keep():
    # t = 0: prefill 2 tokens: dt = 1 + 0.5 = 1.5 -> 1.5, g = 1 = at: A pauses at 1.5, returns at
    #   1.5 + 4 = 5.5.
    # Boundary 1.5: keep (n = 2 stays on the GPU). No unpaused request: an idle boundary, the
    #   engine jumps to the return, 5.5. Paused KV: 2 tokens * (5.5 - 1.5) = 8 token-seconds.
    # 5.5: A returns, resident, u = 1: decode, dt = 1.125 -> 6.625 (g = 2); decode -> 7.75 (g = 3).
    r = _one_pause("keep")
    assert_times(r, [1.5], [7.75])
    assert r.iterations == 3 and r.pauses == 1
    assert r.paused_kv_token_seconds == 8.0
    assert r.discarded_tokens == 0 and r.swapped_tokens == 0 and r.total_preemptions == 0
    assert r.log[0]["pausing"] == [0]
    assert [e["start"] for e in r.log] == [0.0, 5.5, 6.625]
    assert [e["kv_tokens"] for e in r.log] == [2, 3, 0]
    assert len(r.jumps) == 1
    jump = r.jumps[0]
    assert (jump["time"], jump["until"]) == (1.5, 5.5)
    assert jump["paused"] == [0] and jump["pause_kept"] == [0]
    assert jump["paused_kv_tokens"] == 2 and jump["kv_blocks"] == 2
    # Latency includes the pause: 7.75 = 1.5 + 4 + 2 * 1.125.
    assert r.finish_time[0] - 0.0 >= 4.0


def test_one_pause_discard():
    # As keep until 1.5, where A's n = 2 is dropped (not a preemption): discarded_tokens 2.
    # 5.5: A recomputes P + g = 3 tokens: dt = 1 + 0.75 = 1.75 -> 7.25 (g = 2); decode: 1.125
    #   -> 8.375. Nothing is held on the GPU while paused.
    r = _one_pause("discard")
    assert_times(r, [1.5], [8.375])
    assert r.discarded_tokens == 2 and r.recomputed_tokens == 0
    assert r.total_preemptions == 0 and r.preemptions == [0]
    assert r.paused_kv_token_seconds == 0.0
    assert r.jumps[0]["pause_discarded"] == [0] and r.jumps[0]["pause_discarded_n"] == [2]
    assert r.jumps[0]["kv_tokens"] == 0
    assert r.log[1]["q"] == [3] and r.log[1]["prefill_tokens"] == 3


def test_one_pause_swap():
    # Host 4 tokens, swap_per_token 0.25.
    # 1.5: A's 2 tokens go to the host (2 blocks <= 4 free). 1.5 is an idle boundary: no
    #   iteration runs, so the swap-out costs no time (choice 33) but counts 2 swapped tokens.
    # 5.5: A is swapped: swapped in (2 tokens) as it decodes: dt = 1 + 0.125 + 0.25 * 2 = 1.625
    #   -> 7.125; decode: 1.125 -> 8.25. swapped_tokens = 2 out + 2 in.
    r = _one_pause("swap", host_capacity=4, swap_per_token=0.25)
    assert_times(r, [1.5], [8.25])
    assert r.swapped_tokens == 4 and r.discarded_tokens == 0 and r.total_preemptions == 0
    assert r.jumps[0]["pause_swapped"] == [0] and r.jumps[0]["swap_tokens"] == 2
    assert r.jumps[0]["host_blocks"] == 2 and r.jumps[0]["kv_tokens"] == 0
    assert r.log[1]["swapped_in"] == [0] and r.log[1]["swap_tokens"] == 2
    assert r.log[1]["swapped_out"] == []  # a pause is not a preemption
    assert r.paused_kv_token_seconds == 0.0
    # A host of 1 token has no room for 2: discarded instead (the discard case's times).
    r = _one_pause("swap", host_capacity=1, swap_per_token=0.25)
    assert_times(r, [1.5], [8.375])
    assert r.discarded_tokens == 2 and r.swapped_tokens == 0


def test_pause_of_zero_seconds():
    # A zero-second pause starts and ends at the same boundary (choice 28): under swap (host 4,
    # 0.25 per token) A goes out and comes back in the same iteration, paying both ways.
    # 1.5: out 2, A returns (1.5 + 0 <= 1.5), decodes with its swap-in:
    #   dt = 1 + 0.125 + 0.25 * (2 + 2) = 2.125 -> 3.625; decode -> 4.75.
    cfg = ReferenceConfig(pause_kv="swap", host_capacity=4, **{**DYADIC, "swap_per_token": 0.25})
    r = run_reference([0.0], [2], [3], [3.0], cfg, [[(1, 0.0, 1.0)]])
    assert_times(r, [1.5], [4.75])
    assert r.jumps == [] and r.pauses == 1
    assert r.log[1]["pause_swapped"] == [0] and r.log[1]["swapped_in"] == [0]
    assert r.log[1]["swap_tokens"] == 4 and r.log[1]["paused"] == []


# --------------------------------------------------------------------------------------------
# Golden cases: two requests
# --------------------------------------------------------------------------------------------

def _paused_and_running(**kw):
    # A: arrival 0, P = 2, O = 3, pauses after token 1 for 4 s. B: arrival 0, P = 2, O = 4. fcfs.
    cfg = ReferenceConfig(**{**DYADIC, **kw})
    return run_reference([0.0, 0.0], [2, 2], [3, 4], [3.0, 4.0], cfg, [[(1, 4.0, 4.0)], []])


def test_other_request_runs_alone_while_one_is_kept():
    # t = 0: both prefill, 4 tokens: dt = 2 -> 2, both g = 1; A pauses until 6.
    # 2: keep A (n = 2). Order: B (class 0: resident, locked), A (class 2: paused). B decodes
    #   alone: 1.125 -> 3.125, 4.25, 5.375 (g = 4, finished). A holds 2 tokens during each:
    #   3 * 2 * 1.125 = 6.75 token-seconds. A is resident at position L + 1 = 2 with q = 1 but
    #   paused, so the "cannot grow" rule does not preempt it; the keep rule keeps it.
    # 5.375: only A, paused: an idle boundary; jump to 6: 2 * 0.625 = 1.25 more (8 in all: its
    #   2 tokens for the 4 seconds of the pause).
    # 6: A decodes: 7.125, 8.25.
    r = _paused_and_running()
    assert_times(r, [2.0, 2.0], [8.25, 5.375])
    assert [e["batch"] for e in r.log] == [[0, 1], [1], [1], [1], [0], [0]]
    assert [e["paused"] for e in r.log] == [[], [0], [0], [0], [], []]
    assert [e["paused_kv_tokens"] for e in r.log] == [0, 2, 2, 2, 0, 0]
    assert r.log[1]["pause_kept"] == [0]
    assert [(j["time"], j["until"], j["pause_kept"]) for j in r.jumps] == [(5.375, 6.0, [])]
    assert r.paused_kv_token_seconds == 8.0
    assert r.total_preemptions == 0


def test_keep_rule_preempts_the_paused_request_when_memory_is_short():
    # As above with kv_capacity 6 (b = 1). The kept A never holds B back (it ranks last); instead
    # the keep rule drops it when B needs the memory:
    # 2: B grows 2 -> 3: D = 1, H = 2: 3; A: D + H_2 = 3 + 2 = 5 <= 6, kept. -> 3.125.
    # 3.125: B 3 -> 4: D + H = 1 + 3 = 4; A: 4 + 2 = 6 <= 6, kept. -> 4.25.
    # 4.25: B 4 -> 5: D + H = 1 + 4 = 5; A: 5 + 2 = 7 > 6: preempted (recompute, n = 2: one
    #   preemption, 2 recomputed tokens), still paused. B: -> 5.375, finished.
    #   Paused KV: 2 * 1.125 * 2 (iterations at 2 and 3.125) = 4.5; none after.
    # 5.375: idle boundary, jump to 6. 6: A recomputes P + g = 3: 1.75 -> 7.75; decode -> 8.875.
    r = _paused_and_running(kv_capacity=6)
    assert_times(r, [2.0, 2.0], [8.875, 5.375])
    assert r.preemptions == [1, 0] and r.recomputed_tokens == 2 and r.discarded_tokens == 0
    assert r.log[3]["preempted"] == [0] and r.log[3]["paused"] == [0]
    assert [e["paused_kv_tokens"] for e in r.log] == [0, 2, 2, 0, 0, 0]
    assert r.paused_kv_token_seconds == 4.5
    # Preemption by swap (host 2, 0.25 per token): at 4.25 A goes to the host, costed in that
    #   iteration: 1.125 + 0.5 = 1.625 -> 5.875 (B finished). Idle boundary, jump to 6.
    # 6: A swapped in and decodes: 1.625 -> 7.625; decode -> 8.75.
    r = _paused_and_running(kv_capacity=6, preemption="swap", host_capacity=2,
                            swap_per_token=0.25)
    assert_times(r, [2.0, 2.0], [8.75, 5.875])
    assert r.preemptions == [1, 0] and r.log[3]["swapped_out"] == [0]
    assert r.swapped_tokens == 4 and r.log[4]["swapped_in"] == [0]


def test_swap_at_a_boundary_with_an_iteration_is_costed():
    # pause_kv swap, host 4, 0.25 per token. 2: A's 2 tokens go out in B's iteration:
    #   dt = 1 + 0.125 + 0.25 * 2 = 1.625 -> 3.625; B: 4.75, 5.875 (finished).
    # 5.875: idle boundary (A paused until 6, no decision left), jump to 6.
    # 6: A swapped in (2 tokens) and decodes: 1.625 -> 7.625; decode -> 8.75.
    r = _paused_and_running(pause_kv="swap", host_capacity=4, swap_per_token=0.25)
    assert_times(r, [2.0, 2.0], [8.75, 5.875])
    assert r.log[1]["pause_swapped"] == [0] and r.log[1]["swap_tokens"] == 2
    assert r.log[1]["host_blocks"] == 2 and r.log[1]["swapped_out"] == []
    assert r.log[4]["swapped_in"] == [0] and r.log[4]["swap_tokens"] == 2
    assert r.swapped_tokens == 4 and r.paused_kv_token_seconds == 0.0
    assert [(j["time"], j["until"], j["host_blocks"]) for j in r.jumps] == [(5.875, 6.0, 2)]


def test_auto_keeps_a_short_call_and_drops_a_long_one():
    # kv_capacity 8, keep_seconds 1. A: P = 2, O = 3, pause (1, 8 s, predicted 8);
    # B: P = 2, O = 3, pause (1, 1 s, predicted 2). Both prefill: 2 -> both pause at 2.
    # 2: F = 8 - (2 + 2) = 4, once for both. A: n = 2, 8 * 2 = 16 > 1 * 4: under recompute,
    #   discarded. B: 2 * 2 = 4 <= 4: kept (F is not raised by A's discard: with predicted
    #   2.5, 5 > 4, B would be dropped too).
    # Idle boundary, jump to B's return, 3: 2 token-seconds.
    # 3: B decodes: 4.125, 5.25 (finished). 5.25: idle boundary (A paused until 10).
    # 10: A recomputes 3 tokens: 1.75 -> 11.75; decode -> 12.875.
    cfg = ReferenceConfig(kv_capacity=8, pause_kv="auto", keep_seconds=1.0, **DYADIC)
    args = ([0.0, 0.0], [2, 2], [3, 3], [3.0, 3.0], cfg, [[(1, 8.0, 8.0)], [(1, 1.0, 2.0)]])
    r = run_reference(*args)
    assert_times(r, [2.0, 2.0], [12.875, 5.25])
    assert r.log[0]["pausing"] == [0, 1]
    assert r.jumps[0]["pause_discarded"] == [0] and r.jumps[0]["pause_kept"] == [1]
    assert [(j["time"], j["until"]) for j in r.jumps] == [(2.0, 3.0), (5.25, 10.0)]
    assert r.discarded_tokens == 2 and r.paused_kv_token_seconds == 2.0 and r.pauses == 2
    # keep_seconds 0.5: B needs 4 <= 0.5 * 4: no, both dropped.
    r = run_reference(*args[:4], dataclasses.replace(cfg, keep_seconds=0.5), args[5])
    assert r.jumps[0]["pause_discarded"] == [0, 1] and r.discarded_tokens == 4
    r = run_reference(*args[:4], cfg, [[(1, 8.0, 8.0)], [(1, 1.0, 2.5)]])
    assert r.jumps[0]["pause_discarded"] == [0, 1]
    # Under preemption swap (host 2, 0.25 per token) the long one is swapped out (free: an
    #   idle boundary). 10: swapped in with its decode: 1.125 + 0.5 = 1.625 -> 11.625; -> 12.75.
    swap = dataclasses.replace(cfg, preemption="swap", host_capacity=2, swap_per_token=0.25)
    r = run_reference(*args[:4], swap, args[5])
    assert_times(r, [2.0, 2.0], [12.75, 5.25])
    assert r.jumps[0]["pause_swapped"] == [0] and r.jumps[0]["pause_kept"] == [1]
    assert r.swapped_tokens == 4 and r.discarded_tokens == 0
    # With no host room it is discarded, as under recompute.
    r = run_reference(*args[:4], dataclasses.replace(swap, host_capacity=0), args[5])
    assert_times(r, [2.0, 2.0], [12.875, 5.25])


def test_two_pauses_of_one_request():
    # A: P = 2, O = 4, pauses (1, 2 s) and (3, 0.5 s), keep.
    # 0: prefill -> 1.5 (g = 1), pauses until 3.5: jump, 2 tokens * 2 s = 4.
    # 3.5: decode -> 4.625 (g = 2); decode -> 5.75 (g = 3 = the second at): pauses until 6.25:
    #   jump, 4 tokens * 0.5 s = 2. 6.25: decode -> 7.375 (g = 4, finished).
    r = run_reference([0.0], [2], [4], [3.0], ReferenceConfig(**DYADIC),
                      [[(1, 2.0, 1.0), (3, 0.5, 1.0)]])
    assert_times(r, [1.5], [7.375])
    assert r.pauses == 2 and r.paused_kv_token_seconds == 6.0
    assert [e["pausing"] for e in r.log] == [[0], [], [0], []]
    assert [(j["time"], j["until"], j["paused_kv_tokens"]) for j in r.jumps] == [
        (1.5, 3.5, 2), (5.75, 6.25, 4)]


def test_return_exactly_at_a_boundary():
    # A: P = 2, O = 3, pause (1, 2.25 s); B: P = 2, O = 5; fcfs.
    # 0: both prefill -> 2; A paused until 4.25. B decodes alone: 3.125, 4.25.
    # 4.25 is a boundary and A's return time: A returns there. Both resident and locked, order
    #   A, B: two decodes, dt = 1.25 -> 5.5, 6.75 (both finished).
    r = run_reference([0.0, 0.0], [2, 2], [3, 5], [3.0, 5.0], ReferenceConfig(**DYADIC),
                      [[(1, 2.25, 1.0)], []])
    assert_times(r, [2.0, 2.0], [6.75, 6.75])
    assert [e["batch"] for e in r.log] == [[0, 1], [1], [1], [0, 1], [0, 1]]
    assert r.log[3]["start"] == 4.25 and r.log[3]["paused"] == []
    assert r.paused_kv_token_seconds == 4.5  # 2 tokens * (4.25 - 2)
    # Returning at 4.375 instead, during B's iteration 4.25 -> 5.375: A waits for 5.375.
    #   B: 3.125, 4.25, 5.375; both decode -> 6.625 (B's 5th token); A decodes -> 7.75.
    r = run_reference([0.0, 0.0], [2, 2], [3, 5], [3.0, 5.0], ReferenceConfig(**DYADIC),
                      [[(1, 2.375, 1.0)], []])
    assert_times(r, [2.0, 2.0], [7.75, 6.625])
    assert r.log[3]["paused"] == [0] and r.log[4]["batch"] == [0, 1]
    assert r.paused_kv_token_seconds == 6.75  # 2 tokens * (5.375 - 2)


def test_arrival_during_a_jump():
    # A: P = 2, O = 3, pause (1, 4 s), keep; B: arrives at 3, P = 2, O = 1.
    # 0: A prefill -> 1.5, paused until 5.5: idle boundary; the jump ends at B's arrival, 3
    #   (2 tokens * 1.5 s). 3: B prefill 2 -> 4.5, finished (A held: 2 * 1.5).
    # 4.5: idle boundary (A still paused), jump to 5.5 (2 * 1). 5.5: A decodes: 6.625, 7.75.
    r = run_reference([0.0, 3.0], [2, 2], [3, 1], [3.0, 1.0], ReferenceConfig(**DYADIC),
                      [[(1, 4.0, 4.0)], []])
    assert_times(r, [1.5, 4.5], [7.75, 4.5])
    assert [(j["time"], j["until"]) for j in r.jumps] == [(1.5, 3.0), (4.5, 5.5)]
    assert r.jumps[1]["pause_kept"] == [] and r.paused_kv_token_seconds == 8.0


# --------------------------------------------------------------------------------------------
# Invariants on random traces with random pauses
# --------------------------------------------------------------------------------------------

def random_pauses(seed, output):
    """0 to 2 pauses per request (fewer when O is small): zero, short and long calls, with a
    noisy prediction."""
    rng = random.Random(1000 + seed)
    pauses = []
    for o in output:
        k = rng.randint(0, min(2, o - 1))
        plist = []
        for at in sorted(rng.sample(range(1, o), k)):
            seconds = rng.choice([0.0, rng.expovariate(1 / 0.03), rng.expovariate(1 / 0.5)])
            predicted = max(seconds, 1e-3) * math.exp(rng.gauss(0.0, 0.5))
            plist.append((at, seconds, predicted))
        pauses.append(plist)
    return pauses


def check_pause_invariants(arrival, prompt, output, pauses, cfg, r):
    """Replays every request's KV from the log and the jumps, in time order, and checks the
    memory figures, the pause decisions, the paused intervals and the counters."""
    N = len(arrival)
    b = cfg.block_size
    C = cfg.kv_capacity // b
    C_host = cfg.host_capacity // b

    def blk(n):
        return -(-n // b)

    n, g = [0] * N, [0] * N
    where = ["nowhere"] * N
    intervals = [[] for _ in range(N)]  # (pause start, return) of each pause started
    deciding: list[int] = []            # paused at the last iteration's end, not decided yet
    processed, dropped, preempted = [0] * N, [0] * N, [0] * N
    decided = {"kept": 0, "discarded": 0, "swapped": 0}
    integral = 0.0
    discarded = swapped = 0

    def paused_at(i, t):
        return any(s <= t < ret for s, ret in intervals[i])

    def in_system_at(t):
        return [i for i in range(N) if arrival[i] <= t and where[i] != "done"]

    def decide(e):
        nonlocal discarded
        kept, disc, sw = e["pause_kept"], e["pause_discarded"], e["pause_swapped"]
        assert sorted(kept + disc + sw) == sorted(deciding)
        for lst in (kept, disc, sw):
            assert lst == sorted(lst)
        for i in kept + disc + sw:
            assert where[i] == "resident"
        for i, dn in zip(disc, e["pause_discarded_n"]):
            assert n[i] == dn
            n[i], where[i] = 0, "nowhere"
            dropped[i] += dn
            discarded += dn
        for i in sw:
            where[i] = "swapped"
        decided["kept"] += len(kept)
        decided["discarded"] += len(disc)
        decided["swapped"] += len(sw)
        if cfg.pause_kv == "keep":
            assert not disc and not sw
        if cfg.pause_kv == "discard":
            assert not kept and not sw
        if cfg.pause_kv == "swap":
            assert not kept
        if cfg.pause_kv == "auto" and cfg.preemption == "recompute":
            assert not sw
        deciding.clear()
        return sum(n[i] for i in sw)

    events = sorted([(e["time"], 0, k) for k, e in enumerate(r.log)]
                    + [(j["time"], 1, k) for k, j in enumerate(r.jumps)])
    for _, kind, k in events:
        if kind == 1:
            # An idle boundary (choice 31): every request in the system is paused.
            j = r.jumps[k]
            t = j["time"]
            out = decide(j)
            assert j["swap_tokens"] == out
            swapped += out
            system = in_system_at(t)
            assert system and all(paused_at(i, t) for i in system)
            assert j["paused"] == system
            held = sum(n[i] for i in system if where[i] == "resident")
            assert j["paused_kv_tokens"] == held == j["kv_tokens"]
            assert j["kv_blocks"] == sum(blk(n[i]) for i in system if where[i] == "resident")
            host = sum(blk(n[i]) for i in range(N) if where[i] == "swapped")
            assert j["host_blocks"] == host <= C_host
            # The jump ends at the earliest return or the next arrival.
            returns = [ret for i in system for s, ret in intervals[i] if s <= t < ret]
            later = [a for a in arrival if a > t]
            assert j["until"] == min(returns + later[:1]) > t
            integral += held * (j["until"] - t)
            continue
        e = r.log[k]
        t = e["start"]
        out = decide(e)
        # Paused during the iteration: exactly those with a pause interval holding its start.
        assert e["paused"] == [i for i in in_system_at(t) if paused_at(i, t)]
        assert not set(e["paused"]) & set(e["batch"]), "a paused request is never in a batch"
        for i in e["batch"]:
            assert not paused_at(i, t) and arrival[i] <= t
        # Preemptions at this boundary (paused requests among them).
        assert sorted(e["swapped_out"] + e["recomputed"]) == sorted(e["preempted"])
        for i in e["swapped_out"]:
            assert where[i] == "resident"
            where[i] = "swapped"
        for i, dn in zip(e["recomputed"], e["recomputed_n"]):
            assert where[i] == "resident" and n[i] == dn
            n[i], where[i] = 0, "nowhere"
            dropped[i] += dn
        for i in e["preempted"]:
            preempted[i] += 1
        host = sum(blk(n[i]) for i in range(N) if where[i] == "swapped")
        assert host <= C_host  # at the boundary, before the swap-ins
        held = sum(n[i] for i in e["paused"] if where[i] == "resident")
        assert e["paused_kv_tokens"] == held
        if held:
            integral += held * e["dt"]
        # The iteration.
        swap_in = 0
        for i, q in zip(e["batch"], e["q"]):
            if where[i] == "swapped":
                assert i in e["swapped_in"]
                swap_in += n[i]
            n[i] += q
            processed[i] += q
            where[i] = "resident"
            if n[i] == prompt[i] + g[i]:
                g[i] += 1
        # Swap tokens: the pause swap-outs, the preemption swap-outs, the swap-ins.
        assert e["swap_tokens"] == out + sum(n[i] for i in e["swapped_out"]) + swap_in
        swapped += e["swap_tokens"]
        during = sum(n[i] for i in range(N) if where[i] == "resident")
        assert e["kv_tokens_during"] == during
        assert sum(blk(n[i]) for i in range(N) if where[i] == "resident") <= C
        for i in e["finished"]:
            assert g[i] == output[i] and n[i] == prompt[i] + output[i] - 1
            where[i] = "done"
        # Pauses starting at the end of this iteration: exactly those whose g reached an `at`.
        for i in e["pausing"]:
            done = len(intervals[i])
            at, seconds, _ = pauses[i][done]
            assert g[i] == at
            intervals[i].append((e["time"], e["time"] + seconds))
        for i in e["batch"]:
            if i not in e["pausing"]:
                assert all(at != g[i] for at, _, _ in pauses[i][len(intervals[i]):])
        deciding.extend(e["pausing"])
        assert e["kv_tokens"] == sum(n[i] for i in range(N) if where[i] == "resident")
        assert e["kv_blocks"] == sum(blk(n[i]) for i in range(N) if where[i] == "resident")
        assert e["kv_blocks"] <= C
        assert e["host_blocks"] == sum(blk(n[i]) for i in range(N) if where[i] == "swapped")
    assert not deciding and where == ["done"] * N

    for i in range(N):
        assert r.finish_time[i] is not None
        assert len(intervals[i]) == len(pauses[i])
        assert r.finish_time[i] - arrival[i] >= sum(s for _, s, _ in pauses[i])
        assert all(ret <= r.finish_time[i] for _, ret in intervals[i])
        assert processed[i] == prompt[i] + output[i] - 1 + dropped[i], i
    assert r.pauses == sum(len(p) for p in pauses)
    assert r.preemptions == preempted and r.total_preemptions == sum(preempted)
    assert r.discarded_tokens == discarded
    assert r.recomputed_tokens == sum(sum(e["recomputed_n"]) for e in r.log)
    assert r.swapped_tokens == swapped
    assert r.peak_kv_tokens <= C * b
    assert r.paused_kv_token_seconds == integral
    return decided


VARIANTS = ("fcfs", "sprpt", "sjf", "las", "onebit-preemptive", "linear")


@pytest.mark.parametrize("pause_kv", PAUSE_KV_MODES)
def test_invariants_random(pause_kv):
    totals = {"kept": 0, "discarded": 0, "swapped": 0, "jumps": 0, "paused_preempted": 0}
    for seed, variant, preemption in itertools.product(range(3), VARIANTS, PREEMPTION_MODES):
        arrival, prompt, output, prediction = random_trace(seed, N=10, rate=20.0)
        pauses = random_pauses(seed, output)
        admission = ("optimistic", "reserve-predicted")[seed % 2]
        cfg = pressured_config(variant, preemption, admission, pause_kv=pause_kv,
                               keep_seconds=0.05, host_capacity=8)
        r = run_reference(arrival, prompt, output, prediction, cfg, pauses)
        decided = check_pause_invariants(arrival, prompt, output, pauses, cfg, r)
        for key in decided:
            totals[key] += decided[key]
        totals["jumps"] += len(r.jumps)
        totals["paused_preempted"] += sum(len(set(e["preempted"]) & set(e["paused"]))
                                          for e in r.log)
    # Every branch was exercised.
    assert totals["jumps"] > 0, totals
    if pause_kv in ("keep", "auto"):
        assert totals["kept"] > 0 and totals["paused_preempted"] > 0, totals
    if pause_kv in ("discard", "swap", "auto"):
        assert totals["discarded"] > 0, totals
    if pause_kv in ("swap", "auto"):
        assert totals["swapped"] > 0, totals


def test_no_pauses_is_the_engine_without_them():
    # pauses=None, lists that are all empty, and any pause_kv / keep_seconds: the same result.
    for seed, variant in itertools.product(range(2), VARIANTS):
        arrival, prompt, output, prediction = random_trace(seed, N=10)
        for preemption in PREEMPTION_MODES:
            cfg = pressured_config(variant, preemption, "optimistic")
            want = dataclasses.asdict(run_reference(arrival, prompt, output, prediction, cfg))
            for pause_kv in PAUSE_KV_MODES:
                other = dataclasses.replace(cfg, pause_kv=pause_kv, keep_seconds=0.0)
                got = run_reference(arrival, prompt, output, prediction, other,
                                    [[] for _ in output])
                assert dataclasses.asdict(got) == want
            assert want["jumps"] == [] and want["pauses"] == 0
            assert want["paused_kv_token_seconds"] == 0.0
    # Empty lists are no pause, accepted with the prefix cache.
    arrival, prompt, output, prediction = random_trace(0, N=8)
    cfg = pressured_config("fcfs", "recompute", "optimistic", prefix_cache=True)
    assert (dataclasses.asdict(run_reference(arrival, prompt, output, prediction, cfg,
                                             [[]] * 8))
            == dataclasses.asdict(run_reference(arrival, prompt, output, prediction, cfg)))


# --------------------------------------------------------------------------------------------
# Clusters
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("router", ROUTERS)
def test_one_instance_cluster_with_pauses_is_run_reference(router):
    # The cluster delivers each request at its arrival, possibly in the middle of a jump
    # (choice 31); the result must be identical, logs and jumps included.
    for seed, pause_kv, preemption in itertools.product(range(2), PAUSE_KV_MODES,
                                                       PREEMPTION_MODES):
        arrival, prompt, output, prediction = random_trace(seed, N=10, rate=20.0)
        pauses = random_pauses(seed, output)
        cfg = pressured_config(("fcfs", "sprpt")[seed], preemption, "optimistic",
                               pause_kv=pause_kv, keep_seconds=0.05)
        want = run_reference(arrival, prompt, output, prediction, cfg, pauses)
        N = len(arrival)
        picks = [[0, 0]] * N if router == "random" else None
        got = run_cluster_reference(arrival, prompt, output, prediction, [cfg], router, picks,
                                    pauses)
        assert dataclasses.asdict(got.instances[0]) == dataclasses.asdict(want)
        assert got.finish_time == want.finish_time
        for name in ("pauses", "discarded_tokens", "paused_kv_token_seconds", "swapped_tokens",
                     "recomputed_tokens", "total_preemptions", "iterations"):
            assert getattr(got, name) == getattr(want, name), name


def test_router_sees_a_paused_request():
    # Two instances (C = 4096 blocks). A: arrival 0, P = 2, O = 3, pause (1, 4 s) -> instance 0
    # (all measures 0, the first); B: arrival 3, P = 2, O = 1, while A is paused on instance 0
    # (choice 34).
    cfg = ReferenceConfig(**DYADIC)
    args = ([0.0, 3.0], [2, 2], [3, 1], [3.0, 1.0])
    pauses = [[(1, 4.0, 4.0)], []]
    r = run_cluster_reference(*args, [cfg, cfg], "least-outstanding", pauses=pauses)
    assert r.instance == [0, 1] and r.seen[1] == [1, 0]
    r = run_cluster_reference(*args, [cfg, cfg], "least-predicted-work", pauses=pauses)
    assert r.instance == [0, 1] and r.seen[1] == [2.0, 0.0]  # max(3 - 1, 1)
    # least-kv: kept, A's 2 tokens count; B goes to instance 1 and A is alone on instance 0:
    #   1.5 -> jump to 5.5 -> 6.625 -> 7.75; B: 3 -> 4.5.
    r = run_cluster_reference(*args, [cfg, cfg], "least-kv", pauses=pauses)
    assert r.instance == [0, 1] and r.seen[1] == [Fraction(2, 4096), Fraction(0)]
    assert_times(r, [1.5, 4.5], [7.75, 4.5])
    assert r.paused_kv_token_seconds == 8.0 and r.pauses == 1
    # Discarded at the idle boundary 1.5 (decided before B is routed at 3): kv [0, 0], so B goes
    #   to instance 0, arriving during its jump: B 3 -> 4.5; 4.5 idle, jump to 5.5; A
    #   recomputes 3 tokens: 1.75 -> 7.25; decode -> 8.375.
    r = run_cluster_reference(*args, [dataclasses.replace(cfg, pause_kv="discard")] * 2,
                              "least-kv", pauses=pauses)
    assert r.instance == [0, 0] and r.seen[1] == [Fraction(0), Fraction(0)]
    assert_times(r, [1.5, 4.5], [8.375, 4.5])
    assert r.discarded_tokens == 2
    assert [(j["time"], j["until"]) for j in r.instances[0].jumps] == [(1.5, 3.0), (4.5, 5.5)]


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pauses", [
    [[(0, 1.0, 1.0)]],                 # at < 1
    [[(3, 1.0, 1.0)]],                 # at = O
    [[(2, 1.0, 1.0), (2, 1.0, 1.0)]],  # not strictly increasing
    [[(2, 1.0, 1.0), (1, 1.0, 1.0)]],
    [[(1.5, 1.0, 1.0)]],               # not an integer
    [[(1, -1.0, 1.0)]],                # negative seconds
    [[(1, math.inf, 1.0)]],
    [[(1, math.nan, 1.0)]],
    [[(1, 1.0, 0.0)]],                 # predicted_seconds must be > 0
    [[(1, 1.0, math.inf)]],
    [[(1, 1.0)]],                      # not a triple
    [[], []],                          # one list per request
])
def test_bad_pauses(pauses):
    with pytest.raises(ValueError):
        run_reference([0.0], [2], [3], [3.0], ReferenceConfig(), pauses)
    with pytest.raises(ValueError):
        run_cluster_reference([0.0], [2], [3], [3.0], [ReferenceConfig()], "round-robin",
                              pauses=pauses)


def test_bad_pause_config():
    pauses = [[(1, 1.0, 1.0)]]
    run_reference([0.0], [2], [3], [3.0], ReferenceConfig(), pauses)  # fine
    with pytest.raises(ValueError):
        run_reference([0.0], [2], [3], [3.0], ReferenceConfig(prefix_cache=True), pauses)
    with pytest.raises(ValueError):
        run_cluster_reference([0.0], [2], [3], [3.0], [ReferenceConfig(prefix_cache=True)],
                              "round-robin", pauses=pauses)
    for bad in (dict(pause_kv="nope"), dict(keep_seconds=-1.0), dict(keep_seconds=math.nan)):
        with pytest.raises(ValueError):
            run_reference([0.0], [2], [3], [3.0], ReferenceConfig(**bad))
        with pytest.raises(ValueError):
            run_reference([0.0], [2], [3], [3.0], ReferenceConfig(**bad), pauses)
    # pause_kv must be equal on every instance of a cluster (it is no INSTANCE_FIELDS field).
    with pytest.raises(ValueError):
        run_cluster_reference([0.0], [2], [3], [3.0],
                              [ReferenceConfig(), ReferenceConfig(pause_kv="discard")],
                              "round-robin", pauses=pauses)
