"""Requests that pause for tool calls: the engine equals the plain-Python reference
(tests/llm_reference.py, choices 27 to 34) request by request, alone and in clusters, for every
way of handling the KV of a pausing request; bad input is refused."""

import jax
import numpy as np
import pytest

import jaxq
from jaxq.llm import Cluster, LLMSystem, Router, Trace, simulate
from llm_reference import ReferenceConfig, run_cluster_reference, run_reference
from test_llm_engine import POLICY_CASES, REFERENCE_NAME, _config, _instance


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def _with_calls(seed, n=24, simultaneous=False):
    """A random trace with 0 to 2 calls per request: (trace, the reference's pauses)."""
    arrival, prompt, output, prediction = _instance(seed, n)
    rng = np.random.default_rng(500 + seed)
    if simultaneous:  # some requests arrive together
        for i in np.flatnonzero(rng.random(n) < 0.3)[1:]:
            arrival[i] = arrival[i - 1]
    prediction = np.maximum(np.round(prediction * 8) / 8, 0.125)
    at = np.zeros((n, 2), np.int64)
    seconds = np.zeros((n, 2))
    predicted = np.ones((n, 2))
    pauses = []
    for i in range(n):
        count = min(int(rng.integers(0, 3)), int(output[i]) - 1)
        spots = np.sort(rng.choice(np.arange(1, output[i]), count, replace=False)) if count else []
        own = []
        for j, spot in enumerate(spots):
            at[i, j] = spot
            seconds[i, j] = float(rng.choice([0.0, 0.02, 0.05, 0.3]))
            predicted[i, j] = seconds[i, j] * float(np.exp(rng.normal(0, 1))) + 0.01
            own.append((int(spot), float(seconds[i, j]), float(predicted[i, j])))
        pauses.append(own)
    trace = Trace(arrival_time=np.asarray(arrival, np.float64), prompt_tokens=prompt,
                  output_tokens=output, predicted_output_tokens=prediction, source="test",
                  pause_at=at, pause_seconds=seconds, pause_predicted=predicted)
    return trace, pauses


def _compare(result, ref, trace, row=0):
    arrival = trace.arrival_time
    np.testing.assert_allclose(arrival + result.ttft[row], ref.first_token_time, rtol=1e-11,
                               atol=1e-9)
    np.testing.assert_allclose(arrival + result.latency[row], ref.finish_time, rtol=1e-11,
                               atol=1e-9)
    np.testing.assert_array_equal(result.request_preemptions[row], ref.preemptions)
    assert int(result.iterations) == ref.iterations
    assert int(result.preemptions) == ref.total_preemptions
    assert int(result.swapped_tokens) == ref.swapped_tokens
    assert int(result.peak_kv_tokens) == ref.peak_kv_tokens
    assert int(result.pauses) == ref.pauses
    assert int(result.discarded_tokens) == ref.discarded_tokens
    np.testing.assert_allclose(result.paused_kv_token_seconds, ref.paused_kv_token_seconds,
                               rtol=1e-11, atol=1e-9)


def _reference_config(policy_name, preemption, pause_kv, keep_seconds, limits):
    _, options = POLICY_CASES[policy_name]
    return ReferenceConfig(policy=REFERENCE_NAME.get(policy_name, policy_name),
                           preemption=preemption, pause_kv=pause_kv, keep_seconds=keep_seconds,
                           **options, **limits)


def _system(policy_name, preemption, pause_kv, keep_seconds, limits):
    make, _ = POLICY_CASES[policy_name]
    return LLMSystem(make(), preemption=preemption, pause_kv=pause_kv,
                     keep_seconds=keep_seconds, **limits)


QUICK = {("keep", "recompute"), ("discard", "swap"), ("swap", "swap"), ("auto", "recompute")}
CASES = [pytest.param(mode, preemption, id=f"{mode}-{preemption}",
                      marks=() if (mode, preemption) in QUICK else pytest.mark.slow)
         for mode in ("keep", "discard", "swap", "auto") for preemption in ("recompute", "swap")]


@pytest.mark.parametrize("pause_kv, preemption", CASES)
def test_matches_reference(pause_kv, preemption):
    totals = dict(pauses=0, discarded=0, preempted=0, held=0.0)
    for seed in range(3):
        trace, pauses = _with_calls(seed)
        limits = _config(seed)
        keep_seconds = 0.05  # auto: keeps some calls and drops others on these traces
        result = simulate(_system("sprpt", preemption, pause_kv, keep_seconds, limits), trace)
        ref = run_reference(trace.arrival_time, trace.prompt_tokens, trace.output_tokens,
                            trace.predicted_output_tokens,
                            _reference_config("sprpt", preemption, pause_kv, keep_seconds,
                                              limits), pauses)
        _compare(result, ref, trace)
        totals["pauses"] += ref.pauses
        totals["discarded"] += ref.discarded_tokens
        totals["preempted"] += ref.total_preemptions
        totals["held"] += ref.paused_kv_token_seconds
    assert totals["pauses"] > 20 and totals["preempted"] > 0
    assert (totals["discarded"] > 0) == (pause_kv != "keep")
    assert (totals["held"] > 0) == (pause_kv in ("keep", "auto"))


@pytest.mark.slow
@pytest.mark.parametrize("policy_name", ["fcfs", "pspjf", "linear"])
def test_policies_match_reference(policy_name):
    for seed in range(2):
        trace, pauses = _with_calls(seed + 10)
        limits = _config(seed + 10)
        result = simulate(_system(policy_name, "swap", "auto", 0.05, limits), trace)
        ref = run_reference(trace.arrival_time, trace.prompt_tokens, trace.output_tokens,
                            trace.predicted_output_tokens,
                            _reference_config(policy_name, "swap", "auto", 0.05, limits), pauses)
        _compare(result, ref, trace)


@pytest.mark.parametrize("router", [Router("least-kv"), Router("least-outstanding", d=2)],
                         ids=["least-kv", "least-outstanding-d2"])
def test_cluster_matches_reference(router):
    # Two instances, some requests arriving together: the router reads instances whose
    # requests are away on calls, and instances idle until a return.
    from jaxq.llm.simulate_cluster import router_picks
    from jaxq.simulate import _as_key, _replica_keys

    for seed in range(2):
        trace, pauses = _with_calls(seed + 20, n=30, simultaneous=True)
        limits = [_config(seed + 20), _config(seed + 21)]
        systems = [_system("sprpt", "recompute", "auto", 0.05, c) for c in limits]
        result = simulate(Cluster(systems, router), trace)
        picks = None
        if router.sampled:
            keys = _replica_keys(_as_key(0), np.asarray([0]), 1).reshape(-1)
            picks = np.asarray(router_picks(keys, 30, router, 2))[0].tolist()
        ref = run_cluster_reference(
            trace.arrival_time, trace.prompt_tokens, trace.output_tokens,
            trace.predicted_output_tokens,
            [_reference_config("sprpt", "recompute", "auto", 0.05, c) for c in limits],
            router.rule, picks, pauses=pauses)
        np.testing.assert_array_equal(result.instance[0], ref.instance)
        _compare(result, ref, trace)


def test_bad_calls_are_refused():
    trace, _ = _with_calls(0)
    bad = Trace(**{**trace.__dict__, "pause_at": np.where(trace.pause_at > 0,
                                                          trace.output_tokens[:, None], 0)})
    with pytest.raises(ValueError, match="pause_at must hold increasing token positions"):
        simulate(LLMSystem(jaxq.FCFS(), **_config(0)), bad)
    with pytest.raises(ValueError, match="prefix cache is not modelled together with tool"):
        simulate(LLMSystem(jaxq.FCFS(), prefix_cache=True, **_config(0)), trace)
    with pytest.raises(ValueError, match="unknown pause_kv 'drop'"):
        LLMSystem(jaxq.FCFS(), pause_kv="drop")
    system = LLMSystem(jaxq.FCFS(), **_config(0))
    with pytest.raises(ValueError, match="tool calls are not modelled with disaggregation"):
        simulate(jaxq.llm.Disaggregated(system, system), trace)
