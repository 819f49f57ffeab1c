"""The relaxed LLM engine (jaxq.llm.relaxed) and `tune_llm(method="gradient")`:

* every request is accounted for and the KV held never exceeds the capacity;
* its pathwise gradient equals central finite differences of the same engine with the same
  requests (float64), in forward and in checkpointed reverse mode;
* as tau -> 0 it is the hard fluid model: tests/llm_fluid_reference.py, a plain-Python event
  loop of the README's rules, on small traces;
* the tuner refuses what the relaxed engine does not model, before running.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxq
from jaxq import cli, tune
from jaxq.llm import LLMSystem, WORKLOADS, costs
from jaxq.llm.relaxed import RelaxedLLMSpec, run_one
from jaxq.llm.simulate import _requests

try:
    from llm_fluid_reference import fluid_run
except ImportError:  # run from the repository root
    from tests.llm_fluid_reference import fluid_run

WORKLOAD = WORKLOADS["azure-conversation"](rate=2.0, max_tokens=8192)


def _system(policy, kv=42_127, **kw):
    return LLMSystem(policy, jaxq.LognormalNoise(0.5), preemption="recompute",
                     **{**costs("rtx-4090", "llama-3.1-8b"), "kv_capacity": kv, **kw})


def _sample(system, n, runs, seed=0):
    keys = jax.random.split(jax.random.key(seed), runs)
    per = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (runs,) + jnp.shape(x)), system)
    return _requests(per, WORKLOAD, keys, n, False)


@pytest.mark.parametrize("kv", [42_127, 12_000])
def test_every_request_is_accounted_for_and_memory_stays_within_capacity(kv):
    system = _system(jaxq.SPRPT(), kv=kv)
    n = 150
    reqs = _sample(system, n, 4)
    spec = RelaxedLLMSpec(slots=128, requests=n, warmup=0, steps=6 * n)
    runs = jax.vmap(lambda r: run_one(spec, system.params(), system.policy, 10.0, r))(reqs)
    finished = np.sum(~np.isnan(np.asarray(runs.latency)), axis=1)
    np.testing.assert_array_equal(finished + np.asarray(runs.overflow)
                                  + np.asarray(runs.unfinished), n)
    assert np.all(np.asarray(runs.unfinished) == 0)
    # float32 sums of KV: within rounding of the capacity, never beyond it
    assert np.all(np.asarray(runs.peak_kv) <= kv * (1 + 1e-6)), runs.peak_kv
    ttft, latency = np.asarray(runs.ttft), np.asarray(runs.latency)
    assert np.all(ttft <= latency) and np.all(ttft > 0)
    if kv == 12_000:
        assert np.all(np.asarray(runs.preemptions) > 0)  # the tight cache preempts


def _mean_ttft(kv, n=60):
    """theta = (w_age, w_prompt) -> mean TTFT of Linear(0, 1, 0, w_age, w_prompt) over 2 runs of
    n requests at tau = 10 tokens (float64 when enabled), and the same with checkpointing."""
    system = _system(jaxq.SPRPT(), kv=kv)
    reqs = _sample(system, n, 2, seed=1)
    p = system.params()

    def f(theta, checkpoint=False):
        spec = RelaxedLLMSpec(slots=64, requests=n, warmup=0, steps=6 * n,
                              checkpoint=checkpoint)
        policy = jaxq.Linear(0.0, 1.0, 0.0, theta[0], w_prompt=theta[1])
        return jnp.mean(jax.vmap(
            lambda r: jnp.nanmean(run_one(spec, p, policy, 10.0, r).ttft))(reqs))
    return f


def test_gradient_equals_finite_differences_of_the_relaxed_engine():
    """With ample KV (no preemption): forward mode, checkpointed reverse mode and central
    differences agree."""
    with jax.enable_x64(True):
        f = _mean_ttft(42_127)
        theta = jnp.asarray([-5.0, 0.3])
        forward = np.asarray(jax.jacfwd(f)(theta))
        reverse = np.asarray(jax.grad(lambda t: f(t, True))(theta))
        h = 1e-6
        fd = np.array([(f(theta.at[i].add(h)) - f(theta.at[i].add(-h))) / (2 * h)
                       for i in range(2)])
    np.testing.assert_allclose(reverse, forward, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(forward, fd, rtol=1e-4, atol=1e-9)
    # A real dependence on w_prompt (w_age moves every rank in system alike: it matters only
    # against new arrivals, and hardly at all with ample KV).
    assert abs(fd[1]) > 1e-6, fd


@pytest.mark.slow
def test_a_preemption_is_a_hard_event_the_gradient_does_not_see():
    """With a tight cache, which request the cache's filling up preempts is a hard choice, so
    the mean TTFT jumps as w_prompt moves: on a grid of step 2.5e-4, some step changes it by more
    than 100 times what the pathwise derivative there predicts. This is the bias the README
    measures against evolution strategies on the exact engine. (Both gradient modes still agree
    with each other.)"""
    with jax.enable_x64(True):
        f = _mean_ttft(12_000)
        grid = jnp.linspace(0.29, 0.31, 81)
        thetas = jnp.stack([jnp.full_like(grid, -5.0), grid], axis=1)
        values = np.asarray(jax.vmap(f)(thetas))
        slopes = np.asarray(jax.vmap(jax.grad(f))(thetas))[:, 1]
        reverse = np.asarray(jax.grad(lambda t: f(t, True))(thetas[100]))
        forward = np.asarray(jax.jacfwd(f)(thetas[100]))
    np.testing.assert_allclose(reverse, forward, rtol=1e-8, atol=1e-12)
    predicted = np.abs(slopes[:-1]) * float(grid[1] - grid[0])
    assert np.max(np.abs(np.diff(values)) / np.maximum(predicted, 1e-12)) > 100


@pytest.mark.parametrize("kv, policy", [(42_127, "fcfs"), (12_000, "fcfs"), (12_000, "sprpt"),
                                        (12_000, "linear")])
def test_tends_to_the_hard_fluid_model_as_tau_falls(kv, policy):
    policy = {"fcfs": jaxq.FCFS(), "sprpt": jaxq.SPRPT(),
              "linear": jaxq.Linear(0.0, 1.0, 0.0, -2.0, w_prompt=0.3)}[policy]
    n = 40
    with jax.enable_x64(True):
        system = _system(policy, kv=kv)
        reqs = _sample(system, n, 3, seed=2)
        p = system.params()
        spec = RelaxedLLMSpec(slots=n, requests=n, warmup=0, steps=8 * n)
        preempted = 0
        for i in range(3):
            one = jax.tree_util.tree_map(lambda x: x[i], reqs)
            got = run_one(spec, p, policy, 1e-7, one)
            want = fluid_run(p, policy, one)
            assert not np.any(np.isnan(want["latency"]))  # everyone finishes
            np.testing.assert_allclose(np.asarray(got.latency), want["latency"], rtol=1e-9)
            np.testing.assert_allclose(np.asarray(got.ttft), want["ttft"], rtol=1e-9)
            assert int(got.preemptions) == want["preemptions"]
            preempted += want["preemptions"]
        assert (preempted > 0) == (kv == 12_000)  # the tight cache preempts, the ample one not


@pytest.mark.parametrize("kwargs, words", [
    (dict(preemption="swap"), ["recompute"]),
    (dict(admission="reserve-predicted"), ["optimistic"]),
])
def test_the_tuner_refuses_what_the_relaxed_engine_does_not_model(kwargs, words):
    system = LLMSystem(jaxq.Linear(), jaxq.LognormalNoise(0.5),
                       **{**costs("rtx-4090", "llama-3.1-8b"), **kwargs})
    with pytest.raises(ValueError) as err:
        tune.tune_llm(system, WORKLOAD, ["w_prompt"], method="gradient", steps=1)
    for w in words:
        assert w in str(err.value)
    with pytest.raises(ValueError, match="goodput"):
        tune.tune_llm(_system(jaxq.Linear()), WORKLOAD, ["w_prompt"], method="gradient",
                      objective="goodput", steps=1)
    with pytest.raises(ValueError, match="'es' or 'gradient'"):
        tune.tune_llm(_system(jaxq.Linear()), WORKLOAD, ["w_prompt"], method="spa", steps=1)


@pytest.mark.slow
def test_llm_problems_are_tuned_by_gradient_side_by_side():
    system = LLMSystem(jaxq.Linear(0.0, 1.0, 0.0, 0.0, w_prompt=0.0),
                       jaxq.LognormalNoise(jnp.asarray([0.25, 1.0])), preemption="recompute",
                       **costs("rtx-4090", "llama-3.1-8b"))
    with pytest.warns(RuntimeWarning, match="not reliable"):
        r = tune.tune_llm(system, WORKLOAD, ["w_prompt"], method="gradient", tau=(10.0, 10.0),
                          objective="ttft_mean", steps=2, requests=100, replicas=2,
                          eval_requests=100, eval_replicas=2)
    assert r.values["w_prompt"].shape == (2,) and r.trace_objective.shape == (2, 2)
    assert r.method == "gradient" and r.problems == 0
    assert np.all(np.isfinite(r.trace_objective)) and np.all(r.trace_tau == 10.0)


@pytest.mark.filterwarnings("ignore:the relaxed LLM engine's gradient:RuntimeWarning")
def test_cli_gradient_json(capsys):
    code = cli.main(["tune", "llm", "--workload", "azure-conversation", "--rate", "3",
                     "--max-model-len", "6000", "--kv-capacity", "12000", "--policy", "linear",
                     "--predictor", "lognormal", "--tune", "w_prompt", "--method", "gradient",
                     "--tau", "30:10", "--mode", "reverse", "--objective", "ttft_p99",
                     "--steps", "2", "--tune-requests", "60", "--tune-replicas", "2",
                     "--tune-slots", "64", "--requests", "60", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["method"] == "gradient"
    assert len(out["trace"]["w_prompt"]) == 2 and out["objective_value"] == out["ttft_p99"]
    assert cli.main(["tune", "llm", "--workload", "azure-conversation", "--policy", "linear",
                     "--preemption", "swap", "--tune", "w_prompt", "--method", "gradient"]) == 2
    assert "preemption='recompute'" in capsys.readouterr().err
