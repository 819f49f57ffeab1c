"""The LLM inference engine: iteration-level batching of requests whose output length is
predicted, under a hard KV-cache memory limit, with preemption by recompute or swap."""

import dataclasses

from jaxq.llm.cluster import ROUTERS, Router
from jaxq.llm.hardware import GPUS, MODELS, CostModel, roofline
from jaxq.llm.simulate import LLMResult, LLMSystem, simulate
from jaxq.llm.simulate_cluster import Cluster
from jaxq.llm.simulate_disaggregated import Disaggregated
from jaxq.llm.workloads import (WORKLOADS, LLMWorkload, ToolCalls, Trace, TraceError,
                                read_trace)


def costs(gpu: str, model: str, **options) -> dict:
    """The roofline's cost coefficients and KV capacity as `LLMSystem` keyword arguments."""
    return dataclasses.asdict(roofline(gpu, model, **options))


__all__ = ["Cluster", "Disaggregated", "GPUS", "MODELS", "CostModel", "LLMResult", "LLMSystem",
           "LLMWorkload", "ROUTERS", "Router", "ToolCalls", "Trace", "TraceError", "WORKLOADS",
           "costs", "read_trace", "roofline", "simulate"]
