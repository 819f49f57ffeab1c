"""Exact results for k servers fed by one central queue with Poisson arrivals (M/M/k).

With exponential sizes of mean E[S], arrival rate lambda = k rho / E[S] (rho: the load per
server, as everywhere in jaxq) and FCFS, the number in system is a birth-death chain, and

    P(wait) = C(k, a)  (Erlang C, a = k rho),      E[T] = E[S] + C(k, a) E[S] / (k (1 - rho)).

C is computed from Erlang B by the recursion B(0) = 1, B(n) = a B(n-1) / (n + a B(n-1)), then
C = B / (1 - rho (1 - B)): every term stays in [0, 1], so large k neither overflows nor cancels.
"""

from __future__ import annotations

from jaxq._checks import check_count, check_positive, check_range


def check_servers_and_load(name: str, count, load) -> float:
    """`count` (servers, or choices d) an integer >= 1 and `load` per server in (0, 1)."""
    check_count(name, count, 1)
    check_range("load", load, low=0.0, high=1.0, low_open=True, high_open=True)
    return float(load)


def erlang_c(servers: int, load: float) -> float:
    """P(an arrival waits) in M/M/k with k = servers and `load` per server."""
    load = check_servers_and_load("servers", servers, load)
    offered = servers * load
    b = 1.0
    for n in range(1, servers + 1):
        b = offered * b / (n + offered * b)
    return b / (1.0 - load * (1.0 - b))


def mmk_mean_response_time(servers: int, load: float, mean_size: float = 1.0) -> float:
    """E[T] of M/M/k under FCFS (or any order that does not look at sizes and never preempts)."""
    load = check_servers_and_load("servers", servers, load)
    check_positive("mean_size", mean_size)
    return mean_size + erlang_c(servers, load) * mean_size / (servers * (1.0 - load))


__all__ = ["erlang_c", "mmk_mean_response_time"]
