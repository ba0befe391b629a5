"""Start a run from a pretrained HF T5 checkpoint (t5-small, t5-base, ...).

A user's HF folder (config.json, model.safetensors or pytorch_model.bin or
their sharded .index.json, spiece.model) gives everything a run starts from:

* the model's shape: `t5_config_from_hf` (config.json, via gr/model/hf_import.py);
* the index vocabulary: `t5_index`, the checkpoint's own sentencepiece
  model with T5's 100 `<extra_id_*>` sentinels, then the docid tokens
  (gr/index/vocab.py's id layout: pieces, sentinels, docid tokens);
* the initial params: `t5_initial_params`, the checkpoint's weights with
  the embedding (and an untied `decoder/logits_dense`) extended to the
  model's padded vocab_size.

Vocabulary rows, for t5-small / t5-base (32,000 pieces, HF pads to 32,128):

  0 .. 31,999        pieces                  weights from the checkpoint
  32,000 .. 32,099   <extra_id_99..0>        weights from the checkpoint
  32,100 ..          docid tokens, padding   new rows (`NEW_ROW_RULE`)

HF's own padding rows 32,100 .. 32,127 were never trained, so they are
replaced like any other new row rather than handed to the first docid tokens.

`PretrainedT5Model` is what gin/models/t5_pretrained.gin's MODEL builds: an
EncoderDecoderModel that remembers its folder (`model.t5_dir`) and reads
config.json on first use, so the gin files parse without a checkpoint on
disk; a missing or wrong folder fails on the model's first use, naming it.
"""

import dataclasses
import functools
import json
import os
from typing import Any, Optional

import numpy as np

from gr.model import configs
from gr.model import hf_import
from gr.model import models
from gr.model import network

Params = dict[str, Any]

SPIECE_NAME = 'spiece.model'
CONFIG_NAME = 'config.json'
T5_EXTRA_IDS = 100  # <extra_id_0> .. <extra_id_99>, as every public T5
NEW_ROW_RULE = (
  'mean of the checkpoint rows kept, plus Gaussian noise of '
  '`noise_scale` times their per-dimension std'
)


# ----------------------------------------------------------------- config --


def read_config_json(folder: str) -> dict[str, Any]:
  """The folder's config.json as a dict (HFImportError naming the file)."""
  path = os.path.join(folder, CONFIG_NAME)
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise hf_import.HFImportError(
      f'{path}: cannot read the T5 config ({e}); T5_DIR must be an HF T5 '
      'folder (config.json, model.safetensors or pytorch_model.bin, '
      f'{SPIECE_NAME})'
    ) from e


def t5_config_from_hf(folder: str, **overrides) -> network.T5Config:
  """The T5Config of an HF T5 folder's config.json (overrides win).

  Maps d_model, num_heads, d_kv, d_ff, num_layers, num_decoder_layers,
  feed_forward_proj (gated-gelu -> ('gelu', 'linear'), relu -> ('relu',)),
  tie_word_embeddings / scale_decoder_outputs (-> logits_via_embedding),
  relative_attention_num_buckets / max_distance, layer_norm_epsilon,
  dropout_rate and vocab_size (gr.model.hf_import.config_from_hf).
  """
  return hf_import.config_from_hf(read_config_json(folder), **overrides)


# ------------------------------------------------------------------ model --


class PretrainedT5Model(models.EncoderDecoderModel):
  """An EncoderDecoderModel shaped by an HF T5 folder, read on first use.

  Attributes:
    t5_dir: the HF folder (None: unset; the first use says how to set it).
    config_overrides: T5Config fields that win over config.json (dropout,
      dtype; vocab_size once the model is fitted to the index vocabulary).
  """

  # pylint: disable-next=super-init-not-called  (config and module are lazy)
  def __init__(self, t5_dir: Optional[str], **config_overrides):
    self.t5_dir = t5_dir
    self.config_overrides = dict(config_overrides)

  @functools.cached_property
  def config(self) -> network.T5Config:
    if not self.t5_dir:
      raise ValueError(
        'MODEL is a pretrained T5 (gin/models/t5_pretrained.gin) but no '
        "folder is set: pass --gin.T5_DIR=\"'/path/to/t5-small'\" (an HF "
        f'folder with {CONFIG_NAME}, model.safetensors or '
        f'pytorch_model.bin, {SPIECE_NAME})'
      )
    return t5_config_from_hf(self.t5_dir, **self.config_overrides)

  @functools.cached_property
  def module(self):
    return configs.make_module(self.config)

  def with_vocab_size(self, vocab_size: int) -> 'PretrainedT5Model':
    return PretrainedT5Model(
      self.t5_dir, **{**self.config_overrides, 'vocab_size': vocab_size}
    )

  def __repr__(self):
    return f'PretrainedT5Model({self.t5_dir!r}, **{self.config_overrides!r})'


def pretrained_t5_model(
  *,
  t5_dir: Optional[str] = None,
  dropout_rate: Optional[float] = None,
  dtype: str = 'float32',
) -> PretrainedT5Model:
  """MODEL for gin/models/t5_pretrained.gin (dropout None: config.json's)."""
  overrides = {'dtype': dtype}
  if dropout_rate is not None:
    overrides['dropout_rate'] = dropout_rate
  return PretrainedT5Model(t5_dir, **overrides)


# ------------------------------------------------------------------ index --


def spiece_path(folder: str) -> str:
  """The folder's sentencepiece model (HFImportError if absent)."""
  path = os.path.join(folder, SPIECE_NAME)
  if not os.path.isfile(path):
    raise hf_import.HFImportError(
      f'{path}: not found; the index vocabulary is the checkpoint\'s own '
      'sentencepiece model (a tokenizer.json alone is not enough: copy '
      f'{SPIECE_NAME} from the model\'s HF repository)'
    )
  return path


def t5_vocabulary(
  folder: str, docid_tokens=(), *, extra_ids: int = T5_EXTRA_IDS
):
  """spiece.model + `extra_ids` sentinels + docid tokens (gr.index.vocab)."""
  from gr.index import vocab as vocab_lib  # pylint: disable=g-import-not-at-top  (TensorFlow is heavy)

  vocab = vocab_lib.Vocabulary(
    spiece_path(folder), tuple(docid_tokens), extra_ids=extra_ids
  )
  rows = read_config_json(folder)['vocab_size']
  if vocab.sp_size > rows:
    raise hf_import.HFImportError(
      f'{folder}: {SPIECE_NAME} + {extra_ids} sentinels = {vocab.sp_size} '
      f'ids, more than config.json vocab_size {rows}: the sentencepiece '
      'model does not belong to this checkpoint'
    )
  return vocab


def t5_base_size(folder: str, *, extra_ids: int = T5_EXTRA_IDS) -> int:
  """Ids before the docid tokens: pieces + sentinels (32,100 for T5)."""
  return t5_vocabulary(folder, extra_ids=extra_ids).sp_size


def t5_index(table, folder: str, *, extra_ids: int = T5_EXTRA_IDS):
  """The index over the checkpoint's pieces, sentinels, then docid tokens.

  Args:
    table: a DocidTable; its reserved tokens get the ids after the sentinels.
    folder: the HF T5 folder (its spiece.model).

  Returns:
    gr.index.artifact.Index; `save_index` copies spiece.model into the artifact and
    records `extra_ids`, so `load_index` gives the same ids back.
  """
  from gr.index import artifact as index_lib  # pylint: disable=g-import-not-at-top  (TensorFlow is heavy)

  return index_lib.Index(
    table, t5_vocabulary(folder, table.reserved_tokens, extra_ids=extra_ids)
  )


def check_t5_index(
  index, folder: str, *, extra_ids: int = T5_EXTRA_IDS
) -> None:
  """Raises ValueError unless `index` (e.g. a workdir's) uses folder's ids."""
  from gr.index import vocab as vocab_lib  # pylint: disable=g-import-not-at-top  (TensorFlow is heavy)

  vocab = index.vocab
  expected = vocab_lib.file_sha256(spiece_path(folder))
  if getattr(
    vocab, 'sp_sha256', None
  ) != expected or vocab.sp_size != t5_base_size(folder, extra_ids=extra_ids):
    raise ValueError(
      f'the index vocabulary is not {folder}/{SPIECE_NAME} with '
      f'{extra_ids} sentinels (it was built for another model): use '
      'another workdir'
    )


# ----------------------------------------------------------------- params --


def _new_rows(
  kept: np.ndarray, count: int, rng: np.random.Generator, noise_scale: float
) -> np.ndarray:
  """[count, D] rows: mean of `kept` [n, D] + noise_scale * std * N(0, 1)."""
  mean, std = kept.mean(axis=0), kept.std(axis=0)
  noise = rng.standard_normal((count, kept.shape[1])).astype(np.float32)
  return (mean + noise_scale * std * noise).astype(np.float32)


def extend_rows(
  table: np.ndarray,
  base_size: int,
  vocab_size: int,
  *,
  rng: np.random.Generator,
  noise_scale: float = 0.1,
) -> np.ndarray:
  """table [V_hf, D] -> [vocab_size, D]: rows < base_size kept, rest new.

  New rows follow NEW_ROW_RULE over the kept rows.
  """
  table = np.asarray(table, np.float32)
  kept = table[:base_size]
  return np.concatenate(
    [kept, _new_rows(kept, vocab_size - base_size, rng, noise_scale)]
  )


def _check_shape(
  model_config: network.T5Config, hf_config: network.T5Config, folder: str
) -> None:
  """Raises unless the two configs differ at most in vocab/dropout/dtype."""
  ignore = ('vocab_size', 'dropout_rate', 'dtype')
  ours = {
    k: v for k, v in dataclasses.asdict(model_config).items() if k not in ignore
  }
  theirs = {
    k: v for k, v in dataclasses.asdict(hf_config).items() if k not in ignore
  }
  if ours != theirs:
    diff = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    raise ValueError(
      f'the model is not shaped like {folder}: (model, '
      f'checkpoint) differ in {diff}'
    )


def t5_initial_params(
  model,
  folder: str,
  *,
  base_size: Optional[int] = None,
  seed: int = 0,
  noise_scale: float = 0.1,
) -> Params:
  """The checkpoint's params, vocabulary rows extended to the model's.

  Args:
    model: an EncoderDecoderModel over a T5Config shaped like the folder's,
      with vocab_size already fitted to the index (models.fit_vocab).
    folder: the HF T5 folder.
    base_size: rows kept from the checkpoint (default: pieces + sentinels,
      `t5_base_size(folder)`, = the index vocabulary's first docid id).
    seed: seeds the new rows' noise.
    noise_scale: new rows get this times the kept rows' per-dim std as noise.

  Returns:
    Params (fp32 numpy) for `model`: token_embedder/embedding
    [vocab_size, D] and, untied, decoder/logits_dense/kernel [D, vocab_size];
    rows >= base_size new (NEW_ROW_RULE), everything else the checkpoint's.
    Logits of the kept rows equal the checkpoint's for inputs of kept ids.
  """
  hf_config, params = hf_import.load_hf_t5(folder)
  config = model.config
  _check_shape(config, hf_config, folder)
  base = base_size if base_size is not None else t5_base_size(folder)
  if not 0 < base <= min(hf_config.vocab_size, config.vocab_size):
    raise ValueError(
      f'base_size {base} must be in (0, min(checkpoint rows '
      f'{hf_config.vocab_size}, model rows {config.vocab_size})]'
    )
  rng = np.random.default_rng(seed)
  params['token_embedder']['embedding'] = extend_rows(
    params['token_embedder']['embedding'],
    base,
    config.vocab_size,
    rng=rng,
    noise_scale=noise_scale,
  )
  if not config.logits_via_embedding:
    kernel = params['decoder']['logits_dense']['kernel']  # [D, V_hf]
    params['decoder']['logits_dense']['kernel'] = np.ascontiguousarray(
      extend_rows(
        kernel.T, base, config.vocab_size, rng=rng, noise_scale=noise_scale
      ).T
    )  # --> [D, vocab_size]
  return params
