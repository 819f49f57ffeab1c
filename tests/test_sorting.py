"""Both ways of ordering (counting and the bitonic network) against lax.sort on unique multi-key
rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxq._sorting import COUNTING_MAX, _bitonic, _by_counting, sorted_ids


@pytest.mark.parametrize("sort", [_by_counting, _bitonic, sorted_ids])
@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 13, 64, 100, 129])
def test_sorted_ids_equal_lax_sort(sort, k):
    _check_against_lax_sort(jax.jit(sort), k)


def test_sorted_ids_past_counting_range():
    _check_against_lax_sort(jax.jit(sorted_ids), COUNTING_MAX + 3, rows=2)


def _check_against_lax_sort(sort, k, rows=10):
    rng = np.random.default_rng(k)
    for _ in range(rows):
        klass = jnp.asarray(rng.integers(0, 3, k), jnp.int32)
        primary = jnp.asarray(rng.choice([-1.5, -0.0, 0.0, 2.0, np.inf], k), jnp.float32)
        tiebreak = jnp.asarray(rng.permutation(k) - k // 2, jnp.int32)  # unique, some negative
        expected = lax.sort((klass, primary, tiebreak, jnp.arange(k, dtype=jnp.int32)),
                            num_keys=3)[3]
        np.testing.assert_array_equal(sort((klass, primary, tiebreak)), expected)


def test_sorted_ids_vmaps():
    rng = np.random.default_rng(0)
    keys = jnp.asarray(rng.standard_normal((4, 37)), jnp.float32)
    ids = jnp.broadcast_to(jnp.arange(37, dtype=jnp.int32), (4, 37))
    np.testing.assert_array_equal(jax.vmap(lambda x, i: sorted_ids((x, i)))(keys, ids),
                                  np.argsort(np.asarray(keys), axis=1))
