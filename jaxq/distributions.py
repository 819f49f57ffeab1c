"""Job-size (service) distributions.

Each distribution is a small equinox module whose numeric fields are arrays, so a batch of
distributions (say, 100 Weibull shapes) is one module with a leading batch axis on its fields and
is run by `jax.vmap`. The class itself is static: it fixes the code path.

All distributions are parameterised so that the mean is 1 unless the user sets `mean` (or, for the
bounded Pareto and the empirical distribution, gives explicit bounds or samples). The engine
derives the arrival rate from the load as lambda = load / mean().
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from jaxq._checks import check_positive, check_range


def _f(value) -> jax.Array:
    return jnp.asarray(value, dtype=float)


def open_uniform(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Uniform on (0, 1): the midpoints of the grid jax.random.uniform draws from ([0, 1) in
    steps of the float's eps). Sizes are drawn by inversion from it, so none is exactly 0: a
    float32 exponential drawn the usual way is 0 once in 2^23 draws, and that job's slowdown
    0 / 0 turned the mean slowdown of a 16M-job run into NaN."""
    return jax.random.uniform(key, shape) + 0.5 * jnp.finfo(jnp.result_type(float)).eps


def standard_exponential(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Exponential with mean 1, never exactly 0 (see open_uniform)."""
    return -jnp.log1p(-open_uniform(key, shape))


class Distribution(eqx.Module):
    """A positive random variable: the true size x of a job."""

    name: ClassVar[str]

    def sample(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        raise NotImplementedError

    def mean(self) -> jax.Array:
        raise NotImplementedError


class Exponential(Distribution):
    """Exponential with the given mean."""

    name: ClassVar[str] = "exponential"
    mean_: jax.Array  # () or (batch,)

    def __init__(self, mean=1.0):
        self.mean_ = _f(mean)

    def __check_init__(self):
        check_positive("mean", self.mean_)

    def sample(self, key, shape):
        return self.mean_ * standard_exponential(key, shape)

    def mean(self):
        return self.mean_


class Deterministic(Distribution):
    """Every job has size `value`."""

    name: ClassVar[str] = "deterministic"
    value: jax.Array

    def __init__(self, value=1.0):
        self.value = _f(value)

    def __check_init__(self):
        check_positive("value", self.value)

    def sample(self, key, shape):
        return jnp.broadcast_to(self.value, shape).astype(jnp.result_type(float))

    def mean(self):
        return self.value


class Uniform(Distribution):
    """Uniform on [low, high]; the default [0, 2] has mean 1."""

    name: ClassVar[str] = "uniform"
    low: jax.Array
    high: jax.Array

    def __init__(self, low=0.0, high=2.0):
        self.low, self.high = _f(low), _f(high)

    def __check_init__(self):
        check_range("low", self.low, low=0.0, high=np.inf)
        check_range("high - low", self.high - self.low, low=0.0, low_open=True, high=np.inf)

    def sample(self, key, shape):
        return self.low + (self.high - self.low) * open_uniform(key, shape)

    def mean(self):
        return 0.5 * (self.low + self.high)


class Lognormal(Distribution):
    """x = exp(mu + sigma Z) with mu chosen so that E[x] = mean.

    Give `sigma`, or the coefficient of variation with `Lognormal.from_cv(cv)`
    (sigma^2 = log(1 + cv^2)).
    """

    name: ClassVar[str] = "lognormal"
    sigma: jax.Array
    mean_: jax.Array

    def __init__(self, sigma=1.0, mean=1.0):
        self.sigma, self.mean_ = _f(sigma), _f(mean)

    @classmethod
    def from_cv(cls, cv, mean=1.0) -> "Lognormal":
        check_positive("cv", cv)
        return cls(sigma=jnp.sqrt(jnp.log1p(_f(cv) ** 2)), mean=mean)

    def __check_init__(self):
        check_positive("sigma", self.sigma)
        check_positive("mean", self.mean_)

    @property
    def mu(self) -> jax.Array:
        return jnp.log(self.mean_) - 0.5 * self.sigma**2

    def sample(self, key, shape):
        return jnp.exp(self.mu + self.sigma * jax.random.normal(key, shape))

    def mean(self):
        return self.mean_


class Weibull(Distribution):
    """F(x) = 1 - exp(-(x / scale)^shape) with the scale chosen so that E[x] = mean.

    shape 0.5 with mean 1 gives F(x) = 1 - exp(-sqrt(2 x)).
    """

    name: ClassVar[str] = "weibull"
    shape: jax.Array
    mean_: jax.Array

    def __init__(self, shape=0.5, mean=1.0):
        self.shape, self.mean_ = _f(shape), _f(mean)

    def __check_init__(self):
        check_positive("shape", self.shape)
        check_positive("mean", self.mean_)

    @property
    def scale(self) -> jax.Array:
        return self.mean_ / jnp.exp(gammaln(1.0 + 1.0 / self.shape))

    def sample(self, key, shape):
        return self.scale * standard_exponential(key, shape) ** (1.0 / self.shape)

    def mean(self):
        return self.mean_


class BoundedPareto(Distribution):
    """Density proportional to x^-(alpha+1) on [low, high].

    `BoundedPareto.with_mean(alpha, ratio)` picks low so that E[x] = mean for high = ratio * low.
    """

    name: ClassVar[str] = "bounded-pareto"
    alpha: jax.Array
    low: jax.Array
    high: jax.Array

    def __init__(self, alpha, low, high):
        self.alpha, self.low, self.high = _f(alpha), _f(low), _f(high)

    @classmethod
    def with_mean(cls, alpha=1.5, ratio=1000.0, mean=1.0) -> "BoundedPareto":
        check_positive("alpha", alpha)
        check_range("ratio", ratio, low=1.0, low_open=True, high=np.inf)
        unit = cls(alpha, 1.0, ratio)
        low = _f(mean) / unit.mean()
        return cls(alpha, low, low * ratio)

    def __check_init__(self):
        check_positive("alpha", self.alpha)
        check_positive("low", self.low)
        check_range("high / low", self.high / self.low, low=1.0, low_open=True, high=np.inf)

    def sample(self, key, shape):
        u = jax.random.uniform(key, shape)
        tail = (self.low / self.high) ** self.alpha
        return self.low * (1.0 - u * (1.0 - tail)) ** (-1.0 / self.alpha)

    def mean(self):
        a, lo, hi = self.alpha, self.low, self.high
        norm = 1.0 - (lo / hi) ** a
        # a == 1 is the logarithmic limit of the general formula.
        a_safe = jnp.where(jnp.abs(a - 1.0) < 1e-9, 2.0, a)
        general = a_safe / (a_safe - 1.0) * lo * (1.0 - (lo / hi) ** (a_safe - 1.0))
        log_case = lo * jnp.log(hi / lo)
        return jnp.where(jnp.abs(a - 1.0) < 1e-9, log_case, general) / norm


class Hyperexponential(Distribution):
    """Two exponential phases with balanced means (p1/mu1 = p2/mu2), for a coefficient of
    variation cv >= 1 and the given mean."""

    name: ClassVar[str] = "hyperexponential"
    cv: jax.Array
    mean_: jax.Array

    def __init__(self, cv=2.0, mean=1.0):
        self.cv, self.mean_ = _f(cv), _f(mean)

    def __check_init__(self):
        check_range("cv", self.cv, low=1.0, high=np.inf)
        check_positive("mean", self.mean_)

    def phases(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(p1, mean1, mean2): phase 1 is taken with probability p1."""
        c2 = self.cv**2
        p1 = 0.5 * (1.0 + jnp.sqrt((c2 - 1.0) / (c2 + 1.0)))
        return p1, self.mean_ / (2.0 * p1), self.mean_ / (2.0 * (1.0 - p1))

    def sample(self, key, shape):
        k_phase, k_exp = jax.random.split(key)
        p1, m1, m2 = self.phases()
        first = jax.random.uniform(k_phase, shape) < p1
        return jnp.where(first, m1, m2) * standard_exponential(k_exp, shape)

    def mean(self):
        return self.mean_


class Empirical(Distribution):
    """Sizes drawn uniformly from a fixed set of samples (for example measured job sizes).

    With `mean` given the samples are rescaled to that mean; by default they keep their units.
    """

    name: ClassVar[str] = "empirical"
    DATA_AXES: ClassVar[dict] = {"samples": 1}  # the samples' axis is data, not batch
    samples: jax.Array  # (n,) or (batch, n)

    def __init__(self, samples, mean=None):
        s = _f(samples)
        if mean is not None:
            s = s * (_f(mean) / jnp.mean(s, axis=-1, keepdims=True))
        self.samples = s

    @classmethod
    def from_file(cls, path: str, mean=None) -> "Empirical":
        """Read samples from a .npy file or a text file with one number per line."""
        data = np.load(path) if str(path).endswith(".npy") else np.loadtxt(path, ndmin=1)
        return cls(np.ravel(data), mean=mean)

    def __check_init__(self):
        if not isinstance(self.samples, jax.core.Tracer):
            if self.samples.shape[-1] == 0:
                raise ValueError("samples must hold at least one value, got an empty array")
        check_positive("samples", self.samples)

    def sample(self, key, shape):
        i = jax.random.randint(key, shape, 0, self.samples.shape[-1])
        return self.samples[i]

    def mean(self):
        return jnp.mean(self.samples, axis=-1)


SERVICES: dict[str, type[Distribution]] = {
    cls.name: cls
    for cls in (Exponential, Deterministic, Uniform, Lognormal, Weibull, BoundedPareto,
                Hyperexponential, Empirical)
}

__all__ = ["Distribution", "SERVICES", *[c.__name__ for c in SERVICES.values()]]
