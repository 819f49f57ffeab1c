"""`jaxq llm`: JSON keys, the per-request file, and readable errors (exit code 2)."""

import csv
import json

import numpy as np
import pytest

from jaxq import cli

TRACE = """arrival_time,prompt_tokens,output_tokens
1000.0,120,30
1000.5,800,12
1000.7,64,200
1003.0,300,5
"""


@pytest.fixture
def trace(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text(TRACE)
    return str(path)


def run(capsys, *argv):
    code = cli.main(["llm", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_trace_json_and_per_request(capsys, trace, tmp_path):
    per_request = tmp_path / "out.csv"
    code, out, err = run(capsys, "--trace", trace, "--per-request", str(per_request),
                         "--policy", "sprpt", "--predictor", "lognormal", "--sigma", "0.5",
                         "--json")
    assert code == 0, err
    r = json.loads(out)
    for key in ("ttft_mean", "tpot_mean", "latency_mean", "completed", "preemptions",
                "peak_kv_tokens"):
        assert key in r
    assert r["completed"] == 4 and r["unfinished"] == 0
    assert 0 < r["ttft_mean"] < r["latency_mean"]
    rows = list(csv.DictReader(open(per_request)))
    assert list(rows[0]) == ["arrival_time", "first_token_time", "finish_time", "preemptions"]
    arrival = np.array([float(row["arrival_time"]) for row in rows])
    first = np.array([float(row["first_token_time"]) for row in rows])
    finish = np.array([float(row["finish_time"]) for row in rows])
    np.testing.assert_array_equal(arrival, [1000.0, 1000.5, 1000.7, 1003.0])  # trace's clock
    assert np.all(arrival < first) and np.all(first < finish)
    # The file agrees with the summary: mean latency and TTFT, per request, on the trace's clock.
    np.testing.assert_allclose(np.mean(finish - arrival), r["latency_mean"], rtol=1e-5)
    np.testing.assert_allclose(np.mean(first - arrival), r["ttft_mean"], rtol=1e-5)


def test_explicit_costs_override_the_preset(capsys, trace):
    code, out, _ = run(capsys, "--trace", trace, "--iter-base", "0.5", "--iter-per-prefill-token",
                       "0", "--iter-per-decode-seq", "0", "--iter-per-kv-token", "0",
                       "--kv-capacity", "5000", "--json")
    assert code == 0
    r = json.loads(out)
    assert r["kv_capacity"] == 5000 and r["iter_base"] == 0.5
    # Request 0 alone at first: its prefill is one 0.5 s iteration.
    assert r["ttft_p50"] >= 0.5


def test_workload_json(capsys):
    code, out, err = run(capsys, "--workload", "azure-conversation", "--rate", "1.0",
                         "--requests", "60", "--gpu", "h100-sxm", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["completed"] == 54  # 60 minus the default 10% warm-up
    assert r["kv_capacity"] > 100_000  # an 80 GB card holds far more KV than a 24 GB one


@pytest.mark.parametrize("argv, needle", [
    (["--kv-capacity", "500"], "kv_capacity"),
    (["--max-batched-tokens", "0"], "max_batched_tokens must be an integer >= 1"),
    (["--max-batch", "0"], "max_seqs must be an integer >= 1"),
    (["--gpu", "tpu-v9"], "unknown gpu 'tpu-v9'; valid: rtx-4090"),
    (["--model", "gpt-9"], "unknown model 'gpt-9'; valid:"),
    (["--policy", "lifo"], "unknown policy 'lifo'; valid: fcfs"),
    (["--preemption", "drop"], "unknown preemption 'drop'; valid: recompute, swap"),
    (["--gpu-memory-utilization", "1.5"], "gpu_memory_utilization must lie in"),
    (["--max-iterations", "0"], "max_iterations must be an integer >= 1"),
    (["--max-iterations", "3"], "had not finished when the iteration limit was reached"),
])
def test_bad_options(capsys, trace, argv, needle):
    code, _, err = run(capsys, "--trace", trace, *argv)
    assert code == 2
    assert needle in err


def test_request_too_long_names_the_line(capsys, trace):
    code, _, err = run(capsys, "--trace", trace, "--kv-capacity", "500")
    assert code == 2
    assert "trace.csv:3: request 1" in err and "800" in err and "--kv-capacity" in err


@pytest.mark.parametrize("text, needle", [
    ("arrival_time,prompt_tokens\n0,5\n", "bad.csv:2: missing column 'output_tokens'"),
    ("arrival_time,prompt_tokens,output_tokens\n1,5,5\n0.5,5,5\n", "bad.csv:3: arrival_time 0.5 is"),
])
def test_bad_trace_names_the_line(capsys, tmp_path, text, needle):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    code, _, err = run(capsys, "--trace", str(path))
    assert code == 2 and needle in err


def test_needs_exactly_one_source(capsys, trace):
    code, _, err = run(capsys, "--trace", trace, "--workload", "azure-conversation")
    assert code == 2 and "exactly one of --trace" in err
    code, _, err = run(capsys)
    assert code == 2 and "exactly one of --trace" in err


def test_cluster_json_and_per_request(capsys, trace, tmp_path):
    per_request = tmp_path / "out.csv"
    code, out, err = run(capsys, "--trace", trace, "--instances", "2", "--router",
                         "least-outstanding", "--per-request", str(per_request), "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["instances"] == 2 and r["router"] == "least-outstanding" and r["d"] is None
    assert r["kv_capacity"] == [r["kv_capacity"][0]] * 2
    rows = list(csv.DictReader(open(per_request)))
    assert list(rows[0])[-1] == "instance"
    sent = [int(row["instance"]) for row in rows]
    # Request 0 finds both idle (ties: instance 0); request 1 arrives 0.5 s later, while
    # request 0 is still there (30 output tokens), so it goes to instance 1.
    assert sent[:2] == [0, 1]
    assert r["instance_share"] == [sent.count(0) / 4, sent.count(1) / 4]


def test_heterogeneous_cluster(capsys, trace):
    code, out, err = run(capsys, "--trace", trace, "--instance-gpus", "rtx-4090,h100-sxm",
                         "--router", "least-kv", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["instances"] == 2 and r["instance_gpus"] == "rtx-4090,h100-sxm"
    assert r["kv_capacity"][1] > 2 * r["kv_capacity"][0]
    assert r["iter_base"][0] != r["iter_base"][1]


@pytest.mark.parametrize("argv, needle", [
    (["--instances", "0"], "instances must be an integer >= 1"),
    (["--instances", "2", "--router", "nearest"], "unknown router 'nearest'; valid: round-robin"),
    (["--instances", "2", "--router", "round-robin", "--d", "2"], "d applies to least-"),
    (["--instances", "2", "--router", "least-kv", "--d", "-1"], "d must be an integer >= 0"),
    (["--instances", "3", "--instance-gpus", "rtx-4090,h100-sxm"], "--instances must equal"),
    (["--instance-gpus", "rtx-4090,tpu-v9"], "unknown gpu 'tpu-v9'"),
])
def test_bad_cluster_options(capsys, trace, argv, needle):
    code, _, err = run(capsys, "--trace", trace, *argv)
    assert code == 2
    assert needle in err


def test_disaggregated_json(capsys, trace):
    code, out, err = run(capsys, "--trace", trace, "--prefill-instances", "1",
                         "--decode-instances", "2", "--decode-gpu", "h100-sxm",
                         "--kv-link-bandwidth", "25", "--decode-router", "least-kv", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert (r["prefill_instances"], r["decode_instances"]) == (1, 2)
    assert r["router"] == "round-robin" and r["decode_router"] == "least-kv"
    assert r["kv_link_bandwidth"] == 25.0 and r["decode_gpu"] == "h100-sxm"
    assert r["kv_capacity"][1] == r["kv_capacity"][2] > r["kv_capacity"][0]
    # The prefill instance served every request; each decode instance some of them.
    assert r["instance_share"][0] == 1.0 and sum(r["instance_share"][1:]) == 1.0
    assert r["completed"] == 4


@pytest.mark.parametrize("argv, needle", [
    (["--prefill-instances", "1"], "decode_instances must be an integer >= 1"),
    (["--prefill-instances", "1", "--decode-instances", "1", "--instances", "3"],
     "--instances (3) must equal --prefill-instances + --decode-instances (2)"),
    (["--prefill-instances", "1", "--decode-instances", "1", "--kv-link-bandwidth", "0"],
     "kv_link_bandwidth must be > 0"),
    (["--kv-link-bandwidth", "25"], "--kv-link-bandwidth applies to disaggregation"),
    (["--prefill-instances", "1", "--decode-instances", "1", "--refine-every", "8"],
     "refine=True is not supported with disaggregation"),
])
def test_bad_disaggregation_options(capsys, trace, argv, needle):
    code, _, err = run(capsys, "--trace", trace, *argv)
    assert code == 2
    assert needle in err
