"""gr/model/pretrained_t5.py on tiny random HF T5 folders built here (offline).

Two folders, as users have them: a T5.1.1-style one (gated-gelu, untied
lm_head, config.json + model.safetensors written as HF 4.x does) and an
original-T5 one (relu, tied; transformers' save_pretrained). Each has a
spiece.model trained here (gr.index.sentencepiece_training) and HF's padding
rows beyond pieces + 100 sentinels.
"""

import dataclasses
import json
import pathlib
import shutil
from typing import Mapping

import gin
import numpy as np
import pytest
from safetensors import numpy as safetensors_numpy
import torch
import transformers

from gr.model import family
from gr.model import hf_import
from gr.index import artifact as index_lib
from gr.model import models
from gr.model import network
from gr.model import pretrained_t5
from gr.index import sentencepiece_training as sp_training
from gr.index import vocab as vocab_lib
from gr.data.beir import Document
from gr.docids import get_scheme

REPO = pathlib.Path(__file__).resolve().parents[2]
WORDS = (
  'alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu '
  'nu xi omicron pi rho sigma tau upsilon phi chi psi omega'
).split()
HF_PADDING_ROWS = 12  # like t5-small's 32,128 - 32,100
ATOL = 1e-4


def _texts():
  return [
    ' '.join(WORDS[(i + j) % len(WORDS)] for j in range(10)) for i in range(40)
  ]


@pytest.fixture(scope='module')
def spiece(tmp_path_factory):
  prefix = str(tmp_path_factory.mktemp('spm') / 'spiece')
  path = sp_training.train_sentencepiece(_texts(), prefix, vocab_size=60)
  return path, vocab_lib.Vocabulary(path).sp_size


def _hf_model(vocab_size, feed_forward_proj, tie, seed, untie_lm_head):
  torch.manual_seed(seed)
  config = transformers.T5Config(
    vocab_size=vocab_size,
    d_model=32,
    d_kv=8,
    d_ff=64,
    num_layers=2,
    num_decoder_layers=1,
    num_heads=4,
    feed_forward_proj=feed_forward_proj,
    tie_word_embeddings=tie,
    dropout_rate=0.0,
    relative_attention_num_buckets=16,
    relative_attention_max_distance=64,
    layer_norm_epsilon=1e-5,
    attn_implementation='eager',
  )
  model = transformers.T5ForConditionalGeneration(config).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if 'layer_norm' in name:
        param.uniform_(0.5, 1.5)
    if untie_lm_head:  # transformers 5.x always ties; give lm_head its own.
      model.lm_head.weight = torch.nn.Parameter(
        torch.randn(vocab_size, 32) * 0.05
      )
  return model


@pytest.fixture(scope='module', params=['t5_1_1_untied', 't5_relu_tied'])
def folder(request, spiece, tmp_path_factory):
  """(folder, hf model, pieces + sentinels) of one tiny HF T5 checkpoint."""
  sp_path, pieces = spiece
  base = pieces + pretrained_t5.T5_EXTRA_IDS
  out = tmp_path_factory.mktemp(request.param)
  if request.param == 't5_1_1_untied':
    model = _hf_model(
      base + HF_PADDING_ROWS,
      'gated-gelu',
      tie=False,
      seed=0,
      untie_lm_head=True,
    )
    hf_config = model.config.to_dict()  # as HF 4.x wrote T5.1.1 configs
    hf_config.pop('scale_decoder_outputs', None)
    hf_config['tie_word_embeddings'] = False
    (out / 'config.json').write_text(json.dumps(hf_config))
    safetensors_numpy.save_file(
      {k: v.detach().numpy().copy() for k, v in model.state_dict().items()},
      str(out / 'model.safetensors'),
    )
  else:
    model = _hf_model(
      base + HF_PADDING_ROWS, 'relu', tie=True, seed=1, untie_lm_head=False
    )
    model.save_pretrained(str(out))
  shutil.copyfile(sp_path, out / pretrained_t5.SPIECE_NAME)
  return str(out), model, base


@pytest.fixture(scope='module')
def table():
  corpus = {
    f'd{i}': Document(f'd{i}', f'title {i}', text)
    for i, text in enumerate(_texts()[:30])
  }
  return get_scheme('atomic').assign(corpus)


@pytest.fixture(scope='module')
def fitted(folder, table):
  """(model fitted to the index vocabulary, its initial params, index)."""
  path, _, _ = folder
  index = pretrained_t5.t5_index(table, path)
  model = models.fit_vocab(
    pretrained_t5.pretrained_t5_model(t5_dir=path), index.vocab.vocab_size
  )
  return model, pretrained_t5.t5_initial_params(model, path, seed=0), index


def test_config_maps_every_field(folder):
  path, model, _ = folder
  hf = model.config
  config = pretrained_t5.t5_config_from_hf(path)
  gated = hf.feed_forward_proj == 'gated-gelu'
  assert (
    config.vocab_size,
    config.emb_dim,
    config.num_heads,
    config.head_dim,
    config.mlp_dim,
    config.num_encoder_layers,
    config.num_decoder_layers,
  ) == (hf.vocab_size, 32, 4, 8, 64, 2, 1)
  assert config.mlp_activations == (('gelu', 'linear') if gated else ('relu',))
  assert config.logits_via_embedding == (not gated)
  assert (
    config.relative_attention_num_buckets,
    config.relative_attention_max_distance,
    config.layer_norm_epsilon,
  ) == (16, 64, 1e-5)
  assert config == hf_import.load_hf_t5(path)[0]
  assert pretrained_t5.t5_config_from_hf(path, dtype='bfloat16').dtype == (
    'bfloat16'
  )


def test_index_vocabulary_puts_docids_after_the_sentinels(folder, table):
  path, _, base = folder
  index = pretrained_t5.t5_index(table, path)
  vocab = index.vocab
  assert vocab.sp_size == base == pretrained_t5.t5_base_size(path)
  assert vocab.vocab_size == base + table.num_docs
  for k, token in enumerate(table.reserved_tokens):
    assert vocab.docid_token_id(token) == base + k
  for docid, _ in table.all_docids():
    ids = vocab.encode_docid(docid)
    assert len(ids) == 1 and ids[0] >= base
    assert vocab.decode_docid(ids + [vocab_lib.EOS_ID]) == docid
  # T5's sentinels: <extra_id_0> is the last id before the docid tokens.
  assert vocab.decode([base - 1]) == '<extra_id_0>'
  assert list(vocab.encode('alpha beta')) == list(
    vocab_lib.Vocabulary(pretrained_t5.spiece_path(path)).encode('alpha beta')
  )


def test_index_save_load_round_trip_keeps_the_sentinels(
  folder, table, tmp_path
):
  path, _, base = folder
  index = pretrained_t5.t5_index(table, path)
  index_lib.save_index(index, str(tmp_path))
  loaded = index_lib.load_index(str(tmp_path))
  assert loaded.vocab.sp_size == base
  assert loaded.vocab.fingerprint == index.vocab.fingerprint
  assert loaded.vocab.docid_tokens == index.vocab.docid_tokens
  assert loaded.docid_sequences() == index.docid_sequences()
  pretrained_t5.check_t5_index(loaded, path)


def test_an_index_of_another_vocabulary_is_refused(folder, table):
  path, _, _ = folder
  plain = index_lib.Index(
    table,
    vocab_lib.Vocabulary.from_table(pretrained_t5.spiece_path(path), table),
  )  # no sentinels
  with pytest.raises(ValueError, match='another workdir'):
    pretrained_t5.check_t5_index(plain, path)


def test_initial_params_fit_the_padded_model(fitted):
  model, params, index = fitted
  vocab_size = model.config.vocab_size
  assert vocab_size % models.VOCAB_MULTIPLE == 0
  assert vocab_size >= index.vocab.vocab_size
  got = {'/'.join(k): tuple(v.shape) for k, v in _flat(params).items()}
  assert got == {
    '/'.join(k): tuple(v.shape) for k, v in _flat(model.param_shapes()).items()
  }
  assert params['token_embedder']['embedding'].shape[0] == vocab_size
  if not model.config.logits_via_embedding:
    assert params['decoder']['logits_dense']['kernel'].shape[1] == vocab_size


def test_initial_params_reproduce_the_checkpoint_on_old_rows(folder, fitted):
  _, hf_model, base = folder
  model, params, _ = fitted
  rng = np.random.default_rng(0)
  enc = rng.integers(3, base, size=(2, 9))
  enc[0, -3:] = 0  # padding
  dec = rng.integers(3, base, size=(2, 5))
  dec[:, 0] = 0  # BOS
  with torch.no_grad():
    expected = hf_model(
      input_ids=torch.tensor(enc),
      attention_mask=torch.tensor(enc > 0),
      decoder_input_ids=torch.tensor(dec),
    ).logits.numpy()
  ours = np.asarray(
    network.Transformer(model.config).apply({'params': params}, enc, dec)
  )
  assert ours.shape[-1] == model.config.vocab_size
  assert expected.std() > 0.05
  np.testing.assert_allclose(
    ours[..., :base], expected[..., :base], atol=ATOL, rtol=0
  )
  assert np.isfinite(ours).all()


def test_new_rows_follow_the_rule(folder, fitted):
  path, _, base = folder
  model, params, _ = fitted
  hf_params = hf_import.load_hf_t5(path)[1]
  tables = [
    (
      params['token_embedder']['embedding'],
      hf_params['token_embedder']['embedding'],
    )
  ]
  if not model.config.logits_via_embedding:
    tables.append(
      (
        params['decoder']['logits_dense']['kernel'].T,
        hf_params['decoder']['logits_dense']['kernel'].T,
      )
    )
  for ours, theirs in tables:
    np.testing.assert_array_equal(ours[:base], theirs[:base])
    kept, new = theirs[:base], ours[base:]
    assert len(new) == model.config.vocab_size - base
    # HF's untrained padding rows are replaced too.
    assert not np.allclose(new[:HF_PADDING_ROWS], theirs[base:])
    spread = np.abs(new - kept.mean(axis=0)) / kept.std(axis=0)
    assert spread.max() < 0.1 * 6 and spread.mean() > 0.01
    assert len({row.tobytes() for row in new}) == len(new)  # all distinct
  again = pretrained_t5.t5_initial_params(model, path, seed=0)
  np.testing.assert_array_equal(
    again['token_embedder']['embedding'], params['token_embedder']['embedding']
  )


def test_a_model_of_another_shape_is_refused(folder):
  path, _, _ = folder
  other = models.EncoderDecoderModel(network.T5Config.tiny(512))
  with pytest.raises(ValueError, match='not shaped like'):
    pretrained_t5.t5_initial_params(other, path)


def test_fitted_model_keeps_its_folder(folder):
  path, _, _ = folder
  model = pretrained_t5.pretrained_t5_model(t5_dir=path, dropout_rate=0.0)
  fitted = model.with_vocab_size(1024)
  assert family.family_of(fitted) is family.PRETRAINED_T5
  assert fitted.t5_dir == path
  assert fitted.config == dataclasses.replace(
    pretrained_t5.t5_config_from_hf(path), vocab_size=1024, dropout_rate=0.0
  )
  assert isinstance(fitted.module, network.Transformer)
  scratch = models.EncoderDecoderModel(network.T5Config.tiny(128))
  assert family.family_of(scratch) is family.SCRATCH_T5


def test_missing_spiece_model_is_a_clear_error(folder, table, tmp_path):
  path, _, _ = folder
  shutil.copyfile(pathlib.Path(path) / 'config.json', tmp_path / 'config.json')
  with pytest.raises(hf_import.HFImportError, match='spiece.model'):
    pretrained_t5.t5_index(table, str(tmp_path))


# ------------------------------------------------------------------- gin --


@gin.configurable
def t5_gin_probe(model=None):
  return model


def _parse(files, bindings):
  gin.clear_config()
  gin.add_config_file_search_path(str(REPO))
  gin.parse_config_files_and_bindings(
    [str(REPO / f) for f in files],
    list(bindings) + ['t5_gin_probe.model = %MODEL'],
    skip_unknown=False,
  )
  try:
    return t5_gin_probe()
  finally:
    gin.clear_config()


def test_config_file_builds_the_folders_model(folder):
  path, _, _ = folder
  model = _parse(['configs/news_atomic_t5.gin'], [f'T5_DIR = {path!r}'])
  assert isinstance(model, pretrained_t5.PretrainedT5Model)
  assert family.family_of(model) is family.PRETRAINED_T5
  assert model.t5_dir == path
  assert model.config == pretrained_t5.t5_config_from_hf(path)


def test_config_file_requires_t5_dir():
  with pytest.raises(ValueError, match='REQUIRED|t5_dir'):
    _parse(['configs/news_atomic_t5.gin'], [])


def test_model_file_alone_parses_and_says_what_is_missing():
  model = _parse(['gin/models/t5_pretrained.gin'], [])
  assert isinstance(model, models.EncoderDecoderModel)
  with pytest.raises(ValueError, match='T5_DIR'):
    _ = model.config


# ------------------------------------------------------------------ util --


def _flat(tree, prefix=()):
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(_flat(value, prefix + (key,)))
    else:
      out[prefix + (key,)] = value
  return out
