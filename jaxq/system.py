"""A queueing system to simulate: load, arrival process, service distribution, predictor, policy.

`System` is the unit of a sweep. Any numeric field anywhere inside it may carry a batch axis:
`System(load=jnp.linspace(0.5, 0.95, 10), predictor=LognormalNoise(sigma=...))` is a batch of
configurations, broadcast against each other and run by one vmapped, compiled call.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jaxq._checks import check_range
from jaxq.arrivals import Arrivals, Poisson
from jaxq.distributions import Distribution, Exponential
from jaxq.policies import FCFS, Policy
from jaxq.predictors import Perfect, Predictor


class System(eqx.Module):
    load: jax.Array  # () or (batch,): lambda * E[S]
    service: Distribution
    predictor: Predictor
    policy: Policy
    arrivals: Arrivals
    seed: jax.Array  # () or (batch,) int: configurations with equal seeds see the same jobs

    def __init__(self, load, service: Distribution | None = None,
                 predictor: Predictor | None = None, policy: Policy | None = None,
                 arrivals: Arrivals | None = None, seed=0):
        self.load = jnp.asarray(load, dtype=float)
        self.service = Exponential() if service is None else service
        self.predictor = Perfect() if predictor is None else predictor
        self.policy = FCFS() if policy is None else policy
        self.arrivals = Poisson() if arrivals is None else arrivals
        self.seed = jnp.asarray(seed, dtype=jnp.int32)

    def __check_init__(self):
        check_range("load", self.load, low=0.0, low_open=True, high=np.inf)

    def rate(self) -> jax.Array:
        """Arrival rate lambda = load / E[S]."""
        return self.load / self.service.mean()

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """The broadcast shape of all batch axes (the trailing axis of Empirical samples is data,
        not batch)."""
        shapes = []
        for path, leaf in jax.tree_util.tree_leaves_with_path(self):
            shape = jnp.shape(leaf)
            if _is_empirical_samples(path):
                shape = shape[:-1]
            shapes.append(shape)
        return np.broadcast_shapes(*shapes)

    def broadcast(self) -> "System":
        """Every leaf with the same leading batch shape (samples keep their data axis)."""
        shape = self.batch_shape

        def grow(path, leaf):
            if _is_empirical_samples(path):
                return jnp.broadcast_to(leaf, shape + jnp.shape(leaf)[-1:])
            return jnp.broadcast_to(leaf, shape)

        return jax.tree_util.tree_map_with_path(grow, self)


def _is_empirical_samples(path) -> bool:
    return any(getattr(p, "name", None) == "samples" for p in path)
