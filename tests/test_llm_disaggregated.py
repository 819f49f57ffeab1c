"""Prefill/decode disaggregation (jaxq.llm.Disaggregated): with free transfers and a pool
instance per request it is the colocated cluster; with shared pools and a costly link it equals
the plain-Python reference (tests/llm_reference.py) request by request; bad input is refused."""

import jax
import numpy as np
import pytest

import jaxq
from jaxq.llm import Cluster, Disaggregated, LLMSystem, Router, Trace, simulate
from test_llm_engine import _config, _instance


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


def _trace(arrival, prompt, output, prediction):
    return Trace(arrival_time=np.asarray(arrival, np.float64), prompt_tokens=np.asarray(prompt),
                 output_tokens=np.asarray(output),
                 predicted_output_tokens=np.asarray(prediction, np.float64), source="test")


@pytest.mark.parametrize("policy", [jaxq.FCFS(), jaxq.SPRPT()], ids=["fcfs", "sprpt"])
def test_free_transfers_and_an_instance_per_request_are_colocated(policy):
    # Each request alone on its prefill instance, then alone on its decode instance, with no
    # time between: the iterations it would have run alone on one colocated instance.
    for seed in range(2):
        trace = _trace(*_instance(seed))
        n = len(trace.arrival_time)
        system = LLMSystem(policy, **_config(seed))
        colocated = simulate(Cluster(system, instances=n), trace)
        pd = simulate(Disaggregated(system, system, prefill_instances=n, decode_instances=n),
                      trace)
        np.testing.assert_allclose(pd.ttft, colocated.ttft, rtol=1e-12)
        np.testing.assert_allclose(pd.latency, colocated.latency, rtol=1e-12)
        assert int(pd.iterations) == int(colocated.iterations)
        assert int(pd.swapped_tokens) == 0  # placing transferred KV is not a swap


def test_a_slow_link_delays_every_decode():
    trace = _trace(*_instance(3))
    system = LLMSystem(jaxq.FCFS(), **_config(3))
    kv_bytes = float(system.kv_bytes_per_token)
    n = len(trace.arrival_time)
    free = simulate(Disaggregated(system, system, prefill_instances=n, decode_instances=n), trace)
    slow = simulate(Disaggregated(system, system, prefill_instances=n, decode_instances=n,
                                  kv_link_bandwidth=kv_bytes / 1e9 / 0.01), trace)  # 10 ms/token
    np.testing.assert_allclose(slow.ttft, free.ttft, rtol=1e-12)
    transfer = 0.01 * trace.prompt_tokens
    expected = np.where(trace.output_tokens >= 2, free.latency[0] + transfer, free.latency[0])
    np.testing.assert_allclose(slow.latency[0], expected, rtol=1e-12)


def test_bad_input_is_refused():
    system = LLMSystem(jaxq.FCFS())
    with pytest.raises(ValueError, match="kv_link_bandwidth must be > 0"):
        Disaggregated(system, system, kv_link_bandwidth=0.0)
    with pytest.raises(ValueError, match="refine=True is not supported"):
        refining = LLMSystem(jaxq.FCFS(), refine=True)
        Disaggregated(refining, refining)
    with pytest.raises(ValueError, match="decode instance 0's kv_bytes_per_token differs"):
        Disaggregated(system, LLMSystem(jaxq.FCFS(), kv_bytes_per_token=1.0))
    with pytest.raises(ValueError, match="decode instance 0's policy differs"):
        Disaggregated(system, LLMSystem(jaxq.SPRPT()))
    with pytest.raises(ValueError, match="prefill_instances must be an integer >= 1"):
        Disaggregated(system, system, prefill_instances=0)
    with pytest.raises(ValueError, match="unknown router 'fastest'"):
        Disaggregated(system, system, decode_router="fastest")


def _instances(seed, count, salt):
    rng = np.random.default_rng(salt + seed)
    out = []
    for i in range(count):
        c = _config(seed + 10 * i + salt)
        c["iter_base"] = float(rng.choice([0.008, 0.01, 0.015]))
        out.append(c)
    return out


def _compare_with_reference(policy_name, router, decode_router, preemption, seed, prefill,
                            decode, seconds_per_token):
    from jaxq.llm.simulate_cluster import router_picks
    from jaxq.simulate import _as_key, _replica_keys
    from llm_reference import ReferenceConfig, run_disaggregated_reference
    from test_llm_engine import POLICY_CASES, REFERENCE_NAME

    make, options = POLICY_CASES[policy_name]
    arrival, prompt, output, prediction = _instance(seed, n=30)
    arrival = arrival / 2
    prediction = np.maximum(np.round(prediction * 8) / 8, 0.125)  # exact sums of work
    limits_p, limits_d = _instances(seed, prefill, 300), _instances(seed, decode, 700)
    kv_bytes = 2.0**17
    systems = lambda limits: [LLMSystem(make(), preemption=preemption, seed=seed,  # noqa: E731
                                        kv_bytes_per_token=kv_bytes, **c) for c in limits]
    result = simulate(Disaggregated(systems(limits_p), systems(limits_d), router=router,
                                    decode_router=decode_router,
                                    kv_link_bandwidth=(kv_bytes / seconds_per_token / 1e9
                                                       if seconds_per_token else np.inf)),
                      _trace(arrival, prompt, output, prediction), key=0)
    keys = _replica_keys(_as_key(0), np.asarray([seed]), 1).reshape(-1)
    n = len(arrival)
    picks_p = picks_d = None
    if router.sampled:
        picks_p = np.asarray(router_picks(keys, n, router, prefill))[0].tolist()
    if decode_router.sampled:
        decode_keys = jax.vmap(lambda k: jax.random.fold_in(k, 4))(keys)
        picks_d = np.asarray(router_picks(decode_keys, n, decode_router, decode))[0].tolist()
    config = lambda c: ReferenceConfig(  # noqa: E731
        policy=REFERENCE_NAME.get(policy_name, policy_name), preemption=preemption, **options,
        **c)
    ref = run_disaggregated_reference(
        arrival, prompt, output, prediction, [config(c) for c in limits_p],
        [config(c) for c in limits_d], router.rule, decode_router.rule, seconds_per_token,
        picks_p, picks_d)
    np.testing.assert_allclose(arrival + result.ttft[0], ref.first_token_time, rtol=1e-11,
                               atol=1e-9)
    np.testing.assert_allclose(arrival + result.latency[0], ref.finish_time, rtol=1e-11,
                               atol=1e-9)
    np.testing.assert_array_equal(result.request_preemptions[0], ref.preemptions)
    served = [prefill + d if d is not None else p
              for p, d in zip(ref.prefill_instance, ref.decode_instance)]
    np.testing.assert_array_equal(result.instance[0], served)
    assert int(result.iterations) == ref.iterations
    assert int(result.preemptions) == ref.total_preemptions
    assert int(result.recomputed_tokens) == ref.recomputed_tokens
    assert int(result.swapped_tokens) == ref.swapped_tokens
    assert int(result.peak_kv_tokens) == ref.peak_kv_tokens
    return ref


QUICK = {("round-robin", "least-outstanding", "recompute"), ("random", "least-kv", "swap")}
CASES = [pytest.param(router, decode_router, d, preemption,
                      id=f"{router}-{decode_router}{'-d' + str(d) if d else ''}-{preemption}",
                      marks=() if (router, decode_router, preemption) in QUICK
                      else pytest.mark.slow)
         for router, decode_router, d in [("round-robin", "least-outstanding", None),
                                          ("least-kv", "least-predicted-work", None),
                                          ("random", "least-kv", 2),
                                          ("least-outstanding", "random", None),
                                          ("least-predicted-work", "round-robin", 2)]
         for preemption in ("recompute", "swap")]


@pytest.mark.parametrize("router, decode_router, d, preemption", CASES)
def test_matches_disaggregated_reference(router, decode_router, d, preemption):
    prefill_router = Router(router, d if router.startswith("least") else None)
    decode = Router(decode_router, d if decode_router.startswith("least") else None)
    preempted = 0
    for seed in range(2):  # seed 0: free transfers, seed 1: 0.5 ms per token
        ref = _compare_with_reference("sprpt", prefill_router, decode, preemption, seed,
                                      prefill=2, decode=2, seconds_per_token=0.0005 * seed)
        preempted += ref.total_preemptions
    assert preempted > 0  # the instances are under memory pressure


@pytest.mark.slow
@pytest.mark.parametrize("policy_name", ["fcfs", "pspjf", "linear"])
def test_policies_match_disaggregated_reference(policy_name):
    for seed in range(2):
        _compare_with_reference(policy_name, Router("least-outstanding"), Router("least-kv"),
                                "recompute", seed, prefill=1, decode=3, seconds_per_token=1e-3)
