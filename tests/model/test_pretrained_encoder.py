"""The pretrained-encoder path: BERT under the T5 decoder, end to end.

Covers gr/model/bert.py (HF numerics, layer slices), gr/model/bert_network.py and
gr/model/models.py (forward, frozen layers, the cached-states path), gr/train/loop.py
(freeze, sharding on the 8 fake CPU devices of tests/conftest.py),
gr/model/warm_start.py (step 0 = cosine / temperature), gr/model/encoder_cache.py,
gr/index/wordpiece.py and gr/experiments/run.py's pretrained path. Most tests use
the tiny random BERT of tests/support/tiny_bert.py (real MiniLM tokenizer, hidden
32).
"""

import dataclasses
import json
import os
import shutil

import gin
import jax
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp
import numpy as np
import pytest

from gr.model import bert
from gr.model import bert_network
from gr.model import configs
from gr.model import embed
from gr.model import encoder_cache as cache_lib
from gr.search import evaluation
from gr.model import models
from gr.model import network
from gr import partitioning
from gr.index import vocab as vocab_lib
from gr.model import pretrained
from gr.search import exact as exact_lib
from gr.search import retrieval
from gr.train import optimizer as optimizer_lib
from gr.train import state as state_lib
from gr.model import warm_start
from gr.index import wordpiece
from gr import docids as docids_lib
from gr.data import beir
from gr.experiments import run as experiment
from tests.support import tiny_bert

LENGTH = 16  # encoder input length
TEMPERATURE = 0.05
TEXTS = [
  "the central bank raised interest rates",
  "a cat sat on the mat",
  "the football match ended in a draw",
  "a new vaccine was approved by regulators",
  "stock markets fell sharply today as investors sold shares in "
  "banks, airlines and energy companies after weak earnings",  # > 16
  "rain and storms are expected this weekend",
]
QUERIES = [
  "bank interest rates",
  "cat on a mat",
  "storms this weekend",
  "vaccine regulators",
  "football draw",
]


# ------------------------------------------------------------- fixtures --


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
  return tiny_bert.write_tiny_bert(str(tmp_path_factory.mktemp("tiny_bert")))


@pytest.fixture(scope="module")
def bert_config(bert_dir):
  return bert.BertConfig.from_folder(bert_dir)


@pytest.fixture(scope="module")
def bert_params(bert_dir, bert_config):
  return bert.load_params(bert_dir, bert_config)


@pytest.fixture(scope="module")
def vocab(bert_dir):
  return wordpiece.WordPieceVocabulary(
    pretrained.tokenizer_path(bert_dir),
    tuple(f"<d_{i}>" for i in range(len(TEXTS))),
  )


def decoder_config(vocab_size: int, **overrides) -> network.T5Config:
  """A T5 decoder of the tiny encoder's width (4 heads of 8), tied logits."""
  return network.T5Config.tiny(
    vocab_size,
    **{
      **dict(
        emb_dim=tiny_bert.HIDDEN,
        num_heads=4,
        head_dim=8,
        mlp_dim=64,
        num_encoder_layers=1,
        num_decoder_layers=1,
        logits_via_embedding=True,
        dropout_rate=0.0,
      ),
      **overrides,
    },
  )


@pytest.fixture(scope="module")
def model(bert_dir, bert_config, vocab):
  """Tiny BERT (bottom layer frozen, top layer trains) + a 1-layer decoder."""
  config = bert_network.BertT5Config(
    bert_config, decoder_config(128), 1, bert_dir
  )
  return models.fit_vocab(models.EncoderDecoderModel(config), vocab.vocab_size)


@pytest.fixture(scope="module")
def base_params(model, bert_params):
  """The pretrained encoder under a random decoder (no warm start)."""
  return warm_start.pretrained_params(
    model,
    bert_params,
    jax.random.PRNGKey(0),
    input_length=LENGTH,
    target_length=2,
    warm_start=False,
  )


def _rows(vocab, texts, length=LENGTH):
  return vocab_lib.encode_texts(vocab, texts, length)


def _batch(vocab, texts, docid_tokens) -> dict:
  targets = np.zeros((len(texts), 2), np.int32)
  for i, token in enumerate(docid_tokens):
    targets[i] = vocab.encode_docid(token) + [wordpiece.EOS_ID]
  return {
    "encoder_input_tokens": _rows(vocab, texts),
    "decoder_target_tokens": targets,
    "decoder_input_tokens": np.asarray(models.shift_targets_right(targets)),
    "decoder_loss_weights": (targets > 0).astype(np.float32),
  }


# ------------------------------------------- 1. HF numerics, layer slices --


@pytest.fixture(scope="module")
def layer_outputs(bert_config, bert_params, vocab):
  """One jitted run over a padded batch: (mask [B, L], direct [k] = layers
  [0, k) from token ids, chained [k] = layer by layer from the states)."""
  tokens = jnp.asarray(_rows(vocab, TEXTS[:3] + ["x"]))
  encoder = bert.BertEncoder(bert_config)

  @jax.jit
  def run(params, tokens):
    mask = tokens > 0
    apply = lambda x, **kw: encoder.apply({"params": params}, x, mask, **kw)
    direct = [
      apply(tokens, stop_layer=k) for k in range(bert_config.num_layers + 1)
    ]
    chained = [direct[0]]
    for k in range(bert_config.num_layers):
      chained.append(apply(chained[-1], start_layer=k, stop_layer=k + 1))
    return direct, chained, apply(tokens)

  direct, chained, full = jax.tree.map(np.asarray, run(bert_params, tokens))
  return np.asarray(tokens) > 0, np.asarray(tokens), direct, chained, full


def test_bert_matches_hf_bert_model(bert_dir, layer_outputs):
  """Every layer's hidden states equal transformers' BertModel (padded batch).

  torch and transformers are test requirements (setup.py): no skip.
  """
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  peer = transformers.BertModel.from_pretrained(
    bert_dir, add_pooling_layer=False, attn_implementation="eager"
  ).eval()
  mask, tokens, direct, _, full = layer_outputs
  with torch.no_grad():
    out = peer(
      input_ids=torch.tensor(tokens, dtype=torch.long),
      attention_mask=torch.tensor(mask, dtype=torch.long),
      output_hidden_states=True,
    )
  assert len(out.hidden_states) == len(direct) == tiny_bert.LAYERS + 1
  for k, expected in enumerate(out.hidden_states):  # embeddings, layer 1, ..
    np.testing.assert_allclose(
      direct[k][mask],
      expected.numpy()[mask],
      atol=1e-4,
      err_msg=f"stop_layer={k}",
    )
  np.testing.assert_allclose(
    full[mask], out.last_hidden_state.numpy()[mask], atol=1e-4
  )
  # The layers really act (the comparison is not between near-copies).
  assert np.abs(direct[-1] - direct[0])[mask].mean() > 0.05


def test_layer_slices_compose(layer_outputs):
  """Layers [0, k) then [k, n) equal all n layers, for every k."""
  mask, _, direct, chained, full = layer_outputs
  for k, (a, b) in enumerate(zip(direct, chained)):
    np.testing.assert_allclose(a, b, atol=1e-5, err_msg=f"k={k}")
  np.testing.assert_allclose(chained[-1], full, atol=1e-5)
  assert not np.allclose(direct[1][mask], full[mask], atol=1e-2)


def test_load_params_checks_the_vocabulary_size(bert_dir):
  """A config.json that disagrees with the weights is an error, not garbage."""
  config = dataclasses.replace(
    bert.BertConfig.from_folder(bert_dir), vocab_size=30000
  )
  with pytest.raises(ValueError, match="30522 word embeddings"):
    bert.load_params(bert_dir, config)


# ---------------------------- 2. forward, train step, frozen, cache path --


@pytest.fixture(scope="module")
def step_fn(model):
  """(optimizer, jitted train step, jitted loss) shared by the tests."""
  optimizer = optimizer_lib.freeze(
    optimizer_lib.make_optimizer(
      optimizer_lib.OptimizerConfig(learning_rate=1e-2, weight_decay=0.1), 10
    ),
    model.trainable_mask,
  )
  step = jax.jit(state_lib.train_step_fn(model, optimizer))
  loss = jax.jit(lambda params, batch: model.loss_fn(params, batch, None)[0])
  return optimizer, step, loss


def _state(optimizer, params):
  return state_lib.TrainState(
    step=jnp.zeros([], jnp.int32),
    params=params,
    opt_state=optimizer.init(params),
  )


def test_forward_and_train_step_freeze_the_bottom_layers(
  model, base_params, vocab, step_fn
):
  batch = _batch(vocab, TEXTS, vocab.docid_tokens)
  logits = jax.eval_shape(model.logits, base_params, batch)
  assert logits.shape == (len(TEXTS), 2, model.config.vocab_size)
  optimizer, step, _ = step_fn
  new, metrics = step(
    _state(optimizer, base_params), batch, jax.random.PRNGKey(0)
  )
  assert np.isfinite(float(metrics["loss"])) and float(metrics["loss"]) > 0
  mask = jax.tree_util.tree_flatten_with_path(
    model.trainable_mask(base_params)
  )[0]
  changed = jax.tree.leaves(
    jax.tree.map(
      lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
      base_params,
      new.params,
    )
  )
  frozen = {
    jax.tree_util.keystr(path) for path, trainable in mask if not trainable
  }
  assert any("word_embeddings" in k for k in frozen)
  assert any("layer_0" in k for k in frozen)
  assert not any(
    "layer_1" in k or "decoder" in k or "token_embedder" in k for k in frozen
  )
  for (path, trainable), was_changed in zip(mask, changed, strict=True):
    if not trainable:  # frozen: exactly unchanged (no update, no decay)
      assert not was_changed, jax.tree_util.keystr(path)
  moved = {
    jax.tree_util.keystr(path) for (path, _), c in zip(mask, changed) if c
  }
  assert "['encoder']['layer_1']['intermediate']['kernel']" in moved
  assert "['decoder']['layers_0']['mlp']['wo']['kernel']" in moved
  assert "['token_embedder']['embedding']" in moved


def test_cached_frozen_states_give_the_same_loss(
  model, base_params, vocab, step_fn, tmp_path
):
  _, _, loss = step_fn
  batch = _batch(vocab, TEXTS, vocab.docid_tokens)
  exact = dict(
    batch,
    encoder_frozen_states=np.asarray(
      jax.jit(model.frozen_encode)(base_params, batch["encoder_input_tokens"])
    ),
  )
  np.testing.assert_allclose(
    float(loss(base_params, exact)), float(loss(base_params, batch)), rtol=1e-5
  )
  # Through the float16 cache, as training sees it.
  cache = cache_lib.EncoderCache.build(
    model, base_params, batch["encoder_input_tokens"], str(tmp_path)
  )
  cached = cache.add_states(batch)
  assert cached["encoder_frozen_states"].shape == (
    len(TEXTS),
    LENGTH,
    tiny_bert.HIDDEN,
  )
  assert cached["encoder_frozen_states"].dtype == np.float16
  cached["encoder_frozen_states"] = cached["encoder_frozen_states"].astype(
    np.float32
  )  # as encode() casts them; shares the compiled loss
  np.testing.assert_allclose(
    float(loss(base_params, cached)), float(loss(base_params, batch)), rtol=2e-3
  )
  # The cached path does not run the frozen layers: their params are unused.
  moved = jax.tree.map(lambda x: x, base_params)
  moved["encoder"]["layer_0"]["output"]["kernel"] *= 2.0
  moved["encoder"]["word_embeddings"]["embedding"] *= 2.0
  np.testing.assert_allclose(
    float(loss(moved, exact)), float(loss(base_params, exact)), rtol=1e-6
  )
  assert abs(float(loss(moved, batch)) - float(loss(base_params, batch))) > 1e-3


# ------------------------------------------ 3. parameter count, sharding --


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_parameter_counts(model, bert_config, bert_params):
  padding = bert_config.embedding_rows - bert_config.vocab_size
  assert bert_config.embedding_rows % bert.VOCAB_MULTIPLE == 0
  expected = tiny_bert.num_bert_params(
    tiny_bert.HIDDEN,
    tiny_bert.LAYERS,
    tiny_bert.INTERMEDIATE,
    tiny_bert.VOCAB,
    tiny_bert.MAX_POSITIONS,
  )
  assert _count(bert_params) == expected + padding * tiny_bert.HIDDEN
  shapes = model.param_shapes()
  assert jax.tree.map(lambda s: s.shape, shapes["encoder"]) == jax.tree.map(
    lambda x: x.shape, bert_params
  )
  assert set(shapes) == {"encoder", "token_embedder", "decoder"}
  # all-MiniLM-L6-v2 is 22,713,216 parameters with its pooler (147,840).
  minilm = bert.BertConfig.from_folder(embed.default_model_dir())
  abstract = jax.eval_shape(
    lambda: bert.BertEncoder(minilm).init(
      jax.random.PRNGKey(0), jnp.ones((1, 4), jnp.int32), jnp.ones((1, 4), bool)
    )
  )
  pad_rows = minilm.embedding_rows - minilm.vocab_size
  assert (
    _count(abstract) - pad_rows * minilm.hidden_size == 22_713_216 - 147_840
  )


def test_bert_params_shard_along_model(model, base_params):
  """On a (data 2, model 4) mesh the big BERT matrices split on 'model'."""
  mesh = partitioning.make_mesh(data=2, model=4)
  optimizer = optimizer_lib.freeze(
    optimizer_lib.make_optimizer(optimizer_lib.OptimizerConfig(), 10),
    model.trainable_mask,
  )
  sharded = state_lib.shard_model(
    model, optimizer, mesh, input_length=LENGTH, target_length=2
  )
  specs = sharded.state_shardings.params
  encoder = specs["encoder"]
  assert encoder["word_embeddings"]["embedding"].spec == P("model", None)
  for i in range(tiny_bert.LAYERS):
    layer = encoder[f"layer_{i}"]
    for name in ("query", "key", "value"):
      assert layer["attention"][name]["kernel"].spec == P(None, "model")
    assert layer["attention"]["output"]["kernel"].spec == P("model", None)
    assert layer["intermediate"]["kernel"].spec == P(None, "model")
    assert layer["output"]["kernel"].spec == P("model", None)
  # Same rule as the T5 side.
  assert specs["token_embedder"]["embedding"].spec == P("model", None)
  # Every leaf of the state divides evenly (BERT's 30522 rows would not).
  for sharding, leaf in zip(
    jax.tree.leaves(sharded.state_shardings),
    jax.tree.leaves(sharded.abstract_state),
    strict=True,
  ):
    sharding.shard_shape(leaf.shape)
  # Put real params on the mesh: each device holds a quarter of the rows.
  placed = jax.device_put(base_params, specs)
  words = placed["encoder"]["word_embeddings"]["embedding"]
  assert {s.data.shape for s in words.addressable_shards} == {
    (words.shape[0] // 4, tiny_bert.HIDDEN)
  }


def test_minilm_encoder_shards_on_every_mesh_of_8():
  """The real MiniLM's encoder shapes divide on 'model' = 2, 4 and 8.

  (The decoder of gin/models/minilm_t5.gin has 6 heads: a model axis of 4
  or 8 needs DECODER_HEADS overridden, as for T5.1.1-small.)
  """
  config = configs.bert_t5_config(
    decoder=network.T5Config.tiny(30592, emb_dim=384, num_heads=6, head_dim=64)
  )
  model = models.EncoderDecoderModel(config)
  params, axes = state_lib.abstract_params(
    model, input_length=8, target_length=2
  )
  for model_axis in (2, 4, 8):
    mesh = partitioning.make_mesh(model=model_axis)
    shardings = partitioning.shardings_from_logical(axes, mesh)["encoder"]
    for sharding, leaf in zip(
      jax.tree.leaves(shardings),
      jax.tree.leaves(params["encoder"]),
      strict=True,
    ):
      sharding.shard_shape(leaf.shape)  # raises if it does not divide
    words = shardings["word_embeddings"]["embedding"]
    assert words.shard_shape(
      params["encoder"]["word_embeddings"]["embedding"].shape
    ) == (30592 // model_axis, 384)


# -------------------------------------------------- 4. warm-start oracle --


@pytest.fixture(scope="module")
def warm(model, bert_dir, bert_config, bert_params, base_params):
  """An atomic index over TEXTS, warm-started params, expected cosines."""
  corpus = {f"d{i}": beir.Document(f"d{i}", "", t) for i, t in enumerate(TEXTS)}
  table = docids_lib.get_scheme("atomic").assign(corpus)
  index = pretrained.wordpiece_index(table, bert_dir)
  doc_vectors = pretrained.pooled_vectors(
    model, base_params, pretrained.document_rows(index, corpus, LENGTH)
  )
  params = pretrained.initial_params(
    model,
    bert_dir,
    index=index,
    doc_vectors=doc_vectors,
    seed=0,
    input_length=LENGTH,
    target_length=2,
    temperature=TEMPERATURE,
  )

  # Expected: mean-pooled BertEncoder states, straight from gr/model/bert.py.
  @jax.jit
  def dense(tokens):
    hidden = bert.BertEncoder(bert_config).apply(
      {"params": bert_params}, tokens, tokens > 0
    )
    return bert.mean_pool_normalise(hidden, tokens > 0)

  rows = _rows(index.vocab, QUERIES + TEXTS)  # the same truncation
  assert rows[-2, -1] != 0  # TEXTS[4] is cut at LENGTH tokens
  vectors = np.asarray(dense(rows))
  cosines = vectors[: len(QUERIES)] @ vectors[len(QUERIES) :].T  # [q, docs]
  return index, params, cosines


@pytest.fixture(scope="module")
def step0_docid_logits(model):
  """Jitted (params, index, queries) -> step-0 logits of the docid tokens."""

  @jax.jit
  def logits(params, tokens):
    encoded = model.encode(params, tokens)
    cache = model.init_cache(params, tokens.shape[0], 2)
    out, _ = model.decode_step(
      params, cache, encoded, tokens, jnp.zeros((tokens.shape[0], 1), jnp.int32)
    )
    return out  # [queries, vocab]

  def docid_logits(params, index, queries):
    ids = [
      index.vocab.docid_token_id(index.table.docids_of[d][0])
      for d in index.doc_ids
    ]
    tokens = jnp.asarray(_rows(index.vocab, queries))
    return np.asarray(logits(params, tokens))[:, ids]  # [queries, docs]

  return docid_logits


def test_warm_start_step0_is_dense_retrieval(warm, step0_docid_logits):
  index, params, cosines = warm
  logits = step0_docid_logits(params, index, QUERIES)
  # cos / temperature, up to one constant per query (every end token shares
  # the EOS direction, warm_start.END_WEIGHT).
  centred = lambda x: x - x.mean(axis=1, keepdims=True)
  np.testing.assert_allclose(
    centred(logits), centred(cosines) / TEMPERATURE, atol=2e-3
  )
  np.testing.assert_array_equal(
    np.argsort(-logits, axis=1, kind="stable"),
    np.argsort(-cosines, axis=1, kind="stable"),
  )
  assert len({tuple(r) for r in np.argsort(-cosines, axis=1)}) > 1
  # Most queries find their document (the cosines are meaningful).
  assert (cosines.argmax(axis=1) == [0, 1, 5, 3, 2]).sum() >= 3, cosines


def test_without_warm_start_step0_is_not_dense(
  warm, base_params, step0_docid_logits
):
  index, _, cosines = warm
  logits = step0_docid_logits(base_params, index, QUERIES)
  assert not np.allclose(logits, cosines / TEMPERATURE, atol=1.0)


def test_docid_token_vectors_average_their_documents(vocab):
  class Table:  # the DocidTable surface docid_token_vectors reads
    scheme = "semantic"
    doc_ids = ("a", "b", "c")

    def all_docids(self):
      return [("<d_0> <d_1>", "a"), ("<d_0> <d_2>", "b"), ("<d_3>", "c")]

  vectors = np.array([[3.0, 0.0], [0.0, 4.0], [1.0, 1.0]])
  out = warm_start.docid_token_vectors(Table(), vocab, vectors)
  first = vocab.docid_token_id("<d_0>")
  np.testing.assert_allclose(out[first], [0.6, 0.8])  # mean (1.5, 2), unit
  np.testing.assert_allclose(out[first + 1], [1.0, 0.0])
  np.testing.assert_allclose(out[first + 3], [2**-0.5, 2**-0.5])
  assert set(out) == {first, first + 1, first + 2, first + 3}


def test_warm_start_exact_ranking_is_the_cosine_ranking(model, warm):
  """Whole-docid scores too: after an end token EOS wins (warm_start's end
  direction), so beam search and the exact oracle rank by cosine."""
  index, params, cosines = warm
  searcher = retrieval.Searcher(
    model,
    params,
    index,
    retrieval.SearchConfig(beam_size=6, top_k=6),
    input_length=LENGTH,
    batch_size=len(QUERIES),
  )
  rankings = exact_lib.exact_ranking(
    searcher, QUERIES, top_k=len(TEXTS), batch_size=8
  )
  expected = [
    [index.doc_ids[j] for j in np.argsort(-row, kind="stable")]
    for row in cosines
  ]
  assert [[d for d, _ in r] for r in rankings] == expected
  beams = searcher.search(QUERIES)
  assert [[d for d, _ in r] for r in beams] == expected


# -------------------------------------------------------- 5. the cache --


def test_encoder_cache_reuse_recompute_and_lookup(
  model, base_params, vocab, tmp_path, monkeypatch
):
  rows = _rows(vocab, TEXTS + TEXTS[:2])  # duplicates are stored once
  cache = cache_lib.EncoderCache.build(model, base_params, rows, str(tmp_path))
  assert len(cache) == len(TEXTS)
  files = os.listdir(tmp_path)
  assert len(files) == 1
  path = os.path.join(tmp_path, files[0])
  direct = np.asarray(jax.jit(model.frozen_encode)(base_params, rows))
  for row, states in zip(rows, direct):
    got = cache.lookup(row)
    np.testing.assert_allclose(got, states * (row > 0)[:, None], atol=1e-2)
    assert not got[row == 0].any()  # zeros on padding

  # Same texts and encoder: the file is read back, nothing recomputed.
  mtime = os.stat(path).st_mtime_ns

  def no_encoding(*args, **kwargs):
    raise AssertionError("recomputed an unchanged cache")

  with monkeypatch.context() as patch:
    patch.setattr(cache_lib, "encode_inputs", no_encoding)
    again = cache_lib.EncoderCache.build(
      model, base_params, rows, str(tmp_path)
    )
  assert os.stat(path).st_mtime_ns == mtime
  np.testing.assert_array_equal(again.states, cache.states)
  # A trainable (top-layer) change keeps the frozen layers' cache.
  top = jax.tree.map(lambda x: x, base_params)
  top["encoder"]["layer_1"]["output"]["kernel"] *= 2.0
  with monkeypatch.context() as patch:
    patch.setattr(cache_lib, "encode_inputs", no_encoding)
    cache_lib.EncoderCache.build(model, top, rows, str(tmp_path))

  # A changed input, or changed frozen params: a new file.
  changed = _rows(vocab, TEXTS[:-1] + ["an entirely different text"])
  cache_lib.EncoderCache.build(model, base_params, changed, str(tmp_path))
  assert len(os.listdir(tmp_path)) == 2
  frozen = jax.tree.map(lambda x: x, base_params)
  frozen["encoder"]["layer_0"]["output"]["kernel"] *= 2.0
  moved = cache_lib.EncoderCache.build(model, frozen, rows, str(tmp_path))
  assert len(os.listdir(tmp_path)) == 3
  assert not np.allclose(moved.states, cache.states, atol=1e-2)

  with pytest.raises(KeyError, match="not in the encoder cache"):
    cache.lookup(_rows(vocab, ["a query it never saw"])[0])


# --------------------------------------------------- 6. the vocabulary --


def test_wordpiece_docid_round_trips(vocab):
  base = vocab.base_size
  assert base == 30522 and vocab.vocab_size == base + len(TEXTS)
  assert vocab.encode_docid("<d_0>") == [base]
  assert vocab.encode_docid("<d_5>") == [base + 5]
  for docid in (
    "<d_0>",
    "<d_3>",
    "central bank rates",
    "<d_2> cat mat",
    "storms <d_1>",
  ):
    ids = vocab.encode_docid(docid)
    assert vocab.decode_docid(ids + [wordpiece.EOS_ID, 7, 0]) == docid, ids
  text_ids = vocab.encode_docid("central bank")
  assert all(i < base for i in text_ids) and len(text_ids) == 2
  with pytest.raises(ValueError, match="not a docid token"):
    vocab.encode_docid("<d_99>")
  with pytest.raises(ValueError, match="empty docid"):
    vocab.encode_docid("  ")
  # Inputs: [CLS] pieces [SEP]; targets: bare pieces.
  cls, sep = vocab.encode_inputs("x", 8)[0], vocab.encode_inputs("x", 8)[-1]
  assert vocab.input_vocabulary.encode("central bank") == [cls] + text_ids + [
    sep
  ]
  assert list(vocab.encode("central bank")) == text_ids
  assert len(vocab.encode_inputs(" ".join(["bank"] * 20), 8)) == 8
  assert vocab.eos_id == 1 and wordpiece.PAD_ID == 0


def test_wordpiece_save_load_verifies_the_tokenizer(vocab, tmp_path):
  copy = vocab.copy_to(str(tmp_path))
  loaded = wordpiece.WordPieceVocabulary.load(copy.default_json_path())
  assert loaded == vocab and loaded.docid_tokens == vocab.docid_tokens
  assert loaded.encode_docid("<d_4>") == vocab.encode_docid("<d_4>")
  with open(os.path.join(tmp_path, wordpiece.TOKENIZER_NAME), "a") as f:
    f.write(" ")
  with pytest.raises(ValueError, match="sha256"):
    wordpiece.WordPieceVocabulary.load(copy.default_json_path())


def test_a_wordpiece_vocabulary_outlives_its_folder(vocab, tmp_path):
  """Its identity (==, fingerprint) and its input view need no file after
  loading: a seqio task registered with it may outlive the run folder it
  came from (a second experiment in the same process compares them)."""
  (tmp_path / "run").mkdir()
  copy = vocab.copy_to(str(tmp_path / "run"))
  view = copy.input_vocabulary
  shutil.rmtree(tmp_path / "run")
  assert copy == vocab and view == vocab.input_vocabulary
  assert copy.input_vocabulary.encode_inputs("central bank", 8) == (
    vocab.input_vocabulary.encode_inputs("central bank", 8)
  )


def test_wordpiece_docid_tokens_are_append_only(vocab):
  grown = vocab.with_docid_tokens(vocab.docid_tokens + ("<d_new>",))
  for token in vocab.docid_tokens:
    assert grown.docid_token_id(token) == vocab.docid_token_id(token)
  assert grown.docid_token_id("<d_new>") == vocab.vocab_size
  assert grown != vocab
  with pytest.raises(ValueError, match="append-only"):
    vocab.with_docid_tokens(("<d_1>", "<d_0>"))
  with pytest.raises(ValueError, match="append-only"):
    vocab.with_docid_tokens(vocab.docid_tokens[1:])


# ------------------------------------------------------ 7. end to end --

NUM_DOCS = 24


def _words() -> list[str]:
  """Whole-word WordPiece entries of the real vocabulary, a fixed list."""
  with open(os.path.join(embed.default_model_dir(), "tokenizer.json")) as f:
    pieces = json.load(f)["model"]["vocab"]
  words = sorted(
    (i, w)
    for w, i in pieces.items()
    if w.isalpha() and w.isascii() and len(w) >= 4
  )
  return [w for _, w in words[500:1700:4]]  # 300 common words


def _toy_beir(folder):
  rng = np.random.default_rng(0)
  words = _words()
  corpus, queries = {}, {}
  qrels = {"train": {}, "test": {}}
  for i in range(NUM_DOCS):
    body = list(rng.choice(words, 16, replace=False))
    corpus[f"doc{i}"] = beir.Document(f"doc{i}", f"t{i}", " ".join(body))
    for j, start in enumerate((0, 5, 10)):  # train: three spans
      queries[f"q{i}_{j}"] = " ".join(body[start : start + 6])
      qrels["train"][f"q{i}_{j}"] = {f"doc{i}": 1}
    # held out: words of the body in a new order, never a training input
    queries[f"test{i}"] = " ".join(rng.permutation(body)[:6])
    qrels["test"][f"test{i}"] = {f"doc{i}": 1}
  beir.write_beir(folder, corpus, queries, qrels)


@gin.configurable
def pretrained_test_probe(model=None):
  """Returns the %MODEL a parsed gin config builds."""
  return model


def _gin_model(bert_dir):
  """MODEL from gin/models/minilm_t5.gin, with the tiny encoder's widths."""
  repo = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  )
  gin.clear_config()
  gin.add_config_file_search_path(repo)
  try:
    gin.parse_config_files_and_bindings(
      [os.path.join(repo, "gin", "models", "minilm_t5.gin")],
      [
        f"ENCODER_DIR = '{bert_dir}'",
        "DECODER_WIDTH = 32",
        "DECODER_HEADS = 4",
        "DECODER_MLP = 64",
        "DROPOUT_RATE = 0.0",
        "network.T5Config.head_dim = 8",
        "pretrained_test_probe.model = %MODEL",
      ],
      skip_unknown=False,
    )
    return pretrained_test_probe()
  finally:
    gin.clear_config()


def test_experiment_with_the_pretrained_encoder(bert_dir, tmp_path):
  data_dir, workdir = str(tmp_path / "toy"), str(tmp_path / "work")
  _toy_beir(data_dir)
  model = _gin_model(bert_dir)
  assert isinstance(model.config, bert_network.BertT5Config)
  assert model.config.encoder_dir == bert_dir
  assert model.config.frozen_layers == tiny_bert.LAYERS
  out = experiment.run_experiment(
    data_dir=data_dir,
    workdir=workdir,
    model=model,
    scheme="atomic",
    train_steps=10,
    batch_size=16,
    input_length=LENGTH,
    task_rates={"indexing": 1.0, "retrieval": 1.0},
    search=retrieval.SearchConfig(beam_size=5, top_k=5),
    query_sets=(evaluation.QuerySet("titles"),),
    warm_start_temperature=TEMPERATURE,
  )
  result = out["titles/test"]
  assert result["gr"]["Hits@1"] > 6 / NUM_DOCS, result  # chance is 1/24
  assert result["gr"]["Hits@10"] > 0.5, result
  assert "dense" in result and result["dense"]["Hits@1"] > 6 / NUM_DOCS
  caches = os.listdir(os.path.join(workdir, "encoder_cache"))
  assert len(caches) == 1 and caches[0].startswith("frozen_encoder_")
  assert os.path.isdir(os.path.join(workdir, "model", "10"))


# ------------------------------------------------------- 8. gin files --


def test_the_pretrained_gin_files_are_parsed_by_test_gin_files():
  """tests/experiments/test_gin_files.py globs them; the config builds the MiniLM model."""
  from tests.experiments import test_gin_files  # pylint: disable=g-import-not-at-top

  assert "minilm_t5" in {f.stem for f in test_gin_files.MODEL_FILES}
  [config_file] = [
    f for f in test_gin_files.CONFIG_FILES if f.stem == "news_atomic_minilm"
  ]
  model = test_gin_files._parse(  # pylint: disable=protected-access
    [config_file], test_gin_files._placeholders(config_file)
  )  # pylint: disable=protected-access
  config = model.config
  assert isinstance(config, bert_network.BertT5Config)
  assert config.encoder.hidden_size == config.decoder.emb_dim == 384
  assert config.encoder_dir == embed.default_model_dir()
  assert config.encoder.num_layers == 6  # all-MiniLM-L6-v2
  assert config.decoder.logits_via_embedding


# ------------------------------------- cross-attention K/V, projected once --


def test_bert_cross_attention_kv_gives_the_uncached_logits(bert_config, vocab):
  """A decoder wider than the encoder (K/V kernels [32, heads, kv]): cached
  decode steps and the shared-source exact path equal the uncached ones."""
  config = bert_network.BertT5Config(
    bert_config,
    decoder_config(
      128, emb_dim=48, num_decoder_layers=2, logits_via_embedding=False
    ),
    1,
  )
  model = models.EncoderDecoderModel(config)
  params = model.init_params(
    jax.random.PRNGKey(3), input_length=LENGTH, target_length=4
  )
  tokens = jnp.asarray(_rows(vocab, TEXTS[:3]))
  decoder_tokens = jnp.asarray(np.random.RandomState(0).randint(3, 128, (3, 4)))

  @jax.jit
  def steps(params, tokens, decoder_tokens):
    encoded = model.encode(params, tokens)
    kv = model.cross_attention_kv(params, encoded)
    plain = cached = model.init_cache(params, 3, 4)
    out = []
    for t in range(4):
      a, plain = model.decode_step(
        params, plain, encoded, tokens, decoder_tokens[:, t : t + 1]
      )
      b, cached = model.decode_step(
        params, cached, kv, tokens, decoder_tokens[:, t : t + 1]
      )
      out.append((a, b))
    return out, kv

  out, kv = steps(params, tokens, decoder_tokens)
  assert kv.keys[0].shape == (3, LENGTH, 4, 8)
  for uncached, cached in out:
    np.testing.assert_allclose(cached, uncached, rtol=1e-6, atol=1e-6)

  # The exact oracle's shared source: one query's K/V for every target row.
  targets = jnp.asarray([[5, 1], [7, 1], [9, 1]], jnp.int32)
  query = tokens[:1]

  @jax.jit
  def exact(params):
    encoded = model.encode(params, query)  # [1, Li, width]
    kv = model.cross_attention_kv(params, encoded)  # [1, Li, heads, kv]
    return (
      model.step_scores(params, encoded, query, targets),
      model.step_scores(params, kv, query, targets),
    )

  uncached, cached = exact(params)
  np.testing.assert_allclose(cached, uncached, rtol=1e-6, atol=1e-6)


def test_bert_decoder_output_layer_splits_off(model, base_params, vocab):
  """decode_step_hidden + output_logits = decode_step (the sparse output
  layer's parts), tied logits of the BERT-encoder network's decoder."""
  tokens = jnp.asarray(_rows(vocab, TEXTS[:2]))

  @jax.jit
  def step(params):
    kv = model.cross_attention_kv(params, model.encode(params, tokens))
    cache = model.init_cache(params, 2, 2)
    start = jnp.zeros((2, 1), jnp.int32)
    logits, _ = model.decode_step(params, cache, kv, tokens, start)
    hidden, _ = model.decode_step_hidden(params, cache, kv, tokens, start)
    listed = jnp.asarray([[5, 9, 1], [2, 7, 7]], jnp.int32)
    return (
      logits,
      model.output_logits(params, hidden),
      model.output_logits(params, hidden, listed),
      listed,
    )

  logits, split, sparse, listed = step(base_params)
  np.testing.assert_array_equal(split, logits)
  np.testing.assert_allclose(
    sparse,
    np.take_along_axis(np.asarray(logits), np.asarray(listed), axis=1),
    rtol=1e-5,
    atol=1e-5,
  )
