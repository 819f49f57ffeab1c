"""Exact mean response times of the M/G/1 queue with predictions, by numerical quadrature.

Everything here is float64 numpy (special functions come from jax.scipy.special, evaluated with x64
enabled). Nothing is simulated: the numbers are the stationary means of the model that the
simulator runs, with Poisson arrivals of rate lambda = load / E[X].

Model
-----
A job has true size x and prediction y = x * M, with M independent of x (every predictor in
jaxq.predictors is of this form). The policies are SOAP policies (Scully, Harchol-Balter and
Scheller-Wolf, "SOAP: One Clean Analysis of All Age-Based Scheduling Policies", 2018): the job of
lowest rank is served, ties go to the earlier arrival. For a tagged job of size x with worst future
rank r_w(a) = sup_{a <= b < x} r(b), r_w = r_w(0), SOAP gives

    E[T(x)] = lambda sum_i E[(X_i^old[r_w])^2] / (2 (1 - rho_0^old[r_w]) (1 - rho^new[r_w]))
              + int_0^x da / (1 - rho^new[r_w(a)]),

where new arrivals need a strictly lower rank to be served first and old jobs a rank <= r_w. With
rho_<(y) = lambda E[X 1{Y < y}] and rho_<=(y) = lambda E[X 1{Y <= y}] (they differ only where Y has
atoms: a perfect predictor with deterministic or empirical sizes) this gives, per (x, y):

* fcfs:  x + lambda E[X^2] / (2 (1 - rho))                      (Pollaczek-Khinchine)
* las:   lambda E[min(X,x)^2] / (2 (1 - rho_x)^2) + x / (1 - rho_x),  rho_x = lambda E[min(X,x)]
* spjf:  x + lambda E[X^2] / (2 (1 - rho_<=(y)) (1 - rho_<(y)))
* pspjf: lambda E[X^2 1{Y <= y}] / (2 (1 - rho_<=(y)) (1 - rho_<(y))) + x / (1 - rho_<(y))
* sprpt-limited(c), rank y - a while a <= c y, then locked (c = 1 is sprpt, c = 0 is spjf):
      lambda N(y) / (2 (1 - rho_<=(y)) (1 - rho_<(y)))
      + int_0^{min(x, c y)} da / (1 - rho_<(y - a)) + (x - c y)^+,
  N(y) = E[X^2 1{Y <= y}] + E[((X - b(Y))^+)^2 1{Y > y}],  b(Y) = min(Y - y, c Y)
  (an old job with Y > y is served ahead of the tagged one from attained min(Y - y, c Y) on).
* sprpt-bounce, rank y - a while a < y, then y: jaxq.theory_bounce (sizes with a density).
* skippredict and delaypredict: jaxq.theory_prediction_cost (sizes with a density).
* onebit(T), short iff y < T, rho_S = lambda E[X 1{Y < T}]:
  non-preemptive: short x + W0 / (1 - rho_S), long x + W0 / ((1 - rho)(1 - rho_S)),
  W0 = lambda E[X^2] / 2; preemptive (shorts LCFS-PR among themselves): short x / (1 - rho_S),
  long (x + W0 / (1 - rho)) / (1 - rho_S).
* sjf, psjf, srpt are spjf, pspjf, sprpt with y = x whatever the predictor (they read x).

Numerics
--------
Every size law has closed-form partial moments E[X^k 1{X < t}] (k = 0, 1, 2) and every multiplier
law closed-form partial moments of M, so the inner expectations are exact and one quadrature
remains:

* perfect predictions (y = x): the outer expectation over X is a composite Gauss-Legendre rule in
  t = log x on panels adapted to the law (exact sums over atoms for deterministic and empirical
  sizes), and R(u) = int_0^u dv / (1 - rho_<(v)) is a piecewise-Legendre antiderivative on the same
  panels (exact piecewise-linear for atoms).
* noisy predictions (Y continuous): by Fubini every term of E[T] is a single integral over the
  prediction value v, e.g. E[R(Y) - R(L)] = int P(L < v <= Y) / (1 - rho(v)) dv with
  L = Y - min(X, c Y); the integrand at each v is an expectation over X (quadrature in log x, or a
  sum over atoms) of closed-form functions of s = v / X. The panels in v and in x are split at the
  exact kinks (support ends and atoms times the kinks of M's law and of the policy) and refined
  where either law has fine structure (a narrow lognormal noise, say). With atoms and a bounded
  M (uniform noise, narrow lognormal noise) the sums over atoms are window sums of cumulative
  moments, O(log n) per point, so large empirical samples stay fast.
* 1/(1 - rho) has a pole just past the top of a bounded support when the load is near 1; panels
  are graded geometrically toward such points.

Accuracy: against closed forms and independent scipy integrations (tests/test_theory.py) the
relative error is ~1e-12 to 1e-9; halving every panel and doubling the Gauss order changes the
results by < 1e-10 at load 0.8 and < 1e-8 at load 0.999. Tails beyond ~1e-16 of the mass are cut.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import special as jsp

from jaxq import distributions as _dist
from jaxq import erlang
from jaxq import policies as _pol
from jaxq import predictors as _pred

__all__ = ["mean_response_time", "response_time", "optimal_onebit_threshold", "supports",
           "mean_prediction_cost", "mean_cost", "cost_terms"]

_LOG_TINY = math.log(1e-16)  # lower tail cut: probability mass below it is ~1e-16
_GL_N = 8  # Gauss-Legendre nodes per panel
_XI, _WI = np.polynomial.legendre.leggauss(_GL_N)
_H = 0.3  # panel width (log units) where a law has its bulk
_Z_STEP = 1.0  # panel width in standard-normal units for lognormal laws
_THIN = 0.8  # merged edge sets keep edges at least this fraction of the local resolution apart
_MAX_GAP = 2.5  # widest panel (in log units): the far tails are power laws, smooth in log space
_SMALL_BLOCK, _BIG_BLOCK = 2048, 131072  # the two array sizes special functions are compiled for
_MANY_ATOMS = 300  # above this many atoms, smooth-noise kinks of single atoms are not split at
_CHUNK = 400_000  # nodes per block of the inner quadrature (bounds the memory)


# ----------------------------------------------------------------------------- special functions

@functools.lru_cache(maxsize=None)
def _jitted(name):
    return jax.jit(getattr(jsp, name))


def _special(name, *args):
    """jax.scipy.special.<name> in float64 on numpy arrays.

    Inputs are flattened and cut into blocks of two fixed sizes, so the jit cache sees two shapes
    instead of compiling again for every new array size."""
    arrs = np.broadcast_arrays(*[np.asarray(a, dtype=np.float64) for a in args])
    shape, n = arrs[0].shape, arrs[0].size
    flat = [a.ravel() for a in arrs]
    block = _SMALL_BLOCK if n <= _SMALL_BLOCK else _BIG_BLOCK
    out = np.empty(n)
    fn = _jitted(name)
    with jax.enable_x64(True):
        for i0 in range(0, max(n, 1), block):
            m = min(block, n - i0)
            if m <= 0:
                break
            part = [np.pad(f[i0:i0 + m], (0, block - m), constant_values=1.0) for f in flat]
            out[i0:i0 + m] = np.asarray(fn(*[jnp.asarray(p) for p in part]))[:m]
    return out.reshape(shape)


def _ndtr(z):
    return _special("ndtr", z)


def _exprel(z):
    """expm1(z) / z, equal to 1 at z = 0."""
    z = np.asarray(z, dtype=np.float64)
    small = np.abs(z) < 1e-8
    safe = np.where(small, 1.0, z)
    return np.where(small, 1.0 + 0.5 * z, np.expm1(safe) / safe)


# ----------------------------------------------------------------------------- quadrature helpers

def _lin(a, b, h):
    """Equally spaced points from a to b (inclusive), spacing at most h."""
    return np.linspace(a, b, max(1, int(math.ceil((b - a) / h - 1e-9))) + 1)


def _tail_then_core(lo, mid, hi, h_core):
    """Log-space edges: coarse (power-law tail) from lo to mid, spacing h_core from mid to hi."""
    if mid <= lo:
        return _lin(lo, hi, h_core)
    return np.concatenate([_lin(lo, mid, _MAX_GAP)[:-1], _lin(mid, hi, h_core)])


def _local_res(t):
    """Resolution of a sorted edge set: the smaller of the two gaps at each edge."""
    t = np.asarray(t, dtype=np.float64)
    if t.size < 2:
        return np.full(t.shape, _MAX_GAP)
    gaps = np.diff(t)
    left = np.concatenate([[gaps[0]], gaps])
    right = np.concatenate([gaps, [gaps[-1]]])
    return np.maximum(np.minimum(left, right), 1e-12)


def _thin(t, r, factor=None):
    """Drop candidate edges closer than `factor` times the local resolution to the last kept one.

    Each candidate carries the resolution its region needs; a run of candidates is kept at the
    finest resolution seen since the last kept edge, so fine structure survives and coarse regions
    stay coarse."""
    factor = _THIN if factor is None else factor
    t = np.asarray(t, dtype=np.float64).ravel()
    r = np.broadcast_to(np.asarray(r, dtype=np.float64), t.shape).ravel()
    ok = np.isfinite(t)
    t, r = t[ok], r[ok]
    if t.size == 0:
        return t
    order = np.argsort(t, kind="stable")
    t, r = t[order], r[order]
    # Collapse exact duplicates first (keeping the finest resolution), then walk once.
    uniq, start = np.unique(t, return_index=True)
    rmin = np.minimum.reduceat(r, start)
    kept = [uniq[0]]
    last, need = uniq[0], rmin[0]
    for ti, ri in zip(uniq[1:].tolist(), rmin[1:].tolist()):
        need = min(need, ri)
        if ti - last >= factor * need:
            kept.append(ti)
            last, need = ti, ri
    return np.asarray(kept)


def _finish_edges(t, exact=()):
    """Sorted unique edges including the exact kinks, with no gap wider than _MAX_GAP."""
    t = np.concatenate([np.asarray(t, dtype=np.float64).ravel(),
                        np.asarray(exact, dtype=np.float64).ravel()])
    t = np.unique(t[np.isfinite(t)])
    if t.size < 2:
        c = t[0] if t.size else 0.0
        return np.array([c - 1.0, c + 1.0])
    gaps = np.diff(t)
    pieces = [t[:1]]
    for a, b, g in zip(t[:-1], t[1:], gaps):
        if g > _MAX_GAP:
            pieces.append(_lin(a, b, _MAX_GAP)[1:])
        else:
            pieces.append([b])
    return np.concatenate(pieces)


def _grade_below(edges, top, levels=24):
    """Add edges at top - h 2^-k below `top` (h: the panel width there).

    Near the top of a bounded support rho(v) reaches its maximum with a nonzero slope, so
    1/(1 - rho(v)) has a pole at distance ~(1 - rho) / rho'(top) beyond it: geometric panels toward
    the end keep Gauss-Legendre exponentially convergent however close the load is to 1."""
    i = np.searchsorted(edges, top)
    if i == 0:
        return edges
    h = top - edges[i - 1]
    extra = top - h * 0.5 ** np.arange(1, levels + 1)
    return np.unique(np.concatenate([edges, extra, [top]]))


def _panel_nodes(edges):
    """Gauss-Legendre nodes and weights on the panels between consecutive edges (last axis)."""
    a = edges[..., :-1, None]
    half = 0.5 * (edges[..., 1:, None] - a)
    t = a + half * (1.0 + _XI)
    w = half * _WI
    shape = edges.shape[:-1] + (-1,)
    return t.reshape(shape), np.broadcast_to(w, t.shape).reshape(shape)


class _Antiderivative:
    """R(u) = int_0^u f(v) dv from f at the Gauss nodes of panels in t = log v.

    On each panel the integrand f(e^t) e^t is replaced by its Legendre interpolant through the
    Gauss nodes (spectrally accurate between kinks, which are panel edges), whose antiderivative is
    exact: int_{-1}^{xi} P_k = (P_{k+1}(xi) - P_{k-1}(xi)) / (2k + 1). Below the first edge f is
    taken as its value there (the tails are at 1e-16 of the mass), above the last as `f_tail`."""

    def __init__(self, edges, fvals, f_head, f_tail):
        self.edges = np.asarray(edges, dtype=np.float64)
        a, b = self.edges[:-1], self.edges[1:]
        self.half = 0.5 * (b - a)
        t = a[:, None] + self.half[:, None] * (1.0 + _XI)
        g = np.asarray(fvals).reshape(t.shape) * np.exp(t)
        k = np.arange(_GL_N)
        leg = np.polynomial.legendre.legvander(_XI, _GL_N - 1)  # (n nodes, n degrees)
        self.coef = (g * _WI) @ leg * (k + 0.5)  # (panels, degrees)
        areas = self.half * (g @ _WI)
        self.u0 = math.exp(self.edges[0])
        self.f_head, self.f_tail = float(f_head), float(f_tail)
        self.start = self.f_head * self.u0 + np.concatenate([[0.0], np.cumsum(areas)])

    def __call__(self, u):
        u = np.asarray(u, dtype=np.float64)
        out = np.empty(u.shape)
        with np.errstate(divide="ignore"):
            t = np.log(np.maximum(u, 0.0))
        low = t <= self.edges[0]
        high = t >= self.edges[-1]
        mid = ~(low | high)
        out[low] = self.f_head * np.maximum(u[low], 0.0)
        out[high] = self.start[-1] + self.f_tail * (u[high] - math.exp(self.edges[-1]))
        if np.any(mid):
            tm = t[mid]
            p = np.clip(np.searchsorted(self.edges, tm, side="right") - 1, 0, len(self.half) - 1)
            xi = (tm - self.edges[p]) / self.half[p] - 1.0
            leg = np.polynomial.legendre.legvander(xi, _GL_N)  # P_0 .. P_n at xi
            c = self.coef[p]
            anti = c[:, 0] * (xi + 1.0)
            k = np.arange(1, _GL_N)
            anti += np.sum(c[:, 1:] * (leg[:, 2:] - leg[:, :-2]) / (2 * k + 1), axis=1)
            out[mid] = self.start[p] + self.half[p] * anti
        return out


# ----------------------------------------------------------------------------- job-size laws

class _Atoms:
    """A discrete size law: sorted distinct values a_j with probabilities p_j (exact sums)."""

    atoms = True

    def __init__(self, values, probs=None):
        v = np.asarray(values, dtype=np.float64).ravel()
        p = np.full(v.shape, 1.0 / v.size) if probs is None else np.asarray(probs, float).ravel()
        a, inv = np.unique(v, return_inverse=True)
        self.a = a
        self.p = np.bincount(inv, weights=p, minlength=a.size)
        self.p /= self.p.sum()
        self.kinks = np.log(a)
        # cum[k][i] = sum_{j < i} p_j a_j^k
        self.cum = [np.concatenate([[0.0], np.cumsum(self.p * a**k)]) for k in range(3)]

    def moment(self, k):
        return float(self.cum[k][-1])

    def pm(self, k, t, strict=True):
        """E[X^k 1{X < t}] (strict) or E[X^k 1{X <= t}]."""
        i = np.searchsorted(self.a, t, side="left" if strict else "right")
        return self.cum[k][i]

    def upper(self, k, t):
        """E[X^k 1{X > t}]."""
        return self.cum[k][-1] - self.pm(k, t, strict=False)


class _Continuous:
    """A size law with a density. Subclasses give x f(x), the partial moments and the panel edges
    in t = log x (with the resolution each region needs); `kinks` are support ends (t values)."""

    atoms = False

    def _setup(self, edges, kinks=()):
        """`edges` (log x) with their resolution `res` serve the expectations over X; `graded`
        adds geometric panels below the top of a bounded support for the perfect-prediction path,
        where rho_<(x) reaches rho there with a nonzero slope (see _grade_below)."""
        self.edges = np.unique(np.asarray(edges, dtype=np.float64))
        self.res = _local_res(self.edges)
        self.kinks = np.asarray(kinks, dtype=np.float64)
        self.t_lo, self.t_hi = float(self.edges[0]), float(self.edges[-1])
        bounded = self.kinks.size and np.max(self.kinks) >= self.t_hi - 1e-12
        self.graded = _grade_below(self.edges, self.t_hi) if bounded else self.edges

    def pm(self, k, t, strict=True):  # E[X^k 1{X < t}]; strictness is immaterial with a density
        raise NotImplementedError

    def upper(self, k, t):  # E[X^k 1{X > t}]
        raise NotImplementedError

    def moment(self, k):
        raise NotImplementedError

    def xpdf(self, x):  # x f(x): the density of log X
        raise NotImplementedError


def _exp1_edges():
    """Edges for Exp(1) in log space: power-law tail below 1e-3, then 0.3 up to 45, where
    E[X^2 1{X > 45}] ~ 3e-17."""
    return _tail_then_core(_LOG_TINY, math.log(1e-3), math.log(45.0), _H)


class _ExpLaw(_Continuous):
    """Exponential with mean theta: E[X^k 1{X >= t}] = theta^k e^{-z} sum_{j<=k} k!/j! z^j."""

    def __init__(self, theta):
        self.theta = float(theta)
        self._setup(math.log(self.theta) + _exp1_edges())

    def moment(self, k):
        return math.factorial(k) * self.theta**k

    def pm(self, k, t, strict=True):
        z = np.minimum(np.asarray(t, dtype=np.float64) / self.theta, 800.0)
        e, low0 = np.exp(-z), -np.expm1(-z)
        if k == 0:
            return low0
        if k == 1:
            return self.theta * (low0 - z * e)
        return self.theta**2 * (2.0 * low0 - z * e * (z + 2.0))

    def upper(self, k, t):
        z = np.minimum(np.asarray(t, dtype=np.float64) / self.theta, 800.0)
        poly = [1.0, 1.0 + z, z * z + 2.0 * z + 2.0][k]
        return self.theta**k * np.exp(-z) * poly

    def xpdf(self, x):
        z = x / self.theta
        return z * np.exp(-z)


class _HyperexpLaw(_Continuous):
    """Mixture p Exp(mean1) + (1 - p) Exp(mean2)."""

    def __init__(self, p, m1, m2):
        self.p = float(p)
        self.parts = (_ExpLaw(m1), _ExpLaw(m2))
        both = [q.edges for q in self.parts]
        self._setup(_thin(np.concatenate(both), np.concatenate([q.res for q in self.parts])))

    def _mix(self, f):
        return self.p * f(self.parts[0]) + (1.0 - self.p) * f(self.parts[1])

    def moment(self, k):
        return self._mix(lambda q: q.moment(k))

    def pm(self, k, t, strict=True):
        return self._mix(lambda q: q.pm(k, t))

    def upper(self, k, t):
        return self._mix(lambda q: q.upper(k, t))

    def xpdf(self, x):
        return self._mix(lambda q: q.xpdf(x))


class _UniformLaw(_Continuous):
    """Uniform on [lo, hi]:
    E[X^k 1{X < t}] = (min(max(t, lo), hi)^{k+1} - lo^{k+1}) / ((k+1)(hi - lo))."""

    def __init__(self, lo, hi):
        self.lo, self.hi = float(lo), float(hi)
        th = math.log(self.hi)
        if self.lo > 0:
            tl = math.log(self.lo)
            self._setup(_lin(tl, th, _H), kinks=[tl, th])
        else:
            self._setup(_tail_then_core(th + _LOG_TINY, th + math.log(1e-3), th, _H), kinks=[th])

    def moment(self, k):
        return (self.hi ** (k + 1) - self.lo ** (k + 1)) / ((k + 1) * (self.hi - self.lo))

    def pm(self, k, t, strict=True):
        c = np.clip(t, self.lo, self.hi)
        return (c ** (k + 1) - self.lo ** (k + 1)) / ((k + 1) * (self.hi - self.lo))

    def upper(self, k, t):
        c = np.clip(t, self.lo, self.hi)
        return (self.hi ** (k + 1) - c ** (k + 1)) / ((k + 1) * (self.hi - self.lo))

    def xpdf(self, x):
        return np.where((x >= self.lo) & (x <= self.hi), x / (self.hi - self.lo), 0.0)


class _LognormalLaw(_Continuous):
    """log X ~ N(mu, sigma^2):
    E[X^k 1{X < t}] = e^{k mu + k^2 sigma^2/2} Phi((ln t - mu - k sigma^2) / sigma)."""

    def __init__(self, mu, sigma):
        self.mu, self.sigma = float(mu), float(sigma)
        s = self.sigma
        # z from -9 to 9 + 2 sigma covers the k = 2 tilted law (mean shifted by 2 sigma^2).
        self._setup(self.mu + s * _lin(-9.0, 9.0 + 2.0 * s, min(_Z_STEP, _Z_STEP / s)))

    def moment(self, k):
        return math.exp(k * self.mu + 0.5 * (k * self.sigma) ** 2)

    def _z(self, k, t):
        with np.errstate(divide="ignore"):
            log_t = np.log(np.asarray(t, dtype=np.float64))
            return (log_t - self.mu - k * self.sigma**2) / self.sigma

    def pm(self, k, t, strict=True):
        return self.moment(k) * _ndtr(self._z(k, t))

    def upper(self, k, t):
        return self.moment(k) * _ndtr(-self._z(k, t))

    def xpdf(self, x):
        z = (np.log(x) - self.mu) / self.sigma
        return np.exp(-0.5 * z * z) / (self.sigma * math.sqrt(2.0 * math.pi))


class _WeibullLaw(_Continuous):
    """F(x) = 1 - exp(-(x/scale)^shape):
    E[X^k 1{X < t}] = scale^k Gamma(1 + k/shape) P(1 + k/shape, (t/scale)^shape),
    P the regularized lower incomplete gamma function."""

    def __init__(self, shape, scale):
        self.k, self.s = float(shape), float(scale)
        # z = (x/scale)^shape ~ Exp(1); the X^2-weighted law is Gamma(1 + 2/shape) in z.
        a2 = 1.0 + 2.0 / self.k
        z_hi = 45.0
        while _special("gammaincc", a2, z_hi) > 1e-17:
            z_hi *= 1.25
        tz = _tail_then_core(_LOG_TINY, math.log(1e-3), math.log(z_hi), _H)
        self._setup(math.log(self.s) + tz / self.k)

    def moment(self, k):
        return self.s**k * math.exp(math.lgamma(1.0 + k / self.k))

    def _z(self, t):
        return (np.maximum(np.asarray(t, dtype=np.float64), 0.0) / self.s) ** self.k

    def pm(self, k, t, strict=True):
        z = self._z(t)
        if k == 0:
            return -np.expm1(-z)
        return self.moment(k) * _special("gammainc", 1.0 + k / self.k, z)

    def upper(self, k, t):
        z = self._z(t)
        return np.exp(-z) if k == 0 else self.moment(k) * _special("gammaincc", 1.0 + k / self.k, z)

    def xpdf(self, x):
        z = (x / self.s) ** self.k
        return self.k * z * np.exp(-z)


class _BoundedParetoLaw(_Continuous):
    """Density alpha L^alpha x^{-alpha-1} / (1 - (L/H)^alpha) on [L, H]:
    E[X^k 1{X < t}] = alpha L^k l exprel((k - alpha) l) / (1 - (L/H)^alpha), l = ln(min(t,H)/L)
    (exprel(z) = (e^z - 1)/z covers the logarithmic case k = alpha)."""

    def __init__(self, alpha, lo, hi):
        self.al, self.lo, self.hi = float(alpha), float(lo), float(hi)
        self.norm = -math.expm1(-self.al * math.log(self.hi / self.lo))
        tl, th = math.log(self.lo), math.log(self.hi)
        self._setup(_lin(tl, th, min(_H, 10.0 * _H / max(self.al, 2.0))), kinks=[tl, th])

    def moment(self, k):
        return float(self.pm(k, self.hi))

    def pm(self, k, t, strict=True):
        ell = np.log(np.clip(t, self.lo, self.hi) / self.lo)
        return self.al * self.lo**k * ell * _exprel((k - self.al) * ell) / self.norm

    def upper(self, k, t):
        ell = np.log(self.hi / np.clip(t, self.lo, self.hi))
        scale = self.hi**k * (self.lo / self.hi) ** self.al
        return self.al * scale * ell * _exprel(-(k - self.al) * ell) / self.norm

    def xpdf(self, x):
        inside = (x >= self.lo) & (x <= self.hi)
        return np.where(inside, self.al * (self.lo / x) ** self.al / self.norm, 0.0)


def _scalar(name, value):
    v = np.asarray(value, dtype=np.float64)
    if v.ndim != 0:
        raise ValueError(f"theory takes a single model, but {name} has shape {v.shape}; "
                         "evaluate batched models one at a time")
    return float(v)


def _size_law(service):
    """The size law of a jaxq.distributions module."""
    if isinstance(service, _dist.Exponential):
        return _ExpLaw(_scalar("mean", service.mean_))
    if isinstance(service, _dist.Deterministic):
        return _Atoms([_scalar("value", service.value)])
    if isinstance(service, _dist.Uniform):
        return _UniformLaw(_scalar("low", service.low), _scalar("high", service.high))
    if isinstance(service, _dist.Lognormal):
        sigma = _scalar("sigma", service.sigma)
        # mu = log(mean) - sigma^2/2 (Lognormal.mu), in float64
        return _LognormalLaw(math.log(_scalar("mean", service.mean_)) - 0.5 * sigma**2, sigma)
    if isinstance(service, _dist.Weibull):
        shape = _scalar("shape", service.shape)
        scale = _scalar("mean", service.mean_) / math.exp(math.lgamma(1.0 + 1.0 / shape))
        return _WeibullLaw(shape, scale)
    if isinstance(service, _dist.BoundedPareto):
        return _BoundedParetoLaw(_scalar("alpha", service.alpha), _scalar("low", service.low),
                                 _scalar("high", service.high))
    if isinstance(service, _dist.Hyperexponential):
        cv, mean = _scalar("cv", service.cv), _scalar("mean", service.mean_)
        # Balanced means, as in Hyperexponential.phases(), recomputed in float64.
        c2 = cv * cv
        p1 = 0.5 * (1.0 + math.sqrt((c2 - 1.0) / (c2 + 1.0)))
        if p1 >= 1.0 - 1e-15:  # cv == 1: a single exponential
            return _ExpLaw(mean)
        return _HyperexpLaw(p1, mean / (2.0 * p1), mean / (2.0 * (1.0 - p1)))
    if isinstance(service, _dist.Empirical):
        s = np.asarray(service.samples, dtype=np.float64)
        if s.ndim != 1:
            raise ValueError(f"theory takes a single model, but samples has shape {s.shape}; "
                             "evaluate batched models one at a time")
        return _Atoms(s)
    raise ValueError(f"no theory for service distribution {type(service).__name__}")


# ----------------------------------------------------------------------------- multiplier laws

class _Mult:
    """Law of the multiplier M (y = x M), continuous. `edges` are log-space panel edges with
    resolution `res`; `kinks` (log) are points where the law's density jumps."""

    kinks = np.zeros(0)

    def _setup(self, edges, kinks=()):
        self.edges = np.unique(np.asarray(edges, dtype=np.float64))
        self.res = _local_res(self.edges)
        self.kinks = np.asarray(kinks, dtype=np.float64)

    def cdf(self, s):  # P(M < s)
        raise NotImplementedError

    def sf(self, s):  # P(M > s)
        raise NotImplementedError

    def spdf(self, s):  # s f_M(s)
        raise NotImplementedError

    def upper(self, k, s):  # E[M^k 1{M > s}]
        raise NotImplementedError

    def moment(self, k):  # E[M^k]
        return float(self.upper(k, 0.0))

    def poly_support(self):
        """(m_a, m_b, polynomial inside): an interval holding all of M's mass but ~1e-20, and
        whether M's density is polynomial on it; None where no such short interval exists."""
        return None

    def uppers(self, s):
        """(E[M^k 1{M > s}] for k = 0, 1, 2)."""
        return [self.upper(k, s) for k in range(3)]

    def between(self, lo, hi):
        """(E[M^k 1{lo < M < hi}] for k = 0, 1, 2), zero where hi <= lo."""
        hi = np.maximum(hi, lo)
        both = self.uppers(np.stack(np.broadcast_arrays(lo, hi)))
        return [u[0] - u[1] for u in both]


class _ExpMult(_Mult):
    """M ~ Exp(1): E[M^k 1{M > s}] = e^{-s} sum_{j<=k} k!/j! s^j."""

    def __init__(self):
        self._setup(_exp1_edges())

    def cdf(self, s):
        return -np.expm1(-s)

    def sf(self, s):
        return np.exp(-s)

    def spdf(self, s):
        return s * np.exp(-np.minimum(s, 800.0))

    def upper(self, k, s):
        s = np.minimum(s, 800.0)
        return np.exp(-s) * [1.0, 1.0 + s, s * s + 2.0 * s + 2.0][k]


class _UniformMult(_Mult):
    """M ~ U[1 - alpha, 1 + alpha]."""

    def __init__(self, alpha):
        self.lo, self.hi, self.w = 1.0 - alpha, 1.0 + alpha, 2.0 * alpha
        tl, th = math.log(self.lo), math.log(self.hi)
        self._setup(_lin(tl, th, _H), kinks=[tl, th])

    def poly_support(self):
        return self.lo, self.hi, True

    def cdf(self, s):
        return np.clip((s - self.lo) / self.w, 0.0, 1.0)

    def sf(self, s):
        return np.clip((self.hi - s) / self.w, 0.0, 1.0)

    def spdf(self, s):
        return np.where((s > self.lo) & (s < self.hi), s / self.w, 0.0)

    def upper(self, k, s):
        c = np.clip(s, self.lo, self.hi)
        return (self.hi ** (k + 1) - c ** (k + 1)) / ((k + 1) * self.w)


class _LognormalMult(_Mult):
    """M = exp(sigma Z): E[M^k 1{M > s}] = e^{k^2 sigma^2/2} Phi(k sigma - ln s / sigma)."""

    def __init__(self, sigma):
        self.sigma = float(sigma)
        s = self.sigma
        self._setup(s * _lin(-9.0, 9.0 + 2.0 * s, min(_Z_STEP, _Z_STEP / s)))

    def _z(self, s):
        with np.errstate(divide="ignore"):
            return np.log(s) / self.sigma

    def poly_support(self):
        # Phi(-9.6) ~ 4e-22; the upper end also covers the M^2-tilted law (z shifted by 2 sigma).
        # Only worth it for narrow noise, where each window holds few atoms.
        if self.sigma > 0.1:
            return None
        s = self.sigma
        return math.exp(-9.6 * s), math.exp((9.6 + 2.0 * s) * s), False

    def cdf(self, s):
        return _ndtr(self._z(s))

    def sf(self, s):
        return _ndtr(-self._z(s))

    def spdf(self, s):
        z = self._z(s)
        return np.exp(-0.5 * z * z) / (self.sigma * math.sqrt(2.0 * math.pi))

    def upper(self, k, s):
        return math.exp(0.5 * (k * self.sigma) ** 2) * _ndtr(k * self.sigma - self._z(s))

    def uppers(self, s):
        z = self._z(s)
        k = np.arange(3.0).reshape((3,) + (1,) * np.ndim(z))
        phi = _ndtr(k * self.sigma - z)  # one call for the three moments
        return [math.exp(0.5 * (j * self.sigma) ** 2) * phi[j] for j in range(3)]


def _multiplier(predictor):
    """The law of M, or None for a perfect predictor (M = 1)."""
    if isinstance(predictor, _pred.Perfect):
        return None
    if isinstance(predictor, _pred.ExponentialNoise):
        return _ExpMult()
    if isinstance(predictor, _pred.UniformNoise):
        a = _scalar("alpha", predictor.alpha)
        return None if a == 0.0 else _UniformMult(a)
    if isinstance(predictor, _pred.LognormalNoise):
        s = _scalar("sigma", predictor.sigma)
        return None if s == 0.0 else _LognormalMult(s)
    raise ValueError(f"no theory for predictor {type(predictor).__name__}")


# ----------------------------------------------------------------------------- policies

class _Spec:
    """A policy reduced to one of the formula families: kind in fcfs, las, spjf, pspjf, sprpt
    (with c), onebit (with threshold and preemptive); oracle policies read the true size."""

    def __init__(self, kind, oracle=False, c=1.0, threshold=0.0, preemptive=False):
        self.kind, self.oracle, self.c = kind, oracle, c
        self.threshold, self.preemptive = threshold, preemptive


def _spec(policy):
    if isinstance(policy, _pol.Linear):
        raise ValueError("policy linear has no exact theory (its rank mixes prediction, attained "
                         "service and age); use the simulator")
    if isinstance(policy, _pol.FCFS):
        return _Spec("fcfs")
    if isinstance(policy, _pol.LAS):
        return _Spec("las")
    if isinstance(policy, _pol.SJF):
        return _Spec("spjf", oracle=True)
    if isinstance(policy, _pol.PSJF):
        return _Spec("pspjf", oracle=True)
    if isinstance(policy, _pol.SRPT):
        return _Spec("sprpt", oracle=True, c=1.0)
    if isinstance(policy, _pol.SPJF):
        return _Spec("spjf")
    if isinstance(policy, _pol.PSPJF):
        return _Spec("pspjf")
    if isinstance(policy, _pol.SPRPT):
        return _Spec("sprpt", c=1.0)
    if isinstance(policy, _pol.SPRPTBounce):
        return _Spec("sprpt-bounce")
    if isinstance(policy, _pol.SPRPTLimited):
        c = _scalar("c", policy.c)
        if not 0.0 <= c <= 1.0:
            raise ValueError(f"c must lie in [0, 1], got {c:g}")
        return _Spec("sprpt", c=c)
    if isinstance(policy, _pol.SkipPredict):
        tau = _scalar("threshold", policy.threshold)
        if not tau >= 0.0:
            raise ValueError(f"threshold must be >= 0, got {tau:g}")
        return _Spec("skippredict", threshold=tau)
    if isinstance(policy, _pol.DelayPredict):
        limit = _scalar("limit", policy.limit)
        if not limit >= 0.0:
            raise ValueError(f"limit must be >= 0, got {limit:g}")
        if _scalar("predict_time", policy.predict_time) != 0.0:
            raise ValueError("delaypredict with server-time predictions has no exact theory; "
                             "use the simulator")
        return _Spec("delaypredict", threshold=limit)
    if isinstance(policy, _pol.OneBit):
        tau = _scalar("threshold", policy.threshold)
        if not tau >= 0.0:
            raise ValueError(f"threshold must be >= 0, got {tau:g}")
        return _Spec("onebit", threshold=tau, preemptive=bool(np.asarray(policy.preemptive)))
    raise ValueError(f"no theory for policy {type(policy).__name__}")


class _Model:
    """Sizes, multiplier (None: y = x) and arrival rate."""

    def __init__(self, service, predictor, load):
        load = float(np.asarray(load, dtype=np.float64))
        if not 0.0 < load < 1.0:
            raise ValueError(f"load must lie in (0, 1), got {load:g}")
        self.law = _size_law(service)
        self.mult = _multiplier(predictor)
        self.load = load
        self.m1, self.m2 = self.law.moment(1), self.law.moment(2)
        self.lam = load / self.m1
        self.w0 = 0.5 * self.lam * self.m2  # mean residual work seen by an arrival, lambda E[X^2]/2
        self._cache = {}

    def cached(self, key, build):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]


def _onebit_mean(m, p_short, rho_short, preemptive):
    """E[T] of onebit from P(short) and rho_S (see the module docstring)."""
    rho = m.load
    if preemptive:
        return (m.m1 + (1.0 - p_short) * m.w0 / (1.0 - rho)) / (1.0 - rho_short)
    return m.m1 + m.w0 / (1.0 - rho_short) * (p_short + (1.0 - p_short) / (1.0 - rho))


def _onebit_response(m, x, short, rho_short, preemptive):
    rho = m.load
    if preemptive:
        return np.where(short, x, x + m.w0 / (1.0 - rho)) / (1.0 - rho_short)
    return x + np.where(short, 1.0, 1.0 / (1.0 - rho)) * m.w0 / (1.0 - rho_short)


def _las_response(m, x):
    """FB: E[T(x)] = lambda E[min(X,x)^2] / (2 (1 - rho_x)^2) + x / (1 - rho_x)."""
    law = m.law
    x = np.asarray(x, dtype=np.float64)
    up0 = law.upper(0, x)
    rho_x = m.lam * (law.pm(1, x, strict=False) + x * up0)
    e2 = law.pm(2, x, strict=False) + x * x * up0
    return m.lam * e2 / (2.0 * (1.0 - rho_x) ** 2) + x / (1.0 - rho_x)


# ----------------------------------------------------------------------------- perfect predictions

def _perfect_R(m):
    """R(u) = int_0^u dv / (1 - rho_<(v)), rho_<(v) = lambda E[X 1{X < v}]."""
    def build():
        law = m.law
        if law.atoms:
            return _atom_R(law, m.lam)
        edges = law.graded
        t, _ = _panel_nodes(edges)
        f = 1.0 / (1.0 - m.lam * law.pm(1, np.exp(t)))
        f_head = 1.0 / (1.0 - m.lam * law.pm(1, math.exp(edges[0])))
        return _Antiderivative(edges, f, f_head, 1.0 / (1.0 - m.load))
    return m.cached("perfect_R", build)


def _atom_R(law, lam):
    """Exact R for atoms: rho_<(v) is constant on each (a_i, a_{i+1}], so R is piecewise linear."""
    b = np.concatenate([[0.0], law.a])
    slope = 1.0 / (1.0 - lam * law.cum[1])  # slope on (b_i, b_{i+1}]; last one beyond max atom
    rb = np.concatenate([[0.0], np.cumsum(np.diff(b) * slope[:-1])])

    def R(u):
        u = np.asarray(u, dtype=np.float64)
        i = np.clip(np.searchsorted(b, u, side="left") - 1, 0, b.size - 1)
        return np.where(u > 0.0, rb[i] + (u - b[i]) * slope[i], 0.0)
    return R


def _perfect_response(m, spec, x):
    """E[T | size x] with y = x (perfect predictions, or an oracle policy)."""
    law, lam = m.law, m.lam
    x = np.asarray(x, dtype=np.float64)
    kind = spec.kind
    if kind in ("spjf", "pspjf", "sprpt"):
        rho_lt = lam * law.pm(1, x, strict=True)
        rho_le = lam * law.pm(1, x, strict=False)
        denom = 2.0 * (1.0 - rho_le) * (1.0 - rho_lt)
    if kind == "spjf":
        return x + 2.0 * m.w0 / denom
    if kind == "pspjf":
        return lam * law.pm(2, x, strict=False) / denom + x / (1.0 - rho_lt)
    if kind == "sprpt":
        c = spec.c
        n = law.pm(2, x, strict=False)
        if c >= 1.0:
            n = n + x * x * law.upper(0, x)
        else:
            # old jobs with x < X <= x/(1-c) rejoin with x left, larger ones with (1-c) X left
            top = x / (1.0 - c)
            n = n + x * x * (law.pm(0, top, strict=False) - law.pm(0, x, strict=False))
            n = n + (1.0 - c) ** 2 * law.upper(2, top)
        R = _perfect_R(m)
        resid = R(x) - R((1.0 - c) * x) + (1.0 - c) * x
        return lam * n / denom + resid
    raise AssertionError(kind)


def _perfect_mean(m, spec):
    law = m.law
    if law.atoms:
        return float(np.sum(law.p * _perfect_response(m, spec, law.a)))
    edges = law.graded
    if spec.kind == "sprpt" and 0.0 < spec.c < 1.0 and law.kinks.size:
        # R((1-c)x) and P(x < X <= x/(1-c)) have kinks at the support ends divided/multiplied by 1-c
        sh = math.log(1.0 - spec.c)
        extra = np.concatenate([law.kinks - sh, law.kinks + sh])
        extra = extra[(extra > law.t_lo) & (extra < law.t_hi)]
        edges = np.unique(np.concatenate([edges, extra]))
    t, w = _panel_nodes(edges)
    x = np.exp(t)
    return float(np.sum(w * law.xpdf(x) * _perfect_response(m, spec, x)))


def _perfect_short(m, tau):
    """(P(short), rho_S) for threshold tau with y = x."""
    law = m.law
    if tau == 0.0:
        return 0.0, 0.0
    if math.isinf(tau):
        return 1.0, m.load
    return float(law.pm(0, tau, strict=True)), m.lam * float(law.pm(1, tau, strict=True))


# ----------------------------------------------------------------------------- noisy predictions

def _s_sets(mult, spec):
    """Log-space edges (each with the resolution of the copy it came from) and exact kinks for the
    functions of s = v / x that the policy needs. sprpt-limited also reads M's law at points
    s/(1-c) and 1 + s, so M's edges and kinks are mapped by m -> (1-c) m and m -> m - 1 too, and
    the two branches of its old-job term swap at s = (1-c)/c."""
    e, r, k = [mult.edges], [mult.res], [mult.kinks]
    if spec.kind == "sprpt":
        c = spec.c
        if 0.0 < c < 1.0:
            sh = math.log(1.0 - c)
            e.append(mult.edges + sh)
            r.append(mult.res)
            k.append(mult.kinks + sh)
            k.append(np.array([math.log((1.0 - c) / c)]))
        if c > 0.0:
            mm = np.exp(mult.edges) - 1.0
            mm = np.sort(np.log(mm[mm > 1e-300]))
            e.append(mm)
            r.append(_local_res(mm))
            mk = np.exp(mult.kinks) - 1.0
            k.append(np.log(mk[mk > 0.0]))
    return np.concatenate(e), np.concatenate(r), np.unique(np.concatenate(k))


def _support_top(law, mult):
    """log of the largest value of Y = X M when both laws are bounded above, else None."""
    x_top = float(np.max(law.kinks)) if law.kinks.size else None
    if law.atoms is False and x_top is not None and x_top < law.t_hi - 1e-12:
        x_top = None  # a kink that is not the upper end of the support
    if x_top is None:
        return None
    if mult is None:
        return x_top
    m_top = float(np.max(mult.kinks)) if mult.kinks.size else None
    if m_top is None or m_top < float(np.max(mult.edges)) - 1e-12:
        return None
    return x_top + m_top


def _noisy_grid(m, spec):
    """Panel edges (log v) for the outer integral over the prediction value v.

    Y = X M, so log Y's structure is that of log X shifted by log M: candidates are sums of X's
    edges and M's (s-)edges, needing the coarser of the two resolutions (a convolution is as smooth
    as its smoother factor), except next to X's kinks (support ends, atoms), where M's fine
    structure shows unblurred. Kinks of X times kinks in s are exact panel edges."""
    def build():
        law = m.law
        e_s, r_s, k_s = _s_sets(m.mult, spec)
        if law.atoms:
            # atoms closer than half the finest noise resolution generate the same edges
            xa = _thin(law.kinks, 0.5 * float(np.min(r_s)), factor=1.0)
            cand = (xa[:, None] + e_s[None, :]).ravel()
            res = np.broadcast_to(r_s, (xa.size, e_s.size)).ravel()
        else:
            # a kink of one law shows the other law's fine structure unblurred
            cand = np.concatenate([(law.edges[:, None] + e_s[None, :]).ravel(),
                                   (law.kinks[:, None] + e_s[None, :]).ravel(),
                                   (law.edges[:, None] + k_s[None, :]).ravel()])
            res = np.concatenate([
                np.maximum(law.res[:, None], r_s[None, :]).ravel(),
                np.broadcast_to(r_s, (law.kinks.size, e_s.size)).ravel(),
                np.broadcast_to(law.res[:, None], (law.edges.size, k_s.size)).ravel()])
        exact = (law.kinks[:, None] + k_s[None, :]).ravel()
        if law.atoms and law.a.size > _MANY_ATOMS and m.mult.kinks.size == 0:
            # Smooth noise: the only kinks left are the policy's (1-c)/c, one per atom, each
            # weighing 1/n; splitting at all of them costs O(n^2), and unsplit they cost < 1e-7
            # (measured) because the grid is already as fine as the noise near every atom.
            exact = np.zeros(0)
        edges = _thin(cand, res)
        # Down to v -> 0: for sprpt L = Y - min(X, Y) has an atom at 0, so the residence integrand
        # P(L < v <= Y) / (1 - rho(v)) stays of order one as v -> 0 (power laws: coarse panels).
        edges = _finish_edges(np.concatenate([edges, [edges[0] + _LOG_TINY]]), exact)
        top = _support_top(law, m.mult)
        if top is not None:
            edges = _grade_below(edges, top)
        return _grade_near_poles(m, spec, edges)
    return m.cached(("grid", spec.kind, spec.c), build)


def _grade_near_poles(m, spec, edges, levels=40):
    """Refine geometrically around the edges where 1/(1 - rho(v)) has a pole close by.

    Continued past an edge b (from the panel on either side), 1 - rho(v) vanishes at a distance of
    about d = (1 - rho(b)) / |rho'| in log v, with rho' the slope at b or the mean slope over the
    panel (the smaller d of the two: near the top of a bounded Y the slope can vanish at b while
    1 - rho keeps falling quadratically). When the load is close to 1 this is tiny near the top of
    a bounded Y (uniform noise on a bounded size law, say), and Gauss-Legendre on a panel much wider
    than d converges slowly; panels shrinking geometrically toward b, down to d/4, make it
    exponentially convergent again. (v rho'(v) = lambda E[X s f_M(s)]; it may jump at b, so both
    sides are looked at.)"""
    v = np.exp(edges)
    n = v.size
    eps = 1e-9
    s = _noisy_sums(m, spec, np.concatenate([v, v * (1 - eps), v * (1 + eps)]), ("F1", "H1"))
    one = 1.0 - m.lam * s["F1"][:n]
    slope = m.lam * v * np.maximum(s["H1"][n:2 * n], s["H1"][2 * n:])  # v rho'(v)
    gaps = np.diff(edges)
    mean_slope = np.abs(np.diff(one)) / gaps  # over each panel
    extra = []
    # (edge, panel) pairs: the panel left of edge i is i - 1, the one right of it is i
    for side, edge, panel in ((-1, np.arange(1, n), np.arange(0, n - 1)),
                              (1, np.arange(0, n - 1), np.arange(0, n - 1))):
        d = one[edge] / np.maximum(np.maximum(slope[edge], mean_slope[panel]), 1e-300)
        near = gaps[panel] > 4.0 * d
        for i, p, di in zip(edge[near], panel[near], d[near]):
            h = gaps[p] * 0.5 ** np.arange(1, levels + 1)
            extra.append(edges[i] + side * h[h > 0.25 * di])
    if not extra:
        return edges
    return np.unique(np.concatenate([edges] + extra))


def _inner_edges(m, spec):
    """The s-space points (log) at which each row's inner panels in x are split: x = v / s."""
    def build():
        e, r, k = _s_sets(m.mult, spec)
        return np.unique(np.concatenate([_thin(e, r), k]))
    return m.cached(("inner", spec.kind, spec.c), build)


def _q_tail(mult, s, c):
    """Q_c(s) = E_M[(max(1 + s - M, 1 - c M)^+)^2 1{M > s}]: the old-job term of sprpt-limited for
    x = 1 and y = s (an old job with multiplier M > s rejoins with x - min(x M - y, c x M) left).

    For s < M < min(s/(1-c), 1+s) the first branch is the larger and positive; for
    s/(1-c) < M < 1/c the second. Both are quadratics in M, integrated with M's partial moments."""
    one_s = 1.0 + s
    mstar = s / (1.0 - c) if c < 1.0 else np.full(np.shape(s), np.inf)
    top = np.minimum(mstar, one_s)
    i0, i1, i2 = mult.between(s, top)
    out = one_s**2 * i0 - 2.0 * one_s * i1 + i2
    if c == 0.0:
        out = out + mult.sf(s)  # rank never falls: an old job with Y > y waits until J is done
    elif c < 1.0:
        j0, j1, j2 = mult.between(mstar, np.full(np.shape(s), 1.0 / c))
        out = out + (j0 - 2.0 * c * j1 + c * c * j2)
    return out


# What each expectation over X needs: (function of s = v/x, power of x, divided by v).
_SUMS = {
    "F0": ("cdf", 0, False),  # P(Y < v)
    "F1": ("cdf", 1, False),  # E[X 1{Y < v}]
    "F2": ("cdf", 2, False),  # E[X^2 1{Y < v}]
    "S0": ("sf", 0, False),  # P(Y > v)
    "G": ("spdf", 0, True),  # density of Y at v: E[f_M(v/X) / X] = E[s f_M(s)] / v
    "H1": ("spdf", 1, True),  # E[X f_M(v/X) / X]: E[X | Y = v] times the density
    "NQ": ("q", 2, False),  # E[X^2 Q_c(v/X)]: old jobs with Y > v, sprpt-limited
    "PL": ("pl", 0, False),  # P(L > v), L = Y - min(X, c Y)
}


def _phi(mult, c, name, s):
    """The functions of s = v / x behind _SUMS (closed forms in M's law)."""
    if name == "cdf":
        return mult.cdf(s)
    if name == "sf":
        return mult.sf(s)
    if name == "spdf":
        return mult.spdf(s)
    if name == "q":
        return _q_tail(mult, s, c)
    if name == "pl":
        return mult.sf(1.0 + s if c >= 1.0 else np.minimum(1.0 + s, s / (1.0 - c)))
    raise AssertionError(name)


def _noisy_sums(m, spec, v, need):
    """The expectations over X listed in _SUMS at each prediction value v (rows).

    Continuous X: Gauss-Legendre in log x on X's panels, split per row at x = v / s for the edges
    and kinks s of the functions of s. Atoms: exact sums (by window sums when M is bounded, see
    _AtomWindowSums)."""
    law, mult, c = m.law, m.mult, spec.c
    v = np.asarray(v, dtype=np.float64).ravel()
    out = {k: np.zeros(v.size) for k in need}
    if v.size == 0:
        return out
    if law.atoms and mult.poly_support() is not None:
        fast = m.cached(("atom-windows", spec.kind, spec.c), lambda: _AtomWindowSums(m, spec))
        return fast(v, need)
    if law.atoms:
        per_row = law.a.size
    else:
        s_pts = _inner_edges(m, spec)
        per_row = (law.edges.size - 1 + s_pts.size) * _GL_N
    rows = max(1, _CHUNK // per_row)
    for i0 in range(0, v.size, rows):
        vr = v[i0:i0 + rows, None]
        if law.atoms:
            x = law.a[None, :]
            w = law.p[None, :]
        else:
            extra = np.clip(np.log(vr) - s_pts[None, :], law.t_lo, law.t_hi)
            edges = np.sort(np.concatenate(
                [np.broadcast_to(law.edges, (vr.shape[0], law.edges.size)), extra], axis=1), axis=1)
            t, w = _panel_nodes(edges)
            x = np.exp(t)
            w = w * law.xpdf(x)
        s = vr / x
        phis = {}
        for key in need:
            name, k, per_v = _SUMS[key]
            if name not in phis:
                phis[name] = _phi(mult, c, name, s)
            val = np.sum(w * x**k * phis[name], axis=1)
            out[key][i0:i0 + rows] = val / vr[:, 0] if per_v else val
    return out


class _AtomWindowSums:
    """Sums over atoms in about O(log n) per row, when M's law has a bounded effective support.

    Let M live on [m_a, m_b] (uniform: exactly; lognormal: up to 1e-20 of the mass). Every function
    of s in _SUMS then is a polynomial of degree <= 3 in s between consecutive points kappa_i (the
    ends m_a, m_b mapped by the policy's transformations m -> (1-c) m, m -> m - 1, and (1-c)/c),
    except on "active" intervals inside the mapped copies of (m_a, m_b) when M's density there is
    not polynomial (lognormal). With s = v / x_j,

        sum_j p_j x_j^k phi(v / x_j) = sum_i sum_d c_{i,d} v^d sum_{j in window i} p_j x_j^(k-d),

    where window i holds the atoms with v/x_j in (kappa_i, kappa_{i+1}): a contiguous run of the
    sorted atoms, whose sums are differences of cumulative sums, taken from the small end for
    k - d >= 0 and from the large end for k - d < 0 so the terms that dominate each cumulative sum
    lie inside the window. Active windows are summed term by term."""

    def __init__(self, m, spec):
        law, mult, c = m.law, m.mult, spec.c
        self.mult, self.c, self.p, self.a = mult, c, law.p, law.a
        m_a, m_b, poly_inside = mult.poly_support()
        copies = [(m_a, m_b)]  # where M's mass sits, as seen by the functions of s
        if spec.kind == "sprpt":
            # q and pl read M at s/(1-c) while s < (1-c)/c and at 1 + s beyond
            switch = (1.0 - c) / c if c > 0.0 else np.inf
            if 0.0 < c < 1.0:
                copies.append(((1.0 - c) * m_a, min((1.0 - c) * m_b, switch)))
            if c > 0.0 and m_b - 1.0 > switch:
                copies.append((max(m_a - 1.0, switch), m_b - 1.0))
        pts = [e for cp in copies for e in cp if e > 0.0]
        if spec.kind == "sprpt" and 0.0 < c < 1.0:
            pts.append((1.0 - c) / c)
        self.b = np.concatenate([[0.0], np.unique(pts), [np.inf]])  # interval ends in s
        lo, hi = self.b[:-1], self.b[1:]
        mid = np.where(np.isfinite(hi), 0.5 * (lo + hi), 2.0 * lo + 1.0)
        # cdf, sf and spdf read M at s only; q and pl also at the mapped copies
        self.active = {}
        for name in ("cdf", "sf", "spdf", "q", "pl"):
            act = np.zeros(lo.size, dtype=bool)
            if not poly_inside:
                for cp in copies[:1] if name in ("cdf", "sf", "spdf") else copies:
                    act |= (mid > cp[0]) & (mid < cp[1])
            self.active[name] = act
        # Polynomial coefficients on the other intervals, from 4 samples (exact for cubics).
        fin = np.isfinite(hi)
        width = np.where(fin, hi - lo, np.maximum(lo, 1.0))
        base = np.where(fin, lo, lo + width)  # the last interval [kappa_K, inf): sample beyond
        u = 0.5 * (1.0 - np.cos(np.pi * (np.arange(4) + 0.5) / 4))  # Chebyshev points in (0, 1)
        s = base[:, None] + width[:, None] * u[None, :]
        vand = s[:, :, None] ** np.arange(4)
        self.coef = {}
        for name in ("cdf", "sf", "spdf", "q", "pl"):
            vals = _phi(mult, c, name, s)
            coef = np.linalg.solve(vand, vals[..., None])[..., 0]
            coef[self.active[name]] = 0.0
            self.coef[name] = coef
        pa = law.p
        self.fwd = {e: np.concatenate([[0.0], np.cumsum(pa * self.a**e)]) for e in range(0, 3)}
        self.bwd = {e: np.concatenate([np.cumsum((pa * self.a**e)[::-1])[::-1], [0.0]])
                    for e in range(-3, 0)}

    def _window(self, e, lo_i, hi_i):
        if e >= 0:
            cum = self.fwd[e]
            return cum[hi_i] - cum[lo_i]
        cum = self.bwd[e]
        return cum[lo_i] - cum[hi_i]

    def __call__(self, v, need):
        v = np.asarray(v, dtype=np.float64)
        vq = np.maximum(v, 1e-300)[:, None]  # v = 0 (a zero prediction) is the limit v -> 0
        with np.errstate(divide="ignore"):
            # atoms with v / x in (b_i, b_{i+1}) are those with x in (v / b_{i+1}, v / b_i)
            lo_i = np.searchsorted(self.a, vq / self.b[None, 1:], side="right")
            hi_i = np.searchsorted(self.a, vq / self.b[None, :-1], side="right")
        out = {}
        for key in need:
            name, k, _ = _SUMS[key]
            coef = self.coef[name]
            total = np.zeros(v.shape)
            for d in range(4):
                used = np.abs(coef[:, d]) > 0
                if np.any(used):
                    win = self._window(k - d, lo_i[:, used], hi_i[:, used])
                    total += v**d * (win @ coef[used, d])
            out[key] = total
        for i in range(self.b.size - 1):
            keys = [key for key in need if self.active[_SUMS[key][0]][i]]
            if keys:
                self._add_explicit(v, lo_i[:, i], hi_i[:, i], keys, out)
        return {key: out[key] / v if _SUMS[key][2] else out[key] for key in need}

    def _add_explicit(self, v, lo_i, hi_i, need, out):
        """Add the terms of the atoms in an active window one by one (in blocks of rows)."""
        counts = hi_i - lo_i
        r0 = 0
        while r0 < v.size:
            # rows up to about _CHUNK terms
            csum = np.cumsum(counts[r0:])
            r1 = r0 + max(1, int(np.searchsorted(csum, _CHUNK, side="right")))
            cnt = counts[r0:r1]
            total = int(cnt.sum())
            if total:
                rows = np.repeat(np.arange(r0, r1), cnt)
                start = np.repeat(np.cumsum(cnt) - cnt, cnt)
                j = lo_i[rows] + (np.arange(total) - start)
                x, w = self.a[j], self.p[j]
                s = v[rows] / x
                phis = {}
                for key in need:
                    name, k, _ = _SUMS[key]
                    if name not in phis:
                        phis[name] = _phi(self.mult, self.c, name, s)
                    out[key] += np.bincount(rows, weights=w * x**k * phis[name], minlength=v.size)
            r0 = r1


def _noisy_nodes(m, spec):
    edges = _noisy_grid(m, spec)
    t, w = _panel_nodes(edges)
    v = np.exp(t)
    return edges, v, w * v  # dv = v dt


def _noisy_mean(m, spec):
    """E[T] as one integral over the prediction value v (see the module docstring)."""
    lam, kind, c = m.lam, spec.kind, spec.c
    _, v, wv = _noisy_nodes(m, spec)
    if kind == "spjf":
        s = _noisy_sums(m, spec, v, ("F1", "G"))
        return m.m1 + m.w0 * float(np.sum(wv * s["G"] / (1.0 - lam * s["F1"]) ** 2))
    if kind == "pspjf":
        s = _noisy_sums(m, spec, v, ("F1", "F2", "G", "H1"))
        one = 1.0 - lam * s["F1"]
        return float(np.sum(wv * (0.5 * lam * s["F2"] * s["G"] / one**2 + s["H1"] / one)))
    if kind == "sprpt":
        s = _noisy_sums(m, spec, v, ("F1", "F2", "G", "NQ", "S0", "PL"))
        one = 1.0 - lam * s["F1"]
        wait = 0.5 * lam * (s["F2"] + s["NQ"]) * s["G"] / one**2
        resid = (s["S0"] - s["PL"]) / one  # P(L < v <= Y) / (1 - rho(v))
        mult = m.mult
        if c > 0.0:  # E[(1 - c M)^+]: the part of a job served locked, after c y
            hi = 1.0 / c
            locked = (1.0 - mult.upper(0, hi)) - c * (mult.moment(1) - mult.upper(1, hi))
        else:
            locked = 1.0
        return m.m1 * float(locked) + float(np.sum(wv * (wait + resid)))
    raise AssertionError(kind)


def _noisy_R(m, spec):
    """R(u) = int_0^u dv / (1 - rho(v)), rho(v) = lambda E[X 1{Y < v}], on the v panels."""
    def build():
        edges, v, _ = _noisy_nodes(m, spec)
        f = 1.0 / (1.0 - m.lam * _noisy_sums(m, spec, v, ("F1",))["F1"])
        f_head = 1.0 / (1.0 - m.lam * _noisy_sums(m, spec, [math.exp(edges[0])], ("F1",))["F1"][0])
        return _Antiderivative(edges, f, f_head, 1.0 / (1.0 - m.load))
    return m.cached(("R", spec.kind, spec.c), build)


def _noisy_response(m, spec, x, y):
    lam, kind, c = m.lam, spec.kind, spec.c
    yu, inv = np.unique(y, return_inverse=True)
    need = {"spjf": ("F1",), "pspjf": ("F1", "F2"), "sprpt": ("F1", "F2", "NQ")}[kind]
    s = {k: val[inv].reshape(y.shape) for k, val in _noisy_sums(m, spec, yu, need).items()}
    one = 1.0 - lam * s["F1"]
    if kind == "spjf":
        return x + m.w0 / one**2
    if kind == "pspjf":
        return 0.5 * lam * s["F2"] / one**2 + x / one
    R = _noisy_R(m, spec)
    wait = 0.5 * lam * (s["F2"] + s["NQ"]) / one**2
    resid = R(y) - R(np.maximum(y - x, (1.0 - c) * y)) + np.maximum(x - c * y, 0.0)
    return wait + resid


def _noisy_short(m, tau):
    if tau == 0.0:
        return 0.0, 0.0
    if math.isinf(tau):
        return 1.0, m.load
    s = _noisy_sums(m, _Spec("spjf"), [tau], ("F0", "F1"))
    return float(s["F0"][0]), m.lam * float(s["F1"][0])


# ----------------------------------------------------------------------------- helpers of the
# formulas built on this module (jaxq.theory_prediction_cost, jaxq.theory_bounce)

def _require_density(m, name):
    if m.law.atoms:
        raise ValueError(f"the theory of {name} needs sizes with a density, not deterministic or "
                         f"empirical ones; use the simulator")


def _x_expect(m, v, splits, fns):
    """For each row v_i (n,): E[f(X, v_i)] for every f in fns (f(x (r, k), v (r, 1)) -> (r, k)),
    by Gauss-Legendre in log x on the size law's panels, split per row at splits (n, s) (x
    values; those <= 0 or not finite are ignored)."""
    law = m.law
    v = np.asarray(v, dtype=np.float64).ravel()
    splits = np.asarray(splits, dtype=np.float64).reshape(v.size, -1)
    out = [np.zeros(v.size) for _ in fns]
    per_row = (law.edges.size - 1 + splits.shape[1]) * _GL_N
    rows = max(1, _CHUNK // per_row)
    for i0 in range(0, v.size, rows):
        vr = v[i0:i0 + rows, None]
        sp = splits[i0:i0 + rows]
        with np.errstate(divide="ignore", invalid="ignore"):
            ls = np.where((sp > 0) & np.isfinite(sp), np.log(np.where(sp > 0, sp, 1.0)), law.t_lo)
        extra = np.clip(ls, law.t_lo, law.t_hi)
        edges = np.sort(np.concatenate(
            [np.broadcast_to(law.edges, (vr.shape[0], law.edges.size)), extra], axis=1), axis=1)
        t, w = _panel_nodes(edges)
        x = np.exp(t)
        w = w * law.xpdf(x)
        for j, f in enumerate(fns):
            out[j][i0:i0 + rows] = np.sum(w * f(x, vr), axis=1)
    return out


def _mult_kinks(mult):
    """M's kinks (values, not logs)."""
    return np.exp(mult.kinks) if mult.kinks.size else np.zeros(0)


def _with_edge(edges, value):
    """Log-space panel edges with log(value) added where it falls inside them."""
    if value > 0.0 and edges[0] < math.log(value) < edges[-1]:
        return np.unique(np.concatenate([edges, [math.log(value)]]))
    return edges


# ----------------------------------------------------------------------------- public API

def _errstate():
    return np.errstate(divide="ignore", over="ignore", under="ignore", invalid="ignore")


def _short(m, tau):
    return _perfect_short(m, tau) if m.mult is None else _noisy_short(m, tau)


def supports(policy, service, predictor) -> bool:
    """Whether `mean_response_time` has an exact formula for this model (False for linear)."""
    try:
        _spec(policy)
        _size_law(service)
        _multiplier(predictor)
    except ValueError:
        return False
    return True


def mean_response_time(policy, service, predictor, load, servers: int = 1,
                       dispatch=None) -> float:
    """Exact E[T] of the M/G/1 queue with Poisson arrivals at lambda = load / E[X]; with
    servers = k > 1, of M/M/k under fcfs (Erlang C, jaxq.erlang), at load = lambda E[X] / k.

    With a dispatch rule (jaxq.Dispatch) the k servers have queues of their own. Random
    dispatch splits the Poisson stream into k Poisson streams, so each server is the M/G/1
    queue at `load`, under any policy. Least-work dispatch to fcfs servers sends each job where
    it starts soonest, which is the central fcfs queue (Erlang C with exponential sizes). Other
    rules have no exact formula (jaxq.supermarket has power-of-d's limit as k -> oo).

    Raises ValueError for load outside (0, 1) and for models without an exact theory (linear;
    k > 1 with another policy or non-exponential sizes; the other dispatch rules)."""
    if dispatch is not None and servers != 1:
        if dispatch.rule == "random":
            servers = 1
        elif dispatch.rule == "least-work" and dispatch.d is None:
            if not isinstance(_pol.without_aging(policy), _pol.FCFS):
                raise ValueError(f"least-work dispatch has an exact theory under fcfs only, got "
                                 f"policy {policy.name!r}")
        else:
            raise ValueError(f"dispatch {dispatch.rule!r} has no exact theory (random, and "
                             f"least-work over all servers with fcfs, do; "
                             f"jaxq.supermarket gives power-of-d's limit as servers -> oo)")
    if servers != 1:
        return _multi_server_mean(policy, service, load, servers)
    spec = _spec(policy)
    m = _Model(service, predictor, load)
    with _errstate():
        if spec.kind == "fcfs":
            out = m.m1 + m.w0 / (1.0 - m.load)
        elif spec.kind == "onebit":
            p_s, rho_s = _short(m, spec.threshold)
            out = _onebit_mean(m, p_s, rho_s, spec.preemptive)
        elif spec.kind == "las":
            out = _perfect_mean_las(m)
        elif spec.kind == "skippredict":
            out = _cost_theory().skippredict_mean(m, spec.threshold)
        elif spec.kind == "delaypredict":
            out = _cost_theory().delaypredict_mean(m, spec.threshold)
        elif spec.kind == "sprpt-bounce":
            from jaxq import theory_bounce  # it builds on this module's quadrature
            out = theory_bounce.sprpt_bounce_mean(m)
        elif spec.oracle or m.mult is None:
            out = _perfect_mean(m, spec)
        else:
            out = _noisy_mean(m, spec)
    out = float(out)
    if not math.isfinite(out):
        raise FloatingPointError("mean response time evaluated to a non-finite number")
    return out


def _cost_theory():
    from jaxq import theory_prediction_cost  # it builds on this module's quadrature
    return theory_prediction_cost


def mean_prediction_cost(policy, service, predictor, cost) -> float:
    """The mean prediction cost per job, cost.cheap P(one-bit prediction) + cost.full P(full
    prediction), under `policy` (jaxq.PredictionCost: which predictions a job gets is the
    policy's). skippredict's full predictions go to the jobs with Y >= threshold, delaypredict's
    to those with X > limit."""
    spec = _spec(policy)
    cheap, full = _scalar("cheap", cost.cheap), _scalar("full", cost.full)
    needs = policy.needs
    if spec.kind == "skippredict":
        m = _Model(service, predictor, 0.5)  # the load does not enter P(Y >= threshold)
        p_short, _ = _short(m, spec.threshold)
        return cheap + full * (1.0 - p_short)
    if spec.kind == "delaypredict":
        law = _size_law(service)
        return full * float(law.upper(0, spec.threshold))
    return {"none": 0.0, "cheap": cheap, "full": full}[needs]


def cost_terms(policy, service, predictor, load, cost, servers: int = 1,
               dispatch=None) -> dict:
    """Exact mean_response_time, mean_prediction_cost and cost (cost.objective: their sum under
    the external model). Server-time costs change the queue of a policy that makes predictions,
    which has no exact theory here: refused (a policy that makes none runs as without costs)."""
    if cost.model != "external" and policy.needs != "none":
        raise ValueError(f"no exact theory for predictions that take server time (model "
                         f"{cost.model!r}, policy {policy.name!r}): they change the queue; the "
                         f"external cost model has one, else use the simulator")
    mean = mean_response_time(policy, service, predictor, load, servers, dispatch)
    paid = mean_prediction_cost(policy, service, predictor, cost)
    return {"mean_response_time": mean, "mean_prediction_cost": paid,
            "cost": float(cost.objective(mean, paid))}


def mean_cost(policy, service, predictor, load, cost) -> float:
    """The exact cost (see cost_terms): E[T] + the mean prediction cost per job, external."""
    return cost_terms(policy, service, predictor, load, cost)["cost"]


def _multi_server_mean(policy, service, load, servers) -> float:
    if not isinstance(_pol.without_aging(policy), _pol.FCFS):
        raise ValueError(f"with servers > 1 the exact theory covers fcfs only (Erlang C), got "
                         f"policy {policy.name!r}")
    if not isinstance(service, _dist.Exponential):
        raise ValueError(f"with servers > 1 the exact theory needs exponential sizes (M/M/k), "
                         f"got {type(service).__name__}")
    return erlang.mmk_mean_response_time(servers, _scalar("load", load),
                                         _scalar("mean", service.mean_))


def _perfect_mean_las(m):
    law = m.law
    if law.atoms:
        return float(np.sum(law.p * _las_response(m, law.a)))
    t, w = _panel_nodes(law.graded)
    x = np.exp(t)
    return float(np.sum(w * law.xpdf(x) * _las_response(m, x)))


def response_time(policy, service, predictor, load, x, y) -> np.ndarray:
    """E[T | size x, prediction y], broadcast over x and y.

    With a perfect predictor, and for the oracle policies sjf, psjf and srpt, y is ignored
    (y = x)."""
    spec = _spec(policy)
    if spec.kind in ("skippredict", "delaypredict", "sprpt-bounce"):
        raise ValueError(f"response_time does not cover {spec.kind}; mean_response_time does")
    m = _Model(service, predictor, load)
    x, y = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    if np.any(x < 0) or np.any(np.isnan(x)):
        raise ValueError("x must be >= 0")
    perfect = m.mult is None or spec.oracle
    if perfect:
        y = x
    elif np.any(y < 0) or np.any(np.isnan(y)):
        raise ValueError("y must be >= 0")
    with _errstate():
        if spec.kind == "fcfs":
            out = x + m.w0 / (1.0 - m.load)
        elif spec.kind == "las":
            out = _las_response(m, x)
        elif spec.kind == "onebit":
            _, rho_s = _short(m, spec.threshold)
            out = _onebit_response(m, x, y < spec.threshold, rho_s, spec.preemptive)
        elif perfect:
            out = _perfect_response(m, spec, x)
        else:
            out = _noisy_response(m, spec, x, y)
    return np.asarray(out, dtype=np.float64)


def _golden(f, a, b, tol=1e-10, max_iter=200):
    """Minimise f on [a, b] by golden-section search; returns (argmin, min)."""
    g = 0.5 * (math.sqrt(5.0) - 1.0)
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(max_iter):
        if abs(b - a) <= tol * max(1.0, abs(a) + abs(b)):
            break
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return (c, fc) if fc <= fd else (d, fd)


def optimal_onebit_threshold(service, predictor, load, preemptive: bool) -> tuple[float, float]:
    """The threshold T >= 0 minimising E[T] of onebit, and that E[T].

    E[T] depends on T only through P(Y < T) and rho_S = lambda E[X 1{Y < T}]. With atoms in Y
    (perfect predictor, discrete sizes) it is a step function: every T in (a_{i-1}, a_i] is the
    same policy, and the midpoint of the best such interval is returned (0 for "nobody short",
    twice the largest atom for "everybody short"). Otherwise a log grid over the range of Y brackets
    the minimum and a golden-section search refines it (in log T). T = 0 and T = inf (everybody
    short; inf is returned only when no finite threshold does as well) are candidates too."""
    m = _Model(service, predictor, load)
    pre = bool(preemptive)

    def cost(tau):
        p_s, rho_s = _short(m, tau)
        return _onebit_mean(m, p_s, rho_s, pre)

    with _errstate():
        if m.mult is None and m.law.atoms:
            a = m.law.a
            reps = np.concatenate([[0.0], 0.5 * (a[:-1] + a[1:]), [2.0 * a[-1]]])
            vals = np.array([cost(float(t)) for t in reps])
            i = int(np.argmin(vals))
            return float(reps[i]), float(vals[i])
        if m.mult is None:
            grid = np.exp(m.law.edges)
            p = m.law.pm(0, grid)
            r = m.lam * m.law.pm(1, grid)
        else:
            grid = np.exp(_noisy_grid(m, _Spec("spjf")))
            s = _noisy_sums(m, _Spec("spjf"), grid, ("F0", "F1"))
            p, r = s["F0"], m.lam * s["F1"]
        vals = np.array([_onebit_mean(m, pi, ri, pre) for pi, ri in zip(p, r)])
        i = int(np.argmin(vals))
        best_t, best_v = float(grid[i]), float(vals[i])
        lo, hi = math.log(grid[max(i - 1, 0)]), math.log(grid[min(i + 1, grid.size - 1)])
        if hi > lo:
            tl, vl = _golden(lambda lt: cost(math.exp(lt)), lo, hi)
            if vl < best_v:
                best_t, best_v = math.exp(tl), vl
        at_zero, at_inf = cost(0.0), cost(math.inf)
        if at_zero <= best_v:
            return 0.0, float(at_zero)
        if at_inf < best_v * (1.0 - 1e-14):
            return math.inf, float(at_inf)
        return best_t, best_v
