"""L2-SP and path-frozen parameters (gr/train/optimizer.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gr.train import optimizer as optimizer_lib


class _AllTrainable:
  """A model whose own mask freezes nothing."""

  def trainable_mask(self, params):
    return jax.tree.map(lambda _: True, params)


def _params():
  return {
    'token_embedder': {'embedding': jnp.ones((4, 2))},
    'decoder': {'kernel': jnp.full((2, 2), 2.0)},
  }


def test_pull_to_start_adds_the_distance_to_the_start():
  start = _params()
  transform = optax.chain(optimizer_lib.pull_to_start(0.5), optax.sgd(1.0))
  state = transform.init(start)
  moved = jax.tree.map(lambda p: p + 3.0, start)
  zero = jax.tree.map(jnp.zeros_like, start)
  updates, _ = transform.update(zero, state, moved)
  # sgd(1) negates: -0.5 * (moved - start) = -1.5 everywhere.
  for leaf in jax.tree.leaves(updates):
    np.testing.assert_allclose(leaf, -1.5)


def test_pull_is_zero_at_the_start_and_keeps_its_anchor():
  start = _params()
  transform = optimizer_lib.pull_to_start(10.0)
  state = transform.init(start)
  grads = jax.tree.map(jnp.ones_like, start)
  updates, state = transform.update(grads, state, start)
  for leaf in jax.tree.leaves(updates):
    np.testing.assert_allclose(leaf, 1.0)
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(start)):
    np.testing.assert_array_equal(a, b)


def test_frozen_params_get_no_update_and_others_train():
  config = optimizer_lib.OptimizerConfig(
    name='adamw', learning_rate=0.1, frozen_params=('token_embedder/.*',)
  )
  opt = optimizer_lib.model_optimizer(_AllTrainable(), config, 10)
  params = _params()
  state = opt.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = opt.update(grads, state, params)
  assert not np.any(updates['token_embedder']['embedding'])
  assert np.all(updates['decoder']['kernel'] < 0)


def test_frozen_pattern_that_matches_nothing_is_an_error():
  config = optimizer_lib.OptimizerConfig(frozen_params=('tokn_embedder/.*',))
  opt = optimizer_lib.model_optimizer(_AllTrainable(), config, 10)
  with pytest.raises(ValueError, match="'tokn_embedder/.\\*' matches no"):
    opt.init(_params())


def test_l2_sp_in_the_configured_optimizer_pulls_back():
  config = optimizer_lib.OptimizerConfig(
    name='adamw', learning_rate=0.1, l2_sp=1.0, clip_grad_norm=None
  )
  opt = optimizer_lib.model_optimizer(_AllTrainable(), config, 10)
  start = _params()
  state = opt.init(start)
  moved = jax.tree.map(lambda p: p + 1.0, start)
  zero = jax.tree.map(jnp.zeros_like, start)
  updates, _ = opt.update(zero, state, moved)
  for leaf in jax.tree.leaves(updates):
    assert np.all(leaf < 0)  # back toward the start
