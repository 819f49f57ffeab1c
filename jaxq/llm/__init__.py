"""The LLM inference engine simulator (in progress): workloads so far."""

from jaxq.llm.workloads import WORKLOADS, LLMWorkload, Trace, TraceError, read_trace

__all__ = ["WORKLOADS", "LLMWorkload", "Trace", "TraceError", "read_trace"]
