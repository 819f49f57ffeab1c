"""Reference LLM engine: a slow, plain-Python, iteration-by-iteration simulator of the model in
the "LLM engine model" text (continuous batching, chunked prefill, a hard KV-cache limit,
preemption by recompute or swap, admission modes, prediction refinement, requests that pause for
a tool call), of a cluster of such
engines behind a router (`run_cluster_reference`), and of prefill/decode disaggregation: a pool of
prefill instances handing requests over to a pool of decode instances
(`run_disaggregated_reference`).

The fast JAX engine is tested against this file request by request, so it is written to be checked
by reading, not to be fast: one engine instance (`_Instance`) processes one iteration boundary at
a time (`_Instance.step`: the boundary and the iteration that follows it), with one explicit
record per request, and every quantity of the text (q_i, D_i, H_i, R_i, C, blk) computed under its
own name. Tokens and blocks are Python ints; time is a Python float kept on an absolute clock
`now` (the same clock as the arrival times), and an iteration ends at now + dt.

Choices made where the text leaves room (the most literal reading in each case):

1. The engine starts empty, so the first boundary is the first arrival time (the "time jumps to
   the next arrival" rule applied at the start; there is no separate time origin).
2. q_i = min(u_i, T - (u_1 + ... + u_{i-1})) is computed with the sum of the u's, exactly as
   written. Over the admissible prefix this equals the sum of the q's (only the last admitted
   position can get a partial chunk, and after it every q is < 1).
3. H_i is the sum of blk(n) over the resident requests at positions 1..i (including i), so
   D_i + H_i is the memory of positions 1..i after they grow. For the "keep" rule after position
   L, H_l is the same sum over positions 1..l; it only grows with l, so "keep as long as it fits"
   and "keep each that fits" give the same result (the loop below stops at the first that does not
   fit, as "as long as" says).
4. R_i sums the reservation over all positions 1..i, resident ones included; the condition is only
   checked for a non-resident request at i > 1. ceil(yhat) is math.ceil of the current float
   prediction (the refined one if refinement is on).
5. The special "cannot grow" rule applies when position L + 1 exists, is resident, has
   q_{L+1} >= 1 and L + 1 <= S; then it and every resident request after it are preempted.
   Otherwise the keep rule applies (including when L + 1 is resident but has no token budget or is
   beyond max_seqs).
6. Swap: the host blocks free at the boundary are C_host - (sum of blk(n) over requests swapped at
   the boundary), counting those that are swapped back in during this iteration. The preempted
   requests are walked in rank order; each is swapped while the running sum of swapped blocks fits;
   from the first that does not fit on, all the rest are recomputed (even a smaller one later).
   A request swapped back in pays n * swap_per_token (its host n, before processing q).
7. A request is decoding when g >= 1 and u = 1 (u before the iteration); every other batch member
   is a prefill request and its q counts as prefill tokens. kv attended = sum of (n + q) over the
   batch with n before the iteration (for a swapped request its host n).
8. dt is summed left to right exactly as
   iter_base + iter_per_prefill_token * prefill + iter_per_decode_seq * decode
   + iter_per_kv_token * kv + swap_per_token * swapped.
9. Ranks: age = now - arrival at the boundary. The primary of every policy is a float
   (float(O), float(P), yhat - g, ...); aging is applied as primary - aging * age. linear sums
   its terms left to right in the order the text lists them, with n = KV tokens held at the
   boundary (host tokens for a swapped request, 0 for one with nothing) and peak = P + yhat.
   sprpt-limited is "locked" whenever g > c * yhat, but only a resident locked request is in
   class 0. The `preemptive` flag is shared by onebit and linear and defaults to False for both
   (as the API of this file says; note jaxq.policies.Linear defaults to preemptive=True).
10. A request leaves at the end of the iteration producing token O, and its blocks are freed
    then: the log's "after" figures do not include requests that just finished, but
    peak_kv_tokens (the max of the log's kv_tokens_during) does: it is the memory in use while
    the iteration runs.
11. The first-token time is set once, when g first becomes 1; a recomputed request that produces
    another token later does not change it.
12. Refinement runs right after a token is produced (g < O only), in batch order, and is seen by
    the ranking at the next boundary. refine_multiplier(index, g // refine_every) gives M.
13. Prefix cache (prefix_cache=True): the free blocks are kept as an explicit queue of C blocks,
    each tagged None or (request, j) for the j-th block (from 0) of KV dropped by recompute. At
    a boundary: (a) the preempted requests push their blocks, the lowest-ranked request first;
    a swapped one pushes blk(n) untagged blocks; a recomputed one pushes its partial last block
    (untagged, if n is not a multiple of b), then its n // b full blocks tagged, last first;
    (b) every batch member with a cached prefix takes its tagged blocks out of the queue (the
    hit h is b times the number of its blocks 0, 1, 2, ... present without a gap, computed when
    the batch is formed, where the request counts as holding n = h); (c) the batch's new
    blocks, sum of blk(n + q) - (blocks held, hit blocks included), are popped from the front.
    At the end of the iteration finished requests push blk(n) untagged blocks. The queue's
    length always equals C minus the resident requests' blocks (asserted every iteration).
14. Pending requests: a request delivered to an instance waits, "pending", until the instance's
    next boundary at or after its arrival, and enters then; the pending requests with arrival
    <= the boundary enter in arrival order. The next boundary is `now` (the end of the last
    iteration) while requests are in the system; with none in the system but some pending, it is
    max(now, earliest pending arrival): an empty engine jumps to the arrival (choice 1), and a
    request that arrived during the iteration that emptied the engine starts at that
    iteration's end. run_reference delivers every request at the start; that is the same as
    delivering each at its arrival, since a pending request cannot enter before it.

Cluster (`run_cluster_reference`): I instances behind a router, each exactly the engine above.

15. Instances may differ only in the fields of INSTANCE_FIELDS (limits and costs); every other
    field (policy, its options, aging, preemption, admission, prefix cache, refinement) must be
    equal in all configs (compared with ==, so refine_multiplier must be the same function
    object). Every request must fit alone on every instance (_validate for each).
    Requests keep their global index (0..N-1, arrival order) everywhere: the rank's tiebreak,
    refine_multiplier(index, m), the logs and every result list.
16. Order of events: request r arriving at t is routed (and delivered, for good, as an arrival at
    t) after every instance has processed every boundary strictly before t, each with its
    iteration, and before any boundary at t or later. So a request arriving exactly at a
    boundary's time is routed first and enters at that boundary. The instances are stepped
    earliest next boundary first, ties to the lowest index (they interact only through the
    router, so this order does not change results). Requests with equal arrival times are routed
    one after the other in index order, each seeing the ones before it as pending.
17. What the router sees of an instance: its state after the last iteration it processed, i.e.
    at the end of the iteration in progress at t (an end later than t), or at the end of its last
    iteration if it is idle; requests that finished in that iteration have left.
    outstanding = requests in the system + pending ones (an int). kv = Fraction(sum of blk(n)
    over its resident requests, its C). work = a float summed left to right: max(yhat - g, 1) for
    each request in the system (arrival order), then max(yhat, 1) for each pending one (arrival
    order), with yhat the current prediction (refined if refinement is on).
18. Rules: round-robin: r mod I (picks, if given, are ignored). random: picks[r][0]. The three
    "least" rules: the candidates are picks[r], all of it, in order, duplicates allowed
    (power-of-d with d = len(picks[r])), or 0..I-1 when picks is None; the request goes to the
    first candidate with the least measure (scanning with a strict <). seen[r] holds the measure
    of every instance 0..I-1 (candidates or not) for the "least" rules, None for the others.
19. Results: per request, by global index. Each instance's own ReferenceResult has lists of
    length N in which the requests it did not serve are None (first_token_time, finish_time and
    preemptions alike); its counters and log are its own. The cluster's counters are the sums
    over the instances, peak_kv_tokens the max over them.

Disaggregation (`run_disaggregated_reference`): a prefill pool and a decode pool, each a cluster
as above with its own router; a request is prefilled in the first, its KV moved, and decoded in
the second.

20. Prefill pool: requests arrive at their arrival times and are routed to a prefill instance
    exactly as in a cluster (choices 15 to 18; prefill_picks[r] are request r's candidates).
    Decode pool: the k-th request (0-based) to arrive there is routed with decode_picks[k] (not
    by request index), and round-robin sends it to k mod I (the cluster's r mod I, r being the
    arrival order there too). The predicted-work measure counts max(yhat - g, 1) for a pending
    request, with its current g (1 for a transferred one); in a cluster every pending request
    has g = 0, where this is the max(yhat, 1) of choice 17 (yhat - 0 == yhat exactly).
    All the configs, of both pools, must agree on every field outside INSTANCE_FIELDS, and
    every request must fit alone on every instance of both pools (_validate).
21. A prefill instance (`_Instance(cfg, prefill_only=True)`) is the engine unchanged except that
    a request leaves it at the end of the iteration that produces its first token: that time is
    its first-token time; refinement still runs first if due at g = 1 (choice 12: a token was
    produced and g < O), so the decode pool sees the refined prediction. It leaves exactly as a
    finished request (choice 10: blocks freed at the end of the iteration, pushed untagged with
    the prefix cache; listed in the log's "finished"; its finish time on that instance's own
    ReferenceResult is the time it left). O is not changed: ranks reading O (sjf, srpt, ...)
    see the true O. A request with O == 1 is done there: finish = first token; it never
    reaches the decode pool.
22. Transfer: a request with O >= 2 that leaves a prefill instance at h arrives at the decode
    pool at h + P * transfer_per_token (computed as exactly that float expression), each
    transfer on its own (no contention). It arrives there as a new request record with the
    same global index, P, O and (possibly refined) yhat, g = 1, n = P, located LANDED (its KV
    is neither on that GPU nor in its host memory), no first-token time, no preemptions, and
    `arrival` = its decode-pool arrival (so its age there, choice 9, is its time at the decode
    pool, and it is pending there until the boundary at or after that time, choice 14).
23. Order of events. One event loop over both pools, on the one clock. The next event is the
    least (time, kind, instance index) among: 0, routing the next request (by index) at the
    prefill pool at its arrival; 1, a prefill instance's next boundary; 2, routing the next
    transferred request at the decode pool, the least (decode arrival, index) among those
    handed off so far; 3, a decode instance's next boundary. Every event creates only events
    with a key not below its own (an iteration has dt >= 0 and a transfer takes >= 0), so this
    is a simulation in time order, and: a request arriving at either pool at t is routed after
    every instance of that pool has processed its boundaries strictly before t and before any
    at t (choice 16, for each pool); every transfer arriving at t is known before the first
    one at t is routed (it left at a prefill boundary at or before t: kind 1 before kind 2), so
    ties at the decode pool go by index. Prefill instances never depend on the decode pool, so
    this gives the same result as running the prefill pool to its end first, then the decode
    pool on the transfers sorted by (decode arrival, index).
24. A LANDED request at a decode instance's boundaries is a non-resident request with n = P:
    u = P + g - n = 1, so q <= 1; the batch rule treats it as any non-resident request (D_i adds
    blk(n + q); its whole known sequence blk(P + g) must fit; the admission reservation as for
    any non-resident request). It is never preempted (it is not resident), holds no GPU or host
    blocks, and counts neither in kv (choice 17) nor in the log's kv or host figures. It has no
    cached prefix (choice 13 applies to NOWHERE requests only). When it is in the batch, its KV
    is placed on the GPU at no cost: not a swap-in (no swap tokens, no swap cost, no host
    blocks freed); with the prefix cache its blk(P + 1) blocks are popped from the front like
    any new blocks of the batch. In the iteration's cost it is a decoding request (g >= 1 and
    u == 1) attending n + q = P + 1 tokens. After it, it is RESIDENT, an ordinary request of
    that instance: preempted by recompute it drops its n and recomputes P + g tokens there; by
    swap it goes to that instance's host.
25. First-token time: from the prefill instance; a decode instance never sets one (its requests
    have g >= 1 from the start, and choice 11 sets it when g first becomes 1), so its own
    ReferenceResult has None there for every request. Finish time: from the decode instance
    (the prefill instance when O == 1). Preemptions: at the prefill instance plus at the decode
    instance.
26. Results: per request by global index (decode_instance, decode_arrival and decode_seen None
    when O == 1); each pool's instances have their own ReferenceResults (choice 19); the totals
    are sums over the instances of both pools, peak_kv_tokens the max over them.

Pauses (augmented LLMs: a request that stops for a tool call), in `run_reference` and
`run_cluster_reference` (argument `pauses`; not in the disaggregated pools). pauses[i] is request
i's list of (at, seconds, predicted_seconds), `at` strictly increasing, 1 <= at < O_i,
seconds >= 0, predicted_seconds > 0; config fields pause_kv ("keep", "discard", "swap", "auto")
and keep_seconds (auto's parameter). Without any pause everything above is unchanged. A pause
needs prefix_cache=False (ValueError otherwise; an argument whose lists are all empty is no
pause and is accepted with the prefix cache).

27. Pause start. When in an iteration a request produces its g-th output token and g is the
    `at` of its next pause (g < O, as at < O), it pauses at the end of that iteration, its pause
    start: it is paused until pause start + seconds (its return time, that float sum) and its
    next pause becomes the following one. `pauses` counts the pauses started. Pauses start in
    batch order, after refinement (choice 12) if due at the same token.
28. The KV of a pausing request is decided at the boundary at its pause start (the boundary
    that follows that iteration, at the same instant), first of all at that boundary, for the
    requests that paused at that instant in order of request index:
    keep: it stays on the GPU (resident);
    discard: n dropped (n = 0, NOWHERE; P + g tokens to recompute later): not a preemption, n
    counted in discarded_tokens (not in recomputed_tokens);
    swap: to the host when its blk(n) fit in the host blocks free at that moment, C_host minus
    blk(n) of every swapped request (the earlier pausing requests of this boundary included):
    SWAPPED, its n counted as swap tokens of this boundary (choice 33); else discarded, and so
    is every later one of this boundary that would swap (as choice 6: from the first that does
    not fit on, even a smaller one later);
    auto: kept iff predicted_seconds * n <= keep_seconds * F, F = C * b - (sum of n over the
    resident requests, itself included), computed once at the boundary, before any of its
    pause decisions; else as swap under preemption "swap", as discard under "recompute".
    Then, at the same boundary: the returns (choice 30), then the arrivals (choice 14).
    (A pause of 0 seconds is therefore decided and ends at the same boundary.)
29. While paused a request is in the system but never scheduled. It ranks after every unpaused
    request: class 0 = resident and locked, 1 = every other unpaused request, 2 = paused
    (whether locked or not); within a class by (primary, tiebreak) as in choice 9. A paused
    request is never admissible, so the batch ends at or before the first paused position
    (position 1 is unpaused whenever an iteration runs, choice 31). A resident paused request
    after position L is one of the resident requests of choice 3's keep rule (kept while it
    fits, else preempted: counted as a preemption, recompute or swap as choice 6, and still
    paused); choice 5's "cannot grow" rule also requires that position L + 1 is not paused.
    Hence a kept paused request never keeps an unpaused one out of the batch: it is ranked
    last, and preempted when the memory is needed.
30. Return: at the first boundary at or after its return time (return <= boundary time) the
    request is no longer paused, before the arrivals enter and before ranking, and from then on
    an ordinary request with its g, n and location (resident; swapped: swapped in when
    scheduled, choice 6; NOWHERE: recomputes P + g tokens).
31. Time. While requests are in the system, a boundary happens at the end of every iteration
    (choice 14), even if every request in the system is paused then. A boundary at which no
    request in the system is unpaused (after its pause decisions, returns and arrivals) runs no
    iteration: it is an idle boundary, logged in `jumps`, and the engine jumps from it to the
    next boundary, the earliest of the earliest return time and the next pending arrival (in a
    cluster, a request routed to the instance during the jump is such an arrival). Idle
    boundaries only happen at the end of an iteration, and never two in a row. With no request
    in the system the "engine empty" rule of choice 14 is unchanged.
32. Metric paused_kv_token_seconds: the GPU KV tokens (n of resident requests) held by paused
    requests, integrated over time: for each iteration, those tokens during it (after this
    boundary's pause decisions and preemptions; paused requests do not change during it) * dt;
    for each jump, those tokens after its idle boundary * (next boundary - idle boundary). A
    single float summed in time order, each term an int times a float. Latency (finish -
    arrival) includes the pauses; a paused request produces no tokens.
33. Swap tokens of a pause (choice 28): at a boundary with an iteration they are part of that
    iteration's swap tokens (dt's swap term, swapped_tokens, the log's swap_tokens; not in its
    "swapped_out", which is preemptions only). At an idle boundary no iteration runs: they are
    counted in swapped_tokens and in that jump's swap_tokens, and cost no time (the copy happens
    while the engine is idle).
34. The router (choice 17) sees a paused request as one in the system: it counts in
    outstanding and in predicted work (max(yhat - g, 1)), and its resident blocks in kv. After
    an idle boundary it sees the state after that boundary's pause decisions.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from fractions import Fraction
from typing import Callable

POLICIES = ("fcfs", "las", "sjf", "psjf", "srpt", "spjf", "pspjf", "sprpt", "sprpt-bounce",
            "sprpt-limited", "onebit", "linear", "sjf-prompt")
PREEMPTION_MODES = ("recompute", "swap")
ADMISSION_MODES = ("optimistic", "reserve-predicted", "reserve-max")
ROUTERS = ("round-robin", "random", "least-outstanding", "least-kv", "least-predicted-work")
PAUSE_KV_MODES = ("keep", "discard", "swap", "auto")  # the KV of a paused request (choice 28)
# The config fields in which the instances of a cluster may differ (choice 15).
INSTANCE_FIELDS = ("kv_capacity", "block_size", "max_seqs", "max_batched_tokens", "host_capacity",
                   "max_output", "iter_base", "iter_per_prefill_token", "iter_per_decode_seq",
                   "iter_per_kv_token", "swap_per_token")

# Where a request's KV lives.
NOWHERE = "nowhere"    # n == 0: new, or preempted by recompute
RESIDENT = "resident"  # on the GPU
SWAPPED = "swapped"    # in host memory
LANDED = "landed"      # n == P, moved from a prefill instance, not placed yet (choice 24)


@dataclasses.dataclass(frozen=True)
class ReferenceConfig:
    policy: str = "fcfs"
    c: float = 0.5            # sprpt-limited
    threshold: float = 1.0    # onebit
    preemptive: bool = False  # onebit and linear
    w_prediction: float = 0.0  # linear ...
    w_remaining: float = 1.0
    w_attained: float = 0.0
    w_age: float = 0.0
    w_prompt: float = 0.0
    w_kv: float = 0.0
    w_peak: float = 0.0
    aging: float = 0.0        # any policy: primary - aging * (time in system)
    preemption: str = "recompute"  # or "swap"
    admission: str = "optimistic"  # or "reserve-predicted", "reserve-max"
    kv_capacity: int = 4096
    block_size: int = 1
    max_seqs: int = 256
    max_batched_tokens: int = 2048
    host_capacity: int = 0
    max_output: int = 4096
    iter_base: float = 0.01
    iter_per_prefill_token: float = 1e-4
    iter_per_decode_seq: float = 1e-3
    iter_per_kv_token: float = 1e-6
    swap_per_token: float = 1e-5
    prefix_cache: bool = False  # keep the KV dropped by recompute until its blocks are reused
    refine_every: int = 0     # 0: no refinement
    # (request index, m) -> M for the m-th refinement of that request (m = g // refine_every)
    refine_multiplier: Callable[[int, int], float] | None = None
    pause_kv: str = "keep"    # the KV of a request that pauses (choice 28)
    keep_seconds: float = 1.0  # auto: keep iff predicted_seconds * n <= keep_seconds * F


@dataclasses.dataclass
class ReferenceResult:
    # Per request, by global index; in a cluster, None for the requests this instance did not
    # serve (choice 19). On a prefill instance finish_time is when the request left it (its
    # first-token time, choice 21); a decode instance has no first-token times (choice 25).
    first_token_time: list[float | None]  # absolute
    finish_time: list[float | None]       # absolute
    preemptions: list[int | None]
    iterations: int
    total_preemptions: int
    recomputed_tokens: int         # sum of n dropped by recompute preemptions
    swapped_tokens: int            # tokens moved to or from the host (both directions)
    peak_kv_tokens: int            # max over iterations of resident KV tokens during the iteration
    prefix_hit_tokens: int         # KV tokens found in the prefix cache instead of recomputed
    # One dict per iteration:
    #   start: its boundary's time; time: end of the iteration; dt: its length
    #   batch: request indices in rank order; q: tokens each processed (aligned with batch)
    #   tokens: sum of q; prefill_tokens, decode_seqs, kv_attended: the terms of dt
    #   kv_tokens, kv_blocks: resident KV after the iteration (finished requests freed)
    #   host_blocks: host blocks in use after the iteration
    #   preempted: indices preempted at this boundary (rank order)
    #   swapped_out: the subset swapped to the host; recomputed: the subset recomputed, with
    #   recomputed_n: the n each of those dropped (aligned with recomputed)
    #   swapped_in: batch members that came back from the host; swap_tokens: in + out
    #   finished: indices that produced their last token in this iteration
    #   prefix_hit: tokens each batch member found in the prefix cache (aligned with batch)
    #   With pauses (choices 27 to 33; all empty or 0 without):
    #   paused: indices paused during the iteration (index order); paused_kv_tokens: their
    #   resident KV tokens during it; pause_kept, pause_discarded (with pause_discarded_n, the n
    #   each dropped), pause_swapped: the pause decisions of this boundary (index order);
    #   pausing: indices whose pause starts at the end of this iteration (batch order)
    log: list[dict]
    discarded_tokens: int = 0      # sum of n dropped by pause discards (choice 28)
    pauses: int = 0                # pauses started
    paused_kv_token_seconds: float = 0.0  # GPU KV tokens held by paused requests * time (32)
    # One dict per idle boundary (choice 31): time, until (the next boundary: the jump's end),
    # paused (every request in the system), pause_kept, pause_discarded, pause_discarded_n,
    # pause_swapped, swap_tokens, paused_kv_tokens (held during the jump), kv_tokens, kv_blocks,
    # host_blocks (during the jump)
    jumps: list[dict] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Request:
    index: int
    arrival: float
    P: int
    O: int
    yhat: float
    g: int = 0          # output tokens generated so far
    n: int = 0          # tokens whose KV the request holds
    where: str = NOWHERE
    first_token_time: float | None = None
    finish_time: float | None = None
    preemptions: int = 0
    pauses: tuple = ()            # its (at, seconds, predicted_seconds), choice 27
    next_pause: int = 0           # index in pauses of its next pause
    paused: bool = False
    returns: float = math.inf     # the return time of its current (or last) pause
    pause_predicted: float = 0.0  # predicted_seconds of its current (or last) pause
    deciding: bool = False        # paused at the current instant, its KV not decided yet (28)

    @property
    def u(self) -> int:
        """Known tokens still to be processed."""
        return self.P + self.g - self.n


def _blk(n: int, b: int) -> int:
    """Blocks used by n tokens: ceil(n / b), in integers."""
    return -(-n // b)


def _rank_key(cfg: ReferenceConfig, r: _Request, now: float) -> tuple:
    """(class, primary, tiebreak) of request r at the boundary `now`; lower is served first."""
    age = now - r.arrival
    resident = r.where == RESIDENT
    g, O, P, n, yhat = r.g, r.O, r.P, r.n, r.yhat
    tiebreak = r.index
    p = cfg.policy
    if p == "fcfs":
        primary, locked = 0.0, resident
    elif p == "las":
        primary, locked = float(g), False
    elif p == "sjf":
        primary, locked = float(O), resident
    elif p == "psjf":
        primary, locked = float(O), False
    elif p == "srpt":
        primary, locked = float(O - g), False
    elif p == "spjf":
        primary, locked = yhat, resident
    elif p == "pspjf":
        primary, locked = yhat, False
    elif p == "sprpt":
        primary, locked = yhat - g, False
    elif p == "sprpt-bounce":
        primary, locked = (yhat - g if g < yhat else yhat), False
    elif p == "sprpt-limited":
        primary, locked = yhat - g, g > cfg.c * yhat
    elif p == "onebit":
        short = yhat < cfg.threshold
        primary = 0.0 if short else 1.0
        tiebreak = -r.index if (short and cfg.preemptive) else r.index
        locked = resident and not cfg.preemptive
    elif p == "linear":
        primary = (cfg.w_prediction * yhat + cfg.w_remaining * (yhat - g) + cfg.w_attained * g
                   + cfg.w_age * age + cfg.w_prompt * P + cfg.w_kv * n + cfg.w_peak * (P + yhat))
        locked = resident and not cfg.preemptive
    elif p == "sjf-prompt":
        primary, locked = float(P), resident
    else:  # pragma: no cover - validated before
        raise ValueError(p)
    primary = primary - cfg.aging * age
    if r.paused:
        cls = 2  # after every unpaused request (choice 29)
    else:
        cls = 0 if (resident and locked) else 1
    return (cls, primary, tiebreak)


def _validate(arrival_time, prompt, output, prediction, cfg: ReferenceConfig) -> None:
    N = len(arrival_time)
    if not (len(prompt) == len(output) == len(prediction) == N):
        raise ValueError("arrival_time, prompt, output and prediction must have the same length")
    if cfg.policy not in POLICIES:
        raise ValueError(f"unknown policy {cfg.policy!r}")
    if cfg.preemption not in PREEMPTION_MODES:
        raise ValueError(f"unknown preemption mode {cfg.preemption!r}")
    if cfg.admission not in ADMISSION_MODES:
        raise ValueError(f"unknown admission mode {cfg.admission!r}")
    if cfg.pause_kv not in PAUSE_KV_MODES:
        raise ValueError(f"unknown pause_kv mode {cfg.pause_kv!r}")
    if not (cfg.keep_seconds >= 0 and math.isfinite(cfg.keep_seconds)):
        raise ValueError("keep_seconds must be finite and >= 0")
    for name in ("block_size", "max_seqs", "max_batched_tokens", "max_output"):
        if int(getattr(cfg, name)) < 1:
            raise ValueError(f"{name} must be >= 1")
    if cfg.kv_capacity < 0 or cfg.host_capacity < 0 or cfg.refine_every < 0:
        raise ValueError("kv_capacity, host_capacity and refine_every must be >= 0")
    if cfg.refine_every > 0 and cfg.refine_multiplier is None:
        raise ValueError("refine_every > 0 needs a refine_multiplier")
    b = cfg.block_size
    C = cfg.kv_capacity // b
    for i in range(N):
        if i > 0 and not arrival_time[i] >= arrival_time[i - 1]:
            raise ValueError("arrival times must be non-decreasing")
        if not math.isfinite(arrival_time[i]):
            raise ValueError("arrival times must be finite")
        if int(prompt[i]) < 1 or int(output[i]) < 1:
            raise ValueError(f"request {i}: prompt and output must be >= 1")
        if not (prediction[i] > 0 and math.isfinite(prediction[i])):
            raise ValueError(f"request {i}: prediction must be finite and > 0")
        if _blk(int(prompt[i]) + int(output[i]) - 1, b) > C:
            raise ValueError(f"request {i}: peak KV of {int(prompt[i]) + int(output[i]) - 1} "
                             f"tokens needs more than the {C} blocks of the GPU")


def _validate_pauses(pauses, output, configs: list[ReferenceConfig]) -> None:
    """pauses[i]: request i's (at, seconds, predicted_seconds), at strictly increasing,
    1 <= at < O_i, seconds >= 0, predicted_seconds > 0 (both finite); none with the prefix
    cache."""
    if pauses is None:
        return
    if len(pauses) != len(output):
        raise ValueError("pauses needs one list of pauses per request")
    for i, plist in enumerate(pauses):
        last = 0
        for pause in plist:
            if len(pause) != 3:
                raise ValueError(f"request {i}: a pause is (at, seconds, predicted_seconds)")
            at, seconds, predicted = pause
            if int(at) != at or not last < at < int(output[i]):
                raise ValueError(f"request {i}: pause positions must be integers, strictly "
                                 f"increasing, in 1..O - 1 = {int(output[i]) - 1}")
            if not (seconds >= 0 and math.isfinite(seconds)):
                raise ValueError(f"request {i}: pause seconds must be finite and >= 0")
            if not (predicted > 0 and math.isfinite(predicted)):
                raise ValueError(f"request {i}: predicted pause seconds must be finite and > 0")
            last = at
    if any(pauses) and any(cfg.prefix_cache for cfg in configs):
        raise ValueError("pauses are not supported with the prefix cache")


def _make_requests(arrival_time, prompt, output, prediction, pauses=None) -> list[_Request]:
    return [_Request(index=i, arrival=float(arrival_time[i]), P=int(prompt[i]), O=int(output[i]),
                     yhat=float(prediction[i]),
                     pauses=tuple((int(at), float(s), float(p)) for at, s, p in pauses[i])
                     if pauses is not None else ())
            for i in range(len(arrival_time))]


class _Instance:
    """One engine instance: its requests, its clock and its counters. `deliver` hands it a request
    as an arrival at the request's arrival time; `step` processes its next boundary and the
    iteration that follows (choice 14). With prefill_only, requests leave it with their first
    token (choice 21)."""

    def __init__(self, cfg: ReferenceConfig, prefill_only: bool = False):
        self.cfg = cfg
        self.prefill_only = prefill_only
        self.b = cfg.block_size
        self.C = cfg.kv_capacity // self.b           # GPU blocks
        self.C_host = cfg.host_capacity // self.b    # host blocks
        self.served: list[_Request] = []     # every request delivered here, in arrival order
        self.pending: deque[_Request] = deque()  # delivered, not entered yet, in arrival order
        self.in_system: list[_Request] = []  # entered and not finished, in arrival order
        self.now = -math.inf                 # the end of the last iteration (choice 1)
        self.last_boundary = -math.inf       # the last boundary processed
        self.log: list[dict] = []
        self.recomputed_tokens = 0
        self.swapped_tokens = 0
        self.prefix_hit_tokens = 0
        self.discarded_tokens = 0
        self.pauses = 0
        self.paused_kv_token_seconds = 0.0
        self.jumps: list[dict] = []          # the idle boundaries (choice 31)
        self.jumping = False                 # the last boundary was idle: the engine jumps
        # The free GPU blocks in the order they are reused, front first (choice 13); only kept
        # with the prefix cache on.
        self.free_blocks = deque([None] * self.C)

    def deliver(self, r: _Request) -> None:
        """r arrives here at r.arrival: it is pending until the next boundary at or after then."""
        assert not self.pending or self.pending[-1].arrival <= r.arrival
        assert self.last_boundary < r.arrival, "every boundary before the arrival is processed"
        self.served.append(r)
        self.pending.append(r)

    def has_work(self) -> bool:
        return bool(self.in_system or self.pending)

    def next_boundary(self) -> float:
        """The time of the next boundary (choices 14 and 31); inf without work."""
        if self.in_system:
            if not self.jumping:
                return self.now
            # After an idle boundary: every request in the system is paused (choice 31).
            due = min(r.returns for r in self.in_system)
            if self.pending:
                due = min(due, max(self.now, self.pending[0].arrival))
            return due
        if self.pending:
            return max(self.now, self.pending[0].arrival)
        return math.inf

    # ---- What a router sees (choice 17). ----

    def outstanding(self) -> int:
        return len(self.in_system) + len(self.pending)

    def kv_load(self) -> Fraction:
        b = self.b
        return Fraction(sum(_blk(r.n, b) for r in self.in_system if r.where == RESIDENT), self.C)

    def predicted_work(self) -> float:
        work = 0.0
        for r in self.in_system:
            work += max(r.yhat - r.g, 1.0)
        for r in self.pending:
            work += max(r.yhat - r.g, 1.0)  # g == 0 in a cluster: max(yhat, 1) (choice 20)
        return work

    def cached_prefix(self, r: _Request) -> int:
        """Tokens of r's dropped KV still intact in the free blocks (choice 13)."""
        if not self.cfg.prefix_cache or r.where != NOWHERE:
            return 0
        tags = set(self.free_blocks)
        j = 0
        while (r.index, j) in tags:
            j += 1
        return j * self.b

    def step(self) -> None:
        """The boundary at next_boundary() and the iteration that follows it (none after an
        idle boundary, where every request in the system is paused: choice 31)."""
        cfg = self.cfg
        b, C, C_host = self.b, self.C, self.C_host
        T = cfg.max_batched_tokens
        S = cfg.max_seqs
        in_system = self.in_system
        free_blocks = self.free_blocks

        # ---- The boundary at `now`. ----
        now = self.next_boundary()
        assert now < math.inf, "step() needs work"
        after_jump = self.jumping
        if after_jump:
            # The end of a jump: the paused KV held since the idle boundary (choice 32).
            jump = self.jumps[-1]
            jump["until"] = now
            self.paused_kv_token_seconds += jump["paused_kv_tokens"] * (now - jump["time"])
            self.jumping = False
        else:
            assert now == self.now or not in_system, "time jumps only over paused requests"
        self.last_boundary = now

        # The KV of the requests that paused at this instant, in index order (choice 28).
        pause_kept, pause_discarded, pause_discarded_n, pause_swapped = [], [], [], []
        pause_swap_tokens = 0
        # auto's F: the free KV tokens before any of this boundary's decisions.
        F = C * b - sum(x.n for x in in_system if x.where == RESIDENT)
        host_full = False  # a request found no room: the rest are discarded (as choice 6)
        for r in sorted((r for r in in_system if r.deciding), key=lambda r: r.index):
            assert r.paused and r.where == RESIDENT
            r.deciding = False
            mode = cfg.pause_kv
            if mode == "auto":
                if r.pause_predicted * r.n <= cfg.keep_seconds * F:
                    mode = "keep"
                else:
                    mode = "swap" if cfg.preemption == "swap" else "discard"
            if mode == "swap":
                host_free = C_host - sum(_blk(x.n, b) for x in in_system if x.where == SWAPPED)
                if host_full or _blk(r.n, b) > host_free:
                    mode = "discard"  # no room on the host
                    host_full = True
            if mode == "keep":
                pause_kept.append(r.index)
            elif mode == "swap":
                r.where = SWAPPED
                pause_swap_tokens += r.n
                pause_swapped.append(r.index)
            else:
                self.discarded_tokens += r.n
                pause_discarded.append(r.index)
                pause_discarded_n.append(r.n)
                r.n = 0
                r.where = NOWHERE
        # Returns (choice 30), then arrivals: the pending requests that have arrived by then.
        for r in in_system:
            if r.paused and r.returns <= now:
                r.paused = False
        while self.pending and self.pending[0].arrival <= now:
            in_system.append(self.pending.popleft())
        assert in_system
        paused = sorted(r.index for r in in_system if r.paused)

        if all(r.paused for r in in_system):
            # An idle boundary: no iteration, the engine jumps (choices 31 and 33).
            assert not after_jump and now == self.now, "only at the end of an iteration"
            self.swapped_tokens += pause_swap_tokens
            self.jumping = True
            self.jumps.append({
                "time": now,
                "until": None,  # set at the next boundary
                "paused": paused,
                "pause_kept": pause_kept,
                "pause_discarded": pause_discarded,
                "pause_discarded_n": pause_discarded_n,
                "pause_swapped": pause_swapped,
                "swap_tokens": pause_swap_tokens,
                "paused_kv_tokens": sum(r.n for r in in_system
                                        if r.paused and r.where == RESIDENT),
                "kv_tokens": sum(r.n for r in in_system if r.where == RESIDENT),
                "kv_blocks": sum(_blk(r.n, b) for r in in_system if r.where == RESIDENT),
                "host_blocks": sum(_blk(r.n, b) for r in in_system if r.where == SWAPPED),
            })
            return

        # ---- Ranking: sort by (class, primary, tiebreak). ----
        order = sorted(in_system, key=lambda r: _rank_key(cfg, r, now))

        # ---- Forming the batch: the longest admissible prefix, positions 1..L. ----
        batch: list[tuple[_Request, int]] = []  # (request, q)
        sum_u_before = 0   # u_1 + ... + u_{i-1}
        D = 0              # D_{i-1}, then D_i
        H = 0              # H_{i-1}, then H_i
        R = 0              # R_{i-1}, then R_i
        L = 0
        hits = []          # cached-prefix tokens of each batch member (aligned with batch)
        for i, r in enumerate(order, start=1):
            h = self.cached_prefix(r)
            n = r.n + h    # with a hit the request counts as holding its cached prefix
            u = r.P + r.g - n
            q = min(u, T - sum_u_before)
            resident = r.where == RESIDENT
            if q < 1 or i > S or r.paused:
                break  # (a paused request is never admissible, choice 29)
            D_i = D + (_blk(n + q, b) - _blk(n, b) if resident else _blk(n + q, b))
            H_i = H + (_blk(r.n, b) if resident else 0)
            if cfg.admission == "reserve-predicted":
                R_i = R + min(_blk(r.P + max(math.ceil(r.yhat), r.g + 1) - 1, b), C)
            elif cfg.admission == "reserve-max":
                R_i = R + min(_blk(r.P + max(cfg.max_output, r.g + 1) - 1, b), C)
            else:
                R_i = R
            if D_i + H_i > C:
                break
            if not resident and D + _blk(r.P + r.g, b) + H_i > C:
                break  # its whole known sequence must fit now
            if not resident and i > 1 and cfg.admission != "optimistic" and R_i > C:
                break
            batch.append((r, q))
            hits.append(h)
            sum_u_before += u
            D, H, R = D_i, H_i, R_i
            L = i
        assert L >= 1, "position 1 is always admissible"

        # ---- Which resident requests after position L are preempted. ----
        after = order[L:]
        preempted: list[_Request] = []
        if after:
            nxt = after[0]
            q_next = min(nxt.u, T - sum_u_before)
            cannot_grow = (nxt.where == RESIDENT and q_next >= 1 and L + 1 <= S
                           and not nxt.paused)
        else:
            cannot_grow = False
        if cannot_grow:
            preempted = [r for r in after if r.where == RESIDENT]
        else:
            H_l = H  # H_L
            fits = True
            for r in after:
                if r.where != RESIDENT:
                    continue
                H_l += _blk(r.n, b)
                if fits and D + H_l <= C:
                    continue  # keeps its KV
                fits = False
                preempted.append(r)

        # ---- Preemption: swap while the host has room, recompute from the first that does not
        #      fit on. ----
        host_free = C_host - sum(_blk(r.n, b) for r in in_system if r.where == SWAPPED)
        swapped_out, recomputed, recomputed_n = [], [], []
        swap_out_tokens = 0
        host_used = 0
        may_swap = cfg.preemption == "swap"
        pushes = []  # (request, its n, recomputed?), in rank order
        for r in preempted:
            r.preemptions += 1
            if may_swap and host_used + _blk(r.n, b) <= host_free:
                host_used += _blk(r.n, b)
                swap_out_tokens += r.n
                r.where = SWAPPED
                swapped_out.append(r.index)
                pushes.append((r, r.n, False))
            else:
                may_swap = False
                self.recomputed_tokens += r.n
                recomputed.append(r.index)
                recomputed_n.append(r.n)
                pushes.append((r, r.n, True))
                r.n = 0
                r.where = NOWHERE

        if cfg.prefix_cache:
            # (a) Preempted blocks go to the back, the lowest-ranked request first.
            for r, n, dropped in reversed(pushes):
                if not dropped:
                    free_blocks.extend([None] * _blk(n, b))
                    continue
                free_blocks.extend([None] * (_blk(n, b) - n // b))
                free_blocks.extend((r.index, j) for j in reversed(range(n // b)))
            # (b) Cache hits take their blocks out of the queue.
            held = 0  # blocks the batch holds before processing: resident ones and hits
            for (r, q), h in zip(batch, hits):
                if h:
                    for j in range(h // b):
                        free_blocks.remove((r.index, j))
                    r.n = h
                    self.prefix_hit_tokens += h
                held += _blk(r.n, b) if (r.where == RESIDENT or h) else 0
            # (c) The batch's new blocks come from the front.
            for _ in range(sum(_blk(r.n + q, b) for r, q in batch) - held):
                free_blocks.popleft()

        # ---- The iteration's length. ----
        prefill_tokens = 0
        decode_seqs = 0
        kv_attended = 0
        swap_in_tokens = 0
        swapped_in = []
        for r, q in batch:
            if r.g >= 1 and r.u == 1:
                decode_seqs += 1
            else:
                prefill_tokens += q
            kv_attended += r.n + q
            if r.where == SWAPPED:
                swap_in_tokens += r.n
                swapped_in.append(r.index)
        swap_tokens = swap_out_tokens + swap_in_tokens + pause_swap_tokens  # (choice 33)
        self.swapped_tokens += swap_tokens
        dt = (cfg.iter_base + cfg.iter_per_prefill_token * prefill_tokens
              + cfg.iter_per_decode_seq * decode_seqs + cfg.iter_per_kv_token * kv_attended
              + cfg.swap_per_token * swap_tokens)
        end = now + dt
        # The paused KV held during the iteration (choice 32).
        paused_kv_tokens = sum(r.n for r in in_system if r.paused and r.where == RESIDENT)
        if paused_kv_tokens:
            self.paused_kv_token_seconds += paused_kv_tokens * dt

        # ---- The iteration: everything dated at its end. ----
        done = []
        pausing = []
        for r, q in batch:
            r.n += q
            r.where = RESIDENT
            if r.n == r.P + r.g:
                r.g += 1
                if r.g == 1:
                    r.first_token_time = end
                if r.g == r.O:
                    r.finish_time = end
                    done.append(r)
                elif cfg.refine_every > 0 and r.g % cfg.refine_every == 0:
                    M = float(cfg.refine_multiplier(r.index, r.g // cfg.refine_every))
                    r.yhat = r.g + (r.O - r.g) * M ** ((r.O - r.g) / r.O)
                if (r.g < r.O and r.next_pause < len(r.pauses)
                        and r.g == r.pauses[r.next_pause][0]):
                    # It pauses at the end of this iteration (choice 27).
                    assert not self.prefill_only
                    _, seconds, predicted = r.pauses[r.next_pause]
                    r.next_pause += 1
                    r.paused = True
                    r.deciding = True
                    r.returns = end + seconds
                    r.pause_predicted = predicted
                    self.pauses += 1
                    pausing.append(r.index)
                if self.prefill_only and r.g < r.O:
                    # Its first token (prefill instances see g = 0 only): it leaves as a
                    # finished request does, to the decode pool (choice 21).
                    assert r.g == 1
                    r.finish_time = end
                    done.append(r)
        # The memory in use during the iteration: finishing requests still hold their KV.
        kv_tokens_during = sum(r.n for r in in_system if r.where == RESIDENT)
        for r in done:
            if cfg.prefix_cache:
                free_blocks.extend([None] * _blk(r.n, b))
            in_system.remove(r)
            r.where = NOWHERE  # leaves, freeing its blocks
        self.now = end
        if cfg.prefix_cache:
            assert len(free_blocks) == C - sum(_blk(r.n, b) for r in in_system
                                               if r.where == RESIDENT)

        self.log.append({
            "start": now,
            "time": end,
            "dt": dt,
            "batch": [r.index for r, _ in batch],
            "q": [q for _, q in batch],
            "tokens": sum(q for _, q in batch),
            "prefill_tokens": prefill_tokens,
            "decode_seqs": decode_seqs,
            "kv_attended": kv_attended,
            "kv_tokens_during": kv_tokens_during,
            "kv_tokens": sum(r.n for r in in_system if r.where == RESIDENT),
            "kv_blocks": sum(_blk(r.n, b) for r in in_system if r.where == RESIDENT),
            "host_blocks": sum(_blk(r.n, b) for r in in_system if r.where == SWAPPED),
            "preempted": [r.index for r in preempted],
            "swapped_out": swapped_out,
            "recomputed": recomputed,
            "recomputed_n": recomputed_n,
            "swapped_in": swapped_in,
            "swap_tokens": swap_tokens,
            "finished": [r.index for r in done],
            "prefix_hit": hits,
            "paused": paused,
            "paused_kv_tokens": paused_kv_tokens,
            "pause_kept": pause_kept,
            "pause_discarded": pause_discarded,
            "pause_discarded_n": pause_discarded_n,
            "pause_swapped": pause_swapped,
            "pausing": pausing,
        })

    def result(self, N: int) -> ReferenceResult:
        """This instance's result; per-request lists of length N, None where not served."""
        first_token_time: list[float | None] = [None] * N
        finish_time: list[float | None] = [None] * N
        preemptions: list[int | None] = [None] * N
        for r in self.served:
            first_token_time[r.index] = r.first_token_time
            finish_time[r.index] = r.finish_time
            preemptions[r.index] = r.preemptions
        return ReferenceResult(
            first_token_time=first_token_time,
            finish_time=finish_time,
            preemptions=preemptions,
            iterations=len(self.log),
            total_preemptions=sum(r.preemptions for r in self.served),
            recomputed_tokens=self.recomputed_tokens,
            swapped_tokens=self.swapped_tokens,
            peak_kv_tokens=max((e["kv_tokens_during"] for e in self.log), default=0),
            prefix_hit_tokens=self.prefix_hit_tokens,
            log=self.log,
            discarded_tokens=self.discarded_tokens,
            pauses=self.pauses,
            paused_kv_token_seconds=self.paused_kv_token_seconds,
            jumps=self.jumps,
        )


def run_reference(arrival_time, prompt, output, prediction, config: ReferenceConfig,
                  pauses: list[list[tuple[int, float, float]]] | None = None
                  ) -> ReferenceResult:
    """One engine instance. pauses[i]: request i's pauses (at, seconds, predicted_seconds),
    choices 27 to 33; None: no pauses."""
    _validate(arrival_time, prompt, output, prediction, config)
    _validate_pauses(pauses, output, [config])
    requests = _make_requests(arrival_time, prompt, output, prediction, pauses)
    instance = _Instance(config)
    for r in requests:
        instance.deliver(r)  # each waits, pending, until its arrival (choice 14)
    while instance.has_work():
        instance.step()
    assert all(r.finish_time is not None for r in requests)
    return instance.result(len(requests))


@dataclasses.dataclass
class ClusterReferenceResult:
    # Per request, by global index:
    first_token_time: list[float]  # absolute
    finish_time: list[float]       # absolute
    preemptions: list[int]
    instance: list[int]            # the instance the router sent it to
    # What the router saw when routing it: the measure of every instance 0..I-1 (an int for
    # least-outstanding, a Fraction for least-kv, a float for least-predicted-work), or None for
    # round-robin and random (choice 18).
    seen: list[list | None]
    instances: list[ReferenceResult]  # each instance's own result (choice 19)
    # Totals over the instances (sums; peak_kv_tokens is the max):
    iterations: int
    total_preemptions: int
    recomputed_tokens: int
    swapped_tokens: int
    prefix_hit_tokens: int
    peak_kv_tokens: int
    # Pauses (choices 27 to 33), sums over the instances:
    discarded_tokens: int = 0
    pauses: int = 0
    paused_kv_token_seconds: float = 0.0


def _validate_pool(arrival_time, prompt, output, prediction, configs: list[ReferenceConfig],
                   what: str = "a cluster") -> None:
    """Choice 15 for one pool of instances: at least one, every request fits on each, and only
    the fields of INSTANCE_FIELDS differ."""
    if not configs:
        raise ValueError(f"{what} needs at least one instance")
    for cfg in configs:
        _validate(arrival_time, prompt, output, prediction, cfg)
    for field in dataclasses.fields(ReferenceConfig):
        if field.name in INSTANCE_FIELDS:
            continue
        for i, cfg in enumerate(configs):
            if getattr(cfg, field.name) != getattr(configs[0], field.name):
                raise ValueError(f"instance {i}: {field.name} differs from instance 0's; only "
                                 f"{', '.join(INSTANCE_FIELDS)} may differ")


def _validate_router(router: str, picks, I: int, lengths: tuple[int, ...],
                     name: str = "picks") -> None:
    """The router's name and its picks (choice 18): len(picks) must be one of `lengths`, each
    entry a non-empty list of instances 0..I-1; "random" needs picks."""
    if router not in ROUTERS:
        raise ValueError(f"unknown router {router!r}")
    if router == "random" and picks is None:
        raise ValueError(f"router 'random' needs {name}")
    if picks is not None:
        if len(picks) not in lengths:
            raise ValueError(f"{name} needs one list of candidates per request")
        for r, candidates in enumerate(picks):
            if len(candidates) < 1 or not all(0 <= int(k) < I for k in candidates):
                raise ValueError(f"request {r}: {name} must be instances 0..{I - 1}, at least "
                                 "one")


_MEASURES = {"least-outstanding": _Instance.outstanding, "least-kv": _Instance.kv_load,
             "least-predicted-work": _Instance.predicted_work}


def _route(router: str, instances: list[_Instance], k: int, candidates) -> tuple[int, list | None]:
    """(instance, measures seen) for the k-th request routed by this pool, with candidates its
    picks entry or None (choices 17 and 18)."""
    I = len(instances)
    if router == "round-robin":
        return k % I, None
    if router == "random":
        return int(candidates[0]), None
    measure = _MEASURES[router]
    values = [measure(inst) for inst in instances]
    candidates = [int(c) for c in candidates] if candidates is not None else list(range(I))
    best = candidates[0]
    for c in candidates[1:]:
        if values[c] < values[best]:
            best = c
    return best, values


def run_cluster_reference(arrival_time, prompt, output, prediction,
                          configs: list[ReferenceConfig], router: str,
                          picks: list[list[int]] | None = None,
                          pauses: list[list[tuple[int, float, float]]] | None = None
                          ) -> ClusterReferenceResult:
    """Instances configs[0..I-1] behind `router` (choices 15 to 19). picks[r]: request r's
    candidate instances, used by "random" (picks[r][0]) and, when given, by the "least" rules.
    pauses[r]: request r's pauses, as in run_reference (choices 27 to 34)."""
    configs = list(configs)
    _validate_pool(arrival_time, prompt, output, prediction, configs)
    _validate_pauses(pauses, output, configs)
    N = len(arrival_time)
    _validate_router(router, picks, len(configs), (N,))

    requests = _make_requests(arrival_time, prompt, output, prediction, pauses)
    instances = [_Instance(cfg) for cfg in configs]
    routed_to: list[int] = []
    seen: list[list | None] = []

    def earliest() -> _Instance:
        """The instance with the earliest next boundary, ties to the lowest index (min returns
        the first of equal ones)."""
        return min(instances, key=lambda inst: inst.next_boundary())

    for r in requests:
        # Every boundary strictly before the arrival first (choice 16).
        while (inst := earliest()).next_boundary() < r.arrival:
            inst.step()
        # Route (choices 17 and 18).
        k, values = _route(router, instances, r.index,
                           picks[r.index] if picks is not None else None)
        routed_to.append(k)
        seen.append(values)
        instances[k].deliver(r)
    while (inst := earliest()).has_work():
        inst.step()

    assert all(r.finish_time is not None for r in requests)
    results = [inst.result(N) for inst in instances]
    return ClusterReferenceResult(
        first_token_time=[r.first_token_time for r in requests],
        finish_time=[r.finish_time for r in requests],
        preemptions=[r.preemptions for r in requests],
        instance=routed_to,
        seen=seen,
        instances=results,
        iterations=sum(res.iterations for res in results),
        total_preemptions=sum(res.total_preemptions for res in results),
        recomputed_tokens=sum(res.recomputed_tokens for res in results),
        swapped_tokens=sum(res.swapped_tokens for res in results),
        prefix_hit_tokens=sum(res.prefix_hit_tokens for res in results),
        peak_kv_tokens=max((res.peak_kv_tokens for res in results), default=0),
        discarded_tokens=sum(res.discarded_tokens for res in results),
        pauses=sum(res.pauses for res in results),
        paused_kv_token_seconds=sum(res.paused_kv_token_seconds for res in results),
    )


@dataclasses.dataclass
class DisaggregatedReferenceResult:
    # Per request, by global index (choices 25 and 26):
    first_token_time: list[float]          # absolute, from the prefill instance
    finish_time: list[float]               # absolute, from the decode instance (O == 1: prefill)
    preemptions: list[int]                 # at the prefill instance + at the decode instance
    prefill_instance: list[int]            # the prefill instance the prefill router chose
    decode_instance: list[int | None]      # the decode instance; None when O == 1
    decode_arrival: list[float | None]     # first_token_time + P * transfer_per_token, or None
    # What each router saw (as ClusterReferenceResult.seen); decode_seen is by request index too,
    # None when O == 1.
    prefill_seen: list[list | None]
    decode_seen: list[list | None]
    decode_order: list[int]  # request indices in the order they reached the decode pool (k)
    prefill_instances: list[ReferenceResult]  # each instance's own result (choices 19, 21, 25)
    decode_instances: list[ReferenceResult]
    # Totals over the instances of both pools (sums; peak_kv_tokens is the max):
    iterations: int
    total_preemptions: int
    recomputed_tokens: int
    swapped_tokens: int
    prefix_hit_tokens: int
    peak_kv_tokens: int


def run_disaggregated_reference(arrival_time, prompt, output, prediction,
                                prefill_configs: list[ReferenceConfig],
                                decode_configs: list[ReferenceConfig],
                                prefill_router: str, decode_router: str,
                                transfer_per_token: float,
                                prefill_picks: list[list[int]] | None = None,
                                decode_picks: list[list[int]] | None = None
                                ) -> DisaggregatedReferenceResult:
    """A prefill pool (prefill_configs behind prefill_router) handing each request with O >= 2,
    when its first token is produced, to a decode pool (decode_configs behind decode_router);
    the move of its KV takes P * transfer_per_token seconds (choices 20 to 26).
    prefill_picks[r]: request r's candidate prefill instances (as picks in
    run_cluster_reference); decode_picks[k]: the candidate decode instances of the k-th request
    to reach the decode pool, of length K (the number of requests with O >= 2) or N (then only
    its first K entries are used)."""
    prefill_configs = list(prefill_configs)
    decode_configs = list(decode_configs)
    _validate_pool(arrival_time, prompt, output, prediction, prefill_configs, "the prefill pool")
    _validate_pool(arrival_time, prompt, output, prediction, decode_configs, "the decode pool")
    # Both pools run the same engine (choice 20).
    for field in dataclasses.fields(ReferenceConfig):
        if field.name in INSTANCE_FIELDS:
            continue
        for i, cfg in enumerate(decode_configs):
            if getattr(cfg, field.name) != getattr(prefill_configs[0], field.name):
                raise ValueError(f"decode instance {i}: {field.name} differs from prefill "
                                 f"instance 0's; only {', '.join(INSTANCE_FIELDS)} may differ")
    if not (transfer_per_token >= 0 and math.isfinite(transfer_per_token)):
        raise ValueError("transfer_per_token must be finite and >= 0")
    N = len(arrival_time)
    K = sum(1 for o in output if int(o) >= 2)
    _validate_router(prefill_router, prefill_picks, len(prefill_configs), (N,), "prefill_picks")
    _validate_router(decode_router, decode_picks, len(decode_configs), (K, N), "decode_picks")

    requests = _make_requests(arrival_time, prompt, output, prediction)  # the prefill records
    prefill = [_Instance(cfg, prefill_only=True) for cfg in prefill_configs]
    decode = [_Instance(cfg) for cfg in decode_configs]
    landed: dict[int, _Request] = {}        # the decode records, by index
    prefill_instance: list[int] = []
    prefill_seen: list[list | None] = []
    decode_instance: list[int | None] = [None] * N
    decode_seen: list[list | None] = [None] * N
    decode_order: list[int] = []
    transfers: list[tuple[float, int]] = []  # (decode arrival, index), handed off, not routed
    last_key = (-math.inf, 0, 0)

    def next_event() -> tuple:
        """The least (time, kind, instance) of choice 23, or None when nothing is left."""
        events = []
        if len(prefill_instance) < N:
            events.append((requests[len(prefill_instance)].arrival, 0, 0))
        events += [(inst.next_boundary(), 1, i) for i, inst in enumerate(prefill)]
        if transfers:
            events.append((min(transfers)[0], 2, 0))
        events += [(inst.next_boundary(), 3, i) for i, inst in enumerate(decode)]
        key = min(events)
        return key if key[0] < math.inf else None

    while (key := next_event()) is not None:
        assert key >= last_key, "events are processed in time order (choice 23)"
        last_key = key
        t, kind, i = key
        if kind == 0:
            # A request arrives at the prefill pool (choice 20; as in a cluster, choice 16).
            r = requests[len(prefill_instance)]
            k, values = _route(prefill_router, prefill, r.index,
                               prefill_picks[r.index] if prefill_picks is not None else None)
            prefill_instance.append(k)
            prefill_seen.append(values)
            prefill[k].deliver(r)
        elif kind == 1:
            prefill[i].step()
            # The requests that left with their first token and have more to produce are handed
            # off (choices 21 and 22).
            for index in prefill[i].log[-1]["finished"]:
                r = requests[index]
                if r.O >= 2:
                    transfers.append((r.first_token_time + r.P * transfer_per_token, index))
        elif kind == 2:
            # The earliest transfer, ties by index, arrives at the decode pool (choice 22).
            arrival, index = min(transfers)
            transfers.remove((arrival, index))
            r = requests[index]
            d = _Request(index=index, arrival=arrival, P=r.P, O=r.O, yhat=r.yhat, g=1, n=r.P,
                         where=LANDED)
            k = len(decode_order)
            choice, values = _route(decode_router, decode, k,
                                    decode_picks[k] if decode_picks is not None else None)
            landed[index] = d
            decode_instance[index] = choice
            decode_seen[index] = values
            decode_order.append(index)
            decode[choice].deliver(d)
        else:
            decode[i].step()

    assert len(prefill_instance) == N and len(decode_order) == K and not transfers
    assert all(r.finish_time is not None for r in requests)
    assert all(d.finish_time is not None and d.first_token_time is None
               for d in landed.values())
    prefill_results = [inst.result(N) for inst in prefill]
    decode_results = [inst.result(N) for inst in decode]
    results = prefill_results + decode_results
    finish_time = [landed[r.index].finish_time if r.index in landed else r.finish_time
                   for r in requests]
    return DisaggregatedReferenceResult(
        first_token_time=[r.first_token_time for r in requests],
        finish_time=finish_time,
        preemptions=[r.preemptions + (landed[r.index].preemptions if r.index in landed else 0)
                     for r in requests],
        prefill_instance=prefill_instance,
        decode_instance=decode_instance,
        decode_arrival=[landed[i].arrival if i in landed else None for i in range(N)],
        prefill_seen=prefill_seen,
        decode_seen=decode_seen,
        decode_order=decode_order,
        prefill_instances=prefill_results,
        decode_instances=decode_results,
        iterations=sum(res.iterations for res in results),
        total_preemptions=sum(res.total_preemptions for res in results),
        recomputed_tokens=sum(res.recomputed_tokens for res in results),
        swapped_tokens=sum(res.swapped_tokens for res in results),
        prefix_hit_tokens=sum(res.prefix_hit_tokens for res in results),
        peak_kv_tokens=max((res.peak_kv_tokens for res in results), default=0),
    )
