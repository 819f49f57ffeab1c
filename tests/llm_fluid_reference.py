"""The relaxed LLM engine's hard limit (tau -> 0), as a plain-Python event loop: what
jaxq.llm.relaxed must reduce to, written to be checked by reading (README, "The relaxed LLM
engine").

At every event, from the requests in the system (ranked by the policy's primary rank, minus
LOCK_BONUS for a locked request holding KV, plus TIE_PER_ARRIVAL times the arrival index):
* a prefill (W tokens to process, progress phi) is admitted if the KV nobody holds, less what
  the prefills ranked ahead of it still claim, exceeds what it still claims, W (1 - phi); or if
  it is ranked first. A decode is always admitted;
* the batch is the first S admitted requests in rank order;
* in rank order, each member processes min(W, B) tokens (a prefill) or 1 (a decode) per
  iteration, cut to what is left of the token budget B after the members ahead;
* an iteration lasts base + c_prefill * (prefill tokens) + c_decode * (decode tokens)
  + c_kv * (sum over members of KV + tokens), and each member advances by its tokens per
  iteration;
* the next event is the first of: a prefill ending (phi = 1: the request produces a token, its
  KV is P + g - 1 and it decodes from then on; the first token is its TTFT, and it leaves if
  that was its last), a decode finishing (g = O: it leaves), the KV cache filling up (the
  request holding KV with the highest rank at the start of the step is preempted: it must
  process P + g tokens again), or an arrival (it joins at once).
The ranks and rates are those at the start of each step: they change only at events.
"""

from __future__ import annotations

import numpy as np

import jax.numpy as jnp

from jaxq.llm.relaxed import LOCK_BONUS, TIE_PER_ARRIVAL
from jaxq.policies import JobView


def _ranks(policy, reqs):
    a = lambda key: jnp.asarray([float(r[key]) for r in reqs])  # noqa: E731
    holding = jnp.asarray([r["kv"] > 0 for r in reqs])
    view = JobView(size=a("O"), prediction=a("y"), attained=a("g"), age=a("age"),
                   index=jnp.asarray([r["index"] for r in reqs]), started=holding,
                   prompt=a("P"), kv=a("kv"), peak=a("P") + a("y"))
    rank = policy.rank(view)
    return [float(p) - LOCK_BONUS * float(locked and r["kv"] > 0)
            + TIE_PER_ARRIVAL * r["index"]
            for p, locked, r in zip(np.asarray(rank.primary), np.asarray(rank.locked), reqs)]


def fluid_run(p, policy, requests) -> dict:
    """Latency and TTFT of each request (NaN if none) and the number of preemptions, for one
    configuration's EngineParams `p` and Requests (gap, prompt, output, prediction: (N,))."""
    gaps = [float(x) for x in np.asarray(requests.gap)]
    n = len(gaps)
    cap, seqs, budget = float(p.kv_capacity), float(p.max_seqs), float(p.max_batched_tokens)
    base, c_pf, c_dec, c_kv = (float(p.iter_base), float(p.iter_per_prefill_token),
                               float(p.iter_per_decode_seq), float(p.iter_per_kv_token))
    latency, ttft = [float("nan")] * n, [float("nan")] * n
    preemptions = 0
    system = []  # requests in the system, dicts
    arrived, until_arrival = 0, gaps[0]
    while system or arrived < n:
        ranks = _ranks(policy, system) if system else []
        order = sorted(range(len(system)), key=lambda i: ranks[i])
        free = cap - sum(r["kv"] for r in system)
        claimed = 0.0  # by the prefills ahead
        admitted = []
        for position, i in enumerate(order):
            r = system[i]
            if r["W"] > 0:
                need = r["W"] * (1.0 - r["phi"])
                if position == 0 or free - claimed > need:
                    admitted.append(i)
                claimed += need
            else:
                admitted.append(i)
        members = admitted[:int(seqs)]
        tokens, left = {}, budget
        for i in members:
            r = system[i]
            demand = min(r["W"], budget) if r["W"] > 0 else 1.0
            tokens[i] = min(max(left, 0.0), demand)
            left -= demand
        prefill = sum(q for i, q in tokens.items() if system[i]["W"] > 0)
        decode = sum(q for i, q in tokens.items() if system[i]["W"] == 0)
        iteration = (base + c_pf * prefill + c_dec * decode
                     + c_kv * sum(system[i]["kv"] + q for i, q in tokens.items()))
        rate = {i: q / iteration for i, q in tokens.items()}  # tokens per second
        events = []  # (time, kind, index) with kind in the engine's order
        for i, q in rate.items():
            r = system[i]
            if r["W"] > 0 and q / r["W"] > 1e-12:
                events.append(((1.0 - r["phi"]) / (q / r["W"]), 0, i))
            elif r["W"] == 0 and q > 1e-12:
                events.append(((r["O"] - r["g"]) / q, 1, i))
        growth = sum(rate.values())
        if growth > 0:
            events.append(((cap - sum(r["kv"] for r in system)) / growth, 2, -1))
        if arrived < n:
            events.append((until_arrival, 3, -1))
        dt, kind, who = min(events, key=lambda e: (e[0], e[1]))
        for i, r in enumerate(system):
            q = rate.get(i, 0.0)
            if r["W"] > 0:
                r["phi"] += q / r["W"] * dt
            else:
                r["g"] += q * dt
            r["kv"] += q * dt
            r["age"] += dt
        until_arrival -= dt
        if kind == 0:
            r = system[who]
            if r["g"] == 0:
                ttft[r["index"]] = r["age"]
            r["g"] += 1.0
            r["kv"], r["W"], r["phi"] = r["P"] + r["g"] - 1.0, 0.0, 0.0
            if r["g"] >= r["O"]:
                latency[r["index"]] = r["age"]
                system.pop(who)
        elif kind == 1:
            latency[system[who]["index"]] = system[who]["age"]
            system.pop(who)
        elif kind == 2:
            holders = [i for i, r in enumerate(system) if r["kv"] > 0]
            victim = max(holders, key=lambda i: ranks[i])
            r = system[victim]
            r["W"], r["kv"], r["phi"] = r["P"] + r["g"], 0.0, 0.0
            preemptions += 1
        else:
            P = float(requests.prompt[arrived])
            system.append(dict(P=P, O=float(requests.output[arrived]),
                               y=float(requests.prediction[arrived]), g=0.0, W=P, phi=0.0,
                               kv=0.0, age=0.0, index=arrived))
            arrived += 1
            until_arrival = gaps[arrived] if arrived < n else float("inf")
    return dict(latency=np.asarray(latency), ttft=np.asarray(ttft), preemptions=preemptions)
