"""Scheduling policies as SOAP-style rank functions.

A policy maps what is known about a job in the system to a rank; the job of lowest rank is served.
A rank has three parts:

* primary (float): compared first;
* tiebreak (int): compared among equal primaries, lower first. Almost always the arrival index,
  so ties go to the earlier arrival; the preemptive onebit policy uses minus the index for short
  jobs, which makes them last-come-first-served among themselves;
* locked (bool): a locked job is served ahead of everything and can no longer be preempted
  (non-preemptive policies lock a job once it has started; sprpt-limited once a > c * y).

`slope()` is d(primary)/d(attained) for a job in service that is not locked, and is the same for
every job of a policy (skippredict and delaypredict: -1 for their second class; their first
class is constant, and only the sign matters for a policy that never shares). A negative or zero
slope means a job in service only gets better relative to the waiting ones, so only an arrival
(or a rank jump, below) can preempt it. A positive slope (las, or a linear rank
that weighs attained service more than predicted remaining) means the served job catches up with
waiting ones; jobs whose ranks meet then share the server equally (the limit of ties broken by
arrival order as the rank rises), which is how las becomes processor sharing among the jobs with
least attained service.

Oracle policies (sjf, psjf, srpt) read the true size x; every other policy reads only the
prediction y, the attained service a and the time in system.

A rank may also jump at a level of attained service (delaypredict at its limit, and any policy
whose predictions take server time, jaxq.prediction_cost): such a policy sets `changes` and
`next_change` gives the level, so that the engines stop there and choose again.

`predictions(size, prediction)` says which predictions each job needs, for the cost of
predictions: a cheap one-bit prediction, a full (expensive) one, or neither.

The LLM engine uses the same policies on requests: x is the output length, y its prediction, a the
tokens generated so far, and a request has "started" while its KV cache is resident on the GPU.
It also fills in the request-only features (prompt length, KV tokens held, predicted peak memory)
that `sjf-prompt` and the linear rank's extra weights read.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from jaxq._checks import check_range, check_nonnegative


class JobView(NamedTuple):
    """What a policy may look at, one entry per job slot: shape (K,) for one configuration, or
    (K, B) when the engine runs a batch of B configurations at once. The policy's own parameters
    then have shape (B,), so `rank` must combine fields and parameters elementwise (broadcasting),
    as every policy here does."""

    size: jax.Array  # true size x (only oracle policies may read it)
    prediction: jax.Array  # predicted size y
    attained: jax.Array  # service received so far, a
    age: jax.Array  # time in system
    index: jax.Array  # arrival index (int32), 0 for the first job
    # LLM engine only (None in the queue engine):
    started: jax.Array | None = None  # bool: KV resident on the GPU (default: attained > 0)
    prompt: jax.Array | None = None  # prompt tokens P
    kv: jax.Array | None = None  # KV tokens held
    peak: jax.Array | None = None  # predicted peak memory P + y, tokens


class Rank(NamedTuple):
    primary: jax.Array  # (K,) or (K, B) float
    tiebreak: jax.Array  # (K,) or (K, B) int32
    locked: jax.Array  # (K,) or (K, B) bool


def _rank(jobs: JobView, primary, *, locked=None, tiebreak=None) -> Rank:
    primary = jnp.broadcast_to(jnp.asarray(primary, dtype=jobs.attained.dtype), jobs.attained.shape)
    if tiebreak is None:
        tiebreak = jobs.index
    if locked is None:
        locked = jnp.zeros(jobs.attained.shape, dtype=bool)
    return Rank(primary, tiebreak, locked)


def _started(jobs: JobView) -> jax.Array:
    return jobs.attained > 0 if jobs.started is None else jobs.started


def _request_feature(jobs: JobView, name: str) -> jax.Array:
    value = getattr(jobs, name)
    if value is None:
        raise ValueError(f"this policy reads the request feature {name!r}, which only the LLM "
                         f"engine provides")
    return value


class Policy(eqx.Module):
    name: ClassVar[str]
    uses_true_size: ClassVar[bool] = False
    # Whether slope() can be positive, so that jobs may come to share the server. Policies that
    # never share take a cheaper path through the engine.
    may_share: ClassVar[bool] = False

    # Which predictions every job of the policy needs: "none", "cheap" (one bit) or "full".
    # skippredict and delaypredict decide per job (they override `predictions`).
    needs: ClassVar[str] = "full"
    # Whether the rank of a job may jump at a level of attained service (see next_change).
    changes: ClassVar[bool] = False

    def rank(self, jobs: JobView) -> Rank:
        raise NotImplementedError

    def next_change(self, jobs: JobView) -> jax.Array:
        """The attained service (K,) or (K, B) at which each job's rank next jumps, inf if never;
        read only when `changes`, for the jobs in service."""
        return jnp.full(jobs.attained.shape, jnp.inf, jobs.attained.dtype)

    def predictions(self, size, prediction) -> tuple[jax.Array, jax.Array]:
        """(cheap, full): bool arrays shaped like `size`, whether a job of that size and
        prediction gets a cheap one-bit prediction and a full one."""
        cheap = jnp.full(jnp.shape(size), self.needs == "cheap")
        return cheap, jnp.full(jnp.shape(size), self.needs == "full")

    def slope(self) -> jax.Array:
        return jnp.asarray(0.0)

    def shares(self) -> jax.Array:
        """Whether jobs whose ranks meet share the server: the rank rises with service and a
        started job is not locked."""
        return self.slope() > 0


class FCFS(Policy):
    """First come, first served. A started job is locked: in the queue engine that changes
    nothing (the job in service is always the earliest), in the LLM engine it keeps running
    requests ahead of a preempted earlier one, as vLLM does."""

    name: ClassVar[str] = "fcfs"
    needs: ClassVar[str] = "none"

    def rank(self, jobs):
        return _rank(jobs, 0.0, locked=_started(jobs))


class LAS(Policy):
    """Least attained service (foreground-background): rank a; ties share the server."""

    name: ClassVar[str] = "las"
    needs: ClassVar[str] = "none"
    may_share: ClassVar[bool] = True

    def rank(self, jobs):
        return _rank(jobs, jobs.attained)

    def slope(self):
        return jnp.asarray(1.0)


class SJF(Policy):
    """Shortest job first by true size, non-preemptive."""

    name: ClassVar[str] = "sjf"
    needs: ClassVar[str] = "none"
    uses_true_size: ClassVar[bool] = True

    def rank(self, jobs):
        return _rank(jobs, jobs.size, locked=_started(jobs))


class PSJF(Policy):
    """Preemptive shortest job first by true size."""

    name: ClassVar[str] = "psjf"
    needs: ClassVar[str] = "none"
    uses_true_size: ClassVar[bool] = True

    def rank(self, jobs):
        return _rank(jobs, jobs.size)


class SRPT(Policy):
    """Shortest remaining processing time: rank x - a."""

    name: ClassVar[str] = "srpt"
    needs: ClassVar[str] = "none"
    uses_true_size: ClassVar[bool] = True

    def rank(self, jobs):
        return _rank(jobs, jobs.size - jobs.attained)

    def slope(self):
        return jnp.asarray(-1.0)


class SPJF(Policy):
    """Shortest predicted job first, non-preemptive: rank y."""

    name: ClassVar[str] = "spjf"

    def rank(self, jobs):
        return _rank(jobs, jobs.prediction, locked=_started(jobs))


class PSPJF(Policy):
    """Preemptive shortest predicted job first: rank y."""

    name: ClassVar[str] = "pspjf"

    def rank(self, jobs):
        return _rank(jobs, jobs.prediction)


class SPRPT(Policy):
    """Shortest predicted remaining processing time: rank y - a, falling below zero once a job
    outlives its prediction, so such a job is never preempted by a new arrival."""

    name: ClassVar[str] = "sprpt"

    def rank(self, jobs):
        return _rank(jobs, jobs.prediction - jobs.attained)

    def slope(self):
        return jnp.asarray(-1.0)


class SPRPTBounce(Policy):
    """sprpt that does not trust a prediction past its end: rank y - a while a < y, and y once the
    job has had its predicted size (it goes back to where it started: pspjf for the rest).

    Under sprpt a job that outlives its prediction ranks below 0, ahead of every other job, for
    as long as its underestimate lasts: with predictions in [beta x, alpha x] that is a
    non-preemptible stretch of up to (1 - beta) x, and its mean response time can be a large
    multiple of srpt's when sizes vary widely. Here such a job waits behind every job predicted
    shorter, so no job blocks the server longer than its prediction says. The idea, a rank that
    bounces back up when a prediction runs out, is that of SRPT-Bounce (Scully, Grosof and
    Mitzenmacher, "Uniform Bounds for Scheduling with Job Size Estimates", 2022); this variant
    returns to y in one step. It needs no bounds alpha, beta, and with perfect predictions
    (a never passes y) it is srpt."""

    name: ClassVar[str] = "sprpt-bounce"
    changes: ClassVar[bool] = True

    def rank(self, jobs):
        left = jobs.prediction - jobs.attained
        return _rank(jobs, jnp.where(left > 0.0, left, jobs.prediction))

    def slope(self):
        return jnp.asarray(-1.0)

    def next_change(self, jobs):
        return jnp.where(jobs.attained < jobs.prediction, jobs.prediction, jnp.inf)


class SPRPTLimited(Policy):
    """sprpt while a <= c * y; after that the job can no longer be preempted.
    c = 0 is spjf, c = 1 is sprpt."""

    name: ClassVar[str] = "sprpt-limited"
    c: jax.Array

    def __init__(self, c=0.5):
        self.c = jnp.asarray(c, dtype=float)

    def __check_init__(self):
        check_range("c", self.c, low=0.0, high=1.0)

    def rank(self, jobs):
        locked = jobs.attained > self.c * jobs.prediction
        return _rank(jobs, jobs.prediction - jobs.attained, locked=locked)

    def slope(self):
        return jnp.asarray(-1.0)


class SJFPrompt(Policy):
    """Shortest prompt first, non-preemptive (LLM engine only): rank P."""

    name: ClassVar[str] = "sjf-prompt"

    def rank(self, jobs):
        return _rank(jobs, _request_feature(jobs, "prompt"), locked=_started(jobs))


class Aging(Policy):
    """Any policy with an aging term for fairness: rank = base rank - w * (time in system).

    Every job's age grows at the same rate, so the term never reorders jobs already in system;
    it favours jobs that have waited long over new arrivals."""

    name: ClassVar[str] = "aging"
    base: Policy
    w: jax.Array

    def __init__(self, base: Policy, w=0.0):
        self.base = base
        self.w = jnp.asarray(w, dtype=float)

    def __check_init__(self):
        check_nonnegative("aging", self.w)

    @property
    def uses_true_size(self):
        return self.base.uses_true_size

    @property
    def may_share(self):
        return self.base.may_share

    def rank(self, jobs):
        rank = self.base.rank(jobs)
        return rank._replace(primary=rank.primary - self.w * jobs.age)

    @property
    def needs(self):
        return self.base.needs

    @property
    def changes(self):
        return self.base.changes

    def slope(self):
        return self.base.slope()

    def shares(self):
        return self.base.shares()

    def next_change(self, jobs):
        return self.base.next_change(jobs)

    def predictions(self, size, prediction):
        return self.base.predictions(size, prediction)


def without_aging(policy: Policy) -> Policy:
    """The policy under any aging terms: what decides which features a rank reads."""
    while isinstance(policy, Aging):
        policy = policy.base
    return policy


class OneBit(Policy):
    """One bit of advice: a job is short iff y < threshold.

    Non-preemptive: short first, FCFS within a class. Preemptive: an arriving short job preempts
    whatever is in service; short jobs are LCFS preemptive-resume among themselves, long jobs FCFS
    with preemptive resume.
    """

    name: ClassVar[str] = "onebit"
    needs: ClassVar[str] = "cheap"
    threshold: jax.Array
    preemptive: jax.Array  # bool

    def __init__(self, threshold=1.0, preemptive=False):
        self.threshold = jnp.asarray(threshold, dtype=float)
        self.preemptive = jnp.asarray(preemptive, dtype=bool)

    def __check_init__(self):
        check_nonnegative("threshold", self.threshold)

    def rank(self, jobs):
        short = jobs.prediction < self.threshold
        tiebreak = jnp.where(short & self.preemptive, -jobs.index, jobs.index)
        locked = _started(jobs) & ~self.preemptive
        return _rank(jobs, jnp.where(short, 0.0, 1.0), locked=locked, tiebreak=tiebreak)


def _first_class(jobs: JobView) -> jax.Array:
    """The rank of the first class of skippredict and delaypredict: below every rank y - a of
    their second class (|y - a| < max float), above prediction work and locked jobs (-inf)."""
    return jnp.asarray(-jnp.finfo(jobs.attained.dtype).max, jobs.attained.dtype)


class SkipPredict(Policy):
    """SkipPredict: a cheap one-bit prediction for every job (short iff y < threshold); short
    jobs are served FCFS ahead of long ones, and long jobs get the full prediction y and are
    served SPRPT (rank y - a) among themselves. A short arrival preempts a long job in service.

    The bit and the full prediction are read from the same prediction y (the bit is whether y is
    below the threshold). threshold = 0 is sprpt; a threshold above every prediction is fcfs."""

    name: ClassVar[str] = "skippredict"
    threshold: jax.Array

    def __init__(self, threshold=1.0):
        self.threshold = jnp.asarray(threshold, dtype=float)

    def __check_init__(self):
        check_nonnegative("threshold", self.threshold)

    def rank(self, jobs):
        short = jobs.prediction < self.threshold
        return _rank(jobs, jnp.where(short, _first_class(jobs), jobs.prediction - jobs.attained))

    def slope(self):
        return jnp.asarray(-1.0)

    def predictions(self, size, prediction):
        return (jnp.ones(jnp.shape(size), bool),
                jnp.broadcast_to(prediction >= self.threshold, jnp.shape(size)))


class DelayPredict(Policy):
    """DelayPredict: every job is served FCFS, without a prediction, ahead of the jobs past the
    limit, until it has had `limit` of service; a job still in the system then gets the full
    prediction y and is served SPRPT (rank y - a) behind every job not yet at the limit.

    predict_time is the server time of that prediction (0 unless the cost of predictions is
    server time, see jaxq.PredictionCost): the job takes it on reaching the limit, still in the
    first class. limit = 0 is sprpt (every job predicted at once); a limit above every size is
    fcfs."""

    name: ClassVar[str] = "delaypredict"
    changes: ClassVar[bool] = True
    limit: jax.Array
    predict_time: jax.Array

    def __init__(self, limit=1.0, predict_time=0.0):
        self.limit = jnp.asarray(limit, dtype=float)
        self.predict_time = jnp.asarray(predict_time, dtype=float)

    def __check_init__(self):
        check_nonnegative("limit", self.limit)
        check_nonnegative("predict_time", self.predict_time)

    def _end(self):
        """The attained service at which the first class ends."""
        return self.limit + self.predict_time

    def rank(self, jobs):
        first = jobs.attained < self._end()
        after = jobs.prediction - (jobs.attained - self.predict_time)
        return _rank(jobs, jnp.where(first, _first_class(jobs), after))

    def slope(self):
        return jnp.asarray(-1.0)

    def next_change(self, jobs):
        end = jnp.broadcast_to(self._end(), jobs.attained.shape)
        return jnp.where(jobs.attained < end, end, jnp.inf)

    def predictions(self, size, prediction):
        # The full prediction is made when a job reaches the limit, so iff its size exceeds it.
        return jnp.zeros(jnp.shape(size), bool), size > self.limit


class PredictFirst(Policy):
    """The server-time cost model for predictions made at arrival: each job first takes the
    server time of the predictions `base` needs (cost: a jaxq.PredictionCost, whose per_job
    gives it), ahead of all job work (FCFS among the jobs being predicted; a job that `base` has
    locked in service is not interrupted), and is then ranked by `base` on the service it has
    had since. The engine gives every job a size of its work plus that prediction time."""

    name: ClassVar[str] = "predict-first"
    changes: ClassVar[bool] = True
    base: Policy
    cost: eqx.Module  # a jaxq.PredictionCost (not imported here: it imports this module)

    def __init__(self, base: Policy, cost):
        self.base = base
        self.cost = cost

    @property
    def uses_true_size(self):
        return self.base.uses_true_size

    @property
    def needs(self):
        return self.base.needs

    def _split(self, jobs):
        work = self.cost.per_job(self.base, jobs.size, jobs.prediction)
        return work, jobs._replace(attained=jnp.maximum(jobs.attained - work, 0.0))

    def rank(self, jobs):
        work, after = self._split(jobs)
        predicting = jobs.attained < work
        rank = self.base.rank(after)
        return Rank(jnp.where(predicting, -jnp.inf, rank.primary),
                    jnp.where(predicting, jobs.index, rank.tiebreak),
                    rank.locked & ~predicting)

    def slope(self):
        return self.base.slope()

    def next_change(self, jobs):
        work, after = self._split(jobs)
        later = self.base.next_change(after) + work if self.base.changes else jnp.inf
        return jnp.where(jobs.attained < work, work, later)

    def predictions(self, size, prediction):
        return self.base.predictions(size, prediction)


class Linear(Policy):
    """rank = w_prediction * y + w_remaining * (y - a) + w_attained * a + w_age * (time in system)
    [+ w_prompt * P + w_kv * (KV tokens held) + w_peak * (P + y): LLM engine only].

    With preemptive = False a job that has started is locked. One compiled program covers the whole
    family (spjf is (1, 0, 0, 0, False), sprpt is (0, 1, 0, 0, True), fcfs is (0, 0, 0, -1, True),
    las is (0, 0, 1, 0, True)), so the weights can be swept with vmap and tuned by gradient.
    """

    name: ClassVar[str] = "linear"
    may_share: ClassVar[bool] = True
    w_prediction: jax.Array
    w_remaining: jax.Array
    w_attained: jax.Array
    w_age: jax.Array
    preemptive: jax.Array  # bool
    w_prompt: jax.Array
    w_kv: jax.Array
    w_peak: jax.Array

    def __init__(self, w_prediction=0.0, w_remaining=1.0, w_attained=0.0, w_age=0.0,
                 preemptive=True, w_prompt=0.0, w_kv=0.0, w_peak=0.0):
        self.w_prediction = jnp.asarray(w_prediction, dtype=float)
        self.w_remaining = jnp.asarray(w_remaining, dtype=float)
        self.w_attained = jnp.asarray(w_attained, dtype=float)
        self.w_age = jnp.asarray(w_age, dtype=float)
        self.preemptive = jnp.asarray(preemptive, dtype=bool)
        self.w_prompt = jnp.asarray(w_prompt, dtype=float)
        self.w_kv = jnp.asarray(w_kv, dtype=float)
        self.w_peak = jnp.asarray(w_peak, dtype=float)

    def __check_init__(self):
        for name in ("w_prediction", "w_remaining", "w_attained", "w_age", "w_prompt", "w_kv",
                     "w_peak"):
            check_range(name, getattr(self, name))

    def uses_request_features(self) -> bool:
        """Whether a request-only weight is (or may be, when traced) nonzero."""
        weights = (self.w_prompt, self.w_kv, self.w_peak)
        if any(isinstance(w, jax.core.Tracer) for w in weights):
            return True
        return any(bool(jnp.any(w != 0)) for w in weights)

    def rank(self, jobs):
        y, a = jobs.prediction, jobs.attained
        primary = (self.w_prediction * y + self.w_remaining * (y - a) + self.w_attained * a
                   + self.w_age * jobs.age)
        if jobs.prompt is not None:
            primary = (primary + self.w_prompt * jobs.prompt + self.w_kv * jobs.kv
                       + self.w_peak * jobs.peak)
        return _rank(jobs, primary, locked=_started(jobs) & ~self.preemptive)

    def slope(self):
        # The age term grows at the same rate for every job, so it never changes the order.
        return self.w_attained - self.w_remaining

    def shares(self):
        # Non-preemptive: a started job is locked and served alone, whatever the slope.
        return (self.slope() > 0) & self.preemptive


class MLP(Policy):
    """A learned rank: h(y) - a, where h(y) = y * exp(m(log y)) and m is a one-layer perceptron
    with H tanh units, m(z) = sum_h v_h tanh(w_h z + b_h) + c.

    Preemptive, with the slope of sprpt (-1), so the exact engine serves it exactly: the learned
    part is a static function of the prediction, and only the order it induces together with
    the attained service matters (a monotone h alone would just be pspjf). With v = 0 and c = 0
    it is sprpt. h > 0 for y > 0, so a job that outlives h(y) is never preempted.

    `weights` (..., 3H + 1) packs (w, b, v, c); its last axis is data, not a batch axis, and
    every other axis is (configurations and, inside an engine, replicas). The default has H = 8
    units of slope 1 whose biases spread over log y in [-3, 3] (a basis of steps in log y) and
    v = c = 0: sprpt, from which a tuner learns the rest (jaxq.tune: --tune mlp)."""

    name: ClassVar[str] = "mlp"
    DATA_AXES: ClassVar[dict] = {"weights": 1}
    weights: jax.Array  # (..., 3H + 1): w (H,), b (H,), v (H,), c ()

    def __init__(self, weights=None, hidden: int = 8):
        if weights is None:
            if not isinstance(hidden, int) or hidden < 1:
                raise ValueError(f"hidden must be an integer >= 1, got {hidden!r}")
            weights = jnp.concatenate([jnp.ones(hidden), jnp.linspace(-3.0, 3.0, hidden),
                                       jnp.zeros(hidden + 1)])
        self.weights = jnp.asarray(weights, dtype=float)

    def __check_init__(self):
        shape = jnp.shape(self.weights)
        if len(shape) < 1 or shape[-1] < 4 or shape[-1] % 3 != 1:
            raise ValueError(f"weights must have a last axis of length 3H + 1 >= 4 (w, b, v of "
                             f"H units and c), got shape {shape}")
        check_range("weights", self.weights)

    @property
    def hidden(self) -> int:
        return (jnp.shape(self.weights)[-1] - 1) // 3

    def static_rank(self, prediction) -> jax.Array:
        """h(y), the rank of a job that has not been served: same shape as `prediction` ((K,)
        or (K, B), with weights (3H + 1,) or (B, 3H + 1))."""
        h = self.hidden
        w, b, v = (self.weights[..., i * h:(i + 1) * h] for i in range(3))
        c = self.weights[..., 3 * h]
        # Guarded so that y = 0 (a perfect prediction of a zero size) gives h = 0, finitely.
        z = jnp.log(jnp.maximum(prediction, jnp.finfo(prediction.dtype).tiny))[..., None]
        m = jnp.sum(v * jnp.tanh(w * z + b), axis=-1) + c
        return prediction * jnp.exp(m)

    def rank(self, jobs):
        return _rank(jobs, self.static_rank(jobs.prediction) - jobs.attained)

    def slope(self):
        return jnp.asarray(-1.0)


POLICIES: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (FCFS, LAS, SJF, PSJF, SRPT, SPJF, PSPJF, SPRPT, SPRPTBounce, SPRPTLimited, OneBit,
                Linear, MLP, SkipPredict, DelayPredict)
}
# Policies that need request features: the LLM engine accepts these too.
# The MLP rank is the queue engine's for now: its default basis is laid out for sizes near 1, not
# for output lengths in tokens.
# So are skippredict and delaypredict, which are about the cost of predictions in the queue.
LLM_POLICIES: dict[str, type[Policy]] = {
    **{n: c for n, c in POLICIES.items() if c not in (MLP, SkipPredict, DelayPredict)},
    SJFPrompt.name: SJFPrompt}

__all__ = ["Policy", "JobView", "Rank", "POLICIES", "LLM_POLICIES", "Aging", "SJFPrompt",
           "PredictFirst",
           *[c.__name__ for c in POLICIES.values()]]
