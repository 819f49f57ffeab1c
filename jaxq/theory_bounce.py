"""Exact mean response time of sprpt-bounce in the M/G/1 queue, by SOAP and numerical quadrature;
jaxq.theory calls this.

sprpt-bounce ranks a job y - a while a < y and y after (jaxq.SPRPTBounce). Notation as in
jaxq.theory: Y = X M, rho(v) = lambda E[X 1{Y < v}], R(u) = int_0^u dv / (1 - rho(v)).

Worst future rank of a tagged job (x, y): y - a at age a if x <= y (the rank only falls), and y
at every age if x > y (it returns to y at a = y). An old job is ahead of it while its rank is
<= y: all of it if Y <= y (its rank never exceeds Y); else from attained Y - y until it has had
its prediction, so for min((X - (Y - y))^+, y). A new job preempts at level v while its rank is
below v: all of it if Y < v, else never. So SOAP gives

    E[T | x, y] = lambda N_B(y) / (2 (1 - rho(y))^2)
                  + 1{x <= y} (R(y) - R(y - x)) + 1{x > y} x / (1 - rho(y)),
    N_B(y) = E[X^2 1{Y <= y}] + E[min((X - Y + y)^+, y)^2 1{Y > y}].

sprpt differs in N (an old job comes back for all of (X - Y + y)^+) and for x > y (the part
after y is served at rank < 0, uninterruptible: R(y) + x - y); with y = x both are srpt.

Numerics: by Fubini, integrals over the prediction value v on jaxq.theory's panels for Y (those of
sprpt, with the ends of X's support added), each integrand an expectation over X (Gauss-Legendre
in log x, split where the closed forms in M have kinks: s = v / x at 1, at M's kinks and at M's
kinks minus 1):

    E[T] = int g(v) lambda N_B(v) / (2 (1 - rho(v))^2) dv
           + int P(Y - X < v <= Y, X <= Y) / (1 - rho(v)) dv
           + int E[X 1{X > v} f_Y|X(v)] / (1 - rho(v)) dv,

with P(Y - X < v <= Y, X <= Y) = P(Y >= v) - P(Y - X >= v) - P(X > Y >= v). Sizes must have a
density (not deterministic or empirical).
"""

from __future__ import annotations

import math

import numpy as np

from jaxq import theory as _t


def sprpt_bounce_mean(m) -> float:
    """E[T] under sprpt-bounce for the model m (a jaxq.theory._Model)."""
    if m.mult is None:  # perfect predictions: a never passes y, so this is srpt
        return _t._perfect_mean(m, _t._Spec("sprpt", c=1.0))
    _t._require_density(m, "sprpt-bounce")
    mult, lam = m.mult, m.lam
    k = _t._mult_kinks(mult)
    m_below_one = float(mult.cdf(np.array(1.0)))  # P(M < 1)

    def old_work_sq(x, v):
        """E_M[min((x - x M + v)^+, v)^2 1{M > v/x}]: an old job with Y > v, x^2 q(v / x)."""
        s = v / x
        knee = np.maximum(s, 1.0)  # min(...) is v for M <= 1, x (1 + s - M) beyond
        p, _, _ = mult.between(s, knee)
        j0, j1, j2 = mult.between(knee, 1.0 + s)
        c0 = x + v
        return v * v * p + c0 * c0 * j0 - 2.0 * c0 * x * j1 + x * x * j2

    fns = [
        lambda x, v: mult.spdf(v / x),  # v times the density of Y
        lambda x, v: x * mult.cdf(v / x),  # rho / lambda
        lambda x, v: x * x * mult.cdf(v / x) + old_work_sq(x, v),  # N_B
        # P(Y >= v) - P(Y - X >= v) - P(X > Y >= v): the weight of the level v in R terms
        lambda x, v: (mult.sf(v / x) - mult.sf(1.0 + v / x)
                      - np.maximum(m_below_one - mult.cdf(v / x), 0.0) * (x > v)),
        lambda x, v: x * (x > v) * mult.spdf(v / x),  # v E[X 1{X > v} f_Y|X(v)]
    ]

    def splits_at(v):
        v = v[:, None]
        parts = [v, v / k[None, k > 0]]
        if np.any(k > 1.0):
            parts.append(v / (k[None, k > 1.0] - 1.0))
        return np.concatenate(parts, axis=1)

    edges = _t._noisy_grid(m, _t._Spec("sprpt"))
    for end in np.exp(m.law.kinks):  # 1{x > v} has a kink in v at the ends of X's support
        edges = _t._with_edge(edges, float(end))
    t, w = _t._panel_nodes(edges)
    v, dv = np.exp(t), w * np.exp(t)
    g, r1, n_b, weight, over = _t._x_expect(m, v, splits_at(v), fns)
    one = 1.0 - lam * r1
    wait = 0.5 * lam * n_b * (g / v) / one**2
    resid = weight / one + (over / v) / one
    # below the first edge the integrands vanish with P(Y < v) (~1e-16 of the mass): no head term
    out = float(np.sum(dv * (wait + resid)))
    if not math.isfinite(out):
        raise FloatingPointError("sprpt-bounce's mean response time evaluated to a non-finite "
                                 "number")
    return out
