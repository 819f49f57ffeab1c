"""jaxq.tune and `jaxq tune queue|llm`: the relaxed gradient points where the gradient-free
estimate on the exact engine points, tuning finds known optima within error, and the LLM engine
is tuned by evolution strategies."""

import json
import math
import types

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxq
from jaxq import cli, theory, tune
from jaxq.llm.simulate import LLMSystem, simulate
from jaxq.policies import MLP, Aging
from jaxq.relaxed import RelaxedSpec
from jaxq.simulate import _replica_keys

LINEAR = ["w_prediction", "w_remaining", "w_attained", "w_age"]


@pytest.mark.slow
def test_relaxed_gradient_agrees_with_evolution_strategies_on_the_exact_engine():
    """A vector parameter (the linear rank's four weights): cosine similarity above 0.8, and the
    same sign wherever the unbiased estimate is clearly nonzero."""
    system = jaxq.System(0.8, jaxq.Exponential(), jaxq.LognormalNoise(0.5),
                         jaxq.Linear(0.5, 0.5, 0.0, 0.1))
    u = jnp.asarray([0.5, 0.5, 0.0, 0.1])
    spec = RelaxedSpec(capacity=64, jobs=1000, warmup=100, steps=2000)
    keys = _replica_keys(jax.random.key(5), jnp.asarray([0]), 32)[0]
    terms = tune.parse_objective("mean_response_time", tune.OBJECTIVES)
    _, relaxed, problems = jax.jit(lambda u, k: tune.relaxed_gradient(
        spec, terms, system, tune.Layout(LINEAR), u, k, 0.1))(u, keys)
    assert int(problems) == 0
    flat = jax.tree_util.tree_map(lambda a: jnp.reshape(a, (1,)), system.broadcast())
    batch = tune._Problems(flat, (1,), LINEAR, (1.0,) * 4)

    def evaluate(points):
        r = jaxq.simulate(points, jobs=4000, replicas=8, on_overflow="ignore")
        return r.mean_response_time, np.sum(r.overflow)
    estimates = np.stack([np.asarray(tune._es_step(
        batch, u[None], jax.random.key(100 + i), evaluate, pairs=64, sigma=0.1)[1][0])
        for i in range(3)])
    es, se = estimates.mean(0), estimates.std(0, ddof=1) / np.sqrt(len(estimates))
    relaxed = np.asarray(relaxed)
    cosine = relaxed @ es / np.linalg.norm(relaxed) / np.linalg.norm(es)
    assert cosine > 0.8, (relaxed, es)
    clear = np.abs(es) > 2 * se
    assert clear.any() and np.all(np.sign(relaxed[clear]) == np.sign(es[clear])), (relaxed, es, se)


# No case for method "gradient": the relaxed dE/dT of a threshold is mostly noise
# (scripts/bench_tune.py), so whether its run lands within 2 stderr is chance (keys 0-3 ended at
# T = 0.34, 0.29, 0.18, 1.10 with one sampling of the sizes and 0.72, 0.93, 0.41, 0.59 with
# another; the optimum is 1.03 and E[T] is flat near it). A test of either outcome would be luck.
@pytest.mark.parametrize("method, load, start_t", [
    ("spa", 0.6, 0.3), pytest.param("es", 0.8, 0.05, marks=pytest.mark.slow)])
def test_onebit_threshold_reaches_the_m_m_1_optimum(method, load, start_t):
    """M/M/1, exponential prediction noise, non-preemptive onebit starting away from the optimum:
    the learned policy's mean response time, measured on the exact engine with fresh seeds, is
    within 2 standard errors of the closed-form optimum (jaxq.theory)."""
    service, predictor = jaxq.Exponential(), jaxq.ExponentialNoise()
    best_t, best = theory.optimal_onebit_threshold(service, predictor, load, False)
    system = jaxq.System(load, service, predictor, jaxq.OneBit(start_t))
    start = theory.mean_response_time(jaxq.OneBit(start_t), service, predictor, load)
    r = tune.tune(system, ["threshold"], method=method, steps=60, learning_rate=0.1,
                  tau=(0.1, 0.005), jobs=400, replicas=16, eval_jobs=50_000, eval_replicas=8)
    measured, stderr = float(r.hard.mean_response_time), float(r.hard.stderr)
    assert start - best > 5 * stderr  # the start is clearly worse: there is something to find
    assert abs(measured - best) < 2 * stderr, (float(r.values["threshold"]), best_t, measured,
                                               best, stderr)
    assert r.problems == 0 and r.trace_values["threshold"].shape == (60,)


@pytest.mark.parametrize("method", ["es", pytest.param("gradient", marks=[pytest.mark.xfail(
    strict=True, reason="known bias: the pathwise gradient of the relaxed engine misses most of "
                        "the effect of c, which acts through the lock (see README); it misses "
                        "the grid's best by 6 to 17 stderr for keys 0-2"),
    pytest.mark.filterwarnings("ignore:the relaxed gradient of c:RuntimeWarning")])])
def test_sprpt_limited_c_matches_a_grid_search_on_the_exact_engine(method):
    """Weibull sizes (shape 0.5), lognormal predictions: the tuned c's exact mean response time is
    within 2 standard errors of the best of an 11-point grid over [0, 1] (same seeds)."""
    system = jaxq.System(0.8, jaxq.Weibull(0.5), jaxq.LognormalNoise(1.0),
                         jaxq.SPRPTLimited(0.1))
    r = tune.tune(system, ["c"], method=method, steps=40, learning_rate=0.2, tau=(0.3, 0.03),
                  jobs=400,
                  replicas=16, eval_jobs=40_000, eval_replicas=8)
    grid = np.linspace(0.0, 1.0, 11)
    exact = jaxq.simulate(jaxq.System(0.8, system.service, system.predictor,
                                      jaxq.SPRPTLimited(grid), seed=1_000_003),
                          jobs=40_000, replicas=8, key=1)
    best = np.argmin(exact.mean_response_time)
    stderr = np.hypot(float(r.hard.stderr), exact.stderr[best])
    assert float(r.hard.mean_response_time) - exact.mean_response_time[best] < 2 * stderr, (
        float(r.values["c"]), grid[best], float(r.hard.mean_response_time),
        exact.mean_response_time)


# Hyperexponential sizes (cv 4), lognormal predictions (sigma 1), load 0.8: sprpt is far from the
# best rank of the form h(y) - a here (4.08 +- 0.08 against pspjf's 2.75 +- 0.06, 8 x 100,000
# jobs), so a learned h has something to find.
MLP_PROBLEM = dict(load=0.8, service=jaxq.Hyperexponential(cv=4.0),
                   predictor=jaxq.LognormalNoise(1.0))


@pytest.mark.slow
def test_mlp_rank_tuned_by_reverse_mode_beats_sprpt_on_the_exact_engine():
    """25 weights, from the MLP that equals sprpt, by the checkpointed reverse-mode gradient of
    the relaxed engine at tau = 1 (where it is trustworthy: README): the learned
    rank's exact mean response time on fresh seeds is clearly below sprpt's and no worse than
    pspjf's, the best hand-written rank of this family (same seeds)."""
    system = jaxq.System(policy=MLP(), **MLP_PROBLEM)
    r = tune.tune(system, ["mlp"], method="gradient", mode="reverse", tau=(1.0, 1.0), steps=40,
                  learning_rate=0.05, jobs=1000, capacity=128, replicas=16, eval_jobs=50_000,
                  eval_replicas=8)
    assert r.values["mlp"].shape == (25,) and r.trace_values["mlp"].shape == (40, 25)
    assert r.problems == 0
    fresh = dict(MLP_PROBLEM, seed=1_000_003)
    hand = jaxq.simulate(jaxq.System(policy=jaxq.SPRPT(), **fresh), jobs=50_000, replicas=8,
                         key=1)
    best = jaxq.simulate(jaxq.System(policy=jaxq.PSPJF(), **fresh), jobs=50_000, replicas=8,
                         key=1)
    tuned, se = float(r.hard.mean_response_time), float(r.hard.stderr)
    assert tuned < float(hand.mean_response_time) - 3 * np.hypot(se, float(hand.stderr)), (
        tuned, float(hand.mean_response_time))
    assert tuned < float(best.mean_response_time) + 2 * np.hypot(se, float(best.stderr)), (
        tuned, float(best.mean_response_time))


def test_mlp_relaxed_gradient_points_downhill_on_the_exact_engine():
    """At tau = 1, a step along minus the relaxed gradient lowers the exact engine's mean
    response time, by more than 3 standard errors."""
    system = jaxq.System(policy=MLP(), **MLP_PROBLEM)
    spec = RelaxedSpec(capacity=128, jobs=1000, warmup=100, steps=2000, checkpoint=True)
    keys = _replica_keys(jax.random.key(5), jnp.asarray([0]), 32)[0]
    terms = tune.parse_objective("mean_response_time", tune.OBJECTIVES)
    u = MLP().weights
    _, grad, problems = jax.jit(lambda u, k: tune.relaxed_gradient(
        spec, terms, system, tune.Layout(["mlp"], sizes=(25,)), u, k, 1.0, "reverse"))(u, keys)
    assert int(problems) == 0
    step = 0.1 * np.asarray(grad) / np.linalg.norm(grad)
    points = MLP(jnp.stack([u - step, u + step]))
    exact = jaxq.simulate(jaxq.System(policy=points, **MLP_PROBLEM), jobs=20_000, replicas=16)
    downhill = exact.mean_response_time[0] - exact.mean_response_time[1]
    assert downhill < -3 * np.hypot(*exact.stderr), (exact.mean_response_time, exact.stderr)


def test_problems_are_tuned_side_by_side():
    """Two loads in one call give each load's own trace (a batch, not one shared value)."""
    system = jaxq.System(np.array([0.5, 0.9]), predictor=jaxq.LognormalNoise(0.5),
                         policy=jaxq.SPRPTLimited(0.5))
    with pytest.warns(RuntimeWarning, match="relaxed gradient of c is not reliable"):
        r = tune.tune(system, ["c"], steps=3, jobs=100, replicas=2, eval_jobs=500,
                      eval_replicas=2)
    assert r.values["c"].shape == (2,) and r.trace_objective.shape == (3, 2)
    assert r.trace_objective[0, 1] > r.trace_objective[0, 0]  # the higher load waits longer
    with pytest.warns(RuntimeWarning):
        again = tune.tune(system, ["c"], steps=3, jobs=100, replicas=2, eval_jobs=500,
                          eval_replicas=2)
    np.testing.assert_array_equal(again.values["c"], r.values["c"])  # same key, same numbers


@pytest.mark.parametrize("kwargs, words", [
    (dict(names=["nope"]), ["cannot tune 'nope'", "threshold"]),
    (dict(names=["threshold"]), ["needs policy 'onebit'"]),
    (dict(names=["aging"]), ["aging term"]),
    (dict(names=["c"], tau=(0.1, 0.0)), ["tau"]),
    (dict(names=["c"], method="adam"), ["method"]),
    (dict(names=["c"], steps=0), ["steps"]),
])
def test_bad_requests_are_refused_before_running(kwargs, words):
    system = jaxq.System(0.5, policy=jaxq.SPRPTLimited(0.5))
    names = kwargs.pop("names")
    with pytest.raises(ValueError) as err:
        tune.tune(system, names, **kwargs)
    for w in words:
        assert w in str(err.value)


def test_the_mlp_rank_is_the_queue_engines_only():
    with pytest.raises(ValueError, match="not one of the LLM engine's"):
        LLMSystem(MLP(), kv_capacity=12_000)


def test_request_weights_are_tuned_in_the_llm_engine_only():
    with pytest.raises(ValueError, match="tune_llm"):
        tune.tune(jaxq.System(0.5, policy=jaxq.Linear()), ["w_prompt"], steps=1)


def test_cli_json_of_a_vector_parameter(capsys):
    """--tune mlp learns all 3H + 1 weights; --json gives them as one list per problem, and
    `jaxq queue --policy mlp --weights ...` runs the learned rank."""
    code = cli.main(["tune", "queue", "--policy", "mlp", "--predictor", "lognormal",
                     "--load", "0.5,0.7", "--tune", "mlp", "--mode", "reverse", "--steps", "2",
                     "--tau", "1:1",
                     "--tune-jobs", "100", "--tune-replicas", "2", "--jobs", "500",
                     "--replicas", "2", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert np.shape(out["mlp"]) == (2, 25) and np.shape(out["trace"]["mlp"]) == (2, 2, 25)
    weights = ",".join(str(w) for w in out["mlp"][0])
    assert cli.main(["queue", "--policy", "mlp", "--weights", weights, "--load", "0.5",
                     "--predictor", "lognormal", "--jobs", "500", "--replicas", "2",
                     "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mean_response_time"] > 0
    assert cli.main(["queue", "--policy", "mlp", "--weights", "1,2", "--load", "0.5"]) == 2
    assert "3H + 1" in capsys.readouterr().err


def test_cli_json(capsys):
    code = cli.main(["tune", "queue", "--policy", "onebit", "--predictor", "lognormal",
                     "--load", "0.5,0.7", "--tune", "threshold", "--method", "spa",
                     "--steps", "2",
                     "--tune-jobs", "100", "--tune-replicas", "2", "--jobs", "500",
                     "--replicas", "2", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["load"] == [0.5, 0.7] and len(out["threshold"]) == 2
    assert len(out["mean_response_time"]) == 2 and len(out["stderr"]) == 2
    assert len(out["trace"]["threshold"]) == 2 and len(out["trace"]["threshold"][0]) == 2
    assert cli.main(["tune", "queue", "--load", "0.5", "--tune", "c"]) == 2
    assert "needs policy 'sprpt-limited'" in capsys.readouterr().err


def test_objectives_are_weighted_mixes_with_goodput_maximised():
    terms = tune.parse_objective("latency_p99:2, ttft_mean", tune.LLM_OBJECTIVES)
    assert terms == (("latency_p99", 2.0), ("ttft_mean", 1.0))
    assert tune.parse_objective({"goodput": 0.5}, tune.LLM_OBJECTIVES) == (("goodput", 0.5),)
    result = types.SimpleNamespace(latency_p99=np.array([10.0, 20.0]),
                                   ttft_mean=np.array([1.0, 3.0]), goodput=np.array([4.0, 2.0]))
    np.testing.assert_array_equal(tune.objective_value(result, terms), [21.0, 43.0])
    np.testing.assert_array_equal(
        tune.objective_value(result, (("goodput", 0.5), ("ttft_mean", 1.0))), [-1.0, 2.0])
    for bad, words in (("latency_p98", "latency_p99"), ("ttft_mean:0", "> 0"),
                       ("ttft_mean:x", "must be a number"), ("ttft_mean,ttft_mean", "once")):
        with pytest.raises(ValueError, match=words):
            tune.parse_objective(bad, tune.LLM_OBJECTIVES)
    with pytest.raises(ValueError, match="mean_response_time, mean_slowdown, p99"):
        tune.parse_objective("latency_mean", tune.OBJECTIVES)


def test_scales_set_the_unit_of_a_step():
    for constraint, value in (("positive", 37.0), ("real", -12.0), ("unit", 0.3)):
        scale = 1.0 if constraint == "unit" else 20.0
        u = tune._to_u(constraint, value, scale)
        assert math.isclose(float(tune._to_value(constraint, u, scale)), value, rel_tol=1e-6)
    assert math.isclose(float(tune._to_u("real", -12.0, 20.0)), -0.6)
    assert tune.check_scales(["aging", "c"], {"aging": 20}) == (20.0, 1.0)
    for scales, words in (({"c": 2.0}, "takes no scale"), ({"aging": 0.0}, "> 0"),
                          ({"threshold": 1.0}, "not tuned")):
        with pytest.raises(ValueError, match=words):
            tune.check_scales(["aging", "c"], scales)


def _small_llm(policy, sigma=0.5):
    """An engine small enough for a test, under memory pressure at 6 requests/s."""
    workload = jaxq.llm.WORKLOADS["azure-conversation"](rate=6.0, max_tokens=6000)
    system = LLMSystem(policy, jaxq.LognormalNoise(sigma), kv_capacity=12_000,
                       preemption="swap", host_capacity=6_000, iter_base=0.01,
                       iter_per_prefill_token=2e-5, iter_per_decode_seq=1e-4,
                       iter_per_kv_token=1e-7)
    return system, workload


@pytest.mark.slow
def test_llm_tuning_by_evolution_strategies_leaves_a_bad_start():
    """Longest predicted remaining first (w_remaining < 0, plus a fcfs term) is a bad rank for
    mean latency: ES on the exact LLM engine raises w_remaining, and the tuned policy's mean
    latency on fresh seeds is below the start's by more than 3 standard errors."""
    start = jaxq.Linear(0.0, -0.5, 0.0, -1.0)
    system, workload = _small_llm(start)
    r = tune.tune_llm(system, workload, ["w_remaining"], steps=10, learning_rate=0.3,
                      objective="latency_mean", requests=300, replicas=2, es_pairs=4,
                      eval_requests=600, eval_replicas=6)
    before = simulate(eqx.tree_at(lambda s: s.seed, system, system.seed + 1_000_003), workload,
                      requests=600, replicas=6, key=1)
    moved = float(r.values["w_remaining"])
    assert moved > -0.5 + 1.0, r.trace_values["w_remaining"]
    gap = float(before.latency_mean - r.hard.latency_mean)
    se = math.hypot(float(before.latency_stderr), float(r.hard.latency_stderr))
    assert gap > 3 * se, (moved, float(before.latency_mean), float(r.hard.latency_mean), se)
    assert r.problems == 0 and math.isclose(float(r.objective), float(r.hard.latency_mean))


def test_llm_tuning_problems_side_by_side_and_reproducible():
    system, workload = _small_llm(Aging(jaxq.SPRPTLimited(0.5), 1.0), jnp.array([0.5, 1.5]))
    kw = dict(steps=2, requests=60, replicas=1, es_pairs=2, eval_requests=60, eval_replicas=1,
              objective="latency_p99:1,goodput:0.5", scales={"aging": 10.0})
    r = tune.tune_llm(system, workload, ["c", "aging"], **kw)
    assert r.values["aging"].shape == (2,) and r.trace_values["c"].shape == (2, 2)
    np.testing.assert_allclose(r.trace_values["aging"][0], 1.0, rtol=1e-5)
    np.testing.assert_allclose(r.objective, r.hard.latency_p99 - 0.5 * r.hard.goodput,
                               rtol=1e-6)
    again = tune.tune_llm(system, workload, ["c", "aging"], **kw)
    np.testing.assert_array_equal(again.values["c"], r.values["c"])
    with pytest.raises(ValueError, match="needs policy 'onebit'"):
        tune.tune_llm(system, workload, ["threshold"])
    with pytest.raises(TypeError, match="LLMWorkload"):
        tune.tune_llm(system, None, ["c"])


def test_llm_runs_are_bounded_by_max_iterations():
    """A bound below what the requests need leaves some unfinished in every run: counted in
    `problems` (and in the result), never a stalled step; a bound < 1 is refused up front."""
    system, workload = _small_llm(jaxq.Linear(0.0, 1.0, 0.0, 0.0))
    kw = dict(steps=1, requests=60, replicas=1, es_pairs=1, eval_requests=60, eval_replicas=1)
    r = tune.tune_llm(system, workload, ["w_remaining"], max_iterations=200, **kw)
    assert r.problems > 0 and int(r.hard.unfinished) > 0
    assert tune.tune_llm(system, workload, ["w_remaining"], **kw).problems == 0
    with pytest.raises(ValueError, match="max_iterations must be an integer >= 1"):
        tune.tune_llm(system, workload, ["w_remaining"], max_iterations=0, **kw)


def test_cli_llm_json(capsys):
    code = cli.main(["tune", "llm", "--workload", "azure-conversation", "--rate", "6",
                     "--max-model-len", "6000", "--kv-capacity", "12000", "--policy",
                     "sprpt-limited", "--aging", "2", "--predictor", "lognormal", "--sigma",
                     "0.5,1.0", "--tune", "c,aging:10", "--objective", "latency_p99",
                     "--optimizer", "sgd", "--lr", "0.01", "--steps", "2", "--tune-requests",
                     "60", "--tune-replicas", "1", "--es-pairs", "2", "--requests", "60",
                     "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["engine"] == "llm" and out["method"] == "es"
    assert out["sigma"] == [0.5, 1.0] and len(out["c"]) == 2 and len(out["aging"]) == 2
    assert out["objective_value"] == out["latency_p99"]
    assert len(out["trace"]["aging"][0]) == 2 and out["trace"]["aging"][0][0] == pytest.approx(2)
    assert cli.main(["tune", "llm", "--workload", "azure-conversation", "--policy", "fcfs",
                     "--tune", "c"]) == 2
    assert "needs policy 'sprpt-limited'" in capsys.readouterr().err
