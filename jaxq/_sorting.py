"""Ordering a short row by several keys, for the LLM engine's per-boundary ranking of its slots.

XLA's CPU sort calls a generic comparator for every comparison when it sorts several operands. Two
vectorised alternatives, measured at 8 vmapped rows of K entries with three keys (2-core CPU):

    K             16     48    128    256    512   1024   (microseconds per call)
    lax.sort      11     37    130    306    663   1542
    bitonic       10     49    104    256    609   1435
    counting     0.6    3.9     20     57    222   1387

Counting places each entry at the number of entries that sort before it: K^2 comparisons, which XLA
fuses into one pass with the sum, then a scatter to invert the permutation. It wins by far up to a
few hundred entries; the bitonic network's K log^2 K work wins beyond, so `sorted_ids` counts up to
`COUNTING_MAX` entries and uses the network above.

Neither is stable, so the keys must be unique as tuples (the engine's last key is an arrival index or
a slot id): then the sorted permutation is the only one, the same as any other sort's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _before(a, b):
    """a's keys sort strictly before b's (lexicographic), elementwise (broadcasting)."""
    result = jnp.zeros(jnp.broadcast_shapes(a[-1].shape, b[-1].shape), bool)
    # From the last key to the first: earlier keys decide unless they are equal.
    for x, y in zip(reversed(a), reversed(b)):
        result = (x < y) | ((x == y) & result)
    return result


COUNTING_MAX = 512


def sorted_ids(keys: tuple[jax.Array, ...]) -> jax.Array:
    """Positions 0..K-1 of a row ordered by the tuple of (K,) `keys`, first key first.

    Keys must be unique as tuples and not NaN. Returns (K,) int32.
    """
    if keys[0].shape[0] <= COUNTING_MAX:
        return _by_counting(keys)
    return _bitonic(keys)


def _by_counting(keys):
    k = keys[0].shape[0]
    # before[j, i]: entry j sorts before entry i.
    before = _before([x[:, None] for x in keys], [x[None, :] for x in keys])
    position = jnp.sum(before, axis=0, dtype=jnp.int32)
    ids = jnp.arange(k, dtype=jnp.int32)
    return jnp.zeros((k,), jnp.int32).at[position].set(ids, unique_indices=True)


def _bitonic(keys):
    k = keys[0].shape[0]
    size = 1 << max(k - 1, 0).bit_length()  # K rounded up to a power of two
    pad = size - k
    # Padding sorts after every real entry: it is first-key-largest, then by its own (unique) id.
    rows = [jnp.concatenate([x, jnp.full((pad,), _largest(x.dtype), x.dtype)]) for x in keys]
    ids = jnp.arange(size, dtype=jnp.int32)
    rows.append(jnp.where(ids < k, 0, ids))  # 0 for real entries: only padding ever compares it
    rows.append(ids)
    # Bitonic merge sort: stages of compare-exchange at distance j within blocks of `width`.
    width = 2
    while width <= size:
        j = width // 2
        while j >= 1:
            pairs = [x.reshape(size // (2 * j), 2, j) for x in rows]
            lo = [x[:, 0, :] for x in pairs]
            hi = [x[:, 1, :] for x in pairs]
            # Blocks alternate ascending and descending until the last merge.
            descending = ((jnp.arange(size // (2 * j)) * 2 * j) & width) != 0
            swap = _before(hi[:-1], lo[:-1]) ^ descending[:, None]
            rows = [jnp.stack([jnp.where(swap, h, l), jnp.where(swap, l, h)], axis=1).reshape(size)
                    for l, h in zip(lo, hi)]
            j //= 2
        width *= 2
    return rows[-1][:k]


def _largest(dtype):
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.inf
    return jnp.iinfo(dtype).max
