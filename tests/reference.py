"""Reference simulator: a slow, exact, plain-Python queue with k servers fed by one central queue
(k = 1: the single-server queue) on a given list of jobs.

The fast JAX engine is tested against this file, so it is written to be checked by reading, not to
be fast. The rank of every policy is copied from jaxq/policies.py (see `_Policy.rank` below); the
rules of the servers are:

1. k work-conserving servers; a job is served by at most one of them at a time. The jobs in the
   system are ranked by (primary, tiebreak, locked).
2. A locked job is served, on a server of its own, ahead of everything (at most k jobs can ever be
   locked: a job locks only while it is being served, and a locked job is served until it
   departs).
3. Otherwise, if the policy "shares" (its slope d(primary)/d(attained) is > 0 and it does not lock
   started jobs: las, and linear with preemptive=True and w_attained > w_remaining), the jobs
   form groups of equal primary, and the groups take the servers left in order of primary: a
   group that fits gets a server for each job (rate 1), the first one that does not fit shares
   the servers left equally (each job at rate (servers left) / (size of the group)), the rest
   wait. A group's primary rises at rate slope * (its rate), so a group catches up with the next
   one where it moves faster, and they join (a "merge" event). With one server this is: every
   job whose primary equals the smallest is served at rate 1 / (size of that group).
4. Otherwise the k jobs with the lexicographically smallest (primary, tiebreak) are served (all
   of them if there are fewer), each at rate 1.

Ranks are compared by (level, primary, tiebreak). The level is the same for every job of most
policies; skippredict's short jobs and delaypredict's jobs before the limit have a better one,
and so does prediction work under the server-time cost model (`prediction_time`): a job's
predictions are work of their own, done when it arrives, ahead of all job work (FCFS among
them; a locked job is not interrupted), except delaypredict's full prediction, done when the
job reaches the limit. The levels of attained service where a rank jumps (the end of a job's
prediction work, delaypredict's limit, sprpt-bounce's a = y) are events too.

Between events nothing changes who is served: with slope <= 0 a served job only gets better
relative to the waiting ones, the age term grows at the same rate for everyone, and with slope > 0
the merge events are exactly the moments a waiting job's primary meets the group's. So the loop is:
at the current time, decide who is served (rules 2-4) from the current state; compute the time to
the next event (next arrival, next completion in the served set, next merge); advance everybody by
that much; record departures, admit arrivals; repeat.

Arithmetic is exact: every input float is converted to a `fractions.Fraction` (exactly, since a
float is a dyadic rational), and all of the above is done in rationals. So there is no tolerance
anywhere: a completion is `remaining == 0`, a merge is `primary == group primary`, a tie is a tie.
Departure times are rounded to float only when returned by `departures`; `departures_exact`
returns the Fractions themselves.

The order "departures, then merges, then arrivals" for simultaneous events is implied: each of
them only updates the set of jobs present (or, for a merge, nothing at all: a merge is just the
moment two primaries become equal), and who is served next is decided from the state after all of
them. So an arrival whose primary equals the group's joins the group; one strictly below preempts
the whole group; a job that departs at the instant another arrives is gone when the next job is
chosen.

Edge cases the policy file does not spell out, resolved here:

* A job of size 0 departs at its arrival time, whether or not it would have been chosen to serve
  (its remaining work is already 0).
* sprpt-limited rejects negative predictions (a waiting job would be "locked" at a = 0 > c * y).
* Locks use the strict inequalities of policies.py: sprpt-limited locks when a > c * y, so at the
  very instant a == c * y the job can still be preempted by an arrival; non-preemptive policies
  lock when a > 0, so a job that has not received any service yet is not locked.
"""

from __future__ import annotations

from fractions import Fraction
import math
from typing import NamedTuple

POLICY_NAMES = ("fcfs", "las", "sjf", "psjf", "srpt", "spjf", "pspjf", "sprpt", "sprpt-bounce",
                "sprpt-limited", "onebit", "linear", "mlp", "skippredict", "delaypredict")

# Parameter names and defaults, the same as the constructors in jaxq/policies.py.
DEFAULT_PARAMS = {
    "sprpt-limited": {"c": 0.5},
    "onebit": {"threshold": 1.0, "preemptive": False},
    "linear": {"w_prediction": 0.0, "w_remaining": 1.0, "w_attained": 0.0, "w_age": 0.0,
               "preemptive": True},
    "mlp": {"weights": (1.0, 0.0, 0.0, 0.0)},  # one unit, v = c = 0: sprpt
    "skippredict": {"threshold": 1.0},
    "delaypredict": {"limit": 1.0},
}


def _exact(name, value) -> Fraction:
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return Fraction(value)  # exact: every finite float is a dyadic rational


class Rank(NamedTuple):
    primary: Fraction
    tiebreak: int
    locked: bool
    # Compared before the primary: 0 for prediction work (server-time costs), 1 for the first
    # class of skippredict (short jobs) and delaypredict (before the limit), 2 for the rest.
    level: int = 2


class _Policy:
    """A policy name with its parameters, as exact numbers."""

    def __init__(self, name: str, params: dict):
        if name not in POLICY_NAMES:
            raise ValueError(f"unknown policy {name!r}; valid: {', '.join(POLICY_NAMES)}")
        defaults = DEFAULT_PARAMS.get(name, {})
        unknown = set(params) - set(defaults)
        if unknown:
            raise ValueError(f"policy {name!r} takes no parameter(s) {sorted(unknown)}")
        p = {**defaults, **params}
        self.name = name
        self.preemptive = bool(p.get("preemptive", True))
        if name == "sprpt-limited":
            self.c = _exact("c", p["c"])
            if not 0 <= self.c <= 1:
                raise ValueError(f"c must lie in [0, 1], got {float(self.c)}")
        if name in ("onebit", "skippredict"):
            self.threshold = _exact("threshold", p["threshold"])
            if self.threshold < 0:
                raise ValueError(f"threshold must be >= 0, got {float(self.threshold)}")
        if name == "delaypredict":
            self.limit = _exact("limit", p["limit"])
            if self.limit < 0:
                raise ValueError(f"limit must be >= 0, got {float(self.limit)}")
        if name == "linear":
            self.w_prediction = _exact("w_prediction", p["w_prediction"])
            self.w_remaining = _exact("w_remaining", p["w_remaining"])
            self.w_attained = _exact("w_attained", p["w_attained"])
            self.w_age = _exact("w_age", p["w_age"])
        if name == "mlp":
            self.weights = [float(w) for w in p["weights"]]
            if len(self.weights) < 4 or len(self.weights) % 3 != 1:
                raise ValueError(f"weights must hold 3H + 1 >= 4 numbers, got {len(self.weights)}")

    def predictions(self, x: Fraction, y: Fraction) -> tuple[bool, bool]:
        """(cheap, full): whether a job gets a one-bit prediction and a full one (the cost of
        predictions: jaxq/prediction_cost.py)."""
        name = self.name
        if name in ("fcfs", "las", "sjf", "psjf", "srpt"):
            return False, False
        if name == "onebit":
            return True, False
        if name == "skippredict":
            return True, y >= self.threshold
        if name == "delaypredict":
            return False, x > self.limit
        return False, True

    def rank(self, x: Fraction, y: Fraction, a: Fraction, age: Fraction, index: int,
             predict_time: Fraction = Fraction(0)) -> Rank:
        """The rank of one job: a line-by-line copy of the `rank` methods in jaxq/policies.py.
        predict_time: delaypredict's prediction time at the limit (server-time costs)."""
        started = a > 0
        name = self.name
        if name == "fcfs":
            return Rank(Fraction(0), index, False)
        if name == "las":
            return Rank(a, index, False)
        if name == "sjf":
            return Rank(x, index, started)
        if name == "psjf":
            return Rank(x, index, False)
        if name == "srpt":
            return Rank(x - a, index, False)
        if name == "spjf":
            return Rank(y, index, started)
        if name == "pspjf":
            return Rank(y, index, False)
        if name == "sprpt":
            return Rank(y - a, index, False)
        if name == "sprpt-bounce":
            return Rank(y - a if a < y else y, index, False)
        if name == "sprpt-limited":
            return Rank(y - a, index, a > self.c * y)
        if name == "onebit":
            short = y < self.threshold
            tiebreak = -index if (short and self.preemptive) else index
            return Rank(Fraction(0) if short else Fraction(1), tiebreak,
                        started and not self.preemptive)
        if name == "linear":
            primary = (self.w_prediction * y + self.w_remaining * (y - a) + self.w_attained * a
                       + self.w_age * age)
            return Rank(primary, index, started and not self.preemptive)
        if name == "mlp":
            return Rank(self.static_rank(y) - a, index, False)
        if name == "skippredict":
            if y < self.threshold:
                return Rank(Fraction(0), index, False, level=1)
            return Rank(y - a, index, False)
        if name == "delaypredict":
            if a < self.limit + predict_time:
                return Rank(Fraction(0), index, False, level=1)
            return Rank(y - (a - predict_time), index, False)
        raise AssertionError(name)

    def jump_levels(self, y: Fraction, predict_time: Fraction = Fraction(0)) -> list[Fraction]:
        """The levels of attained service (of the job's own work) where `rank` jumps."""
        if self.name == "delaypredict":
            return [self.limit + predict_time]
        if self.name == "sprpt-bounce":
            return [y]
        return []

    def static_rank(self, y: Fraction) -> Fraction:
        """h(y) = y exp(m(log y)), m(z) = sum_h v_h tanh(w_h z + b_h) + c. The one inexact step
        here: transcendental, so evaluated in float64 (math) and taken exactly from there. It is
        a constant per job, so the run stays exact given it; the engine's float64 h may differ
        in the last bit, which reorders jobs only at such near-ties."""
        h = (len(self.weights) - 1) // 3
        w, b, v, c = (self.weights[:h], self.weights[h:2 * h], self.weights[2 * h:3 * h],
                      self.weights[3 * h])
        if y <= 0:
            return Fraction(0)
        z = math.log(float(y))
        m = sum(vi * math.tanh(wi * z + bi) for wi, bi, vi in zip(w, b, v)) + c
        return Fraction(float(y) * math.exp(m))

    def slope(self) -> Fraction:
        """d(primary)/d(attained) for an unlocked job, as in jaxq/policies.py."""
        if self.name == "las":
            return Fraction(1)
        if self.name in ("srpt", "sprpt", "sprpt-bounce", "sprpt-limited", "mlp", "skippredict",
                         "delaypredict"):
            return Fraction(-1)
        if self.name == "linear":
            return self.w_attained - self.w_remaining
        return Fraction(0)

    def shares(self) -> bool:
        """Whether jobs tied at the lowest primary share the server (rule 3 of the module doc).

        Only with a positive slope; and not for linear with preemptive=False, where the job that
        starts first (lowest tiebreak) is locked at once, so a group can never form."""
        locks_started = self.name == "linear" and not self.preemptive
        return self.slope() > 0 and not locks_started


def service(pol: _Policy, ranks: dict[int, Rank], remaining: dict[int, Fraction],
            servers: int) -> tuple[dict[int, Fraction], Fraction]:
    """Rules 2-4 of the module docstring for the jobs present (the keys of `ranks`): the rate at
    which each served job is served, and the time to the next completion or merge if nothing
    arrives."""
    shares, slope = pol.shares(), pol.slope()
    present = list(ranks)
    locked = [i for i in present if ranks[i].locked]
    assert len(locked) <= servers, f"more than {servers} locked jobs"
    rate: dict[int, Fraction] = {i: Fraction(1) for i in locked}
    free = servers - len(locked)
    rest = [i for i in present if not ranks[i].locked]
    groups: list[list[int]] = []  # the unlocked jobs by rank, jobs of one group together
    if shares:
        for value in sorted({(ranks[i].level, ranks[i].primary) for i in rest}):
            groups.append([i for i in rest if (ranks[i].level, ranks[i].primary) == value])
    else:
        groups = [[i] for i in sorted(rest, key=lambda i: (ranks[i].level, ranks[i].primary,
                                                            ranks[i].tiebreak))]
    group_rate = []
    for group in groups:
        share = min(len(group), free)
        free -= share
        group_rate.append(Fraction(share, len(group)))
        rate.update({i: group_rate[-1] for i in group if share})

    times = [remaining[i] / rate[i] for i in rate]  # completions
    if shares:
        # A group's primary rises at rate slope * (its rate); the age term rises at the same rate
        # for everyone. Adjacent groups meet where the one ahead moves faster.
        for ahead, behind, r_ahead, r_behind in zip(groups, groups[1:], group_rate,
                                                    group_rate[1:]):
            if r_ahead > r_behind:
                gap = ranks[behind[0]].primary - ranks[ahead[0]].primary
                assert gap > 0
                times.append(gap / (slope * (r_ahead - r_behind)))
    return rate, min(times)


def exact_jobs(policy: str, arrival_times, sizes, predictions):
    """The jobs' (arrival times, sizes, predictions) as exact lists, checked."""
    arrival = [_exact("arrival time", v) for v in arrival_times]
    size = [_exact("size", v) for v in sizes]
    pred = [_exact("prediction", v) for v in predictions]
    n = len(arrival)
    if not (len(size) == n and len(pred) == n):
        raise ValueError("arrival_times, sizes and predictions must have the same length")
    if any(arrival[i] > arrival[i + 1] for i in range(n - 1)):
        raise ValueError("arrival_times must be non-decreasing")
    if any(s < 0 for s in size):
        raise ValueError("sizes must be >= 0")
    if policy == "sprpt-limited" and any(y < 0 for y in pred):
        # a > c * y would hold at a = 0: a job would be locked before it ever started
        raise ValueError("sprpt-limited needs predictions >= 0")
    return arrival, size, pred


def departures_exact(policy: str, arrival_times, sizes, predictions, servers: int = 1,
                     prediction_time=None, **params) -> list[Fraction]:
    """Like `departures`, but returns the exact departure times as Fractions."""
    if not isinstance(servers, int) or servers < 1:
        raise ValueError(f"servers must be an integer >= 1, got {servers!r}")
    pol = _Policy(policy, params)
    arrival, size, pred = exact_jobs(policy, arrival_times, sizes, predictions)
    n = len(arrival)
    # Server-time prediction costs: each job's prediction work, done when it arrives (`before`)
    # or, for delaypredict, when it reaches the limit (`at_limit`).
    before = [Fraction(0)] * n
    at_limit = Fraction(0)
    if prediction_time is not None:
        cheap_time, full_time = (_exact("prediction time", v) for v in prediction_time)
        if policy == "delaypredict":
            at_limit = full_time
        else:
            for i in range(n):
                cheap, full = pol.predictions(size[i], pred[i])
                before[i] = cheap_time * cheap + full_time * full
    work = [size[i] + before[i] + (at_limit if policy == "delaypredict"
                                   and size[i] > pol.limit else 0) for i in range(n)]

    attained = [Fraction(0)] * n
    departure: list[Fraction | None] = [None] * n
    present: list[int] = []  # indices of the jobs in the system, in arrival order
    next_arrival = 0  # index of the next job to arrive
    t = Fraction(0)

    def rank(i: int) -> Rank:
        if attained[i] < before[i]:  # its predictions, ahead of all job work
            return Rank(Fraction(0), i, False, level=0)
        return pol.rank(size[i], pred[i], attained[i] - before[i], t - arrival[i], i, at_limit)

    def jumps(i: int) -> list[Fraction]:
        """The attained service levels ahead at which job i's rank jumps."""
        levels = [before[i]] + [before[i] + v for v in pol.jump_levels(pred[i], at_limit)]
        return [v for v in levels if v > attained[i]]

    while True:
        # Admit the jobs arriving now (or, when idle, jump to the next arrival: work conservation).
        if not present and next_arrival < n:
            t = max(t, arrival[next_arrival])
        while next_arrival < n and arrival[next_arrival] <= t:
            present.append(next_arrival)
            next_arrival += 1
        # Departures: every job whose remaining work is 0 leaves now.
        for i in present:
            if attained[i] == work[i]:
                departure[i] = t
        present = [i for i in present if departure[i] is None]
        if not present:
            if next_arrival == n:
                break
            continue

        rate, internal = service(pol, {i: rank(i) for i in present},
                                 {i: work[i] - attained[i] for i in present}, servers)
        candidates = [internal]
        candidates += [(v - attained[i]) / rate[i] for i in rate if rate[i] for v in jumps(i)]
        if next_arrival < n:
            candidates.append(arrival[next_arrival] - t)
        dt = min(candidates)
        assert dt > 0
        served = list(rate)

        # Advance: served jobs get rate * dt of service each; everyone ages by dt (through t).
        for i in served:
            attained[i] += rate[i] * dt
            assert attained[i] <= work[i]
        t += dt

    return departure  # type: ignore[return-value]


def departures(policy: str, arrival_times, sizes, predictions, servers: int = 1,
               prediction_time=None, **params) -> list[float]:
    """Departure time of each job, in input order, with `servers` servers and one central queue.

    policy: one of POLICY_NAMES. params: c (sprpt-limited); threshold, preemptive (onebit);
    w_prediction, w_remaining, w_attained, w_age, preemptive (linear); threshold (skippredict);
    limit (delaypredict); defaults as in jaxq/policies.py. prediction_time: None, or (cheap, full)
    server time of a one-bit and a full prediction (the server-time cost model): the
    predictions a job needs (_Policy.predictions) are work done when it arrives, ahead of all
    job work, except delaypredict's, done when the job reaches the limit. arrival_times must be
    non-decreasing; job i's arrival index is i. After the last given arrival no more jobs come
    and the system drains.
    """
    return [float(d) for d in departures_exact(policy, arrival_times, sizes, predictions,
                                               servers, prediction_time, **params)]


__all__ = ["departures", "departures_exact", "POLICY_NAMES", "DEFAULT_PARAMS"]
