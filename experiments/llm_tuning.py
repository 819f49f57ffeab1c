"""Tuning an LLM engine's scheduler for tail latency: sprpt-limited with an aging term, its c and
aging weight learned by evolution strategies on the exact engine (jaxq.tune.tune_llm), against
fcfs, spjf, sprpt, sprpt-limited (c = 0.5) and a grid search over (c, aging) on the exact engine.

Setting: one RTX 4090 serving Llama-3.1-8B (jaxq.llm.hardware roofline costs and KV capacity,
42,127 tokens), the Azure conversation workload at 2.4 requests/s with a context limit of 16,384
tokens, preemption by swap (host memory = GPU KV capacity), lognormal prediction noise sigma =
0.5. This is high load for swap (about 2.6 requests/s is its limit, experiments/llm_policies.py),
where size-based policies cut the mean but lengthen the tail: a long request keeps losing its
place to shorter arrivals. The aging term (rank = predicted remaining tokens - w * seconds in
system) trades one for the other.

Objective (--objective): the p99 of latency per output token (latency / O: the tail of what a
user waits per token, an SLO that does not simply track output length), by default; or the p99
of latency, or of TTFT. (p99 latency itself is set by the longest outputs' own decode time and
is lowest under fcfs: no size-based policy beats it, see the README.)

Stages, each written atomically to --out and reused by a rerun with the same options:
1. grid: every (c, aging) of the grid on the search seeds (--search-requests x --search-replicas);
2. es: tune_llm from (c, aging) = (0.5, 10) with --steps steps of --es-pairs antithetic pairs, each
   step on fresh seeds (--search-requests x --tune-replicas per point);
3. eval: the hand-written policies, the grid's best point and the tuned policy on seeds neither
   search used (--requests x --replicas); p99 is given pooled and as the mean of per-replica p99s
   with its standard error across replicas.

    .venv/bin/python experiments/llm_tuning.py        # about 15 minutes on 2 cores

Writes DIR/llm_tuning.csv (the eval table), DIR/llm_tuning_trace.csv (the optimisation) and
DIR/llm_tuning.png (the optimisation and the grid; skipped without matplotlib) under --out DIR
(default experiments/out/llm_tuning), and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import sys
import time

import jax.numpy as jnp
import numpy as np

import jaxq
from jaxq._files import write_atomic
from jaxq.llm import WORKLOADS, hardware
from jaxq.llm.simulate import LLMSystem, simulate
from jaxq.policies import Aging
from jaxq.tune import tune_llm

EVAL_SEED_OFFSET = 7_000_001  # seeds of the final measurement: neither search draws them


def make_system(policy, args, seed):
    cost = hardware.roofline("rtx-4090", "llama-3.1-8b")
    costs = {name: getattr(cost, name) for name in (
        "iter_base", "iter_per_prefill_token", "iter_per_decode_seq", "iter_per_kv_token",
        "swap_per_token", "kv_bytes_per_token")}
    return LLMSystem(policy, jaxq.LognormalNoise(args.sigma), kv_capacity=cost.kv_capacity,
                     host_capacity=cost.kv_capacity, preemption="swap", seed=seed, **costs)


def workload(args):
    return WORKLOADS["azure-conversation"](rate=args.rate, max_tokens=args.max_model_len)


OBJECTIVES = ("latency_per_token_p99", "latency_p99", "ttft_p99")


def per_request(result, objective):
    """S + (R, N - warmup): the per-request quantity whose p99 is the objective."""
    w = result.warmup
    if objective == "ttft_p99":
        return result.ttft[..., w:]
    if objective == "latency_p99":
        return result.latency[..., w:]
    return result.latency[..., w:] / result.output_tokens[..., w:]


def p99_per_replica(result, objective):
    """(mean over replicas of each replica's p99, its standard error): S each."""
    per = np.nanpercentile(per_request(result, objective), 99, axis=-1)  # S + (R,)
    return per.mean(-1), per.std(-1, ddof=1) / np.sqrt(per.shape[-1])


WORKLOAD_OPTIONS = ("rate", "sigma", "max_model_len", "objective", "seed", "search_requests")
STAGE_OPTIONS = {  # what each stage's result depends on: a rerun that changes nothing of it reuses it
    "grid": WORKLOAD_OPTIONS + ("grid_c", "grid_aging", "search_replicas"),
    "es": WORKLOAD_OPTIONS + ("tune_replicas", "steps", "lr", "es_pairs", "aging_scale"),
}


def stage(args, name, compute):
    """compute()'s JSON-able result, cached in DIR/stage-NAME-HASH.json for the options it
    depends on (the eval stage: all of them)."""
    used = STAGE_OPTIONS.get(name, tuple(k for k in vars(args) if k != "out"))
    key = hashlib.sha256(json.dumps({k: getattr(args, k) for k in sorted(used)}).encode()
                         ).hexdigest()[:12]
    path = os.path.join(args.out, f"stage-{name}-{key}.json")
    if os.path.exists(path):
        print(f"{name}: reusing {path}", file=sys.stderr)
        with open(path) as f:
            return json.load(f)
    start = time.perf_counter()
    value = compute()
    write_atomic(path, json.dumps(value).encode())
    print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return value


def grid_stage(args):
    cs, ws = np.meshgrid(args.grid_c, args.grid_aging, indexing="ij")
    policy = Aging(jaxq.SPRPTLimited(jnp.asarray(cs.ravel())), jnp.asarray(ws.ravel()))
    r = simulate(make_system(policy, args, args.seed), workload(args),
                 requests=args.search_requests, replicas=args.search_replicas, key=args.seed,
                 on_overflow="ignore")
    return {"c": cs.ravel().tolist(), "aging": ws.ravel().tolist(),
            "objective": getattr(r, args.objective).tolist(),
            "latency_mean": r.latency_mean.tolist(),
            "valid": ((r.overflow == 0) & (r.unfinished == 0)).tolist()}


def es_stage(args):
    system = make_system(Aging(jaxq.SPRPTLimited(0.5), 10.0), args, args.seed)

    def progress(done, total):
        print(f"\res step {done}/{total}", end="", file=sys.stderr, flush=True)

    r = tune_llm(system, workload(args), ["c", "aging"], steps=args.steps,
                 learning_rate=args.lr, objective=args.objective,
                 scales={"aging": args.aging_scale}, requests=args.search_requests,
                 replicas=args.tune_replicas, es_pairs=args.es_pairs, eval_requests=2,
                 eval_replicas=1, key=args.seed, progress=progress)
    print(file=sys.stderr)
    return {"c": float(r.values["c"]), "aging": float(r.values["aging"]),
            "trace_objective": r.trace_objective.tolist(),
            "trace_c": r.trace_values["c"].tolist(),
            "trace_aging": r.trace_values["aging"].tolist(), "problems": r.problems,
            "seconds": r.seconds}


def eval_stage(args, grid, tuned):
    best = int(np.nanargmin(np.where(grid["valid"], grid["objective"], np.nan)))
    entries = [("fcfs", jaxq.FCFS(), ""), ("spjf", jaxq.SPJF(), ""),
               ("sprpt", jaxq.SPRPT(), ""), ("sprpt-limited", jaxq.SPRPTLimited(0.5), "c=0.5"),
               ("grid best", Aging(jaxq.SPRPTLimited(grid["c"][best]), grid["aging"][best]),
                f"c={grid['c'][best]:.3g} aging={grid['aging'][best]:.3g}"),
               ("tuned (es)", Aging(jaxq.SPRPTLimited(tuned["c"]), tuned["aging"]),
                f"c={tuned['c']:.3g} aging={tuned['aging']:.3g}")]
    rows = []
    for label, policy, params in entries:
        r = simulate(make_system(policy, args, args.seed + EVAL_SEED_OFFSET), workload(args),
                     requests=args.requests, replicas=args.replicas, key=args.seed + 1,
                     on_overflow="ignore")
        mean_p99, se_p99 = p99_per_replica(r, args.objective)
        rows.append({"policy": label, "parameters": params,
                     "objective": float(getattr(r, args.objective)),
                     "replica_p99": float(mean_p99), "replica_p99_stderr": float(se_p99),
                     "latency_p99": float(r.latency_p99),
                     "latency_mean": float(r.latency_mean),
                     "latency_stderr": float(r.latency_stderr),
                     "ttft_mean": float(r.ttft_mean),
                     "valid": bool(r.overflow == 0 and r.unfinished == 0)})
        print(f"eval {label}: {r.seconds:.0f} s", file=sys.stderr)
    return rows


COLUMNS = ("policy", "parameters", "objective", "replica_p99", "replica_p99_stderr",
           "latency_p99", "latency_mean", "latency_stderr", "ttft_mean", "valid")


def write_csv(path, columns, rows):
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row[c] if isinstance(row[c], (str, bool)) else repr(float(row[c]))
                         for c in columns])
    write_atomic(path, text.getvalue().encode())


def print_table(rows, args):
    print(f"azure-conversation at {args.rate:g} requests/s (context <= {args.max_model_len}), "
          f"swap, lognormal sigma {args.sigma:g}, rtx-4090 / llama-3.1-8b; {args.requests} "
          f"requests x {args.replicas} fresh replicas; seconds")
    print(f"objective: {args.objective} (pooled over replicas; 'replica p99': the mean of each "
          f"replica's, +- its standard error)")
    header = ("policy", "parameters", "objective", "replica p99", "+-", "lat p99", "lat mean",
              "+-", "ttft mean", "valid")
    fmt = lambda v: v if isinstance(v, str) else ("yes" if v else "NO") if isinstance(  # noqa
        v, bool) else f"{v:.4g}"
    table = [header] + [[fmt(row[c]) for c in COLUMNS] for row in rows]
    widths = [max(len(line[j]) for line in table) for j in range(len(header))]
    for line in table:
        print("  ".join(cell.rjust(w) for cell, w in zip(line, widths)))


def plot(args, grid, tuned, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return False
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 4))
    steps = np.arange(1, len(tuned["trace_objective"]) + 1)
    a.plot(steps, tuned["trace_objective"], marker=".")
    a.set(xlabel="ES step", ylabel=f"{args.objective} at the centre (that step's seeds)",
          title="objective seen by the optimiser")
    b.plot(steps, tuned["trace_c"], label="c")
    b.set(xlabel="ES step", ylabel="c")
    b2 = b.twinx()
    b2.plot(steps, tuned["trace_aging"], color="C1", label="aging")
    b2.set_ylabel("aging (tokens per second in system)")
    b.set_title("parameters")
    b.legend(loc="upper left")
    b2.legend(loc="upper right")
    cs, ws = np.unique(grid["c"]), np.unique(grid["aging"])
    z = np.asarray(grid["objective"]).reshape(len(cs), len(ws))
    im = c.imshow(z, origin="lower", aspect="auto", cmap="viridis")
    c.set(xticks=range(len(ws)), xticklabels=[f"{w:g}" for w in ws], yticks=range(len(cs)),
          yticklabels=[f"{v:g}" for v in cs], xlabel="aging", ylabel="c",
          title=f"grid: {args.objective} (search seeds)")
    fig.colorbar(im, ax=c)
    fig.suptitle(f"sprpt-limited + aging tuned for {args.objective}: azure-conversation "
                 f"{args.rate:g}/s, swap, sigma {args.sigma:g}")
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=120)
    write_atomic(path, image.getvalue())
    return True


def floats(text):
    return [float(v) for v in text.split(",")]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=2.4, help="requests/s")
    p.add_argument("--sigma", type=float, default=0.5, help="lognormal prediction noise")
    p.add_argument("--objective", default=OBJECTIVES[0], choices=OBJECTIVES)
    p.add_argument("--max-model-len", type=int, default=16_384)
    p.add_argument("--grid-c", type=floats, default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--grid-aging", type=floats, default=[0.0, 10.0, 20.0, 30.0, 50.0, 100.0])
    p.add_argument("--search-requests", type=int, default=1000,
                   help="requests per run of the grid and of each ES step")
    p.add_argument("--search-replicas", type=int, default=4, help="replicas of the grid")
    p.add_argument("--tune-replicas", type=int, default=2, help="replicas per ES point")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--es-pairs", type=int, default=4)
    p.add_argument("--aging-scale", type=float, default=20.0)
    p.add_argument("--requests", type=int, default=2000, help="requests per replica (eval)")
    p.add_argument("--replicas", type=int, default=8, help="fresh replicas (eval)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                               "out", "llm_tuning"))
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    grid = stage(args, "grid", lambda: grid_stage(args))
    tuned = stage(args, "es", lambda: es_stage(args))
    rows = stage(args, "eval", lambda: eval_stage(args, grid, tuned))
    write_csv(os.path.join(args.out, "llm_tuning.csv"), COLUMNS, rows)
    trace = [{"step": i + 1, "objective": o, "c": c, "aging": w} for i, (o, c, w) in
             enumerate(zip(tuned["trace_objective"], tuned["trace_c"], tuned["trace_aging"]))]
    write_csv(os.path.join(args.out, "llm_tuning_trace.csv"), ("step", "objective", "c", "aging"),
              trace)
    plotted = plot(args, grid, tuned, os.path.join(args.out, "llm_tuning.png"))
    print_table(rows, args)
    if tuned["problems"]:
        print(f"the ES runs dropped or left unfinished {tuned['problems']} requests",
              file=sys.stderr)
    print(f"wrote {args.out}/llm_tuning.csv{' and .png' if plotted else ''} in "
          f"{time.perf_counter() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
