"""The relaxed single-server queue: a differentiable stand-in for the exact engine (opt-in; the
exact engine in jaxq.queue is untouched and stays the default everywhere).

Why. With fixed randomness the exact engine serves jobs in an order that is piecewise constant in
a policy's parameters (a onebit threshold, sprpt-limited's c, the weights of a linear rank), so
`jax.grad` through it is zero wherever it exists, although the expected response time does
depend on them.

The relaxation, at temperature tau (in the units of the rank: time for size-based ranks):
* the server's capacity is shared among the jobs in system by softmax(-rank / tau), instead of
  going to the job of lowest rank;
* every indicator inside a rank is a sigmoid at the same temperature: onebit's "short" (y < T)
  is sigmoid((T - y) / tau), a non-preemptive policy's "started" (a > 0) is 1 - exp(-a / tau),
  and sprpt-limited's lock (a > c y) is "started" times sigmoid((a - c y) / tau);
* a locked job is served ahead of everything: its rank is lowered by LOCK_BONUS times its lock
  indicator;
* where ties are the rule rather than the exception (fcfs: every rank is 0; onebit: one rank
  per class), they are broken towards earlier arrivals by adding TIE_PER_ARRIVAL times the
  arrival index (minus it for preemptive onebit's short jobs, which are LCFS). One arrival
  apart is a factor exp(-TIE_PER_ARRIVAL / tau) in share: decisive once tau is well below
  TIE_PER_ARRIVAL; above it the order within a class relaxes towards processor sharing, part
  of the relaxation's bias (measured, see the README).
As tau -> 0 the shares tend to the exact engine's choice, and the relaxed run to the exact one
(tested on traces).

The clock. A naive fixed time step breaks continuity (a job finishing mid-step wastes its share
of the step). Here each step jumps to the next event at the current shares: the next arrival,
the next completion (remaining / share), or `max_step` time units, whichever comes first, and
the shares are recomputed after every step. Completion times are then continuous in the
parameters, also where two events swap order, so the pathwise gradient is meaningful. Continuous
is not always smooth enough, though. Under a rank that falls with service (sprpt, the MLP rank)
a near tie is unstable: the job with the larger share pulls away, and the gap grows about like
exp(t / 2 tau). Two jobs really share only if their initial gap is within about
tau exp(-(work at stake) / tau), so much of the objective's change can happen within windows of
a parameter far narrower than tau, where no sample lands, and the pathwise gradient misses it
(README, "When to trust the gradient": the MLP rank's bias against tau). With
max_step = inf only arrivals and completions re-rank; a finite max_step also re-ranks between
them, which policies whose ranks move with service (las, linear with w_attained > w_remaining)
need to approach the exact engine.

Guards: a share below TINY_SHARE gives an infinite completion time through a double `where`, so
no inf * 0 reaches the backward pass; the masked softmax uses a finite floor, never -inf.

One run is N jobs from an empty system: all N arrive (gaps, sizes and predictions sampled as the
exact engine samples them, jaxq.simulate.sample_chunk), then the system drains. Each step is one
event, so 2N steps finish every job when max_step is inf; jobs still in system after the last
step are counted (`unfinished`), never silently dropped from a mean.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxq.policies import (FCFS, LAS, MLP, PSJF, PSPJF, SJF, SPJF, SPRPT, SRPT, JobView,
                           Linear, OneBit, Policy, SPRPTLimited, without_aging)
from jaxq.queue import Chunk

LOCK_BONUS = 1e3  # rank units a fully locked job gains: ahead of any unlocked job
TIE_PER_ARRIVAL = 1e-2  # rank units per arrival: structural ties go to the earlier arrival
TINY_SHARE = 1e-12  # a share below this serves nothing: its completion time is infinite, and
# remaining / share**2 in the backward pass stays finite in float32
_MASKED_LOGIT = -1e30  # the softmax logit of an empty slot
# Every queue policy (with or without an aging term).
_RELAXABLE = (FCFS, LAS, SJF, PSJF, SRPT, SPJF, PSPJF, SPRPT, SPRPTLimited, OneBit, Linear,
              MLP)


@dataclasses.dataclass(frozen=True)
class RelaxedSpec:
    """Static choices: each distinct RelaxedSpec compiles once."""

    capacity: int  # K, job slots per run; an arrival finding all full is dropped and counted
    jobs: int  # N, jobs per run (all arrive, then the system drains)
    warmup: int  # W, first jobs left out of the objectives
    steps: int  # L, events per run (2N finishes every job when max_step is inf)
    max_step: float = math.inf  # longest time between two re-rankings
    checkpoint: bool = False  # recompute each step in the backward pass (reverse mode)

    def __post_init__(self):
        for name, low in (("capacity", 1), ("jobs", 1), ("steps", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not isinstance(self.warmup, int) or not 0 <= self.warmup < self.jobs:
            raise ValueError(f"warmup must be an integer in [0, jobs), got {self.warmup!r}")
        if not self.max_step > 0:
            raise ValueError(f"max_step must be > 0 (inf: events only), got {self.max_step!r}")


class RelaxedRun(NamedTuple):
    """One run of N jobs; under vmap every field gains the batch axes in front."""

    response: jax.Array  # (N,) time in system of each job; NaN if dropped or unfinished
    size: jax.Array  # (N,) true sizes
    overflow: jax.Array  # () int32, arrivals dropped for want of a slot
    unfinished: jax.Array  # () int32, jobs that arrived but had not left after the last step


def relaxed_rank(policy: Policy, jobs: JobView, tau) -> jax.Array:
    """(K,) float: the policy's rank with every indicator smoothed at temperature tau, the lock
    folded in as LOCK_BONUS and structural ties broken by TIE_PER_ARRIVAL * index; lower ranks get
    larger shares.

    The primary rank is the policy's own (jaxq.policies), which is continuous in its parameters
    for every policy but onebit, whose 0/1 class is replaced by 1 - sigmoid((T - y) / tau). Only
    the lock and the tiebreak are relaxed here."""
    base = without_aging(policy)
    if not isinstance(base, _RELAXABLE):
        raise ValueError(f"policy {base.name!r} has no relaxed form")
    primary = policy.rank(jobs).primary  # aging terms included
    started = -jnp.expm1(-jobs.attained / tau)  # "a > 0", 0 at a = 0
    order = jobs.index.astype(jobs.attained.dtype)
    lock = tie = jnp.zeros_like(primary)
    if isinstance(base, (FCFS, SJF, SPJF)):  # non-preemptive: locked once started
        lock = started
    elif isinstance(base, SPRPTLimited):
        # Locked once a > c y, and never before it has started (as c -> 0 a waiting job would
        # otherwise be half locked: sigmoid(0)).
        lock = started * jax.nn.sigmoid((jobs.attained - base.c * jobs.prediction) / tau)
    elif isinstance(base, Linear):
        lock = jnp.where(base.preemptive, 0.0, started)
    elif isinstance(base, OneBit):
        short = jax.nn.sigmoid((base.threshold - jobs.prediction) / tau)
        primary = primary - base.rank(jobs).primary + (1.0 - short)  # soft class, aging kept
        lock = jnp.where(base.preemptive, 0.0, started)
        tie = jnp.where(base.preemptive, (1.0 - 2.0 * short) * order, order)
    if isinstance(base, FCFS):
        tie = order
    return primary - LOCK_BONUS * lock + TIE_PER_ARRIVAL * tie


class _State(NamedTuple):
    present: jax.Array  # (K,) bool
    size: jax.Array  # (K,)
    prediction: jax.Array  # (K,)
    remaining: jax.Array  # (K,) work left
    attained: jax.Array  # (K,) service received
    age: jax.Array  # (K,) time in system
    index: jax.Array  # (K,) int32 arrival index
    until_arrival: jax.Array  # () time to the next arrival, inf when all N have arrived
    arrived: jax.Array  # () int32
    overflow: jax.Array  # () int32


def shares(policy: Policy, state: _State, tau) -> jax.Array:
    """(K,) the fraction of the server each slot gets: softmax(-rank / tau) over present jobs,
    zero for empty slots."""
    view = JobView(state.size, state.prediction, state.attained, state.age, state.index)
    rank = relaxed_rank(policy, view, tau)
    logits = jnp.where(state.present, -rank / tau, _MASKED_LOGIT)
    return jax.nn.softmax(logits) * state.present


def _step(spec: RelaxedSpec, policy, tau, chunk: Chunk, state: _State, _):
    k = spec.capacity
    share = shares(policy, state, tau)
    usable = state.present & (share > TINY_SHARE)
    finish_in = jnp.where(usable, state.remaining / jnp.where(usable, share, 1.0), jnp.inf)
    j = jnp.argmin(finish_in)
    t_finish = jnp.min(finish_in)
    dt = jnp.minimum(jnp.minimum(t_finish, state.until_arrival), spec.max_step)
    dt = jnp.where(jnp.isfinite(dt), dt, 0.0)  # nothing left to happen
    finishes = jnp.isfinite(t_finish) & (t_finish <= jnp.minimum(state.until_arrival,
                                                                  spec.max_step))
    arrives = ~finishes & jnp.isfinite(state.until_arrival) & (state.until_arrival
                                                               <= spec.max_step)
    served = share * dt
    present_f = state.present.astype(dt.dtype)
    remaining = jnp.maximum(state.remaining - served, 0.0)
    attained = state.attained + served
    age = state.age + present_f * dt
    until_arrival = state.until_arrival - dt

    # A completion: slot j leaves; its time in system is the step's output.
    leaves = jnp.arange(k) == j
    departed_index = jnp.where(finishes, state.index[j], spec.jobs)  # N: nobody
    response = age[j]
    present = state.present & ~(finishes & leaves)
    remaining = jnp.where(finishes & leaves, 0.0, remaining)

    # An arrival: job `arrived` takes the first free slot (or is dropped and counted).
    n = state.arrived
    free = ~present
    slot = jnp.argmax(free)
    placed = arrives & free[slot]
    into = placed & (jnp.arange(k) == slot)
    nxt = jnp.minimum(n, spec.jobs - 1)
    put = lambda field, value: jnp.where(into, value, field)  # noqa: E731
    gap_after = jnp.where(n + 1 < spec.jobs, chunk.gap[jnp.minimum(n + 1, spec.jobs - 1)],
                          jnp.inf)
    state = _State(
        present=present | into,
        size=put(state.size, chunk.size[nxt]),
        prediction=put(state.prediction, chunk.prediction[nxt]),
        remaining=put(remaining, chunk.size[nxt]),
        attained=put(attained, 0.0),
        age=put(age, 0.0),
        index=put(state.index, nxt),
        until_arrival=jnp.where(arrives, gap_after, until_arrival),
        arrived=n + arrives.astype(jnp.int32),
        overflow=state.overflow + (arrives & ~placed).astype(jnp.int32),
    )
    return state, (departed_index, response)


def run_one(spec: RelaxedSpec, policy: Policy, tau, chunk: Chunk) -> RelaxedRun:
    """One run of the chunk's N jobs (gap, size, prediction: (N,) each) under `policy` at
    temperature tau."""
    k = spec.capacity
    zf = jnp.zeros((k,), chunk.size.dtype)
    init = _State(present=jnp.zeros((k,), bool), size=zf, prediction=zf, remaining=zf,
                  attained=zf, age=zf, index=jnp.zeros((k,), jnp.int32),
                  until_arrival=chunk.gap[0], arrived=jnp.zeros((), jnp.int32),
                  overflow=jnp.zeros((), jnp.int32))
    step = partial(_step, spec, policy, tau, chunk)
    if spec.checkpoint:
        step = jax.checkpoint(step)
    state, (index, response) = jax.lax.scan(step, init, None, length=spec.steps)
    out = jnp.full((spec.jobs,), jnp.nan, response.dtype).at[index].set(response, mode="drop")
    return RelaxedRun(response=out, size=chunk.size, overflow=state.overflow,
                      unfinished=jnp.sum(state.present).astype(jnp.int32)
                      + (spec.jobs - state.arrived))
