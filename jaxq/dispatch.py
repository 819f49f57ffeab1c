"""Dispatching: n servers, each with a queue of its own, and a dispatcher that sends every
arriving job to one of them at once, for good (the supermarket model). Each server orders its
own jobs by the configuration's policy, with the one-server rules of jaxq.queue.

    system = jaxq.System(load=0.9, policy=jaxq.SPRPT(), servers=100,
                         dispatch=jaxq.Dispatch("jsq-d", d=2))

The dispatcher looks at its candidate servers at the arrival instant, after the jobs that finish
at that instant have left: round-robin sends job i to server i mod n; every other rule takes the
first candidate with the least value of a measure (`Dispatch`). `load` is the load per server,
as with one central queue.

Lazy servers. Servers interact only through the dispatcher, which reads its candidates at arrival
instants. So a server is brought up to date only when it is read: at an arrival, the candidates
process their own departures and merges up to that instant (all of them in lockstep, one event
each per pass) while the other servers wait where they were. An arrival then costs what its d
candidates cost, not all n servers. Every server is brought up to date at the two ends of the measurement
window, so the time averages cover it exactly, and at the end of a finite-horizon run, which
drains them all.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxq._checks import check_choice, check_count
from jaxq.metrics import Accumulators
from jaxq.policies import Policy
from jaxq.queue import EngineSpec, Slots, has_work, next_service, record_batch, serve, step_record

RULES = ("random", "round-robin", "jsq", "jsq-d", "least-predicted-work", "least-work")
_MEASURE = {"random": "count", "round-robin": None, "jsq": "count", "jsq-d": "count",
            "least-predicted-work": "predicted", "least-work": "work"}


class Dispatch(eqx.Module):
    """How arriving jobs are sent to servers that have queues of their own (a static choice:
    each rule and d compiles once).

    rule: random (a server uniformly at random), round-robin, jsq (join the shortest queue: the
        fewest jobs), jsq-d (the fewest jobs among d servers sampled), least-predicted-work (the
        least predicted work left: the sum over the server's jobs of max(y - a, 0), so a job
        past its prediction counts 0), least-work (the least true work left, the sum of x - a:
        an oracle).
    d: the servers sampled per arrival, uniformly with replacement; for jsq-d (default 2),
        least-predicted-work and least-work (default: all servers). Ties go to the first
        candidate: the lowest-numbered server when all are compared, else the first sampled.
    """

    rule: str = eqx.field(static=True)
    d: int | None = eqx.field(static=True)

    def __init__(self, rule: str, d: int | None = None):
        check_choice("dispatch", rule, RULES)
        if rule == "jsq-d" and d is None:
            d = 2
        if d is not None:
            if rule not in ("jsq-d", "least-predicted-work", "least-work"):
                raise ValueError(f"d applies to jsq-d, least-predicted-work and least-work; "
                                 f"dispatch {rule!r} takes none")
            check_count("d", d, 1)
            d = int(d)
        self.rule = rule
        self.d = d

    @property
    def measure(self) -> str | None:
        """What candidates are compared by: count, predicted or work (None: round-robin)."""
        return _MEASURE[self.rule]

    @property
    def sampled(self) -> int:
        """Servers sampled per arrival: d, 1 for random, 0 where no server is sampled."""
        return 1 if self.rule == "random" else (self.d or 0)

    def candidates(self, servers: int) -> int:
        """Servers read per arrival, with `servers` the most of any configuration."""
        if self.rule == "round-robin":
            return 1
        return self.sampled or servers


class DispatchChunk(NamedTuple):
    """C pre-sampled arrivals; gap[i] is the time from the previous arrival to arrival i."""

    gap: jax.Array  # (C,)
    size: jax.Array  # (C,)
    prediction: jax.Array  # (C,)
    pick: jax.Array  # (C, Dispatch.sampled) int32: the servers each arrival samples


def sample_picks(key: jax.Array, size: int, dispatch: Dispatch, servers) -> jax.Array:
    """(size, dispatch.sampled) servers drawn uniformly from 0 .. servers - 1 (servers: ())."""
    return jax.random.randint(key, (size, dispatch.sampled), 0, servers, dtype=jnp.int32)


class DispatchState(NamedTuple):
    """One (configuration, replica): the servers' jobs and the counters of jaxq.queue's state.
    n = EngineSpec.servers, K = EngineSpec.capacity (slots per server)."""

    slots: Slots  # every field (n, K): the job slots of each server
    updated: jax.Array  # (n,) when each server was last brought up to date, on the clock below
    clock: jax.Array  # () the time of the last arrival; the clock restarts at 0 with each chunk
    arrived: jax.Array  # () int32, jobs that have arrived (= index of the next one)
    finished: jax.Array  # () int32, measured jobs that departed or were dropped
    overflow: jax.Array  # () int32, arrivals dropped because their server's K slots were full
    max_in_system: jax.Array  # () int32, the most jobs seen at one server
    metrics: Accumulators
    responses: jax.Array  # (record_jobs,) response time of each job (traces only), NaN if none
    sent_to: jax.Array  # (record_jobs,) int32 the server each job went to (traces only)


def init_state(spec: EngineSpec) -> DispatchState:
    n, k = spec.servers, spec.capacity
    zf, zi = jnp.zeros((n, k), dtype=float), jnp.zeros((n, k), jnp.int32)
    slots = Slots(present=jnp.zeros((n, k), bool), size=zf, prediction=zf, attained=zf, age=zf,
                  index=zi, group=zi)
    zero = jnp.zeros((), jnp.int32)
    return DispatchState(
        slots=slots, updated=jnp.zeros((n,), float), clock=jnp.zeros((), float), arrived=zero,
        finished=zero, overflow=zero, max_in_system=zero,
        metrics=Accumulators.zeros(len(spec.bucket_edges) + 1, spec.histogram_bins),
        responses=jnp.full((spec.record_jobs,), jnp.nan, dtype=float),
        sent_to=jnp.full((spec.record_jobs,), -1, jnp.int32))


# Inside run_chunk slots are (n, B, K): a server's slots are contiguous, so reading or writing one
# moves one block. A pass over m of the servers lays them out as rows (K, R) with the batch last,
# as in jaxq.queue: R = m * B, row j * B + b for server j of the m read and configuration b; it
# runs the one-server rules on every row at once.
_ARRIVED, _FINISHED, _OVERFLOW, _MAX = range(4)  # rows of _Inner.counters


class _Inner(NamedTuple):
    slots: Slots  # every field (n, B, K)
    updated: jax.Array  # (n, B)
    clock: jax.Array  # (B,)
    counters: jax.Array  # (4, B) int32: arrived, finished, overflow, max_in_system
    responses: jax.Array  # (record_jobs, B)
    sent_to: jax.Array  # (record_jobs, B) int32


def _to_rows(slots: Slots) -> Slots:
    """Fields (m, B, K) -> rows (K, m * B)."""
    return Slots(*(a.reshape(-1, a.shape[-1]).T for a in slots))


def _tile(tree, m: int):
    """Per-configuration leaves (B, ...) -> one copy per row (m * B, ...)."""
    return jax.tree_util.tree_map(
        lambda a: jnp.reshape(jnp.broadcast_to(a, (m,) + a.shape), (-1,) + a.shape[1:]), tree)


class _Pass(NamedTuple):
    """What bringing some servers up to date adds: (B,) unless marked."""

    finished: jax.Array  # int32 measured jobs that departed
    longest: jax.Array  # the longest time any server was advanced (a drain's length)
    responses: jax.Array  # (record_jobs, B)


def _bring_up_to_date(spec: EngineSpec, policy: Policy, rows: Slots, lag, live, counting,
                      servers, metrics, mean_size, responses):
    """Run m servers' own events for lag (R,) time each (inf: until empty), where live (R,):
    departures and merges by the one-server rules, the measured departures and, where counting
    (B,), the time-weighted number and busy servers into the metrics. rows: (K, R) fields;
    policy: (R,) leaves; servers: (B,) each configuration's n. Returns (rows, metrics, _Pass)."""
    batch = servers.shape[0]
    m = lag.shape[0] // batch
    bucket_edges = jnp.asarray(spec.bucket_edges, dtype=float)
    column = jnp.tile(jnp.arange(batch, dtype=jnp.int32), m)  # (R,) configuration of each row
    counting_rows = jnp.tile(counting, m)
    # a busy server adds its time / n to the busy time: the busy servers' share, as with k servers
    per_server = jnp.tile(1.0 / servers.astype(float), m)

    def one_pass(carry):
        rows, lag, going, elapsed, metrics, finished, responses = carry
        anyone = jnp.any(rows.present, axis=0)
        s = next_service(policy, rows, anyone, None, 1)
        dt_event = jnp.minimum(s.dt_done, s.dt_merge)
        event = going & jnp.isfinite(dt_event) & (dt_event <= lag)
        # no event before the lag runs out: advance by all of it (an empty server by nothing)
        dt = jnp.where(event, dt_event, jnp.where(going & jnp.isfinite(lag), lag, 0.0))
        done = event & (s.dt_done <= s.dt_merge)
        present, attained, age, group = serve(policy, rows, s, dt, done, event & ~done)
        number = jnp.sum(rows.present, axis=0).astype(dt.dtype)
        response = s.leave_age + dt
        measured = done & (s.leave_index >= spec.warmup) & (
            s.leave_index < spec.warmup + spec.jobs)
        w = jnp.where(counting_rows, dt, 0.0)
        record = step_record(jnp.zeros_like(dt), jnp.where(number > 0, w * per_server, 0.0),
                             w * number, measured, response, s.leave_size)
        active = jnp.any(going.reshape(m, batch), axis=0)
        metrics = jax.vmap(record_batch, in_axes=(0, 2, 0, None, 0))(
            metrics, record.reshape(7, m, batch).transpose(1, 0, 2), active, bucket_edges,
            mean_size)
        if spec.record_jobs:  # traces: each job's response time, by arrival index
            responses = responses.at[jnp.where(done, s.leave_index, spec.record_jobs),
                                     column].set(response, mode="drop")
        finished = finished + jnp.sum(measured.reshape(m, batch), axis=0, dtype=jnp.int32)
        rows = rows._replace(present=present, attained=attained, age=age, group=group)
        lag = jnp.where(event, lag - dt, jnp.where(going, 0.0, lag))
        return rows, lag, event, elapsed + dt, metrics, finished, responses

    zero = jnp.zeros((batch,), jnp.int32)
    rows, _, _, elapsed, metrics, finished, responses = jax.lax.while_loop(
        lambda carry: jnp.any(carry[2]), one_pass,
        (rows, lag, live, jnp.zeros_like(lag), metrics, zero, responses))
    longest = jnp.max(elapsed.reshape(m, batch), axis=0)
    return rows, metrics, _Pass(finished, longest, responses)


def _with(slots: Slots, rows: Slots, index, column) -> Slots:
    """slots (n, B, K) with the servers index (m, B) of configurations column (m, B) set to
    rows (K, m * B); an index of n is dropped. (K is the contiguous axis, so each server's
    slots move as one block.)"""
    return Slots(*(a.at[index, column].set(r.T.reshape(index.shape + (-1,)), mode="drop")
                   for a, r in zip(slots, rows)))


def run_chunk(spec: EngineSpec, policy: Policy, mean_size, chunk: DispatchChunk,
              state: DispatchState, servers) -> DispatchState:
    """Process the arrivals of `chunk` one at a time (finite horizon: then drain every server),
    for a batch of B configurations in lockstep, as jaxq.queue.run_chunk does: every leaf of
    `policy`, `mean_size`, `chunk` and `state` has the batch axis B in front; servers: (B,)
    int32, each configuration's n, at most spec.servers. A configuration with no work left
    idles, unchanged, until all are done."""
    n, k, dispatch = spec.servers, spec.capacity, spec.dispatch
    m = dispatch.candidates(n)
    chunk = DispatchChunk(*(a.T for a in chunk[:3]), jnp.moveaxis(chunk.pick, 0, -1))
    start = state.arrived
    batch = start.shape[0]
    configs = jnp.arange(batch, dtype=jnp.int32)
    column = jnp.broadcast_to(configs, (m, batch))  # the configuration of each candidate
    # The clock restarts with the chunk: stamps stay small, and so do their rounding errors.
    p = _Inner(
        slots=Slots(*(jnp.transpose(a, (1, 0, 2)) for a in state.slots)),
        updated=(state.updated - state.clock[:, None]).T, clock=jnp.zeros_like(state.clock),
        counters=jnp.stack([state.arrived, state.finished, state.overflow,
                            state.max_in_system]),
        responses=state.responses.T, sent_to=state.sent_to.T)
    policy_read = _tile(policy, m)
    policy_all = policy_read if m == n else _tile(policy, n)
    real = jnp.arange(n)[:, None] < servers  # (n, B) servers the configuration has
    end = spec.warmup + spec.jobs

    def working(p):
        return has_work(spec, p.counters, start)

    def step(carry):
        p, metrics = carry
        arrived = p.counters[_ARRIVED]
        work = working(p)
        ptr = arrived - start
        arrivals_open = ptr < spec.chunk
        if spec.finite_horizon:
            arrivals_open &= arrived < end
        j = jnp.minimum(ptr, spec.chunk - 1)
        gap, size, prediction = (jnp.take_along_axis(a, j[None], axis=0)[0] for a in chunk[:3])
        t = p.clock + gap  # the arrival instant
        arrive = work & arrivals_open
        # The time advanced from here to the arrival (or to the end of the drain) is in the
        # measurement window, which runs from the arrival of job W to that of job W + N.
        counting = (arrived > spec.warmup) & (arrived <= end)

        # Every server up to date: at the two ends of the window, and to drain at the end of a
        # finite horizon.
        bring_all = work & (~arrivals_open | (arrived == spec.warmup))
        if not spec.finite_horizon:
            bring_all |= work & (arrived == end)

        def all_servers(p, metrics):
            lag = jnp.where(arrivals_open, t, jnp.inf)[None] - p.updated  # (n, B)
            rows, metrics, done = _bring_up_to_date(
                spec, policy_all, _to_rows(p.slots), lag.reshape(-1),
                (bring_all[None] & real).reshape(-1), counting, servers, metrics, mean_size,
                p.responses)
            slots = Slots(*(r.T.reshape(n, batch, k) for r in rows))
            p = p._replace(slots=slots, updated=jnp.where(bring_all, t, p.updated),
                           counters=p.counters.at[_FINISHED].add(done.finished),
                           responses=done.responses)
            drained = jnp.where(bring_all & ~arrivals_open & counting, done.longest, 0.0)
            return p, metrics._replace(window_time=_add_where(metrics.window_time, drained,
                                                              drained > 0))

        p, metrics = jax.lax.cond(jnp.any(bring_all), all_servers, lambda p, m_: (p, m_),
                                  p, metrics)

        # The candidates, brought up to date to the arrival instant.
        if dispatch.rule == "round-robin":
            candidates = (arrived % servers)[None]
        elif dispatch.sampled:
            candidates = jnp.take_along_axis(chunk.pick, j[None, None], axis=0)[0]
        else:
            candidates = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[:, None], (n, batch))
        # a server sampled twice is read once: its first copy (later ones stay as they were)
        first = jnp.ones((m, batch), bool)
        for i in range(1, m if dispatch.sampled else 1):
            first = first.at[i].set(jnp.all(candidates[:i] != candidates[i], axis=0))
        rows = _to_rows(Slots(*(a[candidates, column] for a in p.slots)))
        lag = t - jnp.take_along_axis(p.updated, candidates, axis=0)
        rows, metrics, done = _bring_up_to_date(
            spec, policy_read, rows, lag.reshape(-1), (arrive & first).reshape(-1), counting,
            servers, metrics, mean_size, p.responses)

        # The first candidate with the least value takes the job.
        present = rows.present
        if dispatch.measure == "predicted":
            value = jnp.sum(jnp.where(present, jnp.maximum(rows.prediction - rows.attained, 0.0),
                                      0.0), axis=0)
        elif dispatch.measure == "work":
            value = jnp.sum(jnp.where(present, rows.size - rows.attained, 0.0), axis=0)
        else:
            value = jnp.sum(present, axis=0).astype(float)
        value = jnp.where(candidates < servers, value.reshape(m, batch), jnp.inf)
        chosen = jnp.argmin(value, axis=0)  # (B,) the first least
        target = jnp.take_along_axis(candidates, chosen[None], axis=0)[0]
        count = jnp.sum(present, axis=0).reshape(m, batch)
        free = jnp.where(count < k, jnp.argmin(present, axis=0).reshape(m, batch), k)
        free_target = jnp.take_along_axis(free, chosen[None], axis=0)[0]
        admit = arrive & (free_target < k)
        new = ((jnp.arange(k)[:, None, None] == free_target)
               & (jnp.arange(m)[:, None] == chosen) & admit).reshape(k, -1)
        rows = rows._replace(
            present=present | new, size=jnp.where(new, jnp.tile(size, m), rows.size),
            prediction=jnp.where(new, jnp.tile(prediction, m), rows.prediction),
            attained=jnp.where(new, 0.0, rows.attained), age=jnp.where(new, 0.0, rows.age),
            index=jnp.where(new, jnp.tile(arrived, m), rows.index),
            group=jnp.where(new, jnp.tile(arrived, m), rows.group))
        write = jnp.where(arrive & first, candidates, n)
        slots = _with(p.slots, rows, write, column)
        updated = p.updated.at[write, column].set(jnp.broadcast_to(t, (m, batch)), mode="drop")

        measured_arrival = (arrived >= spec.warmup) & (arrived < end)
        at_target = jnp.take_along_axis(count, chosen[None], axis=0)[0] + 1
        arrived_, finished, overflow, most = p.counters
        counters = jnp.stack([
            arrived_ + arrive, finished + done.finished + (arrive & ~admit & measured_arrival),
            overflow + (arrive & ~admit), jnp.where(admit, jnp.maximum(most, at_target), most),
        ]).astype(jnp.int32)
        sent_to = p.sent_to
        if spec.record_jobs:
            sent_to = sent_to.at[jnp.where(arrive, arrived, spec.record_jobs), configs].set(
                target, mode="drop")
        metrics = metrics._replace(window_time=_add_where(metrics.window_time, gap,
                                                          arrive & counting))
        p = _Inner(slots=slots, updated=updated, clock=jnp.where(arrive, t, p.clock),
                   counters=counters, responses=done.responses, sent_to=sent_to)
        return p, metrics

    p, metrics = jax.lax.while_loop(lambda carry: jnp.any(working(carry[0])), step,
                                    (p, state.metrics))
    c = p.counters
    return DispatchState(
        slots=Slots(*(jnp.transpose(a, (1, 0, 2)) for a in p.slots)), updated=p.updated.T,
        clock=p.clock, arrived=c[_ARRIVED], finished=c[_FINISHED], overflow=c[_OVERFLOW],
        max_in_system=c[_MAX], metrics=metrics, responses=p.responses.T, sent_to=p.sent_to.T)


def _add_where(total, x, where):
    """A Kahan sum (B,) plus x (B,) where `where` (B,) holds, unchanged elsewhere."""
    added = total.add(x)
    return jax.tree_util.tree_map(lambda new, old: jnp.where(where, new, old), added, total)
