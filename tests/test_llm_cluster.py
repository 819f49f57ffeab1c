"""LLM clusters (jaxq.llm.Cluster): a one-instance cluster is the single engine, and clusters of
heterogeneous instances equal the plain-Python cluster reference (tests/llm_reference.py)
request by request, for every router."""

import jax
import numpy as np
import pytest

import jaxq
from jaxq.llm import Cluster, LLMSystem, Router, Trace, simulate
from jaxq.llm.simulate_cluster import router_picks
from jaxq.simulate import _as_key, _replica_keys
from llm_reference import ReferenceConfig, run_cluster_reference
from test_llm_engine import POLICY_CASES, REFERENCE_NAME, _config, _instance


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def _trace(arrival, prompt, output, prediction):
    return Trace(arrival_time=np.asarray(arrival, np.float64), prompt_tokens=np.asarray(prompt),
                 output_tokens=np.asarray(output),
                 predicted_output_tokens=np.asarray(prediction, np.float64), source="test")


ROUTER_CASES = [Router("round-robin"), Router("random"), Router("least-outstanding"),
                Router("least-kv"), Router("least-predicted-work"),
                Router("least-outstanding", d=2), Router("least-kv", d=3),
                Router("least-predicted-work", d=2)]


def _name(router):
    return router.rule + (f"-d{router.d}" if router.d else "")


def _cases(quick):
    """(preemption, router) pairs, those not in `quick` under -m slow (each compiles anew)."""
    return [pytest.param(preemption, router, id=f"{preemption}-{_name(router)}",
                         marks=() if (preemption, _name(router)) in quick else pytest.mark.slow)
            for preemption in ("recompute", "swap") for router in ROUTER_CASES]


@pytest.mark.parametrize("preemption, router", _cases(
    {("recompute", "round-robin"), ("swap", "least-kv-d3")}))
def test_one_instance_is_the_engine(preemption, router):
    # Bit for bit: the instance steps through the same boundaries with the same arithmetic.
    for seed in range(2):
        trace = _trace(*_instance(seed))
        system = LLMSystem(jaxq.SPRPT(), preemption=preemption, **_config(seed))
        alone = simulate(system, trace)
        cluster = simulate(Cluster(system, router), trace)
        for name in ("ttft", "latency", "request_preemptions"):
            np.testing.assert_array_equal(getattr(cluster, name), getattr(alone, name))
        for name in ("iterations", "boundaries", "preemptions", "recomputed_tokens",
                     "swapped_tokens", "peak_kv_tokens", "mean_batch_size"):
            assert getattr(cluster, name) == getattr(alone, name), name
        # Summed over instances, busy time times capacity: the same ratio, another rounding.
        np.testing.assert_allclose(cluster.mean_kv_use, alone.mean_kv_use, rtol=1e-14)
        assert alone.preemptions > 0
        np.testing.assert_array_equal(cluster.instance, 0)


def _instances(seed, count):
    """`count` instances that differ in memory, limits and costs."""
    rng = np.random.default_rng(77 + seed)
    out = []
    for i in range(count):
        c = _config(seed + 10 * i)
        c["iter_base"] = float(rng.choice([0.008, 0.01, 0.015]))
        c["iter_per_prefill_token"] = float(rng.choice([2e-4, 3e-4]))
        out.append(c)
    return out


def _compare_with_reference(policy_name, router, preemption, seed, count, admission="optimistic"):
    make, options = POLICY_CASES[policy_name]
    arrival, prompt, output, prediction = _instance(seed, n=30)
    arrival = arrival / 2  # twice the load of the one-engine instances: two engines or three
    # Multiples of 1/8, so sums of predicted work are exact in any order and the router's ties
    # are the reference's.
    prediction = np.maximum(np.round(prediction * 8) / 8, 0.125)
    limits = _instances(seed, count)
    systems = [LLMSystem(make(), preemption=preemption, admission=admission, seed=seed, **c)
               for c in limits]
    result = simulate(Cluster(systems, router), _trace(arrival, prompt, output, prediction),
                      key=0)
    picks = None
    if router.sampled:
        keys = _replica_keys(_as_key(0), np.asarray([seed]), 1).reshape(-1)
        picks = np.asarray(router_picks(keys, len(arrival), router, count))[0].tolist()
    configs = [ReferenceConfig(policy=REFERENCE_NAME.get(policy_name, policy_name),
                               preemption=preemption, admission=admission, **options, **c)
               for c in limits]
    ref = run_cluster_reference(arrival, prompt, output, prediction, configs, router.rule, picks)
    np.testing.assert_array_equal(result.instance[0], ref.instance)
    np.testing.assert_allclose(arrival + result.ttft[0], ref.first_token_time, rtol=1e-11,
                               atol=1e-9)
    np.testing.assert_allclose(arrival + result.latency[0], ref.finish_time, rtol=1e-11,
                               atol=1e-9)
    np.testing.assert_array_equal(result.request_preemptions[0], ref.preemptions)
    assert int(result.iterations) == ref.iterations
    assert int(result.preemptions) == ref.total_preemptions
    assert int(result.recomputed_tokens) == ref.recomputed_tokens
    assert int(result.swapped_tokens) == ref.swapped_tokens
    assert int(result.peak_kv_tokens) == ref.peak_kv_tokens
    return ref


@pytest.mark.parametrize("preemption, router", _cases(
    {("recompute", "least-outstanding"), ("swap", "random"), ("swap", "least-kv-d3"),
     ("recompute", "least-predicted-work")}))
def test_matches_cluster_reference(preemption, router):
    preempted = 0
    used = set()
    for seed in range(3):
        ref = _compare_with_reference("sprpt", router, preemption, seed, count=2 + seed % 2)
        preempted += ref.total_preemptions
        used |= set(ref.instance)
    assert preempted > 0  # the instances are under memory pressure
    assert len(used) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("policy_name", ["fcfs", "pspjf", "sprpt-bounce", "linear"])
def test_policies_match_cluster_reference(policy_name):
    for seed in range(2):
        _compare_with_reference(policy_name, Router("least-predicted-work"), "recompute", seed,
                                count=3)


def test_admission_matches_cluster_reference():
    _compare_with_reference("sprpt", Router("least-kv", d=2), "swap", 4, count=2,
                            admission="reserve-predicted")


def test_results_do_not_depend_on_lanes_or_workers():
    system = LLMSystem(jaxq.SPRPT(), jaxq.LognormalNoise(np.array([0.0, 0.5, 1.0])),
                       **_config(0))
    cluster = Cluster(system, Router("least-predicted-work", d=2), instances=2)
    arrival, prompt, output, _ = _instance(1)
    # No predictions in the trace: the predictor draws them, so the configurations differ.
    trace = Trace(arrival_time=arrival, prompt_tokens=prompt, output_tokens=output,
                  predicted_output_tokens=None, source="test")
    runs = [simulate(cluster, trace, replicas=2, lanes=lanes, workers=workers)
            for lanes, workers in ((4, 1), (1, 2))]  # 4: the last window is padded
    for other in runs[1:]:
        for name in ("latency", "ttft", "request_preemptions", "instance", "iterations"):
            np.testing.assert_array_equal(getattr(other, name), getattr(runs[0], name))
    assert runs[0].preemptions.sum() > 0
    assert not np.array_equal(runs[0].latency[0], runs[0].latency[2])


def test_requests_arriving_together_match_the_reference():
    # Requests that arrive at one instant are routed one after another before any boundary at
    # that instant: an idle instance admits all those sent to it at the same boundary.
    rng = np.random.default_rng(8)
    arrival, prompt, output, prediction = _instance(8, n=30)
    for i in np.flatnonzero(rng.random(30) < 0.4)[1:]:
        arrival[i] = arrival[i - 1]  # arrives with the one before
    prediction = np.maximum(np.round(prediction * 8) / 8, 0.125)
    assert 10 < len(set(arrival)) < 25
    limits = _instances(8, 3)
    systems = [LLMSystem(jaxq.FCFS(), **c) for c in limits]
    # least-kv: a request waiting to enter holds no KV, so the one arriving with it follows it
    result = simulate(Cluster(systems, Router("least-kv")),
                      _trace(arrival, prompt, output, prediction))
    ref = run_cluster_reference(arrival, prompt, output, prediction,
                                [ReferenceConfig(policy="fcfs", **c) for c in limits],
                                "least-kv")
    np.testing.assert_array_equal(result.instance[0], ref.instance)
    np.testing.assert_allclose(arrival + result.latency[0], ref.finish_time, rtol=1e-11,
                               atol=1e-9)
    assert int(result.iterations) == ref.iterations
