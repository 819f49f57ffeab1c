"""Exact mean response times of SkipPredict and DelayPredict in the M/G/1 queue (predictions
made outside the server), by SOAP and numerical quadrature; jaxq.theory calls these.

Both are two-class SOAP policies (Scully, Harchol-Balter and Scheller-Wolf 2018; the policies are
those of Shahout and Mitzenmacher, "SkipPredict: When to Invest in Predictions for Scheduling",
2024). Notation as in jaxq.theory: Y = X M, rho_<(v) = lambda E[X 1{Y < v}],
R(u) = int_0^u dv / (1 - rho_<(v)).

SkipPredict(tau): short (y < tau) jobs rank (0, FCFS), long ones (1, y - a). A short job sees only
the short jobs ahead of it (it preempts any long one):

    E[T | x, short] = x + lambda E[X^2 1{Y < tau}] / (2 (1 - rho_S)),   rho_S = rho_<(tau).

A long job's worst future rank is (1, y); old jobs ahead of it are the short ones and the long
ones with Y <= y (all their work), and the long ones with Y > y from attained Y - y on, exactly
as under sprpt; new jobs that preempt it at level v = y - a are the short ones and the long ones
with Y < v, i.e. rho_<(max(v, tau)):

    E[T | x, y, long] = lambda N(y) / (2 (1 - rho_<(y))^2) + R(y) - R(max(y - x, tau))
                        + (x - y + tau)^+ / (1 - rho_S),

with N(y) = E[X^2 1{Y <= y}] + E[((X - (Y - y))^+)^2 1{Y > y}] (sprpt's). tau = 0 is sprpt.

DelayPredict(L): rank (0, FCFS) while a < L, then (1, y - a). A job with x <= L never leaves the
first class, where every job's first min(X, L) is served FCFS:

    E[T | x <= L] = x + W_D,   W_D = lambda E[min(X, L)^2] / (2 (1 - lambda E[min(X, L)])).

A job with x > L has worst future rank (1, y - L). Old jobs ahead of it: those with Y <= y
entirely, the others for their first min(X, L) and again from attained L + Y - y on. New jobs
preempt it while it is in the first class, and at its level w = y - a + L after, for their
first min(X, L) and entirely if Y < w:

    rho_D(w) = lambda E[min(X, L)] + lambda E[(X - L)^+ 1{Y < w}],
    rho_0(y) = lambda (E[X 1{Y <= y}] + E[min(X, L) 1{Y > y}]),
    N_D(y)   = E[X^2 1{Y <= y}] + E[min(X, L)^2 1{Y > y}] + E[((X - L - (Y - y))^+)^2 1{Y > y}],
    E[T | x, y] = lambda N_D(y) / (2 (1 - rho_0(y)) (1 - rho_D(y))) + L / (1 - rho_D(y))
                  + int_{y - x + L}^{y} dw / (1 - rho_D(w))     (rho_D(w) = rho_D(0) for w < 0).

L = 0 is sprpt; L above every size is fcfs.

Numerics: the means are integrals over the prediction value v (terms that depend on y only, with
the density of Y, restricted to long jobs or to x > L) and over the level w (the residual terms,
by Fubini: E[int_{y-x+L}^y f] = int f(w) P(Y - X + L < w <= Y) dw), on jaxq.theory's panels for
Y split at tau or L; each integrand is an expectation over X (Gauss-Legendre in log x, split at L
and wherever the closed forms in M have kinks) of closed forms in M's partial moments. Sizes must
have a density (not deterministic or empirical).
"""

from __future__ import annotations

import math

import numpy as np

from jaxq import theory as _t


def _v_nodes(m, cut):
    """Gauss nodes v and weights dv on Y's panels (jaxq.theory's grid for sprpt), with `cut` an
    edge; returns (v, dv) for v > cut only."""
    t, w = _t._panel_nodes(_t._with_edge(_t._noisy_grid(m, _t._Spec("sprpt")), cut))
    v = np.exp(t)
    keep = v > cut
    return v[keep], (w * v)[keep]


def _long_wait_and_resid(m, v, dv):
    """sprpt's integrands over v: the wait (with the density of Y) and the residual R terms."""
    lam = m.lam
    s = _t._noisy_sums(m, _t._Spec("sprpt"), v, ("F1", "F2", "G", "NQ", "S0", "PL"))
    one = 1.0 - lam * s["F1"]
    wait = 0.5 * lam * (s["F2"] + s["NQ"]) * s["G"] / one**2
    resid = (s["S0"] - s["PL"]) / one
    return float(np.sum(dv * (wait + resid)))


def skippredict_mean(m, tau: float) -> float:
    _t._require_density(m, "skippredict")
    law, lam = m.law, m.lam
    if m.mult is None:  # y = x: long iff x >= tau, and (x - y + tau)^+ = tau
        p_s, rho_s = float(law.pm(0, tau)), lam * float(law.pm(1, tau))
        short = float(law.pm(1, tau)) + p_s * lam * float(law.pm(2, tau)) / (2.0 * (1.0 - rho_s))
        t, w = _t._panel_nodes(_t._with_edge(law.graded, tau))
        x = np.exp(t)
        keep = x >= tau
        x, w = x[keep], w[keep]
        R = _t._perfect_R(m)
        r_tau = float(R(np.array([tau]))[0])
        long_t = (_t._perfect_response(m, _t._Spec("sprpt", c=1.0), x) - r_tau
                  + tau / (1.0 - rho_s))
        return short + float(np.sum(w * law.xpdf(x) * long_t))

    mult = m.mult
    s = _t._noisy_sums(m, _t._Spec("spjf"), [tau], ("F0", "F1", "F2"))
    p_s, e1_s, e2_s = (float(s[k][0]) for k in ("F0", "F1", "F2"))
    rho_s = lam * e1_s
    short = e1_s + p_s * lam * e2_s / (2.0 * (1.0 - rho_s))
    v, dv = _v_nodes(m, tau)
    long_part = _long_wait_and_resid(m, v, dv)

    # E[(X - Y + tau)^+ 1{Y >= tau}] = E[(x + tau - x M) 1{tau/x <= M < 1 + tau/x}]
    def tail(x, _):
        p, e1, _e2 = mult.between(tau / x, 1.0 + tau / x)
        return (x + tau) * p - x * e1
    k = _t._mult_kinks(mult)
    splits = np.concatenate([tau / k[k > 0], tau / (k[k > 1] - 1.0)])[None, :]
    over = _t._x_expect(m, [0.0], splits if splits.size else np.zeros((1, 0)), [tail])[0][0]
    return short + long_part + over / (1.0 - rho_s)


def delaypredict_mean(m, limit: float) -> float:
    _t._require_density(m, "delaypredict")
    law, lam, L = m.law, m.lam, limit
    # first class: every job's first min(X, L), served FCFS
    e1_min = float(law.pm(1, L)) + L * float(law.upper(0, L))
    e2_min = float(law.pm(2, L)) + L * L * float(law.upper(0, L))
    rho_min = lam * e1_min
    w_d = lam * e2_min / (2.0 * (1.0 - rho_min))
    short = float(law.pm(1, L)) + float(law.pm(0, L)) * w_d
    if m.mult is None:
        return short + _delaypredict_perfect_long(m, L, rho_min)

    mult = m.mult
    k = _t._mult_kinks(mult)

    def cdf(x, v):
        return mult.cdf(v / x)

    def sf(x, v):
        return mult.sf(v / x)

    def over(x):
        return np.maximum(x - L, 0.0)

    def mn(x):
        return np.minimum(x, L)

    def second(x, v):  # E_M[((x - L + v - x M)^+)^2 1{M > v/x}]: the old job's second interval
        c0 = x - L + v
        p, e1, e2 = mult.between(v / x, c0 / x)
        return c0 * c0 * p - 2.0 * c0 * x * e1 + x * x * e2

    fns = [
        lambda x, v: (x > L) * mult.spdf(v / x),  # v times the density of Y among x > L
        lambda x, v: x * x * cdf(x, v) + mn(x) ** 2 * sf(x, v) + second(x, v),  # N_D
        lambda x, v: x * cdf(x, v) + mn(x) * sf(x, v),  # rho_0 / lambda
        lambda x, v: over(x) * cdf(x, v),  # (rho_D - rho_min) / lambda
        # P(X > L, v <= Y < v + X - L): the residual's weight at level v
        lambda x, v: (x > L) * mult.between(v / x, (v + x - L) / x)[0],
    ]

    def splits_at(v):
        v = v[:, None]
        parts = [np.full(v.shape, L), v / k[None, k > 0]]
        if np.any(k != 1.0):  # (v + x - L) / x = k at x = (v - L) / (k - 1)
            kk = k[k != 1.0][None, :]
            parts.append((v - L) / (kk - 1.0))
        return np.concatenate(parts, axis=1)

    # the integrands have a kink at v = L (where x = L meets v / x = 1): an edge there
    edges = _t._with_edge(_t._noisy_grid(m, _t._Spec("sprpt")), L)
    t, w = _t._panel_nodes(edges)
    v, dv = np.exp(t), w * np.exp(t)
    g, n_d, r0, rd, weight = _t._x_expect(m, v, splits_at(v), fns)
    g = g / v
    rho_0 = lam * r0
    rho_d = rho_min + lam * rd
    wait = g * (0.5 * lam * n_d / ((1.0 - rho_0) * (1.0 - rho_d)) + L / (1.0 - rho_d))
    resid = weight / (1.0 - rho_d)
    # below the first edge v0 the residual's integrand is about its value at the first node
    head = math.exp(edges[0]) * resid[0]
    # the residual below level 0: E[1{X > L} (X - L - Y)^+] at rate 1 / (1 - rho_D(0))
    def below(x, _):
        s = np.maximum(x - L, 0.0) / x
        e1_lt = mult.moment(1) - mult.upper(1, s)
        return (x > L) * ((x - L) * mult.cdf(s) - x * e1_lt)
    kinks_below = L / np.maximum(1.0 - k[k < 1], 1e-300)  # where (x - L) / x meets M's kinks
    neg = _t._x_expect(m, [0.0], np.concatenate([[L], kinks_below])[None, :], [below])[0][0]
    return short + float(np.sum(dv * (wait + resid))) + head + neg / (1.0 - rho_min)


def _delaypredict_perfect_long(m, L, rho_min):
    """E[T 1{X > L}] with y = x: N_D(x) = E[X^2 1{X <= x}] + (L^2 + (x - L)^2) P(X > x),
    rho_0(x) = lambda (E[X 1{X <= x}] + L P(X > x)), rho_D(w) = rho_min + lambda E[(X - L)
    1{L < X < w}], and the residual int_L^x dw / (1 - rho_D(w)), by Fubini
    int_L^oo P(X > w) / (1 - rho_D(w)) dw."""
    law, lam = m.law, m.lam
    edges = _t._with_edge(law.graded, L)
    t, w = _t._panel_nodes(edges)
    x = np.exp(t)
    keep = x > L
    x, w = x[keep], w[keep]
    up0 = law.upper(0, x)
    n_d = law.pm(2, x, strict=False) + (L * L + (x - L) ** 2) * up0
    rho_0 = lam * (law.pm(1, x, strict=False) + L * up0)
    rho_d = rho_min + lam * ((law.pm(1, x) - law.pm(1, L, strict=False))
                             - L * (law.pm(0, x) - law.pm(0, L, strict=False)))
    long_t = 0.5 * lam * n_d / ((1.0 - rho_0) * (1.0 - rho_d)) + L / (1.0 - rho_d)
    dens = w * law.xpdf(x)  # f(x) dx = x f(x) dt
    resid = np.sum(w * x * up0 / (1.0 - rho_d))  # int P(X > w) / (1 - rho_D(w)) dw, dw = w dt
    x0 = math.exp(edges[0])  # below the first edge: P(X > w) = 1 but for ~1e-16
    head = max(x0 - L, 0.0) / (1.0 - rho_min)
    return float(np.sum(dens * long_t) + resid + head)
