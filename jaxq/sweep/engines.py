"""What the sweep layer needs from each engine: its options, one configuration built from them,
and one batched call over configurations that share everything static.

The sweep never reaches inside an engine: it builds the same objects as `jaxq queue` and
`jaxq llm` do from the same options (jaxq.cli, jaxq.llm.cli), stacks configurations whose pytrees
have one structure, and calls the engine's public `simulate` once per stack.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from jaxq.sweep.memo import MemoByReads


class QueueEngine:
    name = "queue"
    latencies = False  # run() returns no per-request latencies

    @staticmethod
    def footprint(args) -> int:
        """Rough bytes of one configuration in a call: every replica's slots, a chunk of sampled
        jobs and the response-time histogram, times 4 for temporaries."""
        return 4 * args.replicas * (args.capacity * 96 + 1024 * 32 + 2000 * 16)

    @staticmethod
    def add_options(parser: argparse.ArgumentParser):
        from jaxq.cli import add_queue_options

        add_queue_options(parser)

    @staticmethod
    def builder():
        """build(args) -> (one configuration's System, the static options its call needs). Its
        parts are built once per distinct value of the options they read (most points of a grid
        share them)."""
        from jaxq.cli import build_model, build_system, simulate_options

        model = MemoByReads(build_model)

        def build(args):
            return build_system(args, model), tuple(sorted(simulate_options(args).items()))

        return build

    @staticmethod
    def run(system, static: tuple) -> tuple[list[dict], None]:
        """(metrics of each configuration of a stacked System (axis 0), no per-request data)."""
        import jaxq
        from jaxq.cli import queue_metrics

        result = jaxq.simulate(system, **dict(static), key=0, on_overflow="ignore")
        return [queue_metrics(result, i) for i in range(result.mean_response_time.shape[0])], None


class LLMEngine:
    name = "llm"
    latencies = True

    @staticmethod
    def footprint(args) -> int:
        """Rough bytes of one configuration in a call: every replica's requests and slots (per
        instance of a cluster), times 4 for temporaries."""
        instances = (args.prefill_instances + args.decode_instances
                     or args.instances or len((args.instance_gpus or "").split(",")))
        return 4 * args.replicas * instances * (args.requests * 64 + (args.slots or 1024) * 96)

    @staticmethod
    def add_options(parser: argparse.ArgumentParser):
        from jaxq.llm.cli import add_llm_options

        add_llm_options(parser)

    @staticmethod
    def builder():
        return LLMEngine.build

    @staticmethod
    def build(args):
        """(one configuration's LLMSystem, the static options its call needs: the workload's
        and simulate's)."""
        from jaxq.llm.cli import build_llm_system, simulate_options
        from jaxq.llm.workloads import Trace

        system, workload = build_llm_system(args)
        # Record the values the preset resolved (the row then says what ran); with
        # heterogeneous instances, the GPU options say it.
        one = _one_instance(system, args)
        if one is not None:
            args.kv_capacity = int(one.kv_capacity)
            args.host_capacity = int(one.host_capacity)
            for name in ("iter_base", "iter_per_prefill_token", "iter_per_decode_seq",
                         "iter_per_kv_token", "swap_per_token"):
                setattr(args, name, float(getattr(one, name)))
        options = simulate_options(args, isinstance(workload, Trace))
        # The workload is static: it is sampled for the whole call.
        requests = (args.trace, args.workload, args.rate, args.requests, args.max_model_len,
                    (args.tool_calls, args.tool_call_probability, args.tool_call_seconds))
        return system, (requests, tuple(sorted(options.items())))

    @staticmethod
    def run(system, static: tuple) -> tuple[list[dict], list[np.ndarray]]:
        """(metrics of each configuration, each one's measured requests' latencies (R * M,)
        seconds: replicas one after another, NaN for a request that did not finish)."""
        from jaxq.llm.cli import llm_metrics, tool_calls
        from jaxq.llm.simulate import simulate
        from jaxq.llm.workloads import WORKLOADS, read_trace

        (trace, workload, rate, _, max_model_len, calls), options = static
        if trace is not None:
            requests = read_trace(trace)
        else:
            requests = WORKLOADS[workload](**({} if rate is None else {"rate": rate}),
                                           max_tokens=max_model_len,
                                           tool_calls=tool_calls(*calls))
        result = simulate(system, requests, **dict(options), key=0, on_overflow="ignore")
        configs = range(result.ttft_mean.shape[0])
        return ([llm_metrics(result, i) for i in configs],
                [np.asarray(result.latency[i, :, result.warmup:], np.float32).ravel()
                 for i in configs])


def _one_instance(system, args):
    """The LLMSystem every instance of `system` is (None when they differ)."""
    from jaxq.llm.simulate_cluster import Cluster
    from jaxq.llm.simulate_disaggregated import Disaggregated

    if isinstance(system, Cluster):
        return system.systems[0] if args.instance_gpus is None else None
    if isinstance(system, Disaggregated):
        same = (args.prefill_gpu or args.gpu) == (args.decode_gpu or args.gpu)
        return system.prefill[0] if same else None
    return system


ENGINES = {"queue": QueueEngine, "llm": LLMEngine}


def stack(systems: list):
    """One batched pytree from configurations of one structure (leaves stacked on axis 0, on
    the host: one transfer per leaf, not one per configuration)."""
    return jax.tree_util.tree_map(lambda *xs: jnp.asarray(np.stack([np.asarray(x) for x in xs])),
                                  *systems)


def structure(system) -> tuple:
    """What must be equal for two configurations to share a call: the pytree's structure (its
    static fields included) and every leaf's shape and dtype."""
    leaves, treedef = jax.tree_util.tree_flatten(system)
    return treedef, tuple((np.shape(x), getattr(x, "dtype", None) or np.result_type(x))
                          for x in leaves)
