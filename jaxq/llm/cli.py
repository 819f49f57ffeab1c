"""`jaxq llm`: replay a trace or run a synthetic workload through the LLM engine.

Iteration costs and KV capacity come from the roofline of --gpu and --model (default rtx-4090
and llama-3.1-8b); any explicit --iter-* or --kv-capacity option overrides the preset's value.
"""

from __future__ import annotations

import csv
import io
import math
import sys

from jaxq._files import write_atomic
from jaxq.cli import LINEAR_WEIGHTS, PREDICTOR_NAMES, build_policy, build_predictor
from jaxq.llm.cluster import ROUTERS

LLM_POLICY_NAMES = ("fcfs", "sjf-prompt", "spjf", "pspjf", "sprpt", "sprpt-bounce",
                    "sprpt-limited", "onebit", "linear", "las", "sjf", "psjf", "srpt")
JSON_KEYS = ("ttft_mean", "ttft_p50", "ttft_p90", "ttft_p99", "tpot_mean", "tpot_p50",
             "tpot_p90", "tpot_p99", "latency_mean", "latency_p50", "latency_p90", "latency_p99",
             "latency_per_token_mean", "latency_per_token_p50", "latency_per_token_p90",
             "latency_per_token_p99", "ttft_stderr", "latency_stderr", "request_throughput",
             "token_throughput", "goodput", "mean_kv_use", "peak_kv_tokens", "preemptions",
             "recomputed_tokens", "prefix_hit_tokens", "swapped_tokens", "swapped_bytes",
             "mean_batch_size", "mean_queue_length", "iterations", "completed", "overflow",
             "unfinished", "pauses", "discarded_tokens", "paused_kv_token_seconds")
_COST_OPTIONS = ("iter_base", "iter_per_prefill_token", "iter_per_decode_seq",
                 "iter_per_kv_token", "swap_per_token")


def add_llm_parser(sub):
    p = sub.add_parser("llm", help="simulate an LLM inference engine on a trace or workload")
    add_llm_options(p)
    p.add_argument("--per-request", metavar="OUT.csv",
                   help="write arrival_time,first_token_time,finish_time,preemptions per request")


def add_llm_options(p):
    """The options of `jaxq llm` (and of `jaxq sweep llm`), --per-request aside."""
    from jaxq.llm.engine import ADMISSION_MODES, PAUSE_KV_MODES, PREEMPTION_MODES
    from jaxq.llm.workloads import WORKLOADS

    w = p.add_argument_group("requests (a trace, or a synthetic workload)")
    w.add_argument("--trace", help="CSV (arrival_time,prompt_tokens,output_tokens"
                                   "[,predicted_output_tokens]) or vLLM benchmark JSONL")
    w.add_argument("--workload", help=f"synthetic preset: {', '.join(WORKLOADS)}")
    w.add_argument("--rate", type=float, default=None, help="requests/s of the workload")
    w.add_argument("--requests", type=int, default=2000, help="requests per replica (workload)")
    w.add_argument("--max-model-len", type=int, default=None,
                   help="workload: context limit; prompts and outputs are cut so P + O <= it")
    w.add_argument("--tool-calls", type=int, default=0,
                   help="workload: tool calls per request at most, each at a token drawn "
                        "uniformly from the output (default 0: none)")
    w.add_argument("--tool-call-probability", type=float, default=1.0,
                   help="the chance that each of those calls happens")
    w.add_argument("--tool-call-seconds", type=float, default=1.0,
                   help="mean call time (exponential), predicted by --predictor's noise")
    s = p.add_argument_group("scheduler")
    s.add_argument("--policy", default="fcfs", help=f"one of: {', '.join(LLM_POLICY_NAMES)}")
    s.add_argument("--c", type=float, default=0.5, help="sprpt-limited: c in [0, 1]")
    s.add_argument("--threshold", type=float, default=256.0,
                   help="onebit: short iff predicted output < threshold tokens")
    s.add_argument("--preemptive", action="store_true", help="onebit / linear: preemptive")
    s.add_argument("--weights", default=None,
                   help=f"linear: {','.join(LINEAR_WEIGHTS)} (4 to 7 numbers; default 0,1,0,0)")
    s.add_argument("--aging", type=float, default=0.0,
                   help="subtract this times the time in system (s) from the rank")
    s.add_argument("--predictor", default="perfect", help=f"one of: {', '.join(PREDICTOR_NAMES)}")
    s.add_argument("--sigma", type=float, default=0.5, help="lognormal predictor noise")
    s.add_argument("--alpha", type=float, default=0.5, help="uniform predictor noise")
    s.add_argument("--refine-every", type=int, default=None,
                   help="redraw the prediction every K output tokens (noise shrinking)")
    s.add_argument("--preemption", default="recompute", help=" or ".join(PREEMPTION_MODES))
    s.add_argument("--admission", default="optimistic", help=", ".join(ADMISSION_MODES))
    s.add_argument("--pause-kv", default="keep",
                   help=f"a request's KV while it waits for a tool call: "
                        f"{', '.join(PAUSE_KV_MODES)} (auto: keep iff predicted seconds x KV "
                        f"tokens <= --keep-seconds x free KV tokens)")
    s.add_argument("--keep-seconds", type=float, default=1.0, help="--pause-kv auto's bound")
    s.add_argument("--prefix-cache", action="store_true",
                   help="keep KV dropped by recompute until its blocks are reused (vLLM's "
                        "prefix caching)")
    e = p.add_argument_group("engine limits")
    e.add_argument("--kv-capacity", type=int, default=None,
                   help="KV-cache tokens (default: from --gpu and --model)")
    e.add_argument("--block-size", type=int, default=16)
    e.add_argument("--max-batch", type=int, default=256, help="most sequences per iteration")
    e.add_argument("--max-batched-tokens", type=int, default=2048, help="token budget")
    e.add_argument("--host-capacity", type=int, default=None,
                   help="host tokens for swapped KV (default: as many as the GPU holds)")
    e.add_argument("--max-output", type=int, default=4096,
                   help="reserve-max: output tokens reserved per request")
    c = p.add_argument_group("iteration cost (seconds), or a roofline preset")
    for name in _COST_OPTIONS:
        c.add_argument("--" + name.replace("_", "-"), type=float, default=None)
    c.add_argument("--gpu", default="rtx-4090")
    c.add_argument("--model", default="llama-3.1-8b")
    c.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    c.add_argument("--tensor-parallel", type=int, default=1)
    k = p.add_argument_group("cluster (several instances behind a router)")
    k.add_argument("--instances", type=int, default=None,
                   help="engine instances behind a router (default: one engine, no router)")
    k.add_argument("--router", default="round-robin", help=f"one of: {', '.join(ROUTERS)}")
    k.add_argument("--d", type=int, default=0,
                   help="least-* routers: compare D instances sampled at random (power-of-d; "
                        "default 0: all of them)")
    k.add_argument("--instance-gpus", default=None, metavar="GPU,GPU,...",
                   help="one GPU preset per instance (heterogeneous instances; their costs "
                        "and KV capacity from the roofline with --model)")
    d = p.add_argument_group("prefill/decode disaggregation (two pools joined by a KV link)")
    d.add_argument("--prefill-instances", type=int, default=0,
                   help="prefill pool size (with --decode-instances; --router routes to it; "
                        "default 0: no disaggregation)")
    d.add_argument("--decode-instances", type=int, default=0, help="decode pool size")
    d.add_argument("--decode-router", default=None,
                   help="the decode pool's router (default: --router; --d applies to both)")
    d.add_argument("--kv-link-bandwidth", type=float, default=math.inf,
                   help="GB/s of the link a request's prompt KV crosses (default: inf, free)")
    d.add_argument("--prefill-gpu", default=None, help="the prefill pool's GPU (default: --gpu)")
    d.add_argument("--decode-gpu", default=None, help="the decode pool's GPU (default: --gpu)")
    r = p.add_argument_group("run")
    r.add_argument("--replicas", type=int, default=1)
    r.add_argument("--seed", type=int, default=0,
                   help="the configuration's seed: equal seeds see the same requests")
    r.add_argument("--slots", type=int, default=None,
                   help="requests the engine can hold (default: the trace's count, or 1024)")
    r.add_argument("--warmup", type=int, default=None,
                   help="requests left out of the metrics (default: 0 for a trace, 10%%)")
    r.add_argument("--ttft-slo", type=float, default=math.inf, help="goodput: TTFT bound (s)")
    r.add_argument("--tpot-slo", type=float, default=math.inf, help="goodput: TPOT bound (s)")
    r.add_argument("--max-iterations", type=int, default=None,
                   help="iterations per configuration after which it stops, finished or not "
                        "(unfinished requests are counted; default: 20 times the tokens of all "
                        "requests)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def build_llm_system(args):
    """(LLMSystem, or Cluster with --instances or --instance-gpus; workload) from parsed
    options."""
    from jaxq._checks import check_choice, check_count
    from jaxq.llm.cluster import Router
    from jaxq.llm.simulate_cluster import Cluster
    from jaxq.llm.workloads import WORKLOADS, read_trace

    if (args.trace is None) == (args.workload is None):
        raise ValueError("give exactly one of --trace FILE and --workload NAME")
    if args.trace is not None:
        workload = read_trace(args.trace)
    else:
        check_choice("workload", args.workload, tuple(WORKLOADS))
        if args.rate is None and args.workload != "azure-conversation":
            raise ValueError(f"--workload {args.workload} needs --rate (requests/s)")
        rate = {} if args.rate is None else {"rate": args.rate}
        workload = WORKLOADS[args.workload](**rate, max_tokens=args.max_model_len,
                                            tool_calls=tool_calls(args.tool_calls,
                                                                  args.tool_call_probability,
                                                                  args.tool_call_seconds))
    check_choice("predictor", args.predictor, PREDICTOR_NAMES)
    policy, predictor = build_policy(args, LLM_POLICY_NAMES, LINEAR_WEIGHTS), build_predictor(args)
    if args.prefill_instances or args.decode_instances:
        return _disaggregated(args, policy, predictor), workload
    if args.kv_link_bandwidth != math.inf:
        raise ValueError("--kv-link-bandwidth applies to disaggregation: give "
                         "--prefill-instances and --decode-instances too")
    if args.instances is None and args.instance_gpus is None:
        return _instance(args, args.gpu, policy, predictor), workload
    gpus = [args.gpu] if args.instance_gpus is None else args.instance_gpus.split(",")
    count = len(gpus) if args.instances is None else args.instances
    check_count("instances", count, 1)
    if len(gpus) > 1 and len(gpus) != count:
        raise ValueError(f"--instance-gpus names {len(gpus)} GPUs; --instances must equal that "
                         f"or be left out, got {count}")
    systems = [_instance(args, gpu, policy, predictor) for gpu in gpus]
    check_count("d", args.d, 0)
    router = Router(args.router, args.d or None)
    return Cluster(systems * (count // len(systems)), router), workload


def tool_calls(calls: int, probability: float, seconds: float):
    """The workload's ToolCalls from --tool-calls, --tool-call-probability and
    --tool-call-seconds (None without calls)."""
    from jaxq._checks import check_count, check_range
    from jaxq.distributions import Exponential
    from jaxq.llm.workloads import ToolCalls

    check_count("tool_calls", calls, 0)
    if not calls:
        return None
    check_range("tool_call_probability", probability, low=0.0, high=1.0)
    check_range("tool_call_seconds", seconds, low=0.0, low_open=True)
    return ToolCalls(calls, probability, Exponential(seconds))


def _disaggregated(args, policy, predictor):
    from jaxq._checks import check_count
    from jaxq.llm.cluster import Router
    from jaxq.llm.simulate_disaggregated import Disaggregated

    check_count("prefill_instances", args.prefill_instances, 1)
    check_count("decode_instances", args.decode_instances, 1)
    if args.instance_gpus is not None:
        raise ValueError("--instance-gpus describes colocated instances; with "
                         "--prefill-instances use --prefill-gpu and --decode-gpu")
    total = args.prefill_instances + args.decode_instances
    if args.instances is not None and args.instances != total:
        raise ValueError(f"--instances ({args.instances}) must equal --prefill-instances + "
                         f"--decode-instances ({total}), or be left out")
    check_count("d", args.d, 0)
    prefill = _instance(args, args.prefill_gpu or args.gpu, policy, predictor)
    decode = _instance(args, args.decode_gpu or args.gpu, policy, predictor)
    return Disaggregated(prefill, decode, prefill_instances=args.prefill_instances,
                         decode_instances=args.decode_instances,
                         router=Router(args.router, args.d or None),
                         decode_router=Router(args.decode_router or args.router, args.d or None),
                         kv_link_bandwidth=args.kv_link_bandwidth)


def _instance(args, gpu, policy, predictor):
    """One engine's LLMSystem: `gpu`'s roofline with --model, explicit options overriding it."""
    from jaxq.llm import hardware
    from jaxq.llm.simulate import LLMSystem

    cost = hardware.roofline(hardware.gpu(gpu), hardware.model(args.model),
                             tensor_parallel=args.tensor_parallel,
                             gpu_memory_utilization=args.gpu_memory_utilization)
    coefficients = {name: getattr(cost, name) if getattr(args, name) is None
                    else getattr(args, name) for name in _COST_OPTIONS}
    kv = cost.kv_capacity if args.kv_capacity is None else args.kv_capacity
    return LLMSystem(
        policy, predictor, kv_capacity=kv, block_size=args.block_size, max_seqs=args.max_batch,
        max_batched_tokens=args.max_batched_tokens,
        host_capacity=kv if args.host_capacity is None else args.host_capacity,
        max_output=args.max_output,
        refine_every=1 if args.refine_every is None else args.refine_every,
        refine=args.refine_every is not None, kv_bytes_per_token=cost.kv_bytes_per_token,
        seed=args.seed, preemption=args.preemption, admission=args.admission,
        prefix_cache=args.prefix_cache, pause_kv=args.pause_kv, keep_seconds=args.keep_seconds,
        **coefficients)


def cmd_llm(args) -> dict:
    from jaxq.llm.simulate import simulate
    from jaxq.llm.simulate_cluster import Cluster
    from jaxq.llm.simulate_disaggregated import Disaggregated
    from jaxq.llm.workloads import Trace

    system, workload = build_llm_system(args)
    is_trace = isinstance(workload, Trace)
    progress = None
    if not args.json and sys.stderr.isatty():
        def progress(done, total):
            print(f"\rrequests finished {done}/{total}", end="", file=sys.stderr, flush=True)
    result = simulate(system, workload, **simulate_options(args, is_trace), key=0,
                      progress=progress)
    if progress:
        print(file=sys.stderr)
    if args.per_request:
        # A trace's own float64 times, not the engine's float32 gaps added up again.
        arrival = workload.arrival_time if is_trace else result.arrival_time[0]
        _write_per_request(args.per_request, result, arrival)
    out = {"policy": args.policy, "predictor": args.predictor, "preemption": args.preemption,
           "admission": args.admission, "prefix_cache": args.prefix_cache}
    if args.tool_calls:
        out.update(tool_calls=args.tool_calls, pause_kv=args.pause_kv,
                   keep_seconds=args.keep_seconds)
    if isinstance(system, (Cluster, Disaggregated)):
        if isinstance(system, Cluster):
            systems = system.systems
            out.update(instances=system.instances, router=args.router, d=args.d or None,
                       instance_gpus=args.instance_gpus)
        else:
            systems = system.prefill + system.decode
            out.update(prefill_instances=len(system.prefill),
                       decode_instances=len(system.decode), router=args.router,
                       decode_router=args.decode_router or args.router, d=args.d or None,
                       kv_link_bandwidth=args.kv_link_bandwidth,
                       prefill_gpu=args.prefill_gpu or args.gpu,
                       decode_gpu=args.decode_gpu or args.gpu)
        out["kv_capacity"] = [int(s.kv_capacity) for s in systems]
        out.update({name: [float(getattr(s, name)) for s in systems] for name in _COST_OPTIONS})
        out["instance_share"] = result.instance_share.tolist()
    else:
        out["kv_capacity"] = int(system.kv_capacity)
        out.update({name: float(getattr(system, name)) for name in _COST_OPTIONS})
    out.update(llm_metrics(result))
    out.update(replicas=args.replicas, seed=args.seed, seconds=result.seconds)
    return out


def simulate_options(args, is_trace: bool) -> dict:
    """The keyword arguments of jaxq.llm.simulate that the options set (all static)."""
    options = dict(requests=None if is_trace else args.requests, replicas=args.replicas,
                   slots=args.slots, warmup=args.warmup, ttft_slo=args.ttft_slo,
                   tpot_slo=args.tpot_slo)
    if args.max_iterations is not None:  # absent by default: sweeps' stored options unchanged
        options["max_iterations"] = args.max_iterations
    return options


def llm_metrics(result, index=()) -> dict:
    """The --json metrics of one configuration of an LLMResult."""
    metrics = result.to_dict(index)
    return {k: metrics[k] for k in JSON_KEYS}


def _write_per_request(path, result, arrival):
    """Replica 0's requests in trace order, on the trace's clock (with a cluster, the instance
    each went to); written atomically."""
    first = arrival + result.ttft[0]
    finish = arrival + result.latency[0]
    preemptions = result.request_preemptions[0]
    cluster = result.instance is not None
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["arrival_time", "first_token_time", "finish_time", "preemptions"]
                    + (["instance"] if cluster else []))
    for i, row in enumerate(zip(arrival, first, finish, preemptions)):
        writer.writerow([repr(float(row[0])), repr(float(row[1])), repr(float(row[2])),
                         int(row[3])] + ([int(result.instance[0, i])] if cluster else []))
    write_atomic(path, text.getvalue().encode())
