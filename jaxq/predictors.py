"""Prediction models: what the scheduler sees instead of a job's true size x.

Every model here is multiplicative, y = x * M with M independent of x, which is what makes the
exact theory tractable (jaxq.theory integrates over the law of M). The noise parameter is an
array field, so it can be swept with vmap like any other number.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxq._checks import check_range, check_nonnegative


class Predictor(eqx.Module):
    name: ClassVar[str]

    def predict(self, key: jax.Array, x: jax.Array) -> jax.Array:
        """Predictions y for true sizes x (same shape)."""
        return x * self.multiplier(key, x.shape)

    def multiplier(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        raise NotImplementedError

    def multiplier_density(self, m: jax.Array) -> jax.Array:
        """The density of the multiplier y / x at m (jaxq.spa needs it); none for perfect
        predictions."""
        raise NotImplementedError(f"predictor {self.name!r} has no multiplier density")


class Perfect(Predictor):
    """y = x."""

    name: ClassVar[str] = "perfect"

    def multiplier(self, key, shape):
        return jnp.ones(shape)


class ExponentialNoise(Predictor):
    """y | x ~ Exponential with mean x."""

    name: ClassVar[str] = "exponential"

    def multiplier(self, key, shape):
        return jax.random.exponential(key, shape)

    def multiplier_density(self, m):
        return jnp.where(m >= 0, jnp.exp(-m), 0.0)


class UniformNoise(Predictor):
    """y | x ~ Uniform[(1 - alpha) x, (1 + alpha) x], alpha in [0, 1)."""

    name: ClassVar[str] = "uniform"
    alpha: jax.Array

    def __init__(self, alpha=0.5):
        self.alpha = jnp.asarray(alpha, dtype=float)

    def __check_init__(self):
        check_range("alpha", self.alpha, low=0.0, high=1.0, high_open=True)

    def multiplier(self, key, shape):
        return 1.0 + self.alpha * jax.random.uniform(key, shape, minval=-1.0, maxval=1.0)

    def multiplier_density(self, m):
        inside = jnp.abs(m - 1.0) <= self.alpha
        return jnp.where(inside, 0.5 / self.alpha, 0.0)  # alpha > 0: jaxq.spa checks


class LognormalNoise(Predictor):
    """y = x * exp(sigma Z), Z standard normal (median-unbiased; sigma = 0 is perfect)."""

    name: ClassVar[str] = "lognormal"
    sigma: jax.Array

    def __init__(self, sigma=0.5):
        self.sigma = jnp.asarray(sigma, dtype=float)

    def __check_init__(self):
        check_nonnegative("sigma", self.sigma)

    def multiplier(self, key, shape):
        return jnp.exp(self.sigma * jax.random.normal(key, shape))

    def multiplier_density(self, m):
        # sigma > 0 (jaxq.spa checks); m > 0 always, as m = T / x with T, x > 0
        z = jnp.log(m) / self.sigma
        return jnp.exp(-0.5 * z * z) / (self.sigma * m * jnp.sqrt(2.0 * jnp.pi))


PREDICTORS: dict[str, type[Predictor]] = {
    cls.name: cls for cls in (Perfect, ExponentialNoise, UniformNoise, LognormalNoise)
}

__all__ = ["Predictor", "PREDICTORS", *[c.__name__ for c in PREDICTORS.values()]]
