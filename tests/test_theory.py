"""Tests of jaxq.theory against closed forms and independent numerical integrations.

The reference values here are written out from the queueing literature (Pollaczek-Khinchine,
Cobham's priority formulas, the SRPT/PSJF formulas of Schrage-Miller and Kleinrock, Mitzenmacher's
SPJF formula with exponential predictions), evaluated with scipy where they are integrals. None of
them calls the module under test, except the consistency checks at the end (limits that must
agree, and the mean against the average of the conditional response times).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxq import distributions as D
from jaxq import policies as pol
from jaxq import predictors as P
from jaxq import theory as th

RHOS = (0.3, 0.7, 0.95)
ALL_POLICIES = (pol.FCFS(), pol.LAS(), pol.SJF(), pol.PSJF(), pol.SRPT(), pol.SPJF(), pol.PSPJF(),
                pol.SPRPT(), pol.SPRPTLimited(0.5), pol.OneBit(1.0), pol.OneBit(1.0, True))


def rel(a, b):
    return abs(a - b) / abs(b)


def pk(load, mean, second):
    """Pollaczek-Khinchine: E[T] = E[X] + lambda E[X^2] / (2 (1 - rho))."""
    lam = load / mean
    return mean + lam * second / (2.0 * (1.0 - load))


# ------------------------------------------------------------------------------ closed forms

@pytest.mark.parametrize("load", RHOS)
def test_mm1_fcfs_and_las(load):
    """M/M/1: FCFS and LAS (= PS in mean for exponential sizes) both give 1 / (1 - rho)."""
    for p in (pol.FCFS(), pol.LAS()):
        got = th.mean_response_time(p, D.Exponential(1.0), P.Perfect(), load)
        assert rel(got, 1.0 / (1.0 - load)) < 1e-9


def _bp_moment(alpha, lo, hi, k):
    """E[X^k] of the bounded Pareto law (k != alpha)."""
    norm = alpha * lo**alpha / (1 - (lo / hi) ** alpha)
    return norm * (hi ** (k - alpha) - lo ** (k - alpha)) / (k - alpha)


SERVICES_WITH_MOMENTS = [
    (D.Exponential(2.0), 2.0, 8.0),
    (D.Deterministic(1.5), 1.5, 2.25),
    (D.Uniform(0.5, 2.5), 1.5, (0.25 + 1.25 + 6.25) / 3),
    (D.Lognormal(1.2), 1.0, math.exp(float(np.float32(1.2)) ** 2)),
    (D.Weibull(0.5), 1.0, 6.0),
    (D.Weibull(2.0, mean=3.0), 3.0, 9.0 * math.gamma(2.0) / math.gamma(1.5) ** 2),
    (D.BoundedPareto(1.5, 1.0, 100.0), _bp_moment(1.5, 1.0, 100.0, 1),
     _bp_moment(1.5, 1.0, 100.0, 2)),
    # alpha = k = 2: the logarithmic case of the second moment
    (D.BoundedPareto(2.0, 0.5, 50.0), _bp_moment(2.0, 0.5, 50.0, 1),
     2.0 * 0.25 / (1 - 1e-4) * math.log(100.0)),
    (D.Hyperexponential(3.0), 1.0, 1.0 + 9.0),
    (D.Empirical([0.5, 1.0, 1.0, 4.0]), 1.625, (0.25 + 1 + 1 + 16) / 4),
]


@pytest.mark.parametrize("service,mean,second", SERVICES_WITH_MOMENTS)
def test_fcfs_is_pollaczek_khinchine(service, mean, second):
    for load in RHOS:
        got = th.mean_response_time(pol.FCFS(), service, P.ExponentialNoise(), load)
        assert rel(got, pk(load, mean, second)) < 1e-6


@pytest.mark.parametrize("load", RHOS)
def test_weibull_half(load):
    """F(x) = 1 - exp(-sqrt(2x)): mean 1, E[X^2] = 6."""
    got = th.mean_response_time(pol.FCFS(), D.Weibull(0.5), P.Perfect(), load)
    assert rel(got, 1.0 + load * 6.0 / (2.0 * (1.0 - load))) < 1e-9


@pytest.mark.parametrize("load", RHOS)
def test_md1_ties_go_to_the_earlier_job(load):
    """Equal sizes: every size- or prediction-based policy with a perfect predictor ties, ties go
    to the earlier arrival, so each of them is FCFS. LAS finishes everybody at the end of the busy
    period: T = (W + d) / (1 - rho) with W = lambda d^2 / (2 (1 - rho))."""
    d = 2.0
    svc = D.Deterministic(d)
    want = pk(load, d, d * d)
    for p in (pol.SJF(), pol.PSJF(), pol.SRPT(), pol.SPJF(), pol.PSPJF(), pol.SPRPT(),
              pol.SPRPTLimited(0.3), pol.OneBit(d), pol.OneBit(d + 1.0)):
        assert rel(th.mean_response_time(p, svc, P.Perfect(), load), want) < 1e-12
    lam = load / d
    las = (lam * d * d / (2 * (1 - load)) + d) / (1 - load)
    assert rel(th.mean_response_time(pol.LAS(), svc, P.Perfect(), load), las) < 1e-12
    # Sizes never enter a non-preemptive work-conserving order for equal sizes (Kleinrock's
    # conservation law), so noisy predictions do not change SJF-by-prediction either.
    for pr in (P.ExponentialNoise(), P.UniformNoise(0.5), P.LognormalNoise(0.7)):
        assert rel(th.mean_response_time(pol.SPJF(), svc, pr, load), want) < 1e-9


@pytest.mark.parametrize("load", RHOS)
def test_two_sizes_are_cobham_priority_classes(load):
    """Sizes 1 (prob 3/4) and 4 (1/4): SJF is non-preemptive priority and PSJF preemptive-resume
    priority with two classes, FCFS within a class (Cobham 1954; e.g. Harchol-Balter, ch. 31-32)."""
    svc = D.Empirical([1.0, 1.0, 1.0, 4.0])
    p1, x1, x2 = 0.75, 1.0, 4.0
    mean = p1 * x1 + (1 - p1) * x2
    lam = load / mean
    rho1 = lam * p1 * x1
    m2_1, m2 = p1 * x1**2, p1 * x1**2 + (1 - p1) * x2**2
    w0 = lam * m2 / 2
    sjf = p1 * (x1 + w0 / (1 - rho1)) + (1 - p1) * (x2 + w0 / ((1 - rho1) * (1 - load)))
    psjf = (p1 * (x1 + lam * m2_1 / (2 * (1 - rho1)))
            + (1 - p1) * (x2 / (1 - rho1) + lam * m2 / (2 * (1 - rho1) * (1 - load))))
    for p, want in ((pol.SJF(), sjf), (pol.SPJF(), sjf), (pol.PSJF(), psjf), (pol.PSPJF(), psjf)):
        assert rel(th.mean_response_time(p, svc, P.Perfect(), load), want) < 1e-12


# ------------------------------------------------------------------------------ scipy references

def _mm1_reference(load):
    """PSJF and SRPT for M/M/1 by direct integration of the textbook formulas (F(x) = 1 - e^-x)."""
    integrate = pytest.importorskip("scipy.integrate")
    lam = load

    def rho(x):  # lambda int_0^x t e^-t dt
        return lam * (1.0 - math.exp(-x) * (1.0 + x))

    def m2(x):  # int_0^x t^2 e^-t dt
        return 2.0 - math.exp(-x) * (x * x + 2.0 * x + 2.0)

    def psjf(x):
        return lam * m2(x) / (2 * (1 - rho(x)) ** 2) + x / (1 - rho(x))

    def srpt_wait(x):
        return lam * (m2(x) + x * x * math.exp(-x)) / (2 * (1 - rho(x)) ** 2)

    def quad(f):
        return integrate.quad(f, 0, np.inf, epsabs=1e-13, epsrel=1e-12, limit=500)[0]

    e_psjf = quad(lambda x: psjf(x) * math.exp(-x))
    # E[int_0^X da / (1 - rho(X - a))] = E[int_0^X dv / (1 - rho(v))]
    #                                  = int P(X > v) / (1 - rho(v)) dv
    e_srpt = (quad(lambda x: srpt_wait(x) * math.exp(-x))
              + quad(lambda v: math.exp(-v) / (1 - rho(v))))
    return e_psjf, e_srpt


@pytest.mark.parametrize("load", RHOS)
def test_mm1_psjf_srpt_against_scipy(load):
    e_psjf, e_srpt = _mm1_reference(load)
    svc = D.Exponential(1.0)
    for pred in (P.Perfect(), P.ExponentialNoise()):  # oracle policies ignore the predictor
        assert rel(th.mean_response_time(pol.PSJF(), svc, pred, load), e_psjf) < 1e-8
        assert rel(th.mean_response_time(pol.SRPT(), svc, pred, load), e_srpt) < 1e-8
    assert rel(th.mean_response_time(pol.PSPJF(), svc, P.Perfect(), load), e_psjf) < 1e-8
    assert rel(th.mean_response_time(pol.SPRPT(), svc, P.Perfect(), load), e_srpt) < 1e-8


def test_srpt_weibull_half_and_response_time_against_scipy():
    """SRPT with F(x) = 1 - exp(-sqrt(2x)), mean and conditional, by scipy."""
    integrate = pytest.importorskip("scipy.integrate")
    special = pytest.importorskip("scipy.special")
    load = 0.8
    lam = load
    k, scale = 0.5, 0.5  # (x / 0.5)^0.5 = sqrt(2x)

    def pm(j, x):  # E[X^j 1{X < x}]
        return scale**j * special.gamma(1 + j / k) * special.gammainc(1 + j / k, (x / scale) ** k)

    def sf(x):
        return math.exp(-math.sqrt(2 * x))

    def rho(x):
        return lam * pm(1, x)

    def resid(x):
        return integrate.quad(lambda v: 1 / (1 - rho(v)), 0, x, epsabs=1e-13, epsrel=1e-12)[0]

    def t_srpt(x):
        return lam * (pm(2, x) + x * x * sf(x)) / (2 * (1 - rho(x)) ** 2) + resid(x)

    xs = np.array([0.01, 0.3, 1.0, 4.0, 20.0])
    got = th.response_time(pol.SRPT(), D.Weibull(0.5), P.Perfect(), load, xs, xs)
    for x, g in zip(xs, got):
        assert rel(g, t_srpt(x)) < 1e-8
    wait = integrate.quad(lambda x: lam * (pm(2, x) + x * x * sf(x)) / (2 * (1 - rho(x)) ** 2)
                          * math.exp(-math.sqrt(2 * x)) / math.sqrt(2 * x), 0, np.inf,
                          epsabs=1e-12, epsrel=1e-11, limit=500)[0]
    res = integrate.quad(lambda v: sf(v) / (1 - rho(v)), 0, np.inf, epsabs=1e-12, epsrel=1e-11,
                         limit=500)[0]
    mean = th.mean_response_time(pol.SRPT(), D.Weibull(0.5), P.Perfect(), load)
    assert rel(mean, wait + res) < 1e-7


@pytest.mark.parametrize("load", (0.5, 0.9))
def test_exponential_predictions_against_bessel_formulas(load):
    """X ~ Exp(1), Y | X ~ Exp(mean X) (Mitzenmacher 2019): with
    int_0^inf x^(nu-1) e^(-x - y/x) dx = 2 y^(nu/2) K_nu(2 sqrt y),
    Y has density g(y) = 2 K_0(2 sqrt y), rho(y) = lambda (1 - 2 y K_2(2 sqrt y)),
    E[X^2 1{Y < y}] = 2 - 2 y^(3/2) K_3(2 sqrt y), E[X | Y = y] g(y) = 2 sqrt(y) K_1(2 sqrt y), and
    SPJF: E[T] = 1 + lambda int g / (1 - rho)^2 dy,
    PSPJF: E[T] = int [lambda E[X^2 1{Y<y}] g / (2 (1 - rho)^2) + E[X | Y=y] g / (1 - rho)] dy."""
    integrate = pytest.importorskip("scipy.integrate")
    special = pytest.importorskip("scipy.special")
    lam = load

    def parts(y):
        r = 2 * math.sqrt(y)
        g = 2 * special.kv(0, r)
        rho = lam * (1 - 2 * y * special.kv(2, r))
        f2 = 2 - 2 * y**1.5 * special.kv(3, r)
        h1 = 2 * math.sqrt(y) * special.kv(1, r)
        return g, rho, f2, h1

    def quad(f):
        # substitute y = e^t: smooth in t at both ends
        return integrate.quad(lambda t: f(math.exp(t)) * math.exp(t), -60, 8, epsabs=1e-13,
                              epsrel=1e-12, limit=500)[0]

    spjf = 1 + lam * quad(lambda y: parts(y)[0] / (1 - parts(y)[1]) ** 2)

    def pspjf_integrand(y):
        g, rho, f2, h1 = parts(y)
        return lam * f2 * g / (2 * (1 - rho) ** 2) + h1 / (1 - rho)

    pspjf = quad(pspjf_integrand)
    svc, pred = D.Exponential(1.0), P.ExponentialNoise()
    assert rel(th.mean_response_time(pol.SPJF(), svc, pred, load), spjf) < 1e-7
    assert rel(th.mean_response_time(pol.PSPJF(), svc, pred, load), pspjf) < 1e-7


def test_sprpt_limited_deterministic_lognormal_noise_against_scipy():
    """X = 1, Y = M lognormal: the SOAP formula for sprpt-limited written out per (x, y),
        T(y) = lambda N(y) / (2 (1 - rho(y))^2) + int_0^min(1, c y) da / (1 - rho(y - a))
               + (1 - c y)^+,
        N(y) = P(M <= y) + E[((1 - min(M - y, c M))^+)^2 1{M > y}],  rho(y) = lambda P(M < y),
    and averaged over M with scipy; also compares response_time pointwise."""
    integrate = pytest.importorskip("scipy.integrate")
    stats = pytest.importorskip("scipy.stats")
    load = 0.8
    lam = load
    svc, pred = D.Deterministic(1.0), P.LognormalNoise(0.3)
    sigma = float(pred.sigma)  # the float32 value the module reads
    M = stats.lognorm(sigma)

    def quad(f, a, b):
        return integrate.quad(f, a, b, limit=300, epsabs=1e-13, epsrel=1e-12)[0]

    def T(y, c):
        def old(m):  # an old job with M = m > y rejoins from attained min(m - y, c m)
            return max(1.0 - min(m - y, c * m), 0.0) ** 2 * M.pdf(m)

        cuts = sorted({p for p in (y / (1 - c) if c < 1 else np.inf, 1 + y,
                                   1 / c if c > 0 else np.inf) if y < p < np.inf})
        bounds = [y] + cuts + [np.inf]
        n = M.cdf(y) + sum(quad(old, a, b) for a, b in zip(bounds[:-1], bounds[1:]))
        upper = min(1.0, c * y)
        res = quad(lambda a: 1 / (1 - lam * M.cdf(y - a)), 0, upper) if upper > 0 else 0.0
        return lam * n / (2 * (1 - lam * M.cdf(y)) ** 2) + res + max(1 - c * y, 0.0)

    for c in (0.5, 1.0):
        ys = np.array([0.3, 0.9, 1.0, 1.7, 2.5])
        got = th.response_time(pol.SPRPTLimited(c), svc, pred, load, 1.0, ys)
        for y, g in zip(ys, got):
            assert rel(g, T(y, c)) < 1e-8
        # average over Z = log(M) / sigma, split where T has kinks (c y = 1 and y = 1)
        kinks = sorted({0.0, math.log(1 / c) / sigma})
        edges = [-10.0] + kinks + [10.0]
        want = sum(integrate.quad(lambda z: T(math.exp(sigma * z), c) * stats.norm.pdf(z), a, b,
                                  epsabs=1e-12, epsrel=1e-11, limit=200)[0]
                   for a, b in zip(edges[:-1], edges[1:]))
        assert rel(th.mean_response_time(pol.SPRPTLimited(c), svc, pred, load), want) < 1e-8


# ------------------------------------------------------------------------------ consistency

NOISY = (P.ExponentialNoise(), P.UniformNoise(0.4), P.LognormalNoise(0.6))
SOME_SERVICES = (D.Exponential(1.0), D.Weibull(0.5), D.Uniform(0.5, 1.5), D.Lognormal(1.0),
                 D.BoundedPareto.with_mean(1.5, 100.0), D.Empirical([0.3, 1.0, 1.0, 2.2, 5.0]))


@pytest.mark.parametrize("service", SOME_SERVICES, ids=lambda s: s.name)
def test_sprpt_limited_endpoints(service):
    """sprpt-limited with c = 1 is sprpt and with c = 0 is spjf (different code paths)."""
    for pred in (P.Perfect(),) + NOISY:
        one = th.mean_response_time(pol.SPRPTLimited(1.0), service, pred, 0.8)
        zero = th.mean_response_time(pol.SPRPTLimited(0.0), service, pred, 0.8)
        assert rel(one, th.mean_response_time(pol.SPRPT(), service, pred, 0.8)) < 1e-12
        assert rel(zero, th.mean_response_time(pol.SPJF(), service, pred, 0.8)) < 1e-9


@pytest.mark.parametrize("service", SOME_SERVICES[:5], ids=lambda s: s.name)
def test_vanishing_noise_approaches_perfect(service):
    """The noisy path (an integral over the prediction value) tends to the perfect-prediction
    path (an integral over the size) as the noise vanishes; the gap is O(sigma^2)."""
    for p in (pol.SPJF(), pol.PSPJF(), pol.SPRPT(), pol.SPRPTLimited(0.5), pol.OneBit(1.0),
              pol.OneBit(0.8, True)):
        exact = th.mean_response_time(p, service, P.Perfect(), 0.8)
        for pred in (P.LognormalNoise(1e-4), P.UniformNoise(1e-4)):
            assert rel(th.mean_response_time(p, service, pred, 0.8), exact) < 1e-6
    assert th.mean_response_time(pol.SPRPT(), service, P.LognormalNoise(0.0), 0.8) == \
        th.mean_response_time(pol.SPRPT(), service, P.Perfect(), 0.8)


@pytest.mark.parametrize("service", SOME_SERVICES, ids=lambda s: s.name)
def test_srpt_is_the_minimum(service):
    """SRPT minimises the mean response time over all policies (Schrage 1968)."""
    srpt = th.mean_response_time(pol.SRPT(), service, P.Perfect(), 0.8)
    for pred in (P.Perfect(),) + NOISY:
        for p in ALL_POLICIES:
            assert th.mean_response_time(p, service, pred, 0.8) >= srpt * (1 - 1e-12)
    # more information helps on average: perfect sprpt <= noisy sprpt <= fcfs (exp sizes)
    if isinstance(service, D.Exponential):
        fcfs = th.mean_response_time(pol.FCFS(), service, P.Perfect(), 0.8)
        for pred in NOISY:
            assert srpt < th.mean_response_time(pol.SPRPT(), service, pred, 0.8) < fcfs


def _mean64(service):
    """E[X] in float64 from the module's (float32) fields."""
    if isinstance(service, D.Uniform):
        return 0.5 * (float(service.low) + float(service.high))
    if isinstance(service, D.BoundedPareto):
        return _bp_moment(float(service.alpha), float(service.low), float(service.high), 1)
    if isinstance(service, D.Empirical):
        return float(np.mean(np.asarray(service.samples, dtype=np.float64)))
    return float(service.mean_)


@pytest.mark.parametrize("service", SOME_SERVICES, ids=lambda s: s.name)
def test_onebit_extremes(service):
    """Threshold 0: nobody is short (FCFS); a threshold above every prediction: everybody is
    short, which is FCFS again without preemption and preemptive LCFS, E[X] / (1 - rho), with."""
    load = 0.7
    fcfs = th.mean_response_time(pol.FCFS(), service, P.Perfect(), load)
    mean = _mean64(service)
    for pred in (P.Perfect(), P.UniformNoise(0.5)):
        for pre in (False, True):
            none_short = th.mean_response_time(pol.OneBit(0.0, pre), service, pred, load)
            assert rel(none_short, fcfs) < 1e-12
        huge = 1e30 if not isinstance(service, D.Lognormal) else 1e38
        assert rel(th.mean_response_time(pol.OneBit(huge), service, pred, load), fcfs) < 1e-12
        lcfs = th.mean_response_time(pol.OneBit(huge, True), service, pred, load)
        assert rel(lcfs, mean / (1 - load)) < 1e-12


@pytest.mark.parametrize("service,pred", [
    (D.Exponential(1.0), P.Perfect()), (D.Exponential(1.0), P.ExponentialNoise()),
    (D.Weibull(0.5), P.UniformNoise(0.5)), (D.BoundedPareto.with_mean(1.5, 1000.0), P.Perfect()),
    (D.Empirical([0.5, 1.0, 1.0, 3.0]), P.Perfect()),
    (D.Empirical([0.5, 1.0, 3.0]), P.LognormalNoise(0.5)),
], ids=lambda v: v.name)
def test_optimal_onebit_threshold_is_a_minimum(service, pred):
    for pre in (False, True):
        tau, best = th.optimal_onebit_threshold(service, pred, 0.8, pre)
        if math.isfinite(tau):
            assert rel(th.mean_response_time(pol.OneBit(tau, pre), service, pred, 0.8), best) < 1e-6
        grid = np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 300)])
        vals = [th.mean_response_time(pol.OneBit(g, pre), service, pred, 0.8) for g in grid]
        assert best <= min(vals) * (1 + 1e-12)


@pytest.mark.parametrize("service", [D.Uniform(0.5, 1.5), D.Empirical([0.3, 1.0, 1.0, 2.2])],
                         ids=lambda s: s.name)
def test_mean_is_the_average_of_the_conditional_response_times(service):
    """mean_response_time (one integral over the prediction value) against response_time (per
    (x, y), with its own residence integral) averaged over the joint law of (X, Y = X M)."""
    integrate = pytest.importorskip("scipy.integrate")
    load = 0.8
    pred = P.UniformNoise(0.5)
    alpha = float(pred.alpha)
    for p in (pol.SPJF(), pol.PSPJF(), pol.SPRPTLimited(0.5), pol.SPRPT()):
        def cond(x):
            # E_M[T(x, x M)], M uniform on [1 - alpha, 1 + alpha]; kinks where y crosses a kink of
            # the law of Y or c y = x: a fine composite Gauss rule is enough at 1e-7
            m = np.linspace(1 - alpha, 1 + alpha, 4001)
            t = th.response_time(p, service, pred, load, x, x * m)
            return integrate.simpson(t, x=m) / (2 * alpha)

        if isinstance(service, D.Empirical):
            xs, ws = np.array([0.3, 1.0, 2.2]), np.array([0.25, 0.5, 0.25])
            want = sum(w * cond(x) for x, w in zip(xs, ws))
        else:
            xg, wg = np.polynomial.legendre.leggauss(40)
            want = sum(0.5 * w * cond(1.0 + 0.5 * x) for x, w in zip(xg, wg))
        assert rel(th.mean_response_time(p, service, pred, load), want) < 2e-6


# ------------------------------------------------------------------------------ bad input

def test_bad_input():
    svc, pred = D.Exponential(1.0), P.Perfect()
    for load in (0.0, -0.5, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"load must lie in \(0, 1\)"):
            th.mean_response_time(pol.FCFS(), svc, pred, load)
        with pytest.raises(ValueError, match="load"):
            th.response_time(pol.SRPT(), svc, pred, load, 1.0, 1.0)
        with pytest.raises(ValueError, match="load"):
            th.optimal_onebit_threshold(svc, pred, load, False)
    with pytest.raises(ValueError, match="linear"):
        th.mean_response_time(pol.Linear(), svc, pred, 0.5)
    with pytest.raises(ValueError, match="linear"):
        th.response_time(pol.Linear(), svc, pred, 0.5, 1.0, 1.0)
    assert not th.supports(pol.Linear(), svc, pred)
    for p in ALL_POLICIES:
        for pr in (P.Perfect(),) + NOISY:
            assert th.supports(p, svc, pr)
    with pytest.raises(ValueError, match="shape"):
        th.mean_response_time(pol.FCFS(), D.Exponential(np.array([1.0, 2.0])), pred, 0.5)
