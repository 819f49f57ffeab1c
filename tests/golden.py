"""Hand-computed golden instances for the single-server policies, shared by the tests of the
reference simulator (tests/test_reference.py) and of the engine (tests/test_engine.py).

Every expected departure time was worked out by hand (the working is in the comments), and every
number is dyadic, so float results must match exactly.
Each entry: (policy, params, arrivals, sizes, predictions, expected departures).
"""

import math

GOLDEN = [
    # fcfs: 0-3 job0, 3-4 job1, 4-5 job2.
    ("fcfs", {}, [0, 1, 2], [3, 1, 1], [9, 9, 9], [3, 4, 5]),
    # fcfs, simultaneous arrivals: ties by arrival index. 0-2 job0, 2-3 job1, 3-6 job2.
    ("fcfs", {}, [0, 0, 0], [2, 1, 3], [1, 1, 1], [2, 3, 6]),
    # fcfs, idle gap: 0-1 job0, idle 1-2, 2-3 job1 (work conservation restarts at the arrival).
    ("fcfs", {}, [0, 2], [1, 1], [1, 1], [1, 3]),

    # las, arrival preempts and then shares: 0-1 job0 alone (a0 = 1). t=1 job1 arrives with
    # a = 0 < 1: served alone until a1 = 1 at t = 2 (merge). Then both share at rate 1/2:
    # remaining 2 and 1, so job1 leaves after 2 more units, t = 4 (a0 = a1 = 2);
    # job0 has 1 left, alone: t = 5.
    ("las", {}, [0, 1], [3, 2], [1, 1], [5, 4]),
    # las, all at time 0 = processor sharing: three share until job0 is done (each a = 1, t = 3),
    # two share until job1 is done (each gets 1 more, t = 5), job2 has 1 left: t = 6.
    ("las", {}, [0, 0, 0], [1, 2, 3], [1, 1, 1], [3, 5, 6]),
    # las, an arrival preempts a whole group and later joins it: 0-1 job0 and job1 share
    # (a = 0.5 each). t=1 job2 (a = 0) preempts both, alone until a2 = 0.5 at t = 1.5. Three share:
    # remaining 1.5, 2.5, 0.5; job2 done after 0.5 * 3 = 1.5, t = 3 (all a = 1). Two share:
    # remaining 1 and 2; job0 done after 2, t = 5 (a1 = 2); job1 has 1 left: t = 6.
    ("las", {}, [0, 0, 1], [2, 3, 1], [1, 1, 1], [5, 6, 3]),

    # sjf (non-preemptive, true size): job0 starts at 0 and is locked although shorter jobs come:
    # 0-4 job0; then job2 (x = 1) before job1 (x = 2): 4-5 job2, 5-7 job1.
    ("sjf", {}, [0, 1, 1.5], [4, 2, 1], [1, 1, 1], [4, 7, 5]),
    # psjf, same instance: t=1 job1 (x = 2 < 4) preempts job0 (a0 = 1); t=1.5 job2 (x = 1)
    # preempts job1 (a1 = 0.5); 1.5-2.5 job2; 2.5-4 job1 (1.5 left); 4-7 job0 (3 left).
    ("psjf", {}, [0, 1, 1.5], [4, 2, 1], [1, 1, 1], [7, 4, 2.5]),
    # psjf ranks by size, not remaining: at t=3 job0 has 1 left but x0 = 4 > x1 = 2, so job1
    # preempts: 3-5 job1, 5-6 job0.
    ("psjf", {}, [0, 3], [4, 2], [1, 1], [6, 5]),

    # srpt, same instance as the psjf one above: at t=3 job0 has 1 left < 2: not preempted.
    # 0-4 job0, 4-6 job1.
    ("srpt", {}, [0, 3], [4, 2], [1, 1], [4, 6]),
    # srpt preempting: t=1 job0 has 3 left > 2: 1-3 job1, 3-6 job0.
    ("srpt", {}, [0, 1], [4, 2], [1, 1], [6, 3]),
    # srpt tie by index: at t=2 job0 has 2 left = x1; the earlier job keeps the server.
    # 0-4 job0, 4-6 job1.
    ("srpt", {}, [0, 2], [4, 2], [1, 1], [4, 6]),

    # spjf (non-preemptive, prediction): job0 runs 0-2 (locked). Waiting at t=2: job1 (y = 4),
    # job2 (y = 1): 2-5 job2, 5-6 job1.
    ("spjf", {}, [0, 1, 1], [2, 1, 3], [5, 4, 1], [2, 6, 5]),
    # pspjf, same instance: t=1 job2 (y = 1) is the best of three: 1-4 job2; then job1 (y = 4)
    # before job0 (y = 5, a0 = 1): 4-5 job1, 5-6 job0.
    ("pspjf", {}, [0, 1, 1], [2, 1, 3], [5, 4, 1], [6, 5, 4]),
    # pspjf tie by index: equal predictions, job0 keeps the server: 0-3 job0, 3-4 job1.
    ("pspjf", {}, [0, 1], [3, 1], [2, 2], [3, 4]),

    # sprpt, a job past its prediction is not preempted: at t=2 job0 has rank 1 - 2 = -1 < 0.5.
    # 0-5 job0, 5-6 job1.
    ("sprpt", {}, [0, 2], [5, 1], [1, 0.5], [5, 6]),
    # srpt on the same instance does preempt (job0 has 3 left > 1): 2-3 job1, 3-6 job0.
    ("srpt", {}, [0, 2], [5, 1], [1, 0.5], [6, 3]),
    # sprpt: at t=2.5 job0 has rank 2 - 1.5 = 0.5 > 0.25 (a0 is 0.5 + 1 after resuming at 1.5).
    # 0-0.5 job0, 0.5-1.5 job1 (rank 0.25 < 1.5), 1.5-2.5 job0, 2.5-3.5 job2, 3.5-6 job0.
    ("sprpt", {}, [0, 0.5, 2.5], [4, 1, 1], [2, 0.25, 0.25], [6, 1.5, 3.5]),

    # sprpt-limited c = 0.5, same instance: job0 locks once a0 > 0.5 * 2 = 1. At t=0.5 a0 = 0.5,
    # unlocked, so job1 preempts (0.5-1.5). job0 resumes at 1.5, a0 = 1 at t=2, 1.5 at t=2.5:
    # locked, so job2 waits although its rank 0.25 < 0.5. 1.5-5 job0 (3.5 left), 5-6 job2.
    ("sprpt-limited", {"c": 0.5}, [0, 0.5, 2.5], [4, 1, 1], [2, 0.25, 0.25], [5, 1.5, 6]),
    # sprpt-limited at the lock boundary: at t=1, a0 = 1 = c * y0 exactly, and the lock is the
    # strict a > c * y, so job0 can still be preempted: 1-2 job1, 2-5 job0.
    ("sprpt-limited", {"c": 0.5}, [0, 1], [4, 1], [2, 0.5], [5, 2]),
    # ... and just past it (a0 = 1.25 > 1) it is locked: 0-4 job0, 4-5 job1.
    ("sprpt-limited", {"c": 0.5}, [0, 1.25], [4, 1], [2, 0.5], [4, 5]),

    # onebit non-preemptive, threshold 1: job0 (long) starts and is locked: 0-3. Waiting: job1
    # (long), job2 (short): 3-4 job2, 4-5 job1.
    ("onebit", {"threshold": 1.0, "preemptive": False}, [0, 1, 2], [3, 1, 1], [5, 2, 0.5],
     [3, 5, 4]),
    # onebit preemptive, shorts LCFS: t=1 short job1 preempts long job0 (a0 = 1); t=2 short job2
    # preempts short job1 (a1 = 1, tiebreak -2 < -1). 2-4 job2, 4-5 job1 (1 left), 5-7 job0.
    ("onebit", {"threshold": 1.0, "preemptive": True}, [0, 1, 2], [3, 2, 2], [5, 0.5, 0.5],
     [7, 5, 4]),
    # onebit preemptive, longs FCFS: job1 (long) does not preempt job0 (long): 0-2 job0; t=2
    # short job2 goes before the waiting long job1: 2-3 job2, 3-5 job1.
    ("onebit", {"threshold": 1.0, "preemptive": True}, [0, 1, 2], [2, 2, 1], [5, 5, 0.5],
     [2, 5, 3]),
    # onebit: y == threshold is long (short iff y < threshold): job1 (y = 1) does not preempt
    # long job0. 0-2 job0, 2-3 job1.
    ("onebit", {"threshold": 1.0, "preemptive": True}, [0, 1], [2, 1], [5, 1.0], [2, 3]),

    # linear w_attained = 3 > w_remaining = 1: primary = (y - a) + 3a = y + 2a, slope 2.
    # job0 (primary 1) alone until 1 + 2 a0 = 2, a0 = 0.5 at t = 0.5 (merge with job1).
    # Share: job1 (1 left) done after 2, t = 2.5 (a0 = 1.5); job0 has 1.5 left: t = 4.
    ("linear", {"w_remaining": 1.0, "w_attained": 3.0}, [0, 0], [3, 1], [1, 2], [4, 2.5]),
    # same policy, a third job meets the group later: from t = 0.5 the group's primary is
    # 2 + (t - 0.5) (slope 2 shared by 2). job2 arrives at t=1 with primary 3 > 2.5: waits; merge
    # when the group reaches 3, at t = 1.5 (a0 = 1, a1 = 0.5). Three share: job1 (0.5 left) done
    # after 1.5, t = 3 (a0 = 1.5, a2 = 0.5). Two share, 1.5 left each: both done at t = 6.
    ("linear", {"w_remaining": 1.0, "w_attained": 3.0}, [0, 0, 1], [3, 1, 2], [1, 2, 3],
     [6, 3, 6]),
    # same policy, an arrival with primary exactly equal to the group's joins it at once: at t=1
    # the group's primary is 2.5 (a0 = 0.75, a1 = 0.25) and job2 arrives with y = 2.5. Three share:
    # job1 (0.75 left) done after 2.25, t = 3.25 (a0 = 1.5, a2 = 0.75). Two share, 1.5 and 1.25
    # left: job2 done after 2.5, t = 5.75 (a0 = 2.75); job0 0.25 left: t = 6.
    ("linear", {"w_remaining": 1.0, "w_attained": 3.0}, [0, 0, 1], [3, 1, 2], [1, 2, 2.5],
     [6, 3.25, 5.75]),
    # linear w_attained = 2, w_remaining = 1 (primary y + a, slope 1) with a tie at the start:
    # both share at once: job1 done at t = 2 (a = 1 each), job0 2 left: t = 4.
    ("linear", {"w_remaining": 1.0, "w_attained": 2.0}, [0, 0], [3, 1], [1, 1], [4, 2]),
    # the same but non-preemptive: no group forms; the tie goes to job0, which is then locked:
    # 0-3 job0, 3-4 job1.
    ("linear", {"w_remaining": 1.0, "w_attained": 2.0, "preemptive": False}, [0, 0], [3, 1],
     [1, 1], [3, 4]),
    # non-preemptive with different primaries: job0 (primary 1) starts, is locked although its
    # primary rises past job1's 2: 0-3 job0, 3-4 job1.
    ("linear", {"w_remaining": 1.0, "w_attained": 2.0, "preemptive": False}, [0, 0], [3, 1],
     [1, 2], [3, 4]),
    # linear with the age term only, w_age = +1 (primary = age): the newest job is best, i.e.
    # preemptive LCFS. t=1 job1 preempts job0 (a0 = 1), t=2 job2 preempts job1 (a1 = 1).
    # 2-4 job2, 4-5 job1, 5-7 job0.
    ("linear", {"w_remaining": 0.0, "w_age": 1.0}, [0, 1, 2], [3, 2, 2], [1, 1, 1], [7, 5, 4]),
    # w_age = -1 (primary = -age): the oldest is best, i.e. fcfs.
    ("linear", {"w_remaining": 0.0, "w_age": -1.0}, [0, 1, 2], [3, 1, 1], [1, 1, 1], [3, 4, 5]),
    # mlp with one unit and c = ln 2: h(y) = 2y, rank 2y - a. At t = 3 job0 has a = 3: sprpt would
    # keep it (4 - 3 = 1 < 1.5), but 2 * 4 - 3 = 5 > 2 * 1.5 = 3, so job1 preempts: 3-4 job1,
    # 4-5 job0 (sprpt: job0 at 4, job1 at 5).
    ("mlp", {"weights": (0.0, 0.0, 0.0, math.log(2.0))}, [0, 3], [4, 1], [4, 1.5], [5, 4]),
    ("sprpt", {}, [0, 3], [4, 1], [4, 1.5], [4, 5]),

    # skippredict, threshold 1: job0 (y = 2.5) and job3 (y = 3) long, job1 and job2 short.
    # 0-0.5 job0; t=0.5 job1 (short) preempts it (a0 = 0.5): 0.5-0.75 job1; 0.75-1 job0
    # (a0 = 0.75); t=1 job2 (short) preempts: 1-2.5 job2 (job3 arrives at 1.25, long, waits);
    # long jobs by y - a: job0 2.5 - 0.75 = 1.75 < job3 3: 2.5-3.75 job0, 3.75-4 job3.
    ("skippredict", {"threshold": 1.0}, [0, 0.5, 1, 1.25], [2, 0.25, 1.5, 0.25],
     [2.5, 0.25, 0.5, 3], [3.75, 0.75, 2.5, 4]),
    # delaypredict, limit 0.5, same jobs: 0-0.5 job0 reaches the limit as job1 arrives, so it
    # drops behind: 0.5-0.75 job1; 0.75-1 job0 (a0 = 0.75, rank 2.5 - 0.75 = 1.75); t=1 job2
    # (before its limit) preempts: 1-1.5 job2 reaches the limit (rank 0.5 - 0.5 = 0); job3,
    # waiting since 1.25 and before its limit, goes first: 1.5-1.75 job3; then job2 (rank 0)
    # before job0 (1.75): 1.75-2.75 job2, 2.75-4 job0.
    ("delaypredict", {"limit": 0.5}, [0, 0.5, 1, 1.25], [2, 0.25, 1.5, 0.25],
     [2.5, 0.25, 0.5, 3], [4, 0.75, 2.75, 1.75]),
    # sprpt-bounce: 0-1 job0 (rank 1 - a; job1 arrives at 0.5 with 0.75 > 0.5). At t=1 job0 has
    # had its prediction and goes back to rank 1, behind job1 (0.75): 1-1.75 job1 (job2 arrives
    # at 1.5 with 0.5 > job1's 0.25). At t=1.75 job1 goes back to 0.75, behind job2: 1.75-2.25
    # job2; 2.25-2.5 job1 (0.75 < 1); 2.5-3.5 job0. (sprpt: 2, 3.5, 2.5.)
    ("sprpt-bounce", {}, [0, 0.5, 1.5], [2, 1, 0.5], [1, 0.75, 0.5], [3.5, 2.5, 2.25]),
    # the same jobs under sprpt: job0 ranks below 0 from t=1 and keeps the server until 2; then
    # job2 (0.5) before job1 (0.75).
    ("sprpt", {}, [0, 0.5, 1.5], [2, 1, 0.5], [1, 0.75, 0.5], [2, 3.5, 2.5]),
]
