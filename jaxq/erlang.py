"""Exact results for k servers fed by one central queue with Poisson arrivals (M/M/k).

With exponential sizes of mean E[S], arrival rate lambda = k rho / E[S] (rho: the load per
server, as everywhere in jaxq) and FCFS, the number in system is a birth-death chain, and

    P(wait) = C(k, a)  (Erlang C, a = k rho),      E[T] = E[S] + C(k, a) E[S] / (k (1 - rho)).

C is computed from Erlang B by the recursion B(0) = 1, B(n) = a B(n-1) / (n + a B(n-1)), then
C = B / (1 - rho (1 - B)): every term stays in [0, 1], so large k neither overflows nor cancels.
"""

from __future__ import annotations

import math


def _check(servers, load):
    if isinstance(servers, bool) or not isinstance(servers, int) or servers < 1:
        raise ValueError(f"servers must be an integer >= 1, got {servers!r}")
    load = float(load)
    if not 0.0 < load < 1.0:
        raise ValueError(f"load (per server) must lie in (0, 1), got {load:g}")
    return load


def erlang_c(servers: int, load: float) -> float:
    """P(an arrival waits) in M/M/k with k = servers and `load` per server."""
    load = _check(servers, load)
    offered = servers * load
    b = 1.0
    for n in range(1, servers + 1):
        b = offered * b / (n + offered * b)
    return b / (1.0 - load * (1.0 - b))


def mmk_mean_response_time(servers: int, load: float, mean_size: float = 1.0) -> float:
    """E[T] of M/M/k under FCFS (or any order that does not look at sizes and never preempts)."""
    load = _check(servers, load)
    if not (math.isfinite(mean_size) and mean_size > 0):
        raise ValueError(f"mean_size must be > 0, got {mean_size!r}")
    return mean_size + erlang_c(servers, load) * mean_size / (servers * (1.0 - load))


__all__ = ["erlang_c", "mmk_mean_response_time"]
