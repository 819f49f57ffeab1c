"""The cost of predictions: what a cheap one-bit prediction and a full (expensive) one cost, and
where that cost is paid.

* model "external": predictions are made outside the server, at no server time, and each one adds
  its cost to the objective: cost = E[T] + E[prediction cost per job].
* model "server": a prediction occupies the server for its cost. Predictions made at arrival
  (one bit for onebit and skippredict, a full one for sprpt, spjf, ..., and skippredict's long
  jobs) come first, ahead of all job work (jaxq.policies.PredictFirst); delaypredict's full
  prediction is made when a job reaches the limit (DelayPredict.predict_time). The cost is then
  inside the response times: cost = E[T].

Which predictions a job gets is the policy's (Policy.predictions): none for fcfs, las and the
oracle policies, one bit for onebit, a full one for every other policy, and per job for
skippredict (one bit each, a full one if long) and delaypredict (a full one iff x > limit).
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxq._checks import check_choice, check_nonnegative
from jaxq.policies import DelayPredict, Policy, PredictFirst, without_aging


class PredictionCost(eqx.Module):
    MODELS: ClassVar[tuple[str, ...]] = ("external", "server")
    full: jax.Array  # () or (batch,): cost of one full prediction, >= 0
    cheap: jax.Array  # () or (batch,): cost of one cheap one-bit prediction, >= 0
    model: str = eqx.field(static=True)  # "external" or "server"

    def __init__(self, full=0.0, cheap=0.0, model: str = "external"):
        check_choice("model", model, self.MODELS)
        self.full = jnp.asarray(full, dtype=float)
        self.cheap = jnp.asarray(cheap, dtype=float)
        self.model = model

    def __check_init__(self):
        check_nonnegative("full (the cost of a full prediction)", self.full)
        check_nonnegative("cheap (the cost of a one-bit prediction)", self.cheap)

    def per_job(self, policy: Policy, size, prediction) -> jax.Array:
        """The prediction cost of each job (shaped like `size`): cheap per one-bit prediction
        plus full per full prediction it gets under `policy`."""
        cheap, full = policy.predictions(size, prediction)
        zero = jnp.zeros((), self.full.dtype)
        return jnp.where(cheap, self.cheap, zero) + jnp.where(full, self.full, zero)

    def engine_policy(self, policy: Policy) -> Policy:
        """The policy the engine runs: `policy` itself, or under server time the one that
        schedules the prediction work too."""
        if self.model == "external" or policy.needs == "none":
            return policy
        if policy.may_share:
            raise ValueError(f"server-time prediction costs need a policy whose jobs never share "
                             f"the server; policy {policy.name!r} may share (use model "
                             f"'external', or another policy)")
        if isinstance(without_aging(policy), DelayPredict):
            return eqx.tree_at(lambda p: without_aging(p).predict_time, policy, self.full)
        return PredictFirst(policy, self)

    def work(self, policy: Policy, size, prediction) -> jax.Array:
        """Each job's work on the server: its size, plus its prediction time under server time."""
        if self.model == "external":
            return size
        return size + self.per_job(policy, size, prediction)

    def objective(self, mean_response_time, mean_prediction_cost):
        """cost: E[T] plus the mean prediction cost (external), or E[T] alone (server time,
        where the predictions are inside T)."""
        if self.model == "external":
            return mean_response_time + mean_prediction_cost
        return mean_response_time


__all__ = ["PredictionCost"]
