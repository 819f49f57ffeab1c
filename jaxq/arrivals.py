"""Arrival processes: the gaps between consecutive arrivals, given the arrival rate."""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxq._checks import check_positive


class Arrivals(eqx.Module):
    name: ClassVar[str]

    def gaps(self, key: jax.Array, shape: tuple[int, ...], rate: jax.Array) -> jax.Array:
        """Inter-arrival times with mean 1 / rate."""
        raise NotImplementedError


class Poisson(Arrivals):
    """Exponential gaps (the M in M/G/1)."""

    name: ClassVar[str] = "poisson"

    def gaps(self, key, shape, rate):
        return jax.random.exponential(key, shape) / rate


class Renewal(Arrivals):
    """Gamma-distributed gaps with coefficient of variation `cv` (cv = 1 is Poisson)."""

    name: ClassVar[str] = "renewal"
    cv: jax.Array

    def __init__(self, cv=1.0):
        self.cv = jnp.asarray(cv, dtype=float)

    def __check_init__(self):
        check_positive("cv", self.cv)

    def gaps(self, key, shape, rate):
        k = 1.0 / self.cv**2
        return jax.random.gamma(key, k, shape) / (k * rate)


__all__ = ["Arrivals", "Poisson", "Renewal"]
