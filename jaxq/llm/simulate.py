"""Run a batch of LLM engine configurations on a trace or a synthetic workload.

    system = jaxq.llm.LLMSystem(policy=jaxq.SPRPT(), kv_capacity=[20_000, 40_000], **costs)
    result = jaxq.llm.simulate(system, WORKLOADS["azure-conversation"](rate=8.0), requests=2000)

Any numeric field of an `LLMSystem` (and of its policy and predictor) may carry batch axes; they
broadcast together, and every configuration runs `replicas` replicas in one vmapped call.
Configurations with equal seeds see the same requests and prediction noise.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import threading
import time
import warnings
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxq._checks import check_choice, check_count, check_nonnegative, check_range
from jaxq.llm.engine import (ADMISSION_MODES, PAUSE_KV_MODES, PREEMPTION_MODES, EngineParams,
                             EngineSpec, EngineState, Requests, init_state, run)
from jaxq.llm.workloads import LLMWorkload, Trace
from jaxq.policies import FCFS, LLM_POLICIES, Policy, without_aging
from jaxq.predictors import Perfect, Predictor
from jaxq.simulate import CapacityError, _as_key, _replica_keys
from jaxq.system import batch_shape, flatten

QUANTILES = (0.5, 0.9, 0.99)
_STREAM_WORKLOAD, _STREAM_PREDICTIONS, _STREAM_REFINE, _STREAM_CALLS = 0, 1, 2, 5
_INT_FIELDS = ("kv_capacity", "block_size", "max_seqs", "max_batched_tokens", "host_capacity",
               "max_output", "refine_every")
_FLOAT_FIELDS = ("iter_base", "iter_per_prefill_token", "iter_per_decode_seq",
                 "iter_per_kv_token", "swap_per_token")


class LLMSystem(eqx.Module):
    """One LLM engine configuration, or a batch of them (any numeric field may be an array).

    Defaults: vLLM's default limits (256 sequences, 2048 batched tokens, blocks of 16) and the
    roofline costs and KV capacity of one RTX 4090 serving Llama-3.1-8B (`jaxq.llm.hardware`);
    pass `**jaxq.llm.costs(gpu, model)` for other hardware.
    """

    policy: Policy
    predictor: Predictor
    kv_capacity: jax.Array  # tokens of GPU KV cache
    block_size: jax.Array  # tokens per block
    max_seqs: jax.Array  # most requests per iteration
    max_batched_tokens: jax.Array  # token budget per iteration (chunked prefill)
    host_capacity: jax.Array  # tokens of host memory for swapped KV
    max_output: jax.Array  # output tokens reserved per request by reserve-max
    refine_every: jax.Array  # k: redraw the prediction every k tokens (refine=True)
    iter_base: jax.Array  # seconds
    iter_per_prefill_token: jax.Array  # seconds
    iter_per_decode_seq: jax.Array  # seconds
    iter_per_kv_token: jax.Array  # seconds
    swap_per_token: jax.Array  # seconds
    kv_bytes_per_token: jax.Array  # bytes, only to report swapped bytes
    keep_seconds: jax.Array  # pause_kv "auto": keep a paused request's KV iff its predicted
    #   call seconds x its KV tokens <= keep_seconds x the free KV tokens
    seed: jax.Array  # int: configurations with equal seeds see the same requests
    preemption: str = eqx.field(static=True)
    admission: str = eqx.field(static=True)
    refine: bool = eqx.field(static=True)
    prefix_cache: bool = eqx.field(static=True)
    pause_kv: str = eqx.field(static=True)  # a request pausing for a tool call: its KV is kept,
    #   discarded, swapped, or chosen by "auto"

    def __init__(self, policy: Policy | None = None, predictor: Predictor | None = None, *,
                 kv_capacity=None, block_size=16, max_seqs=256, max_batched_tokens=2048,
                 host_capacity=0, max_output=4096, refine_every=32,
                 iter_base=None, iter_per_prefill_token=None, iter_per_decode_seq=None,
                 iter_per_kv_token=None, swap_per_token=None, kv_bytes_per_token=None,
                 seed=0, preemption="recompute", admission="optimistic", refine=False,
                 prefix_cache=False, pause_kv="keep", keep_seconds=1.0):
        self.policy = FCFS() if policy is None else policy
        self.predictor = Perfect() if predictor is None else predictor
        given = dict(locals())
        preset = _default_costs()
        value = lambda name: preset[name] if given[name] is None else given[name]  # noqa: E731
        for name in _INT_FIELDS:
            setattr(self, name, jnp.asarray(value(name), dtype=jnp.int32))
        for name in _FLOAT_FIELDS:
            setattr(self, name, jnp.asarray(value(name), dtype=float))
        self.kv_bytes_per_token = jnp.asarray(value("kv_bytes_per_token"), dtype=float)
        self.keep_seconds = jnp.asarray(keep_seconds, dtype=float)
        self.pause_kv = check_choice("pause_kv", pause_kv, PAUSE_KV_MODES)
        self.seed = jnp.asarray(seed, dtype=jnp.int32)
        self.preemption = check_choice("preemption", preemption, PREEMPTION_MODES)
        self.admission = check_choice("admission", admission, ADMISSION_MODES)
        self.refine = bool(refine)
        self.prefix_cache = bool(prefix_cache)

    def __check_init__(self):
        for name in ("block_size", "max_seqs", "max_batched_tokens", "refine_every"):
            _check_int_at_least(name, getattr(self, name), 1)
        for name in ("host_capacity", "max_output"):
            _check_int_at_least(name, getattr(self, name), 0)
        _check_int_at_least("kv_capacity", self.kv_capacity, 1)
        blocks = np.asarray(self.kv_capacity) // np.asarray(self.block_size)
        if np.any(blocks < 1):
            raise ValueError("kv_capacity must hold at least one block (>= block_size tokens)")
        for name in _FLOAT_FIELDS + ("kv_bytes_per_token", "keep_seconds"):
            check_nonnegative(name, getattr(self, name))
        base = without_aging(self.policy)
        if base.name not in LLM_POLICIES:
            raise ValueError(f"policy {base.name!r} is not one of the LLM engine's: "
                             f"{', '.join(LLM_POLICIES)}")

    def params(self) -> EngineParams:
        return EngineParams(keep_seconds=self.keep_seconds,
                            **{name: getattr(self, name) for name in _INT_FIELDS + _FLOAT_FIELDS})


def _default_costs() -> dict:
    """What an LLMSystem leaves unset: the rtx-4090 / llama-3.1-8b roofline."""
    from jaxq.llm.hardware import roofline
    return dataclasses.asdict(roofline("rtx-4090", "llama-3.1-8b"))


def _check_int_at_least(name, value, low):
    v = np.asarray(value)
    if isinstance(value, jax.core.Tracer):
        return
    if np.any(v < low):
        raise ValueError(f"{name} must be an integer >= {low}, got {v[v < low].ravel()[0]}")


@dataclasses.dataclass(frozen=True)
class LLMResult:
    """Per-configuration results; arrays have the LLMSystem's batch shape S in front.

    Per-request metrics cover requests with index >= warmup, pooled over replicas; `*_stderr` is
    the standard error of a replica's mean across replicas (NaN for one replica)."""

    ttft_mean: np.ndarray  # S, seconds: first-token time minus arrival
    ttft_stderr: np.ndarray
    ttft_p50: np.ndarray
    ttft_p90: np.ndarray
    ttft_p99: np.ndarray
    tpot_mean: np.ndarray  # S, seconds per output token after the first (requests with O >= 2)
    tpot_p50: np.ndarray
    tpot_p90: np.ndarray
    tpot_p99: np.ndarray
    latency_mean: np.ndarray  # S, seconds: finish minus arrival
    latency_stderr: np.ndarray
    latency_p50: np.ndarray
    latency_p90: np.ndarray
    latency_p99: np.ndarray
    latency_per_token_mean: np.ndarray  # S, latency / O
    latency_per_token_p50: np.ndarray
    latency_per_token_p90: np.ndarray
    latency_per_token_p99: np.ndarray
    request_throughput: np.ndarray  # S, requests/s over the whole run (first arrival to last exit)
    token_throughput: np.ndarray  # S, output tokens/s, same window
    goodput: np.ndarray  # S, requests/s meeting both SLOs (ttft_slo, tpot_slo)
    mean_kv_use: np.ndarray  # S, time-average fraction of KV capacity in use while busy
    peak_kv_tokens: np.ndarray  # S, most KV tokens resident in any iteration of any replica
    preemptions: np.ndarray  # S, total over replicas
    recomputed_tokens: np.ndarray  # S, KV tokens dropped by recompute, total over replicas
    prefix_hit_tokens: np.ndarray  # S, of those, tokens found again in the prefix cache
    swapped_tokens: np.ndarray  # S, KV tokens moved to or from host, total over replicas
    swapped_bytes: np.ndarray  # S, swapped_tokens * kv_bytes_per_token
    mean_batch_size: np.ndarray  # S, requests per iteration
    mean_queue_length: np.ndarray  # S, time average of requests in system not in the batch
    iterations: np.ndarray  # S, total over replicas
    boundaries: np.ndarray  # S, iterations whose boundary the engine computed in full (the
    #   others were pure-decode iterations advanced in closed form), total over replicas
    completed: np.ndarray  # S, measured requests that finished, over replicas
    overflow: np.ndarray  # S, boundaries at which an arrival found no free slot (0: valid)
    unfinished: np.ndarray  # S, requests still in system when the run was stopped
    pauses: np.ndarray  # S, tool calls started, total over replicas
    discarded_tokens: np.ndarray  # S, KV tokens dropped when their request paused
    paused_kv_token_seconds: np.ndarray  # S, mean over replicas of the time integral of GPU KV
    #   tokens held by paused requests
    ttft: np.ndarray  # S + (R, N) per request, NaN if never produced
    latency: np.ndarray  # S + (R, N)
    request_preemptions: np.ndarray  # S + (R, N)
    arrival_time: np.ndarray  # S + (R, N), seconds from the first arrival
    output_tokens: np.ndarray  # S + (R, N)
    warmup: int  # the first `warmup` requests of each replica are left out of the metrics
    seconds: float  # wall time, compilation included
    # Clusters only (None for one instance):
    instance: np.ndarray | None = None  # S + (R, N) int, the instance each request was sent to
    instance_share: np.ndarray | None = None  # S + (I,), fraction of measured requests each
    #   instance served, pooled over replicas

    def to_dict(self, index=()) -> dict:
        """Scalar metrics of one configuration (for --json)."""
        skip = {"ttft", "latency", "request_preemptions", "arrival_time", "output_tokens",
                "warmup", "seconds", "instance"}
        out = {}
        for field in dataclasses.fields(self):
            if field.name in skip or getattr(self, field.name) is None:
                continue
            value = np.asarray(getattr(self, field.name))[index]
            out[field.name] = value.item() if value.ndim == 0 else value.tolist()
        out["seconds"] = self.seconds
        return out


def trace_requests(trace: Trace) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                          np.ndarray | None]:
    """(gaps, prompt, output, predictions or None) on the clock of the first arrival."""
    t = trace.arrival_time - trace.arrival_time[0]
    gaps = np.diff(t, prepend=0.0)
    return gaps, trace.prompt_tokens, trace.output_tokens, trace.predicted_output_tokens


def simulate(system: LLMSystem, workload: LLMWorkload | Trace, *, requests: int | None = None,
             replicas: int = 1, slots: int | None = None, warmup: int | None = None,
             ttft_slo: float = math.inf, tpot_slo: float = math.inf, key=0,
             on_overflow: str = "raise", steps_per_call: int = 256, max_iterations=None,
             lanes: int | None = None, workers: int | None = None,
             progress=None) -> LLMResult:
    """Simulate every configuration of `system` (times `replicas`) on the workload.

    workload: a synthetic `LLMWorkload` (then `requests` per replica is required) or a `Trace`
    (replayed as is; `requests` must be None). slots: requests the engine can hold at once
    (default: all of a trace's, or 1024). warmup: requests excluded from the metrics (default 0
    for a trace, requests // 10 for a synthetic workload). progress: None, or a callable
    (finished requests, total) called between compiled calls, each of at most `steps_per_call`
    boundaries per configuration. max_iterations: iterations per configuration after which it
    stops, finished or not (default: 20 times the largest sum of P + O over a configuration's
    requests, plus 1000). lanes: how many (configuration, replica) runs are stepped together in
    one vmapped call; when one finishes, the next waiting run takes its place between calls, so
    a few long runs do not keep the others' lanes idle (default: on accelerators all of them,
    shared among the workers, since a step costs about the same for any number; at most 8 on a
    CPU, where it costs in proportion: about 3 us per lane with 48 slots, 7 us with 128).
    workers: threads that each step such a window, worker w on this process's device w mod the
    device count (default: one per core on a CPU, one per device on accelerators). Results
    depend on neither.
    """
    from jaxq.llm.simulate_cluster import Cluster, simulate_cluster
    from jaxq.llm.simulate_disaggregated import Disaggregated, simulate_disaggregated

    start = time.perf_counter()
    if not isinstance(system, (LLMSystem, Cluster, Disaggregated)):
        raise TypeError(f"system must be a jaxq.llm.LLMSystem, Cluster or Disaggregated, got "
                        f"{type(system).__name__}")
    check_choice("on_overflow", on_overflow, ("raise", "warn", "ignore"))
    for name, slo in (("ttft_slo", ttft_slo), ("tpot_slo", tpot_slo)):
        check_range(name, slo, low=0.0, low_open=True, allow_inf=True)
    check_count("replicas", replicas, 1)
    check_count("steps_per_call", steps_per_call, 1)
    for name, value in (("lanes", lanes), ("workers", workers),
                        ("max_iterations", max_iterations)):
        if value is not None:
            check_count(name, value, 1)
    is_trace = isinstance(workload, Trace)
    if is_trace:
        if requests is not None:
            raise ValueError("requests is set by the trace; leave it out when replaying one")
        n = len(workload)
    else:
        if not isinstance(workload, LLMWorkload):
            raise TypeError("workload must be an LLMWorkload or a Trace, got "
                            f"{type(workload).__name__}")
        check_count("requests", requests, 1)
        n = requests
    slots = min(n, 1024) if slots is None else slots
    check_count("slots", slots, 1)
    warmup = (0 if is_trace else n // 10) if warmup is None else warmup
    check_count("warmup", warmup, 0)
    if warmup >= n:
        raise ValueError(f"warmup must be below the number of requests ({n}), got {warmup}")

    if isinstance(system, (Cluster, Disaggregated)):
        run = simulate_cluster if isinstance(system, Cluster) else simulate_disaggregated
        result = run(system, workload, n, is_trace, slots, replicas, warmup, ttft_slo, tpot_slo,
                     key, steps_per_call, max_iterations, lanes, workers, progress, start)
        _report_problems(result, slots, on_overflow)
        return result
    shape = _batch_shape(system)
    flat, _ = flatten(system)
    b = math.prod(shape) if shape else 1
    keys = _replica_keys(_as_key(key), flat.seed, replicas)
    per = jax.tree_util.tree_map(lambda x: jnp.repeat(x, replicas, axis=0), flat)
    keys = keys.reshape(-1)
    reqs = _requests(per, workload, keys, n, is_trace)
    _check_fits(per, reqs, workload if is_trace else None)
    spec = engine_spec(system, slots, reqs)
    refine_keys = jax.vmap(lambda k: jax.random.fold_in(k, _STREAM_REFINE))(keys)
    limit = (max_iterations if max_iterations is not None
             else 20 * int(np.max(np.sum(np.asarray(reqs.prompt) + np.asarray(reqs.output),
                                         axis=-1))) + 1000)
    runs = b * replicas
    workers = _default_workers() if workers is None else workers
    lanes = _default_lanes(runs, workers) if lanes is None else lanes
    inputs = (per.params(), per.policy, per.predictor, reqs, refine_keys)
    state = _run_all(spec, inputs, _init(spec, reqs), n, min(lanes, runs), steps_per_call,
                     limit, progress, workers)
    t = jax.tree_util.tree_map(np.asarray, state.totals)
    with np.errstate(invalid="ignore", divide="ignore"):
        kv_use = t.kv_token_seconds / t.busy_time / np.asarray(per.kv_capacity, np.float64)
    swapped_bytes = t.swapped_tokens * np.asarray(per.kv_bytes_per_token)
    result = _summarise(state, reqs, shape, replicas, warmup, ttft_slo, tpot_slo,
                        time.perf_counter() - start, kv_use, swapped_bytes)
    _report_problems(result, slots, on_overflow)
    return result


def engine_spec(system: LLMSystem, slots: int, reqs: Requests) -> EngineSpec:
    """The static choices of `system`'s runs on `reqs` (their tool calls fix `pauses`)."""
    pauses = 0 if reqs.pause_at is None else reqs.pause_at.shape[-1]
    if pauses and system.prefix_cache:
        raise ValueError("the prefix cache is not modelled together with tool calls; turn one "
                         "of them off")
    return EngineSpec(slots=slots, preemption=system.preemption, admission=system.admission,
                      refine=system.refine, prefix_cache=system.prefix_cache, pauses=pauses,
                      pause_kv=system.pause_kv)


def _default_lanes(runs: int, workers: int) -> int:
    # On a CPU a step costs in proportion to its lanes, so fewer lanes waste less on finished
    # runs, until the fixed cost of a step shows. scripts/bench_llm.py (256 runs, 48 slots): one
    # worker: 2 lanes 2.4 s, 4 lanes 1.6 s, 8 lanes 1.4 s, 16 lanes 1.4 s, 32 lanes 1.7 s; two
    # workers: 4 lanes 1.06 s, 8 lanes 0.99 s, 16 lanes 1.05 s, 32 lanes 1.39 s.
    return max(1, runs // workers) if jax.default_backend() != "cpu" else min(runs, 8)


def _default_workers() -> int:
    """One worker per core on a CPU (a compiled call runs on the thread that made it, which
    releases the GIL meanwhile); one per device on accelerators, each of which runs a window's
    lanes in parallel on its own."""
    if jax.default_backend() != "cpu":
        return jax.local_device_count()
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _run_all(spec, inputs, state, n, lanes, steps_per_call, limit, progress,
             workers) -> EngineState:
    """Every run to its end (all N requests finished, or `limit` iterations). Each of `workers`
    threads steps a window of `lanes` runs; after each compiled call of `steps_per_call` loop
    steps, the runs that stopped give their lanes to runs that have not started. `inputs` and
    `state` have the runs on axis 0."""
    runs = state.totals.finished.shape[0]
    workers = max(1, min(workers, runs // lanes))
    steps, limit = jnp.asarray(steps_per_call, jnp.int32), jnp.asarray(limit, jnp.int32)
    waiting = list(range(runs))[::-1]  # runs not started, next last
    owner = np.zeros(runs, np.int32)  # the worker that ran each run
    finished = [0] * workers  # requests finished, per worker
    lock = threading.Lock()

    def start(worker):
        with lock:
            if not waiting:
                return None
            run = waiting.pop()
            owner[run] = worker
            return run

    devices = jax.local_devices()

    def work(worker):
        lane_run = np.array([start(worker) for _ in range(lanes)])
        # The worker's device (this process's devices in turn) runs all its calls: the
        # configuration axis is split over the devices by the runs each worker takes. The pool
        # is a copy of its own: _put donates it, and only this worker's runs change in it.
        device = devices[worker % len(devices)]
        own_inputs = jax.device_put(inputs, device)
        pool = jax.tree_util.tree_map(jnp.copy, jax.device_put(state, device))
        while True:
            window = _advance(spec, *_take(own_inputs, lane_run), _take(pool, lane_run), steps,
                              limit)
            pool = _put(pool, lane_run, window)
            stopped = np.array((window.totals.finished >= n)
                               | (window.totals.iterations >= limit))
            for lane in np.flatnonzero(stopped):
                run = start(worker)
                if run is None:
                    break
                lane_run[lane], stopped[lane] = run, False
            if progress is not None:
                with lock:
                    finished[worker] = int(jnp.sum(pool.totals.finished))
                    progress(sum(finished), runs * n)
            if stopped.all():
                return pool

    if workers == 1:
        return work(0)
    # jax.enable_x64 is a per-thread setting: the workers trace as the caller does.
    x64 = jax.config.jax_enable_x64

    def work_as_caller(worker):
        with jax.enable_x64(x64):
            return work(worker)

    with concurrent.futures.ThreadPoolExecutor(workers) as executor:
        pools = list(executor.map(work_as_caller, range(workers)))
    rows = jnp.arange(runs)
    pools = jax.device_put(pools, devices[0])
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs)[owner, rows], *pools)


@jax.jit
def _take(tree, rows):
    return jax.tree_util.tree_map(lambda x: x[rows], tree)


@partial(jax.jit, donate_argnums=0)
def _put(tree, rows, values):
    return jax.tree_util.tree_map(lambda x, v: x.at[rows].set(v), tree, values)


def _batch_shape(system: LLMSystem) -> tuple[int, ...]:
    try:
        return batch_shape(system)
    except ValueError as err:
        raise ValueError(f"the LLMSystem's batch axes do not broadcast together: {err}") from None


def _requests(per: LLMSystem, workload, keys, n, is_trace) -> Requests:
    """(B*R, N) requests: the trace's, or sampled per (configuration, replica)."""
    count = keys.shape[0]
    ftype = jnp.zeros(()).dtype
    pred_keys = jax.vmap(lambda k: jax.random.fold_in(k, _STREAM_PREDICTIONS))(keys)
    if is_trace:
        gaps, prompt, output, given = trace_requests(workload)
        gaps = jnp.broadcast_to(jnp.asarray(gaps, ftype), (count, n))
        prompt = jnp.broadcast_to(jnp.asarray(prompt, jnp.int32), (count, n))
        output = jnp.broadcast_to(jnp.asarray(output, jnp.int32), (count, n))
    else:
        work_keys = jax.vmap(lambda k: jax.random.fold_in(k, _STREAM_WORKLOAD))(keys)
        gaps, p, o = jax.vmap(lambda k: workload.sample(k, n))(work_keys)
        gaps, prompt, output = gaps.astype(ftype), p.astype(jnp.int32), o.astype(jnp.int32)
        given = None
    if given is not None:
        prediction = jnp.broadcast_to(jnp.asarray(given, ftype), (count, n))
    else:
        prediction = jax.vmap(lambda pr, k, o: pr.predict(k, o.astype(ftype)))(
            per.predictor, pred_keys, output)
    # A prediction of 0 tokens carries no information the model can use; 1 is the least output.
    prediction = jnp.maximum(prediction, 1e-6)
    calls = _tool_calls(per, workload, keys, output, is_trace, count, n, ftype)
    return Requests(gap=gaps, prompt=prompt, output=output, prediction=prediction, **calls)


def _tool_calls(per: LLMSystem, workload, keys, output, is_trace, count, n, ftype) -> dict:
    """The Requests fields of tool calls ((B*R, N, M) each), or none: the trace's, or sampled
    with the workload's ToolCalls, their times predicted by the system's predictor."""
    if is_trace:
        if workload.pause_at is None:
            return {}
        at = np.asarray(workload.pause_at)
        _check_calls(at, np.asarray(workload.output_tokens), workload.source)
        grow = lambda x, t: jnp.broadcast_to(jnp.asarray(x, t), (count,) + at.shape)  # noqa
        return dict(pause_at=grow(at, jnp.int32), pause_for=grow(workload.pause_seconds, ftype),
                    pause_predicted=grow(workload.pause_predicted, ftype))
    if workload.tool_calls is None:
        return {}
    call_keys = jax.vmap(lambda k: jax.random.fold_in(k, _STREAM_CALLS))(keys)
    at, seconds = jax.vmap(lambda k, o: workload.tool_calls.sample(k, o))(call_keys, output)
    predicted = jax.vmap(lambda pr, k, t: t * pr.multiplier(jax.random.fold_in(k, 1), t.shape))(
        per.predictor, call_keys, seconds.astype(ftype))
    return dict(pause_at=at.astype(jnp.int32), pause_for=seconds.astype(ftype),
                pause_predicted=jnp.maximum(predicted, 1e-9))


def _check_calls(at, output, source):
    """Each row of `at` (N, M): positions 1 <= at < O, increasing, then zeros."""
    for i, row in enumerate(at):
        present = row[row > 0]
        if (np.any(row < 0) or np.any(np.diff(present) <= 0) or np.any(present >= output[i])
                or np.any(row[len(present):] != 0)):
            raise ValueError(f"{source}: request {i}: pause_at must hold increasing token "
                             f"positions 1 <= at < O ({output[i]}), then zeros; got {row}")


def _check_fits(per: LLMSystem, reqs: Requests, trace: Trace | None):
    """Every request's peak KV, P + O - 1 tokens, must fit in the KV capacity on its own."""
    need = np.asarray(reqs.prompt, np.int64) + np.asarray(reqs.output, np.int64) - 1
    b = np.asarray(per.block_size, np.int64)[:, None]
    cap = (np.asarray(per.kv_capacity, np.int64)[:, None] // b)
    too_big = -(-need // b) > cap
    if np.any(too_big):
        row, col = np.argwhere(too_big)[0]
        if trace is not None and trace.line is not None:
            where = f"{trace.source}:{trace.line[col]}: request {col}"
        elif trace is not None:
            where = f"{trace.source}: request {col}"
        else:
            where = f"sampled request {col} (of configuration {row})"
        raise ValueError(
            f"{where} needs {need[row, col]} KV tokens (prompt {int(reqs.prompt[row, col])} + "
            f"output {int(reqs.output[row, col])} - 1), more than kv_capacity "
            f"{int(per.kv_capacity[row])} holds ({int(cap[row, 0])} blocks of "
            f"{int(b[row, 0])}); raise --kv-capacity"
            + (" or shorten the request" if trace is not None
               else " or cap the workload's context (max_tokens, --max-model-len)"))


@partial(jax.jit, static_argnums=0)
def _init(spec, reqs):
    return jax.vmap(lambda r: init_state(spec, r))(reqs)


@partial(jax.jit, static_argnums=0, donate_argnums=6)
def _advance(spec, params, policy, predictor, reqs, keys, state, steps, max_iterations):
    return run(spec, params, policy, predictor, reqs, keys, state, steps, max_iterations)


def _quantiles(x, axis):
    return [np.nanquantile(x, q, axis=axis) if x.shape[axis] else np.nan for q in QUANTILES]


def _summarise(state: EngineState, reqs: Requests, shape, replicas, warmup, ttft_slo,
               tpot_slo, seconds, kv_use, swapped_bytes, **extra) -> LLMResult:
    """The result of runs (B*R of them): kv_use is each run's time-average fraction of KV
    capacity in use while busy, swapped_bytes its bytes moved to or from the host; `extra`
    fields are passed on as they are."""
    grid = lambda x: np.asarray(x).reshape(shape + (replicas,) + np.shape(x)[1:])  # noqa: E731
    # Summed in float64: a float32 sum's rounding would depend on the batch's shape.
    ttft = grid(state.ttft).astype(np.float64)
    latency = grid(state.latency).astype(np.float64)
    output = grid(reqs.output)
    arrival = np.cumsum(np.asarray(reqs.gap, np.float64), axis=-1)
    arrival = grid(arrival)
    t = jax.tree_util.tree_map(grid, state.totals)
    measured = np.arange(ttft.shape[-1]) >= warmup
    pooled = lambda x: x[..., measured].reshape(shape + (-1,))  # noqa: E731
    # A metric with no sample (TPOT when every output is one token) is NaN, without a warning.
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        tpot = np.where(output >= 2, (latency - ttft) / (output - 1), np.nan)
        per_token = latency / output
        met = (ttft <= ttft_slo) & (np.nan_to_num(tpot, nan=0.0) <= tpot_slo) & ~np.isnan(latency)
        elapsed = t.elapsed
        replica_ttft = np.nanmean(ttft[..., measured], axis=-1)
        replica_latency = np.nanmean(latency[..., measured], axis=-1)
        stderr = lambda x: (np.std(x, axis=-1, ddof=1) / np.sqrt(replicas)  # noqa: E731
                            if replicas > 1 else np.full(shape, np.nan))
        sums = lambda x: np.sum(x, axis=-1)  # noqa: E731
        stats = {}
        for name, x in (("ttft", ttft), ("tpot", tpot), ("latency", latency),
                        ("latency_per_token", per_token)):
            values = pooled(x)
            stats[f"{name}_mean"] = np.nanmean(values, axis=-1)
            for q, v in zip(QUANTILES, _quantiles(values, -1)):
                stats[f"{name}_p{int(round(q * 100))}"] = v
        n_measured = np.sum(~np.isnan(pooled(latency)), axis=-1)
        result = LLMResult(
            **stats,
            ttft_stderr=stderr(replica_ttft), latency_stderr=stderr(replica_latency),
            request_throughput=np.mean(ttft.shape[-1] / elapsed, axis=-1),
            token_throughput=np.mean(np.sum(output, axis=-1) / elapsed, axis=-1),
            goodput=np.mean(np.sum(met[..., measured], axis=-1) / elapsed, axis=-1),
            mean_kv_use=np.mean(grid(kv_use), axis=-1),
            peak_kv_tokens=np.max(t.peak_kv_tokens, axis=-1),
            preemptions=sums(t.preemptions), recomputed_tokens=sums(t.recomputed_tokens),
            prefix_hit_tokens=sums(t.prefix_hit_tokens),
            swapped_tokens=sums(t.swapped_tokens),
            swapped_bytes=sums(grid(swapped_bytes)),
            mean_batch_size=np.sum(t.batched, -1) / np.sum(t.iterations, -1),
            mean_queue_length=np.mean(t.waiting_seconds / elapsed, axis=-1),
            iterations=sums(t.iterations), boundaries=sums(t.boundaries),
            completed=n_measured,
            overflow=sums(t.overflow),
            unfinished=sums(ttft.shape[-1] - t.finished),
            pauses=sums(t.pauses), discarded_tokens=sums(t.discarded_tokens),
            paused_kv_token_seconds=np.mean(t.paused_kv_token_seconds, axis=-1),
            ttft=ttft, latency=latency, request_preemptions=grid(state.preemptions),
            arrival_time=arrival, output_tokens=output, warmup=warmup, seconds=seconds,
            **extra)
    return result


def _report_problems(result: LLMResult, slots, on_overflow):
    if on_overflow == "ignore":
        return
    problems = []
    if np.any(result.overflow > 0):
        problems.append(f"{int(np.sum(result.overflow > 0))} configuration(s) had more requests "
                        f"in system than slots ({slots}): raise --slots")
    if np.any(result.unfinished > 0):
        problems.append(f"{int(np.sum(result.unfinished))} request(s) had not finished when the "
                        f"iteration limit was reached: raise max_iterations")
    if not problems:
        return
    message = "; ".join(problems) + " (results of those configurations are not the model's)"
    if on_overflow == "raise":
        raise CapacityError(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)
