"""The LLM engine against the plain-Python reference (exact, request by request), against the
queue engine and the Lindley recursion where the model reduces to a single-server queue, and
invariants under memory pressure."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxq
from jaxq.llm.simulate import LLMSystem, simulate
from jaxq.simulate import CapacityError
from jaxq.llm.workloads import Trace
from jaxq.policies import Aging
from llm_reference import ReferenceConfig, run_reference

POLICY_CASES = {
    "fcfs": (lambda: jaxq.FCFS(), {}),
    "sjf-prompt": (lambda: jaxq.policies.SJFPrompt(), {}),
    "spjf": (lambda: jaxq.SPJF(), {}),
    "pspjf": (lambda: jaxq.PSPJF(), {}),
    "sprpt": (lambda: jaxq.SPRPT(), {}),
    "sprpt-bounce": (lambda: jaxq.SPRPTBounce(), {}),
    "sprpt-limited": (lambda: jaxq.SPRPTLimited(0.4), {"c": 0.4}),
    "onebit": (lambda: jaxq.OneBit(9.0, False), {"threshold": 9.0}),
    "onebit-preemptive": (lambda: jaxq.OneBit(9.0, True), {"threshold": 9.0, "preemptive": True}),
    "linear": (lambda: jaxq.Linear(0.5, 1.0, -0.2, 0.3, preemptive=True, w_prompt=0.05,
                                   w_kv=-0.02, w_peak=0.1),
               {"w_prediction": 0.5, "w_remaining": 1.0, "w_attained": -0.2, "w_age": 0.3,
                "preemptive": True, "w_prompt": 0.05, "w_kv": -0.02, "w_peak": 0.1}),
    "las": (lambda: jaxq.LAS(), {}),
    "srpt": (lambda: jaxq.SRPT(), {}),
    "sjf": (lambda: jaxq.SJF(), {}),
}
REFERENCE_NAME = {"onebit-preemptive": "onebit"}


def _instance(seed, n=24):
    rng = np.random.default_rng(seed)
    arrival = np.cumsum(rng.exponential(0.05, n))
    prompt = rng.integers(1, 40, n)
    output = rng.integers(1, 25, n)
    prediction = output * np.exp(rng.normal(0.0, 0.7, n))
    return arrival, prompt, output, prediction


def _config(seed):
    rng = np.random.default_rng(1000 + seed)
    block = int(rng.choice([1, 4, 8]))
    return dict(kv_capacity=int(rng.integers(72, 160)) // block * block + block * 2,
                block_size=block, max_seqs=int(rng.integers(2, 7)),
                max_batched_tokens=int(rng.integers(10, 70)),
                host_capacity=int(rng.integers(0, 120)), max_output=int(rng.integers(20, 40)),
                iter_base=0.01, iter_per_prefill_token=3e-4, iter_per_decode_seq=2e-3,
                iter_per_kv_token=1e-5, swap_per_token=7e-5)


def _run_engine(policy, arrival, prompt, output, prediction, *, preemption, admission,
                predictor=None, refine_every=None, seed=0, slots=None, **limits):
    trace = Trace(arrival_time=np.asarray(arrival, np.float64),
                  prompt_tokens=np.asarray(prompt), output_tokens=np.asarray(output),
                  predicted_output_tokens=np.asarray(prediction, np.float64), source="test")
    system = LLMSystem(policy, predictor, preemption=preemption, admission=admission,
                       refine=refine_every is not None,
                       refine_every=1 if refine_every is None else refine_every, seed=seed,
                       **limits)
    return simulate(system, trace, key=0, slots=slots)


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def _compare(result, ref, arrival):
    first = arrival + result.ttft[0]
    finish = arrival + result.latency[0]
    np.testing.assert_allclose(first, ref.first_token_time, rtol=1e-11, atol=1e-9)
    np.testing.assert_allclose(finish, ref.finish_time, rtol=1e-11, atol=1e-9)
    np.testing.assert_array_equal(result.request_preemptions[0], ref.preemptions)
    assert int(result.iterations) == ref.iterations
    assert int(result.preemptions) == ref.total_preemptions
    assert int(result.recomputed_tokens) == ref.recomputed_tokens
    assert int(result.swapped_tokens) == ref.swapped_tokens
    assert int(result.peak_kv_tokens) == ref.peak_kv_tokens
    assert int(result.prefix_hit_tokens) == ref.prefix_hit_tokens


def _check_against_reference(policy_name, preemption, admission, seeds=range(3),
                             prefix_cache=False):
    """Returns (preemptions, prefix-cache hit tokens) summed over the seeds."""
    make, options = POLICY_CASES[policy_name]
    preempted = hits = 0
    for seed in seeds:
        arrival, prompt, output, prediction = _instance(seed)
        limits = dict(_config(seed), prefix_cache=prefix_cache)
        result = _run_engine(make(), arrival, prompt, output, prediction,
                             preemption=preemption, admission=admission, **limits)
        ref = run_reference(arrival, prompt, output, prediction, ReferenceConfig(
            policy=REFERENCE_NAME.get(policy_name, policy_name), preemption=preemption,
            admission=admission, **options, **limits))
        _compare(result, ref, arrival)
        preempted += ref.total_preemptions
        hits += ref.prefix_hit_tokens
    return preempted, hits


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
@pytest.mark.parametrize("policy_name", sorted(POLICY_CASES))
def test_matches_reference(policy_name, preemption):
    # The instances do put the memory under pressure, so preemption is exercised.
    assert _check_against_reference(policy_name, preemption, "optimistic")[0] > 0


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
@pytest.mark.parametrize("policy_name", ["fcfs", "sprpt", "onebit-preemptive", "linear"])
def test_prefix_cache_matches_reference(policy_name, preemption):
    # The free-block queue and its cached runs, against the reference's explicit queue.
    assert _check_against_reference(policy_name, preemption, "optimistic", seeds=range(4),
                                    prefix_cache=True)[1] > 0


@pytest.mark.parametrize("admission", ["reserve-predicted", "reserve-max"])
@pytest.mark.parametrize("preemption", ["recompute", "swap"])
@pytest.mark.parametrize("policy_name", ["fcfs", "sprpt", "linear"])
def test_admission_modes_match_reference(policy_name, preemption, admission):
    _check_against_reference(policy_name, preemption, admission)


@pytest.mark.parametrize("preemption", ["recompute", "swap"])
def test_aging_matches_reference(preemption):
    arrival, prompt, output, prediction = _instance(7)
    limits = _config(7)
    result = _run_engine(Aging(jaxq.SPRPT(), 40.0), arrival, prompt, output, prediction,
                         preemption=preemption, admission="optimistic", **limits)
    ref = run_reference(arrival, prompt, output, prediction, ReferenceConfig(
        policy="sprpt", aging=40.0, preemption=preemption, **limits))
    _compare(result, ref, arrival)


def test_refinement_matches_reference():
    arrival, prompt, output, prediction = _instance(3)
    limits = _config(3)
    predictor = jaxq.LognormalNoise(0.8)
    result = _run_engine(jaxq.SPRPT(), arrival, prompt, output, prediction,
                         preemption="recompute", admission="optimistic", predictor=predictor,
                         refine_every=3, **limits)
    # The engine's draw for (request, m): the replica's refinement stream, folded with both.
    stream = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(
        jax.random.key(0), 0), 0), 2)

    def multiplier(index, m):
        key = jax.random.fold_in(jax.random.fold_in(stream, index), m)
        return float(predictor.multiplier(key, ()))

    ref = run_reference(arrival, prompt, output, prediction, ReferenceConfig(
        policy="sprpt", refine_every=3, refine_multiplier=multiplier, **limits))
    _compare(result, ref, arrival)
    # Refinement changed the schedule (otherwise this test would not test it).
    plain = run_reference(arrival, prompt, output, prediction,
                          ReferenceConfig(policy="sprpt", **limits))
    assert plain.finish_time != ref.finish_time


def _single_server(**overrides):
    """One sequence at a time, constant iteration time, memory and budget never binding."""
    return {**dict(kv_capacity=10**6, block_size=1, max_seqs=1, max_batched_tokens=10**6,
                   iter_base=0.25, iter_per_prefill_token=0.0, iter_per_decode_seq=0.0,
                   iter_per_kv_token=0.0, swap_per_token=0.0), **overrides}


def test_arrival_during_the_iteration_that_empties_the_engine():
    """The second request arrives while the first one's only iteration runs: it starts at the
    next boundary, not back at its arrival."""
    result = _run_engine(jaxq.FCFS(), [0.0, 0.5], [1, 1], [1, 1], [1.0, 1.0],
                         preemption="recompute", admission="optimistic",
                         **_single_server(iter_base=1.0))
    np.testing.assert_allclose(result.latency[0], [1.0, 1.5])


def test_fcfs_single_server_is_lindley():
    rng = np.random.default_rng(5)
    n = 200
    arrival = np.cumsum(rng.exponential(6.0, n))
    prompt = rng.integers(1, 500, n)
    output = rng.integers(1, 40, n)
    result = _run_engine(jaxq.FCFS(), arrival, prompt, output, output * 1.0,
                         preemption="recompute", admission="optimistic", **_single_server())
    finish = arrival + result.latency[0]
    # Lindley: a request starts when it arrives or when the one before leaves, whichever is
    # later, and takes O iterations (the prefill produces the first token).
    expected = np.empty(n)
    previous = -np.inf
    for i in range(n):
        previous = max(arrival[i], previous) + output[i] * 0.25
        expected[i] = previous
    np.testing.assert_allclose(finish, expected, rtol=1e-12)
    assert np.any(finish - arrival > output * 0.25 + 1e-9)  # some requests did queue


def test_spjf_single_server_equals_queue_engine():
    """Sizes in iterations: the LLM engine with one sequence at a time is the M/G/1 queue."""
    rng = np.random.default_rng(6)
    n = 150
    arrival = np.cumsum(rng.exponential(5.0, n))
    output = rng.integers(1, 30, n)
    prediction = output * np.exp(rng.normal(0, 1.0, n))
    result = _run_engine(jaxq.SPJF(), arrival, np.ones(n, int), output, prediction,
                         preemption="recompute", admission="optimistic", **_single_server(
                             iter_base=1.0))
    departures = jaxq.trace(jaxq.SPJF(), arrival, output.astype(float), prediction)
    np.testing.assert_allclose(arrival + result.latency[0], departures, rtol=1e-12)
    assert not np.allclose(departures, jaxq.trace(jaxq.FCFS(), arrival, output * 1.0))


def test_invariants_under_memory_pressure():
    with jax.enable_x64(False):  # the default precision, as users run it
        # A context limit, so that every request fits the small KV cache.
        workload = jaxq.llm.WORKLOADS["azure-conversation"](rate=6.0, max_tokens=6000)
        system = LLMSystem(jaxq.SPRPT(), jaxq.LognormalNoise(jnp.array([0.5, 1.0])),
                           kv_capacity=12_000, preemption="swap", host_capacity=6_000,
                           iter_base=0.01, iter_per_prefill_token=2e-5,
                           iter_per_decode_seq=1e-4, iter_per_kv_token=1e-7)
        result = simulate(system, workload, requests=300, replicas=2, slots=300)
    assert np.all(result.peak_kv_tokens <= 12_000)
    assert np.all(result.preemptions > 0) and np.all(result.swapped_tokens > 0)
    assert np.all(result.unfinished == 0) and np.all(result.overflow == 0)
    assert np.all(np.isfinite(result.latency)) and np.all(result.latency >= result.ttft)
    assert np.all(result.ttft > 0)
    assert np.sum(result.request_preemptions) == np.sum(result.preemptions)


def test_determinism_and_batch_independence():
    arrival, prompt, output, prediction = _instance(11, n=40)
    limits = _config(11)
    one = _run_engine(jaxq.SPRPT(), arrival, prompt, output, prediction, preemption="swap",
                      admission="optimistic", **limits)
    again = _run_engine(jaxq.SPRPT(), arrival, prompt, output, prediction, preemption="swap",
                        admission="optimistic", **limits)
    np.testing.assert_array_equal(one.latency, again.latency)
    limits["kv_capacity"] = jnp.array([limits["kv_capacity"], 10**5])
    both = _run_engine(jaxq.SPRPT(), arrival, prompt, output, prediction, preemption="swap",
                       admission="optimistic", **limits)
    np.testing.assert_array_equal(both.latency[0], one.latency)
    assert math.isclose(float(both.latency_mean[0]), float(one.latency_mean))



def test_results_do_not_depend_on_lanes():
    # 3 configurations x 2 replicas = 6 runs, stepped 6, 2 (by 1 or 3 threads) or 1 at a time;
    # with 3 loop steps per call the runs that finish hand their lanes on many times.
    workload = jaxq.llm.WORKLOADS["azure-conversation"](rate=6.0, max_tokens=3000)
    system = LLMSystem(jaxq.SPRPT(), jaxq.LognormalNoise(1.0),
                       kv_capacity=jnp.array([4_000, 8_000, 12_000]), iter_base=0.01,
                       iter_per_prefill_token=2e-5, iter_per_decode_seq=1e-4,
                       iter_per_kv_token=1e-7, prefix_cache=True)
    results = [simulate(system, workload, requests=60, replicas=2, slots=60, lanes=lanes,
                        workers=workers, steps_per_call=3)
               for lanes, workers in ((6, 1), (2, 1), (2, 3), (1, 2))]
    for other in results[1:]:
        for name in ("ttft", "latency", "request_preemptions", "iterations", "boundaries",
                     "preemptions", "prefix_hit_tokens"):
            np.testing.assert_array_equal(getattr(other, name), getattr(results[0], name))
    assert np.all(results[0].preemptions[:1] > 0)
    for option in ("lanes", "workers", "steps_per_call"):
        with pytest.raises(ValueError, match=f"^{option} must be an integer >= 1"):
            simulate(system, workload, requests=60, **{option: 0})


def test_iteration_limit_stops_each_run_exactly_there():
    # A run at its iteration limit stops wherever it is in a window, and a stopped run's lane is
    # stepped as a no-op, so the results do not depend on lanes or on steps per call.
    workload = jaxq.llm.WORKLOADS["azure-conversation"](rate=6.0, max_tokens=3000)
    system = LLMSystem(jaxq.SPRPT(), jaxq.LognormalNoise(1.0), kv_capacity=8_000,
                       iter_base=0.01, iter_per_prefill_token=2e-5, iter_per_decode_seq=1e-4,
                       iter_per_kv_token=1e-7, seed=jnp.arange(4))
    limit = 2_000
    results = [simulate(system, workload, requests=40, slots=40, lanes=lanes, workers=1,
                        steps_per_call=steps, max_iterations=limit, on_overflow="ignore")
               for lanes, steps in ((4, 256), (1, 5), (3, 1))]
    full = simulate(system, workload, requests=40, slots=40)
    stopped = results[0].unfinished > 0
    assert np.any(stopped) and not np.all(stopped)
    np.testing.assert_array_equal(results[0].iterations[stopped], limit)
    assert np.all(full.iterations[stopped] > limit)
    np.testing.assert_array_equal(results[0].iterations[~stopped], full.iterations[~stopped])
    for other in results[1:]:
        for name in ("ttft", "latency", "iterations", "boundaries", "unfinished"):
            np.testing.assert_array_equal(getattr(other, name), getattr(results[0], name))
    with pytest.raises(CapacityError, match="raise max_iterations"):
        simulate(system, workload, requests=40, slots=40, max_iterations=limit)


def test_queue_engine_refuses_request_features():
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match="needs LLM request features"):
            jaxq.simulate(jaxq.System(0.5, policy=jaxq.policies.SJFPrompt()), jobs=10)
        with pytest.raises(ValueError, match="w_prompt, w_kv and w_peak must be 0"):
            jaxq.simulate(jaxq.System(0.5, policy=jaxq.Linear(w_kv=1.0)), jobs=10)


@pytest.mark.parametrize("refine, prefix_cache, pause_kv", [
    (False, False, None), (True, False, None), (False, True, None), (False, False, "keep"),
    (True, False, "auto")])
def test_decode_runs_equal_iteration_by_iteration(refine, prefix_cache, pause_kv):
    """A closed-form run of m pure-decode iterations gives the state m single iterations give
    (times to rounding), on a workload that is congested at times; with tool calls, beside
    paused requests that keep their KV on the GPU."""
    from jaxq.llm import engine

    rng = np.random.default_rng(5)
    n = 60
    output = rng.integers(1, 120, n)
    calls = {}
    if pause_kv:  # one call at a uniform token of about half the requests, 0.5 s on average
        at = np.where(rng.random(n) < 0.5, rng.integers(1, np.maximum(output, 2)), 0)
        at = np.where(at < output, at, 0)[:, None]
        seconds = rng.exponential(0.5, (n, 1))
        calls = dict(pause_at=jnp.asarray(at, jnp.int32), pause_for=jnp.asarray(seconds),
                     pause_predicted=jnp.asarray(seconds * np.exp(rng.normal(0, 0.5, (n, 1)))))
    requests = engine.Requests(gap=jnp.asarray(rng.exponential(0.25, n)),
                               prompt=jnp.asarray(rng.integers(1, 300, n), jnp.int32),
                               output=jnp.asarray(output, jnp.int32),
                               prediction=jnp.asarray(output * np.exp(rng.normal(0, 0.5, n))),
                               **calls)
    spec = engine.EngineSpec(slots=n, preemption="recompute", admission="optimistic",
                             refine=refine, prefix_cache=prefix_cache,
                             pauses=1 if pause_kv else 0, pause_kv=pause_kv or "keep")
    params = LLMSystem(kv_capacity=800, block_size=16, refine_every=7, iter_base=0.01,
                       iter_per_prefill_token=2e-4, iter_per_decode_seq=1e-3,
                       iter_per_kv_token=3e-6).params()
    policy, predictor, key = jaxq.SPRPT(), jaxq.LognormalNoise(0.6), jax.random.key(3)
    one = jax.jit(lambda st: engine.step(spec, params, policy, predictor, requests, key, st))
    decode_run = jax.jit(lambda st, allowance: engine._decode_run(
        spec, params, predictor, requests, key, st, allowance))

    state, in_runs = engine.init_state(spec, requests), 0
    for boundary in range(4000):
        if bool(engine.done(state, requests)):
            break
        state = one(state)
        allowance = 5 if boundary % 3 == 0 else 10**6
        fast, m, _ = decode_run(state, allowance)
        m = int(m)
        assert m <= allowance
        slow = state
        for _ in range(m):
            slow = one(slow)
        # Everything but the count of boundaries computed in full, which is what runs save.
        assert int(fast.totals.boundaries) == int(state.totals.boundaries)
        uncounted = lambda st: st._replace(  # noqa: E731
            totals=st.totals._replace(boundaries=jnp.zeros((), jnp.int32)))
        for a, b in zip(jax.tree_util.tree_leaves(uncounted(fast)),
                        jax.tree_util.tree_leaves(uncounted(slow))):
            if jnp.issubdtype(a.dtype, jnp.floating):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
            else:
                np.testing.assert_array_equal(a, b)
        state, in_runs = fast, in_runs + m
        if prefix_cache:  # the free queue accounts for every free block, none twice
            sl, queue = state.slots, state.free_queue
            used = int(jnp.sum(jnp.where(sl.resident, -(-sl.kv // 16), 0)))
            tail = 800 // 16 - used - int(jnp.sum(queue.gap)) - int(jnp.sum(queue.blocks))
            assert tail >= 0 and int(jnp.min(queue.gap)) >= 0 and int(jnp.min(queue.blocks)) >= 0
    assert bool(engine.done(state, requests))
    assert int(state.totals.preemptions) > 0  # the KV limit binds at times
    assert (int(state.totals.prefix_hit_tokens) > 0) == prefix_cache
    assert in_runs >= 100  # the comparison covered many run iterations
    if pause_kv:  # runs went on beside paused requests holding GPU KV
        assert int(state.totals.pauses) > 10
        assert float(state.totals.paused_kv_token_seconds) > 0
