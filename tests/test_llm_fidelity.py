"""Replay of a measured vLLM run (../shared/data, skipped where absent) with presets only."""

import importlib.util
import os

import pytest

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                    "vllm-rtx4090-llama3.1-8b")
pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(DATA, "requests.jsonl")),
                                reason="../shared/data/vllm-rtx4090-llama3.1-8b is not here")


@pytest.fixture(scope="module")
def fidelity():
    path = os.path.join(os.path.dirname(__file__), "..", "scripts", "fidelity_vllm.py")
    spec = importlib.util.spec_from_file_location("fidelity_vllm", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.measured(DATA), module.simulated(DATA)


def test_replay_completes_with_memory_pressure(fidelity):
    real, sim = fidelity
    assert sim["kv_capacity"] > 0 and sim["iterations"] > 0
    assert sim["preemptions"] > 0  # vLLM ran with its KV cache ~99% full too (timeseries.csv)
    # Same order of magnitude as the real engine: a broken cost model is off by far more.
    for key in ("ttft_mean", "tpot_mean", "latency_mean"):
        assert 0.5 < sim[key] / real[key] < 2.0, key


@pytest.mark.parametrize("key", ["ttft_mean", "tpot_mean", "latency_mean"])
def test_within_15_percent_of_vllm(fidelity, key):
    real, sim = fidelity
    assert abs(sim[key] / real[key] - 1) <= 0.15
