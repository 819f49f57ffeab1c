"""The supermarket model's mean-field limit: power-of-d dispatching to n FCFS servers as n -> oo.

Jobs arrive in a Poisson process of rate n * lambda; each samples d of the n servers uniformly at
random (with replacement) and joins the one with the fewest jobs; sizes are exponential with mean
E[S], and load = lambda * E[S] is the load per server. As n -> oo the fraction s_i of servers
with at least i jobs converges to the fixed point (Vvedenskaya, Dobrushin and Karpelevich 1996;
Mitzenmacher 1996)

    s_i = load ** ((d^i - 1) / (d - 1)),          (d = 1: s_i = load^i, independent M/M/1)

so the mean number of jobs per server is sum_{i >= 1} s_i, and by Little's law the mean response
time is E[S] * sum_{i >= 1} load ** ((d^i - d) / (d - 1)). For finite n it is a limit: the
simulated value approaches it as n grows (the README shows by how much).
"""

from __future__ import annotations

from jaxq._checks import check_count, check_positive
from jaxq.erlang import check_servers_and_load


def _exponent(d: int, i: int) -> float:
    """(d^i - 1) / (d - 1) = 1 + d + ... + d^(i-1), exact in integers."""
    return float(i if d == 1 else (d**i - 1) // (d - 1))


def fraction_with_at_least(i: int, d: int, load: float) -> float:
    """s_i: the limiting fraction of servers holding at least i jobs."""
    load = check_servers_and_load("d", d, load)
    check_count("i", i, 0)
    return load ** _exponent(d, i)


def jsq_d_mean_response_time(d: int, load: float, mean_size: float = 1.0) -> float:
    """The limiting E[T] of power-of-d dispatching to FCFS servers with exponential sizes."""
    load = check_servers_and_load("d", d, load)
    check_positive("mean_size", mean_size)
    if d == 1:
        return mean_size / (1.0 - load)
    total, i = 0.0, 1
    while True:
        # s_i / load: doubly exponential decay for d >= 2, so a few dozen terms at most
        term = load ** (_exponent(d, i) - 1.0)
        total += term
        if term < 1e-17 * total:
            return mean_size * total
        i += 1


__all__ = ["fraction_with_at_least", "jsq_d_mean_response_time"]
