"""gr.model.dropout: the hashed keep mask behaves as independent Bernoulli draws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gr.model import dropout

SHAPE = (16, 128, 512)  # 1M elements


def _mask(seed, rate=0.1):
  return np.asarray(
    dropout.keep_mask(jax.random.PRNGKey(seed), rate, SHAPE, 'hash')
  )


@pytest.mark.parametrize('rate', [0.05, 0.1, 0.5])
def test_kept_fraction_is_one_minus_rate(rate):
  # 1M draws: the standard error is below 5e-4.
  assert abs(_mask(0, rate).mean() - (1 - rate)) < 3e-3


def test_same_key_same_mask_and_keys_independent():
  a, b = _mask(0), _mask(1)
  np.testing.assert_array_equal(a, _mask(0))
  # Independent masks at keep 0.9 agree on 0.9^2 + 0.1^2 = 0.82.
  assert abs((a == b).mean() - 0.82) < 3e-3


def test_no_structure_along_positions():
  flat = _mask(3).reshape(-1)
  for shift in (1, 2, 512, 128 * 512):
    assert abs((flat[:-shift] == flat[shift:]).mean() - 0.82) < 3e-3
  # Rows and columns keep the same fraction (no stripes).
  per_column = _mask(4).reshape(-1, SHAPE[-1]).mean(axis=0)
  assert per_column.std() < 0.02


def test_dropout_scales_kept_values_and_zeroes_the_rest():
  x = jnp.arange(1.0, 1001.0)
  y = np.asarray(dropout.dropout(x, 0.2, jax.random.PRNGKey(5)))
  kept = y != 0
  np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / 0.8, rtol=1e-6)
  assert 0.7 < kept.mean() < 0.9
  np.testing.assert_array_equal(
    dropout.dropout(x, 0.0, jax.random.PRNGKey(5)), x
  )


def test_bernoulli_implementation_is_jax_random_bernoulli():
  key = jax.random.PRNGKey(9)
  np.testing.assert_array_equal(
    dropout.keep_mask(key, 0.1, (64, 64), 'bernoulli'),
    jax.random.bernoulli(key, 0.9, (64, 64)),
  )
  with pytest.raises(ValueError, match='dropout implementation'):
    dropout.keep_mask(key, 0.1, (4,), 'threefry')
