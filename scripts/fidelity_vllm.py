"""Replay the measured vLLM run in ../shared/data/vllm-rtx4090-llama3.1-8b through the LLM engine
with presets only (rtx-4090, llama-3.1-8b roofline; the run's engine limits and prefix caching;
fcfs; recompute) and compare mean TTFT, TPOT and end-to-end latency with what vLLM measured.

    python scripts/fidelity_vllm.py [--data DIR] [--json]

The measured values are computed here from the run's own timestamps (requests.jsonl), as its
README defines them: TTFT = first_token_ts - queued_ts, latency = last_token_ts - queued_ts,
TPOT = (last_token_ts - first_token_ts) / (output_toks - 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

DEFAULT_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                            "vllm-rtx4090-llama3.1-8b")


def measured(folder: str) -> dict:
    rows = [json.loads(line) for line in open(os.path.join(folder, "requests.jsonl"))
            if line.strip()]
    q = np.array([r["queued_ts"] for r in rows])
    first = np.array([r["first_token_ts"] for r in rows])
    last = np.array([r["last_token_ts"] for r in rows])
    out = np.array([r["output_toks"] for r in rows])
    tpot = (last - first)[out > 1] / (out[out > 1] - 1)
    return {"ttft_mean": float(np.mean(first - q)), "tpot_mean": float(np.mean(tpot)),
            "latency_mean": float(np.mean(last - q)), "makespan": float(last.max() - q.min())}


def engine_limits(folder: str) -> dict:
    meta = json.load(open(os.path.join(folder, "meta.json")))
    kwargs = meta["engine_kwargs"]
    return {"max_seqs": kwargs["max_num_seqs"],
            "max_batched_tokens": kwargs["max_num_batched_tokens"],
            "block_size": meta["kv_cache"]["block_size"],
            "prefix_cache": bool(meta["kv_cache"]["enable_prefix_caching"])}


def simulated(folder: str, kv_capacity: int | None = None) -> dict:
    from jaxq.llm import hardware
    from jaxq.llm.simulate import LLMSystem, simulate
    from jaxq.llm.workloads import read_trace

    cost = hardware.roofline("rtx-4090", "llama-3.1-8b", gpu_memory_utilization=0.9)
    system = LLMSystem(
        kv_capacity=cost.kv_capacity if kv_capacity is None else kv_capacity,
        iter_base=cost.iter_base, iter_per_prefill_token=cost.iter_per_prefill_token,
        iter_per_decode_seq=cost.iter_per_decode_seq, iter_per_kv_token=cost.iter_per_kv_token,
        swap_per_token=cost.swap_per_token, preemption="recompute", **engine_limits(folder))
    trace = read_trace(os.path.join(folder, "requests.jsonl"))
    r = simulate(system, trace)
    return {"ttft_mean": float(r.ttft_mean), "tpot_mean": float(r.tpot_mean),
            "latency_mean": float(r.latency_mean),
            "makespan": float(len(trace) / r.request_throughput),
            "preemptions": int(r.preemptions), "recomputed_tokens": int(r.recomputed_tokens),
            "prefix_hit_tokens": int(r.prefix_hit_tokens),
            "iterations": int(r.iterations), "kv_capacity": int(system.kv_capacity)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not os.path.isdir(args.data):
        print(f"no measured run at {args.data}", file=sys.stderr)
        return 1
    real = measured(args.data)
    rows = {"roofline KV": simulated(args.data),
            "run's KV (41,408)": simulated(args.data, kv_capacity=41_408)}
    if args.json:
        print(json.dumps({"measured": real, **rows}))
        return 0
    print(f"{'':22} {'TTFT mean (s)':>14} {'TPOT mean (ms)':>15} {'latency mean (s)':>17} "
          f"{'makespan (s)':>13} {'preemptions':>12}")
    print(f"{'vLLM measured':22} {real['ttft_mean']:14.1f} {1e3 * real['tpot_mean']:15.1f} "
          f"{real['latency_mean']:17.1f} {real['makespan']:13.1f} {'':>12}")
    for name, s in rows.items():
        print(f"{'jaxq, ' + name:22} {s['ttft_mean']:14.1f} {1e3 * s['tpot_mean']:15.1f} "
              f"{s['latency_mean']:17.1f} {s['makespan']:13.1f} {s['preemptions']:12d}")
        print(f"{'  ratio':22} {s['ttft_mean'] / real['ttft_mean']:14.2f} "
              f"{s['tpot_mean'] / real['tpot_mean']:15.2f} "
              f"{s['latency_mean'] / real['latency_mean']:17.2f} "
              f"{s['makespan'] / real['makespan']:13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
