"""Tuning an LLM engine's scheduler for a tail objective with evolution strategies on the exact
engine (jaxq.tune.tune_llm), against the hand-written policies (fcfs, sjf-prompt, spjf, sprpt,
sprpt-limited with c = 0.5) and a grid search on the exact engine.

Setting: one RTX 4090 serving Llama-3.1-8B (jaxq.llm.hardware roofline costs and KV capacity,
42,127 tokens), the Azure conversation workload with a context limit of 16,384 tokens,
preemption by swap (host memory = GPU KV capacity), lognormal prediction noise sigma = 0.5.

Two rank families (--family):
* linear-prompt (default): rank = predicted remaining output tokens + w_prompt * prompt tokens
  (preemptive), w_prompt learned. sprpt is w_prompt = 0; sjf-prompt, its non-preemptive
  opposite, ranks by the prompt alone. The default objective for it is the p99 of TTFT at
  2.0 requests/s, which the prompt sets (a long prompt is a long prefill).
* sprpt-aging: sprpt-limited with an aging term (rank = predicted remaining - aging * seconds
  in system), c and aging learned; run it with --rate 2.4 --objective latency_per_token_p99.
  2.4/s is near swap's limit (about 2.6/s, experiments/llm_policies.py), where size-based
  policies cut the mean but lengthen the tail.

Objective (--objective): the p99 of TTFT, of latency per output token (latency / O) or of
latency. (p99 latency is set by the longest outputs' own decode time and is lowest under fcfs.)

Stages, each written atomically to --out and reused by a rerun with the same options:
1. grid: every grid point of the family on the search seeds (--search-requests x
   --search-replicas);
2. es: tune_llm from the family's start with --steps steps of --es-pairs antithetic pairs, each
   step on fresh seeds (--search-requests x --tune-replicas per point);
3. eval: the hand-written policies, the grid's best point and the tuned policy on seeds neither
   search used (--requests x --replicas), all on the same seeds; p99 is given pooled and as the
   mean of per-replica p99s with its standard error, and each policy's per-replica p99 minus the
   best hand-written policy's, paired by replica (mean and standard error).

    .venv/bin/python experiments/llm_tuning.py        # about 15 minutes on 2 cores

Writes DIR/llm_tuning.csv (the eval table), DIR/llm_tuning_trace.csv (the optimisation) and
DIR/llm_tuning.png (the optimisation and the grid; skipped without matplotlib) under --out DIR
(default experiments/out/llm_tuning-FAMILY), and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import itertools
import json
import os
import sys
import time
from typing import Callable

import jax.numpy as jnp
import numpy as np

import jaxq
from jaxq._files import write_atomic
from jaxq.llm import WORKLOADS, hardware
from jaxq.llm.simulate import LLMSystem, simulate
from jaxq.policies import Aging, SJFPrompt
from jaxq.tune import tune_llm

EVAL_SEED_OFFSET = 7_000_001  # seeds of the final measurement: neither search draws them


@dataclasses.dataclass(frozen=True)
class Family:
    """A rank family with its tuned parameters: policy(*values) for values of `names` (arrays
    broadcast into a batch of policies)."""

    names: tuple[str, ...]
    policy: Callable
    start: tuple[float, ...]  # where ES starts
    scales: dict  # tune_llm's step units
    grid: tuple[tuple[float, ...], ...]  # default grid axis per name
    rate: float  # default requests/s
    objective: str  # default objective


FAMILIES = {
    "linear-prompt": Family(
        names=("w_prompt",), policy=lambda w: jaxq.Linear(w_remaining=1.0, w_prompt=w),
        start=(0.0,), scales={}, grid=((0.0, 0.03, 0.1, 0.3, 1.0, 3.0),), rate=2.0,
        objective="ttft_p99"),
    "sprpt-aging": Family(
        names=("c", "aging"), policy=lambda c, w: Aging(jaxq.SPRPTLimited(c), w),
        start=(0.5, 10.0), scales={"aging": 20.0},
        grid=((0.0, 0.25, 0.5, 0.75, 1.0), (0.0, 10.0, 20.0, 30.0, 50.0, 100.0)), rate=2.4,
        objective="latency_per_token_p99"),
}
HAND_WRITTEN = (("fcfs", jaxq.FCFS(), ""), ("sjf-prompt", SJFPrompt(), ""),
                ("spjf", jaxq.SPJF(), ""), ("sprpt", jaxq.SPRPT(), ""),
                ("sprpt-limited", jaxq.SPRPTLimited(0.5), "c=0.5"))


def make_system(policy, args, seed):
    cost = hardware.roofline("rtx-4090", "llama-3.1-8b")
    costs = {name: getattr(cost, name) for name in (
        "iter_base", "iter_per_prefill_token", "iter_per_decode_seq", "iter_per_kv_token",
        "swap_per_token", "kv_bytes_per_token")}
    return LLMSystem(policy, jaxq.LognormalNoise(args.sigma), kv_capacity=cost.kv_capacity,
                     host_capacity=cost.kv_capacity, preemption="swap", seed=seed, **costs)


def workload(args):
    return WORKLOADS["azure-conversation"](rate=args.rate, max_tokens=args.max_model_len)


OBJECTIVES = ("ttft_p99", "latency_per_token_p99", "latency_p99")


def per_request(result, objective):
    """S + (R, N - warmup): the per-request quantity whose p99 is the objective."""
    w = result.warmup
    if objective == "ttft_p99":
        return result.ttft[..., w:]
    if objective == "latency_p99":
        return result.latency[..., w:]
    return result.latency[..., w:] / result.output_tokens[..., w:]


def p99_per_replica(result, objective):
    """S + (R,): each replica's p99."""
    return np.nanpercentile(per_request(result, objective), 99, axis=-1)


def mean_se(x):
    """(mean, standard error) over the last axis."""
    return x.mean(-1), x.std(-1, ddof=1) / np.sqrt(x.shape[-1])


WORKLOAD_OPTIONS = ("family", "rate", "sigma", "max_model_len", "objective", "seed",
                    "search_requests")
STAGE_OPTIONS = {  # what each stage's result depends on: a rerun that changes nothing of it reuses it
    "grid": WORKLOAD_OPTIONS + ("grid", "search_replicas"),
    "es": WORKLOAD_OPTIONS + ("tune_replicas", "steps", "lr", "es_pairs"),
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


def grid_stage(args, family):
    points = np.array(list(itertools.product(*args.grid)))  # (G, P)
    policy = family.policy(*(jnp.asarray(points[:, i]) for i in range(points.shape[1])))
    r = simulate(make_system(policy, args, args.seed), workload(args),
                 requests=args.search_requests, replicas=args.search_replicas, key=args.seed,
                 on_overflow="ignore")
    return {"points": points.tolist(), "objective": getattr(r, args.objective).tolist(),
            "latency_mean": r.latency_mean.tolist(),
            "valid": ((r.overflow == 0) & (r.unfinished == 0)).tolist()}


def es_stage(args, family):
    system = make_system(family.policy(*family.start), args, args.seed)

    def progress(done, total):
        print(f"\res step {done}/{total}", end="", file=sys.stderr, flush=True)

    r = tune_llm(system, workload(args), list(family.names), steps=args.steps,
                 learning_rate=args.lr, objective=args.objective, scales=family.scales,
                 requests=args.search_requests, replicas=args.tune_replicas,
                 es_pairs=args.es_pairs, eval_requests=2, eval_replicas=1, key=args.seed,
                 progress=progress)
    print(file=sys.stderr)
    return {"values": [float(r.values[n]) for n in family.names],
            "trace_objective": r.trace_objective.tolist(),
            "trace_values": [r.trace_values[n].tolist() for n in family.names],
            "problems": r.problems, "seconds": r.seconds}


def describe(family, values):
    return " ".join(f"{n}={v:.3g}" for n, v in zip(family.names, values))


def eval_stage(args, family, grid, tuned):
    best = int(np.nanargmin(np.where(grid["valid"], grid["objective"], np.nan)))
    entries = [(label, policy, params, True) for label, policy, params in HAND_WRITTEN] + [
        ("grid best", family.policy(*grid["points"][best]),
         describe(family, grid["points"][best]), False),
        ("tuned (es)", family.policy(*tuned["values"]), describe(family, tuned["values"]),
         False)]
    rows, per = [], []
    for label, policy, params, hand in entries:
        r = simulate(make_system(policy, args, args.seed + EVAL_SEED_OFFSET), workload(args),
                     requests=args.requests, replicas=args.replicas, key=args.seed + 1,
                     on_overflow="ignore")
        per.append(p99_per_replica(r, args.objective))
        mean_p99, se_p99 = mean_se(per[-1])
        rows.append({"policy": label, "parameters": params, "hand_written": hand,
                     "objective": float(getattr(r, args.objective)),
                     "replica_p99": float(mean_p99), "replica_p99_stderr": float(se_p99),
                     "ttft_p99": float(r.ttft_p99),
                     "latency_per_token_p99": float(r.latency_per_token_p99),
                     "latency_p99": float(r.latency_p99),
                     "latency_mean": float(r.latency_mean),
                     "latency_stderr": float(r.latency_stderr),
                     "valid": bool(r.overflow == 0 and r.unfinished == 0)})
        print(f"eval {label}: {r.seconds:.0f} s", file=sys.stderr)
    # Every policy ran on the same requests: compare replica by replica with the best
    # hand-written policy (paired differences cancel most of the replica-to-replica spread).
    ref = min((i for i, row in enumerate(rows) if row["hand_written"]),
              key=lambda i: rows[i]["replica_p99"])
    for row, p in zip(rows, per):
        diff, se = mean_se(p - per[ref])
        row.update(vs_best_hand_written=float(diff), vs_best_hand_written_stderr=float(se))
    return rows


COLUMNS = ("policy", "parameters", "objective", "replica_p99", "replica_p99_stderr",
           "vs_best_hand_written", "vs_best_hand_written_stderr", "ttft_p99",
           "latency_per_token_p99", "latency_p99", "latency_mean", "latency_stderr", "valid")


def write_csv(path, columns, rows):
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row[c] if isinstance(row[c], (str, int)) else repr(float(row[c]))
                         for c in columns])
    write_atomic(path, text.getvalue().encode())


def print_table(rows, args):
    print(f"azure-conversation at {args.rate:g} requests/s (context <= {args.max_model_len}), "
          f"swap, lognormal sigma {args.sigma:g}, rtx-4090 / llama-3.1-8b; {args.requests} "
          f"requests x {args.replicas} fresh replicas, the same for every policy; seconds")
    print(f"objective: {args.objective} (pooled over replicas; 'replica p99': the mean of each "
          f"replica's, +- its standard error; 'vs best': minus the best hand-written policy's, "
          f"paired by replica)")
    header = ("policy", "parameters", "objective", "replica p99", "+-", "vs best", "+-",
              "ttft p99", "lat/tok p99", "lat p99", "lat mean", "+-", "valid")
    fmt = lambda v: v if isinstance(v, str) else ("yes" if v else "NO") if isinstance(  # noqa
        v, bool) else f"{v:.4g}"
    table = [header] + [[fmt(row[c]) for c in COLUMNS] for row in rows]
    widths = [max(len(line[j]) for line in table) for j in range(len(header))]
    for line in table:
        print("  ".join(cell.rjust(w) for cell, w in zip(line, widths)))


def plot(args, family, grid, tuned, path):
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
    axes = [b] + ([b.twinx()] if len(family.names) > 1 else [])
    for i, (ax, name) in enumerate(zip(axes, family.names)):
        ax.plot(steps, tuned["trace_values"][i], color=f"C{i}", label=name)
        ax.set_ylabel(name)
        ax.legend(loc="upper left" if i == 0 else "upper right")
    b.set(xlabel="ES step", title="parameters")
    points, z = np.asarray(grid["points"]), np.asarray(grid["objective"])
    if len(family.names) == 1:
        c.plot(points[:, 0], z, marker="o")
        c.set_xscale("symlog", linthresh=0.03)  # the grid spans 0 and decades above it
        c.set(xlabel=family.names[0], ylabel=args.objective)
    else:
        xs, ys = np.unique(points[:, 0]), np.unique(points[:, 1])
        im = c.imshow(z.reshape(len(xs), len(ys)), origin="lower", aspect="auto",
                      cmap="viridis")
        c.set(xticks=range(len(ys)), xticklabels=[f"{v:g}" for v in ys],
              yticks=range(len(xs)), yticklabels=[f"{v:g}" for v in xs],
              xlabel=family.names[1], ylabel=family.names[0])
        fig.colorbar(im, ax=c)
    c.set_title(f"grid: {args.objective} (search seeds)")
    fig.suptitle(f"{args.family} tuned for {args.objective}: azure-conversation "
                 f"{args.rate:g}/s, swap, sigma {args.sigma:g}")
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, format="png", dpi=120)
    write_atomic(path, image.getvalue())
    return True


def floats(text):
    return tuple(float(v) for v in text.split(","))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", default="linear-prompt", choices=tuple(FAMILIES))
    p.add_argument("--rate", type=float, help="requests/s (default: the family's)")
    p.add_argument("--sigma", type=float, default=0.5, help="lognormal prediction noise")
    p.add_argument("--objective", choices=OBJECTIVES, help="default: the family's")
    p.add_argument("--max-model-len", type=int, default=16_384)
    p.add_argument("--grid", type=floats, action="append",
                   help="grid values of one tuned parameter, comma-separated; once per "
                        "parameter, in the family's order (default: the family's)")
    p.add_argument("--search-requests", type=int, default=1000,
                   help="requests per run of the grid and of each ES step")
    p.add_argument("--search-replicas", type=int, default=4, help="replicas of the grid")
    p.add_argument("--tune-replicas", type=int, default=2, help="replicas per ES point")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--es-pairs", type=int, default=4)
    p.add_argument("--requests", type=int, default=2000, help="requests per replica (eval)")
    p.add_argument("--replicas", type=int, default=8, help="fresh replicas (eval)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="default: experiments/out/llm_tuning-FAMILY")
    args = p.parse_args(argv)
    family = FAMILIES[args.family]
    args.rate = family.rate if args.rate is None else args.rate
    args.objective = args.objective or family.objective
    args.grid = list(args.grid or family.grid)
    if len(args.grid) != len(family.names):
        p.error(f"--grid: give one list per parameter of {args.family}: {family.names}")
    args.out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "out",
                                        f"llm_tuning-{args.family}")
    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    grid = stage(args, "grid", lambda: grid_stage(args, family))
    tuned = stage(args, "es", lambda: es_stage(args, family))
    rows = stage(args, "eval", lambda: eval_stage(args, family, grid, tuned))
    write_csv(os.path.join(args.out, "llm_tuning.csv"), COLUMNS, rows)
    trace = [{"step": i + 1, "objective": o, **dict(zip(family.names, values))}
             for i, (o, *values) in enumerate(zip(tuned["trace_objective"],
                                                  *tuned["trace_values"]))]
    write_csv(os.path.join(args.out, "llm_tuning_trace.csv"),
              ("step", "objective") + family.names, trace)
    plotted = plot(args, family, grid, tuned, os.path.join(args.out, "llm_tuning.png"))
    print_table(rows, args)
    if tuned["problems"]:
        print(f"the ES runs dropped or left unfinished {tuned['problems']} requests",
              file=sys.stderr)
    print(f"wrote {args.out}/llm_tuning.csv{' and .png' if plotted else ''} in "
          f"{time.perf_counter() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
