"""Tests for gr/model/models.py: loss (optax oracle), training, scoring, decoding."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gr.model import models
from gr.model import network

VOCAB = 32
INPUT_LENGTH, TARGET_LENGTH = 8, 6


def _copy_batch(seed, batch_size=8):
  """Toy copy task: target = the input's first 5 tokens + EOS (1)."""
  rng = np.random.RandomState(seed)
  inputs = rng.randint(3, VOCAB, (batch_size, INPUT_LENGTH))
  lengths = rng.randint(3, INPUT_LENGTH + 1, batch_size)
  inputs[np.arange(INPUT_LENGTH)[None] >= lengths[:, None]] = 0
  targets = np.zeros((batch_size, TARGET_LENGTH), np.int32)
  for row, length in enumerate(np.minimum(lengths, TARGET_LENGTH - 1)):
    targets[row, :length] = inputs[row, :length]
    targets[row, length] = 1
  return {
    'encoder_input_tokens': jnp.asarray(inputs, jnp.int32),
    'decoder_input_tokens': models.shift_targets_right(targets),
    'decoder_target_tokens': jnp.asarray(targets),
    'decoder_loss_weights': jnp.asarray(targets > 0, jnp.float32),
  }


@pytest.fixture(scope='module')
def model():
  return models.EncoderDecoderModel(network.T5Config.tiny(VOCAB))


@pytest.fixture(scope='module')
def params(model):
  return jax.jit(
    model.init_params, static_argnames=('input_length', 'target_length')
  )(
    jax.random.PRNGKey(0),
    input_length=INPUT_LENGTH,
    target_length=TARGET_LENGTH,
  )


@pytest.fixture(scope='module')
def batch():
  return _copy_batch(0)


@pytest.fixture(scope='module')
def loss_fn(model):
  """Jitted loss; pass z_loss explicitly so that one compile serves all."""
  return jax.jit(model.loss_fn, static_argnames=('label_smoothing',))


@pytest.fixture(scope='module')
def logits_fn(model):
  return jax.jit(model.logits)


def test_shift_targets_right():
  targets = jnp.array([[5, 6, 1, 0], [7, 1, 0, 0]])
  np.testing.assert_array_equal(
    models.shift_targets_right(targets), [[0, 5, 6, 1], [0, 7, 1, 0]]
  )


def test_loss_matches_optax_cross_entropy(params, batch, loss_fn, logits_fn):
  loss, metrics = loss_fn(params, batch, None, z_loss=0.0)
  logits = logits_fn(params, batch)
  weights = batch['decoder_loss_weights']
  xent = optax.softmax_cross_entropy_with_integer_labels(
    logits, batch['decoder_target_tokens']
  )
  expected = jnp.sum(xent * weights) / jnp.sum(weights)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(metrics['cross_entropy'], expected, rtol=1e-5)
  assert metrics['num_tokens'] == jnp.sum(weights)
  accuracy = jnp.sum(
    (jnp.argmax(logits, -1) == batch['decoder_target_tokens']) * weights
  ) / jnp.sum(weights)
  np.testing.assert_allclose(metrics['accuracy'], accuracy, rtol=1e-6)


def test_z_loss_term(params, batch, loss_fn, logits_fn):
  loss, metrics = loss_fn(params, batch, None, z_loss=1e-2)
  log_z = jax.nn.logsumexp(logits_fn(params, batch), axis=-1)
  weights = batch['decoder_loss_weights']
  expected = 1e-2 * jnp.sum(log_z**2 * weights) / jnp.sum(weights)
  np.testing.assert_allclose(metrics['z_loss'], expected, rtol=1e-5)
  np.testing.assert_allclose(
    loss, metrics['cross_entropy'] + expected, rtol=1e-5
  )


def test_label_smoothing_matches_optax_minus_entropy():
  rng = np.random.RandomState(0)
  logits = jnp.asarray(rng.randn(2, 3, 10), jnp.float32)
  targets = jnp.asarray(rng.randint(0, 10, (2, 3)))
  soft = jax.nn.one_hot(targets, 10) * (0.9 - 0.1 / 9) + 0.1 / 9
  entropy = -jnp.sum(soft * jnp.log(soft), axis=-1)
  xent, _ = models.cross_entropy_with_z_loss(
    logits, targets, label_smoothing=0.1
  )
  np.testing.assert_allclose(
    xent,
    optax.softmax_cross_entropy(logits, soft) - entropy,
    rtol=1e-5,
    atol=1e-6,
  )
  # Minimum 0, reached when the model predicts the smoothed targets.
  best, _ = models.cross_entropy_with_z_loss(
    jnp.log(soft), targets, label_smoothing=0.1
  )
  np.testing.assert_allclose(best, 0.0, atol=1e-5)


def test_training_decreases_loss_on_copy_task(model, params):
  optimizer = optax.adam(3e-3)

  @jax.jit
  def train_step(params, opt_state, batch):
    grads, metrics = jax.grad(model.loss_fn, has_aux=True)(
      params, batch, None, z_loss=1e-4
    )
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  opt_state, losses = optimizer.init(params), []
  for step in range(40):
    params, opt_state, metrics = train_step(
      params, opt_state, _copy_batch(step % 4)
    )
    losses.append(float(metrics['loss']))
  assert np.isfinite(losses).all()
  assert np.mean(losses[-4:]) < 0.6 * np.mean(losses[:4]), losses


def test_score_batch_is_sum_of_target_log_probs(
  model, params, batch, logits_fn
):
  scores = jax.jit(model.score_batch)(params, batch)
  log_probs = np.asarray(jax.nn.log_softmax(logits_fn(params, batch)))
  targets = np.asarray(batch['decoder_target_tokens'])
  expected = [
    sum(
      log_probs[b, t, targets[b, t]]
      for t in range(TARGET_LENGTH)
      if targets[b, t] > 0
    )
    for b in range(targets.shape[0])
  ]
  assert scores.shape == (targets.shape[0],)
  np.testing.assert_allclose(scores, expected, rtol=1e-5)
  assert np.all(np.asarray(scores) < 0)


def test_decode_step_loop_matches_teacher_forcing(
  model, params, batch, logits_fn
):
  size = batch['encoder_input_tokens'].shape[0]
  encoded = model.encode(params, batch['encoder_input_tokens'])
  assert encoded.shape == (size, INPUT_LENGTH, 64)
  cache = model.init_cache(params, size, TARGET_LENGTH)
  for leaf in jax.tree.leaves(cache):
    assert leaf.ndim == 0 or leaf.shape[0] == size
  step = jax.jit(model.decode_step)
  decoder_inputs, steps = batch['decoder_input_tokens'], []
  for t in range(TARGET_LENGTH):
    logits, cache = step(
      params,
      cache,
      encoded,
      batch['encoder_input_tokens'],
      decoder_inputs[:, t : t + 1],
    )
    assert logits.shape == (size, VOCAB) and logits.dtype == jnp.float32
    steps.append(logits)
  # Teacher forcing masks keys past the target's end; compare real tokens.
  valid = np.asarray(batch['decoder_target_tokens'] > 0)
  np.testing.assert_allclose(
    np.asarray(jnp.stack(steps, 1))[valid],
    np.asarray(logits_fn(params, batch))[valid],
    atol=1e-5,
  )


def test_dropout_changes_outputs_only_when_enabled(
  model, params, batch, loss_fn
):
  plain, _ = loss_fn(params, batch, None, z_loss=1e-4)
  again, _ = loss_fn(params, batch, None, z_loss=1e-4)
  assert plain == again
  # unsafe_rbg keys: same code path, ~3x faster to compile than threefry.
  key = lambda seed: jax.random.key(seed, impl='unsafe_rbg')
  first, _ = loss_fn(params, batch, key(1), z_loss=1e-4)
  second, _ = loss_fn(params, batch, key(2), z_loss=1e-4)
  assert first != plain and first != second


def test_bfloat16_runs_and_is_close_to_float32(params, batch, logits_fn):
  bf16 = models.EncoderDecoderModel(
    network.T5Config.tiny(VOCAB, dtype='bfloat16')
  )
  low = jax.nn.log_softmax(jax.jit(bf16.logits)(params, batch))
  high = jax.nn.log_softmax(logits_fn(params, batch))
  assert low.dtype == jnp.float32  # logits are accumulated in fp32
  encoded = jax.eval_shape(bf16.encode, params, batch['encoder_input_tokens'])
  assert encoded.dtype == jnp.bfloat16
  np.testing.assert_allclose(low, high, atol=0.15)
  assert float(jnp.mean(jnp.abs(low - high))) < 0.03


def test_logical_axes_cover_params(model, params):
  axes = model.logical_axes()
  shapes = model.param_shapes()
  assert jax.tree.structure(shapes) == jax.tree.structure(params)
  flat_axes = jax.tree.leaves(
    axes, is_leaf=lambda x: x is not None and not isinstance(x, dict)
  )
  assert len(flat_axes) == len(jax.tree.leaves(params))
  wo = params['decoder']['layers_0']['mlp']['wo']['kernel']
  assert tuple(axes['decoder']['layers_0']['mlp']['wo']['kernel']) == (
    'mlp',
    'embed',
  )
  assert wo.shape == (128, 64)
