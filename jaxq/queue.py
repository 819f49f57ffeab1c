"""The exact, event-driven single-server engine.

Continuous time, no discretisation: each step of the loop jumps to the next event (an arrival, a
departure, or, for policies whose rank rises with service, the moment the served job catches up
with a waiting one) and advances every job in the system by exactly that much. Jobs live in K
fixed slots; state is kept relative (ages, attained service, time since the last arrival), never
as an absolute clock, so float32 stays accurate on long runs.

Jobs come in chunks of C pre-sampled arrivals (gaps, sizes, predictions). `run_chunk` consumes one
chunk: it processes events until the chunk's last job has arrived (or, in a finite-horizon run,
until the system drains). Everything here works on one (configuration, replica); the driver in
jaxq.simulate vmaps it.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxq.metrics import Accumulators
from jaxq.policies import JobView, Policy

INT_MAX = jnp.iinfo(jnp.int32).max


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """Static choices (hashable): each distinct EngineSpec compiles once."""

    capacity: int  # K, job slots per configuration
    chunk: int  # C, arrivals sampled per chunk
    warmup: int  # W, first jobs not measured
    jobs: int  # N, measured jobs (indices W .. W+N-1)
    finite_horizon: bool  # stop arrivals after job W+N-1, then drain
    bucket_edges: tuple[float, ...]  # size-bucket edges (B-1,)
    histogram_bins: int  # H
    record_jobs: int = 0  # keep each job's response time (traces only)


class Slots(NamedTuple):
    """The jobs in the system, one entry per slot; every field has shape (K,)."""

    present: jax.Array  # bool
    size: jax.Array  # true size x
    prediction: jax.Array  # y
    attained: jax.Array  # service received so far
    age: jax.Array  # time in system
    index: jax.Array  # int32 arrival index
    group: jax.Array  # int32 label; jobs with equal labels share the server (rising ranks only)


class QueueState(NamedTuple):
    slots: Slots
    since_arrival: jax.Array  # () time since the last arrival
    arrived: jax.Array  # () int32, jobs that have arrived (= index of the next one)
    finished: jax.Array  # () int32, measured jobs that departed or were dropped
    overflow: jax.Array  # () int32, arrivals dropped because all K slots were full
    number: jax.Array  # () int32, jobs in system now
    max_in_system: jax.Array  # () int32, largest number in system seen
    metrics: Accumulators
    responses: jax.Array  # (record_jobs,) response time of each job (traces only), NaN if none


class Chunk(NamedTuple):
    """C pre-sampled arrivals: gap[i] is the time from the previous arrival to arrival i."""

    gap: jax.Array  # (C,)
    size: jax.Array  # (C,)
    prediction: jax.Array  # (C,)


def init_state(spec: EngineSpec) -> QueueState:
    k = spec.capacity
    zf = jnp.zeros((k,), dtype=float)
    slots = Slots(
        present=jnp.zeros((k,), bool), size=zf, prediction=zf, attained=zf, age=zf,
        index=jnp.zeros((k,), jnp.int32), group=jnp.zeros((k,), jnp.int32))
    zi = jnp.zeros((), jnp.int32)
    return QueueState(
        slots=slots, since_arrival=jnp.zeros((), float), arrived=zi, finished=zi, overflow=zi,
        number=zi, max_in_system=zi,
        metrics=Accumulators.zeros(len(spec.bucket_edges) + 1, spec.histogram_bins),
        responses=jnp.full((spec.record_jobs,), jnp.nan, dtype=float))


def is_active(spec: EngineSpec, state: QueueState) -> jax.Array:
    """False once every measured job has departed (or was dropped): the run is then frozen, so a
    configuration's result never depends on how long the other configurations ran."""
    return state.finished < spec.jobs


def _first(mask):
    """Index of the first slot where mask holds (K if none). Plain min-reductions vectorise far
    better on CPU than argmin's variadic reduction."""
    return jnp.min(jnp.where(mask, jnp.arange(mask.shape[-1], dtype=jnp.int32), mask.shape[-1]))


def _argmin(values, mask):
    """Index of the first smallest value among slots where mask holds (0 if none)."""
    v = jnp.where(mask, values, jnp.inf)
    return jnp.minimum(_first(mask & (v == jnp.min(v))), mask.shape[-1] - 1)


def _lexicographic_argmin(mask, primary, tiebreak):
    """Index of the smallest (primary, tiebreak) among slots where mask holds (0 if none).
    Tiebreaks are distinct (arrival indices), so the result is unique."""
    p = jnp.where(mask, primary, jnp.inf)
    tied = mask & (p == jnp.min(p))
    t = jnp.where(tied, tiebreak, INT_MAX)
    return jnp.minimum(_first(tied & (t == jnp.min(t))), mask.shape[-1] - 1)


class _Service(NamedTuple):
    """Who is served now and when the next departure or merge would happen."""

    served: jax.Array  # (K,) bool
    n_served: jax.Array  # () int32
    group: jax.Array  # () int32 label of the served group
    leaving: jax.Array  # () int32 slot of the served job with least remaining work
    dt_done: jax.Array  # () time to its departure (inf if idle)
    dt_merge: jax.Array  # () time until the served group catches up with a waiting job (or inf)
    next_group: jax.Array  # () int32 label of the group it would catch up with


def _who_is_served(policy: Policy, s: Slots, primary, rank) -> _Service:
    """The best job, by (primary, tiebreak), and, for policies whose rank rises with service,
    every job sharing its group label; they share the server equally."""
    anyone = jnp.any(s.present)
    best = _lexicographic_argmin(s.present, primary, rank.tiebreak)
    remaining = s.size - s.attained
    if not policy.may_share:
        # One job at a time and nothing to catch up with: the cheap path for most policies.
        served = (jnp.arange(s.present.shape[0]) == best) & anyone
        return _Service(served, anyone.astype(jnp.int32), s.group[best], best,
                        jnp.where(anyone, remaining[best], jnp.inf), jnp.asarray(jnp.inf, float),
                        s.group[best])
    served = s.present & (s.group == s.group[best]) & anyone
    n_served = jnp.sum(served, dtype=jnp.int32)
    leaving = _argmin(remaining, served)
    dt_done = jnp.where(anyone, remaining[leaving] * n_served, jnp.inf)
    slope = policy.slope()
    others = s.present & ~served
    waiting_best = _lexicographic_argmin(others, primary, rank.tiebreak)
    catch_up = jnp.maximum(primary[waiting_best] - primary[best], 0.0)
    dt_merge = jnp.where(policy.shares() & jnp.any(others) & ~rank.locked[best],
                         catch_up * n_served / jnp.where(slope > 0, slope, 1.0), jnp.inf)
    return _Service(served, n_served, s.group[best], leaving, dt_done, dt_merge,
                    s.group[waiting_best])


# Measured response times are buffered in batches of this many before they go into the histogram.
HISTOGRAM_BATCH = 32


class _Carry(NamedTuple):
    state: QueueState
    ptr: jax.Array  # () int32, next job of the chunk to arrive
    pending: jax.Array  # (HISTOGRAM_BATCH,) response times not yet in the histogram
    num_pending: jax.Array  # () int32


def _step(spec: EngineSpec, policy: Policy, bucket_edges, chunk: Chunk, carry: _Carry) -> _Carry:
    """Advance to the next event and process it."""
    state, ptr = carry.state, carry.ptr
    s = state.slots
    view = JobView(s.size, s.prediction, s.attained, s.age, s.index)
    rank = policy.rank(view)
    primary = jnp.where(rank.locked, -jnp.inf, rank.primary)

    sv = _who_is_served(policy, s, primary, rank)
    share = sv.served / jnp.maximum(sv.n_served, 1).astype(float)
    arrivals_open = ptr < spec.chunk
    if spec.finite_horizon:
        arrivals_open &= state.arrived < spec.warmup + spec.jobs
    gap = chunk.gap[jnp.minimum(ptr, spec.chunk - 1)]
    dt_arrive = jnp.where(arrivals_open, jnp.maximum(gap - state.since_arrival, 0.0), jnp.inf)

    # A configuration with no work left in this chunk takes no step (it idles while others run).
    work = _has_work(spec, state, ptr)
    dt_done, dt_merge = sv.dt_done, sv.dt_merge
    is_done = work & (dt_done <= dt_merge) & (dt_done <= dt_arrive) & jnp.isfinite(dt_done)
    is_merge = work & ~is_done & (dt_merge <= dt_arrive) & jnp.isfinite(dt_merge)
    is_arrival = work & ~is_done & ~is_merge & jnp.isfinite(dt_arrive)
    dt = jnp.where(is_done, dt_done,
                   jnp.where(is_merge, dt_merge, jnp.where(is_arrival, dt_arrive, 0.0)))

    # Advance time by dt. The measurement window runs from the arrival of job W to that of W+N.
    in_window = (state.arrived > spec.warmup) & (state.arrived <= spec.warmup + spec.jobs)
    metrics = state.metrics.record_interval(in_window, dt, state.number, sv.n_served > 0)
    attained = s.attained + share * dt
    age = jnp.where(s.present, s.age + dt, s.age)

    # Departure: the served job with least remaining work.
    leaving = sv.leaving
    leave_index = s.index[leaving]
    measured = is_done & (leave_index >= spec.warmup) & (leave_index < spec.warmup + spec.jobs)
    metrics = metrics.record_departure(measured, age[leaving], s.size[leaving], bucket_edges)
    pending = carry.pending.at[carry.num_pending].set(
        jnp.where(measured, age[leaving], carry.pending[carry.num_pending]), mode="drop")
    present = s.present & ~((jnp.arange(spec.capacity) == leaving) & is_done)

    # Merge: the best waiting job's whole group joins the served group.
    group = jnp.where(is_merge & s.present & (s.group == sv.next_group), sv.group, s.group)

    # Arrival: job ptr of the chunk takes the first free slot, or is dropped if there is none.
    free = _first(~present)
    has_room = free < spec.capacity
    admit = is_arrival & has_room
    dropped = is_arrival & ~has_room
    new = jnp.arange(spec.capacity) == free
    take = lambda new_value, old: jnp.where(new & admit, new_value, old)  # noqa: E731
    j = jnp.minimum(ptr, spec.chunk - 1)
    slots = Slots(
        present=take(True, present),
        size=take(chunk.size[j], s.size),
        prediction=take(chunk.prediction[j], s.prediction),
        attained=take(0.0, attained),
        age=take(0.0, age),
        index=take(state.arrived, s.index),
        group=take(state.arrived, group),
    )
    arrived_measured = (state.arrived >= spec.warmup) & (state.arrived < spec.warmup + spec.jobs)

    responses = state.responses
    if spec.record_jobs:
        responses = responses.at[jnp.where(is_done, leave_index, spec.record_jobs)].set(
            age[leaving], mode="drop")

    number = state.number + admit - is_done
    new_state = QueueState(
        slots=slots,
        since_arrival=jnp.where(is_arrival, 0.0, state.since_arrival + dt),
        arrived=state.arrived + is_arrival,
        finished=state.finished + measured + (dropped & arrived_measured),
        overflow=state.overflow + dropped,
        number=number,
        max_in_system=jnp.maximum(state.max_in_system, number),
        metrics=metrics,
        responses=responses,
    )
    return _Carry(new_state, ptr + is_arrival, pending, carry.num_pending + measured)


def _has_work(spec: EngineSpec, state: QueueState, ptr) -> jax.Array:
    """Whether this configuration has events to process before the next chunk is needed."""
    more = ptr < spec.chunk
    if spec.finite_horizon:
        more |= state.arrived >= spec.warmup + spec.jobs
    return is_active(spec, state) & more


def run_chunk(spec: EngineSpec, policy: Policy, mean_size, chunk: Chunk,
              state: QueueState) -> QueueState:
    """Process events until all C arrivals of `chunk` are in (finite horizon: until drained).

    Events are taken HISTOGRAM_BATCH steps at a time (a fixed-length inner loop, so that under
    vmap every configuration steps in lockstep and the histogram update that follows runs once per
    batch, not once per event); configurations that run out of work idle until all are done."""
    bucket_edges = jnp.asarray(spec.bucket_edges, dtype=float)

    def keep_going(carry: _Carry):
        return _has_work(spec, carry.state, carry.ptr)

    def step(_, carry: _Carry):
        return _step(spec, policy, bucket_edges, chunk, carry)

    def batch(carry: _Carry):
        carry = jax.lax.fori_loop(0, HISTOGRAM_BATCH, step, carry._replace(
            num_pending=jnp.zeros((), jnp.int32)))
        valid = jnp.arange(HISTOGRAM_BATCH) < carry.num_pending
        metrics = carry.state.metrics.record_histogram(carry.pending, valid, mean_size)
        return carry._replace(state=carry.state._replace(metrics=metrics))

    start = _Carry(state, jnp.zeros((), jnp.int32),
                   jnp.ones((HISTOGRAM_BATCH,), dtype=float), jnp.zeros((), jnp.int32))
    return jax.lax.while_loop(keep_going, batch, start).state
