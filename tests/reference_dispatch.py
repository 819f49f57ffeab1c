"""Reference simulator for dispatching: n servers, each with its own queue, and a dispatcher that
sends every arriving job to one of them at once, for good. Slow, exact, plain Python, written to
be checked by reading; the fast engine is to match it exactly on small instances.

Each server runs the single-server rules of tests/reference.py (the same `service` function, and
the same levels where a rank jumps) on the jobs sent to it, in exact rational arithmetic. The
dispatcher looks at each server's state at the arrival instant, after the jobs that finish at
that instant have left and after the jobs that arrived earlier at the same instant have been
placed:

* round-robin: job i goes to server i mod n;
* every other rule compares its candidate servers by a measure and takes the first candidate
  with the least value: `count` (jobs at the server: join the shortest queue), `predicted` (the
  sum over its jobs of max(y - a, 0), the predicted work left) or `work` (the sum of x - a, the
  true work left: an oracle). The candidates are all servers in index order, or, with d given,
  the d servers the job samples uniformly with replacement, in the order sampled (random is
  d = 1). The samples are an input (`samples`), so that the engine's draws can be replayed here.
"""

from __future__ import annotations

from fractions import Fraction

try:
    from reference import _Policy, exact_jobs, service
except ImportError:  # tests/ imported as a package
    from tests.reference import _Policy, exact_jobs, service

MEASURES = ("count", "predicted", "work")


def departures_exact(policy: str, servers: int, arrival_times, sizes, predictions, *,
                     measure: str | None, samples=None, **params):
    """(departure time of each job as a Fraction, the server each job was sent to).

    measure: None for round-robin, else one of MEASURES. samples: None to compare all servers,
    else one list of candidate server indices per job (d of them; random dispatch is d = 1)."""
    pol = _Policy(policy, params)
    arrival, size, pred = exact_jobs(policy, arrival_times, sizes, predictions)
    n = len(arrival)
    if any(s == 0 for s in size):
        raise ValueError("sizes must be > 0")
    if measure is not None and measure not in MEASURES:
        raise ValueError(f"measure must be None or one of {MEASURES}, got {measure!r}")
    if samples is not None and (len(samples) != n or any(
            not c or any(not 0 <= s < servers for s in c) for c in samples)):
        raise ValueError("samples must hold one non-empty list of server indices per job")

    attained = [Fraction(0)] * n
    departure: list[Fraction | None] = [None] * n
    sent_to = [-1] * n
    queue: list[list[int]] = [[] for _ in range(servers)]  # jobs at each server, arrival order
    next_arrival = 0
    t = Fraction(0)

    def value(server: int) -> Fraction | int:
        jobs = queue[server]
        if measure == "count":
            return len(jobs)
        if measure == "predicted":
            return sum((max(pred[i] - attained[i], Fraction(0)) for i in jobs), Fraction(0))
        return sum((size[i] - attained[i] for i in jobs), Fraction(0))

    while True:
        if not any(queue) and next_arrival < n:
            t = max(t, arrival[next_arrival])
        # Departures first, then the arrivals of this instant, one after another.
        for jobs in queue:
            for i in jobs:
                if attained[i] == size[i]:
                    departure[i] = t
            jobs[:] = [i for i in jobs if departure[i] is None]
        while next_arrival < n and arrival[next_arrival] <= t:
            i = next_arrival
            if measure is None:
                target = i % servers
            else:
                candidates = list(range(servers)) if samples is None else list(samples[i])
                target = min(candidates, key=value)  # min keeps the first of equal values
            queue[target].append(i)
            sent_to[i] = target
            next_arrival += 1
        if not any(queue):
            if next_arrival == n:
                break
            continue

        rates, times = {}, []
        for jobs in queue:
            if jobs:
                rate, internal = service(
                    pol, {i: pol.rank(size[i], pred[i], attained[i], t - arrival[i], i)
                          for i in jobs}, {i: size[i] - attained[i] for i in jobs}, 1)
                rates.update(rate)
                times.append(internal)
                # levels of attained service where a served job's rank jumps
                times += [(v - attained[i]) / rate[i] for i in rate if rate[i]
                          for v in pol.jump_levels(pred[i]) if v > attained[i]]
        if next_arrival < n:
            times.append(arrival[next_arrival] - t)
        dt = min(times)
        assert dt > 0
        for i, r in rates.items():
            attained[i] += r * dt
            assert attained[i] <= size[i]
        t += dt

    return departure, sent_to


__all__ = ["departures_exact", "MEASURES"]
