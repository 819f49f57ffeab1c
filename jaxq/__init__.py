"""jaxq: vectorized, exact simulation of scheduling with predicted job sizes, in JAX."""

from jaxq.arrivals import Poisson, Renewal
from jaxq.dispatch import Dispatch
from jaxq.distributions import (SERVICES, BoundedPareto, Deterministic, Empirical, Exponential,
                                Hyperexponential, Lognormal, Uniform, Weibull)
from jaxq.policies import (FCFS, LAS, POLICIES, PSJF, PSPJF, SJF, SPJF, SPRPT, SRPT,
                           DelayPredict, Linear, OneBit, SkipPredict, SPRPTBounce,
                           SPRPTLimited)
from jaxq.prediction_cost import PredictionCost
from jaxq.predictors import PREDICTORS, ExponentialNoise, LognormalNoise, Perfect, UniformNoise
from jaxq.simulate import CapacityError, Result, simulate, trace, trace_dispatch
from jaxq.system import System

__version__ = "0.1.0"

__all__ = [
    "BoundedPareto", "CapacityError", "DelayPredict", "Deterministic", "Dispatch", "Empirical",
    "Exponential",
    "ExponentialNoise", "FCFS", "Hyperexponential", "LAS", "Linear", "Lognormal",
    "LognormalNoise", "OneBit", "POLICIES", "PREDICTORS", "PSJF", "PSPJF", "Perfect", "Poisson",
    "PredictionCost", "Renewal", "Result", "SERVICES", "SJF", "SPJF", "SPRPT", "SPRPTBounce",
    "SPRPTLimited",
    "SRPT", "SkipPredict", "System",
    "Uniform", "UniformNoise", "Weibull", "simulate", "trace", "trace_dispatch",
    "__version__",
]
