"""The FLOP count of gr/search/flops.py against XLA's own count of the
compiled encoder and of one decoder step (cost_analysis), on a small
BERT + T5-decoder model whose matmuls dominate its other work."""

import jax
import jax.numpy as jnp
import pytest

from gr.model import bert
from gr.model import bert_network
from gr.model import models
from gr.model import network
from gr.search import flops

TOKENS, ROWS, CACHE = 32, 4, 8


def _model():
  encoder = bert.BertConfig(
    vocab_size=1024,
    hidden_size=128,
    num_layers=2,
    num_heads=4,
    intermediate_size=512,
    max_positions=64,
  )
  decoder = network.T5Config.tiny(
    2048,
    emb_dim=128,
    num_heads=4,
    head_dim=32,
    mlp_dim=512,
    num_encoder_layers=1,
    num_decoder_layers=2,
    logits_via_embedding=True,
    dropout_rate=0.0,
  )
  config = bert_network.BertT5Config(encoder, decoder, 0, "")
  return config, models.EncoderDecoderModel(config)


def _xla_flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


@pytest.fixture(scope="module")
def setup():
  config, model = _model()
  params = model.param_shapes()
  tokens = jax.ShapeDtypeStruct((1, TOKENS), jnp.int32)
  return config, model, params, tokens


def test_encoder_flops_match_xla(setup):
  config, model, params, tokens = setup
  counted = flops.query_flops(
    config, input_tokens=TOKENS, beam_size=1, steps=0, cache_len=CACHE
  ).encoder
  measured = _xla_flops(model.encode, params, tokens)
  assert counted == pytest.approx(measured, rel=0.1)


@pytest.mark.parametrize("output_rows", [None, 16])
def test_decoder_step_flops_match_xla(setup, output_rows):
  config, model, params, _ = setup
  encoded = jax.ShapeDtypeStruct((ROWS, TOKENS, 128), jnp.float32)
  kv = jax.eval_shape(model.cross_attention_kv, params, encoded)
  cache = jax.eval_shape(lambda p: model.init_cache(p, ROWS, CACHE), params)
  enc_tokens = jax.ShapeDtypeStruct((ROWS, TOKENS), jnp.int32)
  dec_tokens = jax.ShapeDtypeStruct((ROWS, 1), jnp.int32)
  if output_rows is None:
    step = model.decode_step
  else:
    rows = jnp.arange(output_rows)[None].repeat(ROWS, 0)

    def step(params, cache, kv, enc_tokens, dec_tokens):
      hidden, cache = model.decode_step_hidden(
        params, cache, kv, enc_tokens, dec_tokens
      )
      return model.output_logits(params, hidden, rows), cache

  measured = _xla_flops(step, params, cache, kv, enc_tokens, dec_tokens)
  count = flops.query_flops(
    config,
    input_tokens=TOKENS,
    beam_size=ROWS,
    steps=1,
    cache_len=CACHE,
    output_rows=output_rows,
  )
  assert count.decoder_body + count.output_layer == pytest.approx(
    measured, rel=0.15
  )


def test_cross_kv_flops_match_xla(setup):
  config, model, params, _ = setup
  encoded = jax.ShapeDtypeStruct((1, TOKENS, 128), jnp.float32)
  measured = _xla_flops(model.cross_attention_kv, params, encoded)
  counted = flops.query_flops(
    config, input_tokens=TOKENS, beam_size=1, steps=0, cache_len=CACHE
  ).cross_kv
  assert counted == pytest.approx(measured, rel=0.1)


def test_step_zero_once_per_query_and_a_free_last_step(setup):
  """first_step counts step 0's decoder rows once per query, not per beam;
  last_step_free drops the EOS step the sparse layer scores without the
  model. The encoder's count does not change."""
  config = setup[0]
  count = lambda **kw: flops.query_flops(
    config, input_tokens=TOKENS, beam_size=10, steps=3, cache_len=CACHE, **kw
  )
  per_beam, once = count(), count(first_step=True)
  one_row = per_beam.decoder_body / 30
  assert once.decoder_body == pytest.approx(21 * one_row)  # 1 + 10 + 10
  free = count(first_step=True, last_step_free=True)
  assert free.decoder_body == pytest.approx(11 * one_row)  # 1 + 10
  assert free.output_layer == pytest.approx(per_beam.output_layer * 11 / 30)
  assert free.encoder == per_beam.encoder
