"""Run a batch of LLM clusters: I engine instances behind a router (jaxq.llm.cluster).

    one = jaxq.llm.LLMSystem(policy=jaxq.SPRPT(), **jaxq.llm.costs("a100-80gb", "llama-3.1-8b"))
    cluster = jaxq.llm.Cluster(one, instances=4, router=jaxq.llm.Router("least-kv"))
    result = jaxq.llm.simulate(cluster, WORKLOADS["azure-conversation"](rate=20.0), requests=4000)

Instances may differ (`Cluster([a, b, c])`) in every number of an LLMSystem but the policy, the
predictor and the seed, which belong to the requests; each may carry batch axes, and the
instances' batch shapes broadcast together into the cluster's.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from functools import partial
from typing import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxq._checks import check_count
from jaxq.llm.cluster import (ClusterInputs, ClusterState, Router, advance, has_work,
                              init_cluster, route_arrivals)
from jaxq.llm.engine import EngineState
from jaxq.llm.simulate import (_STREAM_REFINE, LLMSystem, _batch_shape, _check_fits,
                               _default_workers, _requests, _summarise, engine_spec)
from jaxq.simulate import _as_key, _replica_keys
from jaxq.system import broadcast

_STREAM_ROUTER = 3
_SHARED = ("policy", "predictor", "seed", "preemption", "admission", "refine", "prefix_cache",
           "pause_kv", "keep_seconds")


class Cluster(eqx.Module):
    """I LLM engine instances behind a router.

    systems: one LLMSystem, copied `instances` times, or a sequence of them (one per instance).
    router: a `Router` or a rule's name (round-robin, random, least-outstanding, least-kv,
        least-predicted-work).
    """

    systems: tuple[LLMSystem, ...]
    router: Router

    def __init__(self, systems: LLMSystem | Sequence[LLMSystem], router: Router | str =
                 "round-robin", *, instances: int | None = None):
        if isinstance(systems, LLMSystem):
            check_count("instances", 1 if instances is None else instances, 1)
            systems = (systems,) * (1 if instances is None else int(instances))
        else:
            systems = tuple(systems)
            if not systems:
                raise ValueError("a Cluster needs at least one instance")
            if instances is not None and instances != len(systems):
                raise ValueError(f"instances ({instances}) must equal the number of systems "
                                 f"given ({len(systems)}), or be left out")
        for i, system in enumerate(systems):
            if not isinstance(system, LLMSystem):
                raise TypeError(f"instance {i} must be a jaxq.llm.LLMSystem, got "
                                f"{type(system).__name__}")
            for name in _SHARED:
                if not _equal(getattr(system, name), getattr(systems[0], name)):
                    raise ValueError(f"the instances of a Cluster must share {', '.join(_SHARED)}"
                                     f" (they belong to the requests); instance {i}'s {name} "
                                     f"differs from instance 0's")
        self.systems = systems
        self.router = Router(router) if isinstance(router, str) else router

    @property
    def instances(self) -> int:
        return len(self.systems)


def _equal(a, b) -> bool:
    same = eqx.tree_equal(a, b)
    return bool(np.all(np.asarray(same))) if not isinstance(same, bool) else same


def _broadcast_to(system: LLMSystem, shape) -> LLMSystem:
    """`system` with its batch axes broadcast to `shape` (which its own shape broadcasts to) and
    flattened into one leading axis."""
    own = _batch_shape(system)
    grown = broadcast(system)  # every leaf: own + data axes

    def leaf(x):
        data = jnp.shape(x)[len(own):]
        x = jnp.reshape(x, (1,) * (len(shape) - len(own)) + jnp.shape(x))
        return jnp.reshape(jnp.broadcast_to(x, tuple(shape) + data), (-1,) + data)

    return jax.tree_util.tree_map(leaf, grown)


def simulate_cluster(cluster: Cluster, workload, n, is_trace, slots, replicas, warmup, ttft_slo,
                     tpot_slo, key, steps_per_call, max_iterations, lanes, workers, progress,
                     start):
    """jaxq.llm.simulate for a Cluster (arguments checked there)."""
    try:
        shape = tuple(np.broadcast_shapes(*[_batch_shape(s) for s in cluster.systems]))
    except ValueError as err:
        raise ValueError(f"the Cluster's instances' batch axes do not broadcast together: "
                         f"{err}") from None
    flat = [_broadcast_to(s, shape) for s in cluster.systems]
    keys = _replica_keys(_as_key(key), flat[0].seed, replicas).reshape(-1)
    per = [jax.tree_util.tree_map(lambda x: jnp.repeat(x, replicas, axis=0), s) for s in flat]
    first = per[0]
    reqs = _requests(first, workload, keys, n, is_trace)
    for system in per:
        _check_fits(system, reqs, workload if is_trace else None)
    spec = engine_spec(first, slots, reqs)
    params = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs, axis=1),
                                    *[s.params() for s in per])  # fields (B*R, I)
    instances, router = cluster.instances, cluster.router
    picks = router_picks(keys, n, router, instances)
    refine_keys = jax.vmap(lambda k: jax.random.fold_in(k, _STREAM_REFINE))(keys)
    limit = (max_iterations if max_iterations is not None
             else 20 * int(np.max(np.sum(np.asarray(reqs.prompt) + np.asarray(reqs.output),
                                         axis=-1))) + 1000)
    inputs = ClusterInputs(params=params, policy=first.policy, predictor=first.predictor,
                           requests=reqs, key=refine_keys, picks=picks, order=None)
    runs = keys.shape[0]
    workers = _default_workers() if workers is None else workers
    lanes = _default_lanes(runs, instances, workers) if lanes is None else lanes
    state = _run_windows(spec, router, inputs, instances, n, min(lanes, runs), workers,
                         steps_per_call, jnp.asarray(limit, jnp.int32), progress)
    merged, kv_use, swapped_bytes = _merge(state, per)
    grid = lambda x: np.asarray(x).reshape(shape + (replicas,) + np.shape(x)[1:])  # noqa: E731
    sent = grid(state.sent_to)
    measured = sent[..., warmup:]
    share = np.stack([np.mean(measured == i, axis=(-2, -1)) for i in range(instances)], axis=-1)
    return _summarise(merged, reqs, shape, replicas, warmup, ttft_slo, tpot_slo,
                      time.perf_counter() - start, kv_use, swapped_bytes, instance=sent,
                      instance_share=share)


def _default_lanes(runs: int, instances: int, workers: int) -> int:
    """Clusters stepped together. On a CPU a step costs in proportion to its instances, and a
    window waits, at every arrival, for its slowest instance: scripts/bench_llm_cluster.py (64
    clusters of 4 instances, 2 workers) took 0.82 s with 1 cluster per window, 0.77 s with 2,
    0.85 s with 4, 1.1 s with 8, 1.7 s with 16, 5.8 s with all 64 in one. On accelerators: all
    of them, shared among the workers."""
    if jax.default_backend() != "cpu":
        return max(1, runs // workers)
    return max(1, min(runs, 4 // instances))


def _run_windows(spec, router, inputs, instances, n, lanes, workers, steps_per_call, limit,
                 progress) -> ClusterState:
    """Every cluster to its end, `lanes` clusters at a time (a window), windows shared among
    `workers` threads (window w on this process's device w mod the device count). All
    clusters route the same number of requests, so a window runs its clusters from the first
    arrival to the end together; the last window is padded with copies of its last cluster."""
    runs = inputs.requests.gap.shape[0]
    starts = list(range(0, runs, lanes))
    finished = [0] * len(starts)
    lock = threading.Lock()
    devices = jax.local_devices()
    x64 = jax.config.jax_enable_x64

    def window(w):
        rows = np.minimum(np.arange(starts[w], starts[w] + lanes), runs - 1)
        own = jax.device_put(_take(inputs, rows), devices[w % len(devices)])
        state = _init(spec, instances, own.requests)

        def report():
            if progress is not None:
                with lock:
                    finished[w] = int(jnp.sum(state.engines.totals.finished[:runs - starts[w]]))
                    progress(sum(finished), runs * n)

        for routed in range(0, n, steps_per_call):
            count = jnp.asarray(min(steps_per_call, n - routed), jnp.int32)
            state = _route(spec, router, own, state, count, limit)
            report()
        while bool(_any_live(state, limit)):
            state = _drain(spec, own, state, limit, steps_per_call)
            report()
        return jax.tree_util.tree_map(lambda x: x[:runs - starts[w]], state)

    def window_as_caller(w):  # jax.enable_x64 is per thread: trace as the caller does
        with jax.enable_x64(x64):
            return window(w)

    with concurrent.futures.ThreadPoolExecutor(max(1, min(workers, len(starts)))) as executor:
        states = list(executor.map(window_as_caller, range(len(starts))))
    states = jax.device_put(states, devices[0])
    return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *states)


def router_picks(keys, n, router: Router, instances: int) -> jax.Array:
    """(runs, N, router.sampled) int32: the instances each request's router samples, drawn
    uniformly from the run's own stream (keys: (runs,), one per configuration and replica)."""
    return jax.vmap(lambda k: jax.random.randint(
        jax.random.fold_in(k, _STREAM_ROUTER), (n, router.sampled), 0, instances,
        dtype=jnp.int32))(keys)


def _merge(state: ClusterState, per):
    """One EngineState per run (B*R), as one engine's would read: per-request results from the
    instance each request went to, counters summed (the peak and the clock: the greatest); and
    each run's KV use (KV token-seconds over capacity-seconds busy) and bytes swapped."""
    e = state.engines  # fields (B*R, I, ...)
    sent = np.asarray(state.sent_to)[:, None, :]
    pick = lambda x: np.take_along_axis(np.asarray(x), sent, axis=1)[:, 0]  # noqa: E731
    t = jax.tree_util.tree_map(np.asarray, e.totals)
    most = ("peak_kv_tokens", "elapsed")
    totals = t._replace(**{name: (np.max if name in most else np.sum)(getattr(t, name), axis=1)
                           for name in t._fields})
    caps = np.stack([np.asarray(s.kv_capacity, np.float64) for s in per], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        kv_use = np.sum(t.kv_token_seconds, axis=1) / np.sum(t.busy_time * caps, axis=1)
    bytes_per = np.stack([np.asarray(s.kv_bytes_per_token) for s in per], axis=1)
    swapped_bytes = np.sum(t.swapped_tokens * bytes_per, axis=1)
    merged = EngineState(slots=None, next_arrival=None, until_next=None, host_blocks=None,
                         handoff_iteration=None,
                         ttft=pick(e.ttft), latency=pick(e.latency),
                         preemptions=pick(e.preemptions), free_queue=None, totals=totals)
    return merged, kv_use, swapped_bytes


@partial(jax.jit, static_argnums=(0, 1))
def _init(spec, instances, reqs):
    return jax.vmap(lambda r: init_cluster(spec, instances, r))(reqs)


@partial(jax.jit, static_argnums=(0, 1), donate_argnums=3)
def _route(spec, router, inputs, state, count, limit):
    return route_arrivals(spec, router, inputs, state, count, limit)


@partial(jax.jit, static_argnums=0, donate_argnums=2)
def _drain(spec, inputs, state, limit, steps):
    return advance(spec, inputs, state, limit, steps)


@jax.jit
def _take(tree, rows):
    return jax.tree_util.tree_map(lambda x: x[rows], tree)


@jax.jit
def _any_live(state, limit):
    return jnp.any(has_work(state.engines, state.inbox)
                   & (state.engines.totals.iterations < limit))
