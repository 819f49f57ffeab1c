"""The command line: JSON keys, readable errors with exit code 2."""

import json

import pytest

from jaxq import cli


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_queue_json(capsys):
    code, out, _ = run(capsys, "queue", "--policy", "sprpt", "--predictor", "exponential",
                       "--service", "exponential", "--load", "0.5", "--jobs", "2000",
                       "--replicas", "4", "--seed", "3", "--json")
    assert code == 0
    r = json.loads(out)
    assert r["measured_jobs"] == 8000 and r["overflow"] == 0
    assert r["policy"] == "sprpt" and r["load"] == 0.5
    assert 1.0 < r["mean_response_time"] < 2.5 and r["stderr"] > 0
    assert r["p50"] < r["p90"] < r["p99"]


def test_theory_json_and_onebit_optimum(capsys):
    code, out, _ = run(capsys, "theory", "--policy", "fcfs", "--load", "0.8", "--json")
    assert code == 0 and json.loads(out)["mean_response_time"] == pytest.approx(5.0, rel=1e-9)
    code, out, _ = run(capsys, "theory", "--policy", "onebit", "--load", "0.8",
                       "--threshold", "0.5", "--json")
    r = json.loads(out)
    assert code == 0 and r["optimal_mean_response_time"] <= r["mean_response_time"]


def test_queue_aging_runs_between_the_policy_and_fcfs(capsys):
    """--aging w ranks by the policy's rank minus w * time in system: w = 0 is the policy itself,
    and a w large against every prediction orders jobs by arrival, as fcfs does (same jobs)."""
    def mean(*extra):
        code, out, _ = run(capsys, "queue", "--load", "0.8", "--predictor", "lognormal",
                           "--jobs", "5000", "--json", *extra)
        assert code == 0
        return json.loads(out)

    sprpt, aged = mean("--policy", "sprpt"), mean("--policy", "sprpt", "--aging", "0.5")
    assert mean("--policy", "sprpt", "--aging", "0")["mean_response_time"] == \
        sprpt["mean_response_time"]
    assert aged["aging"] == 0.5 and "aging" not in sprpt
    fcfs = mean("--policy", "fcfs")["mean_response_time"]
    assert sprpt["mean_response_time"] < aged["mean_response_time"] < fcfs
    huge = mean("--policy", "sprpt", "--aging", "1e4")["mean_response_time"]
    assert huge == pytest.approx(fcfs, rel=1e-3)


@pytest.mark.parametrize("argv, words", [
    (["queue", "--load", "0.5", "--aging", "-1", "--jobs", "100"], ["aging", "[0, inf]"]),
    (["theory", "--load", "1.0"], ["load", "(0, 1)"]),
    (["queue", "--load", "1.2", "--jobs", "100"], ["load"]),
    (["theory", "--load", "0.5", "--predictor", "uniform", "--alpha", "1.0"], ["alpha", "[0, 1)"]),
    (["theory", "--load", "0.5", "--policy", "onebit", "--threshold", "-1"], ["threshold"]),
    (["theory", "--load", "0.5", "--policy", "sprpt-limited", "--c", "2"], ["c ", "[0, 1]"]),
    (["theory", "--load", "0.5", "--policy", "nope"], ["policy", "sprpt-limited", "onebit"]),
    (["theory", "--load", "0.5", "--service", "nope"], ["service", "weibull"]),
    (["queue", "--load", "0.5", "--jobs", "0"], ["jobs"]),
])
def test_bad_input_is_a_clear_error(capsys, argv, words):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert "Traceback" not in err
    for w in words:
        assert w in err, err


def test_capacity_overflow_says_how_to_fix(capsys):
    code, _, err = run(capsys, "queue", "--load", "0.9", "--jobs", "2000", "--replicas", "2",
                       "--capacity", "2")
    assert code == 2 and "--capacity" in err
