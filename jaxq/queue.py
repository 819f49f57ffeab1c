"""The exact, event-driven engine: one server, or k servers fed by one central queue.

Continuous time, no discretisation: each step of the loop jumps to the next event (an arrival, a
departure, or, for policies whose rank rises with service, the moment the served jobs catch up
with waiting ones) and advances every job in the system by exactly that much. With k servers the
k best-ranked jobs are served, each by a server of its own (under a rank that rises with service,
jobs whose ranks have met share the servers left to them: see _shared_servers). Jobs live in K
fixed slots; state is kept relative (ages, attained service, time since the last arrival), never
as an absolute clock, so float32 stays accurate on long runs.

Jobs come in chunks of C pre-sampled arrivals (gaps, sizes, predictions). `run_chunk` consumes one
chunk: it processes events until the chunk's last job has arrived (or, in a finite-horizon run,
until the system drains). It runs a batch of B independent (configuration, replica) pairs in
lockstep; the driver in jaxq.simulate flattens configurations x replicas into that batch.
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
    servers: int = 1  # the most servers any configuration of the batch has (its own: `servers`)
    dispatch: object = None  # a jaxq.dispatch.Dispatch: servers with queues of their own


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


# The engine runs a batch of B independent (configuration, replica) pairs in lockstep. Inside
# run_chunk the job slots are laid out (K, B), batch last: every per-slot operation and every
# reduction over slots is then a plain vector operation along B (a min over slots is K - 1
# elementwise minima of B-vectors). Per-configuration values (policy parameters, counters) are
# (B,) and broadcast against (K, B).
#
# What made steps fast on CPU (scripts/bench_queue.py workload, one CPU device): vmap's (B, K)
# layout ran 2.1M jobs/s; this layout with the decide/apply split (see _Event), fields picked in
# one reduction (_pick_fields) and the counters packed in one array runs 4.2M jobs/s. Each XLA
# kernel a step runs costs about as much as its arithmetic, so fewer kernels is the main lever.
_ARRIVED, _FINISHED, _OVERFLOW, _NUMBER, _MAX_IN_SYSTEM = range(5)  # rows of _Inner.counters


class _Inner(NamedTuple):
    """The state inside run_chunk."""

    present: jax.Array  # (K, B) bool
    size: jax.Array  # (K, B)
    prediction: jax.Array  # (K, B)
    attained: jax.Array  # (K, B)
    age: jax.Array  # (K, B)
    index: jax.Array  # (K, B) int32
    group: jax.Array  # (K, B) int32
    since_arrival: jax.Array  # (B,)
    counters: jax.Array  # (5, B) int32: arrived, finished, overflow, number, max_in_system
    responses: jax.Array  # (record_jobs, B)


def _to_inner(state: QueueState) -> _Inner:
    counters = jnp.stack([state.arrived, state.finished, state.overflow, state.number,
                          state.max_in_system])
    return _Inner(*(a.T for a in state.slots), state.since_arrival, counters,
                  state.responses.T)


def _from_inner(p: _Inner, metrics: Accumulators) -> QueueState:
    slots = Slots(p.present.T, p.size.T, p.prediction.T, p.attained.T, p.age.T, p.index.T,
                  p.group.T)
    c = p.counters
    return QueueState(slots=slots, since_arrival=p.since_arrival, arrived=c[_ARRIVED],
                      finished=c[_FINISHED], overflow=c[_OVERFLOW], number=c[_NUMBER],
                      max_in_system=c[_MAX_IN_SYSTEM], metrics=metrics, responses=p.responses.T)


def _best(mask, primary, tiebreak, also_first=None):
    """One-hot (K, B) of the slot with the smallest (primary, tiebreak) among those where mask
    holds (all False where none), and that primary (B,). Tiebreaks of jobs present are distinct.

    With also_first (K, B) bool, also returns the first slot where it holds (K if none),
    computed in the same reduction as the tiebreak (one kernel fewer per step)."""
    p = jnp.where(mask, primary, jnp.inf)
    p_min = jnp.min(p, axis=0)
    tied = mask & (p == p_min)
    candidates = jnp.where(tied, tiebreak, INT_MAX)
    if also_first is None:
        t_min = jnp.min(candidates, axis=0)
        return tied & (tiebreak == t_min), p_min
    k = mask.shape[0]
    slots = jnp.where(also_first, jnp.arange(k, dtype=jnp.int32)[:, None], k)
    t_min, first = jnp.min(jnp.stack([candidates, slots]), axis=1)
    return tied & (tiebreak == t_min), p_min, first


def _pick(onehot, values):
    """The value (...) at the slot where onehot (K, B) holds, from values (..., K, B); 0 where
    none. A masked sum, exact (one nonzero term), and cheaper on CPU than a batched gather."""
    return jnp.sum(jnp.where(onehot, values, jnp.zeros((), values.dtype)), axis=-2,
                   dtype=values.dtype)


def _pick_fields(onehot, floats, ints):
    """_pick of several float (K, B) and int32 (K, B) fields in one reduction (one kernel): the
    floats travel as their bit patterns, summed as integers with zeros, which is exact."""
    dtype = floats[0].dtype
    bits = jnp.int32 if dtype == jnp.float32 else jnp.int64
    stacked = jnp.stack([jax.lax.bitcast_convert_type(f, bits) for f in floats]
                        + [i.astype(bits) for i in ints])
    picked = _pick(onehot, stacked)
    return ([jax.lax.bitcast_convert_type(v, dtype) for v in picked[:len(floats)]]
            + [v.astype(jnp.int32) for v in picked[len(floats):]])


# Events run in batches of this many steps; their records go into the metrics once per batch.
STEPS_PER_BATCH = 32

# Rows of a step's record (7, B), summed into the metrics once per batch.
_W, _W_BUSY, _W_NUMBER, _RESPONSE, _SLOWDOWN, _LEAVING_SIZE, _MEASURED = range(7)


def step_record(w, w_busy, w_number, measured, response, size):
    """A step's record (7, ...) for record_batch, from (...) arrays: the time w advanced in the
    measurement window, w times the busy servers' share and times the number in system, and
    the response time, slowdown and size of a measured departure (measured: bool), with a 0/1
    flag."""
    zero = jnp.zeros((), w.dtype)
    return jnp.stack([w, w_busy, w_number, jnp.where(measured, response, zero),
                      jnp.where(measured, response / size, zero),
                      jnp.where(measured, size, zero), measured.astype(w.dtype)])


class _Event(NamedTuple):
    """Each configuration's next event, decided from the current state. Fields are (B,) unless
    marked.

    Deciding and applying are separate steps of the loop, and the decision is carried from one
    iteration to the next: within one XLA computation, the per-configuration logic that decides
    is fused into every (K, B) update that reads it and recomputed for each of the K slots
    (measured: 1.8x slower steps). The fields are separate arrays: packing them as rows of one
    array measured 2.7x slower (XLA then fuses the packing into its readers)."""

    done: jax.Array  # bool: a departure
    merge: jax.Array  # bool: the served group catches up with the best waiting job's group
    arrival: jax.Array  # bool
    dt: jax.Array  # time to the event (0 for a configuration with no work)
    served: jax.Array  # (K, B) bool, the jobs in service
    leaving: jax.Array  # (K, B) bool, one-hot: the served job with least remaining work
    served_group: jax.Array  # int32 label of the group served (sharing policies)
    rate: jax.Array  # service rate of each served job: (B,) if all share it, else (K, B)
    next_group: jax.Array  # int32 label of the group a merge joins
    free_slot: jax.Array  # int32 first free slot (K if none)
    new_size: jax.Array  # the arriving job's size
    new_prediction: jax.Array  # and prediction
    finishes: jax.Array  # int32 measured jobs the event finishes (a departure or a drop)
    leave_index: jax.Array  # int32 arrival index of the leaving job
    leave_age: jax.Array  # its response time


def _top(mask, primary, tiebreak, first, servers, most: int):
    """(K, B) bool: the `servers` (B,) best slots where mask holds by (primary, tiebreak), all of
    them if fewer; `first` is the best one (from _best). One masked minimum per further server,
    up to `most` (static)."""
    served = first
    for extra in range(1, most):
        more, _ = _best(mask & ~served, primary, tiebreak)
        served |= more & (extra < servers)
    return served


def _shared_servers(policy: Policy, p: _Inner, primary, tiebreak, servers, most: int):
    """Who is served, and at what rate, on k servers under a rank that rises with service (las,
    linear with slope > 0): groups (jobs with one label, whose ranks have met) take servers in
    rank order, each job of a group that fits on a server of its own, and the first group that
    does not fit shares what is left equally (the limit of ties broken by arrival order as the
    ranks rise). So every job is served at rate 1 but those of that boundary group, and at most
    `most` groups are served.

    Ranks change at slope * rate, so two adjacent groups meet only where the one ahead moves
    faster: the last full group catching the boundary group, or the last served group catching
    the best waiting one. Returns served (K, B) bool, rate (K, B), the time per unit of remaining
    work (K, B) (1 / rate where served), the time to the first such meeting (B,) (inf if none)
    and the labels of the group that absorbs and of the one absorbed. (Times are written as
    work * size / share, which is how the one-server engine rounds them: one server then gives
    its results bit for bit.)"""
    dtype = primary.dtype
    assigned = jnp.zeros(primary.shape, bool)
    rate = jnp.zeros(primary.shape, dtype)
    per_work = jnp.ones(primary.shape, dtype)
    left = servers
    none = jnp.full(servers.shape, -1, jnp.int32)
    zero = jnp.zeros(servers.shape, dtype)
    # (label, primary, share, size) of the last two groups given servers; label -1 if none
    last = before = (none, zero, zero, zero)
    for _ in range(most):
        pick, p_pick = _best(p.present & ~assigned, primary, tiebreak)
        label = _pick(pick, p.group)
        members = p.present & ~assigned & (p.group == label) & jnp.any(pick, axis=0)
        size = jnp.sum(members, axis=0, dtype=jnp.int32)
        got = (left > 0) & (size > 0)
        share = jnp.minimum(size, left)
        members &= got
        share_f, size_f = share.astype(dtype), size.astype(dtype)
        rate = jnp.where(members, share_f / size_f, rate)
        per_work = jnp.where(members, size_f / share_f, per_work)
        assigned |= members
        left = left - jnp.where(got, share, 0)
        before = tuple(jnp.where(got, b, a) for a, b in zip(before, last))
        last = tuple(jnp.where(got, b, a) for a, b in zip(last, (label, p_pick, share_f, size_f)))
    waiting, p_waiting = _best(p.present & ~assigned, primary, tiebreak)
    slope = policy.slope()
    meet = policy.shares() & (slope > 0)  # else ranks never meet: every group is one job
    slope = jnp.where(meet, slope, 1.0)
    # the last full group catching the boundary group (which moves at rate < 1)
    last_rate = last[2] / jnp.maximum(last[3], 1.0)
    catch = meet & (before[0] >= 0) & (last_rate < 1.0)
    dt_catch = jnp.where(catch, jnp.maximum(last[1] - before[1], 0.0)
                         / (slope * jnp.where(catch, 1.0 - last_rate, 1.0)), jnp.inf)
    # the last served group catching the best waiting one
    reach = meet & (last[0] >= 0) & jnp.any(waiting, axis=0)
    dt_reach = jnp.where(reach, jnp.maximum(p_waiting - last[1], 0.0) * last[3]
                         / (slope * jnp.where(reach, last[2], 1.0)), jnp.inf)
    first = dt_catch <= dt_reach
    return (assigned, rate, per_work, jnp.minimum(dt_catch, dt_reach),
            jnp.where(first, before[0], last[0]),
            jnp.where(first, last[0], _pick(waiting, p.group)))


class Service(NamedTuple):
    """Who is served and when the next internal event comes: (B,) fields unless marked.

    A "merge" is any internal event that changes who is served without a departure: groups
    meeting under a sharing policy, or a served job reaching a level of attained service where
    its rank jumps (Policy.changes; such policies never share). The loop stops there and
    chooses again."""

    served: jax.Array  # (K, B) bool, the jobs in service
    leaving: jax.Array  # (K, B) bool, one-hot: the served job that finishes first
    rate: jax.Array  # service rate of each served job: (B,) if all share it, else (K, B)
    served_group: jax.Array  # int32 label of the group served (sharing policies)
    next_group: jax.Array  # int32 label of the group a merge joins
    dt_done: jax.Array  # time to the next departure (inf if no job)
    dt_merge: jax.Array  # time to the next merge of groups or rank jump (inf if none)
    leave_size: jax.Array  # the leaving job's size,
    leave_age: jax.Array  # its time in system now,
    leave_index: jax.Array  # int32 and its arrival index
    free_slot: jax.Array  # int32 first free slot (K if none)


def next_service(policy: Policy, p, anyone, servers, most: int) -> Service:
    """Who is served, at what rate, and the time to the next departure or merge, for a batch of
    configurations whose jobs are p's (K, B) fields (present, size, prediction, attained, age,
    index, group). anyone: (B,) whether any job is present; servers: (B,) int32 servers behind
    the central queue, at most `most` (static; 1: one server, which never reads `servers`)."""
    dtype = p.size.dtype
    inf = jnp.full(anyone.shape, jnp.inf, dtype)
    if policy.changes and policy.may_share:
        raise ValueError(f"policy {policy.name!r} both shares the server and has rank jumps, "
                         f"which the engine does not combine")
    view = JobView(p.size, p.prediction, p.attained, p.age, p.index)
    rank = policy.rank(view)
    primary = jnp.where(rank.locked, -jnp.inf, rank.primary)
    remaining = p.size - p.attained

    # Who is served: the best job by (primary, tiebreak); for policies whose rank rises with
    # service, every job sharing its group label, in equal shares.
    best, p_best, free_slot = _best(p.present, primary, rank.tiebreak, also_first=~p.present)
    if policy.may_share and most == 1:
        served_group = _pick(best, p.group)
        served = p.present & (p.group == served_group) & anyone
        n_served = jnp.sum(served, axis=0, dtype=jnp.int32)
        leaving, least = _best(served, remaining, p.index)
        dt_done = jnp.where(anyone, least * n_served, inf)
        others = p.present & ~served
        waiting, p_waiting = _best(others, primary, rank.tiebreak)
        catch_up = jnp.maximum(p_waiting - p_best, 0.0)
        locked_best = jnp.any(best & rank.locked, axis=0)
        slope = policy.slope()
        dt_merge = jnp.where(policy.shares() & jnp.any(others, axis=0) & ~locked_best,
                             catch_up * n_served / jnp.where(slope > 0, slope, 1.0), inf)
        next_group = _pick(waiting, p.group)
        leave_size, leave_age, leave_index = _pick_fields(leaving, [p.size, p.age], [p.index])
        rate = 1.0 / jnp.maximum(n_served, 1).astype(dtype)
    elif policy.may_share:
        served, rate, per_work, dt_merge, served_group, next_group = _shared_servers(
            policy, p, primary, rank.tiebreak, servers, most)
        leaving, dt_done = _best(served, remaining * per_work, p.index)
        dt_done = jnp.where(anyone, dt_done, inf)
        leave_size, leave_age, leave_index = _pick_fields(leaving, [p.size, p.age], [p.index])
    elif most > 1:
        # A central queue with k servers: the k best jobs are served, one per server at rate 1
        # (locked jobs rank first, and at most k are ever locked: only served jobs start).
        # Ranks that do not rise with service never overtake, so only arrivals and departures
        # change who is served.
        served_group = next_group = jnp.zeros(anyone.shape, jnp.int32)
        served = _top(p.present, primary, rank.tiebreak, best, servers, most)
        rate = jnp.ones(anyone.shape, dtype)
        # Jobs that finish at one instant leave one step at a time. In between, a rank jump
        # (delaypredict: a job whose size is its limit) can push a finished job out of the k
        # best, so every finished job present may leave, served or not.
        finished = p.present & (remaining <= 0.0)
        leaving, least = _best(served | finished, remaining, p.index)
        leave_size, leave_age, leave_index = _pick_fields(leaving, [p.size, p.age], [p.index])
        dt_done = jnp.where(anyone, least, inf)
        dt_merge = inf
        if policy.changes:  # the first served job to reach a level where its rank jumps
            to_change = policy.next_change(view) - p.attained
            dt_merge = jnp.min(jnp.where(served, to_change, jnp.inf), axis=0)
    else:  # one job at a time and nothing to catch up with: the cheap path for most policies
        served_group = next_group = jnp.zeros(anyone.shape, jnp.int32)
        served = leaving = best
        rate = jnp.ones(anyone.shape, dtype)
        if policy.changes:  # the served job's rank jumps when its attained service reaches a level
            leave_size, leave_age, least, to_change, leave_index = _pick_fields(
                best, [p.size, p.age, remaining, policy.next_change(view) - p.attained],
                [p.index])
            dt_merge = jnp.where(anyone, to_change, inf)
        else:
            leave_size, leave_age, least, leave_index = _pick_fields(
                best, [p.size, p.age, remaining], [p.index])
            dt_merge = inf
        dt_done = jnp.where(anyone, least, inf)
    return Service(served=served, leaving=leaving, rate=rate, served_group=served_group,
                    next_group=next_group, dt_done=dt_done, dt_merge=dt_merge,
                    leave_size=leave_size, leave_age=leave_age, leave_index=leave_index,
                    free_slot=free_slot)


def _decide(spec: EngineSpec, policy: Policy, chunk: Chunk, start_arrived, servers, p: _Inner):
    """The next event of every configuration, and its record (7, B) for the metrics: the time
    advanced inside the measurement window (also the busy servers' share of that time, and that
    time times the number in system), and the response time, slowdown and size of a measured
    departure, with a 0/1 flag. servers: (B,) int32, each configuration's number of servers."""
    dtype = p.size.dtype
    arrived, number = p.counters[_ARRIVED], p.counters[_NUMBER]
    anyone = number > 0
    inf = jnp.full(anyone.shape, jnp.inf, dtype)
    ptr = arrived - start_arrived  # next job of the chunk to arrive
    s = next_service(policy, p, anyone, servers, spec.servers)
    dt_done, dt_merge, free_slot = s.dt_done, s.dt_merge, s.free_slot
    leave_size, leave_age, leave_index = s.leave_size, s.leave_age, s.leave_index

    arrivals_open = ptr < spec.chunk
    if spec.finite_horizon:
        arrivals_open &= arrived < spec.warmup + spec.jobs
    j = jnp.minimum(ptr, spec.chunk - 1)[None]
    gap, new_size, new_prediction = (jnp.take_along_axis(a, j, axis=0)[0] for a in chunk)
    dt_arrive = jnp.where(arrivals_open, jnp.maximum(gap - p.since_arrival, 0.0), inf)

    # A configuration with no work left in this chunk takes no step (it idles while others run).
    work = has_work(spec, p.counters, start_arrived)
    done = work & (dt_done <= dt_merge) & (dt_done <= dt_arrive) & jnp.isfinite(dt_done)
    merge = work & ~done & (dt_merge <= dt_arrive) & jnp.isfinite(dt_merge)
    arrival = work & ~done & ~merge & jnp.isfinite(dt_arrive)
    dt = jnp.where(done, dt_done, jnp.where(merge, dt_merge, jnp.where(arrival, dt_arrive, 0.0)))

    # The measurement window runs from the arrival of job W to that of job W+N, and jobs
    # W .. W+N-1 are measured.
    leave_age = leave_age + dt
    measured = done & (leave_index >= spec.warmup) & (leave_index < spec.warmup + spec.jobs)
    arrived_measured = (arrived >= spec.warmup) & (arrived < spec.warmup + spec.jobs)
    dropped_measured = arrival & (free_slot >= spec.capacity) & arrived_measured
    in_window = (arrived > spec.warmup) & (arrived <= spec.warmup + spec.jobs)
    w = jnp.where(in_window, dt, 0.0)
    busy = jnp.minimum(number, servers).astype(dtype) / servers.astype(dtype)
    record = step_record(w, w * busy, w * number, measured, leave_age, leave_size)
    event = _Event(
        done=done, merge=merge, arrival=arrival, dt=dt, served=s.served, leaving=s.leaving,
        served_group=s.served_group, rate=s.rate, next_group=s.next_group, free_slot=free_slot,
        new_size=new_size, new_prediction=new_prediction,
        finishes=(measured | dropped_measured).astype(jnp.int32), leave_index=leave_index,
        leave_age=leave_age)
    return event, record


def serve(policy: Policy, p, s, dt, done, merge):
    """(present, attained, age, group) (K, B) after dt (B,) of service by s (an _Event or a
    Service) and then its departure where `done` or its merge where `merge` (B,) bool: the
    leaving job leaves; the best waiting job's whole group joins the served group."""
    attained = p.attained + jnp.where(s.served, s.rate, 0.0) * dt
    age = jnp.where(p.present, p.age + dt, p.age)
    present = p.present & ~(s.leaving & done)
    group = p.group  # only policies that may share use groups
    if policy.may_share:
        group = jnp.where(merge & present & (group == s.next_group), s.served_group, group)
    return present, attained, age, group


def _apply(spec: EngineSpec, policy: Policy, p: _Inner, e: _Event) -> _Inner:
    """Advance every configuration by its event's dt and process the event."""
    dt, done, merge, arrival = e.dt, e.done, e.merge, e.arrival
    slot = jnp.arange(spec.capacity, dtype=jnp.int32)[:, None]
    present, attained, age, group = serve(policy, p, e, dt, done, merge)
    # Arrival: the job takes the first free slot, or is dropped if there is none. (An arrival
    # step has no departure, so the free slots are those free before the step.)
    free_slot = e.free_slot
    admit = arrival & (free_slot < spec.capacity)
    new = (slot == free_slot) & admit
    arrived, finished, overflow, number, max_in_system = p.counters
    responses = p.responses
    if spec.record_jobs:  # traces (B = 1): each job's response time, by arrival index
        responses = responses.at[jnp.where(done, e.leave_index, spec.record_jobs), 0].set(
            e.leave_age, mode="drop")
    if policy.may_share:  # a new job is a group of its own
        group = jnp.where(new, arrived, group)
    number = number + admit - done
    counters = jnp.stack([arrived + arrival, finished + e.finishes,
                          overflow + (arrival & ~admit), number,
                          jnp.maximum(max_in_system, number)]).astype(jnp.int32)
    return _Inner(
        present=present | new,
        size=jnp.where(new, e.new_size, p.size),
        prediction=jnp.where(new, e.new_prediction, p.prediction),
        attained=jnp.where(new, 0.0, attained),
        age=jnp.where(new, 0.0, age),
        index=jnp.where(new, arrived, p.index),
        group=group,
        since_arrival=jnp.where(arrival, 0.0, p.since_arrival + dt),
        counters=counters,
        responses=responses,
    )


def has_work(spec: EngineSpec, counters, start_arrived) -> jax.Array:
    """(B,) whether each configuration has events to process before the next chunk is needed
    (the chunk's first job has index start_arrived). False once every measured job has departed
    (or was dropped): the configuration is then frozen, so its result never depends on how long
    the others ran."""
    arrived = counters[_ARRIVED]
    more = arrived - start_arrived < spec.chunk
    if spec.finite_horizon:
        more |= arrived >= spec.warmup + spec.jobs
    return (counters[_FINISHED] < spec.jobs) & more


def record_batch(metrics: Accumulators, records, active, bucket_edges,
                  mean_size) -> Accumulators:
    """Add one configuration's batch of step records (STEPS_PER_BATCH, 7) to its metrics, if it
    was active. An inactive configuration must not change at all (not even by adding zeros to its
    sums), so that its result does not depend on how long the others run."""
    r = records.T
    measured = r[_MEASURED] > 0
    response = r[_RESPONSE]
    # bucket b holds sizes in [edge b-1, edge b): b = the number of edges <= size
    bucket = jnp.sum(r[_LEAVING_SIZE][:, None] >= bucket_edges[None, :], axis=1)
    hit = (bucket[:, None] == jnp.arange(metrics.bucket_count.shape[0])) & measured[:, None]
    updated = metrics._replace(
        count=metrics.count + jnp.sum(measured, dtype=jnp.int32),
        response=metrics.response.add(jnp.sum(response)),
        slowdown=metrics.slowdown.add(jnp.sum(r[_SLOWDOWN])),
        bucket_response=metrics.bucket_response.add(
            jnp.sum(jnp.where(hit, response[:, None], 0.0), axis=0)),
        bucket_count=metrics.bucket_count + jnp.sum(hit, axis=0, dtype=jnp.int32),
        number_area=metrics.number_area.add(jnp.sum(r[_W_NUMBER])),
        busy_time=metrics.busy_time.add(jnp.sum(r[_W_BUSY])),
        window_time=metrics.window_time.add(jnp.sum(r[_W])),
    )
    # The histogram (H,) is large and an inactive configuration has nothing to add to it (no
    # measured departures), so it is updated without a select.
    histogram = metrics.record_histogram(response, measured, mean_size).histogram
    kept = jax.tree_util.tree_map(lambda new, old: jnp.where(active, new, old), updated, metrics)
    return kept._replace(histogram=histogram)


def run_chunk(spec: EngineSpec, policy: Policy, mean_size, chunk: Chunk, state: QueueState,
              servers=None) -> QueueState:
    """Process events until all C arrivals of `chunk` are in (finite horizon: until drained), for
    a batch of B configurations: every leaf of `policy`, `mean_size`, `chunk` and `state` has the
    batch axis B in front (chunk fields (B, C); state as init_state's, with B in front).
    servers: (B,) int32 servers of each configuration, each at most spec.servers (default 1).

    Events are taken STEPS_PER_BATCH steps at a time (a fixed-length inner loop in which every
    configuration steps in lockstep, followed by one metrics update per batch); configurations
    that run out of work idle until all are done, and the loop ends when none has work left."""
    bucket_edges = jnp.asarray(spec.bucket_edges, dtype=float)
    chunk = Chunk(*(a.T for a in chunk))  # (C, B)
    start_arrived = state.arrived
    if servers is None:
        servers = jnp.ones(start_arrived.shape, jnp.int32)

    def working(inner):
        return has_work(spec, inner.counters, start_arrived)

    def decide(inner):
        return _decide(spec, policy, chunk, start_arrived, servers, inner)

    def step(carry, _):
        inner, (event, record) = carry
        inner = _apply(spec, policy, inner, event)
        return (inner, decide(inner)), record

    def batch(carry):
        inner, pending, metrics = carry
        active = working(inner)
        (inner, pending), records = jax.lax.scan(step, (inner, pending),
                                                 length=STEPS_PER_BATCH)
        metrics = jax.vmap(record_batch, in_axes=(0, 2, 0, None, 0))(
            metrics, records, active, bucket_edges, mean_size)
        return inner, pending, metrics

    inner = _to_inner(state)
    # When the loop ends no configuration has work, so the pending events are all empty.
    inner, _, metrics = jax.lax.while_loop(lambda carry: jnp.any(working(carry[0])), batch,
                                           (inner, decide(inner), state.metrics))
    return _from_inner(inner, metrics)
