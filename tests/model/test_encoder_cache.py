"""Tests for gr/model/encoder_cache.py: build, reuse, and partial reuse."""

import os

import jax
import numpy as np
import pytest

from tests.support import tiny_bert
from gr.model import encoder_cache
from gr.model import models
from gr.model import warm_start


@pytest.fixture(scope="module")
def model_and_params(tmp_path_factory):
  bert_dir = tiny_bert.write_tiny_bert(str(tmp_path_factory.mktemp("bert")))
  model = models.fit_vocab(tiny_bert.frozen_model(bert_dir), 30522)
  params = warm_start.pretrained_params(
    model,
    warm_start.load_encoder(bert_dir)[1],
    jax.random.PRNGKey(0),
    input_length=8,
    target_length=2,
    warm_start=False,
  )
  return model, params


def _rows(*texts_ids):
  return [np.array(ids + [0] * (8 - len(ids)), np.int32) for ids in texts_ids]


def test_a_second_cache_encodes_only_the_inputs_it_lacks(
  model_and_params, tmp_path, monkeypatch
):
  model, params = model_and_params
  cache_dir = str(tmp_path)
  first = encoder_cache.EncoderCache.build(
    model, params, _rows([101, 2000, 102], [101, 3000, 3001, 102]), cache_dir
  )
  encoded = []
  real = encoder_cache.encode_inputs

  def counting(model, params, inputs, **kwargs):
    encoded.extend(len(r) for r in inputs)
    return real(model, params, inputs, **kwargs)

  monkeypatch.setattr(encoder_cache, "encode_inputs", counting)
  rows = _rows([101, 3000, 3001, 102], [101, 4000, 102])
  second = encoder_cache.EncoderCache.build(model, params, rows, cache_dir)
  assert encoded == [3]  # only [101, 4000, 102] is new
  assert len(os.listdir(cache_dir)) == 2
  np.testing.assert_array_equal(second.lookup(rows[0]), first.lookup(rows[0]))
  direct = np.asarray(
    jax.jit(model.frozen_encode)(params, np.stack(rows)), np.float16
  )
  np.testing.assert_allclose(
    second.lookup(rows[1])[:3], direct[1, :3], atol=2e-3
  )
  encoded.clear()
  again = encoder_cache.EncoderCache.build(model, params, rows, cache_dir)
  assert encoded == [] and len(again) == 2  # the same inputs: read back
