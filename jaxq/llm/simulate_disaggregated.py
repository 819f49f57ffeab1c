"""Prefill/decode disaggregation: a pool of prefill instances and a pool of decode instances,
each behind its own router, with every request's prompt KV sent from one to the other over a
link (the README's "Prefill/decode disaggregation" gives the model exactly).

    gpu = jaxq.llm.LLMSystem(jaxq.FCFS(), **jaxq.llm.costs("h100-sxm", "llama-3.1-8b"))
    pd = jaxq.llm.Disaggregated(gpu, gpu, prefill_instances=1, decode_instances=3,
                                kv_link_bandwidth=25.0)       # GB/s
    result = jaxq.llm.simulate(pd, WORKLOADS["azure-conversation"](rate=8.0), requests=4000)

The prefill pool never waits for the decode pool (a request's KV leaves the prefill GPU with its
first token), so the two pools run one after the other: the prefill pool on the arrivals, then
the decode pool on the handoffs, each as a cluster (jaxq.llm.cluster).
"""

from __future__ import annotations

import math
from typing import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxq._checks import check_count
from jaxq.llm.cluster import ClusterInputs, Router
from jaxq.llm.engine import EngineSpec, EngineState, Requests
from jaxq.llm.simulate import (_STREAM_REFINE, LLMSystem, _batch_shape, _check_fits,
                               _default_workers, _requests, _summarise)
from jaxq.llm.simulate_cluster import (_SHARED, _broadcast_to, _default_lanes, _equal,
                                       _run_windows, router_picks)
from jaxq.simulate import _as_key, _replica_keys

_STREAM_DECODE_ROUTER = 4


class Disaggregated(eqx.Module):
    """A prefill pool and a decode pool behind their routers, joined by a KV link.

    prefill, decode: one LLMSystem (copied `prefill_instances` / `decode_instances` times) or a
        sequence of them, one per instance. Every instance shares the policy, the predictor, the
        seed, the static modes and kv_bytes_per_token (one model).
    router, decode_router: the prefill pool's router (a Router or a rule's name) and the decode
        pool's (default: the same rule).
    kv_link_bandwidth: GB/s (10^9 bytes/s), > 0; inf for free transfers. A request's transfer
        takes prompt tokens x kv_bytes_per_token / bandwidth; transfers do not share the link.
    """

    prefill: tuple[LLMSystem, ...]
    decode: tuple[LLMSystem, ...]
    router: Router
    decode_router: Router
    kv_link_bandwidth: jax.Array

    def __init__(self, prefill: LLMSystem | Sequence[LLMSystem],
                 decode: LLMSystem | Sequence[LLMSystem], *, prefill_instances: int | None = None,
                 decode_instances: int | None = None, router: Router | str = "round-robin",
                 decode_router: Router | str | None = None, kv_link_bandwidth=math.inf):
        self.prefill = _pool("prefill", prefill, prefill_instances)
        self.decode = _pool("decode", decode, decode_instances)
        everyone = self.prefill + self.decode
        for i, system in enumerate(everyone):
            for name in _SHARED + ("kv_bytes_per_token",):
                if not _equal(getattr(system, name), getattr(everyone[0], name)):
                    pool, j = (("prefill", i) if i < len(self.prefill)
                               else ("decode", i - len(self.prefill)))
                    raise ValueError(f"every instance of both pools must share "
                                     f"{', '.join(_SHARED)} and kv_bytes_per_token; {pool} "
                                     f"instance {j}'s {name} differs from prefill instance 0's")
        if everyone[0].refine:
            raise ValueError("refine=True is not supported with disaggregation (a refinement "
                             "at the first token would be made on the prefill instance)")
        self.router = Router(router) if isinstance(router, str) else router
        decode_router = self.router.rule if decode_router is None else decode_router
        self.decode_router = (Router(decode_router) if isinstance(decode_router, str)
                              else decode_router)
        bandwidth = jnp.asarray(kv_link_bandwidth, dtype=float)
        if not isinstance(bandwidth, jax.core.Tracer) and np.any(np.asarray(bandwidth) <= 0):
            raise ValueError(f"kv_link_bandwidth must be > 0 GB/s (inf: free transfers), got "
                             f"{np.asarray(bandwidth).ravel()[np.argmin(np.asarray(bandwidth))]}")
        self.kv_link_bandwidth = bandwidth


def _pool(name, systems, count) -> tuple[LLMSystem, ...]:
    if isinstance(systems, LLMSystem):
        check_count(f"{name}_instances", 1 if count is None else count, 1)
        return (systems,) * (1 if count is None else int(count))
    systems = tuple(systems)
    if not systems:
        raise ValueError(f"the {name} pool needs at least one instance")
    if count is not None and count != len(systems):
        raise ValueError(f"{name}_instances ({count}) must equal the number of {name} systems "
                         f"given ({len(systems)}), or be left out")
    for i, system in enumerate(systems):
        if not isinstance(system, LLMSystem):
            raise TypeError(f"{name} instance {i} must be a jaxq.llm.LLMSystem, got "
                            f"{type(system).__name__}")
    return systems


def simulate_disaggregated(pd: Disaggregated, workload, n, is_trace, slots, replicas, warmup,
                           ttft_slo, tpot_slo, key, steps_per_call, max_iterations, lanes,
                           workers, progress, start):
    """jaxq.llm.simulate for a Disaggregated system (arguments checked there)."""
    import time

    shapes = [_batch_shape(s) for s in pd.prefill + pd.decode] + [np.shape(pd.kv_link_bandwidth)]
    try:
        shape = tuple(np.broadcast_shapes(*shapes))
    except ValueError as err:
        raise ValueError(f"the batch axes of the instances and kv_link_bandwidth do not "
                         f"broadcast together: {err}") from None
    flat = [_broadcast_to(s, shape) for s in pd.prefill + pd.decode]
    keys = _replica_keys(_as_key(key), flat[0].seed, replicas).reshape(-1)
    per = [jax.tree_util.tree_map(lambda x: jnp.repeat(x, replicas, axis=0), s) for s in flat]
    first = per[0]
    bandwidth = np.repeat(np.broadcast_to(np.asarray(pd.kv_link_bandwidth, np.float64),
                                          shape).reshape(-1), replicas)
    reqs = _requests(first, workload, keys, n, is_trace)
    if reqs.pause_at is not None:
        raise ValueError("tool calls are not modelled with disaggregation yet (a call would "
                         "pause a request between its prefill and decode instances)")
    for system in per:
        _check_fits(system, reqs, workload if is_trace else None)
    n_prefill, n_decode = len(pd.prefill), len(pd.decode)
    runs = keys.shape[0]
    workers = _default_workers() if workers is None else workers
    limit = jnp.asarray(max_iterations if max_iterations is not None else
                        20 * int(np.max(np.sum(np.asarray(reqs.prompt) + np.asarray(reqs.output),
                                               axis=-1))) + 1000, jnp.int32)
    refine_keys = jax.vmap(lambda k: jax.random.fold_in(k, _STREAM_REFINE))(keys)

    def pool(systems, spec, router, requests, picks, order, report):
        params = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs, axis=1),
                                        *[s.params() for s in systems])  # fields (B*R, I)
        inputs = ClusterInputs(params=params, policy=first.policy, predictor=first.predictor,
                               requests=requests, key=refine_keys, picks=picks, order=order)
        size = _default_lanes(runs, len(systems), workers) if lanes is None else lanes
        return _run_windows(spec, router, inputs, len(systems), n, min(size, runs), workers,
                            steps_per_call, limit, report)

    spec = EngineSpec(slots=slots, preemption=first.preemption, admission=first.admission,
                      refine=False, prefix_cache=first.prefix_cache)
    report = None if progress is None else (lambda done, total: progress(done, 2 * total))
    prefill = pool(per[:n_prefill], spec._replace(prefill_only=True), pd.router, reqs,
                   router_picks(keys, n, pd.router, n_prefill), None, report)
    handoff = _handoffs(prefill, reqs, per[0].kv_bytes_per_token, bandwidth)
    decoding = np.asarray(reqs.output) >= 2
    ftype = reqs.gap.dtype
    decode_reqs = reqs._replace(gap=jnp.asarray(handoff.gap, ftype),
                                transferred=jnp.asarray(decoding))
    done_at_prefill = runs * n + int(np.sum(~decoding))
    report = None if progress is None else (
        lambda done, total: progress(done_at_prefill + done, 2 * total))
    decode = pool(per[n_prefill:], spec, pd.decode_router, decode_reqs,
                  router_picks(jax.vmap(lambda k: jax.random.fold_in(k, _STREAM_DECODE_ROUTER))(
                      keys), n, pd.decode_router, n_decode),
                  jnp.asarray(handoff.order, jnp.int32), report)

    merged, kv_use, swapped_bytes, instance = _merge(prefill, decode, per, n_prefill, handoff,
                                                     decoding, reqs)
    grid = lambda x: np.asarray(x).reshape(shape + (replicas,) + np.shape(x)[1:])  # noqa: E731
    measured = grid(instance)[..., warmup:]
    share = np.stack([np.mean(measured == i, axis=(-2, -1))
                      for i in range(n_prefill + n_decode)], axis=-1)
    # A decoded request was served by two instances: its prefill instance counts it as well.
    prefill_sent = grid(np.asarray(prefill.sent_to))[..., warmup:]
    decoded = grid(decoding)[..., warmup:]
    for i in range(n_prefill):
        share[..., i] += np.mean((prefill_sent == i) & decoded, axis=(-2, -1))
    return _summarise(merged, reqs, shape, replicas, warmup, ttft_slo, tpot_slo,
                      time.perf_counter() - start, kv_use, swapped_bytes, instance=grid(instance),
                      instance_share=share)


class _Handoffs:
    """Per run (B*R, N): when each request reaches the decode pool (float64, on the clock of
    the first arrival's time origin; inf for a request with one output token, done at its
    prefill), the order they arrive in (ids), and the gaps between arrivals in that order."""

    def __init__(self, arrival, at, order, gap):
        self.arrival, self.at, self.order, self.gap = arrival, at, order, gap


def _handoffs(prefill, reqs: Requests, kv_bytes_per_token, bandwidth) -> _Handoffs:
    """The decode pool's arrivals: a request leaves its prefill instance at its first token and
    arrives after its transfer; at equal times, in order of request id. Handoffs from one
    prefill iteration happened at one instant, so they are given that instant exactly (the
    first request's arrival + time to first token), not each its own rounding of it."""
    e = prefill.engines
    sent = np.asarray(prefill.sent_to)
    pick = lambda x: np.take_along_axis(np.asarray(x), sent[:, None, :], axis=1)[:, 0]  # noqa
    arrival = np.cumsum(np.asarray(reqs.gap, np.float64), axis=-1)
    left = arrival + pick(e.ttft).astype(np.float64)
    iteration = pick(e.handoff_iteration).astype(np.int64)
    runs, n = left.shape
    group = sent.astype(np.int64) * (int(iteration.max()) + 1) + iteration
    for row in range(runs):
        _, first, inverse = np.unique(group[row], return_index=True, return_inverse=True)
        left[row] = left[row, first[inverse]]
    seconds_per_token = np.asarray(kv_bytes_per_token, np.float64) / (bandwidth * 1e9)
    at = left + np.asarray(reqs.prompt, np.float64) * seconds_per_token[:, None]
    at = np.where(np.asarray(reqs.output) >= 2, at, np.inf)
    ids = np.broadcast_to(np.arange(n), (runs, n))
    order = np.lexsort((ids, at), axis=-1)
    ordered = np.take_along_axis(at, order, axis=-1)
    with np.errstate(invalid="ignore"):
        gap = np.diff(ordered, axis=-1, prepend=0.0)
    gap = np.where(np.isfinite(ordered), gap, np.inf)
    return _Handoffs(arrival, at, order, gap)


def _merge(prefill, decode, per, n_prefill, handoff: _Handoffs, decoding, reqs):
    """One EngineState per run with each request's times and preemptions over both pools, the
    counters of all instances combined (summed; the peak and the clock: the greatest), KV use,
    bytes swapped, and the instance that finished each request (decode instances numbered
    after the prefill ones)."""
    def pick(state, x):
        sent = np.maximum(np.asarray(state.sent_to), 0)[:, None, :]
        return np.take_along_axis(np.asarray(x), sent, axis=1)[:, 0]

    ttft = pick(prefill, prefill.engines.ttft)
    decode_latency = pick(decode, decode.engines.latency).astype(np.float64)
    waited = handoff.at - handoff.arrival  # arrival to the decode pool's arrival
    latency = np.where(decoding, waited + decode_latency, ttft).astype(ttft.dtype)
    preemptions = (pick(prefill, prefill.engines.preemptions)
                   + np.where(decoding, pick(decode, decode.engines.preemptions), 0))
    instance = np.where(decoding, n_prefill + np.asarray(decode.sent_to),
                        np.asarray(prefill.sent_to))
    t = jax.tree_util.tree_map(lambda a, b: np.concatenate([np.asarray(a), np.asarray(b)],
                                                           axis=1),
                               prefill.engines.totals, decode.engines.totals)
    most = ("peak_kv_tokens", "elapsed")
    totals = t._replace(**{name: (np.max if name in most else np.sum)(getattr(t, name), axis=1)
                           for name in t._fields})
    # A decoded request leaves both pools: count it once, when it finishes.
    totals = totals._replace(finished=np.sum(~np.isnan(latency), axis=1))
    caps = np.stack([np.asarray(s.kv_capacity, np.float64) for s in per], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        kv_use = np.sum(t.kv_token_seconds, axis=1) / np.sum(t.busy_time * caps, axis=1)
    swapped_bytes = np.sum(t.swapped_tokens, axis=1) * np.asarray(per[0].kv_bytes_per_token)
    merged = EngineState(slots=None, next_arrival=None, until_next=None, host_blocks=None,
                         ttft=ttft, latency=latency, preemptions=preemptions,
                         handoff_iteration=None, free_queue=None, totals=totals)
    return merged, kv_use, swapped_bytes, instance
