"""LLM workloads: trace files (the shared vLLM measurement, CSV, bad input) and synthetic presets."""

from __future__ import annotations

import json
import math
import pathlib

import jax
import numpy as np
import pytest

from jaxq.llm import WORKLOADS, TraceError, read_trace

VLLM_RUN = (pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
            / "vllm-rtx4090-llama3.1-8b" / "requests.jsonl")


@pytest.mark.skipif(not VLLM_RUN.is_file(), reason="../shared/data is not present")
def test_reads_the_vllm_benchmark_jsonl():
    trace = read_trace(VLLM_RUN)
    rows = [json.loads(line) for line in VLLM_RUN.read_text().splitlines() if line.strip()]
    assert len(trace) == len(rows) == 300
    np.testing.assert_array_equal(trace.prompt_tokens, [r["input_toks"] for r in rows])
    np.testing.assert_array_equal(trace.output_tokens, [r["output_toks"] for r in rows])
    assert trace.arrival_time[0] == rows[0]["arrival_time"]  # the file's own clock, float64
    assert np.all(np.diff(trace.arrival_time) >= 0)
    assert trace.predicted_output_tokens is None
    # the README there: about 10 requests/s, all 300 arriving within about 29 s (29.1)
    assert 28.0 < trace.arrival_time[-1] - trace.arrival_time[0] < 30.0


def _write(tmp_path, text, name="trace.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_with_predictions(tmp_path):
    path = _write(tmp_path, "arrival_time,prompt_tokens,output_tokens,predicted_output_tokens\n"
                            "0.0,10,5,4.5\n0.5,20,1,0\n0.5,7,3,12\n")
    trace = read_trace(path)
    np.testing.assert_array_equal(trace.arrival_time, [0.0, 0.5, 0.5])
    np.testing.assert_array_equal(trace.prompt_tokens, [10, 20, 7])
    np.testing.assert_array_equal(trace.output_tokens, [5, 1, 3])
    np.testing.assert_array_equal(trace.predicted_output_tokens, [4.5, 0.0, 12.0])


@pytest.mark.parametrize("text,name,message", [
    ("arrival_time,prompt_tokens\n0,10\n", "trace.csv", r"trace.csv:2: missing column 'output_tokens'"),
    ("arrival_time,prompt_tokens,output_tokens\n1,10,5\n0.5,10,5\n", "trace.csv",
     r"trace.csv:3: arrival_time 0.5 is earlier"),
    ("arrival_time,prompt_tokens,output_tokens\n0,10,0\n", "trace.csv",
     r"trace.csv:2: output_tokens must be an integer >= 1"),
    ("arrival_time,prompt_tokens,output_tokens\n0,10.5,3\n", "trace.csv",
     r"trace.csv:2: prompt_tokens must be an integer >= 1"),
    ("arrival_time,prompt_tokens,output_tokens\n0,ten,3\n", "trace.csv",
     r"trace.csv:2: prompt_tokens must be a number"),
    ("arrival_time,prompt_tokens,output_tokens\n-1,10,3\n", "trace.csv",
     r"trace.csv:2: arrival_time must be finite and >= 0"),
    ("arrival_time,prompt_tokens,output_tokens,predicted_output_tokens\n0,1,1,2\n1,1,1,\n",
     "trace.csv", r"trace.csv:3: predicted_output_tokens must be given on every line or on none"),
    ("arrival_time,prompt_tokens,output_tokens\n", "trace.csv", r"trace.csv: no requests"),
    ("", "trace.csv", r"trace.csv: empty file"),
    ('{"arrival_time": 0, "input_toks": 3, "output_toks": 2}\n[1, 2]\n', "t.jsonl",
     r"t.jsonl:2: not a JSON object"),
    ('{"arrival_time": 0, "input_toks": 3}\n', "t.jsonl", r"t.jsonl:1: missing column 'output_tokens'"),
])
def test_bad_traces_name_the_line(tmp_path, text, name, message):
    with pytest.raises(TraceError, match=message):
        read_trace(_write(tmp_path, text, name))


def test_missing_file(tmp_path):
    with pytest.raises(TraceError, match="no such file"):
        read_trace(tmp_path / "absent.csv")


@pytest.mark.parametrize("name,mu,sigma", [("azure-conversation", (6.633, 5.019), (0.985, 0.859)),
                                           ("azure-code", (6.999, 2.788), (1.360, 0.847))])
def test_presets_have_the_fitted_token_laws(name, mu, sigma):
    workload = WORKLOADS[name](rate=2.0)
    n = 200_000
    gaps, prompt, output = (np.asarray(a, np.float64)
                            for a in workload.sample(jax.random.key(1), n))
    for tokens, m, s in ((prompt, mu[0], sigma[0]), (output, mu[1], sigma[1])):
        assert np.all(tokens >= 1) and np.all(tokens == np.round(tokens))
        # log of the rounded counts: the mean moves by at most ~1/(2 e^mu) through rounding
        logs = np.log(tokens)
        assert abs(logs.mean() - m) < 5 * s / math.sqrt(n) + 0.01
        assert abs(logs.std() - s) < 0.02
    assert abs(gaps.mean() * 2.0 - 1.0) < 5 * (13.0 if name == "azure-code" else 1.0) / math.sqrt(n)


def test_conversation_preset_default_rate_and_bad_rate():
    assert float(WORKLOADS["azure-conversation"]().rate) == 5.5
    with pytest.raises(ValueError, match="^rate"):
        WORKLOADS["azure-code"](rate=0.0)


def test_max_tokens_caps_the_context():
    import jax
    from jaxq.llm.workloads import WORKLOADS

    free = WORKLOADS["azure-code"](rate=1.0)
    capped = WORKLOADS["azure-code"](rate=1.0, max_tokens=2000)
    _, p_free, o_free = free.sample(jax.random.key(0), 20_000)
    gaps, p, o = capped.sample(jax.random.key(0), 20_000)
    assert float((p_free + o_free).max()) > 2000  # the tail does reach past the limit
    assert float((p + o).max()) <= 2000 and float(p.min()) >= 1 and float(o.min()) >= 1
    short = (p_free + o_free) <= 2000
    assert bool(((p == p_free) & (o == o_free))[short].all())  # short requests are untouched
