"""A cluster of LLM engine instances behind a router (one configuration; jaxq.llm.simulate
vmaps it over a batch).

The model is in the README ("LLM clusters"): at its arrival instant, every request is sent by the
router to one instance for good, and that instance treats it as an arrival at that instant. The
router reads the instances after each has processed its boundaries strictly before the instant,
so it sees each one as it will be at the end of the iteration in progress (or at the end of its
last iteration, when idle), with the requests routed to it that have not entered yet.

Instances interact only through the router, so between two arrivals each instance runs on its
own: `advance` steps every instance, in lockstep with live masks, until its next boundary is at
or after the next arrival; the router then reads them all. Each instance is an engine of
jaxq.llm.engine whose arrivals are the requests routed to it (its `Inbox`), and whose clock is
its own: `to_arrival` is the time from an instance's clock to the next arrival at the cluster.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from jaxq._checks import check_choice, check_count
from jaxq.llm.engine import (EngineParams, EngineSpec, EngineState, Requests, _blocks,
                             _decode_run, init_state, next_boundary, timed_step)
from jaxq.policies import Policy
from jaxq.predictors import Predictor

ROUTERS = ("round-robin", "random", "least-outstanding", "least-kv", "least-predicted-work")
_MEASURED = ("least-outstanding", "least-kv", "least-predicted-work")


class Router(eqx.Module):
    """How arriving requests are sent to instances (a static choice: each rule and d compiles
    once).

    rule: round-robin (request r to instance r mod I), random (uniformly), least-outstanding
        (the fewest requests: in the instance, or routed to it and not entered yet),
        least-kv (the least fraction of its KV blocks in use), least-predicted-work (the least
        sum of predicted remaining output tokens, max(prediction - generated, 1) per request).
    d: for the three least-* rules, compare d instances sampled uniformly with replacement
        (power-of-d choices) instead of all. Ties go to the first candidate: the lowest-numbered
        instance when all are compared, else the first sampled.
    """

    rule: str = eqx.field(static=True)
    d: int | None = eqx.field(static=True)

    def __init__(self, rule: str = "round-robin", d: int | None = None):
        check_choice("router", rule, ROUTERS)
        if d is not None:
            if rule not in _MEASURED:
                raise ValueError(f"d applies to {', '.join(_MEASURED)}; router {rule!r} "
                                 f"takes none")
            check_count("d", d, 1)
            d = int(d)
        self.rule = rule
        self.d = d

    @property
    def sampled(self) -> int:
        """Instances sampled per arrival: 1 for random, d for power-of-d, else 0."""
        return 1 if self.rule == "random" else (self.d or 0)


class ClusterInputs(NamedTuple):
    """What a batch of clusters runs on (one configuration's shapes shown; jaxq.llm.simulate
    stacks B of them on a leading axis)."""

    params: EngineParams  # every field (I,): one per instance
    policy: Policy
    predictor: Predictor
    requests: Requests  # (N,) fields by request id, but gap in arrival order: gap[k] is the time
    #   from the (k-1)-th arrival to the k-th (inf: the k-th and later never arrive)
    key: jax.Array  # the refinement stream
    picks: jax.Array  # (N, Router.sampled) int32: the instances the k-th arrival's router samples
    order: jax.Array | None  # (N,) int32, the id of the k-th arrival (None: ids are the order)


class Inbox(NamedTuple):
    """The requests routed to one instance, in the order they were routed (N = all requests)."""

    ids: jax.Array  # (N,) int32, the request id of the k-th request routed here
    gap: jax.Array  # (N,) float, time from the (k-1)-th to the k-th (inf until routed)
    routed: jax.Array  # () int32, requests routed here so far


class ClusterState(NamedTuple):
    """One configuration's cluster of I instances, between two arrivals."""

    engines: EngineState  # every field with a leading axis (I,)
    inbox: Inbox  # every field with a leading axis (I,)
    to_arrival: jax.Array  # (I,) float, from each instance's clock to the next arrival (inf:
    #   none left). An instance's clock is the end of its last iteration, so this is <= 0 for
    #   an instance whose iteration in progress ends at or after the arrival.
    since_routed: jax.Array  # (I,) float, from the last request routed to each to the next arrival
    arrived: jax.Array  # () int32, requests routed so far
    sent_to: jax.Array  # (N,) int32, the instance each request was routed to (-1: not yet)


def init_cluster(spec: EngineSpec, instances: int, requests: Requests) -> ClusterState:
    """An empty cluster before the first arrival (requests: the cluster's, (N,) fields)."""
    n = requests.gap.shape[0]
    unrouted = requests._replace(gap=jnp.full((n,), jnp.inf, requests.gap.dtype))
    engine = init_state(spec, unrouted)
    tile = lambda x: jnp.broadcast_to(x, (instances,) + x.shape)  # noqa: E731
    inbox = Inbox(ids=jnp.zeros((instances, n), jnp.int32), gap=tile(unrouted.gap),
                  routed=jnp.zeros((instances,), jnp.int32))
    return ClusterState(engines=jax.tree_util.tree_map(tile, engine), inbox=inbox,
                        to_arrival=jnp.full((instances,), requests.gap[0]),
                        since_routed=jnp.zeros((instances,), requests.gap.dtype),
                        arrived=jnp.zeros((), jnp.int32),
                        sent_to=jnp.full((n,), -1, jnp.int32))


def has_work(engine: EngineState, inbox: Inbox) -> jax.Array:
    """Requests in the instance, or routed to it and not entered yet (any shape of batch)."""
    return jnp.any(engine.slots.active, axis=-1) | (engine.next_arrival < inbox.routed)


def _instance_steps(spec: EngineSpec, p: EngineParams, policy: Policy, predictor: Predictor,
                    requests: Requests, key, inbox: Inbox, engine: EngineState, to_arrival, live,
                    max_iterations):
    """One instance's next boundary and iteration, then the pure-decode iterations that may
    follow up to the first boundary at or after the next arrival; a no-op when not live."""
    own = requests._replace(gap=inbox.gap)
    engine, jump, dt = timed_step(spec, p, policy, predictor, own, key, engine, live, inbox.ids,
                                  horizon=to_arrival)
    to_arrival = to_arrival - jump - dt
    engine, _, seconds = _decode_run(spec, p, predictor, own, key, engine,
                                     max_iterations - engine.totals.iterations,
                                     horizon=to_arrival)
    return engine, to_arrival - seconds


def advance(spec: EngineSpec, inputs: ClusterInputs, state: ClusterState, max_iterations,
            max_steps=None) -> ClusterState:
    """A batch of clusters (every field with a leading axis (B,)), every instance brought to
    its first boundary at or after the next arrival (after the last one: to its end), or to
    `max_iterations` iterations; at most `max_steps` loop steps when given."""

    def live(st):  # a boundary before the next arrival
        return (has_work(st.engines, st.inbox) & (next_boundary(st.engines) < st.to_arrival)
                & (st.engines.totals.iterations < max_iterations))

    per_instance = jax.vmap(
        lambda p, policy, predictor, requests, key, inbox, engine, to_arrival, live:
        _instance_steps(spec, p, policy, predictor, requests, key, inbox, engine, to_arrival,
                        live, max_iterations),
        in_axes=(0, None, None, None, None, 0, 0, 0, 0))
    every = jax.vmap(per_instance)

    def cond(carry):
        i, st = carry
        more = jnp.any(live(st))
        return more if max_steps is None else more & (i < max_steps)

    def body(carry):
        i, st = carry
        engines, to_arrival = every(inputs.params, inputs.policy, inputs.predictor,
                                    inputs.requests, inputs.key, st.inbox, st.engines,
                                    st.to_arrival, live(st))
        return i + 1, st._replace(engines=engines, to_arrival=to_arrival)

    return lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), state))[1]


def measure(router: Router, spec: EngineSpec, p: EngineParams, engine: EngineState,
            inbox: Inbox, requests: Requests) -> jax.Array:
    """What `router` compares one instance by (requests: the cluster's, by id)."""
    s = engine.slots
    pending = inbox.routed - engine.next_arrival
    if router.rule == "least-outstanding":
        return jnp.sum(s.active) + pending
    if router.rule == "least-kv":
        held = jnp.sum(jnp.where(s.active & s.resident, _blocks(s.kv, p.block_size), 0))
        return held / (p.kv_capacity // p.block_size)
    # least-predicted-work. Pending requests: at most `slots` of them can enter (more is an
    # overflow, reported), so a window of that many from the first pending one holds them.
    left = jnp.maximum(s.prediction - s.generated, 1.0)
    window = engine.next_arrival + jnp.arange(spec.slots)
    ids = inbox.ids[jnp.minimum(window, inbox.ids.shape[0] - 1)]
    generated = 0 if requests.transferred is None else requests.transferred[ids]
    waiting = jnp.where(window < inbox.routed,
                        jnp.maximum(requests.prediction[ids] - generated, 1.0), 0.0)
    return jnp.sum(jnp.where(s.active, left, 0.0)) + jnp.sum(waiting)


def choose(router: Router, measures, picks, r) -> jax.Array:
    """The instance request r goes to. measures: (I,); picks: (router.sampled,) int32."""
    instances = measures.shape[0]
    if router.rule == "round-robin":
        return (r % instances).astype(jnp.int32)
    if router.rule == "random":
        return picks[0]
    if router.d is None:
        return jnp.argmin(measures).astype(jnp.int32)  # the first of the least
    return picks[jnp.argmin(measures[picks])]


def route(spec: EngineSpec, router: Router, inputs: ClusterInputs, state: ClusterState
          ) -> ClusterState:
    """One configuration: send the next arrival to an instance and move the clocks on to the
    arrival after it; nothing is sent when it never arrives (gap inf)."""
    r = state.arrived
    requests = inputs.requests
    n = requests.gap.shape[0]
    request = r if inputs.order is None else inputs.order[r]
    if router.rule in _MEASURED:
        measures = jax.vmap(lambda p, e, i: measure(router, spec, p, e, i, requests))(
            inputs.params, state.engines, state.inbox)
    else:
        measures = jnp.zeros(state.to_arrival.shape)
    instances = state.to_arrival.shape[0]
    j = jnp.where(jnp.isfinite(requests.gap[r]), choose(router, measures, inputs.picks[r], r),
                  instances)  # out of range: every scatter below drops
    e, inbox = state.engines, state.inbox
    k = inbox.routed[jnp.minimum(j, instances - 1)]
    # With none waiting to enter, the instance's next arrival is this one, at to_arrival[j]
    # from its clock; otherwise the gaps after the first waiting one place it.
    first = e.next_arrival[jnp.minimum(j, instances - 1)] == k
    until_next = e.until_next.at[j].set(
        jnp.where(first, state.to_arrival[jnp.minimum(j, instances - 1)],
                  e.until_next[jnp.minimum(j, instances - 1)]), mode="drop")
    inbox = Inbox(ids=inbox.ids.at[j, k].set(request, mode="drop"),
                  gap=inbox.gap.at[j, k].set(state.since_routed[jnp.minimum(j, instances - 1)],
                                             mode="drop"),
                  routed=inbox.routed.at[j].add(1, mode="drop"))
    gap = jnp.where(r + 1 < n, requests.gap[jnp.minimum(r + 1, n - 1)], jnp.inf)
    since = state.since_routed.at[j].set(0.0, mode="drop")
    sent_to = state.sent_to.at[jnp.where(j < instances, request, n)].set(j, mode="drop")
    return state._replace(engines=e._replace(until_next=until_next), inbox=inbox,
                          to_arrival=state.to_arrival + gap, since_routed=since + gap,
                          arrived=r + 1, sent_to=sent_to)


def route_arrivals(spec: EngineSpec, router: Router, inputs: ClusterInputs,
                   state: ClusterState, count, max_iterations) -> ClusterState:
    """A batch of clusters: `count` more arrivals, each routed after every instance has been
    brought up to it."""
    route_all = jax.vmap(lambda inp, st: route(spec, router, inp, st))

    def one(_, st):
        st = advance(spec, inputs, st, max_iterations)
        return route_all(inputs, st)

    return lax.fori_loop(0, count, one, state)
