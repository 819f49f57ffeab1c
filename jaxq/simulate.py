"""Run a batch of queueing systems: validation, sampling, the chunk loop, and the Result.

    result = jaxq.simulate(jaxq.System(load=loads, policy=jaxq.SPRPT(), ...), jobs=10_000)

Every configuration in the batch runs `replicas` independent replicas; configurations with the
same seed see the same arrivals, sizes and prediction noise (common random numbers), so policy
comparisons are sharp.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxq._checks import check_choice, check_count, check_range
from jaxq.metrics import histogram_quantiles, quantile_resolution
from jaxq import dispatch as dispatching
from jaxq.prediction_cost import PredictionCost
from jaxq.queue import Chunk, EngineSpec, QueueState, init_state, run_chunk
from jaxq.system import System, flatten

DEFAULT_SIZE_BUCKETS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
QUANTILES = (0.5, 0.9, 0.99)
_STREAM_ARRIVALS, _STREAM_SIZES, _STREAM_PREDICTIONS, _STREAM_DISPATCH = 0, 1, 2, 3


class CapacityError(RuntimeError):
    """Some configurations had more jobs in system than slots; their results are biased."""


@dataclasses.dataclass(frozen=True)
class Result:
    """Per-configuration results; every array has the System's batch shape S in front."""

    mean_response_time: np.ndarray  # S
    stderr: np.ndarray  # S, standard error of the mean across replicas (NaN for one replica)
    mean_slowdown: np.ndarray  # S, E[T / x]
    p50: np.ndarray  # S, quantiles of T (resolution: quantile_resolution)
    p90: np.ndarray  # S
    p99: np.ndarray  # S
    bucket_edges: np.ndarray  # (B-1,) size-bucket edges; bucket b is [edge b-1, edge b)
    bucket_mean_response_time: np.ndarray  # S + (B,), E[T | x in bucket], NaN if empty
    bucket_jobs: np.ndarray  # S + (B,)
    utilisation: np.ndarray  # S, fraction of the measurement window the server was busy
    mean_number_in_system: np.ndarray  # S, time average
    jobs: np.ndarray  # S, measured jobs over all replicas
    overflow: np.ndarray  # S, arrivals dropped for want of a slot (0 in a valid run)
    max_in_system: np.ndarray  # S, the most jobs in system seen in any replica
    unfinished: np.ndarray  # S, measured jobs still in system when the run was stopped
    replica_mean_response_time: np.ndarray  # S + (R,)
    mean_prediction_cost: np.ndarray  # S, mean cost of the predictions made for a measured job
    #                                   (0 without a jaxq.PredictionCost; server time: their time)
    cost: np.ndarray  # S, the objective: mean response time + mean_prediction_cost (external),
    #                   mean response time alone (server time: the predictions are inside it)
    quantile_resolution: float  # relative resolution of p50/p90/p99
    seconds: float  # wall time, compilation included
    chunks: int  # chunks run


def simulate(system: System, *, jobs: int, replicas: int = 8, warmup: int | None = None,
             key: int | jax.Array = 0, capacity: int = 128, chunk: int = 1024,
             size_buckets=DEFAULT_SIZE_BUCKETS, histogram_bins: int = 2000,
             finite_horizon: bool = False, on_overflow: str = "raise",
             max_chunks: int | None = None,
             progress: Callable[[int, int], None] | None = None) -> Result:
    """Simulate every configuration of `system` (one compiled, batched call) and summarise.

    jobs: measured jobs per replica, after `warmup` (default jobs // 10) discarded ones.
    capacity: job slots per configuration; an arrival that finds them all full is dropped and
        counted in `overflow`. on_overflow = "raise" (default) | "warn" | "ignore".
    finite_horizon: stop arrivals after the last measured job and let the system drain; the
        only way to run a load >= 1.
    max_chunks: stop (and report `unfinished`) after this many chunks; default is generous.
    progress: called as progress(chunks_done, chunks_needed_at_least) after each chunk.
    """
    warmup = jobs // 10 if warmup is None else warmup
    _validate(system, jobs=jobs, replicas=replicas, warmup=warmup, capacity=capacity,
              chunk=chunk, histogram_bins=histogram_bins, finite_horizon=finite_horizon,
              on_overflow=on_overflow, size_buckets=size_buckets)
    start = time.perf_counter()
    flat, shape = flatten(system)
    batch = math.prod(shape)

    spec = EngineSpec(capacity=capacity, chunk=chunk, warmup=warmup, jobs=jobs,
                      finite_horizon=finite_horizon,
                      bucket_edges=tuple(float(e) for e in size_buckets),
                      histogram_bins=histogram_bins, servers=int(np.max(system.servers)),
                      dispatch=system.dispatch)
    keys = _replica_keys(_as_key(key), flat.seed, replicas)
    init, _ = _engine(spec)
    state = jax.tree_util.tree_map(
        lambda leaf: jnp.broadcast_to(leaf, (batch, replicas) + leaf.shape), init(spec))
    mesh = _config_mesh()
    padded = flat, keys, state
    if mesh is not None:
        # Every device gets as many configurations: copies of the last one fill the batch up,
        # and their results are dropped.
        extra = -batch % mesh.size
        padded = jax.tree_util.tree_map(
            lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)]), padded)
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("config"))
        padded = jax.device_put(padded, sharding)
    run_flat, keys, state = padded

    needed = -(-(warmup + jobs) // chunk)
    limit = max_chunks if max_chunks is not None else max(20 * needed, needed + 200)
    done_chunks = 0
    while done_chunks < limit:
        state = _advance(spec, mesh, run_flat, keys, state, jnp.asarray(done_chunks, jnp.int32))
        done_chunks += 1
        if progress is not None:
            progress(done_chunks, needed)
        if done_chunks >= needed and bool(jnp.all(state.finished >= jobs)):
            break
    state = jax.tree_util.tree_map(lambda x: x[:batch], state)
    prediction_cost = np.zeros((batch,))
    if system.prediction_cost is not None:
        totals = np.asarray(_measured_prediction_cost(spec, flat, keys[:batch]), np.float64)
        prediction_cost = totals.sum(1) / (jobs * replicas)
    result = _summarise(spec, flat, state, shape, replicas, time.perf_counter() - start,
                        done_chunks, prediction_cost)
    _report_problems(result, capacity, on_overflow)
    return result


def _validate(system, *, jobs, replicas, warmup, capacity, chunk, histogram_bins,
              finite_horizon, on_overflow, size_buckets):
    for name, value, low in (("jobs", jobs, 1), ("replicas", replicas, 1), ("warmup", warmup, 0),
                             ("capacity", capacity, 1), ("chunk", chunk, 1),
                             ("histogram_bins", histogram_bins, 1)):
        check_count(name, value, low)
    if warmup + jobs >= 2**31 - 1:
        raise ValueError(f"warmup + jobs must be below 2^31 - 1, got {warmup + jobs}")
    check_choice("on_overflow", on_overflow, ("raise", "warn", "ignore"))
    edges = np.asarray(size_buckets, dtype=np.float64)
    if edges.ndim != 1 or np.any(np.diff(edges) <= 0) or np.any(edges <= 0):
        raise ValueError(f"size_buckets must be increasing positive edges, got {size_buckets!r}")
    if not isinstance(system, System):
        raise TypeError(f"system must be a jaxq.System, got {type(system).__name__}")
    _check_queue_policy(system.policy)
    system.engine_policy()  # refuses what the cost model cannot run, before anything is traced
    servers = int(np.max(system.servers))
    if system.dispatch is None and servers > capacity:
        raise ValueError(f"capacity must be at least the number of servers ({servers}), got "
                         f"{capacity}")
    if not finite_horizon:
        check_range("load", system.load, low=0.0, low_open=True, high=1.0, high_open=True)
    try:
        system.batch_shape
    except ValueError as err:
        raise ValueError(f"the System's batch axes do not broadcast together: {err}") from None


def _check_queue_policy(policy):
    """Refuse what only the LLM engine can rank (request features the queue does not have)."""
    from jaxq.policies import Linear, POLICIES, without_aging
    policy = without_aging(policy)
    if policy.name not in POLICIES:
        raise ValueError(f"policy {policy.name!r} needs LLM request features; the queue engine "
                         f"takes: {', '.join(POLICIES)}")
    if isinstance(policy, Linear) and policy.uses_request_features():
        raise ValueError("w_prompt, w_kv and w_peak must be 0 in the queue engine (jobs have no "
                         "prompt or KV memory)")


def _config_mesh() -> jax.sharding.Mesh | None:
    """A 1-d mesh over this process's devices for the configuration axis (None with one). In a
    multi-process run (jax.distributed) each process simulates its own configurations on its
    own devices: configurations never need each other's state."""
    devices = jax.local_devices()
    if len(devices) == 1:
        return None
    return jax.sharding.Mesh(np.array(devices), ("config",))


def _as_key(key) -> jax.Array:
    if isinstance(key, (int, np.integer)):
        return jax.random.key(int(key))
    return key


def _replica_keys(key, seeds, replicas) -> jax.Array:
    """(batch, R) keys: one per configuration seed and replica, independent of the batch."""
    per_seed = jax.vmap(lambda s: jax.random.fold_in(key, s))(seeds)
    return jax.vmap(lambda k: jax.vmap(lambda r: jax.random.fold_in(k, r))(
        jnp.arange(replicas)))(per_seed)


def sample_jobs(system: System, key: jax.Array, chunk_index, size: int) -> Chunk:
    """C arrivals for one (configuration, replica), with their true sizes; each stream has its
    own key, so two policies with the same seed see the same jobs."""
    sizes = system.service.sample(_stream(key, _STREAM_SIZES, chunk_index), (size,))
    return Chunk(
        gap=system.arrivals.gaps(_stream(key, _STREAM_ARRIVALS, chunk_index), (size,),
                                 system.rate()),
        size=sizes,
        prediction=system.predictor.predict(_stream(key, _STREAM_PREDICTIONS, chunk_index), sizes),
    )


def sample_chunk(system: System, key: jax.Array, chunk_index, size: int) -> Chunk:
    """The chunk the engine runs: sample_jobs with each size replaced by the job's work on the
    server (its size, plus its prediction time when predictions cost server time)."""
    jobs = sample_jobs(system, key, chunk_index, size)
    return jobs._replace(size=system.work(jobs.size, jobs.prediction))


@partial(jax.jit, static_argnums=0)
def _measured_prediction_cost(spec: EngineSpec, system: System, keys: jax.Array) -> jax.Array:
    """(batch, R): the total prediction cost of each replica's measured jobs (W .. W+N-1),
    from the same samples the engine ran. A job's cost depends on its size and prediction
    only (Policy.predictions), so it is summed here rather than inside the engine."""
    chunks = -(-(spec.warmup + spec.jobs) // spec.chunk)
    index = jnp.arange(spec.chunk)

    def replica(system, key):
        def add(i, total):
            jobs = sample_jobs(system, key, i, spec.chunk)
            j = i * spec.chunk + index
            measured = (j >= spec.warmup) & (j < spec.warmup + spec.jobs)
            cost = system.prediction_cost.per_job(system.policy, jobs.size, jobs.prediction)
            return total + jnp.sum(jnp.where(measured, cost, 0.0))
        return jax.lax.fori_loop(0, chunks, add, jnp.zeros((), float))

    return jax.vmap(lambda s, k: jax.vmap(lambda kr: replica(s, kr))(k))(system, keys)


def _stream(key, stream: int, chunk_index) -> jax.Array:
    """The key of one random stream of one chunk."""
    return jax.random.fold_in(jax.random.fold_in(key, stream), chunk_index)


@partial(jax.jit, static_argnums=(0, 1), donate_argnums=4)
def _advance(spec: EngineSpec, mesh: jax.sharding.Mesh | None, system: System, keys: jax.Array,
             state: QueueState, chunk_index: jax.Array) -> QueueState:
    """Run one chunk for every (configuration, replica). With several devices each one runs its
    share of configurations in its own loop (shard_map), with no communication between them."""
    def over_batch(system, keys, state):
        # (configurations, R) -> one flat batch of B = configurations * R for the engine
        batch, replicas = keys.shape
        flat = lambda a: jnp.reshape(a, (batch * replicas,) + a.shape[2:])  # noqa: E731
        per_replica = jax.tree_util.tree_map(
            lambda leaf: flat(jnp.broadcast_to(leaf[:, None], (batch, replicas) + leaf.shape[1:])),
            system)
        keys = flat(keys)
        chunk = jax.vmap(lambda s, k: sample_chunk(s, k, chunk_index, spec.chunk))(per_replica,
                                                                                  keys)
        mean_size = jax.vmap(lambda s: s.service.mean())(per_replica)
        if spec.dispatch is not None:
            picks = jax.vmap(lambda k, n: dispatching.sample_picks(
                _stream(k, _STREAM_DISPATCH, chunk_index), spec.chunk, spec.dispatch, n))(
                    keys, per_replica.servers)
            chunk = dispatching.DispatchChunk(*chunk, picks)
        _, run = _engine(spec)
        state = run(spec, per_replica.engine_policy(), mean_size, chunk,
                    jax.tree_util.tree_map(flat, state), per_replica.servers)
        return jax.tree_util.tree_map(
            lambda a: jnp.reshape(a, (batch, replicas) + a.shape[1:]), state)

    if mesh is None:
        return over_batch(system, keys, state)
    spec_ = jax.sharding.PartitionSpec("config")
    return jax.shard_map(over_batch, mesh=mesh, in_specs=spec_, out_specs=spec_, check_vma=False)(
        system, keys, state)


def _summarise(spec, system, state, shape, replicas, seconds, chunks,
               prediction_cost) -> Result:
    m = jax.tree_util.tree_map(np.asarray, state.metrics)
    f64 = lambda k: np.asarray(k.total, np.float64) - np.asarray(k.carry, np.float64)  # noqa: E731
    count = m.count.astype(np.float64)  # (batch, R)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_replica = f64(m.response) / count
        mean = f64(m.response).sum(1) / count.sum(1)
        stderr = (per_replica.std(1, ddof=1) / np.sqrt(replicas) if replicas > 1
                  else np.full(mean.shape, np.nan))
        slowdown = f64(m.slowdown).sum(1) / count.sum(1)
        bucket_jobs = m.bucket_count.sum(1)
        bucket_mean = f64(m.bucket_response).sum(1) / bucket_jobs
        window = f64(m.window_time).sum(1)
        util = f64(m.busy_time).sum(1) / window
        number = f64(m.number_area).sum(1) / window
    mean_size = np.asarray(system.service.mean(), np.float64)
    qs = histogram_quantiles(m.histogram.sum(1), QUANTILES, mean_size)
    unfinished = spec.jobs - np.asarray(state.finished)
    cost = mean if system.prediction_cost is None else np.asarray(
        system.prediction_cost.objective(mean, prediction_cost), np.float64)

    def s(a):
        return np.reshape(a, shape + np.shape(a)[1:])

    return Result(
        mean_response_time=s(mean), stderr=s(stderr), mean_slowdown=s(slowdown),
        p50=s(qs[:, 0]), p90=s(qs[:, 1]), p99=s(qs[:, 2]),
        bucket_edges=np.asarray(spec.bucket_edges),
        bucket_mean_response_time=s(bucket_mean), bucket_jobs=s(bucket_jobs),
        utilisation=s(util), mean_number_in_system=s(number),
        jobs=s(count.sum(1).astype(np.int64)),
        overflow=s(np.asarray(state.overflow).sum(1)),
        max_in_system=s(np.asarray(state.max_in_system).max(1)),
        unfinished=s(unfinished.sum(1)),
        replica_mean_response_time=s(per_replica),
        mean_prediction_cost=s(prediction_cost), cost=s(np.broadcast_to(cost, mean.shape)),
        quantile_resolution=quantile_resolution(spec.histogram_bins),
        seconds=seconds, chunks=chunks)


def _report_problems(result: Result, capacity: int, on_overflow: str):
    overflowed = int(np.count_nonzero(result.overflow))
    if overflowed and on_overflow != "ignore":
        msg = (f"{overflowed} of {result.overflow.size} configurations had more jobs in system than "
               f"the {capacity} job slots ({int(result.overflow.sum())} arrivals dropped), so their "
               f"results are biased. Raise the capacity: simulate(..., capacity={4 * capacity}) or "
               f"--capacity {4 * capacity} on the command line.")
        if on_overflow == "raise":
            raise CapacityError(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
    stuck = int(np.count_nonzero(result.unfinished))
    if stuck:
        warnings.warn(
            f"{stuck} configurations stopped after {result.chunks} chunks with "
            f"{int(result.unfinished.sum())} measured jobs still in system; their means leave those "
            f"jobs out. Is the load too close to 1? Raise max_chunks to run longer.",
            RuntimeWarning, stacklevel=3)


def trace(policy, arrival_times, sizes, predictions=None, *, capacity: int | None = None,
          servers: int = 1, prediction_cost: PredictionCost | None = None):
    """Run the engine on a given list of jobs and return each job's departure time.

    The exact engine on a finite trace (no further arrivals after the last one; the system drains),
    for checking against hand-computed instances and a reference implementation. Arrival times
    must be non-decreasing; predictions default to the true sizes; `servers` serve one central
    queue; under a server-time prediction_cost the predictions take server time.
    """
    arrival_times, chunk = _trace_jobs(arrival_times, sizes, predictions)
    policy, chunk = _with_cost(policy, chunk, prediction_cost)
    check_count("servers", servers, 1)
    n = arrival_times.shape[0]
    spec = EngineSpec(capacity=capacity or n, chunk=n, warmup=0, jobs=n, finite_horizon=True,
                      bucket_edges=DEFAULT_SIZE_BUCKETS, histogram_bins=1, record_jobs=n,
                      servers=int(servers))
    state = _trace(spec, policy, chunk)
    if int(state.overflow):
        raise CapacityError(f"trace needs more than capacity={capacity} slots")
    return arrival_times + np.asarray(state.responses, np.float64)


def trace_dispatch(policy, servers: int, dispatch: dispatching.Dispatch, arrival_times, sizes,
                   predictions=None, *, picks=None, key: int = 0,
                   capacity: int | None = None, prediction_cost: PredictionCost | None = None):
    """Like `trace`, for `servers` servers with queues of their own behind `dispatch`: returns
    (each job's departure time, the server it was sent to).

    picks: (jobs, dispatch.sampled) the servers each job samples, to replay given draws; by
    default they are drawn from `key`."""
    arrival_times, chunk = _trace_jobs(arrival_times, sizes, predictions)
    policy, chunk = _with_cost(policy, chunk, prediction_cost)
    check_count("servers", servers, 1)
    if not isinstance(dispatch, dispatching.Dispatch):
        raise TypeError(f"dispatch must be a jaxq.Dispatch, got {type(dispatch).__name__}")
    n = arrival_times.shape[0]
    if picks is None:
        picks = dispatching.sample_picks(jax.random.key(key), n, dispatch, servers)
    picks = np.asarray(picks)
    if (picks.shape != (n, dispatch.sampled) or picks.dtype.kind not in "iu"
            or np.any(picks < 0) or np.any(picks >= servers)):
        raise ValueError(f"picks must be ({n}, {dispatch.sampled}) integers in [0, {servers}), "
                         f"got shape {picks.shape}")
    spec = EngineSpec(capacity=capacity or n, chunk=n, warmup=0, jobs=n, finite_horizon=True,
                      bucket_edges=DEFAULT_SIZE_BUCKETS, histogram_bins=1, record_jobs=n,
                      servers=int(servers), dispatch=dispatch)
    state = _trace(spec, policy, dispatching.DispatchChunk(
        *chunk, jnp.asarray(picks, jnp.int32)))
    if int(state.overflow):
        raise CapacityError(f"trace needs more than capacity={capacity} slots per server")
    return (arrival_times + np.asarray(state.responses, np.float64),
            np.asarray(state.sent_to, np.int64))


def _trace_jobs(arrival_times, sizes, predictions) -> tuple[np.ndarray, Chunk]:
    """(arrival times, the jobs as one chunk), checked."""
    arrival_times = np.asarray(arrival_times, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.float64)
    predictions = sizes if predictions is None else np.asarray(predictions, dtype=np.float64)
    n = arrival_times.shape[0]
    if n == 0 or sizes.shape != (n,) or predictions.shape != (n,):
        raise ValueError("arrival_times, sizes and predictions must be 1-d arrays of one length >= 1")
    if np.any(np.diff(arrival_times) < 0) or arrival_times[0] < 0:
        raise ValueError("arrival_times must be non-negative and non-decreasing")
    check_range("sizes", sizes, low=0.0, low_open=True, high=np.inf)
    check_range("predictions", predictions, low=0.0, high=np.inf)
    gaps = np.diff(arrival_times, prepend=0.0)
    return arrival_times, Chunk(jnp.asarray(gaps, float), jnp.asarray(sizes, float),
                                jnp.asarray(predictions, float))


def _with_cost(policy, chunk: Chunk, prediction_cost) -> tuple:
    """(the policy the engine runs, the chunk with each job's work) for a trace."""
    if prediction_cost is None:
        return policy, chunk
    if not isinstance(prediction_cost, PredictionCost):
        raise TypeError(f"prediction_cost must be a jaxq.PredictionCost or None, got "
                        f"{type(prediction_cost).__name__}")
    work = prediction_cost.work(policy, chunk.size, chunk.prediction)
    return prediction_cost.engine_policy(policy), chunk._replace(size=work)


@partial(jax.jit, static_argnums=0)
def _trace(spec, policy, chunk):
    init, run = _engine(spec)
    one = lambda tree: jax.tree_util.tree_map(lambda a: jnp.asarray(a)[None], tree)  # noqa: E731
    state = run(spec, one(policy), jnp.ones((1,), float), one(chunk), one(init(spec)),
                jnp.full((1,), spec.servers, jnp.int32))
    return jax.tree_util.tree_map(lambda a: a[0], state)


def _engine(spec: EngineSpec):
    """(init_state, run_chunk) of the engine the spec names: the central queue (jaxq.queue), or
    servers with queues of their own (jaxq.dispatch). Both take the same arguments."""
    if spec.dispatch is None:
        return init_state, run_chunk
    return dispatching.init_state, dispatching.run_chunk
