"""Streaming metric accumulators: fixed memory whatever the number of jobs.

Sums use Kahan (compensated) summation so that a million float32 response times add up to the
same mean as in float64. Quantiles come from a histogram of response times on log-spaced bins
(`HISTOGRAM_DECADES` decades around the mean job size), read with linear interpolation inside a
bin; the bin width sets their resolution (see `quantile_resolution`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Response times are binned on log10(T / E[S]) in [LOG10_LOW, LOG10_LOW + HISTOGRAM_DECADES).
LOG10_LOW = -4.0
HISTOGRAM_DECADES = 10.0


class Kahan(NamedTuple):
    total: jax.Array
    carry: jax.Array  # the low-order part lost by the last addition

    @staticmethod
    def zeros(shape=()) -> "Kahan":
        z = jnp.zeros(shape, dtype=float)
        return Kahan(z, z)

    def add(self, x) -> "Kahan":
        y = x - self.carry
        t = self.total + y
        return Kahan(t, (t - self.total) - y)

    def value(self) -> jax.Array:
        return self.total - self.carry


class Accumulators(NamedTuple):
    """Per (configuration, replica). B = number of size buckets, H = histogram bins."""

    count: jax.Array  # () int32: measured jobs that departed
    response: Kahan  # () sum of response times T
    slowdown: Kahan  # () sum of T / x
    histogram: jax.Array  # (H,) int32 counts of T on log-spaced bins
    bucket_response: Kahan  # (B,) sum of T for jobs with size in bucket b
    bucket_count: jax.Array  # (B,) int32
    number_area: Kahan  # () integral of the number in system over the measurement window
    busy_time: Kahan  # () time the server was busy within the window
    window_time: Kahan  # () length of the measurement window

    @staticmethod
    def zeros(num_buckets: int, num_bins: int) -> "Accumulators":
        return Accumulators(
            count=jnp.zeros((), jnp.int32),
            response=Kahan.zeros(),
            slowdown=Kahan.zeros(),
            histogram=jnp.zeros((num_bins,), jnp.int32),
            bucket_response=Kahan.zeros((num_buckets,)),
            bucket_count=jnp.zeros((num_buckets,), jnp.int32),
            number_area=Kahan.zeros(),
            busy_time=Kahan.zeros(),
            window_time=Kahan.zeros(),
        )

    def record_histogram(self, responses, valid, mean_size) -> "Accumulators":
        """Add a batch of response times (D,) to the histogram where `valid` (D,) holds."""
        nb = self.histogram.shape[0]
        pos = (jnp.log10(responses / mean_size) - LOG10_LOW) * (nb / HISTOGRAM_DECADES)
        bins = jnp.clip(jnp.floor(jnp.where(valid, pos, 0.0)), 0, nb - 1).astype(jnp.int32)
        return self._replace(histogram=self.histogram.at[bins].add(valid.astype(jnp.int32)))


def histogram_edges(num_bins: int) -> np.ndarray:
    """Bin edges of the response-time histogram, in units of the mean job size. (H + 1,)"""
    return 10.0 ** np.linspace(LOG10_LOW, LOG10_LOW + HISTOGRAM_DECADES, num_bins + 1)


def quantile_resolution(num_bins: int) -> float:
    """Relative width of one histogram bin: the worst-case relative error of a quantile."""
    return 10.0 ** (HISTOGRAM_DECADES / num_bins) - 1.0


def histogram_quantiles(counts: np.ndarray, qs, mean_size) -> np.ndarray:
    """Quantiles from histogram counts (..., H) -> (..., len(qs)), log-linear inside a bin."""
    counts = np.asarray(counts, dtype=np.float64)
    nb = counts.shape[-1]
    log_edges = np.linspace(LOG10_LOW, LOG10_LOW + HISTOGRAM_DECADES, nb + 1)
    cum = np.cumsum(counts, axis=-1)
    total = cum[..., -1:]
    out = []
    for q in qs:
        target = q * total
        i = np.minimum((cum < target).sum(axis=-1, keepdims=True), nb - 1)
        before = np.where(i > 0, np.take_along_axis(cum, np.maximum(i - 1, 0), -1), 0.0)
        inside = np.take_along_axis(counts, i, -1)
        frac = np.clip((target - before) / np.where(inside > 0, inside, 1.0), 0.0, 1.0)
        log_t = log_edges[i] + frac * (log_edges[1] - log_edges[0])
        value = 10.0 ** log_t[..., 0] * np.asarray(mean_size)
        out.append(np.where(total[..., 0] > 0, value, np.nan))
    return np.stack(out, axis=-1)
