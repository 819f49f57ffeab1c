"""`jaxq demo`: every policy at several loads, simulation beside exact theory.

M/M/1 with exponential predictions (y | x ~ Exp with mean x), the classic setting of scheduling
with predictions. Each policy is one compiled program run over all loads and replicas at once.
"""

from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np

import jaxq
from jaxq import theory

LOADS = (0.5, 0.7, 0.9)


def demo_policies():
    return [jaxq.FCFS(), jaxq.LAS(), jaxq.SJF(), jaxq.PSJF(), jaxq.SRPT(), jaxq.SPJF(),
            jaxq.PSPJF(), jaxq.SPRPT(), jaxq.SPRPTLimited(0.5), jaxq.OneBit(1.0, False),
            jaxq.OneBit(1.0, True)]


def label(policy) -> str:
    if isinstance(policy, jaxq.SPRPTLimited):
        return f"sprpt-limited c={float(policy.c):g}"
    if isinstance(policy, jaxq.OneBit):
        kind = "preemptive" if bool(policy.preemptive) else "non-preemptive"
        return f"onebit T={float(policy.threshold):g} {kind}"
    return policy.name


def run_demo(jobs: int = 20000, replicas: int = 8, seed: int = 0, as_json: bool = False):
    service, predictor = jaxq.Exponential(), jaxq.ExponentialNoise()
    rows = []
    start = time.perf_counter()
    if not as_json:
        print(f"M/M/1, exponential predictions; {replicas} replicas x {jobs} jobs per point; "
              f"sim = mean +- standard error, z = (sim - theory) / stderr")
        print(f"{'policy':<30} {'load':>5} {'simulated':>17} {'theory':>9} {'z':>6}")
    for policy in demo_policies():
        system = jaxq.System(jnp.asarray(LOADS), service, predictor, policy)
        r = jaxq.simulate(system, jobs=jobs, replicas=replicas, key=seed, capacity=256)
        for i, load in enumerate(LOADS):
            exact = theory.mean_response_time(policy, service, predictor, load)
            sim, se = float(r.mean_response_time[i]), float(r.stderr[i])
            row = dict(policy=label(policy), load=load, mean_response_time=sim, stderr=se,
                       theory=exact, z=(sim - exact) / se)
            rows.append(row)
            if not as_json:
                print(f"{row['policy']:<30} {load:>5.2f} {sim:>9.4f} +- {se:<5.3f} "
                      f"{exact:>9.4f} {row['z']:>6.2f}")
    seconds = time.perf_counter() - start
    zs = np.array([row["z"] for row in rows])
    if not as_json:
        print(f"{len(rows)} points in {seconds:.1f} s; max |z| = {np.abs(zs).max():.2f}")
    return dict(rows=rows, seconds=seconds, max_abs_z=float(np.abs(zs).max()))
