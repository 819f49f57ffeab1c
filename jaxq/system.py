"""A queueing system to simulate: load, arrival process, service distribution, predictor, policy,
and the servers: behind one central queue, or each with its own queue behind a dispatcher.

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
from jaxq.dispatch import Dispatch
from jaxq.distributions import Distribution, Exponential
from jaxq.policies import FCFS, Policy
from jaxq.prediction_cost import PredictionCost
from jaxq.predictors import Perfect, Predictor


class System(eqx.Module):
    load: jax.Array  # () or (batch,): lambda * E[S]
    service: Distribution
    predictor: Predictor
    policy: Policy
    arrivals: Arrivals
    seed: jax.Array  # () or (batch,) int: configurations with equal seeds see the same jobs
    servers: jax.Array  # () or (batch,) int >= 1: servers fed by one central queue, or by
    #                     the dispatcher if there is one
    dispatch: Dispatch | None  # None: one central queue; else each server has its own queue
    prediction_cost: PredictionCost | None  # None: predictions are free

    def __init__(self, load, service: Distribution | None = None,
                 predictor: Predictor | None = None, policy: Policy | None = None,
                 arrivals: Arrivals | None = None, seed=0, servers=1,
                 dispatch: Dispatch | None = None,
                 prediction_cost: PredictionCost | None = None):
        self.load = jnp.asarray(load, dtype=float)
        self.service = Exponential() if service is None else service
        self.predictor = Perfect() if predictor is None else predictor
        self.policy = FCFS() if policy is None else policy
        self.arrivals = Poisson() if arrivals is None else arrivals
        self.seed = jnp.asarray(seed, dtype=jnp.int32)
        self.servers = _servers(servers)
        if dispatch is not None and not isinstance(dispatch, Dispatch):
            raise TypeError(f"dispatch must be a jaxq.Dispatch or None, got "
                            f"{type(dispatch).__name__}")
        self.dispatch = dispatch
        if prediction_cost is not None and not isinstance(prediction_cost, PredictionCost):
            raise TypeError(f"prediction_cost must be a jaxq.PredictionCost or None, got "
                            f"{type(prediction_cost).__name__}")
        self.prediction_cost = prediction_cost

    def __check_init__(self):
        check_range("load", self.load, low=0.0, low_open=True, high=np.inf)

    def rate(self) -> jax.Array:
        """Arrival rate lambda = servers * load / E[S]: `load` is the load per server."""
        return self.servers * self.load / self.service.mean()

    def engine_policy(self) -> Policy:
        """The policy the engine runs: under server-time prediction costs it also schedules the
        predictions (jaxq.prediction_cost)."""
        if self.prediction_cost is None:
            return self.policy
        return self.prediction_cost.engine_policy(self.policy)

    def work(self, size, prediction) -> jax.Array:
        """Each job's work on a server: its size, plus its predictions under server time."""
        if self.prediction_cost is None:
            return size
        return self.prediction_cost.work(self.policy, size, prediction)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """The broadcast shape of all batch axes (data axes, such as Empirical's samples, left
        out)."""
        return batch_shape(self)

    def broadcast(self) -> "System":
        """Every leaf with the same leading batch shape (data axes kept)."""
        return broadcast(self)


def _servers(servers) -> jax.Array:
    if isinstance(servers, jax.core.Tracer):
        return servers
    values = np.asarray(servers)
    if (values.dtype.kind not in "iu" and not (values.dtype.kind == "f"
                                                and np.all(values == np.round(values)))):
        raise ValueError(f"servers must be whole numbers >= 1, got {servers!r}")
    if values.size and values.min() < 1:
        raise ValueError(f"servers must be >= 1, got {int(values.min())}")
    return jnp.asarray(values, dtype=jnp.int32)


def _data_ndim(root, path) -> int:
    """How many trailing axes of the leaf at `path` are data, not batch: a module lists such
    fields in its DATA_AXES (Empirical.samples, MLP.weights)."""
    node = root
    for entry in path:
        name = getattr(entry, "name", None)
        if name is None:
            return 0
        axes = getattr(type(node), "DATA_AXES", {})
        if name in axes:
            return axes[name]
        node = getattr(node, name)
    return 0


def _batch_part(root, path, leaf) -> tuple[int, ...]:
    shape = jnp.shape(leaf)
    return shape[:len(shape) - _data_ndim(root, path)]


def batch_shape(tree) -> tuple[int, ...]:
    """The broadcast shape of the batch axes of every leaf of `tree` (a System or an LLMSystem);
    ValueError if they do not broadcast."""
    return np.broadcast_shapes(*[_batch_part(tree, path, leaf) for path, leaf
                                 in jax.tree_util.tree_leaves_with_path(tree)])


def broadcast(tree):
    """`tree` with every leaf's batch axes broadcast to batch_shape(tree)."""
    shape = batch_shape(tree)
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.broadcast_to(
            leaf, shape + jnp.shape(leaf)[len(_batch_part(tree, path, leaf)):]), tree)


def flatten(tree):
    """(`tree` broadcast with its batch axes flattened into one leading axis, the batch shape)."""
    shape = batch_shape(tree)
    grown = broadcast(tree)
    return jax.tree_util.tree_map(
        lambda leaf: jnp.reshape(leaf, (-1,) + jnp.shape(leaf)[len(shape):]), grown), shape
