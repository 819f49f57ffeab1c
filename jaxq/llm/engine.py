"""The LLM inference engine: one instance, iteration-level batching under a KV-memory limit.

The model is specified exactly in the README ("The LLM engine model"); this module implements it
for ONE configuration, and `jaxq.llm.simulate` vmaps it over a batch. One loop step is one engine
iteration (or, when the engine is empty, a jump to the next arrival followed by an iteration),
followed by the run of pure-decode iterations that may come next, advanced in closed form
(`_decode_run`).

Requests live in `slots` fixed slots. Arrivals are admitted in order into free slots; an arrival
that finds no free slot waits outside, unseen by the scheduler, which is counted as `overflow`
(the run is then not the model's, and `simulate` raises by default).

Times are kept relative (a request's age, the time until the next arrival), never as an absolute
clock, so float32 keeps its precision over long runs.

The batch is formed in the policy's order with prefix sums (see the README): order the slots by
(class, primary rank, tie-break) (jaxq/_sorting), then every constraint (token budget,
sequences, KV blocks, admission reserve) is a cumulative sum compared with its limit, and the
batch is the run of positions from the front that satisfy all of them.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from jaxq._sorting import sorted_ids
from jaxq.policies import JobView, Policy
from jaxq.predictors import Predictor

PREEMPTION_MODES = ("recompute", "swap")
PAUSE_KV_MODES = ("keep", "discard", "swap", "auto")
ADMISSION_MODES = ("optimistic", "reserve-predicted", "reserve-max")


class EngineSpec(NamedTuple):
    """Static choices: one compile per distinct spec."""

    slots: int  # K, requests the engine can hold at once (running + waiting)
    preemption: str  # "recompute" or "swap"
    admission: str  # "optimistic", "reserve-predicted" or "reserve-max"
    refine: bool  # redraw predictions every `refine_every` tokens
    prefix_cache: bool = False  # KV dropped by recompute stays cached until its blocks are reused
    prefill_only: bool = False  # a request leaves at its first token (a disaggregated prefill)
    pauses: int = 0  # M, tool-call pauses per request at most (0: requests never pause)
    pause_kv: str = "keep"  # a pausing request's KV: "keep", "discard", "swap" or "auto"


class EngineParams(eqx.Module):
    """Every number of one engine configuration: each field () here, (B,) in a batch."""

    kv_capacity: jax.Array  # int, GPU KV-cache tokens
    block_size: jax.Array  # int, tokens per KV block
    max_seqs: jax.Array  # int, most requests in one iteration's batch
    max_batched_tokens: jax.Array  # int, token budget of one iteration
    host_capacity: jax.Array  # int, host-memory tokens for swapped KV
    max_output: jax.Array  # int, output tokens reserved per request by reserve-max
    refine_every: jax.Array  # int, k: the prediction is redrawn every k output tokens
    iter_base: jax.Array  # float, seconds per iteration
    iter_per_prefill_token: jax.Array  # float, seconds per token processed by prefills
    iter_per_decode_seq: jax.Array  # float, seconds per decoding request
    iter_per_kv_token: jax.Array  # float, seconds per KV token attended
    swap_per_token: jax.Array  # float, seconds per KV token moved to or from the host
    keep_seconds: jax.Array  # float, pause_kv "auto": keep iff predicted pause x KV tokens <=
    #   keep_seconds x free KV tokens


class Requests(NamedTuple):
    """N requests in arrival order (one configuration)."""

    gap: jax.Array  # (N,) float, arrival time minus the previous one's (the first: minus 0)
    prompt: jax.Array  # (N,) int32, P >= 1
    output: jax.Array  # (N,) int32, true output length O >= 1
    prediction: jax.Array  # (N,) float > 0, predicted output length
    # (N,) bool or None: prefilled elsewhere (a disaggregated decode instance's arrivals); such
    # a request arrives with its first token (g = 1) and its prompt's KV, not yet on this GPU.
    transferred: jax.Array | None = None
    # (N, M) each, or None (no pauses): the j-th tool call of each request starts after it
    # produces token pause_at (1 <= pause_at < O, increasing; 0: no more calls) and lasts
    # pause_for seconds, predicted to last pause_predicted.
    pause_at: jax.Array | None = None
    pause_for: jax.Array | None = None
    pause_predicted: jax.Array | None = None


class Slots(NamedTuple):
    """One entry per slot, shape (K,)."""

    active: jax.Array  # bool, holds a request that has arrived and not finished
    index: jax.Array  # int32, the request's arrival index
    prompt: jax.Array  # int32, P
    output: jax.Array  # int32, O
    prediction: jax.Array  # float, current predicted output length (total, not remaining)
    generated: jax.Array  # int32, g: output tokens produced
    kv: jax.Array  # int32, n: tokens whose KV the request holds (on GPU or host)
    resident: jax.Array  # bool, its KV is on the GPU (False with n > 0: swapped to host, or
    #   landed)
    landed: jax.Array  # bool, its KV came over the link and waits, off the GPU and the host
    paused: jax.Array  # bool, away on a tool call: in the system, never scheduled
    pausing: jax.Array  # bool, paused at the end of the last iteration: its KV is decided now
    until_return: jax.Array  # float, time until its call ends (while paused)
    calls: jax.Array  # int32, tool calls it has started
    age: jax.Array  # float, time since arrival
    preemptions: jax.Array  # int32


class Totals(NamedTuple):
    """Run-wide counters and time integrals, all scalars."""

    iterations: jax.Array  # int32
    boundaries: jax.Array  # int32, loop steps: boundaries computed in full (see _decode_run)
    busy_time: jax.Array  # float, seconds spent in iterations
    elapsed: jax.Array  # float, from time 0 to the end of the last iteration
    preemptions: jax.Array  # int32
    recomputed_tokens: jax.Array  # int32, KV tokens dropped by recompute preemptions
    swapped_tokens: jax.Array  # int32, KV tokens moved to or from the host
    peak_kv_tokens: jax.Array  # int32, most KV tokens resident during an iteration
    kv_token_seconds: jax.Array  # float, integral of resident KV tokens over busy time
    waiting_seconds: jax.Array  # float, integral of requests in system but not in the batch
    batched: jax.Array  # int32, sum over iterations of the batch size
    overflow: jax.Array  # int32, boundaries at which an arrived request found no free slot
    finished: jax.Array  # int32, requests that have left
    prefix_hit_tokens: jax.Array  # int32, KV tokens found in the prefix cache, not recomputed
    pauses: jax.Array  # int32, tool calls started
    discarded_tokens: jax.Array  # int32, KV tokens dropped when their request paused
    paused_kv_token_seconds: jax.Array  # float, integral of GPU KV tokens held by paused requests


class FreeQueue(NamedTuple):
    """The GPU's free KV blocks in the order they are reused (front first), with the prefix cache
    on: runs of cached blocks ("entries", one per request whose KV recompute dropped and some of
    whose blocks are still intact) separated by free blocks nobody will read again. Arrays are
    (E,), E = slots with the prefix cache on and 0 without; the live entries (blocks > 0) come
    first, front to back. The plain blocks behind the last entry are not stored: with F free
    blocks in all they number F - sum(gap) - sum(blocks)."""

    slot: jax.Array  # int32, slot of the request the entry caches for (E where no entry)
    gap: jax.Array  # int32, plain free blocks between the previous entry (or the front) and it
    blocks: jax.Array  # int32, the request's leading full blocks still cached (0: no entry)


class EngineState(NamedTuple):
    slots: Slots
    next_arrival: jax.Array  # int32, index of the next request to arrive
    until_next: jax.Array  # float, time from now until it arrives (inf when none is left)
    host_blocks: jax.Array  # int32, host blocks in use
    ttft: jax.Array  # (N,) float, time to first token per request (NaN until produced)
    latency: jax.Array  # (N,) float, end-to-end latency per request (NaN until finished)
    preemptions: jax.Array  # (N,) int32, per request (set when it finishes)
    # (N,) int32 with prefill_only ((0,) otherwise): the iteration that produced each request's
    # first token, counted from 1 (0 until then); handoffs with equal counts left together.
    handoff_iteration: jax.Array
    free_queue: FreeQueue
    totals: Totals


def init_state(spec: EngineSpec, requests: Requests) -> EngineState:
    k, n = spec.slots, requests.gap.shape[0]
    ftype = requests.gap.dtype
    zi = jnp.zeros((k,), jnp.int32)
    slots = Slots(active=jnp.zeros((k,), bool), index=zi, prompt=zi, output=zi,
                  prediction=jnp.zeros((k,), ftype), generated=zi, kv=zi,
                  resident=jnp.zeros((k,), bool), landed=jnp.zeros((k,), bool),
                  paused=jnp.zeros((k,), bool), pausing=jnp.zeros((k,), bool),
                  until_return=jnp.zeros((k,), ftype), calls=zi,
                  age=jnp.zeros((k,), ftype), preemptions=zi)
    i0, f0 = jnp.zeros((), jnp.int32), jnp.zeros((), ftype)
    totals = Totals(iterations=i0, boundaries=i0, busy_time=f0, elapsed=f0, preemptions=i0,
                    recomputed_tokens=i0, swapped_tokens=i0, peak_kv_tokens=i0,
                    kv_token_seconds=f0, waiting_seconds=f0, batched=i0, overflow=i0,
                    finished=i0, prefix_hit_tokens=i0, pauses=i0, discarded_tokens=i0,
                    paused_kv_token_seconds=f0)
    e = k if spec.prefix_cache else 0
    queue = FreeQueue(slot=jnp.full((e,), e, jnp.int32), gap=jnp.zeros((e,), jnp.int32),
                      blocks=jnp.zeros((e,), jnp.int32))
    return EngineState(slots=slots, next_arrival=i0, until_next=requests.gap[0],
                       host_blocks=i0, ttft=jnp.full((n,), jnp.nan, ftype),
                       latency=jnp.full((n,), jnp.nan, ftype),
                       preemptions=jnp.zeros((n,), jnp.int32),
                       handoff_iteration=jnp.zeros((n if spec.prefill_only else 0,), jnp.int32),
                       free_queue=queue, totals=totals)


def next_boundary(state: EngineState) -> jax.Array:
    """Time from the engine's clock (the end of its last iteration) to its next boundary: 0
    while it has a request to schedule or the KV of a starting call to decide, else its next
    arrival or the first return from a call (inf: none). Any leading batch axes."""
    s = state.slots
    now = jnp.any(s.active & (~s.paused | s.pausing), axis=-1)
    returns = jnp.min(jnp.where(s.paused, s.until_return, jnp.inf), axis=-1)
    return jnp.where(now, 0.0, jnp.maximum(jnp.minimum(state.until_next, returns), 0.0))


def done(state: EngineState, requests: Requests) -> jax.Array:
    return state.totals.finished >= requests.gap.shape[-1]


def _blocks(tokens, block_size):
    return (tokens + block_size - 1) // block_size


def _admit(spec, requests, state, age, until_next, live, ids):
    """Move every request that has arrived by now (until_next <= 0) into a free slot (none when
    the run is not live). ids: (N,) the request id of each arrival in `requests.gap`'s order
    (None: the identity; an instance of a cluster sees the requests routed to it)."""
    k, n = spec.slots, requests.gap.shape[0]
    s = state.slots
    # Relative arrival times of the next K + 1 requests: rel[r] for request next_arrival + r.
    later = state.next_arrival + 1 + jnp.arange(k)
    later_gaps = jnp.where(later < n, requests.gap[jnp.minimum(later, n - 1)], 0.0)
    rel = until_next + jnp.concatenate([jnp.zeros((1,), age.dtype), jnp.cumsum(later_gaps)])
    offsets = jnp.arange(k + 1)
    arrived = (rel <= 0) & (state.next_arrival + offsets < n) & live
    n_arrived = jnp.sum(arrived[:k])
    free = ~s.active
    free_rank = jnp.cumsum(free) - 1
    n_admit = jnp.minimum(n_arrived, jnp.sum(free))
    take = free & (free_rank < n_admit)
    request = jnp.where(take, state.next_arrival + free_rank, 0)
    if ids is not None:
        request = ids[request]
    zero = jnp.zeros_like(s.generated)
    if requests.transferred is None:
        landed = jnp.zeros_like(take)
    else:
        landed = take & requests.transferred[request]
    slots = Slots(
        active=s.active | take,
        index=jnp.where(take, request, s.index),
        prompt=jnp.where(take, requests.prompt[request], s.prompt),
        output=jnp.where(take, requests.output[request], s.output),
        prediction=jnp.where(take, requests.prediction[request], s.prediction),
        generated=jnp.where(take, landed.astype(zero.dtype), s.generated),
        kv=jnp.where(landed, requests.prompt[request], jnp.where(take, zero, s.kv)),
        resident=s.resident & ~take,
        landed=jnp.where(take, landed, s.landed),
        paused=s.paused & ~take, pausing=s.pausing & ~take,
        until_return=s.until_return, calls=jnp.where(take, zero, s.calls),
        age=jnp.where(take, -rel[jnp.clip(free_rank, 0, k)], age),
        preemptions=jnp.where(take, zero, s.preemptions))
    next_arrival = state.next_arrival + n_admit
    until_next = jnp.where(next_arrival < n, rel[n_admit], jnp.inf)
    overflow = (n_arrived > n_admit).astype(jnp.int32)
    return slots, next_arrival, until_next, overflow


def _order(policy: Policy, s: Slots) -> jax.Array:
    """Slot ids in the scheduling order: (class, primary, tie-break); class 0 = resident and
    locked, 1 = other requests, 2 = paused ones, 3 = empty slots (after every request, among
    themselves by id)."""
    f = s.age.dtype
    view = JobView(size=s.output.astype(f), prediction=s.prediction,
                   attained=s.generated.astype(f), age=s.age, index=s.index,
                   started=s.resident, prompt=s.prompt.astype(f), kv=s.kv.astype(f),
                   peak=s.prompt.astype(f) + s.prediction)
    rank = policy.rank(view)
    ids = jnp.arange(s.active.shape[0], dtype=jnp.int32)
    klass = jnp.where(s.active, jnp.where(s.paused, 2, jnp.where(s.resident & rank.locked, 0, 1)),
                      3).astype(jnp.int32)
    primary = jnp.where(s.active, rank.primary, 0.0)
    # Unique keys (the tie-break is an arrival index, or a slot id for empty slots), so the order
    # is the one sorted order. Not lax.sort: on CPU it is 9x slower at 48 slots (jaxq/_sorting).
    tiebreak = jnp.where(s.active, rank.tiebreak, ids).astype(jnp.int32)
    return sorted_ids((klass, primary, tiebreak))


class Batch(NamedTuple):
    """The decision at one boundary, per slot (K,)."""

    scheduled: jax.Array  # bool, in this iteration's batch
    tokens: jax.Array  # int32, q: tokens it processes
    evicted: jax.Array  # bool, resident and preempted at this boundary
    swapped_out: jax.Array  # bool, evicted to host memory (swap mode, host room left)


def _form_batch(spec: EngineSpec, p: EngineParams, s: Slots, order, host_blocks, live) -> Batch:
    """The README's batch rule, evaluated with prefix sums in the scheduling order (an empty
    batch, and no preemption, when the run is not live)."""
    b = p.block_size
    cap = p.kv_capacity // b
    o = lambda x: x[order]  # noqa: E731  (a slot field in scheduling order)
    active, resident, n, g = o(s.active), o(s.resident), o(s.kv), o(s.generated)
    paused = o(s.paused)
    prompt = o(s.prompt)
    u = jnp.where(active, prompt + g - n, 0)
    q = jnp.clip(p.max_batched_tokens - (jnp.cumsum(u) - u), 0, u)
    new_blocks = jnp.where(resident, _blocks(n + q, b) - _blocks(n, b), _blocks(n + q, b))
    held = jnp.where(resident, _blocks(n, b), 0)
    d = jnp.cumsum(jnp.where(active, new_blocks, 0))
    h = jnp.cumsum(held)
    position = jnp.arange(1, active.shape[0] + 1)
    # A request that is not resident is admitted only if its whole known sequence fits now
    # (vLLM's scheduler_reserve_full_isl), not only the chunk it processes.
    kv_ok = (d + h <= cap) & (resident | (d - new_blocks + _blocks(prompt + g, b) + h <= cap))
    budget_ok = q >= 1
    seqs_ok = position <= p.max_seqs
    ok = active & ~paused & kv_ok & budget_ok & seqs_ok & live
    if spec.admission != "optimistic":
        if spec.admission == "reserve-max":
            expected = jnp.broadcast_to(p.max_output, g.shape)
        else:
            expected = jnp.ceil(o(s.prediction)).astype(jnp.int32)
        peak = jnp.minimum(_blocks(prompt + jnp.maximum(expected, g + 1) - 1, b), cap)
        reserve = jnp.cumsum(jnp.where(active, peak, 0))
        ok &= resident | (position == 1) | (reserve <= cap)
    failures = jnp.cumsum(~ok)
    scheduled = failures == 0
    first_failure = (failures == 1) & ~ok
    # A paused request does not grow: it never triggers the rule.
    cannot_grow = jnp.any(first_failure & active & ~paused & resident & budget_ok & seqs_ok
                          & ~kv_ok)
    d_batch = jnp.sum(jnp.where(scheduled, new_blocks, 0))
    kept = resident & ~scheduled & (d_batch + h <= cap) & ~cannot_grow
    evicted = resident & ~scheduled & ~kept & live
    if spec.preemption == "swap":
        host_free = p.host_capacity // b - host_blocks
        swapped_out = evicted & (jnp.cumsum(jnp.where(evicted, _blocks(n, b), 0)) <= host_free)
    else:
        swapped_out = jnp.zeros_like(evicted)
    back = lambda x: jnp.zeros_like(x).at[order].set(x)  # noqa: E731  (to slot order)
    return Batch(scheduled=back(scheduled), tokens=back(jnp.where(scheduled, q, 0)),
                 evicted=back(evicted), swapped_out=back(swapped_out))


def _refinement_multipliers(predictor: Predictor, key, s: Slots, m) -> jax.Array:
    """(K,) multipliers M of the prediction model, one fresh draw per (request, m): the same
    draw whatever slot or batch the request is in."""
    return jax.vmap(lambda i, m: predictor.multiplier(
        jax.random.fold_in(jax.random.fold_in(key, i), m), ()))(s.index, m)


def _refine(spec, p, predictor, key, s: Slots, produced, generated) -> jax.Array:
    """(K,) predictions after an iteration that took each slot from s.generated to `generated`
    tokens: a request that `produced` its g-th token, g a multiple of k and below O, is predicted
    g + (O - g) * M^((O - g) / O) in all."""
    if not spec.refine:
        return s.prediction
    f = s.prediction.dtype
    refine = produced & (generated % p.refine_every == 0) & (generated < s.output)
    multiplier = _refinement_multipliers(predictor, key, s,
                                         generated // jnp.maximum(p.refine_every, 1))
    left = (s.output - generated).astype(f)
    refined = generated.astype(f) + left * multiplier ** (left / s.output)
    return jnp.where(refine, refined, s.prediction)


def _cached_blocks(queue: FreeQueue, k: int) -> jax.Array:
    """(K,) int32: each slot's blocks still in the prefix cache (0 for most)."""
    return jnp.zeros((k,), jnp.int32).at[queue.slot].add(queue.blocks, mode="drop")


def _push_preempted(queue: FreeQueue, tail, order, batch: Batch, n, b) -> FreeQueue:
    """The queue after the requests preempted at this boundary free their blocks at its back,
    the lowest-ranked first: a swapped request's blocks are plain, a recomputed one frees its
    partial last block (plain), then its full blocks, last first, as a new entry. `tail`: the
    plain blocks behind the last entry before these pushes; n: (K,) tokens held."""
    e = queue.slot.shape[0]
    push = order[::-1]  # slot ids, lowest-ranked first
    nn = n[push]
    full = jnp.where(batch.evicted[push] & ~batch.swapped_out[push], nn // b, 0)
    plain = jnp.where(batch.evicted[push], _blocks(nn, b) - full, 0)
    new = full > 0
    pushed = jnp.cumsum(plain)  # plain blocks pushed up to each, inclusive
    at_new = lax.cummax(jnp.where(new, pushed, -1))  # `pushed` at the latest new entry so far
    before = jnp.concatenate([jnp.full((1,), -1, at_new.dtype), at_new[:-1]])
    gap = jnp.where(before < 0, tail + pushed, pushed - before)
    position = jnp.where(new, jnp.sum(queue.blocks > 0) + jnp.cumsum(new) - 1, e)
    i32 = lambda x: x.astype(jnp.int32)  # noqa: E731  (sums are int64 with float64 enabled)
    return FreeQueue(slot=queue.slot.at[position].set(i32(push), mode="drop"),
                     gap=queue.gap.at[position].set(i32(gap), mode="drop"),
                     blocks=queue.blocks.at[position].set(i32(full), mode="drop"))


def _take_and_pop(queue: FreeQueue, taken, popped) -> FreeQueue:
    """The queue after the `taken` entries (E,) leave it (their requests' cache hits) and
    `popped` blocks are allocated from its front, compacted so that live entries come first;
    the plain blocks of a vanished entry join the next one's gap."""
    e = queue.slot.shape[0]
    blocks = jnp.where(taken, 0, queue.blocks)
    size = queue.gap + blocks
    ahead = jnp.cumsum(size) - size  # blocks ahead of each entry's gap
    gap = queue.gap - jnp.clip(popped - ahead, 0, queue.gap)
    blocks = blocks - jnp.clip(popped - ahead - queue.gap, 0, blocks)
    keep = blocks > 0
    lost = jnp.cumsum(jnp.where(keep, 0, gap))  # plain blocks of vanished entries so far
    at_kept = lax.cummax(jnp.where(keep, lost, 0))
    gap = gap + lost - jnp.concatenate([jnp.zeros((1,), lost.dtype), at_kept[:-1]])
    position = jnp.where(keep, jnp.cumsum(keep) - 1, e)
    put = lambda fill, x: (jnp.full((e,), fill, jnp.int32)  # noqa: E731
                           .at[position].set(x.astype(jnp.int32), mode="drop"))
    return FreeQueue(slot=put(e, queue.slot), gap=put(0, gap), blocks=put(0, blocks))


def _pause_kv(spec: EngineSpec, p: EngineParams, requests: Requests, s: Slots, host_blocks,
              live):
    """The requests that paused at this boundary's instant (`pausing`) keep, discard or swap
    their KV. Returns (slots, host blocks in use, tokens swapped out, tokens discarded)."""
    b = p.block_size
    pausing = s.pausing & live
    n = s.kv
    # "auto": keep a call whose predicted memory-time (seconds x KV tokens) is at most
    # keep_seconds of the free KV tokens at this instant; otherwise as the engine preempts.
    column = jnp.maximum(s.calls - 1, 0)[:, None]
    predicted = jnp.take_along_axis(requests.pause_predicted[s.index], column, axis=1)[:, 0]
    free = (p.kv_capacity // b) * b - jnp.sum(jnp.where(s.active & s.resident, n, 0))
    if spec.pause_kv == "auto":
        keep = predicted * n <= p.keep_seconds * free
        want_swap = ~keep & (spec.preemption == "swap")
    else:
        keep = jnp.full_like(pausing, spec.pause_kv == "keep")
        want_swap = jnp.full_like(pausing, spec.pause_kv == "swap")
    leave = pausing & ~keep & s.resident
    # Swapped while the host has room, in order of request index.
    wants = leave & want_swap
    blocks = jnp.where(wants, _blocks(n, b), 0)
    earlier = jnp.sum(jnp.where(s.index[None, :] < s.index[:, None], blocks[None, :], 0),
                      axis=1)
    swap = wants & (earlier + blocks <= p.host_capacity // b - host_blocks)
    discard = leave & ~swap
    slots = s._replace(pausing=s.pausing & ~live, kv=jnp.where(discard, 0, n),
                       resident=s.resident & ~leave)
    return (slots, host_blocks + jnp.sum(jnp.where(swap, _blocks(n, b), 0)),
            jnp.sum(jnp.where(swap, n, 0)), jnp.sum(jnp.where(discard, n, 0)))


def step(spec: EngineSpec, p: EngineParams, policy: Policy, predictor: Predictor,
         requests: Requests, key: jax.Array, state: EngineState, live=True) -> EngineState:
    """One boundary and the iteration that follows it: a no-op once every request has left, or
    when `live` (a bool) is False."""
    return timed_step(spec, p, policy, predictor, requests, key, state, live)[0]


def timed_step(spec: EngineSpec, p: EngineParams, policy: Policy, predictor: Predictor,
               requests: Requests, key: jax.Array, state: EngineState, live=True, ids=None,
               horizon=jnp.inf) -> tuple[EngineState, jax.Array, jax.Array]:
    """`step`, also returning how far the engine's clock moved: the jump to the next arrival of
    an empty engine and the iteration's length (both 0 when nothing happened). ids: see
    `_admit`. horizon: an engine with nothing to schedule whose next event is this far from
    its clock or later stays where it is (an instance of a cluster, before the next arrival
    at the cluster), after the decisions on the KV of calls that start now."""
    n_requests = requests.gap.shape[0]
    s, t = state.slots, state.totals
    b = p.block_size
    # An engine with no request to schedule jumps to the next arrival or the first return from
    # a tool call, unless that moment has passed (it came during the iteration that emptied the
    # engine, until_next < 0): then it is this boundary.
    host_blocks = state.host_blocks
    pause_swapped = discarded = jnp.zeros((), jnp.int32)
    next_event = state.until_next
    if spec.pauses:
        # The KV of requests that paused at this instant is decided first, then the engine
        # may jump, then the calls that have ended by then return.
        s, host_blocks, pause_swapped, discarded = _pause_kv(spec, p, requests, s,
                                                             host_blocks, live)
        next_event = jnp.minimum(next_event, jnp.min(jnp.where(s.paused, s.until_return,
                                                               jnp.inf)))
    waiting = (state.next_arrival < n_requests) | jnp.any(s.paused)
    idle = ~jnp.any(s.active & ~s.paused) & waiting & live
    live = live & ~(idle & (next_event >= horizon))
    jump = jnp.where(idle & live, jnp.maximum(next_event, 0.0), 0.0)
    held_away = jnp.sum(jnp.where(s.paused & s.resident, s.kv, 0))  # GPU KV of paused ones
    if spec.pauses:
        returning = s.paused & (s.until_return - jump <= 0) & live
        s = s._replace(paused=s.paused & ~returning,
                       until_return=jnp.where(s.paused, s.until_return - jump, s.until_return))
    s, next_arrival, until_next, overflow = _admit(spec, requests, state._replace(slots=s),
                                                   s.age + jump, state.until_next - jump, live,
                                                   ids)
    order = _order(policy, s)
    # A request with blocks in the prefix cache counts as holding them (README).
    hit = (_cached_blocks(state.free_queue, spec.slots) if spec.prefix_cache
           else jnp.zeros_like(s.kv))
    batch = _form_batch(spec, p, s._replace(kv=s.kv + hit * b), order, host_blocks, live)

    n, g = s.kv + hit * b, s.generated
    u = s.prompt + g - n
    # A landed request's KV is placed at no cost: it is not a swap-in.
    swap_in = batch.scheduled & ~s.resident & (s.kv > 0) & ~s.landed
    decoding = batch.scheduled & (g >= 1) & (u == 1)
    f = s.age.dtype
    prefill_tokens = jnp.sum(jnp.where(batch.scheduled & ~decoding, batch.tokens, 0))
    decode_seqs = jnp.sum(decoding)
    kv_attended = jnp.sum(jnp.where(batch.scheduled, n + batch.tokens, 0))
    # Pauses swapped out before a jump were copied while the engine was idle: no time.
    swapped = jnp.sum(jnp.where(swap_in | batch.swapped_out, n, 0)) + pause_swapped
    busy = jnp.any(s.active) & live
    dt = (p.iter_base + p.iter_per_prefill_token * prefill_tokens.astype(f)
          + p.iter_per_decode_seq * decode_seqs.astype(f)
          + p.iter_per_kv_token * kv_attended.astype(f)
          + p.swap_per_token * (swapped - jnp.where(jump > 0, pause_swapped, 0)).astype(f))
    dt = jnp.where(busy, dt, 0.0)

    # The iteration: process, produce tokens, preempt, leave.
    kv = jnp.where(batch.scheduled, n + batch.tokens, s.kv)
    queue = state.free_queue
    if spec.prefix_cache:
        held = jnp.where(s.resident, _blocks(s.kv, b), 0)
        tail = (p.kv_capacity // b - jnp.sum(held) - jnp.sum(queue.gap)
                - jnp.sum(queue.blocks))
        queue = _push_preempted(queue, tail, order, batch, n, b)
        taken = (queue.blocks > 0) & batch.scheduled[jnp.minimum(queue.slot, spec.slots - 1)]
        popped = jnp.sum(jnp.where(batch.scheduled, _blocks(kv, b) - held - hit, 0))
        queue = _take_and_pop(queue, taken, popped)
    produced = batch.scheduled & (kv == s.prompt + g)
    generated = g + produced
    first = produced & (g == 0)
    leaving = produced & ((generated == s.output) | spec.prefill_only)
    age = s.age + dt
    resident_kv = jnp.sum(jnp.where((s.resident & ~batch.evicted) | batch.scheduled, kv, 0))
    recomputed = batch.evicted & ~batch.swapped_out
    host_blocks = (host_blocks
                   + jnp.sum(jnp.where(batch.swapped_out, _blocks(n, b), 0))
                   - jnp.sum(jnp.where(swap_in, _blocks(n, b), 0)))
    prediction = _refine(spec, p, predictor, key, s, produced, generated)
    preemptions = s.preemptions + batch.evicted
    out = jnp.where(leaving, s.index, n_requests)  # out of range: dropped by the scatter
    latency = state.latency.at[out].set(age, mode="drop")
    request_preemptions = state.preemptions.at[out].set(preemptions, mode="drop")
    ttft = state.ttft.at[jnp.where(first, s.index, n_requests)].set(age, mode="drop")
    handoff = state.handoff_iteration.at[jnp.where(first, s.index, n_requests)].set(
        t.iterations + 1, mode="drop")
    resident = ((s.resident & ~batch.evicted) | batch.scheduled) & ~leaving
    # Tool calls: a request that produced the token of its next call pauses at the end of this
    # iteration; the KV of those paused meanwhile, held on the GPU, is counted.
    held_away_now = jnp.sum(jnp.where(s.paused & resident, kv, 0))
    # (s.pausing is still set only when this step was not live: then it must stay. Only a
    # paused request's clock runs, so that decode runs, which have none, leave the state as
    # their iterations one by one would.)
    paused, pausing, calls = s.paused, s.pausing, s.calls
    until_return = jnp.where(paused, s.until_return - dt, s.until_return)
    if spec.pauses:
        column = jnp.minimum(s.calls, spec.pauses - 1)[:, None]
        at = jnp.take_along_axis(requests.pause_at[s.index], column, axis=1)[:, 0]
        seconds = jnp.take_along_axis(requests.pause_for[s.index], column, axis=1)[:, 0]
        starts = (produced & ~leaving & (s.calls < spec.pauses) & (at > 0)
                  & (generated == at))
        paused = paused | starts
        pausing = pausing | starts
        until_return = jnp.where(starts, seconds, until_return)
        calls = calls + starts
    slots = Slots(
        active=s.active & ~leaving, index=s.index, prompt=s.prompt, output=s.output,
        prediction=prediction, generated=generated,
        kv=jnp.where(recomputed | leaving, 0, kv), resident=resident,
        landed=s.landed & ~batch.scheduled, paused=paused, pausing=pausing,
        until_return=until_return, calls=calls, age=age, preemptions=preemptions)
    in_batch = jnp.sum(batch.scheduled)
    totals = Totals(
        iterations=t.iterations + busy,
        boundaries=t.boundaries + busy,
        busy_time=t.busy_time + dt,
        elapsed=t.elapsed + jump + dt,
        preemptions=t.preemptions + jnp.sum(batch.evicted),
        recomputed_tokens=t.recomputed_tokens + jnp.sum(jnp.where(recomputed, n, 0)),
        swapped_tokens=t.swapped_tokens + swapped,
        peak_kv_tokens=jnp.maximum(t.peak_kv_tokens, resident_kv),
        kv_token_seconds=t.kv_token_seconds + dt * resident_kv.astype(f),
        waiting_seconds=t.waiting_seconds + dt * (jnp.sum(s.active) - in_batch).astype(f),
        batched=t.batched + in_batch,
        overflow=t.overflow + overflow,
        finished=t.finished + jnp.sum(leaving),
        prefix_hit_tokens=t.prefix_hit_tokens + jnp.sum(jnp.where(batch.scheduled, hit * b, 0)),
        pauses=t.pauses + jnp.sum(pausing & ~s.pausing),
        discarded_tokens=t.discarded_tokens + discarded,
        paused_kv_token_seconds=(t.paused_kv_token_seconds + jump * held_away.astype(f)
                                 + dt * held_away_now.astype(f)))
    new = EngineState(slots=slots, next_arrival=next_arrival, until_next=until_next - dt,
                      host_blocks=host_blocks, ttft=ttft, latency=latency,
                      preemptions=request_preemptions, handoff_iteration=handoff,
                      free_queue=queue, totals=totals)
    # Keep the carry's dtypes (with float64 enabled, sums of int32 arrays are int64).
    return jax.tree_util.tree_map(lambda x, old: x.astype(old.dtype), new, state), jump, dt


def _decode_run(spec: EngineSpec, p: EngineParams, predictor: Predictor, requests: Requests,
                key: jax.Array, state: EngineState, allowance, horizon=jnp.inf
                ) -> tuple[EngineState, jax.Array, jax.Array]:
    """Up to `allowance` iterations at once, while nothing but decoding happens.

    When every request in the system that is not paused for a tool call is resident and
    decoding, and they all fit in one batch (by sequences, token budget and KV blocks, the KV
    that paused requests keep on the GPU included), the batch rule schedules all of them
    whatever their order and preempts nobody, so the next iterations are known in closed form
    until an event: the next arrival's boundary, the first return from a call, the first request
    to finish or to start a call, a refinement, or the KV blocks running short. In
    scripts/bench_llm.py a configuration computes 1,095 boundaries in full (the ordering and the
    prefix sums) for 11,121 iterations on average, the rest being such runs. Returns the state
    after m such iterations, m (0 when the boundary now is not of this kind) and the seconds they
    took. Times are summed in closed form, so they differ from iteration-by-iteration sums by
    rounding only.

    horizon: the run also stops at the first boundary at or after this time from now, as it
    does for the next arrival (an instance of a cluster: the next request the router sends).
    """
    n_requests = requests.gap.shape[0]
    s, t = state.slots, state.totals
    f = s.age.dtype
    b = p.block_size
    cap = p.kv_capacity // b
    big = jnp.iinfo(jnp.int32).max // 4

    # The batch: every request not paused. Paused requests rank after it (never preempted here:
    # the run needs their GPU KV to fit beside the batch's) and return at a boundary, like an
    # arrival.
    paused = s.active & s.paused
    batch = s.active & ~s.paused
    seqs = jnp.sum(batch)
    decoding = s.resident & (s.generated >= 1) & (s.kv == s.prompt + s.generated - 1)
    held = jnp.where(paused & s.resident, s.kv, 0)  # GPU KV that paused requests keep
    cap_left = cap - jnp.sum(_blocks(held, b))
    blocks_after_one = jnp.sum(jnp.where(batch, _blocks(s.kv + 1, b), 0))
    u = jnp.minimum(jnp.minimum(state.until_next, horizon),
                    jnp.min(jnp.where(paused, s.until_return, jnp.inf)))
    eligible = ((seqs >= 1) & jnp.all(~batch | decoding) & (u > 0)
                & ~jnp.any(s.active & s.pausing)
                & (seqs <= p.max_seqs) & (seqs <= p.max_batched_tokens)
                & (blocks_after_one <= cap_left))

    # Iteration j (from 0) of the run costs dt_j = a + c j: the KV attended grows by `seqs` a step.
    kv0 = jnp.sum(jnp.where(batch, s.kv, 0))
    a = (p.iter_base + p.iter_per_decode_seq * seqs.astype(f)
         + p.iter_per_kv_token * (kv0 + seqs).astype(f))
    c = p.iter_per_kv_token * seqs.astype(f)

    def elapsed(m):  # T(m): seconds taken by the first m iterations (m float)
        return m * a + c * (m * (m - 1.0) / 2.0)

    # The next arrival (or return) is admitted at the first boundary T(m) >= u: the run stops
    # there.
    half = a - c / 2.0  # >= c / 2 >= 0, since a >= c
    guess = jnp.ceil(2.0 * u / (half + jnp.sqrt(half * half + 2.0 * c * u)))
    guess = jnp.clip(jnp.where(jnp.isfinite(guess), guess, big), 1, big)
    guess = jnp.where(elapsed(guess - 1.0) >= u, guess - 1.0, guess)
    guess = jnp.where(elapsed(guess) < u, guess + 1.0, guess)
    to_arrival = jnp.where(jnp.isfinite(u) & (a > 0), guess, big).astype(jnp.int32)

    to_finish = jnp.min(jnp.where(batch, s.output - s.generated, big))
    # Each request needs at most ceil(m / b) more blocks in m iterations after the first.
    to_kv_limit = 1 + b * ((cap_left - blocks_after_one) // jnp.maximum(seqs, 1))
    limits = [to_arrival, to_finish, to_kv_limit, jnp.asarray(allowance, jnp.int32)]
    if spec.refine:
        k = jnp.maximum(p.refine_every, 1)
        limits.append(jnp.min(jnp.where(batch, k - s.generated % k, big)))
    if spec.pauses:  # stop before the token that starts a call: a full boundary makes it
        column = jnp.minimum(s.calls, spec.pauses - 1)[:, None]
        at = jnp.take_along_axis(requests.pause_at[s.index], column, axis=1)[:, 0]
        calls_left = batch & (s.calls < spec.pauses) & (at > s.generated)
        limits.append(jnp.min(jnp.where(calls_left, at - s.generated - 1, big)))
    m = jnp.where(eligible, jnp.maximum(jnp.min(jnp.stack(limits)), 0), 0)
    mf = m.astype(f)
    seconds = elapsed(mf)

    produced = batch & (m > 0)
    generated = jnp.where(batch, s.generated + m, s.generated)
    kv = jnp.where(batch, s.kv + m, s.kv)
    leaving = produced & (generated == s.output)
    age = s.age + seconds
    out = jnp.where(leaving, s.index, n_requests)  # out of range: dropped by the scatter
    latency = state.latency.at[out].set(age, mode="drop")
    request_preemptions = state.preemptions.at[out].set(s.preemptions, mode="drop")
    slots = s._replace(active=s.active & ~leaving, generated=generated,
                       kv=jnp.where(leaving, 0, kv), resident=s.resident & ~leaving, age=age,
                       prediction=_refine(spec, p, predictor, key, s, produced, generated),
                       until_return=jnp.where(s.paused, s.until_return - seconds,
                                              s.until_return))
    # Resident KV during iteration j is r0 + seqs j; integrate it against dt_j = a + c j.
    kept = jnp.sum(held)
    r0 = (kv0 + kept + seqs).astype(f)
    sf = seqs.astype(f)
    kv_token_seconds = (a * r0 * mf + (a * sf + c * r0) * (mf * (mf - 1.0) / 2.0)
                        + c * sf * ((mf - 1.0) * mf * (2.0 * mf - 1.0) / 6.0))
    totals = t._replace(
        iterations=t.iterations + m, busy_time=t.busy_time + seconds,
        elapsed=t.elapsed + seconds,
        peak_kv_tokens=jnp.maximum(t.peak_kv_tokens,
                                   jnp.where(m > 0, kv0 + kept + m * seqs, 0)),
        kv_token_seconds=t.kv_token_seconds + kv_token_seconds,
        waiting_seconds=t.waiting_seconds + seconds * jnp.sum(paused).astype(f),
        paused_kv_token_seconds=t.paused_kv_token_seconds + seconds * kept.astype(f),
        batched=t.batched + m * seqs, finished=t.finished + jnp.sum(leaving))
    new = state._replace(slots=slots, until_next=state.until_next - seconds, latency=latency,
                         preemptions=request_preemptions, totals=totals)
    return (jax.tree_util.tree_map(lambda x, old: x.astype(old.dtype), new, state),
            m.astype(jnp.int32), seconds)


def run(spec: EngineSpec, p: EngineParams, policy: Policy, predictor: Predictor,
        requests: Requests, key: jax.Array, state: EngineState, max_steps,
        max_iterations) -> EngineState:
    """A batch of runs (every argument but spec and the two limits with a leading axis (B,)),
    each up to `max_steps` loop steps: one full boundary (`step`) and the run of pure-decode
    iterations that may follow it (`_decode_run`). A run stops early once every request has left
    or it has made `max_iterations` iterations in all; the loop ends when every run has stopped.

    The loop is over the batch, not vmapped per run: under vmap, a while loop whose condition
    differs between runs selects every state field between old and new at every step, which
    took two thirds of the step's time on a CPU. Instead a run that has stopped is stepped with
    live=False, a no-op."""
    def live(st):
        return ~done(st, requests) & (st.totals.iterations < max_iterations)

    def one(p, policy, predictor, requests, key, st, live):
        st = step(spec, p, policy, predictor, requests, key, st, live)
        st, _, _ = _decode_run(spec, p, predictor, requests, key, st,
                               max_iterations - st.totals.iterations)
        return st

    def cond(carry):
        i, st = carry
        return (i < max_steps) & jnp.any(live(st))

    def body(carry):
        i, st = carry
        return i + 1, jax.vmap(one)(p, policy, predictor, requests, key, st, live(st))

    return lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), state))[1]
