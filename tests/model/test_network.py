"""Tests for gr/model/network.py: config, buckets (HF oracle), masks, axes, cache."""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
import torch
from transformers.models.t5 import modeling_t5 as t5

from gr.model import blocks
from gr.model import network

VOCAB = 64


@pytest.fixture(scope='module')
def tiny():
  """(module, boxed variables) of a tiny fp32 T5 without dropout."""
  config = network.T5Config.tiny(VOCAB, dropout_rate=0.0)
  module = network.Transformer(config)
  tokens = jnp.ones((1, 4), jnp.int32)
  return module, jax.jit(module.init)(jax.random.PRNGKey(0), tokens, tokens)


@pytest.fixture(scope='module')
def forward(tiny):
  module, variables = tiny
  params = nn.unbox(variables['params'])
  return jax.jit(lambda enc, dec: module.apply({'params': params}, enc, dec))


def _tokens(seed, shape, low=3):
  return jnp.asarray(np.random.RandomState(seed).randint(low, VOCAB, shape))


@pytest.mark.parametrize(
  'field,value',
  [
    ('emb_dim', 0),
    ('num_heads', -1),
    ('mlp_activations', ('gelu', 'tanh')),
    ('dtype', 'float16'),
    ('dropout_rate', 1.0),
    ('mlp_activations', ()),
  ],
)
def test_config_rejects_bad_field_and_names_it(field, value):
  with pytest.raises(ValueError, match=field):
    network.T5Config.tiny(VOCAB, **{field: value})


def test_presets():
  small, base = network.T5Config.small(), network.T5Config.base()
  assert (
    small.emb_dim,
    small.num_heads,
    small.head_dim,
    small.mlp_dim,
    small.num_encoder_layers,
  ) == (512, 6, 64, 1024, 8)
  assert (
    base.emb_dim,
    base.num_heads,
    base.num_encoder_layers,
    base.mlp_dim,
  ) == (768, 12, 12, 2048)
  assert small.vocab_size == base.vocab_size == 32128
  assert not small.logits_via_embedding
  assert small.mlp_activations == ('gelu', 'linear')


def test_every_param_has_logical_axes(tiny):
  _, variables = tiny
  leaves = jax.tree.leaves(
    variables['params'], is_leaf=lambda x: isinstance(x, nn.Partitioned)
  )
  # embedder; encoder relpos+norm+2x9; decoder relpos+norm+logits+2x14.
  assert len(leaves) == 1 + (2 + 2 * 9) + (3 + 2 * 14)
  for leaf in leaves:
    assert isinstance(leaf, nn.Partitioned)
    assert len(leaf.names) == leaf.value.ndim
    assert set(leaf.names) <= set(network.PARAM_AXIS_NAMES)
    assert leaf.value.dtype == jnp.float32


def test_tied_config_has_no_logits_dense():
  config = network.T5Config.tiny(
    VOCAB, logits_via_embedding=True, mlp_activations=('relu',)
  )
  tokens = jnp.ones((1, 2), jnp.int32)
  shapes = jax.eval_shape(
    network.Transformer(config).init, jax.random.PRNGKey(0), tokens, tokens
  )
  decoder = shapes['params']['decoder']
  assert 'logits_dense' not in decoder
  assert set(decoder['layers_0']['mlp']) == {'wi', 'wo'}


@pytest.mark.parametrize('bidirectional', [True, False])
@pytest.mark.parametrize(
  'num_buckets,max_distance', [(32, 128), (16, 40), (8, 20)]
)
def test_relative_position_buckets_match_hf(
  bidirectional, num_buckets, max_distance
):
  offsets = np.arange(-600, 601)
  expected = t5.T5Attention._relative_position_bucket(
    torch.tensor(offsets),
    bidirectional=bidirectional,
    num_buckets=num_buckets,
    max_distance=max_distance,
  ).numpy()
  got = blocks.relative_position_buckets(
    offsets,
    bidirectional=bidirectional,
    num_buckets=num_buckets,
    max_distance=max_distance,
  )
  np.testing.assert_array_equal(got, expected)


def test_causal_buckets_ignore_future():
  got = blocks.relative_position_buckets(
    np.arange(0, 10), bidirectional=False, num_buckets=32, max_distance=128
  )
  np.testing.assert_array_equal(got, 0)


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 10_000), length=st.integers(1, 6))
def test_encoder_padding_does_not_change_logits(forward, seed, length):
  # Fixed shapes (one compile each); only the real length varies.
  enc = _tokens(seed, (2, 6)).at[:, length:].set(0)
  dec = _tokens(seed + 1, (2, 4))
  padded = jnp.pad(enc, ((0, 0), (0, 3)))
  np.testing.assert_allclose(forward(padded, dec), forward(enc, dec), atol=2e-5)


def test_decoder_is_causal(forward):
  enc, dec = _tokens(0, (2, 6)), _tokens(1, (2, 5))
  changed = dec.at[:, 3].set((dec[:, 3] + 1) % VOCAB)
  before, after = forward(enc, dec), forward(enc, changed)
  np.testing.assert_allclose(before[:, :3], after[:, :3], atol=1e-6)
  assert np.abs(before[:, 3:] - after[:, 3:]).max() > 1e-3


def test_encoder_input_changes_logits(forward):
  enc, dec = _tokens(0, (2, 6)), _tokens(1, (2, 5))
  changed = enc.at[:, 0].set((enc[:, 0] + 1) % VOCAB)
  assert np.abs(forward(enc, dec) - forward(changed, dec)).max() > 1e-3


def test_cache_layout_and_step_matches_full(tiny, forward):
  module, variables = tiny
  params = nn.unbox(variables['params'])
  enc, dec = _tokens(0, (3, 6)), _tokens(1, (3, 4))
  encoded = module.apply({'params': params}, enc, method='encode')
  apply = jax.jit(
    lambda cache, tokens: module.apply(
      {'params': params, 'cache': cache},
      encoded,
      enc,
      tokens,
      decode=True,
      max_decode_length=4,
      method='decode',
      mutable=['cache'],
    )
  )
  _, created = apply({}, jnp.zeros((3, 4), jnp.int32))
  cache = jax.tree.map(jnp.zeros_like, created['cache'])
  assert network.cache_length(cache) == 4
  for path, leaf in jax.tree_util.tree_leaves_with_path(cache):
    if leaf.ndim == 0:
      assert 'cache_index' in jax.tree_util.keystr(path)
      assert leaf.dtype == jnp.int32
    else:
      assert leaf.shape[0] == 3, path
  steps = []
  for t in range(4):
    logits, variables_out = apply(cache, dec[:, t : t + 1])
    cache = variables_out['cache']
    steps.append(logits[:, 0])
  np.testing.assert_allclose(jnp.stack(steps, 1), forward(enc, dec), atol=1e-5)
  with pytest.raises(ValueError, match='decode step expects'):
    apply(cache, dec[:, :2])


def test_logical_constraints_under_mesh_keep_values(tiny, forward):
  module, variables = tiny
  mesh = Mesh(
    np.array(jax.devices()[:8]).reshape(2, 4),
    ('data', 'model'),
    axis_types=(AxisType.Auto,) * 2,
  )
  rules = [
    ('batch', 'data'),
    ('mlp', 'model'),
    ('heads', 'model'),
    ('vocab', 'model'),
  ]
  shardings = nn.logical_to_mesh_sharding(
    nn.get_partition_spec(variables['params']), mesh, rules
  )
  params = jax.device_put(nn.unbox(variables['params']), shardings)
  enc, dec = _tokens(0, (4, 6)), _tokens(1, (4, 3))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    logits = jax.jit(lambda p: module.apply({'params': p}, enc, dec))(params)
  assert logits.sharding.spec[0] == 'data'
  np.testing.assert_allclose(logits, forward(enc, dec), atol=1e-5)


def _decode_steps(module, params, source, enc, dec):
  """Per-step logits [B, Lt, V] of a cached decode from `source`."""
  apply = jax.jit(
    lambda cache, tokens: module.apply(
      {'params': params, 'cache': cache},
      source,
      enc,
      tokens,
      decode=True,
      max_decode_length=dec.shape[1],
      method='decode',
      mutable=['cache'],
    )
  )
  _, created = apply({}, jnp.zeros(dec.shape, jnp.int32))
  cache = jax.tree.map(jnp.zeros_like, created['cache'])
  steps = []
  for t in range(dec.shape[1]):
    logits, variables_out = apply(cache, dec[:, t : t + 1])
    cache = variables_out['cache']
    steps.append(logits[:, 0])
  return jnp.stack(steps, 1)


@pytest.mark.parametrize('tied', [False, True])
def test_cross_attention_kv_gives_the_uncached_logits(tied):
  """Keys and values projected once equal the per-step projections."""
  config = network.T5Config.tiny(
    VOCAB, dropout_rate=0.0, logits_via_embedding=tied
  )
  module = network.Transformer(config)
  enc, dec = _tokens(0, (3, 6)), _tokens(1, (3, 5))
  enc = enc.at[1, 3:].set(0)  # padding stays masked through the K/V
  params = nn.unbox(
    jax.jit(module.init)(jax.random.PRNGKey(1), enc, dec)['params']
  )
  encoded = module.apply({'params': params}, enc, method='encode')
  kv = network.cross_attention_kv(config, params['decoder'], encoded)
  assert len(kv.keys) == len(kv.values) == config.num_decoder_layers
  assert kv.keys[0].shape == (3, 6, config.num_heads, config.head_dim)
  uncached = _decode_steps(module, params, encoded, enc, dec)
  cached = _decode_steps(module, params, kv, enc, dec)
  np.testing.assert_allclose(cached, uncached, rtol=1e-6, atol=1e-6)
  full = module.apply({'params': params}, enc, dec)
  np.testing.assert_allclose(cached, full, atol=1e-5)
  # Teacher forcing from the K/V too, also with one source for every row.
  teacher = module.apply({'params': params}, kv, enc, dec, method='decode')
  np.testing.assert_allclose(teacher, full, rtol=1e-6, atol=1e-6)
  one = jax.tree.map(lambda x: x[:1], kv)
  shared = module.apply(
    {'params': params}, one, enc[:1].repeat(3, 0), dec, method='decode'
  )
  np.testing.assert_allclose(
    shared,
    module.apply(
      {'params': params},
      encoded[:1],
      enc[:1].repeat(3, 0),
      dec,
      method='decode',
    ),
    rtol=1e-6,
    atol=1e-6,
  )


@pytest.mark.parametrize('tied', [False, True])
def test_output_logits_split_from_the_decoder(tied):
  """hidden states + output_logits = the decoder's logits; listed tokens
  score as the same columns of the full row."""
  config = network.T5Config.tiny(
    VOCAB, dropout_rate=0.0, logits_via_embedding=tied
  )
  module = network.Transformer(config)
  enc, dec = _tokens(2, (2, 5)), _tokens(3, (2, 3))
  params = nn.unbox(
    jax.jit(module.init)(jax.random.PRNGKey(2), enc, dec)['params']
  )
  encoded = module.apply({'params': params}, enc, method='encode')
  hidden = module.apply(
    {'params': params}, encoded, enc, dec, method='decode', return_hidden=True
  )
  assert hidden.shape == (2, 3, config.emb_dim)
  logits = module.apply({'params': params}, encoded, enc, dec, method='decode')
  hidden, logits = hidden.reshape(6, -1), logits.reshape(6, -1)
  np.testing.assert_array_equal(
    network.output_logits(config, params, hidden), logits
  )
  tokens = jnp.asarray(np.random.RandomState(4).randint(0, VOCAB, (6, 7)))
  sparse = network.output_logits(config, params, hidden, tokens)
  assert sparse.shape == (6, 7) and sparse.dtype == jnp.float32
  np.testing.assert_allclose(
    sparse, jnp.take_along_axis(logits, tokens, axis=1), rtol=1e-5, atol=1e-5
  )
