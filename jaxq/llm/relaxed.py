"""The relaxed LLM engine: a fluid, differentiable stand-in for the exact engine (opt-in; the exact
engine in jaxq.llm.engine is untouched), for `tune_llm(method="gradient")`.

The model (README, "The relaxed LLM engine", spells it out; tests/llm_fluid_reference.py is its
hard limit in plain Python), on an event clock like jaxq.relaxed:
* A request first processes W = P + g tokens (its prefill: progress phi in [0, 1], holding
  phi W KV tokens), then produces one token (the first gives TTFT) and decodes: g grows
  continuously and its KV is P + g - 1. It leaves when g = O.
* Batch membership is soft: m_i = gate_i * clip(S - sum_j ahead_ij gate_j, 0, 1), where
  ahead_ij = sigmoid((r_i - r_j) / tau) (a soft top-S without sorting). A decode's gate is 1;
  a prefill's is clip((free_i - need_i) / tau, 0, 1), soft admission in rank order (free_i:
  the KV nobody holds, less what the prefills ranked ahead still claim).
* Each member processes q_i tokens per iteration: its demand (min(W, B) for a prefill, 1 for a
  decode), cut to what the token budget B leaves after the members ahead. An iteration lasts
  base + c_prefill sum(m q) + c_decode sum(m q) + c_kv sum(m (KV + q)).
* The first request (the lowest rank, a hard choice) always goes with its whole demand, as
  position 1 does in the exact engine.
* Events: the next prefill end, completion, the KV cache filling up, arrival (admitted at once,
  not at the next boundary), or `max_step`. Rates are recomputed at each event.
* When the cache fills, the request holding KV with the highest rank is preempted by recompute:
  a hard choice, so the objective jumps where two ranks cross at a preemption and the pathwise
  gradient misses that part (measured: scripts/bench_tune_llm.py).

Guards as in jaxq.relaxed: a progress rate below TINY_RATE reaches its event at infinity through
a double `where`, so no inf * 0 reaches the backward pass.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxq.llm.engine import EngineParams, Requests
from jaxq.policies import JobView, Policy

LOCK_BONUS = 1e6  # rank units (tokens) a locked request gains
TIE_PER_ARRIVAL = 1e-2  # tokens per arrival: structural ties go to the earlier arrival
TINY_RATE = 1e-12  # a progress rate below this never reaches its event
_MASKED = 1e30  # the rank of an empty slot


@dataclasses.dataclass(frozen=True)
class RelaxedLLMSpec:
    slots: int  # K
    requests: int  # N, all arrive, then the engine drains
    warmup: int  # first requests left out of the objectives
    steps: int  # events per run
    max_step: float = math.inf  # longest time (s) between two re-rankings
    checkpoint: bool = False


class RelaxedLLMRun(NamedTuple):
    latency: jax.Array  # (N,) seconds in system; NaN if dropped or unfinished
    ttft: jax.Array  # (N,) seconds to the first token; NaN if none
    overflow: jax.Array  # () int32
    unfinished: jax.Array  # () int32
    preemptions: jax.Array  # () int32
    peak_kv: jax.Array  # () most KV tokens held at once


class _State(NamedTuple):
    present: jax.Array  # (K,) bool
    prompt: jax.Array  # (K,) P
    output: jax.Array  # (K,) O
    prediction: jax.Array  # (K,)
    generated: jax.Array  # (K,) g, float
    work: jax.Array  # (K,) W: tokens the current prefill processes (0: decoding)
    progress: jax.Array  # (K,) phi in [0, 1] of the current prefill
    kv: jax.Array  # (K,) tokens held
    age: jax.Array  # (K,)
    index: jax.Array  # (K,) int32
    until_arrival: jax.Array  # ()
    arrived: jax.Array  # () int32
    overflow: jax.Array  # () int32
    preemptions: jax.Array  # () int32
    peak_kv: jax.Array  # ()


def ranks(policy: Policy, s: _State) -> jax.Array:
    """(K,) relaxed ranks: the policy's primary, a locked request (one holding KV whose rank is
    locked, hard) LOCK_BONUS lower, ties by TIE_PER_ARRIVAL * index; empty slots last."""
    f = s.age.dtype
    holding = s.kv > 0
    view = JobView(size=s.output, prediction=s.prediction, attained=s.generated, age=s.age,
                   index=s.index, started=holding, prompt=s.prompt, kv=s.kv,
                   peak=s.prompt + s.prediction)
    rank = policy.rank(view)
    r = (rank.primary - LOCK_BONUS * (rank.locked & holding).astype(f)
         + TIE_PER_ARRIVAL * s.index.astype(f))
    return jnp.where(s.present, r, _MASKED)


def _demand(p: EngineParams, s: _State) -> jax.Array:
    """(K,) tokens each request would process in a whole iteration: its prefill's chunk
    min(W, token budget), or 1 for a decode."""
    f = s.age.dtype
    return jnp.where(s.work > 0, jnp.minimum(s.work, p.max_batched_tokens.astype(f)), 1.0)


def memberships(p: EngineParams, s: _State, r, tau) -> tuple[jax.Array, jax.Array]:
    """((K,) soft batch membership m_i in [0, 1], (K,) tokens q_i each member processes per
    iteration: its demand, cut to what the token budget leaves after the requests ahead), for
    ranks r (K,)."""
    f = s.age.dtype
    # ahead[i, j]: how much j is ranked ahead of i (0 on the diagonal, 0 for empty slots).
    others = s.present[None, :] & ~jnp.eye(r.shape[0], dtype=bool)
    gap = (r[:, None] - r[None, :]) / tau
    ahead = jax.nn.sigmoid(gap) * others
    # The first request, a hard choice: softly, two near-tied prefills that do not fit would both
    # go, fill the cache, and preempt each other again and again in no time.
    first = jnp.arange(r.shape[0]) == jnp.argmin(r)
    prefilling = s.work > 0
    # A prefill waits for KV that nobody holds and no prefill ranked ahead of it still claims.
    # (The exact engine instead preempts requests ranked behind it to make room: in a fluid,
    # where a preempted request is back at once, that livelocked.) A decode claims one token at
    # a time and is preempted, not gated, when the cache fills.
    need = jnp.where(prefilling, s.work * (1.0 - s.progress), 0.0)
    free = p.kv_capacity.astype(f) - jnp.sum(jnp.where(s.present, s.kv, 0.0))
    free_for = free - ahead @ need
    # The first request always goes (as position 1 is always admissible in the exact engine):
    # if it does not fit, the cache fills and a request ranked behind it is preempted.
    # The gate ramps from 0 where the prefill just fits to 1 with tau tokens to spare: a prefill
    # that does not fit gets no share at all. (A sigmoid would give it one, its KV would fill
    # the cache, and it would be preempted again at once, without end.)
    fits = jnp.clip((free_for - need) / tau, 0.0, 1.0)
    gate = jnp.where(prefilling, jnp.where(first, 1.0, fits), 1.0) * s.present
    # Near-tied requests count one another as partly ahead, so together they may claim more
    # than the limits hold; the first request still gets its whole share, so that something
    # always moves (without it, such requests could wait for one another forever).
    member = jnp.where(first, gate,
                       gate * jnp.clip(p.max_seqs.astype(f) - ahead @ gate, 0.0, 1.0))
    demand = _demand(p, s)
    tokens = jnp.where(first, demand, jnp.clip(
        p.max_batched_tokens.astype(f) - ahead @ (member * demand), 0.0, demand))
    return member, tokens


def _step(spec: RelaxedLLMSpec, p: EngineParams, policy, tau, req: Requests, s: _State, _):
    k = spec.slots
    f = s.age.dtype
    r = ranks(policy, s)
    m, chunk = memberships(p, s, r, tau)
    prefilling = s.work > 0
    processed = m * chunk  # tokens per iteration, each member
    iteration = (p.iter_base
                 + p.iter_per_prefill_token * jnp.sum(jnp.where(prefilling, processed, 0.0))
                 + p.iter_per_decode_seq * jnp.sum(jnp.where(prefilling, 0.0, processed))
                 + p.iter_per_kv_token * jnp.sum(m * (s.kv + chunk)))
    per_second = processed / iteration  # tokens processed per second, each member
    progress_rate = jnp.where(prefilling, per_second / jnp.where(prefilling, s.work, 1.0), 0.0)
    token_rate = jnp.where(prefilling, 0.0, per_second)
    kv_rate = jnp.where(prefilling, progress_rate * s.work, token_rate)
    # A rate below TINY_RATE never reaches its event: infinite time through a double `where`,
    # so no inf * 0 reaches the backward pass.
    moving_pf = s.present & prefilling & (progress_rate > TINY_RATE)
    moving_dec = s.present & ~prefilling & (token_rate > TINY_RATE)
    to_prefill_end = jnp.where(moving_pf, (1.0 - s.progress)
                               / jnp.where(moving_pf, progress_rate, 1.0), jnp.inf)
    to_finish = jnp.where(moving_dec, (s.output - s.generated)
                          / jnp.where(moving_dec, token_rate, 1.0), jnp.inf)
    held = jnp.sum(jnp.where(s.present, s.kv, 0.0))
    growth = jnp.sum(jnp.where(s.present, kv_rate, 0.0))
    to_full = jnp.where(growth > 0, (p.kv_capacity.astype(f) - held)
                        / jnp.where(growth > 0, growth, 1.0), jnp.inf)
    candidates = jnp.stack([jnp.min(to_prefill_end), jnp.min(to_finish), to_full,
                            s.until_arrival, jnp.asarray(spec.max_step, f)])
    event = jnp.argmin(candidates)
    dt = candidates[event]
    happens = jnp.isfinite(dt)  # False once nothing is left to happen
    event = jnp.where(happens, event, -1)
    dt = jnp.where(happens, dt, 0.0)

    # Advance everyone by dt at the current rates.
    progress = jnp.where(prefilling, s.progress + progress_rate * dt, s.progress)
    generated = s.generated + token_rate * dt
    kv = s.kv + kv_rate * dt
    age = s.age + s.present * dt
    until_arrival = s.until_arrival - dt

    slot_ids = jnp.arange(k)
    # A prefill ends: the request produces a token and decodes from now on.
    ends = (event == 0) & (slot_ids == jnp.argmin(to_prefill_end))
    first_token = ends & (s.generated == 0)
    generated = jnp.where(ends, s.generated + 1.0, generated)
    kv = jnp.where(ends, s.prompt + generated - 1.0, kv)
    work = jnp.where(ends, 0.0, s.work)
    progress = jnp.where(ends, 0.0, progress)
    # A completion (from decoding, or a prefill that produced the last token).
    done_decoding = (event == 1) & (slot_ids == jnp.argmin(to_finish))
    leaves = s.present & (done_decoding | (ends & (generated >= s.output)))
    # The cache fills: the lowest-ranked request holding KV (by the ranks at the step's
    # start) is preempted by recompute.
    holding = s.present & (kv > 0)
    victim = jnp.argmax(jnp.where(holding, r, -jnp.inf))
    preempt = (event == 2) & (slot_ids == victim) & jnp.any(holding)
    work = jnp.where(preempt, s.prompt + generated, work)
    kv = jnp.where(preempt, 0.0, kv)
    progress = jnp.where(preempt, 0.0, progress)

    latency_out = jnp.where(leaves, s.index, spec.requests)
    ttft_out = jnp.where(first_token, s.index, spec.requests)
    present = s.present & ~leaves
    kv = jnp.where(leaves, 0.0, kv)

    # An arrival takes the first free slot (or is dropped and counted).
    arrives = event == 3
    n = s.arrived
    slot = jnp.argmax(~present)
    placed = arrives & ~present[slot]
    into = placed & (slot_ids == slot)
    nxt = jnp.minimum(n, spec.requests - 1)
    put = lambda field, value: jnp.where(into, value, field)  # noqa: E731
    gap_after = jnp.where(n + 1 < spec.requests,
                          req.gap[jnp.minimum(n + 1, spec.requests - 1)], jnp.inf)
    prompt = req.prompt[nxt].astype(f)
    new = _State(
        present=present | into, prompt=put(s.prompt, prompt),
        output=put(s.output, req.output[nxt].astype(f)),
        prediction=put(s.prediction, req.prediction[nxt]),
        generated=put(generated, 0.0), work=put(work, prompt), progress=put(progress, 0.0),
        kv=put(kv, 0.0), age=put(age, 0.0), index=put(s.index, nxt),
        until_arrival=jnp.where(arrives, gap_after, until_arrival),
        arrived=n + arrives.astype(jnp.int32),
        overflow=s.overflow + (arrives & ~placed).astype(jnp.int32),
        preemptions=s.preemptions + jnp.sum(preempt).astype(jnp.int32),
        peak_kv=jnp.maximum(s.peak_kv, jnp.sum(jnp.where(present, kv, 0.0))))
    return new, (latency_out, age, ttft_out)


def run_one(spec: RelaxedLLMSpec, p: EngineParams, policy: Policy, tau,
            req: Requests) -> RelaxedLLMRun:
    """One run of the N requests (one configuration: every argument without batch axes)."""
    k = spec.slots
    f = req.prediction.dtype
    zf = jnp.zeros((k,), f)
    zi = jnp.zeros((), jnp.int32)
    init = _State(present=jnp.zeros((k,), bool), prompt=zf, output=zf, prediction=zf,
                  generated=zf, work=zf, progress=zf, kv=zf, age=zf,
                  index=jnp.zeros((k,), jnp.int32), until_arrival=req.gap[0].astype(f),
                  arrived=zi, overflow=zi, preemptions=zi, peak_kv=jnp.zeros((), f))
    step = partial(_step, spec, p, policy, tau, req)
    if spec.checkpoint:
        step = jax.checkpoint(step)
    state, (leave_index, age, ttft_index) = jax.lax.scan(step, init, None, length=spec.steps)
    n = spec.requests
    # Each step records at most one departure and one first token; `age` holds every slot's age
    # after the step, and the leaving or first-token slot's entry is the time to record.
    rows = jnp.arange(spec.steps)
    leave_slot = jnp.argmax(leave_index < n, axis=1)
    ttft_slot = jnp.argmax(ttft_index < n, axis=1)
    latency = jnp.full((n,), jnp.nan, f).at[leave_index[rows, leave_slot]].set(
        age[rows, leave_slot], mode="drop")
    ttft = jnp.full((n,), jnp.nan, f).at[ttft_index[rows, ttft_slot]].set(
        age[rows, ttft_slot], mode="drop")
    return RelaxedLLMRun(latency=latency, ttft=ttft, overflow=state.overflow,
                         unfinished=jnp.sum(state.present).astype(jnp.int32)
                         + (n - state.arrived), preemptions=state.preemptions,
                         peak_kv=state.peak_kv)
