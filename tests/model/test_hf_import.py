"""Parity of gr.model.network with HF transformers' PyTorch T5 via gr.model.hf_import."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import numpy as safetensors_numpy
import torch
import transformers

from gr.model import hf_import
from gr.model import network

VOCAB = 100
ATOL = 1e-4
# Padded encoder inputs (row 0 has 3 pads) and a padded decoder row.
ENCODER_TOKENS = np.array(
  [[5, 6, 7, 8, 9, 10, 1, 0, 0, 0], [3, 4, 5, 6, 7, 11, 12, 13, 14, 1]]
)
DECODER_TOKENS = np.array([[0, 8, 9, 17, 1, 0], [0, 3, 4, 5, 6, 1]])


def _hf_model(feed_forward_proj, tie, seed, untie_lm_head=False):
  """A random small HF T5 with non-trivial layer norms (fp32, eval mode)."""
  torch.manual_seed(seed)
  config = transformers.T5Config(
    vocab_size=VOCAB,
    d_model=64,
    d_kv=16,
    d_ff=128,
    num_layers=2,
    num_decoder_layers=2,
    num_heads=4,
    feed_forward_proj=feed_forward_proj,
    tie_word_embeddings=tie,
    dropout_rate=0.0,
    attn_implementation='eager',
  )
  model = transformers.T5ForConditionalGeneration(config).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if 'layer_norm' in name:
        param.uniform_(0.5, 1.5)
    if untie_lm_head:  # transformers 5.x always ties; give lm_head its own.
      model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 64) * 0.05)
  return model


def _state_dict(model):
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _hf_logits(model, enc=ENCODER_TOKENS, dec=DECODER_TOKENS):
  with torch.no_grad():
    return model(
      input_ids=torch.tensor(enc),
      attention_mask=torch.tensor(enc > 0),
      decoder_input_ids=torch.tensor(dec),
    ).logits.numpy()


def _hf_incremental_logits(model, enc=ENCODER_TOKENS, dec=DECODER_TOKENS):
  """HF's own cached decoding, one decoder token per call: [B, Lt, V]."""
  mask = torch.tensor(enc > 0)
  with torch.no_grad():
    encoder_outputs = model.get_encoder()(
      input_ids=torch.tensor(enc), attention_mask=mask
    )
    past, steps = None, []
    for t in range(dec.shape[1]):
      out = model(
        encoder_outputs=encoder_outputs,
        attention_mask=mask,
        decoder_input_ids=torch.tensor(dec[:, t : t + 1]),
        past_key_values=past,
        use_cache=True,
      )
      past = out.past_key_values
      steps.append(out.logits[:, 0].numpy())
  return np.stack(steps, axis=1)


def _our_logits(config, params, enc=ENCODER_TOKENS, dec=DECODER_TOKENS):
  return np.asarray(
    network.Transformer(config).apply({'params': params}, enc, dec)
  )


def _our_incremental_logits(
  config, params, enc=ENCODER_TOKENS, dec=DECODER_TOKENS
):
  """Our decode=True loop, one jitted step reused: [B, Lt, V]."""
  module = network.Transformer(config)
  encoded = module.apply({'params': params}, enc, method='encode')
  length = dec.shape[1]

  @jax.jit
  def step(cache, tokens):
    return module.apply(
      {'params': params, 'cache': cache},
      encoded,
      enc,
      tokens,
      decode=True,
      max_decode_length=length,
      method='decode',
      mutable=['cache'],
    )

  _, created = module.apply(
    {'params': params},
    encoded,
    enc,
    jnp.zeros_like(dec),
    decode=True,
    max_decode_length=length,
    method='decode',
    mutable=['cache'],
  )
  cache, steps = jax.tree.map(jnp.zeros_like, created['cache']), []
  for t in range(length):
    logits, variables = step(cache, dec[:, t : t + 1])
    cache = variables['cache']
    steps.append(np.asarray(logits[:, 0]))
  return np.stack(steps, axis=1)


@pytest.fixture(scope='module', params=['gated_gelu_untied', 'relu_tied'])
def variant(request):
  """(hf model, our config, our params) for T5.1.1-style or original T5."""
  if request.param == 'gated_gelu_untied':
    model = _hf_model('gated-gelu', tie=False, seed=0, untie_lm_head=True)
    config = hf_import.config_from_hf(model.config.to_dict())
  else:
    model = _hf_model('relu', tie=True, seed=1)
    config = hf_import.config_from_hf(model.config.to_dict())
  params = hf_import.params_from_hf_state_dict(_state_dict(model), config)
  return model, config, params


def test_config_mapping_of_variants(variant):
  model, config, _ = variant
  gated = model.config.feed_forward_proj == 'gated-gelu'
  assert config.mlp_activations == (('gelu', 'linear') if gated else ('relu',))
  assert config.logits_via_embedding == (not gated)
  assert (
    config.emb_dim,
    config.head_dim,
    config.mlp_dim,
    config.num_heads,
  ) == (64, 16, 128, 4)


def test_forward_matches_hf(variant):
  model, config, params = variant
  expected = _hf_logits(model)
  assert expected.std() > 0.1  # the comparison is not of near-zero logits
  np.testing.assert_allclose(
    _our_logits(config, params), expected, atol=ATOL, rtol=0
  )


def test_incremental_decoding_matches_hf(variant):
  model, config, params = variant
  ours = _our_incremental_logits(config, params)
  np.testing.assert_allclose(ours, _hf_logits(model), atol=ATOL, rtol=0)
  np.testing.assert_allclose(
    ours, _hf_incremental_logits(model), atol=ATOL, rtol=0
  )


def test_untied_safetensors_file_with_hf4_config(tmp_path):
  """An HF 4.x-style T5.1.1 folder: separate lm_head, tie_word_embeddings."""
  model = _hf_model('gated-gelu', tie=False, seed=2, untie_lm_head=True)
  hf_config = model.config.to_dict()
  hf_config.pop('scale_decoder_outputs')
  hf_config['tie_word_embeddings'] = False
  (tmp_path / 'config.json').write_text(json.dumps(hf_config))
  safetensors_numpy.save_file(
    _state_dict(model), str(tmp_path / 'model.safetensors')
  )
  config, params = hf_import.load_hf_t5(str(tmp_path / 'model.safetensors'))
  assert not config.logits_via_embedding
  np.testing.assert_allclose(
    _our_logits(config, params), _hf_logits(model), atol=ATOL, rtol=0
  )


@pytest.mark.parametrize(
  'feed_forward_proj,tie', [('gated-gelu', False), ('relu', True)]
)
def test_save_pretrained_folder(tmp_path, feed_forward_proj, tie):
  """transformers 5.x save_pretrained: shared weights only, scale flag."""
  model = _hf_model(feed_forward_proj, tie=tie, seed=3)
  model.save_pretrained(str(tmp_path))
  config, params = hf_import.load_hf_t5(str(tmp_path))
  assert config.logits_via_embedding == tie
  np.testing.assert_allclose(
    _our_logits(config, params), _hf_logits(model), atol=ATOL, rtol=0
  )


def test_torch_bin_file(tmp_path, variant):
  model, config, params = variant
  (tmp_path / 'config.json').write_text(json.dumps(model.config.to_dict()))
  torch.save(model.state_dict(), str(tmp_path / 'pytorch_model.bin'))
  loaded_config, loaded = hf_import.load_hf_t5(str(tmp_path))
  assert loaded_config == config
  jax.tree.map(np.testing.assert_array_equal, loaded, params)


@pytest.fixture(scope='module')
def relu_state_dict():
  model = _hf_model('relu', tie=True, seed=4)
  return _state_dict(model), hf_import.config_from_hf(model.config.to_dict())


def test_missing_key_is_named(relu_state_dict):
  state_dict, config = relu_state_dict
  key = 'decoder.block.1.layer.1.EncDecAttention.k.weight'
  broken = {k: v for k, v in state_dict.items() if k != key}
  with pytest.raises(hf_import.HFImportError, match=key):
    hf_import.params_from_hf_state_dict(broken, config)


def test_unexpected_key_is_named(relu_state_dict):
  state_dict, config = relu_state_dict
  broken = {
    **state_dict,
    'encoder.block.2.layer.0.layer_norm.weight': np.ones(64, np.float32),
  }
  with pytest.raises(hf_import.HFImportError, match='block.2'):
    hf_import.params_from_hf_state_dict(broken, config)


@pytest.mark.parametrize(
  'key,shape',
  [
    ('encoder.block.0.layer.0.SelfAttention.q.weight', (64, 48)),
    ('shared.weight', (101, 64)),
    ('decoder.final_layer_norm.weight', (63,)),
  ],
)
def test_shape_mismatch_is_named(relu_state_dict, key, shape):
  state_dict, config = relu_state_dict
  broken = {**state_dict, key: np.zeros(shape, np.float32)}
  with pytest.raises(hf_import.HFImportError, match=key.replace('.', r'\.')):
    hf_import.params_from_hf_state_dict(broken, config)


def test_t5_v1_1_small_config_maps_to_small_preset():
  # Values of google/t5-v1_1-small's config.json.
  hf_config = {
    'd_ff': 1024,
    'd_kv': 64,
    'd_model': 512,
    'dropout_rate': 0.1,
    'feed_forward_proj': 'gated-gelu',
    'num_decoder_layers': 8,
    'num_heads': 6,
    'num_layers': 8,
    'relative_attention_num_buckets': 32,
    'tie_word_embeddings': False,
    'vocab_size': 32128,
    'layer_norm_epsilon': 1e-6,
  }
  assert hf_import.config_from_hf(hf_config) == network.T5Config.small()


@pytest.mark.parametrize(
  'proj,expected',
  [
    ('relu', ('relu',)),
    ('gated-gelu', ('gelu', 'linear')),
    ('gelu', ('gelu_exact',)),
    ('gated-silu', ('silu', 'linear')),
  ],
)
def test_feed_forward_proj_mapping(proj, expected):
  assert hf_import.activations_from_feed_forward_proj(proj) == expected


@pytest.mark.parametrize('proj', ['gated-tanh', 'relu-gated', 'a-b-c'])
def test_bad_feed_forward_proj(proj):
  with pytest.raises(hf_import.HFImportError, match='feed_forward_proj'):
    hf_import.activations_from_feed_forward_proj(proj)


def test_missing_config_field_and_path_are_named(tmp_path):
  with pytest.raises(hf_import.HFImportError, match='d_model'):
    hf_import.config_from_hf({'vocab_size': 10, 'num_layers': 1})
  with pytest.raises(hf_import.HFImportError, match='no model.safetensors'):
    hf_import.load_hf_t5(str(tmp_path))


def test_config_overrides():
  config = hf_import.config_from_hf(
    {
      'vocab_size': 10,
      'd_model': 8,
      'num_layers': 1,
      'num_heads': 2,
      'd_kv': 4,
      'd_ff': 16,
    },
    dtype='bfloat16',
  )
  assert dataclasses.replace(config, dtype='float32') == network.T5Config(
    vocab_size=10,
    emb_dim=8,
    num_heads=2,
    num_encoder_layers=1,
    num_decoder_layers=1,
    head_dim=4,
    mlp_dim=16,
    mlp_activations=('relu',),
    logits_via_embedding=True,
  )
